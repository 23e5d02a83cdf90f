"""Prompt stage: text for the image backend, from templates, the body's attributes, the camera and the pose.

Per sample, :class:`PromptBuilder` draws a template and fills its slots with the sample's own
random stream (``sample_rng(seed, i, "prompt")`` in the pipeline), so a sample's prompt depends
only on the recipe and its index:

- ``{person}``: age group and gender words from the body model's labels (Anny: ``age_years`` and
  phenotype ``gender``, 0 = male .. 1 = female; SMPL family: ``body_model.gender``, adult),
- ``{pose}``: phrases computed from the 3D joints by :func:`synthgen.pose_words.describe_pose`,
- ``{shot}``: framing, viewpoint and lens words from the drawn camera (:func:`camera_words`),
- any other slot: a word list in the template file (clothing, scene, lighting, quality...).

Template files are YAML (format documented in the embedded default,
``synthgen/assets/prompts/human.yaml``, which ships in the wheel as package data and is found
with :mod:`importlib.resources`; the repository's ``assets/prompts/human.yaml`` links to it). A
recipe can instead give ``prompt.prompts_file``: a text file, one prompt per line.
"""

from __future__ import annotations

import functools
import importlib.resources
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from synthgen.errors import UserError
from synthgen.pose_words import describe_pose
from synthgen.recipe import PromptConfig
from synthgen.subjects.base import KEYPOINT_NAMES

__all__ = ["AGE_GROUPS", "GENDERS", "PromptBuilder", "TemplateSet", "age_group", "camera_words",
           "gender_key", "load_templates", "person_phrase"]

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
    return _attributes(getattr(subject, "params", None) or _first_instance(sample).get("params") or {})


def _attributes(params: dict[str, Any]) -> tuple[float | None, float | str | None]:
    """(age in years, gender) from a subject's labels ``params`` (either may be None)."""
    age = params.get("age_years")
    gender = (params.get("phenotype") or {}).get("gender")
    if gender is None:
        gender = (params.get("body_model") or {}).get("gender")
    return (None if age is None else float(age)), gender


def _first_instance(sample: dict[str, Any]) -> dict[str, Any]:
    instances = (sample.get("labels") or {}).get("instances") or [{}]
    return instances[0]


def _world_keypoints(sample: dict[str, Any]) -> tuple[np.ndarray | None, list[str]]:
    labels, instance = sample.get("labels") or {}, _first_instance(sample)
    names = list(instance.get("keypoint_names") or KEYPOINT_NAMES)
    subject = sample.get("subject")
    if subject is not None and getattr(subject, "keypoints_3d", None) is not None:
        return np.asarray(subject.keypoints_3d, dtype=np.float64), names
    if "keypoints_3d" in instance and "cam_ext" in labels:  # camera frame -> world frame
        ext = np.asarray(labels["cam_ext"], dtype=np.float64)
        cam = np.asarray(instance["keypoints_3d"], dtype=np.float64)
        return (cam - ext[:3, 3]) @ ext[:3, :3], names
    return None, names


class PromptBuilder:
    """Prompt and negative prompt of each sample, from a recipe's ``prompt`` section.

    Files are read and validated once, here: a bad template file or a missing prompts file
    raises :class:`UserError` before any sample is made.
    """

    def __init__(self, config: PromptConfig, subject_kind: str = "human"):
        from synthgen.class_prompts import ClassPrompts, default_template_path, is_class_template_file

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
        without it, the first of ``labels["instances"]`` and ``labels["cam_ext"]``;
        and the camera draw from ``labels["camera"]`` or ``camera_draw``. A group (several
        ``subjects``) is described person by person in the ``person`` field.
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
        members = sample.get("subjects") or []
        for name in ts.fields[k]:
            if name == "person" and len(members) > 1:  # a group: everyone, with what each is doing
                values[name] = self._group_phrase(members, rng, _first_instance(sample).get("keypoint_names"))
            elif name == "pose" and len(members) > 1:
                values[name] = ""
            elif name == "person":
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

    def _group_phrase(self, members: list, rng: np.random.Generator, names: list[str] | None) -> str:
        """"a group of 3 people: an elderly woman, walking; a toddler; a man, both arms raised
        above the head": each member's age and gender words and (``prompt.describe_pose``) its
        first pose phrase, from its own ``params`` and world keypoints."""
        people = []
        for member in members:
            age, gender = _attributes(getattr(member, "params", None) or {})
            phrase = person_phrase(age, gender, rng, self.templates.people)
            if self.config.describe_pose and self.templates.max_pose_phrases:
                try:
                    pose = describe_pose(np.asarray(member.keypoints_3d, dtype=np.float64),
                                         list(names or KEYPOINT_NAMES))
                except ValueError:  # a subject without the limb joints the rules need
                    pose = []
                phrase = f"{phrase}, {pose[0]}" if pose else phrase
            people.append(phrase)
        return f"a group of {len(members)} people: " + "; ".join(people)

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
