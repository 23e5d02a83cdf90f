"""``output.formats: [synthgen, hmr2]`` read by 4D-Humans' own tar loader (tests/fixtures/vendored_4dhumans.py).

Figures quoted from 4D-Humans at commit 6ec79656 (github shubham-goel/4D-Humans):
- hmr2/configs_hydra/data_filtering/low1.yaml: SUPPRESS_KP_CONF_THRESH: 0.3, FILTER_NUM_KP: 4,
  FILTER_REPROJ_THRESH: 31000, SUPPRESS_BETAS_THRESH: 3.0, SUPPRESS_BAD_POSES: True,
  POSES_BETAS_SIMULTANEOUS: True (BAD_POSES needs its AMASS histogram file: not vendored);
- hmr2/configs_hydra/experiment/default.yaml: DATASETS.BETAS_REG: True, DATASETS.CONFIG (the
  augmentation below), EXTRA.PELVIS_IND: 39; hmr_vit_transformer.yaml: MODEL.IMAGE_SIZE: 256;
- hmr2/models/__init__.py: ViT backbones crop with ``MODEL.BBOX_SHAPE = [192,256]``;
- image_dataset.py: ``if bbox_size < 1: breakpoint()``; ``filter_numkp``: ``(kp_conf > thresh).sum() > numkp``.
"""

from __future__ import annotations

import io
import json
import pickle
import pickletools
import subprocess
import sys

import numpy as np
import pytest
import torch
import webdataset as wds

from tests.fixtures.recipes import small_recipe
from synthgen.formats import hmr2

from tests.fixtures import smpl_fixture
from tests.fixtures import vendored_4dhumans as v4d

CFG = v4d.CfgNode(
    MODEL=v4d.CfgNode(IMAGE_SIZE=256, IMAGE_MEAN=[0.485, 0.456, 0.406], IMAGE_STD=[0.229, 0.224, 0.225],
                      BBOX_SHAPE=[192, 256]),
    DATASETS=v4d.CfgNode(
        SUPPRESS_KP_CONF_THRESH=0.3, FILTER_NUM_KP=4, FILTER_NUM_KP_THRESH=0.0, FILTER_REPROJ_THRESH=31000,
        SUPPRESS_BETAS_THRESH=3.0, POSES_BETAS_SIMULTANEOUS=True, FILTER_NO_POSES=False, BETAS_REG=True,
        CONFIG=v4d.CfgNode(SCALE_FACTOR=0.3, ROT_FACTOR=30, TRANS_FACTOR=0.02, COLOR_SCALE=0.2,
                           ROT_AUG_RATE=0.6, TRANS_AUG_RATE=0.5, DO_FLIP=True, FLIP_AUG_RATE=0.5,
                           EXTREME_CROP_AUG_RATE=0.0, EXTREME_CROP_AUG_LEVEL=1)))


@pytest.fixture(autouse=True)
def no_breakpoints(monkeypatch):
    """4D-Humans calls breakpoint() on a box under 1 px: make that a test failure, not a hang."""
    def stop(*args, **kwargs):
        raise AssertionError("4D-Humans' loader reached breakpoint() (a box under 1 px)")
    monkeypatch.setattr(sys, "breakpointhook", stop)


@pytest.fixture(scope="module")
def anny_run(tmp_path_factory):
    from synthgen.run import generate

    out = tmp_path_factory.mktemp("hmr2_anny")
    recipe = small_recipe(num_samples=6, image={"width": 160, "height": 128},
                          output={"shard_size": 3, "formats": ["synthgen", "hmr2"]})
    generate(recipe, out, workers=1, progress=False)
    return out


def raw_samples(out):
    return list(wds.WebDataset(sorted(str(p) for p in (out / "shards").glob("*.tar")), shardshuffle=False))


def loader_items(out, train):
    urls = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    return list(v4d.load_tars_as_webdataset(CFG, urls, train=train))


def test_4dhumans_loader_keeps_every_sample_through_its_filters(anny_run):
    items = loader_items(anny_run, train=False)
    assert sorted(i["imgname"] for i in items) == [f"{k:09d}" for k in range(6)]
    for item in items:
        assert item["img"].shape == (3, 256, 256) and item["keypoints_2d"].shape == (44, 3)
        assert item["keypoints_3d"].shape == (44, 4)
        # Anny has no SMPL parameters: has_* are 0 (BETAS_REG then sets has_betas with zero betas)
        assert item["has_smpl_params"]["body_pose"] == 0.0
        assert item["mask"].shape == (256, 256)  # no detection.npz: 4D-Humans masks the whole image


