"""Quadruped skeleton, parts, keypoints and poses in SMAL's joint terms (model-agnostic).

Skeleton: SMAL's 33 joints (``smal_CVPR2017.pkl``) and the 35-joint SMAL+ variants that add the
two ears, named as in the SMAL family; the letter L/R is the animal's own left/right.

Angles are authored per joint as anatomical ``(pitch, roll, yaw)`` degrees about the animal's own
axes at rest (right, forward, up), composed ``R = R_right(pitch) @ R_forward(roll) @ R_up(yaw)``:

- pitch > 0 swings a limb pointing down forward, raises a part pointing forward (nose up),
  lowers a part pointing backward (tail down);
- roll > 0 swings a LEFT limb outward (abduction); right-side joints mirror roll and yaw, so the
  same numbers mean the same motion on both sides;
- yaw > 0 turns a part pointing forward to the animal's left.

Flexion signs per joint (what "folding" is): shoulder + (leg forward), elbow + (forearm
forward), carpus - (paw back), hip + (thigh forward), stifle - (shin back), hock + (foot forward).

Keypoints: the 26 of Animal3D, in its order (:data:`KEYPOINT_NAMES`); which joint or surface
point each one is, is in :data:`KEYPOINT_JOINTS` and :mod:`synthgen.subjects.animal_keypoints`.
Pose files: :class:`AnimalPoseBank`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from synthgen.errors import UserError

SMAL_JOINTS = [
    "pelvis", "pelvis0", "spine", "spine0", "spine1", "spine2", "spine3",
    "LLeg1", "LLeg2", "LLeg3", "LFoot", "RLeg1", "RLeg2", "RLeg3", "RFoot",
    "Neck", "Head",
    "LLegBack1", "LLegBack2", "LLegBack3", "LFootBack", "RLegBack1", "RLegBack2", "RLegBack3", "RFootBack",
    "Tail1", "Tail2", "Tail3", "Tail4", "Tail5", "Tail6", "Tail7", "Mouth", "LEar", "REar",
]
SMAL_PARENTS = [-1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 6, 11, 12, 13, 6, 15, 0, 17, 18, 19, 0, 21, 22, 23,
                0, 25, 26, 27, 28, 29, 30, 16, 16, 16]
NUM_SMAL_JOINTS = 33  # smal_CVPR2017; SMAL+ variants add LEar, REar (35)

PART_NAMES = [
    "background", "head", "neck", "body", "tail",
    "left_front_upper_leg", "left_front_lower_leg", "left_front_paw",
    "right_front_upper_leg", "right_front_lower_leg", "right_front_paw",
    "left_hind_upper_leg", "left_hind_lower_leg", "left_hind_paw",
    "right_hind_upper_leg", "right_hind_lower_leg", "right_hind_paw",
]

# Animal3D's 26 keypoints, in its order.
KEYPOINT_NAMES = [
    "left_eye", "right_eye", "mouth_mid", "left_front_paw", "right_front_paw", "left_back_paw",
    "right_back_paw", "tail_base", "left_front_thigh", "right_front_thigh", "left_back_thigh",
    "right_back_thigh", "left_shoulder", "right_shoulder", "left_front_knee", "right_front_knee",
    "left_back_knee", "right_back_knee", "neck", "tail_end", "left_ear", "right_ear", "left_mouth",
    "right_mouth", "nose", "tail_mid",
]
# Keypoints that are SMAL joints (the rest are surface points, see animal_keypoints).
# Front leg: shoulder = LLeg1, "front thigh" = elbow (LLeg2), "front knee" = carpus (LLeg3),
# paw = LFoot. Hind leg: "back thigh" = stifle (LLegBack2), "back knee" = hock (LLegBack3).
KEYPOINT_JOINTS = {
    "left_front_paw": "LFoot", "right_front_paw": "RFoot", "left_back_paw": "LFootBack",
    "right_back_paw": "RFootBack", "tail_base": "Tail1", "left_front_thigh": "LLeg2",
    "right_front_thigh": "RLeg2", "left_back_thigh": "LLegBack2", "right_back_thigh": "RLegBack2",
    "left_shoulder": "LLeg1", "right_shoulder": "RLeg1", "left_front_knee": "LLeg3",
    "right_front_knee": "RLeg3", "left_back_knee": "LLegBack3", "right_back_knee": "RLegBack3",
    "neck": "Neck", "tail_mid": "Tail4",
}
SURFACE_KEYPOINTS = [n for n in KEYPOINT_NAMES if n not in KEYPOINT_JOINTS]

# Limb graph for drawing (pairs of keypoint names).
SKELETON = [
    ("nose", "left_eye"), ("nose", "right_eye"), ("left_eye", "left_ear"), ("right_eye", "right_ear"),
    ("nose", "mouth_mid"), ("mouth_mid", "left_mouth"), ("mouth_mid", "right_mouth"), ("nose", "neck"),
    ("neck", "left_shoulder"), ("neck", "right_shoulder"), ("neck", "tail_base"),
    ("left_shoulder", "left_front_thigh"), ("left_front_thigh", "left_front_knee"),
    ("left_front_knee", "left_front_paw"), ("right_shoulder", "right_front_thigh"),
    ("right_front_thigh", "right_front_knee"), ("right_front_knee", "right_front_paw"),
    ("tail_base", "left_back_thigh"), ("left_back_thigh", "left_back_knee"),
    ("left_back_knee", "left_back_paw"), ("tail_base", "right_back_thigh"),
    ("right_back_thigh", "right_back_knee"), ("right_back_knee", "right_back_paw"),
    ("tail_base", "tail_mid"), ("tail_mid", "tail_end"),
]


def _side(name: str) -> str:
    return "left" if name.startswith("L") else "right"


def joint_part(name: str) -> str:
    """Part name a SMAL joint's bone belongs to."""
    if name.startswith(("pelvis", "spine")):
        return "body"
    if name == "Neck":
        return "neck"
    if name in ("Head", "Mouth", "LEar", "REar"):
        return "head"
    if name.startswith("Tail"):
        return "tail"
    side = _side(name)
    end = "hind" if "Back" in name else "front"
    if "Foot" in name:
        return f"{side}_{end}_paw"
    return f"{side}_{end}_upper_leg" if name.endswith("1") else f"{side}_{end}_lower_leg"


