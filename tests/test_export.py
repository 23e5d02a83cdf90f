"""``synthgen export coco|bedlam``: read back with pycocotools, and with a reader written from
BEDLAM's documented keys (github pixelite1201/BEDLAM, data_processing/df_full_body.py: ``np.savez(
imgname, center, scale, pose_cam, pose_world, shape, trans_cam, trans_world, gtkps, cam_int,
cam_ext, gender, ...)``; its loaders take the camera-frame translation as ``cam_ext[:, 3]`` plus
``trans_cam`` (train/dataset/datasetx.py) and slice ``pose_cam`` as global orient 0:3, body 3:66,
jaw 66:69, eyes 69:75, hands 75:120 and 120:165 (df_full_body.get_smplx_vertices))."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.fixtures.recipes import small_recipe

from tests.fixtures import smpl_fixture

pycocotools = pytest.importorskip("pycocotools")


def cli(*args):
    return subprocess.run([sys.executable, "-m", "synthgen", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def coco_export(generated, tmp_path_factory):
    run, recipe = generated
    out = tmp_path_factory.mktemp("coco")
    proc = cli("export", "coco", run, "--out", out, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    return run, out


def test_pycocotools_loads_the_person_keypoints(coco_export):
    from pycocotools.coco import COCO
    from pycocotools import mask as mask_utils

    from synthgen.data import load_shards

    run, out = coco_export
    api = COCO(str(out / "annotations" / "person_keypoints.json"))
    [cat] = api.loadCats(api.getCatIds(catNms=["person"]))
    assert len(cat["keypoints"]) == 17 and cat["keypoints"][0] == "nose" and len(cat["skeleton"]) == 19
    samples = {s["labels"]["index"]: s for s in load_shards(run)}
    assert sorted(api.getImgIds()) == sorted(samples)
    for image_id, sample in samples.items():
        image = api.loadImgs(image_id)[0]
        assert (out / "images" / image["file_name"]).read_bytes()[:2] == b"\xff\xd8"
        [ann] = api.loadAnns(api.getAnnIds(imgIds=image_id))  # one per instance
        instance = sample["instances"][0]
        mask = api.annToMask(ann).astype(bool)
        assert (mask == (sample["instance"] == instance["id"])).all() and ann["area"] == mask.sum()
        rle = api.annToRLE(ann)
        np.testing.assert_allclose(mask_utils.toBbox(rle), ann["bbox"])  # COCO boxes: pixel i spans [i, i+1)
        kp = np.asarray(ann["keypoints"]).reshape(17, 3)
        ours = instance["keypoints_2d"][:17]
        assert ann["num_keypoints"] == int((ours[:, 2] > 0).sum()) and ann["iscrowd"] == 0
        seen = ours[:, 2] > 0
        np.testing.assert_allclose(kp[seen, :2], ours[seen, :2], atol=1e-4)
        assert (kp[~seen] == 0).all()


def test_cocoeval_scores_the_ground_truth_as_perfect(coco_export):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    _, out = coco_export
    gt = COCO(str(out / "annotations" / "person_keypoints.json"))
    anns = gt.loadAnns(gt.getAnnIds())
    dets = gt.loadRes([{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
                       for a in anns])
    ev = COCOeval(gt, dets, "keypoints")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)


def fake_run(tmp_path, **sections) -> Path:
    """A run folder whose manifest holds ``sections``' recipe (the refusals read nothing else)."""
    run = tmp_path / "run"
    (run / "shards").mkdir(parents=True)
    manifest = {"recipe": small_recipe(**sections).model_dump(mode="json"), "recipe_hash": "x",
                "num_samples_written": 1, "shards": [{"path": "shards/shard-000000.tar"}]}
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


@pytest.mark.parametrize("fmt, sections, words", [
    ("coco", {"subject": {"kind": "animal"}}, "subject.kind=animal"),
    ("coco", {"subject": {"kind": "object"}}, "PASCAL3D+"),
    ("bedlam", {}, "subject.model=anny"),
    ("coco", {"backend": {"kind": "none"}}, "backend.kind=none"),
])
def test_export_refuses_what_it_cannot_represent(tmp_path, fmt, sections, words):
    proc = cli("export", fmt, fake_run(tmp_path, **sections), "--out", tmp_path / "x")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and words in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "x").exists()


