"""Reading shards: flat per-sample arrays (load_shards), plain webdataset and Hugging Face datasets
on the same tar files."""

import cv2
import numpy as np
import pytest
import webdataset as wds

from synthgen.data import load_shards, shard_paths


@pytest.fixture(scope="module")
def samples(generated):
    out, _ = generated
    return list(load_shards(out, flat=True))


def test_flat_arrays_for_single_subject_training(samples):
    s = samples[0]
    instance = s["instances"][0]
    assert s["keypoints_2d"].dtype == np.float32 and s["keypoints_2d"].shape == (29, 3)
    assert np.array_equal(s["keypoints_2d"], instance["keypoints_2d"])
    assert s["bone_rotvec"].shape == (103, 3) and s["cam_int"].shape == (3, 3)
    assert s["views"]["image"]["image"] is s["image"]


def test_plain_webdataset_reads_layers_with_their_bit_depth(generated):
    out, _ = generated
    dataset = wds.WebDataset(shard_paths(out), shardshuffle=False).decode("l8")
    sample = next(iter(dataset))
    assert {"jpg", "json", "normal.png", "depth.png", "mask.png", "parts.png", "edges.png",
            "skeleton.png"} <= set(sample)
    raw = next(iter(wds.WebDataset(shard_paths(out), shardshuffle=False)))

    depth = cv2.imdecode(np.frombuffer(raw["depth.png"], np.uint8), cv2.IMREAD_UNCHANGED)
    assert depth.dtype == np.uint16


def test_hugging_face_datasets_reads_the_same_shards(generated):
    datasets = pytest.importorskip("datasets")
    out, recipe = generated
    ds = datasets.load_dataset("webdataset", data_files={"train": shard_paths(out)}, split="train")
    assert len(ds) == recipe.num_samples
    row = ds[0]
    assert row["json"]["index"] == 0
    assert row["jpg"].size == (128, 128)
