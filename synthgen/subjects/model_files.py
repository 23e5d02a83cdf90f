"""Reading body-model files without running code from them.

Two ways in, shared by the SMPL-family (:mod:`synthgen.subjects.smpl_body`) and SMAL-family
(:mod:`synthgen.subjects.smal_files`) loaders and converters:

- :func:`read_npz_arrays` opens an ``.npz`` with ``allow_pickle=False``: every numeric or string
  array is returned, object entries (which would need unpickling) are skipped and logged.
- :func:`load_pickled_arrays` reads an official ``.pkl`` (Python 2 era, often holding ``chumpy``
  objects and ``scipy.sparse`` matrices) once, for conversion to ``.npz``, through
  :class:`ArraysUnpickler`, which rebuilds numpy arrays and scalars only. A chumpy or scipy
  object becomes an :class:`OpaqueObject` that keeps its pickled state and runs none of its code;
  any other class (``os.system``, ``builtins.eval``, arbitrary user classes...) is refused with
  ``pickle.UnpicklingError``. :func:`plain_array` then turns one unpickled value into an array:
  a chumpy ``Ch`` gives its value ``x``, a scipy CSC/CSR matrix is made dense.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from synthgen.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["ArraysUnpickler", "ConversionReport", "OpaqueObject", "convert_pickle", "load_pickled_arrays",
           "plain_array", "read_npz_arrays"]

# (module, name) globals a pickle of numpy arrays needs; nothing else is ever imported
ALLOWED_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    ("copyreg", "_reconstructor"), ("builtins", "object"),
})
OPAQUE_PACKAGES = ("chumpy", "scipy")  # their objects are kept as state only, never constructed
_PY2_MODULES = {"copy_reg": "copyreg", "__builtin__": "builtins"}  # names in Python 2 pickles


def read_npz_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Every non-object array of an ``.npz`` by key (never unpickles; object entries are skipped)."""
    out = {}
    with np.load(path, allow_pickle=False) as data:
        for key in data.files:
            try:
                out[key] = data[key]
            except ValueError:
                log.debug("%s: skipping object entry %r", path, key)
    return out


class OpaqueObject:
    """Stand-in for a chumpy or scipy.sparse object while unpickling: keeps its state only.

    ``source`` is the pickled class (``"chumpy.ch.Ch"``); ``state`` what its ``__setstate__``
    would have received (the ``__dict__``, for chumpy and scipy objects).
    """

    source = ""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __setstate__(self, state: Any) -> None:
        self.state = state[0] if isinstance(state, tuple) else state


class ArraysUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays only.

    Allowed: the globals in :data:`ALLOWED_GLOBALS` (numpy arrays, dtypes and scalars, and what
    Python 2 pickles of them reference). Classes of :data:`OPAQUE_PACKAGES` become subclasses of
    :class:`OpaqueObject` (state kept, no code run). Anything else raises
    ``pickle.UnpicklingError("refusing to load MODULE.NAME")``. Open Python 2 files with
    ``encoding="latin1"``.
    """

    def find_class(self, module: str, name: str) -> Any:
        if module.split(".")[0] in OPAQUE_PACKAGES:
            return type(name, (OpaqueObject,), {"source": f"{module}.{name}"})
        module = _PY2_MODULES.get(module, module)
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module == "numpy.core.multiarray":
            with contextlib.suppress(ImportError):
                return getattr(importlib.import_module("numpy._core.multiarray"), name)
        return getattr(importlib.import_module(module), name)


def load_pickled_arrays(path: str | Path) -> dict[Any, Any]:
    """The pickled dict in ``path``, read with :class:`ArraysUnpickler` (latin1 for Python 2 files).

    Raises ``pickle.UnpicklingError`` for a class outside the allowed ones, and UserError when
    the file does not hold a dict.
    """
    with open(path, "rb") as handle:
        data = ArraysUnpickler(handle, encoding="latin1").load()
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a pickled dict of arrays, got {type(data).__name__}")
    return data


def plain_array(value: Any) -> np.ndarray | None:
    """A numeric/string array for one unpickled value, or None when it has no array meaning.

    numpy arrays pass through (object arrays give None); str/int/float/numpy scalars become 0-d
    arrays; a chumpy :class:`OpaqueObject` gives its ``x``; a scipy CSC/CSR matrix (M, N) gives
    the dense (M, N) array; anything else gives None.
    """
    if isinstance(value, np.ndarray):
        return None if value.dtype == object else value
    if isinstance(value, (str, int, float, np.generic)):
        return np.asarray(value)
    if not isinstance(value, OpaqueObject) or not isinstance(getattr(value, "state", None), dict):
        return None
    if value.source.startswith("chumpy"):
        return plain_array(value.state.get("x"))
    return _dense_sparse(value)


def _dense_sparse(value: OpaqueObject) -> np.ndarray | None:
    """The dense array of a pickled scipy CSC/CSR matrix, or None for other scipy objects."""
    kind = next((k for k in ("csc", "csr") if k in value.source), None)
    if kind is None:
        return None
    import scipy.sparse as sparse

    state = value.state
    shape = tuple(state.get("_shape", state.get("shape")))
    matrix = getattr(sparse, f"{kind}_matrix")((state["data"], state["indices"], state["indptr"]), shape)
    return matrix.toarray()


# --- pickled files -> npz ---------------------------------------------------------------------
@dataclass
class ConversionReport:
    """What a pickle conversion kept and what it could not (with the reason)."""

    source: str
    converted: dict[str, list[int]] = field(default_factory=dict)  # npz key -> shape
    dropped: dict[str, str] = field(default_factory=dict)          # pickle key -> why

    def lines(self) -> list[str]:
        out = [f"{self.source}: converted {len(self.converted)} entries"]
        out += [f"  {k}: {shape}" for k, shape in sorted(self.converted.items())]
        out += [f"  NOT converted {k}: {why}" for k, why in sorted(self.dropped.items())]
        return out


def _flatten(key: str, value: Any, report: ConversionReport, out: dict[str, np.ndarray]) -> None:
    """Arrays for one pickled entry (lists of arrays stacked, dicts flattened to key/sub)."""
    if value is None:
        report.dropped[key] = "None"
        return
    if isinstance(value, dict):
        if not value:
            report.dropped[key] = "empty dict"
        for sub, item in value.items():
            _flatten(f"{key}/{sub}", item, report, out)
        return
    if isinstance(value, (list, tuple)):
        parts = [plain_array(v) for v in value]
        if value and all(p is not None for p in parts) and len({(p.shape, p.dtype.kind) for p in parts}) == 1:
            out[key] = np.stack(parts)
            return
        if not value:
            report.dropped[key] = "empty list"
        for i, item in enumerate(value):
            _flatten(f"{key}/{i}", item, report, out)
        return
    array = plain_array(value)
    if array is None:
        what = value.source if isinstance(value, OpaqueObject) else type(value).__name__
        report.dropped[key] = f"no array data in a {what} object"
        return
    out[key] = array


def convert_pickle(src: str | Path, dst: str | Path, required: tuple[str, ...] = ()) -> ConversionReport:
    """Rewrite a pickled model or data file (SMAL model, SMAL cluster data) as a plain ``.npz``.

    Uses :class:`ArraysUnpickler` (numpy arrays, chumpy values, scipy sparse matrices; any other
    class raises ``pickle.UnpicklingError``). Lists of
    equal-shape arrays are stacked (``cluster_means``), dicts flattened to ``key/sub``; every
    entry is either converted or listed in the report, which is also saved as
    ``_conversion_report``. ``required``: keys that must be converted (else UserError).
    """
    src = Path(src)
    data = load_pickled_arrays(src)
    report = ConversionReport(str(src))
    arrays: dict[str, np.ndarray] = {}
    for key, value in data.items():
        _flatten(str(key), value, report, arrays)
    missing = [k for k in required if k not in arrays]
    if missing:
        raise UserError(f"{src}: could not read {missing}; " + "; ".join(report.lines()[1:]))
    report.converted = {k: list(a.shape) for k, a in arrays.items()}
    arrays["_conversion_report"] = np.array(json.dumps({"source": src.name, "converted": report.converted,
                                                        "dropped": report.dropped}))
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    np.savez(dst, **arrays)
    return report
