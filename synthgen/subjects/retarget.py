"""SMPL joint rotations -> Anny bone rotations, with rest-pose correction.

Anny's ``local-ref`` pose parameters are per-bone rotations about world-aligned axes, like
SMPL's, but Anny rests in an A-pose with bent elbows while SMPL rests in a T-pose. For every
mapped bone ``j`` we take the rotation ``C_j`` that turns the bone's Anny rest direction into its
T-pose direction; giving bone j the global rotation ``G_j @ C_j`` (G_j: SMPL's global rotation)
makes the bone point where SMPL's does. Its local rotation is then ``C_a.T @ R_j @ C_j`` with
``a`` the mapped parent. Unmapped Anny bones (extra spine/neck segments, fingers) keep identity.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from synthgen.subjects.base import SMPL_TO_WORLD
from synthgen.subjects.poses import SMPL_JOINTS, SMPL_PARENTS

SMPL_TO_ANNY_BONE = {
    "left_hip": "upperleg01.L", "right_hip": "upperleg01.R",
    "left_knee": "lowerleg01.L", "right_knee": "lowerleg01.R",
    "left_ankle": "foot.L", "right_ankle": "foot.R",
    "spine1": "spine05", "spine2": "spine03", "spine3": "spine02",
    "neck": "neck01", "head": "head",
    "left_collar": "clavicle.L", "right_collar": "clavicle.R",
    "left_shoulder": "upperarm01.L", "right_shoulder": "upperarm01.R",
    "left_elbow": "lowerarm01.L", "right_elbow": "lowerarm01.R",
    "left_wrist": "wrist.L", "right_wrist": "wrist.R",
}

# Bones whose rest direction differs from SMPL's T-pose: bone -> (child bone, T-pose direction).
_ARM_TARGETS = {
    "upperarm01.{s}": ("lowerarm01.{s}",), "lowerarm01.{s}": ("wrist.{s}",),
    "wrist.{s}": ("finger3-1.{s}",),
}


def rest_corrections(bone_labels: list[str], rest_heads: np.ndarray) -> dict[str, np.ndarray]:
    """Rotation per arm bone taking its Anny rest direction to the T-pose direction.

    rest_heads: (J, 3) bone head positions of the rest pose, world frame (X = body's left).
    """
    out = {}
    for side, sign in (("L", 1.0), ("R", -1.0)):
        target = np.array([sign, 0.0, 0.0])
        for bone, (child,) in _ARM_TARGETS.items():
            b, c = bone.format(s=side), child.format(s=side)
            d = rest_heads[bone_labels.index(c)] - rest_heads[bone_labels.index(b)]
            rot, _ = Rotation.align_vectors(target[None], (d / np.linalg.norm(d))[None])
            out[b] = rot.as_matrix()
    return out


def smpl_to_anny_rotations(rotations: np.ndarray, bone_labels: list[str],
                           corrections: dict[str, np.ndarray]) -> np.ndarray:
    """(24, 3, 3) SMPL local rotations (SMPL frame) -> (J, 3, 3) Anny local-ref rotations.

    The pelvis/root rotation is not mapped (the caller sets the root transform).
    """
    local = np.tile(np.eye(3), (len(bone_labels), 1, 1))
    eye = np.eye(3)
    for j, joint in enumerate(SMPL_JOINTS):
        bone = SMPL_TO_ANNY_BONE.get(joint)
        if bone is None:
            continue
        parent_joint = SMPL_JOINTS[SMPL_PARENTS[j]]
        c_parent = corrections.get(SMPL_TO_ANNY_BONE.get(parent_joint, ""), eye)
        c_self = corrections.get(bone, eye)
        r_world_axes = SMPL_TO_WORLD @ rotations[j] @ SMPL_TO_WORLD.T
        local[bone_labels.index(bone)] = c_parent.T @ r_world_axes @ c_self
    return local
