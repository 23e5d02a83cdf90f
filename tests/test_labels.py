"""Labels read back from real shards agree with the stored camera and the rendered layers."""

import json

import cv2
import numpy as np
import pytest

from synthgen.data import load_shards


@pytest.fixture(scope="module")
def samples(generated):
    out, _ = generated
    return list(load_shards(out, flat=True))


def test_every_sample_is_written_once_in_order(generated, samples):
    out, recipe = generated
    assert [s["labels"]["index"] for s in samples] == list(range(recipe.num_samples))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["num_samples_written"] == recipe.num_samples
    assert [s["samples"] for s in manifest["shards"]] == [2, 2, 2]
    assert manifest["recipe_hash"] == samples[0]["labels"]["recipe_hash"]


def test_projection_of_keypoints_3d_equals_keypoints_2d(samples):
    for s in samples:
        instance = s["labels"]["instances"][0]
        K, X = np.asarray(s["labels"]["cam_int"]), np.asarray(instance["keypoints_3d"])
        uv = (X @ K.T)[:, :2] / (X @ K.T)[:, 2:3]
        assert np.abs(uv - np.asarray(instance["keypoints_2d"])[:, :2]).max() < 0.01


def test_visible_keypoints_fall_inside_the_mask(samples):
    visible = 0
    for s in samples:
        for x, y, vis in s["keypoints_2d"]:
            if vis == 2:
                visible += 1
                assert s["mask"][int(round(y)), int(round(x))]
            if vis == 0:
                h, w = s["mask"].shape
                assert not (0 <= round(x) < w and 0 <= round(y) < h)
    assert visible > 5 * len(samples)


def test_bbox_center_scale_follow_the_mask(samples):
    for s in samples:
        rows, cols = np.nonzero(s["mask"])
        instance = s["labels"]["instances"][0]
        x, y, w, h = instance["bbox"]
        assert x == cols.min() - 0.5 and y == rows.min() - 0.5
        assert w == cols.max() - cols.min() + 1 and h == rows.max() - rows.min() + 1
        assert instance["scale"] == pytest.approx(max(w, h) / 200)
        assert instance["center"] == pytest.approx([x + w / 2, y + h / 2])
        assert ((s["instance"] == instance["id"]) == s["mask"]).all()  # the id layer


def test_depth_layer_is_metric_z_in_millimetres(samples):
    for s in samples:
        depth, mask = s["depth"], s["mask"]
        assert ((depth > 0) == mask).all()
        X = s["keypoints_3d"]
        assert 0.2 < np.median(depth[mask]) < 30
        # the body's surface depth brackets its keypoints' depth
        assert depth[mask].min() < X[:, 2].max() and depth[mask].max() > X[:, 2].min()


def test_vertices_npz_projects_onto_the_mask(samples):
    s = samples[0]
    V = s["npz.vertices"].astype(np.float64)
    K = np.asarray(s["labels"]["cam_int"])
    uv = (V @ K.T)[:, :2] / (V @ K.T)[:, 2:3]
    h, w = s["mask"].shape
    cols, rows = np.rint(uv[:, 0]).astype(int), np.rint(uv[:, 1]).astype(int)
    inside = (cols >= 0) & (cols < w) & (rows >= 0) & (rows < h)
    # silhouette vertices round to either side of the edge: allow one pixel
    near_mask = cv2.dilate(s["mask"].astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    assert near_mask[rows[inside], cols[inside]].mean() > 0.999


def test_cam_ext_is_a_rigid_world_to_camera_map(samples):
    for s in samples:
        E = np.asarray(s["labels"]["cam_ext"])
        assert np.allclose(E[:3, :3] @ E[:3, :3].T, np.eye(3), atol=1e-9)
        assert np.allclose(E[3], [0, 0, 0, 1])


def test_labels_use_the_names_users_know(samples):
    labels = samples[0]["labels"]
    for key in ("cam_int", "cam_ext", "index", "seed", "recipe_hash", "image_size", "conventions", "instances"):
        assert key in labels
    [instance] = labels["instances"]
    for key in ("id", "kind", "model", "keypoints_2d", "keypoints_3d", "keypoint_names", "bbox", "center",
                "scale", "params"):
        assert key in instance
    assert instance["id"] == 1 and instance["kind"] == "human" and instance["model"] == "anny"
    params = instance["params"]
    assert params["body_model"]["name"] == "anny"
    assert set(params["phenotype"]) == {"gender", "age", "muscle", "weight", "height", "proportions"}
    assert np.asarray(params["bone_rotvec"]).shape == (103, 3)
    assert len(instance["keypoint_names"]) == np.asarray(instance["keypoints_2d"]).shape[0] == 29  # COCO-23 + 6 joints
