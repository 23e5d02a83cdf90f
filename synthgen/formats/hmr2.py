"""4D-Humans / HMR2 ``data.pyd``: the per-sample member its tar loader reads (``output.formats: hmr2``).

4D-Humans (github shubham-goel/4D-Humans, ``hmr2/datasets/image_dataset.py``,
``ImageDataset.load_tars_as_webdataset``) decodes ``KEY.jpg`` and ``KEY.data.pyd`` (a pickled
list, one dict per person) and reads from each dict:

================  ==========  ===========================================================
keypoints_2d      (44, 3)     pixels + confidence in [0, 1] (its 2D loss weights by it)
keypoints_3d      (44, 4)     camera frame, metres + confidence; its loss centres them on
                              slot 39 (pelvis, ``EXTRA.PELVIS_IND: 39``)
center            (2,)        box centre, pixels
scale             (2,)        [w, h] / 200 of the box padded x1.2
body_pose         (72,)       SMPL axis-angle; the first 3 (global orient) in the OpenCV camera
betas             (10,)       SMPL shape
has_body_pose     ()          1.0 / 0.0
has_betas         ()          1.0 / 0.0
extra_info        dict        free (ours: sample index, instance id, model)
================  ==========  ===========================================================

The 44 slots are OpenPose BODY_25 then 19 extra joints (:data:`SLOT_NAMES`). Each slot is read
from the instance's keypoint of :data:`SLOT_SOURCES` when the body model has it (COCO points, and
the model's own pelvis, spine, thorax, neck, jaw, head and crown; never a midpoint of keypoints);
a slot the model lacks gets confidence 0. 2D confidence is 1 where our COCO visibility is 1 or 2
(inside the image, seen or hidden: the position is exact either way) and 0 outside it; COCO's 2
would double the loss weight. Pixel coordinates are ours (pixel centres at integers).

SMPL-family subjects carry ``body_pose`` = [global orient in the camera frame (the instance's
``camera_labels.global_orient_cam``), SMPL-H/SMPL-X's 21 body joints + 2 zero hand joints, or
SMPL's 23]; ``betas`` only for SMPL (SMPL-H/SMPL-X shapes live in other spaces: ``has_betas`` 0).
Anny carries neither (``has_*`` 0). The pickle references only ``numpy.array`` (no
``numpy._core``), so NumPy 1.x unpickles it too (numpy/numpy#28340).
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

MEMBER = "data.pyd"
BOX_PAD = 1.2          # 4D-Humans' boxes: keypoint/mask box padded x1.2
PELVIS_SLOT = 39
SMPL_FAMILY = ("smpl", "smplh", "smplx")

SLOT_NAMES = [  # OpenPose BODY_25, then the 19 extra joints of SPIN / 4D-Humans
    "Nose", "Neck", "RShoulder", "RElbow", "RWrist", "LShoulder", "LElbow", "LWrist", "MidHip",
    "RHip", "RKnee", "RAnkle", "LHip", "LKnee", "LAnkle", "REye", "LEye", "REar", "LEar",
    "LBigToe", "LSmallToe", "LHeel", "RBigToe", "RSmallToe", "RHeel",
    "Right Ankle", "Right Knee", "Right Hip", "Left Hip", "Left Knee", "Left Ankle", "Right Wrist",
    "Right Elbow", "Right Shoulder", "Left Shoulder", "Left Elbow", "Left Wrist", "Neck (LSP)",
    "Top of Head (LSP)", "Pelvis (MPII)", "Thorax (MPII)", "Spine (H36M)", "Jaw (H36M)", "Head (H36M)",
]
SLOT_SOURCES = [  # our keypoint name per slot (MidHip: the model's pelvis joint, as 4D-Humans' SMPL maps it)
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
    "left_wrist", "pelvis", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee",
    "left_ankle", "right_eye", "left_eye", "right_ear", "left_ear", "left_big_toe", "left_small_toe",
    "left_heel", "right_big_toe", "right_small_toe", "right_heel",
    "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle", "right_wrist",
    "right_elbow", "right_shoulder", "left_shoulder", "left_elbow", "left_wrist", "neck",
    "head_top", "pelvis", "thorax", "spine", "jaw", "head",
]


def slot_keypoints(instance: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(44, 3) keypoints_2d [x, y, conf] and (44, 4) keypoints_3d [X, Y, Z, conf], float32."""
    index = {name: k for k, name in enumerate(instance["keypoint_names"])}
    kp2d, kp3d = np.asarray(instance["keypoints_2d"]), np.asarray(instance["keypoints_3d"])
    out2d, out3d = np.zeros((44, 3), np.float32), np.zeros((44, 4), np.float32)
    for slot, name in enumerate(SLOT_SOURCES):
        if name not in index:
            continue
        k = index[name]
        out2d[slot] = [kp2d[k, 0], kp2d[k, 1], 1.0 if kp2d[k, 2] > 0 else 0.0]
        out3d[slot] = [*kp3d[k], 1.0]
    return out2d, out3d


