"""Bodies over time: a body model driven by a motion, posed at every frame time.

:func:`frames_model` wraps the recipe's body model (Anny or the SMPL family) so that
``pose(draw, motion)`` returns :class:`PosedFrames`: vertices, keypoints, joints and the world
poses of the rig's sockets at every time of the motion, in world axes with the pelvis at the
origin. :func:`ground_heights`, :func:`sitting_shift` and :func:`seat_under` then place the posed
body along its path (feet on the floor, feet kept still while sitting down, a seat under it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter1d

from synthgen.errors import UserError
from synthgen.sequences.motion import Motion, heading_of
from synthgen.sequences.rigs import SOCKET_BONES, socket_rotation
from synthgen.subjects.base import SMPL_TO_WORLD, PosesOverTime
from synthgen.subjects.poses import SMPL_JOINTS, SMPL_PARENTS, matrices_to_axis_angle


@dataclass
class PosedFrames:
    """A body posed at T times, world axes, pelvis at the origin (translation added later).

    vertices (T, V, 3) float32; keypoints (T, K, 3) float32; joints (T, J, 3) float64 named
    ``joint_names``; socket_rotation (T, S, 3, 3) and socket_position (T, S, 3) for the sockets
    asked for; params: per-time JSON-ready pose parameters (translation filled in later).
    """

    vertices: np.ndarray
    keypoints: np.ndarray
    joints: np.ndarray
    joint_names: list[str]
    socket_rotation: np.ndarray
    socket_position: np.ndarray
    params: list[dict[str, Any]]
    rest_vertices: np.ndarray | None = None        # (V, 3) the rest T-pose, facing -Y
    rest_socket_position: np.ndarray | None = None  # (S, 3) its sockets (rotation = SMPL_TO_WORLD)


def take_frames(posed: PosedFrames, sl: slice) -> PosedFrames:
    """The frames ``sl`` of ``posed`` (rest pose kept)."""
    return PosedFrames(posed.vertices[sl], posed.keypoints[sl], posed.joints[sl], posed.joint_names,
                       posed.socket_rotation[sl], posed.socket_position[sl], posed.params[sl],
                       posed.rest_vertices, posed.rest_socket_position)


def frames_model(model: PosesOverTime, sockets: list[str]):
    """The over-time wrapper of a built subject model (``AnnyFrames`` or ``SmplFrames``).

    Only the model's :class:`~synthgen.subjects.base.PosesOverTime` interface is used here.
    """
    return AnnyFrames(model, sockets) if model.name == "anny" else SmplFrames(model, sockets)


class AnnyFrames:
    """Anny bodies over time: SMPL rotations retargeted by the model, or Anny files as they are."""

    family = "anny"

    def __init__(self, model: PosesOverTime, sockets: list[str]):
        self.model = model
        self.sockets = sockets
        self.socket_bones = [model.bone_index(SOCKET_BONES["anny"][s]) for s in sockets]
        joint_bones = model.smpl_joint_bones()
        self.joint_names = list(joint_bones)
        self.joint_bones = list(joint_bones.values())

    def local_transforms(self, motion: Motion) -> np.ndarray:
        """(T + 1, J, 4, 4) float32 local-ref transforms: the motion's T times, then the rest T-pose."""
        m, T = self.model, motion.num_samples
        J = m.num_bones
        if motion.rotations is not None:
            local = m.retarget_smpl(motion.rotations)
        else:
            if motion.anny_local.shape[1] != J:
                raise UserError(f"motion {motion.info.get('file', motion.name)}: {motion.anny_local.shape[1]} "
                                f"bones, but this Anny rig has {J}")
            local = motion.anny_local.copy()
        local[:, 0] = motion.root_rotation
        rest = m.retarget_smpl(np.tile(np.eye(3), (1, len(SMPL_JOINTS), 1, 1)))[0]
        rest[0] = np.eye(3)
        out = np.tile(np.eye(4), (T + 1, J, 1, 1))
        out[:T, :, :3, :3], out[T, :, :3, :3] = local, rest
        return out.astype(np.float32)

    def pose(self, draw: dict[str, Any], motion: Motion) -> PosedFrames:
        pose = self.local_transforms(motion)
        out = self.model.forward_frames(pose, draw["phenotype"])
        verts, kps = out["vertices"][:-1], out["keypoints"][:-1]
        bones = out["bone_poses"].astype(np.float64)
        rest = bones[-1]
        bones = bones[:-1]
        sock_rot = np.stack([socket_rotation(bones[:, b, :3, :3], rest[b, :3, :3]) for b in self.socket_bones], 1)
        sock_pos = bones[:, self.socket_bones][:, :, :3, 3]
        rotvec = np.float32(matrices_to_axis_angle(pose[:-1, 1:, :3, :3].astype(np.float64)))
        params = [{"root_rotation": np.float32(pose[t, 0, :3, :3]).tolist(), "bone_rotvec": rotvec[t].tolist()}
                  for t in range(len(verts))]
        rest_verts = out["vertices"][-1] - rest[0, :3, 3]
        return PosedFrames(verts, kps, bones[:, self.joint_bones][:, :, :3, 3], self.joint_names, sock_rot, sock_pos,
                           params, rest_verts, rest[self.socket_bones, :3, 3] - rest[0, :3, 3])

    def sequence_params(self, draw: dict[str, Any]) -> dict[str, Any]:
        return self.model.sequence_params(draw)


