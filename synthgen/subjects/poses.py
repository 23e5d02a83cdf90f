"""Body-model-agnostic pose library and pose sampling, in SMPL's 24-joint terms.

Poses are written once as SMPL joint rotations relative to the T-pose, in SMPL's canonical frame
(x = the body's left, y = up, z = forward). SMPL-family models use them as they are; Anny gets
them through :mod:`synthgen.subjects.retarget`. Angles are authored as ``(x, y, z)`` degrees and
composed as ``R = Rx @ Ry @ Rz`` (z applied first): for an arm that means "lower it (z), then
swing it (x)". Sign reminders for the LEFT side (the right side mirrors y and z):
hip flexion = -x, knee flexion = +x, spine/neck lean forward = +x, arm down = -z,
arm forward = -y, elbow flexion = -y, arm up = +z.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from synthgen.errors import UserError

SMPL_JOINTS = [
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
    "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar",
    "right_collar", "head", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hand", "right_hand",
]
SMPL_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]
NUM_JOINTS = len(SMPL_JOINTS)

# Joint limits for the LEFT side and the midline, (x, y, z) ranges in degrees; right mirrors y, z.
_LIMITS_LEFT = {
    "pelvis": ((-30, 30), (-30, 30), (-20, 20)),
    "hip": ((-125, 35), (-40, 45), (-25, 50)),
    "knee": ((0, 150), (-5, 5), (-5, 5)),
    "ankle": ((-35, 45), (-20, 20), (-20, 20)),
    "foot": ((-20, 30), (-5, 5), (-5, 5)),
    "spine1": ((-25, 50), (-30, 30), (-25, 25)),
    "spine2": ((-15, 30), (-20, 20), (-15, 15)),
    "spine3": ((-15, 30), (-20, 20), (-15, 15)),
    "neck": ((-40, 50), (-50, 50), (-30, 30)),
    "head": ((-30, 30), (-30, 30), (-20, 20)),
    "collar": ((-15, 15), (-20, 15), (-15, 30)),
    "shoulder": ((-90, 90), (-110, 45), (-95, 100)),
    "elbow": ((-10, 10), (-150, 0), (-10, 10)),
    "wrist": ((-60, 60), (-30, 30), (-70, 70)),
    "hand": ((-20, 20), (-20, 20), (-20, 20)),
}


def _limits_array() -> np.ndarray:
    """(24, 3, 2) per-joint (x, y, z) [low, high] in degrees."""
    out = np.zeros((NUM_JOINTS, 3, 2))
    for j, name in enumerate(SMPL_JOINTS):
        side, _, base = name.partition("_") if name.startswith(("left_", "right_")) else ("", "", name)
        lim = np.array(_LIMITS_LEFT[base], dtype=float)
        if side == "right":
            lim[1:] = -lim[1:, ::-1]
        out[j] = lim
    return out


JOINT_LIMITS_DEG = _limits_array()


def _sym(left: dict[str, tuple[float, float, float]],
         right: dict[str, tuple[float, float, float]] | None = None) -> dict:
    """Expand ``{"hip": (x, y, z)}`` into left/right joints; right mirrors y, z unless given."""
    pose = {}
    for base, (x, y, z) in left.items():
        if base in _LIMITS_LEFT and base not in ("pelvis", "spine1", "spine2", "spine3", "neck", "head"):
            pose[f"left_{base}"] = (x, y, z)
            if right is None or base not in right:
                pose[f"right_{base}"] = (x, -y, -z)
        else:
            pose[base] = (x, y, z)
    for base, angles in (right or {}).items():
        pose[f"right_{base}"] = angles
    return pose


BASE_POSES: dict[str, dict[str, tuple[float, float, float]]] = {
    "t_pose": {},
    "standing": _sym({"shoulder": (0, 0, -70), "elbow": (0, -10, 0)}),
    "walking": _sym({"shoulder": (0, 0, -72), "elbow": (0, -20, 0), "hip": (-25, 0, 3),
                     "knee": (10, 0, 0)},
                    {"shoulder": (0, 0, 72), "hip": (12, 0, -3), "knee": (35, 0, 0),
                     "elbow": (0, 30, 0)}) | {"left_shoulder": (20, 0, -72),
                                              "right_shoulder": (-25, 0, 72)},
    "running": _sym({"shoulder": (-40, 0, -70), "elbow": (0, -95, 0), "hip": (-55, 0, 4),
                     "knee": (40, 0, 0), "spine1": (12, 0, 0)},
                    {"shoulder": (45, 0, 70), "hip": (20, 0, -4), "knee": (95, 0, 0),
                     "elbow": (0, 85, 0)}),
    "arms_raised": _sym({"shoulder": (0, 0, 80), "elbow": (0, -10, 0), "neck": (-10, 0, 0)}),
    "reaching": _sym({"shoulder": (0, -80, -15), "elbow": (0, -10, 0), "spine1": (15, 0, 0)},
                     {"shoulder": (0, 0, 70), "elbow": (0, 20, 0)}),
    "waving": _sym({"shoulder": (0, 0, -70), "elbow": (0, -10, 0)},
                   {"shoulder": (-90, 0, -10), "elbow": (0, 100, 0), "wrist": (0, 0, 20)}),
    "sitting": _sym({"hip": (-90, 0, 6), "knee": (90, 0, 0), "shoulder": (0, -15, -70),
                     "elbow": (0, -60, 0), "ankle": (0, 0, 0)}),
    "sitting_ground": _sym({"hip": (-85, 0, 10), "knee": (15, 0, 0), "shoulder": (30, 0, -70),
                            "elbow": (0, -10, 0), "spine1": (-10, 0, 0)}),
    "crouching": _sym({"hip": (-115, 0, 20), "knee": (135, 0, 0), "ankle": (-25, 0, 0),
                       "spine1": (25, 0, 0), "shoulder": (0, -40, -65), "elbow": (0, -40, 0)}),
    "kneeling": _sym({"hip": (0, 0, 5), "knee": (90, 0, 0), "ankle": (35, 0, 0),
                      "shoulder": (0, 0, -70), "elbow": (0, -15, 0)}),
    "lunging": _sym({"hip": (-80, 0, 5), "knee": (85, 0, 0), "shoulder": (0, 0, -60)},
                    {"hip": (25, 0, -5), "knee": (20, 0, 0)}),
    "bending": _sym({"spine1": (45, 0, 0), "spine2": (20, 0, 0), "shoulder": (0, -60, -40),
                     "hip": (-30, 0, 0)}),
}


def euler_to_matrix(angles_deg: np.ndarray) -> np.ndarray:
    """(..., 3) (x, y, z) degrees -> (..., 3, 3) rotation ``Rx @ Ry @ Rz``."""
    flat = np.asarray(angles_deg, dtype=float).reshape(-1, 3)
    mats = Rotation.from_euler("XYZ", flat, degrees=True).as_matrix()
    return mats.reshape(*np.shape(angles_deg)[:-1], 3, 3)


def base_pose_angles(name: str) -> np.ndarray:
    """(24, 3) Euler degrees of one library pose."""
    if name not in BASE_POSES:
        raise KeyError(f"unknown base pose {name!r}; the library has {sorted(BASE_POSES)}")
    angles = np.zeros((NUM_JOINTS, 3))
    for joint, xyz in BASE_POSES[name].items():
        angles[SMPL_JOINTS.index(joint)] = xyz
    return angles


def sample_library_angles(rng: np.random.Generator, weights: dict[str, float],
                          noise_deg: float) -> tuple[str, np.ndarray]:
    """Draw a base pose by weight and perturb it within joint limits.

    Returns the pose name and (24, 3) Euler degrees, clipped to :data:`JOINT_LIMITS_DEG`
    (pelvis zero: the global orientation is drawn separately).
    """
    names = sorted(weights)
    p = np.array([weights[n] for n in names], dtype=float)
    name = names[rng.choice(len(names), p=p / p.sum())]
    angles = base_pose_angles(name) + rng.normal(0.0, noise_deg, size=(NUM_JOINTS, 3))
    angles = np.clip(angles, JOINT_LIMITS_DEG[..., 0], JOINT_LIMITS_DEG[..., 1])
    angles[0] = 0.0
    return name, angles


def sample_library_pose(rng: np.random.Generator, weights: dict[str, float],
                        noise_deg: float) -> tuple[str, np.ndarray]:
    """Like :func:`sample_library_angles`, as (24, 3, 3) float64 joint rotations."""
    name, angles = sample_library_angles(rng, weights, noise_deg)
    return name, euler_to_matrix(angles)


class PoseFileBank:
    """Body poses from AMASS/BEDLAM-style ``.npz`` files (axis-angle, SMPL joint order).

    Accepted keys: ``poses`` (N, >=72) whose first 72 values are the 24 SMPL(-X/H) body joints
    with the global orientation first, or ``body_pose`` (N, 63|69) (+ optional ``global_orient``).
    Only the 21 shared body joints (hips..wrists) are used, so SMPL-H/X files work too.
    """

    def __init__(self, paths: list[str]):
        chunks = [self._load(Path(p)) for p in paths]
        self.poses = np.concatenate(chunks, axis=0)  # (N, 24, 3) axis-angle, pelvis zeroed

    @staticmethod
    def _load(path: Path) -> np.ndarray:
        if not path.is_file():
            raise UserError(f"subject.pose.files: {str(path)!r} does not exist")
        with np.load(path, allow_pickle=False) as data:
            if "poses" in data:
                raw = np.asarray(data["poses"], dtype=np.float64)
                body = raw.reshape(len(raw), -1)[:, :66].reshape(-1, 22, 3)
            elif "body_pose" in data:
                raw = np.asarray(data["body_pose"], dtype=np.float64)
                body = np.concatenate([np.zeros((len(raw), 1, 3)),
                                       raw.reshape(len(raw), -1)[:, :63].reshape(-1, 21, 3)], 1)
            else:
                raise UserError(f"subject.pose.files: {path} has keys {sorted(data.files)}; "
                                 "expected 'poses' (AMASS) or 'body_pose' (BEDLAM/HMR2)")
        out = np.zeros((len(body), NUM_JOINTS, 3))
        out[:, 1:22] = body[:, 1:22]
        return out

    def sample(self, rng: np.random.Generator) -> tuple[str, np.ndarray]:
        """One file pose as (name, (24, 3, 3) rotations)."""
        k = int(rng.integers(len(self.poses)))
        return f"file:{k}", Rotation.from_rotvec(self.poses[k]).as_matrix()


def matrices_to_axis_angle(rotations: np.ndarray) -> np.ndarray:
    """(..., 3, 3) -> (..., 3) axis-angle (radians)."""
    flat = rotations.reshape(-1, 3, 3)
    return Rotation.from_matrix(flat).as_rotvec().reshape(*rotations.shape[:-2], 3)


def draw_body_pose(config, pose_files: "PoseFileBank | None", recipe_seed: int,
                   index: int) -> tuple[str, np.ndarray, float]:
    """Pose and heading of sample ``index`` for any SMPL-terms body.

    config: the recipe's ``subject.pose`` (PoseConfig). Returns (pose name, (24, 3, 3) SMPL local
    rotations, yaw in degrees), drawn from the "pose" and "placement" streams only.
    """
    from synthgen.seeding import sample_rng

    pose_rng = sample_rng(recipe_seed, index, "pose")
    if pose_files is not None and pose_rng.random() < config.file_fraction:
        name, rotations = pose_files.sample(pose_rng)
    else:
        name, rotations = sample_library_pose(pose_rng, config.library, config.noise_deg)
    yaw = float(sample_rng(recipe_seed, index, "placement").uniform(*config.yaw_deg))
    return name, rotations, yaw
