"""Where a SMAL-family model's 26 Animal3D keypoints are: ``vertex_weights @ vertices + joint_weights @ joints``.

Sources, in order: ``animal.keypoints_file``; the model file's own ``keypoint_vertex_weights`` /
``keypoint_joint_weights`` (the embedded quadruped has exact ones); else joints for the limb/neck/
tail keypoints and geometric surface points for eyes, ears, nose, mouth and tail tip (extreme
vertices of the head/ear/tail regions along fixed directions: approximate, recorded as
``keypoint_source: geometric``). Names: :data:`synthgen.subjects.animal_poses.KEYPOINT_NAMES`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthgen.errors import UserError
from synthgen.recipe import AnimalConfig
from synthgen.subjects import animal_poses as ap
from synthgen.subjects.model_files import read_npz_arrays
from synthgen.subjects.smal_model import WORLD_FORWARD, WORLD_RIGHT, WORLD_UP, SmalModel


def geometric_keypoints(model: SmalModel, to_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(26, V) vertex and (26, J) joint weights: joints where Animal3D's keypoint is a joint,
    else the extreme rest vertex of the head/ear/tail region along a fixed direction (approximate)."""
    V = model.arrays["v_template"].astype(np.float64) @ to_world.T  # world axes, rest pose
    J = model.rest_joints() @ to_world.T
    idx = {n: i for i, n in enumerate(model.joint_names)}
    dominant = np.asarray(model.joint_names)[np.argmax(model.arrays["weights"], axis=1)]
    head_region = np.isin(dominant, ["Head", "Mouth"])  # the face, without the ears
    fwd, up, left = WORLD_FORWARD, WORLD_UP, -WORLD_RIGHT
    h = J[idx["Head"]]
    ahead = (V - h) @ fwd

    def extreme(mask: np.ndarray, direction: np.ndarray) -> int:
        if not mask.any():
            raise UserError(f"{model.source}: cannot place surface keypoints (no vertices skinned to the "
                            f"head/ears/tail); give subject.animal.keypoints_file")
        ids = np.flatnonzero(mask)
        return int(ids[np.argmax(V[ids] @ direction)])

    nose = extreme(head_region, fwd + 0.15 * up)
    reach = ahead / max(ahead[nose], 1e-9)  # 0 at the head joint, 1 at the nose tip
    front = head_region & (reach >= 0.5)
    eyes = head_region & (reach >= 0.15) & (reach <= 0.5)
    cheeks = head_region & (reach >= 0.4) & (reach <= 0.8)
    surface = {
        "nose": nose, "mouth_mid": extreme(front, fwd - 0.6 * up),
        "left_mouth": extreme(cheeks, 0.2 * fwd - 0.6 * up + 0.8 * left),
        "right_mouth": extreme(cheeks, 0.2 * fwd - 0.6 * up - 0.8 * left),
        "left_eye": extreme(eyes, 0.3 * fwd + 0.8 * up + 0.5 * left),
        "right_eye": extreme(eyes, 0.3 * fwd + 0.8 * up - 0.5 * left),
        "tail_end": extreme(np.char.startswith(dominant.astype(str), "Tail"), -fwd),
    }
    for side, sign in (("left", 1.0), ("right", -1.0)):
        ear = dominant == ("LEar" if side == "left" else "REar")
        surface[f"{side}_ear"] = extreme(ear, up) if ear.any() else \
            extreme(head_region, up + 0.5 * sign * left - 0.3 * fwd)
    wv = np.zeros((len(ap.KEYPOINT_NAMES), len(V)))
    wj = np.zeros((len(ap.KEYPOINT_NAMES), len(J)))
    for k, name in enumerate(ap.KEYPOINT_NAMES):
        if name in ap.KEYPOINT_JOINTS:
            wj[k, idx[ap.KEYPOINT_JOINTS[name]]] = 1.0
        else:
            wv[k, surface[name]] = 1.0
    return wv, wj


def keypoint_regressor(model: SmalModel, config: AnimalConfig, to_world: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, str]:
    """(26, V) vertex weights, (26, J) joint weights and where they came from."""
    nv, nj, nk = model.v_template.shape[0], len(model.joint_names), len(ap.KEYPOINT_NAMES)
    if config.keypoints_file:
        path = Path(config.keypoints_file)
        if not path.is_file():
            raise UserError(f"subject.animal.keypoints_file: {path} does not exist")
        data = read_npz_arrays(path)
        wv, wj = np.zeros((nk, nv)), np.zeros((nk, nj))
        if "vertex_ids" in data:
            ids = np.asarray(data["vertex_ids"], dtype=np.int64)
            if ids.shape != (nk,) or ids.max() >= nv:
                raise UserError(f"{path}: vertex_ids must be ({nk},) indices below {nv}, got {ids.shape}")
            wv[np.arange(nk), ids] = 1.0
        if "vertex_weights" in data:
            wv = np.asarray(data["vertex_weights"], dtype=np.float64)
        if "joint_weights" in data:
            wj = np.asarray(data["joint_weights"], dtype=np.float64)
        if wv.shape != (nk, nv) or wj.shape != (nk, nj) or not (wv.any() or wj.any()):
            raise UserError(f"{path}: expected vertex_ids ({nk},), vertex_weights ({nk}, {nv}) and/or "
                            f"joint_weights ({nk}, {nj}) for the 26 Animal3D keypoints; has {sorted(data)}")
        return wv, wj, f"file:{path.name}"
    if "keypoint_vertex_weights" in model.arrays and "keypoint_joint_weights" in model.arrays:
        return (np.asarray(model.arrays["keypoint_vertex_weights"], dtype=np.float64),
                np.asarray(model.arrays["keypoint_joint_weights"], dtype=np.float64), "model")
    wv, wj = geometric_keypoints(model, to_world)
    return wv, wj, "geometric"
