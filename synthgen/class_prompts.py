"""Prompts for class-labelled subjects (animals, objects): 3D-DST / GenZoo-style templates.

A class template file (YAML; ``assets/prompts/animals.yaml`` and ``objects.yaml`` document the
format) has a top-level ``classes`` mapping, which tells it apart from the human template files
read by :mod:`synthgen.prompt`::

    templates: ["An image of {class}, {attribute}, {view}, best quality, extremely detailed"]
    classes:          # label (species family or object class) -> words for {class}
      dog: ["a dog", "a labrador retriever"]
      default: ["an animal"]
    slots:            # any other {slot}: a list, or a mapping label -> list (with default)
      attribute: {dog: ["with a glossy coat"], default: [""]}
    activities:       # animals: pose_name -> words for {activity}
      walking: ["walking"]
    captions_file: object_captions.yaml   # optional, relative to this file: label -> captions

Slots filled from the sample: ``{class}`` (from the instance's ``params.species`` or ``.class``),
``{view}`` (camera azimuth relative to the subject's heading, and elevation), ``{activity}`` (the
pose name through ``activities``), ``{caption}`` (a line of the caption file for the label).
Every choice is drawn from the sample's "prompt" random stream.
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

BUILTIN_SLOTS = ("class", "view", "activity", "caption")
_TOP_KEYS = {"templates", "classes", "slots", "activities", "captions_file"}
DEFAULT_FILES = {"animal": "animals.yaml", "object": "objects.yaml"}


def is_class_template_file(path: str | None) -> bool:
    """True when ``path`` is a YAML mapping with a top-level ``classes`` key."""
    if path is None or not Path(path).is_file():
        return False
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return False
    return isinstance(data, dict) and "classes" in data


def default_template_path(kind: str) -> Path | None:
    """The embedded class template file for a subject kind (package data, else the repo's assets/)."""
    name = DEFAULT_FILES.get(kind)
    if name is None:
        return None
    packaged = importlib.resources.files("synthgen").joinpath(f"assets/prompts/{name}")
    if packaged.is_file():
        return Path(str(packaged))
    repo = Path(__file__).resolve().parents[1] / "assets" / "prompts" / name
    return repo if repo.is_file() else None


def _words(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise UserError(f"{where}: expected a non-empty list of strings, got {value!r}")
    return [v.strip() for v in value]


def _label_words(value: Any, where: str) -> list[str] | dict[str, list[str]]:
    if isinstance(value, dict):
        return {str(k): _words(v, f"{where}.{k}") for k, v in value.items()}
    return _words(value, where)


@dataclass
class ClassPrompts:
    source: str
    templates: list[str]
    classes: dict[str, list[str]]
    slots: dict[str, list[str] | dict[str, list[str]]] = field(default_factory=dict)
    activities: dict[str, list[str]] = field(default_factory=dict)
    captions: dict[str, list[str]] = field(default_factory=dict)
    fields: list[list[str]] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path) -> ClassPrompts:
        return _load(str(path))

    # --- sample -> prompt ---------------------------------------------------------------------
    def build(self, sample: dict[str, Any], rng: np.random.Generator) -> str:
        """One prompt for a sample (reads its first instance's parameters and camera labels, and
        the camera draw)."""
        labels = sample.get("labels") or {}
        instances = labels.get("instances") or [{}]
        subject = dict(instances[0].get("params") or {}) | dict(instances[0].get("camera_labels") or {})
        if not subject and sample.get("subject") is not None:
            subject = dict(getattr(sample["subject"], "params", {}) or {})
        label = str(subject.get("species") or subject.get("class") or "default")
        k = int(rng.integers(len(self.templates)))
        values = {}
        for name in self.fields[k]:
            if name == "class":
                words = self.classes.get(label) or self.classes.get("default") or [label.replace("_", " ")]
            elif name == "view":
                camera = labels.get("camera") or sample.get("camera_draw") or {}
                values[name] = view_words(subject, camera)
                continue
            elif name == "activity":
                words = self.activities.get(str(subject.get("pose_name", "")).split(":")[0]) or [""]
            elif name == "caption":
                words = self.captions.get(label) or self.captions.get("default") or [""]
            else:
                slot = self.slots[name]
                words = slot if isinstance(slot, list) else (slot.get(label) or slot.get("default") or [""])
            values[name] = words[int(rng.integers(len(words)))]
        text = self.templates[k].format(**values)
        pieces = [" ".join(p.split()) for p in text.split(",")]
        return ", ".join(p for p in pieces if p)


def view_words(subject: dict[str, Any], camera: dict[str, Any]) -> str:
    """"front view" / "side view" / "rear view" / "three-quarter view" (+ "from above"/"low angle").

    Objects: ``subject.azimuth`` (PASCAL3D+, relative to the object's front). Others: the camera
    draw's ``azimuth_deg`` minus the subject's heading ``yaw_deg``.
    """
    if "azimuth" in subject:
        azimuth, elevation = float(subject["azimuth"]), float(subject.get("elevation", 0.0))
    elif "azimuth_deg" in camera:
        azimuth = float(camera["azimuth_deg"]) - float(subject.get("yaw_deg", 0.0))
        elevation = float(camera.get("elevation_deg", 0.0))
    else:
        return ""
    off = abs((azimuth + 180.0) % 360.0 - 180.0)  # 0 = front, 180 = back
    words = ("front view" if off < 30 else "three-quarter view" if off < 60 else "side view" if off < 120
             else "three-quarter rear view" if off < 150 else "rear view")
    if elevation >= 35:
        words += " from above"
    elif elevation <= -10:
        words += ", low angle"
    return words


@functools.lru_cache(maxsize=8)
def _load(path: str) -> ClassPrompts:
    file = Path(path)
    if not file.is_file():
        raise UserError(f"prompt.templates: {path!r} does not exist")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UserError(f"prompt.templates: {path} is not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict) or "classes" not in data:
        raise UserError(f"{path}: a class template file is a mapping with 'templates' and 'classes'")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown keys {unknown}; allowed: {sorted(_TOP_KEYS)}")
    templates = _words(data.get("templates"), f"{path}: templates")
    classes = {str(k): _words(v, f"{path}: classes.{k}") for k, v in (data["classes"] or {}).items()}
    slots = {str(k): _label_words(v, f"{path}: slots.{k}") for k, v in (data.get("slots") or {}).items()}
    bad = sorted(set(slots) & set(BUILTIN_SLOTS))
    if bad:
        raise UserError(f"{path}: slots {bad} are filled by synthgen ({', '.join(BUILTIN_SLOTS)}); rename them")
    activities = {str(k): _words(v, f"{path}: activities.{k}") for k, v in (data.get("activities") or {}).items()}
    captions: dict[str, list[str]] = {}
    if data.get("captions_file"):
        cap = file.parent / str(data["captions_file"])
        if not cap.is_file():
            raise UserError(f"{path}: captions_file {str(cap)!r} does not exist")
        raw = yaml.safe_load(cap.read_text(encoding="utf-8")) or {}
        if not isinstance(raw, dict):
            raise UserError(f"{cap}: expected a mapping of class -> list of captions")
        captions = {str(k): _words(v, f"{cap}: {k}") for k, v in raw.items()}
    fields = []
    for i, template in enumerate(templates):
        names = []
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise UserError(f"{path}: templates[{i}] {template!r}: {exc}") from None
        for _, name, spec, conversion in parsed:
            if name is None:
                continue
            if spec or conversion or not name.isidentifier():
                raise UserError(f"{path}: templates[{i}] slot {{{name}}} is not a plain {{name}} slot")
            if name not in BUILTIN_SLOTS and name not in slots:
                raise UserError(f"{path}: templates[{i}] uses {{{name}}}, which is neither defined under "
                                f"'slots' ({sorted(slots)}) nor filled by synthgen ({list(BUILTIN_SLOTS)})")
            if name not in names:
                names.append(name)
        fields.append(names)
    return ClassPrompts(str(file), templates, classes, slots, activities, captions, fields)
