"""Subjects stage: body/animal/object models that draw and pose a subject per sample."""

from __future__ import annotations

from synthgen.recipe import SubjectConfig
from synthgen.subjects.base import PosedSubject, SubjectModel

__all__ = ["PosedSubject", "SubjectModel", "build_subject_model"]


def build_subject_model(config: SubjectConfig) -> SubjectModel:
    """The subject model a recipe names (built once per process)."""
    if config.model == "anny":
        from synthgen.subjects.anny_body import AnnyBody

        return AnnyBody(config)
    from synthgen.subjects.smpl_body import SmplBody

    return SmplBody(config)
