"""The label schema: one record per camera view, one entry per subject in ``instances``.

Every sample's ``json`` (single images) and every camera of a sequence frame
(``json["views"]["camK"]``) is a *view record*:

================  ==============  ========================================================
key               shape / type    meaning
================  ==============  ========================================================
image_size        [W, H]          pixels
cam_int           (3, 3)          K; ``keypoints_2d = (K @ X)[:2] / (K @ X)[2]``, pixel
                                  centres at integer coordinates
cam_ext           (4, 4)          world -> camera (OpenCV axes: x right, y down, z forward)
instances         list            one entry per subject (below), ``id`` = 1, 2, ...
================  ==============  ========================================================

An instance:

================  ==============  ========================================================
id                int >= 1        its pixel value in the ``instance.png`` layer (0 = none)
kind              str             human, animal or object
model             str             anny, smpl, smplh, smplx, smal, quadruped, mesh
keypoints_2d      (K, 3)          x, y pixels + COCO visibility (0 outside, 1 hidden, 2 seen)
keypoints_3d      (K, 3)          camera frame, metres
keypoint_names    [K]             names of the keypoint rows (humans: COCO-17 + 6 foot points,
                                  then the body model's own joints: pelvis, spine, thorax,
                                  neck, head, head_top, SMPL-X's jaw)
bbox              [x, y, w, h]    of its visible pixels (edges at +-0.5); zeros when unseen
center, scale     [2], float      bbox centre; max(w, h) / 200 (HMR's convention)
params            dict            the model's parameters in its own terms
camera_labels     dict            optional: SMPL-family root in this camera
                                  (``global_orient_cam``, ``transl_cam``), GenZoo/Animal3D
                                  fields (animals), PASCAL3D+ viewpoint (objects)
bbox_amodal       [x, y, w, h]    images: its whole projection (may reach past the image)
visible_fraction  float           images: visible pixels / pixels it covers rendered alone
placement_world   (3,)            images: ground offset of a group member (``params``
                                  describe it before the offset, ``camera_labels`` after)
================  ==============  ========================================================

Sample-level keys sit beside them: ``index``, ``attempt``, ``seed``, ``recipe_hash``, ``conventions``,
``part_names`` and, per kind, ``camera`` (the drawn camera), ``prompt``, ``appearance``,
``filter`` (images) or ``frame``, ``time_s``, ``sequence``, ``body`` (sequence frames).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def bbox_from_mask(mask: np.ndarray) -> list[float]:
    """[x, y, w, h] of the True pixels of an (H, W) mask (pixel-centre coordinates, edges at
    +-0.5); zeros when the mask is empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    x0, y0 = cols[0] - 0.5, rows[0] - 0.5
    return [float(x0), float(y0), float(cols[-1] + 0.5 - x0), float(rows[-1] + 0.5 - y0)]


def instance_record(instance_id: int, kind: str, model: str, keypoints_2d: np.ndarray,
                    keypoints_3d: np.ndarray, keypoint_names: list[str], mask: np.ndarray,
                    params: dict[str, Any], camera_labels: dict[str, Any] | None = None) -> dict[str, Any]:
    """One entry of ``instances``. keypoints_2d (K, 3), keypoints_3d (K, 3), mask (H, W) bool:
    this instance's visible pixels."""
    bbox = bbox_from_mask(mask)
    out = {
        "id": int(instance_id), "kind": kind, "model": model,
        "keypoints_2d": np.asarray(keypoints_2d).tolist(), "keypoints_3d": np.asarray(keypoints_3d).tolist(),
        "keypoint_names": list(keypoint_names),
        "bbox": bbox, "center": [bbox[0] + bbox[2] / 2, bbox[1] + bbox[3] / 2],
        "scale": max(bbox[2], bbox[3]) / 200.0,
        "params": params,
    }
    if camera_labels:
        out["camera_labels"] = camera_labels
    return out


def view_record(width: int, height: int, K: np.ndarray, cam_ext: np.ndarray,
                instances: list[dict[str, Any]]) -> dict[str, Any]:
    """The camera-level fields of one view and its instances. K (3, 3), cam_ext (4, 4)."""
    return {"image_size": [int(width), int(height)], "cam_int": np.asarray(K).tolist(),
            "cam_ext": np.asarray(cam_ext).tolist(), "instances": instances}


def views_of(labels: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The view records of a sample's labels by name: ``{"image": labels}`` for single images,
    ``labels["views"]`` for sequence frames."""
    return labels["views"] if "views" in labels else {"image": labels}
