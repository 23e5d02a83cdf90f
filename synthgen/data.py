"""Read synthgen shards back for training: a webdataset pipeline yielding decoded arrays.

>>> from synthgen.data import load_shards
>>> for sample in load_shards("out/quickstart"):
...     sample["image"]         # (H, W, 3) uint8 RGB
...     sample["keypoints_2d"]  # (K, 3) float32 x, y, COCO visibility
...     sample["depth"]         # (H, W) float32 metres, 0 = background
...     sample["labels"]        # the whole label dict

Hugging Face ``datasets`` reads the same shards:
``datasets.load_dataset("webdataset", data_files={"train": shard_paths(DIR)}, split="train")``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import cv2
import numpy as np
import webdataset as wds

from synthgen.write import MANIFEST

# Label fields turned into float32 arrays in each sample (when present).
ARRAY_FIELDS = ("cam_int", "cam_ext", "keypoints_2d", "keypoints_3d", "bbox", "center", "scale")
SUBJECT_ARRAY_FIELDS = ("betas", "body_pose", "global_orient", "transl", "bone_rotvec", "root_transform",
                        "poses")


def shard_paths(dataset: str | Path) -> list[str]:
    """Complete shards of a dataset folder (from its manifest), or the given tar path(s)."""
    path = Path(dataset)
    if path.is_dir():
        manifest = path / MANIFEST
        if not manifest.is_file():
            raise FileNotFoundError(f"{path} has no {MANIFEST}; is it a synthgen output folder?")
        return [str(path / s["path"]) for s in json.loads(manifest.read_text())["shards"]]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such dataset folder or shard")
    return [str(path)]


def _decode_image(key: str, data: bytes) -> Any:
    ext = key.rsplit(".", 1)[-1].lower()
    if ext not in ("png", "jpg", "jpeg"):
        return None
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is not None and array.ndim == 3:
        array = np.ascontiguousarray(array[..., ::-1])
    return array


def to_training_sample(raw: dict[str, Any]) -> dict[str, Any]:
    """A decoded webdataset sample -> named arrays (layers keyed by name, depth in metres)."""
    labels = raw["json"]
    out: dict[str, Any] = {"__key__": raw["__key__"], "labels": labels}
    if "jpg" in raw:
        out["image"] = raw["jpg"]
    for key, value in raw.items():
        if key.endswith(".png"):
            out[key[:-4]] = value
    if "depth" in out:
        out["depth"] = out["depth"].astype(np.float32) / 1000.0
    if "mask" in out:
        out["mask"] = out["mask"] > 0
    for name in ARRAY_FIELDS:
        if name in labels:
            out[name] = np.asarray(labels[name], dtype=np.float32)
    for name in SUBJECT_ARRAY_FIELDS:
        if name in labels.get("subject", {}):
            out[name] = np.asarray(labels["subject"][name], dtype=np.float32)
    if "npz" in raw:
        out.update({f"npz.{k}": v for k, v in raw["npz"].items()})
    return out


def load_shards(dataset: str | Path | Iterable[str], shuffle: int = 0, split_by_node: bool = True):
    """A ``webdataset.WebDataset`` over a dataset folder or shard paths, decoded for training.

    ``shuffle``: sample shuffle buffer (0 = file order). Under torch.distributed, shards are
    split across ranks (``split_by_node``) and across DataLoader workers.
    """
    urls = shard_paths(dataset) if isinstance(dataset, (str, Path)) else list(dataset)
    pipeline = wds.WebDataset(urls, shardshuffle=False, empty_check=False,
                              nodesplitter=wds.split_by_node if split_by_node else wds.single_node_only)
    if shuffle:
        pipeline = pipeline.shuffle(shuffle)
    return pipeline.decode(_decode_image).map(to_training_sample)
