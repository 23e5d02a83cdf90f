"""Each flagship ControlNet input measured against its reference, the way the references were measured.

- HumanWild (YongtaoGe/WildHuman ``data/controlnet_conditions/00000_0_0002.png``, a 768x768 RGBA
  condition; the repository states no licence, so the image is not shipped, only its figures,
  measured with :func:`rim_figures` below): at the silhouette rim R correlates -0.991 with the
  outward x direction and G -0.991 with the outward image-down direction; where R and G are
  within 10 of 127 (the body faces the camera) B is 0 (median), the interior (15-px erosion)
  median B is 16; background (127, 127, 127) with alpha 0. I.e. RGB = (n . [-1, -1, +1] + 1) / 2
  with OpenCV camera-frame normals, on grey 127.
- GenZoo (x-tomasz/genzoo ``genzoo_pipeline.ipynb``): canny = ``cv2.Canny(rendered RGB, 100, 200)``;
  depth: ``d[d == 0] = nan; d = 1 - (d - nanmin) / (nanmax - nanmin); nan -> 0; rint(d * 255)``.
  Recomputed here from the stored shard files and compared pixel for pixel.
- control_v11p_sd15_normalbae (lllyasviel/ControlNet-v1-1-nightly ``annotator/normalbae``): the
  annotator writes ``(((n + 1) * 0.5).clip(0, 1) * 255).astype(uint8)`` of a unit normal at every
  pixel; a wall seen head on is (127, 127, 255), and (0, 0, 0) never occurs.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from synthgen.errors import UserError
from synthgen.images import ImageFactory
from synthgen.recipe import RecipeError
from tests.fixtures.recipes import small_recipe

WILDHUMAN = {"rim_corr_r_x": -0.991, "rim_corr_g_y": -0.991, "facing_b": 0.0, "interior_b": 16.0,
             "background": (127, 127, 127)}


def rim_figures(rgb: np.ndarray, mask: np.ndarray) -> dict:
    """The measurement applied to WildHuman's condition image, applied to ours.

    rgb: (H, W, 3) uint8; mask: (H, W) bool subject. Outward directions at the rim come from
    the gradient of the Gaussian-blurred (sigma 3) mask; the rim is the mask minus its 3x3 erosion.
    """
    blur = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 3)
    gx, gy = cv2.Sobel(blur, cv2.CV_32F, 1, 0), cv2.Sobel(blur, cv2.CV_32F, 0, 1)
    rim = mask & (cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)) == 0)
    ox, oy = -gx[rim], -gy[rim]
    norm = np.hypot(ox, oy) + 1e-9
    r, g, b = (rgb[..., c].astype(np.float64) for c in range(3))
    inner = cv2.erode(mask.astype(np.uint8), np.ones((15, 15), np.uint8)) > 0
    facing = mask & (np.abs(r - 127) < 10) & (np.abs(g - 127) < 10)
    return {"rim_corr_r_x": float(np.corrcoef(r[rim], ox / norm)[0, 1]),
            "rim_corr_g_y": float(np.corrcoef(g[rim], oy / norm)[0, 1]),
            "facing_b": float(np.median(b[facing])) if facing.any() else None,
            "interior_b": float(np.median(b[inner])),
            "background": {tuple(int(v) for v in px) for px in rgb[~mask].reshape(-1, 3)}}


def _controlnet(units, family="sdxl", **extra) -> dict:
    return {"kind": "controlnet", "controlnet": {"family": family, "base_model": "tests/not-loaded",
                                                 "controlnets": units, **extra}}


def _sample(recipe, index: int = 0) -> tuple[ImageFactory, dict]:
    factory = ImageFactory(recipe, cpu_only=True)  # the CPU stages only: no model is loaded
    return factory, factory.prepare(index, factory.pose_subjects([index])[0])


def _humanwild(convention: str, background: str):
    # 512x512: the rim figures need a silhouette of a few hundred pixels (WildHuman's is 768x768;
    # measured on ours: R -0.90..-0.96 at 512 and -0.95..-0.98 at 768, G -0.66..-0.91 / -0.78..-0.95,
    # interior B 9..20 / 11..23, facing B 0, background 127; G depends most on the pose)
    return small_recipe(image={"width": 512, "height": 512},
                        render={"backend": "torch", "normal_convention": convention,
                                "normal_background": background},
                        backend=_controlnet([{"model": "tests/cn", "layer": "normal"}]))


@pytest.mark.parametrize("index", [0, 1, 2])
def test_humanwild_normals_match_wildhuman_example(index):
    _, sample = _sample(_humanwild("omnidata", "grey"), index)
    rgb, mask = sample["layers"]["controls"][0], sample["layers"]["mask"] > 0
    assert np.array_equal(rgb, sample["layers"]["normal_rgb"])  # stored = sent
    ours = rim_figures(rgb, mask)
    print(f"sample {index}: ours {ours | {'background': sorted(ours['background'])}} vs WildHuman {WILDHUMAN}")
    # WildHuman: -0.991 and -0.991; the old encoding measured +0.90 and the same G
    assert ours["rim_corr_r_x"] < -0.85 and ours["rim_corr_g_y"] < -0.6
    assert ours["interior_b"] <= 40  # WildHuman: 16; the camera-facing side is dark blue
    assert ours["facing_b"] is None or ours["facing_b"] <= 8  # WildHuman: 0
    assert ours["background"] == {WILDHUMAN["background"]}


def test_the_old_opengl_encoding_fails_the_same_measurement():
    """What humanwild.yaml used to send: R and B inverted, black background (the test can fail)."""
    _, sample = _sample(_humanwild("opengl", "black"))
    old = rim_figures(sample["layers"]["normal_rgb"], sample["layers"]["mask"] > 0)
    assert old["rim_corr_r_x"] > 0.85 and old["interior_b"] > 190 and old["background"] == {(0, 0, 0)}


def test_ground_plane_normals_behind_the_person():
    _, sample = _sample(_humanwild("omnidata", "ground"))
    rgb, mask = sample["layers"]["normal_rgb"], sample["layers"]["mask"] > 0
    background = rgb[~mask]
    ground = np.any(background != 127, axis=1)
    assert 0.05 < ground.mean() < 1.0  # the floor below the horizon, grey above it
    decoded = (background[ground].astype(np.float64) / 255 * 2 - 1) * [-1, -1, 1]  # omnidata -> OpenCV
    # the ground faces up: in OpenCV camera axes "up" is -y, and toward the camera (z < 0)
    assert np.median(decoded[:, 1]) < -0.3 and np.all(np.abs(np.linalg.norm(decoded, axis=1) - 1) < 0.02)
    rows = np.nonzero((~mask & np.any(rgb != 127, axis=2)).any(axis=1))[0]
    assert rows.max() == rgb.shape[0] - 1  # the ground reaches the bottom of the image


def _genzoo():
    units = [{"model": "tests/canny", "layer": "edges", "scale": 0.2, "encoding": {"edges": "shaded"}},
             {"model": "tests/depth", "layer": "depth", "scale": 0.65, "encoding": {"depth": "minmax"}}]
    return small_recipe(image={"width": 128, "height": 128}, subject={"kind": "animal"},
                        render={"backend": "torch", "edges_source": "shaded"},
                        backend=_controlnet(units, family="flux", scheduler="default"),
                        output={"layers": ["normal", "depth", "mask", "shaded", "edges"]})


def _png(record: dict, key: str) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(record[key], np.uint8), cv2.IMREAD_UNCHANGED)
    return image[..., ::-1] if image.ndim == 3 else image


@pytest.mark.parametrize("index", [0, 3])
def test_genzoo_inputs_recomputed_from_the_shard_files(index):
    factory, sample = _sample(_genzoo(), index)
    sample["image"] = None
    record = factory.encode(sample)
    assert "control_0.png" not in record and "control_1.png" in record  # edges.png is the canny input
    plan = sample["labels"]["conventions"]["controls"]
    assert [c["stored_as"] for c in plan] == ["edges.png", "control_1.png"]

    # canny: the notebook's cv2.Canny(rendered RGB, 100, 200) of our stored shaded render
    canny = cv2.Canny(_png(record, "shaded.png"), 100, 200)
    assert np.array_equal(canny, _png(record, "edges.png")) and canny.any()
    assert np.array_equal(np.repeat(canny[..., None], 3, 2), sample["layers"]["controls"][0])

    # depth: the notebook's formula on our stored 16-bit depth
    depth = _png(record, "depth.png").astype(np.float64)
    depth[depth == 0] = np.nan
    depth = 1 - (depth - np.nanmin(depth)) / (np.nanmax(depth) - np.nanmin(depth))
    depth[np.isnan(depth)] = 0
    expected = np.rint(depth * 255).astype(np.uint8)
    sent = _png(record, "control_1.png")
    assert np.array_equal(sent, np.repeat(expected[..., None], 3, 2))
    foreground = _png(record, "mask.png") > 0
    assert sent[..., 0][foreground].min() == 0 and sent[..., 0][foreground].max() == 255  # spans 0..255
    assert not sent[~foreground].any()


def test_normalbae_background_is_what_the_annotator_writes():
    recipe = small_recipe(render={"backend": "torch", "normal_convention": "bae", "normal_background": "facing"},
                          backend=_controlnet([{"model": "tests/cn", "layer": "normal"}], family="sd15"))
    _, sample = _sample(recipe)
    rgb, mask = sample["layers"]["normal_rgb"], sample["layers"]["mask"] > 0
    wall = np.array([0.0, 0.0, 1.0])  # a wall seen head on, in Normal-BAE axes (z toward the viewer)
    annotator = (((wall + 1) * 0.5).clip(0, 1) * 255.0).astype(np.uint8)
    assert tuple(annotator) == (127, 127, 255)
    assert {tuple(int(v) for v in px) for px in rgb[~mask]} == {tuple(int(v) for v in annotator)}
    # every pixel decodes to a unit normal, as every annotator pixel does (black would be |n| = sqrt 3)
    decoded = rgb.reshape(-1, 3).astype(np.float64) / 255 * 2 - 1
    assert np.abs(np.linalg.norm(decoded, axis=1) - 1).max() < 0.02


def test_depth_forms():
    from synthgen.render.layers import encode_depth

    depth = np.array([[0.0, 1.0, 2.0], [4.0, 0.0, 3.0]])
    mask = depth > 0
    assert encode_depth(depth, mask, "minmax").tolist() == [[0, 255, 170], [0, 0, 85]]
    inverse = encode_depth(depth, mask, "inverse")  # disparity: 1, 1/2, 1/3, 1/4 -> 255, 85, 28, 0
    assert inverse.tolist() == [[0, 255, 85], [0, 0, 28]]
    assert encode_depth(depth, mask, "metric", max_depth_m=4.0).tolist() == [[0, 191, 128], [0, 0, 64]]
    assert encode_depth(depth, mask, "minmax_25")[0, 1] == 255 and encode_depth(depth, mask, "minmax_25")[1, 0] == 25


def test_flux_sizes_must_be_multiples_of_16(capsys, tmp_path):
    from synthgen.cli import main

    units = [{"model": "tests/cn", "layer": "depth"}]
    with pytest.raises(RecipeError, match=r"image.width=72: FLUX needs multiples of 16.*use 64 or 80"):
        small_recipe(image={"width": 72, "height": 64}, backend=_controlnet(units, family="flux",
                                                                            scheduler="default"))
    small_recipe(image={"width": 72, "height": 64}, backend=_controlnet(units, family="sd15"))  # fine
    assert main(["validate", "recipes/genzoo.yaml", "image.height=1000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "image.height=1000: FLUX needs multiples of 16" in err[0]


def test_eta_needs_ddim_and_encodings_their_layer():
    units = [{"model": "tests/cn", "layer": "edges"}]
    with pytest.raises(RecipeError, match="eta=1.0 needs scheduler: ddim"):
        small_recipe(backend=_controlnet(units, family="sd15", scheduler="unipc", eta=1.0))
    with pytest.raises(RecipeError, match="layer skeleton has no encoding"):
        small_recipe(backend=_controlnet([{"model": "m", "layer": "skeleton", "encoding": {"depth": "metric"}}],
                                         family="sd15"))
    assert issubclass(RecipeError, UserError)


def test_validate_prints_resolved_control_inputs(capsys):
    from synthgen.cli import main

    assert main(["validate", "recipes/humanwild.yaml"]) == 0
    out = capsys.readouterr().out
    resolved = out[out.index("# what each ControlNet receives (resolved):"):]
    for text in ("vae: madebyollin/sdxl-vae-fp16-fix", "normal: omnidata", "background: grey",
                 "stored_as: normal.png", "long_prompts: compel"):
        assert text in resolved, text
    assert main(["validate", "recipes/dst3d.yaml"]) == 0
    assert "# eta: 1.0" in capsys.readouterr().out


def test_inputs_computed_at_an_annotator_detect_resolution():
    """encoding.resolution: Canny (and any input) computed with the short side at that size, then
    resized to the image with INTER_LINEAR, as controlnet_aux's detect_resolution does; stored as
    control_<i>.png because it is no longer the stored edges layer."""
    units = [{"model": "tests/canny", "layer": "edges", "encoding": {"resolution": 64}},
             {"model": "tests/depth", "layer": "depth", "encoding": {"resolution": 64}}]
    recipe = small_recipe(image={"width": 128, "height": 128}, render={"backend": "torch"},
                          backend=_controlnet(units, family="sd15"))
    factory, sample = _sample(recipe, 1)
    sample["image"] = None
    record = factory.encode(sample)
    assert [c["stored_as"] for c in sample["labels"]["conventions"]["controls"]] == ["control_0.png",
                                                                                     "control_1.png"]
    small = cv2.resize(sample["layers"]["normal_rgb"], (64, 64), interpolation=cv2.INTER_AREA)
    expected = cv2.resize(cv2.Canny(small, 100, 200), (128, 128), interpolation=cv2.INTER_LINEAR)
    sent = _png(record, "control_0.png")
    assert np.array_equal(sent, np.repeat(expected[..., None], 3, 2)) and sent.any()
    assert not np.array_equal(sent[..., 0], _png(record, "edges.png"))  # thicker, softer edges
    full = factory.encode_control(sample["layers"], {"encoding": {"layer": "depth", "depth": "minmax"},
                                               "stored_as": "control_9.png"})
    depth = cv2.resize(cv2.resize(full, (64, 64), interpolation=cv2.INTER_AREA), (128, 128),
                       interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(_png(record, "control_1.png"), depth)
    with pytest.raises(RecipeError, match="resolution"):
        small_recipe(backend=_controlnet([{"model": "m", "layer": "edges", "encoding": {"resolution": 8}}]))


def test_edges_computed_in_the_subject_box_are_full_image_canny():
    """Canny runs on the subject's box only where the rest of the image is one colour; the
    edges are those of cv2.Canny on the whole image, also where the box touches the border."""
    from synthgen.render.layers import canny_edges

    rng = np.random.default_rng(0)
    for corner in ((10, 20), (0, 0), (40, 90)):
        image = np.full((64, 128, 3), (127, 127, 255), np.uint8)
        mask = np.zeros((64, 128), bool)
        y, x = corner
        mask[y:y + 24, x:x + 38] = True
        image[mask] = rng.integers(0, 256, (int(mask.sum()), 3))
        image[y + 5:y + 15, x + 5:x + 20] = (255, 0, 0)  # a strong block edge inside
        assert np.array_equal(canny_edges(image, 100, 200, constant_outside=mask), cv2.Canny(image, 100, 200))
    factory = ImageFactory(small_recipe(render={"backend": "torch", "canny_low": 50, "canny_high": 120},
                                        num_samples=4))
    for sample in factory.prepared([0, 1, 2, 3]):
        layers = sample["layers"]
        assert layers["edges"].any()
        assert np.array_equal(layers["edges"], cv2.Canny(layers["normal_rgb"], 50, 120))


def test_png_layers_are_lossless_whatever_the_row_filter():
    """Drawings (skeletons) are written without a row filter, other RGB layers with the "up"
    filter: only speed and size differ; every kind decodes to the array that was encoded."""
    from synthgen import encode
    from synthgen.render.layers import draw_skeleton, OPENPOSE_18

    rng = np.random.default_rng(0)
    keypoints = np.concatenate([rng.uniform(20, 236, (18, 2)), np.ones((18, 1))], 1)
    skeleton = draw_skeleton(keypoints, OPENPOSE_18, 256, 256)
    normal = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    depth = rng.integers(0, 65535, (256, 256), dtype=np.uint16)
    for array, drawing in ((skeleton, True), (skeleton, False), (normal, False), (depth, False), (normal[..., 0], True)):
        png = encode.encode_png(array, drawing=drawing)
        decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(decoded[..., ::-1] if decoded.ndim == 3 else decoded, array)
    assert skeleton.any() and len(encode.encode_png(skeleton, drawing=True)) < 3 * len(encode.encode_png(skeleton))
