"""Scene geometry drawn with the subjects (scene.geometry): depth against the labelled ground
plane, the horizon against the camera's pitch, occlusion by scene objects in keypoints and the
instance mask, the shaded backend's shadows, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from synthgen.images import ImageFactory
from synthgen.render import raster_gl
from synthgen.render import rasterize
from synthgen.scene import SCENE_PART_NAMES, VIEW_MARGIN_PX, SceneMesh, clip_near, clip_to_view
from tests.fixtures.recipes import small_recipe
from tests.fixtures.shadows import shadow_footprint

BACKENDS = ["torch", pytest.param("gl", marks=pytest.mark.skipif(not raster_gl.gl_available(),
                                                                   reason="no EGL context here"))]


def _factory(backend: str = "torch", geometry="ground", render: dict | None = None, **sections) -> ImageFactory:
    return ImageFactory(small_recipe(scene={"geometry": geometry}, render={"backend": backend} | (render or {}),
                                     image={"width": 160, "height": 128}, **sections))


def _samples(factory: ImageFactory, indices: list[int]) -> list[dict]:
    out = list(factory.prepared(indices))
    assert all("error" not in s for s in out), [s.get("error") for s in out]
    return out


def _rays(K: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, 3) K^-1 [c, r, 1] (z = 1)."""
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    return np.stack([cols, rows, np.ones_like(cols)], -1) @ np.linalg.inv(K).T


@pytest.mark.parametrize("backend", BACKENDS)
def test_ground_depth_is_the_pixel_ray_meeting_the_labelled_plane(backend):
    factory = _factory(backend)
    ground_part = len(factory.subject_model.part_names) + SCENE_PART_NAMES.index("ground")
    worst, seen = 0.0, 0
    for sample in _samples(factory, [0, 1, 2]):
        labels, layers = sample["labels"], sample["layers"]
        plane = labels["scene"]["ground_plane_cam"]
        n, offset = np.array(plane["normal"]), plane["offset"]
        K = np.array(labels["cam_int"])
        # the label agrees with cam_ext: n is world up seen from the camera, offset its height
        ext = np.array(labels["cam_ext"])
        assert np.allclose(n, ext[:3, 2], atol=1e-6)
        assert offset == pytest.approx(float(-(ext[:3, :3].T @ ext[:3, 3])[2]), abs=1e-5)
        ground = (layers["parts"] == ground_part) & (layers["depth"] < 60.0)
        rays = _rays(K, *ground.shape)[ground]
        expected = -offset / (rays @ n)  # X = s K^-1 [c, r, 1] on n.X + offset = 0: z = s
        got = layers["depth"][ground].astype(np.float64)
        assert (expected > 0).all()
        worst = max(worst, float(np.max(np.abs(got - expected) / expected)))
        stored = layers["depth_mm"][ground].astype(np.float64) / 1000.0
        assert np.all(np.abs(stored - got) <= 0.0005 + 1e-6 * got)  # rint to mm of a float32
        seen += int(ground.sum())
    assert seen > 5000
    assert worst < 0.005, worst


def test_horizon_row_follows_the_camera_pitch():
    """The ground reaches up to the horizon line of the camera's pose and no further: the row in
    each column where the pixel ray turns world-horizontal, (R^T K^-1 [c, r, 1])_z = 0, from
    ``cam_ext`` (its pitch, and the small roll the framing's pan/tilt leaves)."""
    factory = _factory("torch", camera={"elevation_deg": [-5.0, 5.0], "high_view_prob": 0.0,
                                        "ground_view_prob": 0.0, "roll_sd_deg": 0.0})
    ground_part = len(factory.subject_model.part_names) + SCENE_PART_NAMES.index("ground")
    checked = 0
    for sample in _samples(factory, [0, 1, 2, 3]):
        labels, layers = sample["labels"], sample["layers"]
        ext = np.array(labels["cam_ext"])
        R, K = ext[:3, :3], np.array(labels["cam_int"])
        m = np.linalg.inv(K).T @ R[:, 2]  # m . [c, r, 1] = world z of the ray
        pitch = np.degrees(np.arcsin(-R[2, 2]))
        assert abs(pitch) < 30.0
        ground = layers["parts"] == ground_part
        subject = layers["mask"] > 0
        height, width = ground.shape
        for col in range(width):
            row = -(m[0] * col + m[2]) / m[1]
            column = ground[:, col]
            if not 2 < row < height - 3 or subject[:, col].any():
                continue
            top = int(np.argmax(column))
            # the first pixel centre below the line (the 5 km ground ends f h / 5000 px above it)
            assert column.any() and 0.0 <= top - row <= 1.1, (top, row, col)
            assert column[top:].all()
            checked += 1
    assert checked > 50


