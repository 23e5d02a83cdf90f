"""BEDLAM training labels (github pixelite1201/BEDLAM, ``data_processing/df_full_body.py``): one npz
per scene (here: per shard), one row per person, with BEDLAM's keys.

==========  ==============  ==============================================================
imgname     str             image path relative to the export folder's ``images/``
center      (2,)            box centre, pixels
scale       ()              1.2 * max(w, h) / 200 (BEDLAM pads its keypoint box x1.2)
pose_cam    (165,) / (72,)  SMPL-X: global orient in the camera, body 63, jaw, eyes, hands 2x45
                            (zeros: smplx's mean hands, flat_hand_mean=False); SMPL: 3 + 69
shape       (11,) / (10,)   betas, zero-padded to BEDLAM's width (never cut)
trans_cam   (3,)            BEDLAM's split: the camera-frame body is
                            ``smplx(pose_cam, shape, transl=trans_cam) + cam_ext[:3, 3]``
cam_int     (3, 3)          K
cam_ext     (4, 4)          world -> camera (OpenCV axes; our world frame, Z up)
gtkps       (24, 3)         the model's first 24 joints projected (x, y, 1), as BEDLAM's
                            loaders slice them (``gtkps[:, :24]``); joints we do not label
                            (spine1, feet, collars, SMPL's hands, SMPL-X's left eye) are (0, 0, 0)
gender      str             the body model's gender
==========  ==============  ==============================================================
"""

from __future__ import annotations

from typing import Any

import numpy as np

from synthgen.formats.hmr2 import BOX_PAD

MODELS = ("smpl", "smplx")
POSE_WIDTH = {"smpl": 72, "smplx": 165}
SHAPE_WIDTH = {"smpl": 10, "smplx": 11}
# The first 24 joints of SMPL / SMPL-X -> our keypoint name (None: not labelled).
GTKPS_JOINTS = {
    "smpl": ["pelvis", "left_hip", "right_hip", None, "left_knee", "right_knee", "spine", "left_ankle",
             "right_ankle", "thorax", None, None, "neck", None, None, "head", "left_shoulder",
             "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", None, None],
}
GTKPS_JOINTS["smplx"] = GTKPS_JOINTS["smpl"][:22] + ["jaw", None]
KEYS = ("imgname", "center", "scale", "pose_cam", "shape", "trans_cam", "cam_int", "cam_ext", "gtkps", "gender")


def gtkps(instance: dict[str, Any]) -> np.ndarray:
    """(24, 3) float32 [x, y, 1] of the model's first 24 joints; (0, 0, 0) where not labelled."""
    index = {name: k for k, name in enumerate(instance["keypoint_names"])}
    points = np.asarray(instance["keypoints_2d"], dtype=np.float32)
    out = np.zeros((24, 3), np.float32)
    for j, name in enumerate(GTKPS_JOINTS[instance["model"]]):
        if name in index:
            out[j] = [points[index[name], 0], points[index[name], 1], 1.0]
    return out


def row(instance: dict[str, Any], view: dict[str, Any], imgname: str) -> dict[str, Any] | None:
    """One person's BEDLAM row, or None when the instance is not an SMPL / SMPL-X body or unseen."""
    x, y, w, h = instance["bbox"]
    model = instance.get("model")
    if model not in MODELS or max(w, h) <= 0:
        return None
    params, cam = instance["params"], instance["camera_labels"]
    pose = np.zeros(POSE_WIDTH[model], np.float32)
    body = np.asarray(params["body_pose"], np.float32)
    pose[:3], pose[3:3 + body.size] = cam["global_orient_cam"], body
    betas = np.asarray(params["betas"], np.float32)
    shape = np.zeros(max(SHAPE_WIDTH[model], betas.size), np.float32)
    shape[:betas.size] = betas
    cam_ext = np.asarray(view["cam_ext"], np.float32)
    return {"imgname": imgname, "center": np.float32([x + w / 2, y + h / 2]),
            "scale": np.float32(BOX_PAD * max(w, h) / 200), "pose_cam": pose, "shape": shape,
            "trans_cam": np.float32(cam["transl_cam"]) - cam_ext[:3, 3],
            "cam_int": np.asarray(view["cam_int"], np.float32), "cam_ext": cam_ext,
            "gtkps": gtkps(instance), "gender": str(params["body_model"].get("gender", "neutral"))}


def stack(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Rows -> the npz arrays (N leading), BEDLAM's key names."""
    return {key: np.stack([r[key] for r in rows]) if key not in ("imgname", "gender")
            else np.array([r[key] for r in rows]) for key in KEYS}