def joint_part_ids(joint_names: list[str]) -> np.ndarray:
    """(J,) PART_NAMES index of each joint's bone."""
    return np.array([PART_NAMES.index(joint_part(n)) for n in joint_names], dtype=np.int64)


def _keypoint_parts() -> list[tuple[int, ...]]:
    """For each keypoint, the parts whose surface may show it (visibility code)."""
    out = []
    for name in KEYPOINT_NAMES:
        side = "left" if name.startswith("left") else "right"
        if name in ("left_eye", "right_eye", "mouth_mid", "left_ear", "right_ear", "left_mouth",
                    "right_mouth", "nose"):
            parts = ["head"]
        elif name.endswith("paw"):
            end = "front" if "front" in name else "hind"
            parts = [f"{side}_{end}_paw", f"{side}_{end}_lower_leg"]
        elif name.endswith("knee"):
            end = "front" if "front" in name else "hind"
            parts = [f"{side}_{end}_lower_leg", f"{side}_{end}_paw"]
        elif name.endswith("thigh"):
            end = "front" if "front" in name else "hind"
            parts = [f"{side}_{end}_upper_leg", f"{side}_{end}_lower_leg", "body"]
        elif name.endswith("shoulder"):
            parts = [f"{side}_front_upper_leg", "body"]
        elif name == "neck":
            parts = ["neck", "body", "head"]
        elif name == "tail_base":
            parts = ["tail", "body"]
        else:  # tail_mid, tail_end
            parts = ["tail"]
        out.append(tuple(PART_NAMES.index(p) for p in parts))
    return out


KEYPOINT_PARTS = _keypoint_parts()

# --- joint limits and base poses ----------------------------------------------------------------
# (pitch, roll, yaw) [low, high] degrees per joint class, written for the LEFT side / midline.
_LIMITS = {
    "pelvis": ((-40, 45), (-10, 10), (0, 0)),
    "spine": ((-12, 12), (-8, 8), (-12, 12)),
    "Neck": ((-45, 50), (-20, 20), (-40, 40)),
    "Head": ((-45, 45), (-25, 25), (-35, 35)),
    "Mouth": ((-25, 0), (0, 0), (0, 0)),
    "Ear": ((-35, 35), (-35, 35), (-35, 35)),
    "Tail1": ((-70, 60), (-15, 15), (-50, 50)),
    "Tail": ((-30, 30), (-10, 10), (-30, 30)),
    "Leg1": ((-60, 70), (-10, 25), (-20, 20)),
    "Leg2": ((-20, 140), (-8, 8), (-10, 10)),
    "Leg3": ((-110, 20), (-8, 8), (-10, 10)),
    "Foot": ((-45, 45), (-8, 8), (-10, 10)),
    "LegBack1": ((-50, 100), (-10, 25), (-20, 20)),
    "LegBack2": ((-140, 20), (-8, 8), (-10, 10)),
    "LegBack3": ((-20, 140), (-8, 8), (-10, 10)),
    "FootBack": ((-45, 45), (-8, 8), (-10, 10)),
}


