"""Prompt stage: text for the image backend, from templates, the body's attributes, the camera and the pose.

Per sample, :class:`PromptBuilder` draws a template and fills its slots with the sample's own
random stream (``sample_rng(seed, i, "prompt")`` in the pipeline), so a sample's prompt depends
only on the recipe and its index:

- ``{person}``: age group and gender words from the body model's labels (Anny: ``age_years`` and
  phenotype ``gender``, 0 = male .. 1 = female; SMPL family: ``body_model.gender``, adult),
- ``{pose}``: phrases computed from the 3D joints by :func:`describe_pose`,
- ``{shot}``: framing, viewpoint and lens words from the drawn camera (:func:`camera_words`),
- any other slot: a word list in the template file (clothing, scene, lighting, quality...).

Template files are YAML (format documented in the embedded default,
``synthgen/assets/prompts/human.yaml``, which ships in the wheel as package data and is found
with :mod:`importlib.resources`; the repository's ``assets/prompts/human.yaml`` links to it). A
recipe can instead give ``prompt.prompts_file``: a text file, one prompt per line.

Pose description ("posecodes" in the spirit of PoseScript, with our own rules and thresholds):
world frame, metres, Z up, ground plane z = 0, keypoints in :data:`KEYPOINT_NAMES` order (any
order when names are given). Lengths are measured in units of the body's own leg length
(hip-knee + knee-ankle), so the same rules fit toddlers and adults; body axes come from the hip
and shoulder lines (``left`` is the subject's own left).
"""

from __future__ import annotations

import functools
import importlib.resources
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from synthgen.errors import UserError
from synthgen.recipe import PromptConfig
from synthgen.subjects.base import KEYPOINT_NAMES

__all__ = ["AGE_GROUPS", "GENDERS", "PromptBuilder", "TemplateSet", "age_group", "camera_words",
           "describe_pose", "gender_key", "load_templates", "person_phrase"]

# (group, upper age bound in years, exclusive), youngest first
AGE_GROUPS: tuple[tuple[str, float], ...] = (
    ("baby", 2.0), ("toddler", 4.0), ("child", 13.0), ("teen", 20.0), ("young_adult", 30.0),
    ("adult", 45.0), ("middle_aged", 65.0), ("elderly", float("inf")),
)
GENDERS = ("male", "female", "neutral")
# Anny's gender phenotype blends male (0) and female (1): the middle band is described neutrally
NEUTRAL_GENDER_BAND = (0.4, 0.6)
BUILTIN_SLOTS = ("person", "pose", "shot")
DEFAULT_TEMPLATES = "assets/prompts/human.yaml"  # inside the synthgen package
_TOP_KEYS = {"templates", "slots", "people", "max_pose_phrases"}


# --- attributes -> words ---------------------------------------------------------------------
def age_group(age_years: float | None) -> str:
    """Age group name of :data:`AGE_GROUPS` (``adult`` when the age is unknown)."""
    if age_years is None or not np.isfinite(age_years):
        return "adult"
    for name, upper in AGE_GROUPS:
        if age_years < upper:
            return name
    return AGE_GROUPS[-1][0]


def gender_key(gender: float | str | None) -> str:
    """``male`` / ``female`` / ``neutral`` from an Anny gender phenotype (0 male .. 1 female) or a
    SMPL gender string."""
    if gender is None:
        return "neutral"
    if isinstance(gender, str):
        return gender if gender in GENDERS else "neutral"
    lo, hi = NEUTRAL_GENDER_BAND
    return "male" if gender < lo else "female" if gender > hi else "neutral"


def person_phrase(age_years: float | None, gender: float | str | None, rng: np.random.Generator,
                  people: dict[str, dict[str, list[str]]] | None = None) -> str:
    """"an elderly woman", "a toddler", "a teenage boy"... drawn from ``people`` (default: the
    embedded template file's) with ``rng``."""
    people = people if people is not None else load_templates(None).people
    words = people[age_group(age_years)][gender_key(gender)]
    return words[int(rng.integers(len(words)))]