def test_crop_keypoints_are_our_projected_keypoints(anny_run):
    """Without augmentation, 4D-Humans maps the box centre to the patch centre and the box size (the
    x1.2 box expanded to 192:256) to 256 px, then divides by 256: kp -> (kp - center) / size."""
    labels = {s["__key__"]: json.loads(s["json"]) for s in raw_samples(anny_run)}
    for item in loader_items(anny_run, train=False):
        instance = labels[item["imgname"]]["instances"][0]
        kp2d, _ = hmr2.slot_keypoints(instance)
        expected = (kp2d[:, :2] - item["box_center"]) / item["box_size"]
        seen = item["keypoints_2d"][:, 2] > 0
        np.testing.assert_allclose(item["keypoints_2d"][seen, :2], expected[seen], atol=1e-4)
        x, y, w, h = instance["bbox"]
        np.testing.assert_allclose(item["_scale"] * 200, [1.2 * w, 1.2 * h], rtol=1e-6)


def test_training_augmentation_runs_on_our_shards(anny_run):
    np.random.seed(0)
    import random
    random.seed(0)
    for _ in range(3):
        for item in loader_items(anny_run, train=True):
            assert np.isfinite(item["img"]).all() and np.isfinite(item["keypoints_3d"]).all()
            assert item["keypoints_3d"][hmr2.PELVIS_SLOT, 3] == 1.0


def test_slots_follow_4dhumans_flip_permutation():
    """4D-Humans' FLIP_KEYPOINT_PERMUTATION swaps left/right slots: our sources must agree."""
    def mirror(name):
        return name.replace("left_", "@").replace("right_", "left_").replace("@", "right_")
    for slot, partner in enumerate(v4d.FLIP_KEYPOINT_PERMUTATION):
        assert hmr2.SLOT_SOURCES[partner] == mirror(hmr2.SLOT_SOURCES[slot]), (slot, partner)
    assert len(hmr2.SLOT_SOURCES) == len(hmr2.SLOT_NAMES) == 44
    assert hmr2.SLOT_NAMES[hmr2.PELVIS_SLOT] == "Pelvis (MPII)"


def test_slots_come_from_the_body_models_own_joints(anny_run):
    for sample in raw_samples(anny_run):
        instance = json.loads(sample["json"])["instances"][0]
        [person] = pickle.loads(sample["data.pyd"])
        names = instance["keypoint_names"]
        kp3d = np.asarray(instance["keypoints_3d"], np.float32)
        for slot, joint in [(8, "pelvis"), (39, "pelvis"), (40, "thorax"), (41, "spine"), (38, "head_top"),
                            (43, "head"), (1, "neck"), (37, "neck")]:
            np.testing.assert_array_equal(person["keypoints_3d"][slot, :3], kp3d[names.index(joint)])
            assert person["keypoints_3d"][slot, 3] == 1.0
        hips = (kp3d[names.index("left_hip")] + kp3d[names.index("right_hip")]) / 2
        assert np.linalg.norm(person["keypoints_3d"][39, :3] - hips) > 1e-3  # a joint, not a midpoint
        assert person["keypoints_3d"][42, 3] == 0 and person["keypoints_2d"][42, 2] == 0  # Anny: no jaw
        conf = person["keypoints_2d"][:, 2]
        assert set(np.unique(conf)) <= {0.0, 1.0}  # never COCO's 2
        vis = np.asarray(instance["keypoints_2d"])[names.index("nose"), 2]
        assert conf[0] == (1.0 if vis > 0 else 0.0)
        assert person["has_body_pose"].shape == () and person["has_body_pose"].dtype == np.float32
        assert person["body_pose"].shape == (72,) and person["betas"].shape == (10,)


def test_pickle_has_no_numpy_core_references(anny_run):
    """NumPy 1 cannot unpickle ``numpy._core`` (numpy/numpy#28340): only ``numpy.array`` is named."""
    for sample in raw_samples(anny_run):
        out = io.StringIO()
        pickletools.dis(sample["data.pyd"], out=out)
        text = out.getvalue()
        assert "_core" not in text and "multiarray" not in text
        globals_ = [line for line in text.splitlines() if "GLOBAL" in line]
        assert globals_ and all("STACK_GLOBAL" in g for g in globals_)
        strings = [line.split("'")[1] for line in text.splitlines() if "UNICODE" in line]
        assert {s for s in strings if s.startswith("numpy")} == {"numpy"}
    assert hmr2.dumps(np.zeros(2, np.float32)) != pickle.dumps(np.zeros(2, np.float32))  # a real change