def smpl_parameters(instance: dict[str, Any]) -> dict[str, np.ndarray]:
    """``body_pose`` (72,), ``betas`` (10,), ``has_body_pose``, ``has_betas`` (0-d) float32."""
    params, model = instance.get("params", {}), instance.get("model")
    body_pose, betas = np.zeros(72, np.float32), np.zeros(10, np.float32)
    has_pose = has_betas = 0.0
    if model in SMPL_FAMILY and "global_orient_cam" in instance.get("camera_labels", {}):
        joints = np.asarray(params["body_pose"], np.float32)[:69]  # SMPL-H/X: 21 joints, hands stay 0
        body_pose[:3] = instance["camera_labels"]["global_orient_cam"]
        body_pose[3:3 + joints.size] = joints
        has_pose = 1.0
        shape = np.asarray(params["betas"], np.float32)
        if model == "smpl" and not shape[10:].any():
            betas[:min(10, shape.size)] = shape[:10]
            has_betas = 1.0
    return {"body_pose": body_pose, "betas": betas, "has_body_pose": np.array(has_pose, np.float32),
            "has_betas": np.array(has_betas, np.float32)}


def person(instance: dict[str, Any], index: int) -> dict[str, Any] | None:
    """One person's dict for ``data.pyd``, or None when the instance is not a human or its box is
    under a pixel (4D-Humans stops in ``breakpoint()`` on those)."""
    x, y, w, h = instance["bbox"]
    if instance.get("kind") != "human" or BOX_PAD * max(w, h) < 1.0:
        return None
    kp2d, kp3d = slot_keypoints(instance)
    return {"keypoints_2d": kp2d, "keypoints_3d": kp3d,
            "center": np.array([x + w / 2, y + h / 2], np.float32),
            "scale": np.array([BOX_PAD * w / 200, BOX_PAD * h / 200], np.float32),
            **smpl_parameters(instance),
            "extra_info": {"synthgen_index": int(index), "instance_id": int(instance["id"]),
                           "model": str(instance.get("model"))}}


def people(labels: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``data.pyd`` list of a single-image label record: one dict per human instance."""
    found = (person(instance, labels["index"]) for instance in labels["instances"])
    return [p for p in found if p is not None]


class _Numpy1Pickler(pickle.Pickler):
    """Arrays reduce to ``numpy.array(nested list, dtype string)``: a name NumPy 1 and 2 share."""

    def reducer_override(self, obj):
        if isinstance(obj, np.ndarray):
            return np.array, (obj.tolist(), obj.dtype.str)
        if isinstance(obj, np.generic):
            raise TypeError(f"numpy scalar {obj!r} in data.pyd: store a 0-d array instead")
        return NotImplemented


def dumps(value: Any) -> bytes:
    """Pickle (protocol 4) that NumPy 1.x and 2.x both load: no ``numpy._core`` references."""
    buf = io.BytesIO()
    _Numpy1Pickler(buf, protocol=4).dump(value)
    return buf.getvalue()


def encode(labels: dict[str, Any]) -> bytes:
    """The ``data.pyd`` member of a single-image sample."""
    return dumps(people(labels))