def camera_words(camera: dict[str, float] | None) -> str:
    """Framing, viewpoint and lens words from a camera draw (``labels["camera"]``).

    Uses ``subject_fraction`` (projected subject size / image size: above 1 the subject is
    cropped), ``elevation_deg`` (above the subject centre) and ``fov_deg`` (vertical).
    """
    camera = camera or {}
    fraction = camera.get("subject_fraction")
    if fraction is None:
        framing = "photo"
    elif fraction >= 1.6:
        framing = "close-up"
    elif fraction >= 1.1:
        framing = "medium shot"
    elif fraction >= 0.45:
        framing = "full-body shot"
    else:
        framing = "wide shot"
    elevation = camera.get("elevation_deg")
    if elevation is not None and elevation >= 60:
        framing += " from directly above"
    elif elevation is not None and elevation >= 35:
        framing += " from above"
    elif elevation is not None and elevation <= -10:
        framing += " from a low angle"
    fov = camera.get("fov_deg")
    if fov is not None and fov >= 65:
        framing += ", wide-angle lens"
    elif fov is not None and fov <= 35:
        framing += ", telephoto lens"
    return framing


# --- pose description -------------------------------------------------------------------------
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


# --- template files ---------------------------------------------------------------------------
@dataclass
class TemplateSet:
    """A validated template file: templates, slot word lists, person words."""

    source: str
    templates: list[str]
    slots: dict[str, list[str] | dict[str, list[str]]] = field(default_factory=dict)
    people: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    max_pose_phrases: int = 4
    fields: list[list[str]] = field(default_factory=list)  # slot names of each template, in order


def _word_list(value: Any, where: str) -> list[str]:
    if (not isinstance(value, list) or not value
            or not all(isinstance(v, str) and v.strip() for v in value)):
        raise UserError(f"{where}: expected a non-empty list of non-empty strings, got {value!r}")
    return [v.strip() for v in value]


def _slot_keys() -> set[str]:
    groups = [g for g, _ in AGE_GROUPS]
    return {"default", *groups, *GENDERS, *(f"{g}_{s}" for g in groups for s in GENDERS)}


def _resolve_slot(value: list[str] | dict[str, list[str]], group: str, gender: str) -> list[str] | None:
    if isinstance(value, list):
        return value
    for key in (f"{group}_{gender}", group, gender, "default"):
        if key in value:
            return value[key]
    return None


