"""Memos of what depends only on a mesh's faces (e.g. whether they close a surface).

A body model passes the same faces array for every pose, so these are computed once per model.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

import numpy as np


class PerFaces:
    """``compute(faces, *args)`` memoised by the faces array object.

    The memo keeps the array alive, so an id is never reused for another array while it is
    stored; faces arrays must not be changed in place after they were passed here.
    """

    def __init__(self, compute: Callable[..., Any], size: int = 32):
        self.compute, self.size = compute, size
        self._memo: OrderedDict[int, tuple[np.ndarray, Any]] = OrderedDict()

    def __call__(self, faces: np.ndarray, *args: Any) -> Any:
        known = self._memo.get(id(faces))
        if known is not None and known[0] is faces:
            return known[1]
        value = self.compute(faces, *args)
        self._memo[id(faces)] = (faces, value)
        if len(self._memo) > self.size:
            self._memo.popitem(last=False)
        return value
