"""Pose words from 3D keypoints ("posecodes" in the spirit of PoseScript, with our own rules and
thresholds), used by the prompt stage's ``{pose}`` slot.

World frame, metres, Z up, ground plane z = 0, keypoints in :data:`KEYPOINT_NAMES` order (any
order when names are given). Lengths are measured in units of the body's own leg length
(hip-knee + knee-ankle), so the same rules fit toddlers and adults; body axes come from the hip
and shoulder lines (``left`` is the subject's own left).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from synthgen.subjects.base import KEYPOINT_NAMES

__all__ = ["describe_pose"]


_REQUIRED = ("left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist",
             "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
             "right_ankle")
_FACE = ("nose", "left_eye", "right_eye", "left_ear", "right_ear")
_FOOT = ("ankle", "big_toe", "small_toe", "heel")
_SIDES = ("left", "right")

# thresholds (angles in degrees; heights and distances in leg lengths)
STRAIGHT_LIMB_DEG = 140.0     # elbow/knee angle above which a limb counts as stretched
BENT_DEG = 125.0              # below: "bent"
FULLY_BENT_DEG = 65.0         # below: "fully bent"
LEAN_DEG = 20.0               # torso tilt from vertical: "leaning"
BEND_DEG = 45.0               # torso tilt: "bending"
LYING_DEG = 60.0              # torso tilt for lying, with hips and shoulders low
LYING_HEIGHT = 0.5
KNEE_LOW = 0.4                # knee height for kneeling (both knees)
KNEE_ON_GROUND = 0.25         # knee height for kneeling on one knee
UPRIGHT_THIGH_DEG = 50.0      # kneeling thigh within this of vertical
FOLDED_SHIN_DEG = 50.0        # kneeling shin at least this far from hanging down
CROUCH_KNEE_DEG = 70.0        # mean knee angle below which a low body is crouching
CROUCH_HIP = 0.6
GROUND_SIT_HIP = 0.4
SIT_HIP = 0.85
SIT_THIGH_DEG = (55.0, 125.0)  # thigh angle from hanging straight down (90 = horizontal)
STAND_HIP = 0.85
ABOVE_HEAD = 0.08             # wrist above the top of the face
HAND_RAISED = 0.1             # wrist above the shoulder
FOOT_RAISED = 0.12            # lowest foot point above the other foot's
ONE_LEG = 0.3
STRIDE = 0.45                 # ankles apart along the facing direction
LEGS_APART = 0.9              # ankles apart sideways (Anny's rest stance is ~0.5)
KNEE_RAISED = 0.15            # knee at least this close below the hip line
HANDS_TOGETHER = 0.12
HAND_AT_FACE = 0.15


def _unit(v: np.ndarray) -> np.ndarray | None:
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-9 else None


def _angle(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> float:
    """Angle at ``b`` of the chain a-b-c, degrees (180 = straight)."""
    u, v = _unit(a - b), _unit(c - b)
    if u is None or v is None:
        return 180.0
    return float(np.degrees(np.arccos(np.clip(u @ v, -1.0, 1.0))))


def _pair(codes: dict[str, str | None], both: dict[str, str], one: dict[str, str]) -> list[str]:
    """Phrases for a left/right code pair: one plural phrase when both sides agree."""
    left, right = codes["left"], codes["right"]
    if left is not None and left == right:
        return [both[left]]
    return [one[c].format(side=s) for s, c in (("left", left), ("right", right)) if c is not None]


class _Body:
    """Joint lookups and body measurements for the pose rules."""

    def __init__(self, points: np.ndarray, names: Sequence[str]):
        self.p = points
        self.idx = {n: i for i, n in enumerate(names)}
        self.ground = min(0.0, float(points[:, 2].min()))
        thigh = np.mean([np.linalg.norm(self[f"{s}_hip"] - self[f"{s}_knee"]) for s in _SIDES])
        shin = np.mean([np.linalg.norm(self[f"{s}_knee"] - self[f"{s}_ankle"]) for s in _SIDES])
        self.leg = float(thigh + shin)
        self.mid_hip = (self["left_hip"] + self["right_hip"]) / 2
        self.mid_shoulder = (self["left_shoulder"] + self["right_shoulder"]) / 2
        self.spine = self.mid_shoulder - self.mid_hip
        spine_dir = _unit(self.spine)
        self.lean = 0.0 if spine_dir is None else float(np.degrees(np.arccos(np.clip(spine_dir[2], -1, 1))))
        # horizontal body axes: lateral points to the subject's left, forward = lateral x up
        self.hip_lateral = self._horizontal_axis("left_hip", "right_hip")
        self.shoulder_lateral = self._horizontal_axis("left_shoulder", "right_shoulder")
        up = np.array([0.0, 0.0, 1.0])
        self.hip_forward = None if self.hip_lateral is None else np.cross(self.hip_lateral, up)
        self.shoulder_forward = None if self.shoulder_lateral is None else np.cross(self.shoulder_lateral, up)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.p[self.idx[name]]

    def has(self, name: str) -> bool:
        return name in self.idx

    def height(self, point: np.ndarray) -> float:
        """Height above the ground, in leg lengths."""
        return float((point[2] - self.ground) / self.leg)

    def _horizontal_axis(self, left: str, right: str) -> np.ndarray | None:
        v = self[left] - self[right]
        v = np.array([v[0], v[1], 0.0])
        if np.linalg.norm(v) < 0.25 * np.linalg.norm(self[left] - self[right]):
            return None  # the line is near vertical (e.g. lying on the side)
        return _unit(v)

    def foot_low(self, side: str) -> float:
        """Height of the lowest foot point of one side, in leg lengths."""
        return min(self.height(self[f"{side}_{n}"]) for n in _FOOT if self.has(f"{side}_{n}"))

    def thigh_from_down(self, side: str) -> float:
        """Thigh angle from hanging straight down, degrees (90 = horizontal)."""
        d = _unit(self[f"{side}_knee"] - self[f"{side}_hip"])
        return 0.0 if d is None else float(np.degrees(np.arccos(np.clip(-d[2], -1, 1))))

    def shin_from_down(self, side: str) -> float:
        """Shin angle from hanging straight down, degrees."""
        d = _unit(self[f"{side}_ankle"] - self[f"{side}_knee"])
        return 0.0 if d is None else float(np.degrees(np.arccos(np.clip(-d[2], -1, 1))))

    def knee_angle(self, side: str) -> float:
        return _angle(self[f"{side}_hip"], self[f"{side}_knee"], self[f"{side}_ankle"])

    def elbow_angle(self, side: str) -> float:
        return _angle(self[f"{side}_shoulder"], self[f"{side}_elbow"], self[f"{side}_wrist"])


def _posture(b: _Body, raised_foot: str | None, stride: str | None) -> tuple[str | None, str]:
    """(phrase, kind) of the whole-body posture; kind is one of lying, kneeling, crouching,
    sitting, standing, other."""
    hip = b.height(b.mid_hip)
    if b.lean > LYING_DEG and max(hip, b.height(b.mid_shoulder)) < LYING_HEIGHT:
        # the chest faces lateral x spine (= forward when standing)
        lateral, spine = _unit(b["left_shoulder"] - b["right_shoulder"]), _unit(b.spine)
        chest = None if lateral is None or spine is None else _unit(np.cross(lateral, spine))
        if chest is not None and chest[2] > 0.5:
            return "lying on the back", "lying"
        if chest is not None and chest[2] < -0.5:
            return "lying face down", "lying"
        return "lying on the side", "lying"
    # kneeling: thigh near vertical, shin folded back, knee low (toes may hold the knee a little
    # above the ground)
    kneel = [s for s in _SIDES if b.thigh_from_down(s) < UPRIGHT_THIGH_DEG
             and b.shin_from_down(s) > FOLDED_SHIN_DEG and b.height(b[f"{s}_knee"]) < KNEE_LOW]
    if len(kneel) == 2 and hip < SIT_HIP:
        return "kneeling", "kneeling"
    if len(kneel) == 1 and b.height(b[f"{kneel[0]}_knee"]) < KNEE_ON_GROUND:
        return "kneeling on one knee", "kneeling"
    knee = np.mean([b.knee_angle(s) for s in _SIDES])
    if hip < CROUCH_HIP and knee < CROUCH_KNEE_DEG:
        return "crouching", "crouching"
    lo, hi = SIT_THIGH_DEG
    if hip < SIT_HIP and b.lean < BEND_DEG and all(lo <= b.thigh_from_down(s) <= hi for s in _SIDES):
        if knee >= STRAIGHT_LIMB_DEG:
            return "sitting on the ground with legs stretched out", "sitting"
        return ("sitting on the ground" if hip < GROUND_SIT_HIP else "sitting"), "sitting"
    if hip < GROUND_SIT_HIP:
        return "sitting on the ground", "sitting"
    if hip > STAND_HIP and b.lean < BEND_DEG:
        if raised_foot is not None:
            other = "right" if raised_foot == "left" else "left"
            if stride is not None:
                return None, "standing"  # mid-step or running: said by the leg phrases
            if b.foot_low(raised_foot) - b.foot_low(other) > ONE_LEG:
                return f"standing on the {other} leg", "standing"
            return "standing", "standing"
        if stride is not None:
            return f"mid-stride with the {stride} leg forward", "standing"
        return "standing", "standing"
    return None, "other"


def _arm_code(b: _Body, side: str) -> str | None:
    shoulder, elbow, wrist = b[f"{side}_shoulder"], b[f"{side}_elbow"], b[f"{side}_wrist"]
    face = [b[n][2] for n in _FACE if b.has(n)]
    head_top = max(face) if face else shoulder[2] + 0.3 * b.leg
    if wrist[2] > head_top + ABOVE_HEAD * b.leg:
        return "above_head"
    arm = _unit(wrist - shoulder)
    upper = _unit(elbow - shoulder)
    if arm is None or upper is None:
        return None
    straight = b.elbow_angle(side) >= STRAIGHT_LIMB_DEG
    # a hand above the shoulder: a bent arm, or a straight one well above horizontal (not a T-pose)
    if wrist[2] > shoulder[2] + HAND_RAISED * b.leg and (not straight or arm[2] > 0.5):
        return "raised"
    outward = 1.0 if side == "left" else -1.0
    if straight and abs(arm[2]) < 0.6:  # within ~37 degrees of horizontal
        if b.shoulder_lateral is not None and outward * (arm @ b.shoulder_lateral) > 0.75:
            return "side"
        if b.shoulder_forward is not None and arm @ b.shoulder_forward > 0.75:
            return "forward"
    spine = _unit(b.spine)
    if -upper[2] > 0.82 and spine is not None and -(upper @ spine) > 0.85:
        return "down"  # hanging along the torso
    if straight and -arm[2] > 0.82 and b.lean >= LEAN_DEG:
        return "hanging"  # hanging down, away from the torso (bent over)
    return None


_ARMS_BOTH = {"above_head": "both arms raised above the head", "raised": "both hands raised",
              "side": "arms stretched out to the sides", "forward": "arms stretched forward",
              "down": "arms at the sides", "hanging": "arms hanging down"}
_ARMS_ONE = {"above_head": "{side} arm raised above the head", "raised": "{side} hand raised",
             "side": "{side} arm stretched out to the side", "forward": "{side} arm stretched forward",
             "down": "{side} arm at the side", "hanging": "{side} arm hanging down"}


def _bend_code(angle: float) -> str | None:
    if angle < FULLY_BENT_DEG:
        return "fully"
    if angle < BENT_DEG:
        return "bent"
    return None


def describe_pose(keypoints_3d_world: np.ndarray, names: Sequence[str] = KEYPOINT_NAMES) -> list[str]:
    """Short phrases describing a pose, most telling first.

    keypoints_3d_world: (K, 3) metres, world frame (Z up, ground z = 0). names: (K,) keypoint
    names (default :data:`KEYPOINT_NAMES`); the 12 limb joints (shoulders..ankles) are required,
    face and foot points are used when present. Returns e.g. ``["sitting", "both elbows bent"]``;
    an empty list when the joints are not finite or degenerate.
    """
    points = np.asarray(keypoints_3d_world, dtype=np.float64)
    names = list(names)
    if points.ndim != 2 or points.shape != (len(names), 3):
        raise ValueError(f"describe_pose: keypoints must be ({len(names)}, 3) to match the names, "
                         f"got {points.shape}")
    missing = [n for n in _REQUIRED if n not in names]
    if missing:
        raise ValueError(f"describe_pose: keypoints {missing} are required; got names {names}")
    if not np.isfinite(points).all():
        return []
    b = _Body(points, names)
    if b.leg < 1e-6:
        return []

    # legs: raised foot, stride, spread, raised knee
    low = {s: b.foot_low(s) for s in _SIDES}
    raised_foot = None
    for s, other in (("left", "right"), ("right", "left")):
        if low[s] - low[other] > FOOT_RAISED:
            raised_foot = s
    stride = None
    if b.hip_forward is not None:
        ahead = float((b["left_ankle"] - b["right_ankle"]) @ b.hip_forward) / b.leg
        if abs(ahead) > STRIDE:
            stride = "left" if ahead > 0 else "right"
    posture, kind = _posture(b, raised_foot, stride)
    phrases = [posture] if posture else []
    if kind == "lying":
        limbs = {"elbows": {s: _bend_code(b.elbow_angle(s)) for s in _SIDES},
                 "knees": {s: _bend_code(b.knee_angle(s)) for s in _SIDES}}
        return phrases + _bends(limbs)

    arms = {s: _arm_code(b, s) for s in _SIDES}
    big_arms = {s: (c if c not in ("down", "hanging") else None) for s, c in arms.items()}
    phrases += _pair(big_arms, _ARMS_BOTH, _ARMS_ONE)

    if b.lean >= LEAN_DEG and b.hip_forward is not None:
        horizontal = _unit(np.array([b.spine[0], b.spine[1], 0.0]))
        if horizontal is not None:
            ahead, left = horizontal @ b.hip_forward, horizontal @ b.hip_lateral
            if ahead > 0.7:
                phrases.append("bending forward" if b.lean >= BEND_DEG else "leaning forward")
            elif ahead < -0.7:
                phrases.append("leaning back")
            elif left > 0.7:
                phrases.append("leaning to the left")
            elif left < -0.7:
                phrases.append("leaning to the right")

    knees_up: list[str] = []
    if kind not in ("kneeling", "sitting", "crouching"):
        knees_up = [s for s in _SIDES if b.height(b[f"{s}_knee"]) > b.height(b.mid_hip) - KNEE_RAISED]
        if stride is not None and posture is None and stride not in knees_up:
            phrases.append(f"{stride} leg forward")
        phrases += [f"{s} knee raised" for s in knees_up]  # implies that foot is off the ground
        if (raised_foot is not None and raised_foot not in knees_up
                and not (posture or "").startswith("standing on")):
            phrases.append(f"{raised_foot} foot raised")
    if b.hip_lateral is not None:
        apart = abs(float((b["left_ankle"] - b["right_ankle"]) @ b.hip_lateral)) / b.leg
        if apart > LEGS_APART:
            phrases.append("legs wide apart")

    phrases += _pair({s: (c if c in ("down", "hanging") else None) for s, c in arms.items()},
                     _ARMS_BOTH, _ARMS_ONE)
    limbs = {"elbows": {s: (_bend_code(b.elbow_angle(s)) if arms[s] not in ("side", "forward") else None)
                        for s in _SIDES}}
    if kind not in ("kneeling", "sitting", "crouching"):
        limbs["knees"] = {s: (_bend_code(b.knee_angle(s)) if s not in knees_up else None) for s in _SIDES}
    phrases += _bends(limbs)

    wrist_gap = np.linalg.norm(b["left_wrist"] - b["right_wrist"]) / b.leg
    if wrist_gap < HANDS_TOGETHER:
        phrases.append("hands together")
    elif b.has("nose"):
        near = [s for s in _SIDES if np.linalg.norm(b[f"{s}_wrist"] - b["nose"]) / b.leg < HAND_AT_FACE]
        if len(near) == 2:
            phrases.append("hands near the face")
        elif near:
            phrases.append(f"{near[0]} hand near the face")

    if b.has("nose") and b.has("left_ear") and b.has("right_ear"):
        face = _unit(b["nose"] - (b["left_ear"] + b["right_ear"]) / 2)
        if face is not None:
            pitch = float(np.degrees(np.arcsin(np.clip(face[2], -1, 1))))
            if pitch < -35.0:
                phrases.append("looking down")
            elif pitch > 25.0:
                phrases.append("looking up")
    return phrases


def _bends(limbs: dict[str, dict[str, str | None]]) -> list[str]:
    out = []
    for plural, codes in limbs.items():
        single = plural[:-1]  # elbows -> elbow, knees -> knee
        both = {"bent": f"both {plural} bent", "fully": f"{plural} fully bent"}
        one = {"bent": "{side} " + single + " bent", "fully": "{side} " + single + " fully bent"}
        out += _pair(codes, both, one)
    return out