def _template_fields(template: str, where: str) -> list[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise UserError(f"{where}: {exc} (write literal braces as {{{{ and }}}})") from None
    out = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise UserError(f"{where}: slot {{{name}{'!' + conversion if conversion else ''}"
                            f"{':' + spec if spec else ''}}} is not a plain {{name}} slot")
        if name not in out:
            out.append(name)
    return out


def _parse_templates(data: Any, source: str, defaults: TemplateSet | None) -> TemplateSet:
    if not isinstance(data, dict):
        raise UserError(f"{source}: a template file must be a mapping with a 'templates' list")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise UserError(f"{source}: unknown keys {unknown}; allowed: {sorted(_TOP_KEYS)}")
    if "templates" not in data:
        raise UserError(f"{source}: missing the 'templates' list")
    templates = _word_list(data["templates"], f"{source}: templates")

    slots: dict[str, list[str] | dict[str, list[str]]] = {}
    raw_slots = data.get("slots") or {}
    if not isinstance(raw_slots, dict):
        raise UserError(f"{source}: 'slots' must map slot names to word lists, got {raw_slots!r}")
    allowed = _slot_keys()
    for name, value in raw_slots.items():
        where = f"{source}: slot {name!r}"
        if name in BUILTIN_SLOTS:
            raise UserError(f"{where} is filled by synthgen ({', '.join(BUILTIN_SLOTS)}); "
                            "rename it")
        if isinstance(value, dict):
            bad = sorted(set(map(str, value)) - allowed)
            if bad:
                raise UserError(f"{where}: unknown keys {bad}; use default, an age group "
                                f"({', '.join(g for g, _ in AGE_GROUPS)}), a gender "
                                f"({', '.join(GENDERS)}) or <group>_<gender>")
            slots[name] = {k: _word_list(v, f"{where}.{k}") for k, v in value.items()}
            for group, _ in AGE_GROUPS:
                for gender in GENDERS:
                    if _resolve_slot(slots[name], group, gender) is None:
                        raise UserError(f"{where} has no list for {group} {gender} subjects; "
                                        "add a 'default' list")
        else:
            slots[name] = _word_list(value, where)

    people = {g: dict(v) for g, v in defaults.people.items()} if defaults else {}
    raw_people = data.get("people") or {}
    if not isinstance(raw_people, dict):
        raise UserError(f"{source}: 'people' must map age groups to gender word lists")
    for group, words in raw_people.items():
        where = f"{source}: people.{group}"
        if group not in dict(AGE_GROUPS):
            raise UserError(f"{where}: unknown age group; use {[g for g, _ in AGE_GROUPS]}")
        if not isinstance(words, dict) or set(words) != set(GENDERS):
            raise UserError(f"{where}: give exactly the lists {list(GENDERS)}")
        people[group] = {k: _word_list(v, f"{where}.{k}") for k, v in words.items()}
    missing_groups = [g for g, _ in AGE_GROUPS if g not in people]
    if missing_groups:
        raise UserError(f"{source}: people has no words for age groups {missing_groups}")

    max_phrases = data.get("max_pose_phrases", 4)
    if not isinstance(max_phrases, int) or isinstance(max_phrases, bool) or max_phrases < 0:
        raise UserError(f"{source}: max_pose_phrases must be an integer >= 0, got {max_phrases!r}")

    fields = []
    for i, template in enumerate(templates):
        where = f"{source}: templates[{i}] {template!r}"
        names = _template_fields(template, where)
        for name in names:
            if name not in BUILTIN_SLOTS and name not in slots:
                raise UserError(f"{where} uses slot {{{name}}}, which is not defined under 'slots' "
                                f"(defined: {sorted(slots)}; filled by synthgen: "
                                f"{list(BUILTIN_SLOTS)})")
        fields.append(names)
    return TemplateSet(source, templates, slots, people, max_phrases, fields)


@functools.lru_cache(maxsize=8)
def load_templates(path: str | None) -> TemplateSet:
    """Read and validate a template YAML (``None``: the embedded default). Cached per path."""
    if path is None:
        resource = importlib.resources.files("synthgen").joinpath(DEFAULT_TEMPLATES)
        text, source, defaults = resource.read_text(encoding="utf-8"), f"synthgen/{DEFAULT_TEMPLATES}", None
    else:
        file = Path(path)
        if not file.is_file():
            raise UserError(f"prompt.templates: {path!r} does not exist; give a YAML template file "
                            f"(see synthgen/{DEFAULT_TEMPLATES} for the format) or null for the "
                            "embedded default")
        text, source, defaults = file.read_text(encoding="utf-8"), str(file), load_templates(None)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"prompt.templates: {source} is not valid YAML "
                        f"({' '.join(str(exc).split())})") from None
    return _parse_templates(data, source, defaults)


def _read_prompts_file(path: str) -> list[str]:
    file = Path(path)
    if not file.is_file():
        raise UserError(f"prompt.prompts_file: {path!r} does not exist; give a text file with one "
                        "prompt per line (blank lines and lines starting with # are skipped)")
    lines = [line.strip() for line in file.read_text(encoding="utf-8").splitlines()]
    prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise UserError(f"prompt.prompts_file: {path!r} holds no prompts (only blank lines or "
                        "# comments)")
    return prompts


def _tidy(text: str) -> str:
    """Collapse whitespace and drop the empty comma-separated pieces an empty slot leaves."""
    pieces = [" ".join(p.split()) for p in text.split(",")]
    return ", ".join(p for p in pieces if p)