def test_scene_occluder_hides_keypoints_and_leaves_the_instance_mask():
    factory = _factory("torch")
    sample = _samples(factory, [4])[0]
    before_vis = sample["keypoints_2d"][:, 2].copy()
    before_mask = sample["layers"]["instance"] == 1
    camera = sample["camera"]
    # a 1 m high wall halfway between the camera and the person, across the view
    eye, target = camera.position, np.array([0.0, 0.0, 0.5])
    ahead = (target - eye)[:2] / np.linalg.norm((target - eye)[:2])
    mid = eye[:2] + 0.5 * (target[:2] - eye[:2])
    side = np.array([-ahead[1], ahead[0]]) * 3.0
    corners = [mid - side, mid + side]
    wall = np.array([[*corners[0], 0.0], [*corners[1], 0.0], [*corners[1], 1.0], [*corners[0], 1.0]])
    offset = len(factory.subject_model.part_names)
    ground = sample["scene"]
    count = len(ground.vertices)
    sample["scene"] = SceneMesh(
        "ground", np.concatenate([ground.vertices, wall]),
        np.concatenate([ground.faces, np.array([[0, 1, 2], [0, 2, 3]]) + count]),
        np.concatenate([ground.face_part, np.full(2, offset + SCENE_PART_NAMES.index("wall"), np.uint8)]),
        np.concatenate([ground.face_instance, np.full(2, 3, np.uint8)]), ground.instance_names + ["wall"],
        np.concatenate([ground.instance_albedo, [[0.5, 0.5, 0.5]]]).astype(np.float32))
    factory.render(sample)
    labels = factory.labels(sample)
    vis = sample["keypoints_2d"][:, 2]
    hidden = sample["layers"]["parts"] == offset + SCENE_PART_NAMES.index("wall")
    uv = np.rint(sample["keypoints_2d"][:, :2]).astype(int)
    behind = np.array([0 <= u < 160 and 0 <= v < 128 and hidden[v, u] for u, v in uv])
    assert behind.any() and (before_vis[behind] == 2).any()
    assert (vis[behind] == 1).all()  # inside the image, hidden by the wall
    assert (vis[~behind] == before_vis[~behind]).all()
    mask = sample["layers"]["instance"] == 1
    assert not (mask & hidden).any() and (before_mask & hidden).any()
    assert mask.sum() < before_mask.sum()
    assert labels["instances"][0]["visible_fraction"] < 1.0