def test_unseen_person_is_left_out_instead_of_stopping_4dhumans():
    instance = {"id": 1, "kind": "human", "model": "anny", "bbox": [0.0, 0.0, 0.0, 0.0],
                "keypoint_names": ["nose"], "keypoints_2d": [[1.0, 2.0, 0.0]], "keypoints_3d": [[0.0, 0.0, 1.0]]}
    assert hmr2.people({"index": 0, "instances": [instance]}) == []
    instance["bbox"] = [10.0, 10.0, 3.0, 5.0]
    assert len(hmr2.people({"index": 0, "instances": [instance, dict(instance, kind="object")]})) == 1


def test_hmr2_refused_for_animals_and_sequences(tmp_path):
    for recipe in ("recipes/genzoo_shaded.yaml", "recipes/egosim.yaml"):
        proc = subprocess.run([sys.executable, "-m", "synthgen", "validate", recipe,
                               "output.formats=[synthgen,hmr2]"], capture_output=True, text=True)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert "output.formats=hmr2" in proc.stderr and "Traceback" not in proc.stderr


# --- SMPL-family subjects: body_pose / betas with the orientation in the camera ------------------
@pytest.fixture(scope="module")
def smpl_run(tmp_path_factory):
    from synthgen.run import generate

    root = tmp_path_factory.mktemp("smpl_models")
    smpl_fixture.write_model(root / "smpl" / "SMPL_NEUTRAL.pkl", "smpl", arrays=smpl_fixture.synthetic_model("smpl"))
    out = tmp_path_factory.mktemp("hmr2_smpl")
    recipe = small_recipe(num_samples=4, subject={"model": "smpl", "model_path": str(root)},
                          output={"shard_size": 4, "formats": ["synthgen", "hmr2"]})
    generate(recipe, out, workers=1, progress=False)
    return out, root


def test_smpl_parameters_pose_the_body_in_the_camera_frame(smpl_run):
    """SMPL(body_pose with the camera-frame global orient, betas) relative to its pelvis gives the
    data.pyd keypoints_3d relative to slot 39: what 4D-Humans' 3D loss compares."""
    import smplx

    out, root = smpl_run
    body = smplx.SMPL(model_path=str(root / "smpl"), num_betas=10)
    for sample in raw_samples(out):
        [person] = pickle.loads(sample["data.pyd"])
        assert person["has_body_pose"] == 1.0 and person["has_betas"] == 1.0
        with torch.no_grad():
            joints = body(betas=torch.from_numpy(person["betas"])[None],
                          global_orient=torch.from_numpy(person["body_pose"][:3])[None],
                          body_pose=torch.from_numpy(person["body_pose"][3:])[None]).joints[0].numpy()
        ours = person["keypoints_3d"][:, :3] - person["keypoints_3d"][hmr2.PELVIS_SLOT, :3]
        for slot, joint in [(2, 17), (5, 16), (10, 5), (13, 4), (4, 21), (41, 6), (40, 9), (43, 15)]:
            np.testing.assert_allclose(ours[slot], joints[joint] - joints[0], atol=2e-4)


def test_smpl_camera_labels_put_the_mesh_in_the_camera(smpl_run):
    """``global_orient_cam`` + ``transl_cam`` (instance camera_labels) with smplx give the
    camera-frame keypoints (BEDLAM's ``pose_cam[:3]`` / ``trans_cam``)."""
    import smplx

    out, root = smpl_run
    body = smplx.SMPL(model_path=str(root / "smpl"), num_betas=10)
    for sample in raw_samples(out):
        labels = json.loads(sample["json"])
        instance = labels["instances"][0]
        p, cam = instance["params"], instance["camera_labels"]
        with torch.no_grad():
            joints = body(betas=torch.tensor([p["betas"]]), body_pose=torch.tensor([p["body_pose"]]),
                          global_orient=torch.tensor([cam["global_orient_cam"]]),
                          transl=torch.tensor([cam["transl_cam"]])).joints[0].numpy()
        kp = np.asarray(instance["keypoints_3d"])
        names = instance["keypoint_names"]
        np.testing.assert_allclose(joints[0], kp[names.index("pelvis")], atol=1e-4)
        np.testing.assert_allclose(joints[17], kp[names.index("right_shoulder")], atol=1e-4)