class SmplFrames:
    """SMPL / SMPL-H / SMPL-X bodies over time through smplx (AMASS-style rotations as they are)."""

    family = "smpl"

    def __init__(self, model: PosesOverTime, sockets: list[str]):
        self.model = model
        self.sockets = sockets
        self.socket_joints = [model.bone_index(SOCKET_BONES["smpl"][s]) for s in sockets]
        self.body_joints = model.num_body_pose_joints
        self.joint_names = SMPL_JOINTS[:22]

    def pose(self, draw: dict[str, Any], motion: Motion) -> PosedFrames:
        if motion.rotations is None:
            raise UserError(f"motion {motion.name} is an Anny-native file; subject.model="
                            f"{self.model.name} needs SMPL-family motions (AMASS .npz)")
        S = SMPL_TO_WORLD
        T = motion.num_samples
        rotations = motion.rotations.copy()
        rotations[:, 0] = S.T @ motion.root_rotation @ S  # world orientation -> smplx global_orient
        rotations = np.concatenate([rotations, np.tile(np.eye(3), (1, len(SMPL_JOINTS), 1, 1))])
        betas = np.float32(draw["betas"])
        params = [{"betas": betas, "global_orient": np.float32(matrices_to_axis_angle(r[0])),
                   "body_pose": np.float32(matrices_to_axis_angle(r[1:1 + self.body_joints]).reshape(-1))}
                  for r in rotations]
        out = self.model.forward_frames(params)
        outs = list(zip(out["vertices"], out["keypoints"], out["joints"]))
        pelvis = np.stack([o[2][0] for o in outs[:-1]])  # SMPL frame, fixed by betas
        verts = np.stack([(o[0] - o[2][0]) @ S.T for o in outs[:-1]]).astype(np.float32)
        kps = np.stack([(o[1] - o[2][0]) @ S.T for o in outs[:-1]]).astype(np.float32)
        joints = np.stack([(o[2] - o[2][0]) @ S.T for o in outs[:-1]]).astype(np.float64)
        glob = np.zeros((T, len(SMPL_JOINTS), 3, 3))
        for j, parent in enumerate(SMPL_PARENTS):  # global joint rotations, SMPL frame
            glob[:, j] = rotations[:T, j] if parent < 0 else glob[:, parent] @ rotations[:T, j]
        sock_rot = np.stack([socket_rotation(S @ glob[:, j], S) for j in self.socket_joints], 1)
        sock_pos = joints[:, self.socket_joints]
        labels = [{"global_orient": p["global_orient"].tolist(), "body_pose": p["body_pose"].tolist(),
                   "pelvis_smpl": np.float32(pelvis[t]).tolist()} for t, p in enumerate(params[:-1])]
        rest_joints = (outs[-1][2] - outs[-1][2][0]) @ S.T
        return PosedFrames(verts, kps, joints, list(self.joint_names), sock_rot, sock_pos, labels,
                           ((outs[-1][0] - outs[-1][2][0]) @ S.T).astype(np.float32), rest_joints[self.socket_joints])

    def sequence_params(self, draw: dict[str, Any]) -> dict[str, Any]:
        return self.model.sequence_params(draw)


# --- placing the posed body along its path -------------------------------------------------------
def ground_heights(motion: Motion, posed: PosedFrames, frames: Motion, fps: int) -> np.ndarray:
    """(F,) pelvis height per frame: lowest vertex on z = 0, smoothed (Gaussian, sd 65 ms: feet
    then touch the floor within ~1-2 cm, and the pelvis's vertical acceleration stays human,
    a few m/s^2, without kinks where the supporting foot changes), or frame 0 on the floor
    plus the file's vertical root motion."""
    lowest = posed.vertices[..., 2].min(axis=1).astype(np.float64)
    if motion.grounding == "first_frame":
        return -lowest[0] + frames.root_position[:, 2]
    z = -lowest
    sigma = 0.065 * fps
    return gaussian_filter1d(z, sigma, mode="nearest") if sigma >= 0.5 and len(z) > 2 else z

def sitting_shift(prop: dict[str, Any], posed_all: PosedFrames, at: Motion, names: list[str]) -> Callable:
    """Horizontal pelvis shift over time that keeps the feet in place while sitting down.

    The seated pose (last posed frame) has its ankles ahead of the pelvis; the pelvis moves
    back by that distance (beyond frame 0's) along a smoothstep from ``from_s`` to ``at_s``.
    """
    ankles = [names.index("left_ankle"), names.index("right_ankle")]
    yaw = heading_of(at.root_rotation[0])
    forward = np.array([np.sin(yaw), -np.cos(yaw)])
    seated = float(posed_all.keypoints[-1, ankles, :2].mean(axis=0) @ forward)
    standing = float(posed_all.keypoints[0, ankles, :2].mean(axis=0) @ forward)
    distance = max(seated - standing, 0.0)
    t0, t1 = float(prop.get("from_s", 0.0)), float(prop["at_s"])

    def shift(t: np.ndarray) -> np.ndarray:
        x = np.clip((np.asarray(t, dtype=np.float64) - t0) / max(t1 - t0, 1e-6), 0.0, 1.0)
        return -(x * x * (3 - 2 * x) * distance)[:, None] * forward

    return shift

def seat_under(prop: dict[str, Any], posed: PosedFrames, at: Motion, shift: np.ndarray) -> dict[str, Any]:
    """A seat under the body posed sitting: top at its buttocks, centred under its pelvis."""
    v = posed.vertices[0].astype(np.float64)
    lift = -v[:, 2].min()  # that frame grounded on its own
    near = np.hypot(v[:, 0], v[:, 1]) < 0.15
    top = float(v[near, 2].min() + lift) if near.any() else 0.45
    yaw = heading_of(at.root_rotation[0])
    back = np.array([-np.sin(yaw), np.cos(yaw)])  # behind a body facing Rz(yaw) (0, -1, 0)
    centre = at.root_position[0, :2] + shift + 0.06 * back
    return {"kind": "seat", "centre": centre.tolist(), "top": max(top, 0.2), "yaw": yaw,
            "size": prop.get("size", [0.48, 0.46])}
