"""COCO person keypoints (what pycocotools and mmpose read), one annotation per human instance.

Coordinates: COCO keypoints are pixel indices (detectron2 adds 0.5 to make them continuous), like
ours (pixel centres at integers), so they are written unchanged; COCO boxes and masks are
continuous with pixel i covering [i, i + 1), so our ``bbox`` (edges at +-0.5) moves by +0.5.
Invisible keypoints (visibility 0) are written as (0, 0, 0), COCO's convention.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from synthgen.subjects.base import KEYPOINT_NAMES

COCO_KEYPOINTS = KEYPOINT_NAMES[:17]  # the COCO-17 order
COCO_SKELETON = [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8],
                 [7, 9], [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]]
PERSON = {"id": 1, "name": "person", "supercategory": "person", "keypoints": COCO_KEYPOINTS,
          "skeleton": COCO_SKELETON}


def image_entry(image_id: int, file_name: str, width: int, height: int) -> dict[str, Any]:
    return {"id": int(image_id), "file_name": file_name, "width": int(width), "height": int(height)}


def rle(mask: np.ndarray) -> dict[str, Any]:
    """Uncompressed COCO RLE of an (H, W) bool mask: run lengths in column-major order, starting
    with a run of zeros."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def keypoints(instance: dict[str, Any]) -> tuple[list[float], int]:
    """COCO's flat [x1, y1, v1, ...] of the 17 points and ``num_keypoints`` (v > 0)."""
    index = {name: k for k, name in enumerate(instance["keypoint_names"])}
    points = np.asarray(instance["keypoints_2d"], dtype=np.float64)
    flat: list[float] = []
    for name in COCO_KEYPOINTS:
        x, y, v = points[index[name]]
        flat += [float(x), float(y), int(v)] if v > 0 else [0.0, 0.0, 0]
    return flat, sum(1 for v in flat[2::3] if v > 0)


def annotation(ann_id: int, image_id: int, instance: dict[str, Any],
               mask: np.ndarray | None) -> dict[str, Any] | None:
    """One person annotation, or None for an instance that is not a human or not seen.

    ``mask`` (H, W) bool: the instance's pixels (from ``instance.png``); without it the area is
    the box's and no segmentation is written.
    """
    x, y, w, h = instance["bbox"]
    if instance.get("kind") != "human" or w <= 0 or h <= 0:
        return None
    flat, count = keypoints(instance)
    out = {"id": int(ann_id), "image_id": int(image_id), "category_id": PERSON["id"], "iscrowd": 0,
           "bbox": [x + 0.5, y + 0.5, w, h], "keypoints": flat, "num_keypoints": count,
           "area": float(mask.sum()) if mask is not None else float(w * h),
           "synthgen_instance_id": int(instance["id"])}
    if mask is not None:
        out["segmentation"] = rle(mask)
    return out