def joint_class(name: str) -> str:
    """Key of :data:`_LIMITS` for a SMAL joint name."""
    if name == "pelvis":
        return "pelvis"
    if name.startswith(("pelvis", "spine")):
        return "spine"
    if name in ("Neck", "Head", "Mouth", "Tail1"):
        return name
    if name.endswith("Ear"):
        return "Ear"
    if name.startswith("Tail"):
        return "Tail"
    return name[1:]  # LLeg2 -> Leg2, RFootBack -> FootBack


def is_lateral(name: str) -> bool:
    """True for joints with a side (legs, ears): their roll and yaw are mirrored on the right."""
    return name[:1] in ("L", "R") and joint_class(name) not in ("pelvis", "spine", "Neck", "Head",
                                                                 "Mouth", "Tail1", "Tail")


def limits_array(joint_names: list[str]) -> np.ndarray:
    """(J, 3, 2) anatomical (pitch, roll, yaw) [low, high] degrees, in each joint's own sense
    (right-side roll/yaw are stored un-mirrored: mirroring happens when building rotations)."""
    return np.array([_LIMITS[joint_class(n)] for n in joint_names], dtype=np.float64)


def _both(**joints: tuple[float, float, float]) -> dict[str, tuple[float, float, float]]:
    """{"Leg1": angles} -> the same angles on LLeg1 and RLeg1 (midline names pass through)."""
    out = {}
    for key, angles in joints.items():
        if key in ("Leg1", "Leg2", "Leg3", "Foot", "LegBack1", "LegBack2", "LegBack3", "FootBack", "Ear"):
            out[f"L{key}"], out[f"R{key}"] = angles, angles
        else:
            out[key] = angles
    return out


BASE_POSES: dict[str, dict[str, tuple[float, float, float]]] = {
    "standing": {},
    "walking": {"LLeg1": (20, 0, 0), "LLeg2": (15, 0, 0), "RLeg1": (-15, 0, 0), "RLeg2": (40, 0, 0),
                "RLeg3": (-60, 0, 0), "LLegBack1": (-20, 0, 0), "RLegBack1": (20, 0, 0),
                "RLegBack2": (-45, 0, 0), "RLegBack3": (40, 0, 0), "Tail1": (-15, 0, 0),
                "Head": (5, 0, 0)},
    "trotting": {"LLeg1": (30, 0, 0), "LLeg2": (35, 0, 0), "LLeg3": (-50, 0, 0), "RLeg1": (-25, 0, 0),
                 "RLegBack1": (30, 0, 0), "RLegBack2": (-55, 0, 0), "RLegBack3": (55, 0, 0),
                 "LLegBack1": (-25, 0, 0), "Tail1": (-25, 0, 0), "Neck": (10, 0, 0)},
    "galloping": _both(Leg1=(50, 0, 0), Leg2=(25, 0, 0), Leg3=(-20, 0, 0), LegBack1=(-40, 0, 0),
                       LegBack2=(10, 0, 0), LegBack3=(-10, 0, 0), spine1=(-5, 0, 0), spine2=(-5, 0, 0),
                       Tail1=(-30, 0, 0), Neck=(-15, 0, 0)),
    "sitting": _both(pelvis=(30, 0, 0), Leg1=(-30, 0, 0), LegBack1=(60, 5, 0), LegBack2=(-120, 0, 0),
                     LegBack3=(110, 0, 0), Tail1=(-45, 0, 0), Neck=(-20, 0, 0), Head=(-10, 0, 0)),
    "lying": _both(Leg1=(-55, 0, 0), Leg2=(135, 0, 0), Leg3=(-10, 0, 0), LegBack1=(80, 10, 0),
                   LegBack2=(-135, 0, 0), LegBack3=(120, 0, 0), Tail1=(-20, 0, 0), Neck=(-10, 0, 0)),
    "head_down": {"Neck": (-45, 0, 0), "Head": (-30, 0, 0), "spine3": (-5, 0, 0), "Tail1": (-10, 0, 0)},
    "looking_back": {"Neck": (5, 0, 40), "Head": (0, 0, 35), "spine1": (0, 0, 8), "spine2": (0, 0, 8),
                     "spine3": (0, 0, 8), "Tail1": (0, 0, -20)},
}