def _shadow_pixels(sample: dict) -> tuple[np.ndarray, np.ndarray]:
    """Ground pixels inside the person's shadow by geometry alone (each body vertex pushed along
    the sun direction onto the labelled ground plane and projected), and ground pixels far from it."""
    import cv2

    labels, layers = sample["labels"], sample["layers"]
    plane = labels["scene"]["ground_plane_cam"]
    n, offset = np.array(plane["normal"]), plane["offset"]
    sun = np.array(labels["appearance"]["light_dir_cam"])
    K = np.array(labels["cam_int"])
    v = sample["vertices_cam"].astype(np.float64)
    on_ground = v - ((v @ n + offset) / (sun @ n))[:, None] * sun
    p = on_ground @ K.T
    uv = np.rint(p[:, :2] / p[:, 2:3]).astype(int)
    height, width = layers["mask"].shape
    footprint = np.zeros((height, width), np.uint8)
    keep = (p[:, 2] > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < width) & (uv[:, 1] >= 0) & (uv[:, 1] < height)
    footprint[uv[keep, 1], uv[keep, 0]] = 1
    footprint = cv2.morphologyEx(footprint, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    near = cv2.erode(footprint, np.ones((3, 3), np.uint8)) > 0
    far = cv2.dilate(footprint, np.ones((41, 41), np.uint8)) == 0
    ground = (layers["instance"] == 0) & (layers["depth"] > 0)
    ground &= cv2.erode((layers["mask"] == 0).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    return near & ground, far & ground


def test_shaded_ground_under_a_person_is_darker_than_away_from_people():
    factory = ImageFactory(small_recipe(scene={"geometry": "ground"}, backend={"kind": "shaded"},
                                        image={"width": 192, "height": 192},
                                        camera={"high_view_prob": 1.0, "high_elevation_deg": [45.0, 60.0]}))
    samples = _samples(factory, [0, 1, 2, 3])
    factory.finish(samples)
    ratios = []
    for sample in samples:
        shadow, away = _shadow_pixels(sample)
        if shadow.sum() < 30 or away.sum() < 300:
            continue
        luminance = sample["image"].astype(np.float64).mean(axis=2)
        depth = sample["layers"]["depth"]
        band = (depth > np.percentile(depth[shadow], 5) * 0.9) & (depth < np.percentile(depth[shadow], 95) * 1.1)
        ratios.append(luminance[shadow].mean() / luminance[away & band].mean())
    assert len(ratios) >= 2
    assert max(ratios) < 0.8, ratios


def test_scene_objects_cast_shadows_on_the_ground_in_the_same_pass():
    """Ground pixels in the geometric shadow of a yard's objects (crates, pillars, benches, fences:
    not of the person) are darker than the same ground away from every shadow."""
    import cv2

    from synthgen.scene import shadow_casters

    factory = ImageFactory(small_recipe(scene={"geometry": "yard", "objects": [6, 9]}, backend={"kind": "shaded"},
                                        image={"width": 192, "height": 192},
                                        camera={"high_view_prob": 1.0, "high_elevation_deg": [40.0, 60.0]}))
    samples = _samples(factory, list(range(8)))
    factory.finish(samples)
    ratios = []
    for sample in samples:
        scene, camera, world = sample["scene"], sample["camera"], sample["world"]
        shape = sample["layers"]["mask"].shape
        sun = np.asarray(world["sun_world"], dtype=np.float64)
        casters = shadow_casters(scene)
        objects = shadow_footprint(scene.vertices, scene.faces[casters], sun, camera.R, camera.t, camera.K, shape)
        people = np.zeros(shape, bool)
        for member in sample["subjects"]:
            people |= shadow_footprint(member.vertices, factory.subject_model.mesh(member)[0], sun, camera.R,
                                       camera.t, camera.K, shape)
        tri, faces = sample["layers"]["triangle_id"], len(sample["faces"])  # [0, faces): the people
        scene_face = np.clip(tri - faces, 0, len(scene.faces) - 1)
        ground = (tri >= faces) & (scene.face_instance[scene_face] == scene.instance_names.index("ground"))
        kernel = np.ones((5, 5), np.uint8)
        inside = ground & (cv2.erode(objects.astype(np.uint8), kernel) > 0) & ~(cv2.dilate(
            people.astype(np.uint8), kernel) > 0)
        away = ground & (cv2.dilate((objects | people).astype(np.uint8), np.ones((15, 15), np.uint8)) == 0)
        if inside.sum() < 40 or away.sum() < 300:
            continue
        luminance = sample["image"].astype(np.float64).mean(axis=2)
        depth = sample["layers"]["depth"]  # compare like with like: the same range of distances
        band = (depth > np.percentile(depth[inside], 5) * 0.9) & (depth < np.percentile(depth[inside], 95) * 1.1)
        if (away & band).sum() < 100:
            continue
        ratios.append(luminance[inside].mean() / luminance[away & band].mean())
    assert len(ratios) >= 3, ratios
    assert np.median(ratios) < 0.8, ratios


def test_scene_records_and_part_names(tmp_path):
    factory = _factory("torch", geometry={"room": 1.0, "yard": 1.0})
    for sample in _samples(factory, [0, 1, 2]):
        labels = sample["labels"]
        assert labels["scene"]["kind"] in ("room", "yard")
        assert labels["part_names"][-len(SCENE_PART_NAMES):] == SCENE_PART_NAMES
        assert labels["conventions"]["scene_in"] == ["normal", "depth", "parts", "edges", "shaded"]
        if labels["scene"]["kind"] == "room":
            (x0, y0, z0), (x1, y1, z1) = labels["scene"]["room_box_world"]
            eye = sample["camera"].position
            assert x0 < eye[0] < x1 and y0 < eye[1] < y1  # the camera stands in the room
        person = labels["instances"][0]
        assert person["ground_contact"] and abs(person["lowest_point_m"]) <= 0.02
        assert any("foot" in p or "shin" in p for p in person["contact_parts"])
        assert sample["camera"].position[2] >= 0.3 - 1e-6


def test_scene_in_leaves_the_scene_out_of_chosen_layers():
    with_scene = _samples(_factory("torch"), [0])[0]["layers"]
    without = _samples(_factory("torch", render={"scene_in": ["depth"]}), [0])[0]["layers"]
    subject = with_scene["mask"] > 0
    assert (with_scene["depth_mm"][~subject] > 0).any() and (without["depth_mm"][~subject] > 0).any()
    assert (without["normal_rgb"][~subject] == 0).all() and (with_scene["normal_rgb"][~subject] > 0).any()
    import cv2

    near_subject = cv2.dilate(subject.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0  # silhouette edges
    assert (without["parts"][~subject] == 0).all() and (without["edges"][~near_subject] == 0).all()
    assert (with_scene["edges"][~near_subject] > 0).any()  # the horizon
    assert np.array_equal(with_scene["mask"], without["mask"])


def test_scene_samples_are_the_same_bytes_across_workers_and_resume(tmp_path):
    from synthgen.run import generate

    recipe = small_recipe(num_samples=4, scene={"geometry": {"ground": 1.0, "room": 1.0}},
                          backend={"kind": "shaded"})
    generate(recipe, tmp_path / "one", workers=1, progress=False)
    generate(recipe, tmp_path / "two", workers=2, progress=False)
    generate(recipe.model_copy(update={"num_samples": 2}), tmp_path / "resumed", workers=1, progress=False)
    generate(recipe, tmp_path / "resumed", workers=1, progress=False)

    def records(out):
        paths = sorted((out / "shards").glob("shard-*.tar"))
        return {s["__key__"]: s for p in paths for s in wds.WebDataset(str(p), shardshuffle=False)}

    reference = records(tmp_path / "one")
    assert len(reference) == 4
    for other in (records(tmp_path / "two"), records(tmp_path / "resumed")):
        assert sorted(other) == sorted(reference)
        for key, sample in reference.items():
            for member in ("json", "jpg", "depth.png", "normal.png", "instance.png"):
                assert other[key][member] == sample[member], (key, member)


@pytest.mark.parametrize("backend", BACKENDS)
def test_subjects_render_as_alone_where_the_scene_does_not_hide_them(backend):
    """One pass with the scene draws the subject exactly as a render of it alone (same triangles,
    normals, depth), except pixels where a scene surface lies nearer."""
    from synthgen.render import rasterize, rasterize_with_scene

    factory = _factory(backend)
    for sample in _samples(factory, [0, 1]):
        camera, member = sample["camera"], sample["subjects"][0]
        vertices = camera.to_camera(member.vertices)
        faces, _ = factory.subject_model.mesh(member)
        alone = rasterize(vertices, faces, camera.K, camera.width, camera.height, backend)
        both = rasterize_with_scene(vertices, faces, camera.to_camera(sample["scene"].vertices),
                                    sample["scene"].faces, camera.K, camera.width, camera.height, backend)
        body = (both["triangle_id"] >= 0) & (both["triangle_id"] < len(faces))
        shared = body & alone["mask"]
        assert shared.sum() > 500 and not (body & ~alone["mask"]).any()
        assert np.array_equal(both["triangle_id"][shared], alone["triangle_id"][shared])
        assert np.array_equal(both["normal"][shared], alone["normal"][shared])
        assert np.array_equal(both["depth"][shared], alone["depth"][shared])
        lost = alone["mask"] & ~body  # a few pixels at the feet, where the ground wins the z-test
        assert (both["depth"][lost] <= alone["depth"][lost] + 1e-6).all() and lost.sum() < 20


def test_a_backdrop_folder_with_scene_geometry_is_one_line_naming_the_fix(tmp_path):
    """backend.shaded.background=folder paints only where no scene is drawn: asking for both would
    silently ignore the user's images, so the recipe is refused with the fix."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "synthgen", "validate", str(root / "recipes" / "quickstart.yaml"),
                           "backend.shaded.background=folder", f"backend.shaded.background_dir={tmp_path}"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    line = done.stderr.strip().splitlines()[-1]
    assert "backend.shaded.background=folder" in line and "set scene.geometry=none" in line


def test_near_plane_clipping_keeps_the_visible_part():
    # a square in the plane y = 0 spanning z in [-1, 1]: what is left in front of z = 0.02
    v = np.array([[-1.0, 0.0, -1.0], [1.0, 0.0, -1.0], [1.0, 0.0, 1.0], [-1.0, 0.0, 1.0]])
    f = np.array([[0, 1, 2], [0, 2, 3]])
    verts, faces, src = clip_near(v, f, 0.02)
    tri = verts[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1).sum()
    assert area == pytest.approx(2.0 * 0.98)
    assert tri[..., 2].min() >= 0.02 - 1e-12
    assert set(src) <= {0, 1}


@pytest.mark.parametrize("backend", BACKENDS)
def test_clipping_to_the_view_changes_no_pixel_and_keeps_every_vertex_near_the_image(backend):
    """A kilometres-wide ground seen from 1.6 m, and a wall 5 cm from the lens, clipped to the near
    plane and the image sides: every vertex left projects within VIEW_MARGIN_PX of the image, and
    the raster (which face, at what depth) is the unclipped one's."""
    width, height = 160, 128
    K = np.array([[120.0, 0.0, 79.5], [0.0, 120.0, 63.5], [0.0, 0.0, 1.0]])
    pitch = np.radians(20.0)  # looking 20 degrees down; the camera frame is OpenCV's (y down)
    down, ahead = np.array([0.0, np.cos(pitch), np.sin(pitch)]), np.array([0.0, -np.sin(pitch), np.cos(pitch)])
    half = 5000.0
    ground = np.array([1.6 * down + x * np.array([1.0, 0.0, 0.0]) + y * ahead
                       for x, y in ((-half, -half), (half, -half), (half, half), (-half, half))])
    wall = np.array([[-3.0, -3.0, 0.05], [0.01, -3.0, 0.05], [0.01, 3.0, 0.05], [-3.0, 3.0, 0.05]])  # left
    vertices = np.concatenate([ground, wall])
    faces = np.array([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    kept, clipped, source = clip_to_view(vertices, faces, K, width, height)
    projected = kept @ K.T
    uv = projected[:, :2] / projected[:, 2:]
    assert kept[:, 2].min() > 0.02 - 1e-9
    assert uv.min() >= -VIEW_MARGIN_PX - 1e-6
    assert (uv.max(axis=0) <= [width - 1 + VIEW_MARGIN_PX + 1e-6, height - 1 + VIEW_MARGIN_PX + 1e-6]).all()
    assert set(source) & {0, 1} and set(source) & {2, 3} and set(source) <= {0, 1, 2, 3}  # ground, wall
    near_only, near_faces, near_source = clip_near(vertices, faces)
    whole = rasterize(near_only, near_faces, K, width, height, backend, cull_back_faces=False)
    cut = rasterize(kept, clipped, K, width, height, backend, cull_back_faces=False)
    drawn = whole["mask"]
    assert np.array_equal(drawn, cut["mask"]) and drawn.sum() > 0.6 * drawn.size
    horizon = 63.5 - 120.0 * np.tan(pitch)  # the rows above it see sky, but for the wall
    assert not drawn[: int(horizon) - 1, 110:].any() and drawn[int(horizon) + 2:].all()
    assert np.array_equal(near_source[whole["triangle_id"][drawn]], source[cut["triangle_id"][drawn]])
    relative = np.abs(cut["depth"][drawn] - whole["depth"][drawn]) / whole["depth"][drawn]
    assert relative.max() < 1e-3
