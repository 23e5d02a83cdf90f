"""The subject model a recipe names: built once per process, or only its part names (cheap)."""

from __future__ import annotations

from synthgen.recipe import SubjectConfig
from synthgen.seeding import label_threads
from synthgen.subjects.base import SubjectModel

__all__ = ["build_subject_model", "subject_part_names"]


def build_subject_model(config: SubjectConfig) -> SubjectModel:
    """The subject model a recipe names (built once per process; what it precomputes from a
    forward pass, such as Anny's rest pose, feeds labels, hence :func:`label_threads`)."""
    with label_threads():
        return _build(config)


def _build(config: SubjectConfig) -> SubjectModel:
    if config.kind == "animal":
        from synthgen.subjects.smal_body import SmalBody

        return SmalBody(config)
    if config.kind == "object":
        from synthgen.subjects.objects import ObjectModel

        return ObjectModel(config)
    if config.model == "anny":
        from synthgen.subjects.anny_body import AnnyBody

        return AnnyBody(config)
    from synthgen.subjects.smpl_body import SmplBody

    return SmplBody(config)


def subject_part_names(config: SubjectConfig) -> list[str]:
    """The ``part_names`` of the model a recipe names, without building the model (cheap)."""
    if config.kind == "animal":
        from synthgen.subjects.animal_poses import PART_NAMES as ANIMAL_PARTS

        return ANIMAL_PARTS
    if config.kind == "object":
        from synthgen.subjects.objects import object_part_names

        return object_part_names(config)
    from synthgen.subjects.base import PART_NAMES

    return PART_NAMES