def base_pose_angles(name: str, joint_names: list[str]) -> np.ndarray:
    """(J, 3) anatomical degrees of a library pose for a model with ``joint_names``."""
    if name not in BASE_POSES:
        raise KeyError(f"unknown animal pose {name!r}; the library has {sorted(BASE_POSES)}")
    out = np.zeros((len(joint_names), 3))
    for joint, angles in BASE_POSES[name].items():
        if joint in joint_names:
            out[joint_names.index(joint)] = angles
    return out


def sample_library_angles(rng: np.random.Generator, weights: dict[str, float], noise_deg: float,
                          joint_names: list[str]) -> tuple[str, np.ndarray]:
    """A weighted library pose perturbed by N(0, noise_deg) per axis and clipped to the limits.

    Returns the pose name and (J, 3) anatomical degrees (the root keeps its base value: the
    heading is drawn separately).
    """
    names = sorted(weights)
    p = np.array([weights[n] for n in names], dtype=float)
    name = names[rng.choice(len(names), p=p / p.sum())]
    base = base_pose_angles(name, joint_names)
    angles = base + rng.normal(0.0, noise_deg, size=base.shape)
    limits = limits_array(joint_names)
    angles = np.clip(angles, limits[..., 0], limits[..., 1])
    angles[0] = base[0]
    return name, angles


def anatomical_to_matrices(angles_deg: np.ndarray, joint_names: list[str], right: np.ndarray,
                           forward: np.ndarray, up: np.ndarray) -> np.ndarray:
    """(J, 3) (pitch, roll, yaw) degrees -> (J, 3, 3) rotations in a frame where the animal's rest
    axes are ``right``, ``forward``, ``up`` (unit (3,) vectors of that frame)."""
    out = np.empty((len(joint_names), 3, 3))
    for j, name in enumerate(joint_names):
        pitch, roll, yaw = np.radians(angles_deg[j])
        if is_lateral(name) and name.startswith("R"):
            roll, yaw = -roll, -yaw
        out[j] = (Rotation.from_rotvec(pitch * right).as_matrix()
                  @ Rotation.from_rotvec(roll * forward).as_matrix()
                  @ Rotation.from_rotvec(yaw * up).as_matrix())
    return out


class AnimalPoseBank:
    """Poses from ``.npz`` files: key ``poses`` (N, 3J') axis-angle in the model's joint order.

    The root (first 3 values) is ignored: the heading is drawn. Files with fewer joints than the
    model (33-joint SMAL poses for a 35-joint model) leave the extra joints at rest.
    """

    def __init__(self, paths: list[str], num_joints: int):
        chunks = []
        for p in paths:
            path = Path(p)
            if not path.is_file():
                raise UserError(f"subject.animal.pose_files: {str(path)!r} does not exist")
            with np.load(path, allow_pickle=False) as data:
                if "poses" not in data:
                    raise UserError(f"subject.animal.pose_files: {path} has keys {sorted(data.files)}; "
                                    "expected 'poses' (N, 3*J) axis-angle")
                raw = np.asarray(data["poses"], dtype=np.float64)
            raw = raw.reshape(len(raw), -1)
            if raw.shape[1] % 3 or raw.shape[1] // 3 < NUM_SMAL_JOINTS:
                raise UserError(f"subject.animal.pose_files: {path} poses have {raw.shape[1]} values per row; "
                                f"expected 3 x {num_joints} (at least 3 x {NUM_SMAL_JOINTS})")
            joints = raw.reshape(len(raw), -1, 3)[:, :num_joints]
            out = np.zeros((len(raw), num_joints, 3))
            out[:, 1:joints.shape[1]] = joints[:, 1:]
            chunks.append(out)
        self.poses = np.concatenate(chunks)

    def sample(self, rng: np.random.Generator) -> tuple[str, np.ndarray]:
        k = int(rng.integers(len(self.poses)))
        return f"file:{k}", Rotation.from_rotvec(self.poses[k]).as_matrix()