# --- sample -> prompt -------------------------------------------------------------------------
def _subject_attributes(sample: dict[str, Any]) -> tuple[float | None, float | str | None]:
    subject = sample.get("subject")
    params = getattr(subject, "params", None) or (sample.get("labels") or {}).get("subject") or {}
    age = params.get("age_years")
    gender = (params.get("phenotype") or {}).get("gender")
    if gender is None:
        gender = (params.get("body_model") or {}).get("gender")
    return (None if age is None else float(age)), gender


def _world_keypoints(sample: dict[str, Any]) -> tuple[np.ndarray | None, list[str]]:
    labels = sample.get("labels") or {}
    names = list(labels.get("keypoint_names") or KEYPOINT_NAMES)
    subject = sample.get("subject")
    if subject is not None and getattr(subject, "keypoints_3d", None) is not None:
        return np.asarray(subject.keypoints_3d, dtype=np.float64), names
    if "keypoints_3d" in labels and "cam_ext" in labels:  # camera frame -> world frame
        ext = np.asarray(labels["cam_ext"], dtype=np.float64)
        cam = np.asarray(labels["keypoints_3d"], dtype=np.float64)
        return (cam - ext[:3, 3]) @ ext[:3, :3], names
    return None, names


class PromptBuilder:
    """Prompt and negative prompt of each sample, from a recipe's ``prompt`` section.

    Files are read and validated once, here: a bad template file or a missing prompts file
    raises :class:`UserError` before any sample is made.
    """

    def __init__(self, config: PromptConfig, subject_kind: str = "human"):
        from synthgen.subjects.class_prompts import ClassPrompts, default_template_path, is_class_template_file

        self.config = config
        self.prompts = _read_prompts_file(config.prompts_file) if config.prompts_file else None
        path = config.templates
        if path is None and subject_kind != "human":
            path = default_template_path(subject_kind)
        self.class_prompts = (ClassPrompts.load(path) if self.prompts is None and is_class_template_file(path)
                              else None)
        self.templates = None if self.prompts is not None or self.class_prompts is not None \
            else load_templates(config.templates)

    def build(self, sample: dict[str, Any], rng: np.random.Generator) -> tuple[str, str]:
        """(prompt, negative prompt) of one sample; every choice is drawn from ``rng``.

        Reads the sample's ``subject`` (``params`` labels and world-frame ``keypoints_3d``) or,
        without it, ``labels["subject"]``, ``labels["keypoints_3d"]`` and ``labels["cam_ext"]``;
        and the camera draw from ``labels["camera"]`` or ``camera_draw``.
        """
        negative = self.config.negative
        if self.prompts is not None:
            return self.prompts[int(rng.integers(len(self.prompts)))], negative
        if self.class_prompts is not None:
            return self.class_prompts.build(sample, rng), negative
        ts = self.templates
        k = int(rng.integers(len(ts.templates)))
        age, gender = _subject_attributes(sample)
        group, gkey = age_group(age), gender_key(gender)
        values: dict[str, str] = {}
        for name in ts.fields[k]:
            if name == "person":
                values[name] = person_phrase(age, gender, rng, ts.people)
            elif name == "shot":
                camera = (sample.get("labels") or {}).get("camera") or sample.get("camera_draw")
                values[name] = camera_words(camera)
            elif name == "pose":
                values[name] = self._pose_words(sample, ts.max_pose_phrases)
            else:
                words = _resolve_slot(ts.slots[name], group, gkey)
                values[name] = words[int(rng.integers(len(words)))]
        return _tidy(ts.templates[k].format(**values)), negative

    def _pose_words(self, sample: dict[str, Any], limit: int) -> str:
        if not self.config.describe_pose or limit == 0:
            return ""
        points, names = _world_keypoints(sample)
        if points is None:
            return ""
        try:
            phrases = describe_pose(points, names)
        except ValueError:  # a subject without the limb joints the rules need
            return ""
        return ", ".join(phrases[:limit])
