"""Filter: IoU and keypoint-in-mask logic on known masks, cheap pixel checks, the accept/reject
decision through SampleFilter's ``sam_masks`` seam, and a tiny random-weight transformers SAM
loaded through the production path (shapes and dtypes only: its masks are meaningless)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from synthgen.errors import MissingModelError
from synthgen.filter import (SampleFilter, SamAligner, cheap_checks, keypoints_in_mask, mask_iou, mask_scores,
                             select_points)
from synthgen.recipe import FilterConfig, SamConfig
from synthgen.testing.tiny_models import build_tiny_sam
from tests.fixtures.masks import box_mask, person_sample


# --- pure functions ------------------------------------------------------------------------------
def test_mask_iou_on_known_masks():
    a = box_mask(20, 20, 0, 0, 10, 10)
    assert mask_iou(a, a) == 1.0
    assert mask_iou(a, box_mask(20, 20, 5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert mask_iou(a, box_mask(20, 20, 10, 10, 20, 20)) == 0.0
    assert mask_iou(a > 0, a.astype(np.float32)) == 1.0  # any dtype, nonzero = inside
    assert mask_iou(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0
    with pytest.raises(ValueError, match="shape"):
        mask_iou(a, a[:10])


def test_keypoints_in_mask_counts_visible_points_only():
    mask = box_mask(20, 20, 0, 0, 10, 20)  # columns 0..9
    kp = np.array([[2.0, 3.0, 2], [9.4, 5.0, 2],    # inside (9.4 rounds to column 9)
                   [9.6, 5.0, 2], [15.0, 5.0, 2],   # outside (9.6 rounds to column 10)
                   [15.0, 5.0, 1], [15.0, 5.0, 0],  # occluded / unlabelled: ignored
                   [-3.0, 5.0, 2], [5.0, 25.0, 2]])  # outside the image: outside the mask
    assert keypoints_in_mask(kp, mask) == pytest.approx(2 / 6)
    assert keypoints_in_mask(kp[4:6], mask) == 1.0  # nothing visible
    assert keypoints_in_mask(np.zeros((0, 3)), mask) == 1.0


def test_batched_mask_scores_equal_the_per_image_scores_on_known_masks():
    """The filter's scores, computed for a whole batch in one pass (two image sizes, empty
    masks, hidden, off-image and NaN keypoints), equal mask_iou and keypoints_in_mask scored one
    image at a time: grouping by size and padding the keypoint gather change no score."""
    import torch

    rng = np.random.default_rng(4)
    masks, people = [], []
    for k, (h, w) in enumerate([(96, 80)] * 5 + [(64, 64)] * 3):
        (x0, x1), (y0, y1) = sorted(rng.integers(0, w // 2, 2) + [0, w // 2]), sorted(rng.integers(0, h, 2))
        sam = box_mask(h, w, x0, y0, x1, y1) > 0
        rendered = box_mask(h, w, 10, 5, 30 + 3 * k, 50) > 0
        kp = np.c_[rng.uniform(-10, w + 10, 9), rng.uniform(-10, h + 10, 9), rng.choice([1, 2, 2], 9)]
        if k == 1:
            sam[:] = rendered[:] = False  # both empty: IoU 1
        if k == 2:
            kp[:, 2] = 1  # no visible keypoint: 1.0
        if k == 3:
            kp[0] = [np.nan, 3.0, 2.0]
        masks.append(sam)
        people.append({"pixels": rendered, "keypoints_2d": kp})
    expected = [(mask_iou(m, p["pixels"]), keypoints_in_mask(p["keypoints_2d"], m)) for m, p in zip(masks, people)]
    assert mask_scores([torch.from_numpy(m) for m in masks], people) == expected
    assert mask_scores(masks, people) == expected  # NumPy masks (the sam_masks seam) too
    assert len({e for e in expected}) > 4 and expected[1][0] == 1.0 and expected[2][1] == 1.0
    assert mask_scores([], []) == []


def test_cheap_checks_catch_nan_black_and_constant_images():
    cfg = FilterConfig()
    rng = np.random.default_rng(0)
    noise8 = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    noisef = rng.random((64, 64, 3), dtype=np.float32)
    assert cheap_checks(noise8, cfg) is None and cheap_checks(noisef, cfg) is None
    nan = noisef.copy()
    nan[3, 4, 1] = np.nan
    assert cheap_checks(nan, cfg) == "nan"
    inf = noisef.copy()
    inf[0, 0, 0] = np.inf
    assert cheap_checks(inf, cfg) == "nan"
    assert cheap_checks(np.zeros((64, 64, 3), np.uint8), cfg) == "black"
    assert cheap_checks(np.zeros((64, 64, 3), np.float32), cfg) == "black"
    mostly = noise8.copy()
    mostly[:62] = 0  # 97% black, the rest noise: a blanked image with a strip
    assert cheap_checks(mostly, cfg) == "black"
    dark_scene = noise8.copy()
    dark_scene[:48] = 3  # 75% black: a dark but real image passes the black test
    assert cheap_checks(dark_scene, cfg) is None
    assert cheap_checks(np.full((64, 64, 3), 128, np.uint8), cfg) == "constant"
    assert cheap_checks(np.full((64, 64, 3), 0.5, np.float32) + noisef * 0.005, cfg) == "constant"
    assert cheap_checks(np.full((64, 64), 200, np.uint8), cfg) == "constant"  # gray images too
    assert cheap_checks(np.full((64, 64, 3), 128, np.uint8), FilterConfig(min_std=0.0)) is None
    with pytest.raises(TypeError, match="uint8"):
        cheap_checks(np.zeros((8, 8, 3), np.int32), cfg)


def test_select_points_spreads_and_caps():
    pts = np.array([[0, 0], [1, 0], [0, 1], [50, 50], [100, 0], [0, 100], [100, 100], [51, 50]], float)
    chosen = select_points(pts, 4)
    assert len(chosen) == 4
    gaps = np.linalg.norm(chosen[:, None] - chosen[None], axis=-1) + np.eye(4) * 1e9
    assert gaps.min() > 50  # spread out: never two of the clustered points
    assert np.array_equal(select_points(pts, None), pts) and np.array_equal(select_points(pts, 20), pts)
    assert np.array_equal(select_points(pts, 4), chosen)  # deterministic


# --- the decision, through the sam_masks seam ---------------------------------------------------
@pytest.fixture(scope="module")
def tiny_sam(tmp_path_factory):
    return build_tiny_sam(tmp_path_factory.mktemp("tiny_sam"))


def shifted(mask, fraction):
    cols = np.flatnonzero(mask.any(axis=0))
    return np.roll(mask, int(round(fraction * (cols[-1] - cols[0] + 1))), axis=1)


def test_planted_misalignment_is_rejected_and_aligned_kept(tiny_sam):
    sf = SampleFilter(FilterConfig(sam=SamConfig(model=str(tiny_sam))))
    samples = [person_sample(index=i) for i in range(5)]
    body = samples[0]["layers"]["mask"]
    no_arm = body.copy()
    no_arm[20:28, 50:72] = 0  # right shape, but the arm keypoints fall outside
    disk = np.zeros_like(body)
    yy, xx = np.mgrid[:96, :80]
    disk[(yy - 48) ** 2 + (xx - 40) ** 2 < 22 ** 2] = 1  # a blob of similar area, different shape
    almost = body.copy()
    almost[10:12] = 0  # SAM trims two rows: still aligned
    masks = [almost, shifted(body, 0.3), disk, no_arm, body > 0]
    res = sf.score(samples, sam_masks=masks)

    assert res[0]["accepted"] and res[0]["reason"] is None and res[0]["sam_iou"] > 0.9
    assert res[0]["keypoints_in_sam_mask"] == 1.0
    assert not res[1]["accepted"] and res[1]["reason"] == "sam_iou" and res[1]["sam_iou"] < 0.7
    assert not res[2]["accepted"] and res[2]["reason"] == "sam_iou"
    assert not res[3]["accepted"] and res[3]["reason"] == "keypoints_outside_sam_mask"
    assert res[3]["sam_iou"] >= 0.7 and res[3]["keypoints_in_sam_mask"] == pytest.approx(6 / 8)
    assert res[4]["accepted"] and res[4]["sam_iou"] == 1.0
    for r in res:
        assert set(r) == {"accepted", "reason", "sam_iou", "keypoints_in_sam_mask"}
    # thresholds come from the config
    lax = SampleFilter(FilterConfig(sam=SamConfig(model=str(tiny_sam), min_keypoints_in_mask=0.7)))
    assert lax.score(samples[3:4], sam_masks=[no_arm])[0]["accepted"]


def test_cheap_checks_run_first_and_skip_sam(tiny_sam):
    sf = SampleFilter(FilterConfig(sam=SamConfig(model=str(tiny_sam))))
    black, nan, ok, empty = (person_sample(index=i) for i in range(4))
    black["image"] = np.zeros_like(black["image"])
    nan["image"] = nan["image"].astype(np.float32) / 255
    nan["image"][0, 0, 0] = np.nan
    empty["layers"]["mask"] = np.zeros_like(empty["layers"]["mask"])
    res = sf.score([black, nan, ok, empty], sam_masks=[None, None, ok["layers"]["mask"], None])
    assert [r["reason"] for r in res] == ["black", "nan", None, "empty_mask"]
    assert [r["accepted"] for r in res] == [False, False, True, False]
    assert res[0]["sam_iou"] is None and res[1]["sam_iou"] is None and res[3]["sam_iou"] is None


def test_filter_without_sam_runs_cheap_checks_only():
    sf = SampleFilter(FilterConfig())
    assert sf.aligner is None
    good, black = person_sample(index=0), person_sample(index=1)
    black["image"][:] = 0
    res = sf.score([good, black])
    assert res == [{"accepted": True, "reason": None, "sam_iou": None, "keypoints_in_sam_mask": None},
                   {"accepted": False, "reason": "black", "sam_iou": None, "keypoints_in_sam_mask": None}]
    with pytest.raises(ValueError, match="filter.sam is off"):
        sf.score([good], sam_masks=[good["layers"]["mask"]])
    with pytest.raises(ValueError, match="no image"):
        sf.score([{"index": 3, "image": None}])


def test_real_render_shifted_by_30_percent_is_rejected(anny_factory, tiny_sam):
    factory = anny_factory
    sample = factory.prepare(1, factory.pose_subjects([1])[0])
    factory.backend.generate([sample])  # the shaded image
    assert sample["image"].dtype == np.uint8
    mask = sample["layers"]["mask"]
    sf = SampleFilter(FilterConfig(sam=SamConfig(model=str(tiny_sam))))
    kept, moved = sf.score([sample, sample], sam_masks=[mask > 0, shifted(mask, 0.3)])
    assert kept["accepted"] and kept["sam_iou"] == 1.0 and kept["keypoints_in_sam_mask"] == 1.0
    assert not moved["accepted"] and moved["reason"] == "sam_iou"
    assert moved["keypoints_in_sam_mask"] < 1.0


# --- tiny SAM through the production path ---------------------------------------------------------
def test_tiny_sam_masks_have_the_image_shape(tiny_sam):
    aligner = SamAligner(SamConfig(model=str(tiny_sam)), device="cpu", batch_size=2)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (120, 96, 3), dtype=np.uint8),
              rng.random((64, 128, 3), dtype=np.float32)]  # different sizes, uint8 and float
    boxes = [[10.0, 20.0, 80.0, 110.0], [0.0, 0.0, 127.0, 63.0]]
    points = [np.array([[40.0, 50.0], [45.0, 90.0], [30.0, 30.0]]), np.array([[60.0, 30.0]])]
    masks = aligner.masks(images, boxes, points)
    assert [m.shape for m in masks] == [(120, 96), (64, 128)]
    assert all(m.dtype == np.bool_ for m in masks)
    # per-image prompts, no padding: a sample's mask does not depend on its batch
    assert np.array_equal(aligner.masks(images[1:], boxes[1:], points[1:])[0], masks[1])
    assert [m.shape for m in aligner.masks(images, boxes, None)] == [(120, 96), (64, 128)]
    assert aligner.masks(images, boxes, [None, np.zeros((0, 2))])[0].shape == (120, 96)
    with pytest.raises(ValueError, match="boxes"):
        aligner.masks(images, boxes[:1])


def test_sample_filter_end_to_end_with_tiny_sam(tiny_sam):
    samples = [person_sample(index=i) for i in range(3)]
    for points in (True, False):
        sf = SampleFilter(FilterConfig(sam=SamConfig(model=str(tiny_sam), point_prompts=points)),
                          batch_size=2)
        res = sf.score(samples)
        for r in res:
            assert 0.0 <= r["sam_iou"] <= 1.0 and 0.0 <= r["keypoints_in_sam_mask"] <= 1.0
            assert r["accepted"] == (r["reason"] is None)
            assert r["reason"] in (None, "sam_iou", "keypoints_outside_sam_mask")


@pytest.mark.parametrize("model", ["facebook/sam-vit-base", "/no/such/folder", "empty"])
def test_missing_sam_model_fails_fast_with_the_fix(model, tmp_path, network_attempts):
    if model == "empty":
        model = str(tmp_path)  # a folder without model files
    import transformers  # noqa: F401  (import time is not the failure's time)

    start = time.perf_counter()
    with pytest.raises(MissingModelError) as err:
        SampleFilter(FilterConfig(sam=SamConfig(model=model)))
    assert time.perf_counter() - start < 30.0 and not network_attempts  # no download, no retry loop
    message = str(err.value)
    assert "filter.sam.model" in message and model in message
    assert "huggingface-cli download facebook/sam-vit-base" in message


def test_hub_id_loads_from_the_local_hugging_face_cache(tiny_sam, tmp_path, monkeypatch):
    """A hub id already downloaded into the HF cache loads offline, without touching the network."""
    import shutil

    cache = tmp_path / "hub"
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    repo = cache / "models--synthgen-tests--tiny-sam"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    shutil.copytree(tiny_sam, repo / "snapshots" / ("0" * 40))
    aligner = SamAligner(SamConfig(model="synthgen-tests/tiny-sam"))
    image = np.random.default_rng(0).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    from_cache = aligner.masks([image], [[5.0, 5.0, 40.0, 60.0]])[0]
    from_folder = SamAligner(SamConfig(model=str(tiny_sam))).masks([image], [[5.0, 5.0, 40.0, 60.0]])[0]
    assert np.array_equal(from_cache, from_folder)
