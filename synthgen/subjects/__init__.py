"""Subjects stage: body/animal/object models that draw and pose a subject per sample.

The interface every model provides: :mod:`.base`; which model a recipe names: :mod:`.build`.
"""

from synthgen.subjects.base import PosedSubject, SubjectModel
from synthgen.subjects.build import build_subject_model, subject_part_names

__all__ = ["PosedSubject", "SubjectModel", "build_subject_model", "subject_part_names"]