def test_export_refuses_a_folder_that_is_not_a_run(tmp_path):
    proc = cli("export", "coco", tmp_path, "--out", tmp_path / "x")
    assert proc.returncode == 2 and "manifest.json" in proc.stderr and proc.stderr.count("\n") == 1


# --- BEDLAM ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smplx_export(tmp_path_factory):
    from synthgen.run import generate

    root = tmp_path_factory.mktemp("smplx_models")
    path = smpl_fixture.write_model(root / "smplx" / "SMPLX_NEUTRAL.pkl", "smplx",
                                    arrays=smpl_fixture.synthetic_model("smplx"))
    run = tmp_path_factory.mktemp("smplx_run")
    recipe = small_recipe(num_samples=4, subject={"model": "smplx", "model_path": str(root)},
                          output={"shard_size": 2})
    generate(recipe, run, workers=1, progress=False)
    out = tmp_path_factory.mktemp("bedlam")
    proc = cli("export", "bedlam", run, "--out", out, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    return run, out, path


def read_bedlam(folder: Path) -> dict[str, np.ndarray]:
    """BEDLAM's keys from every npz of an export (its loaders concatenate scenes alike)."""
    files = sorted((folder / "labels").glob("*.npz"))
    keys = ("imgname", "center", "scale", "pose_cam", "shape", "trans_cam", "cam_int", "cam_ext", "gtkps")
    return {k: np.concatenate([np.load(f)[k] for f in files]) for k in keys}


def test_bedlam_rows_rebuild_the_camera_frame_body(smplx_export):
    import smplx

    run, out, path = smplx_export
    data = read_bedlam(out)
    assert len(list((out / "labels").glob("*.npz"))) == 2 and data["pose_cam"].shape == (4, 165)
    assert data["shape"].shape == (4, 11) and data["gtkps"].shape == (4, 24, 3)
    # the recipe draws 10 betas; BEDLAM's 11th is zero padding (the test model has no 11th component)
    assert (data["shape"][:, 10] == 0).all()
    body = smplx.SMPLX(model_path=str(path), ext="pkl", num_betas=10, use_pca=False)
    for k in range(4):
        pose = torch.from_numpy(data["pose_cam"][k])[None]
        with torch.no_grad():
            joints = body(betas=torch.from_numpy(data["shape"][k, :10])[None], global_orient=pose[:, :3],
                          body_pose=pose[:, 3:66], jaw_pose=pose[:, 66:69], leye_pose=pose[:, 69:72],
                          reye_pose=pose[:, 72:75], left_hand_pose=pose[:, 75:120],
                          right_hand_pose=pose[:, 120:165],
                          transl=torch.from_numpy(data["trans_cam"][k])[None]).joints[0, :24].numpy()
        cam = joints + data["cam_ext"][k][:3, 3]
        uvw = cam @ data["cam_int"][k].T
        labelled = data["gtkps"][k][:, 2] > 0
        assert labelled.sum() == 18  # every first-24 SMPL-X joint we label (not spine1, feet, collars, eye)
        np.testing.assert_allclose(uvw[labelled, :2] / uvw[labelled, 2:], data["gtkps"][k][labelled, :2], atol=0.05)
        assert (out / "images" / str(data["imgname"][k])).is_file()


def test_bedlam_box_is_the_padded_square(smplx_export):
    from synthgen.data import load_shards

    run, out, _ = smplx_export
    data = read_bedlam(out)
    for k, sample in enumerate(load_shards(run)):
        x, y, w, h = sample["instances"][0]["bbox"]
        assert data["scale"][k] == pytest.approx(1.2 * max(w, h) / 200)
        np.testing.assert_allclose(data["center"][k], [x + w / 2, y + h / 2])
        assert str(data["imgname"][k]) == f"{sample['__key__']}.jpg"
