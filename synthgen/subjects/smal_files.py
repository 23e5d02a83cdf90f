"""SMAL-family model and cluster files: which ``.npz`` a recipe's path means, converting a pickle once.

SMAL (Zuffi et al., CVPR 2017; https://smal.is.tue.mpg.de) and the SMAL+ variants used by
BARC/BITE/GenZoo come as pickled dicts with SMPL's keys: ``v_template`` (V, 3), ``f`` (F, 3),
``shapedirs`` (V, 3, B), ``posedirs`` (V, 3, 9(J-1)), ``J_regressor`` (J, V, often scipy sparse),
``weights`` (V, J), ``kintree_table`` (2, J); SMAL: V = 3889, F = 7774, J = 33, B = 41. The
companion ``smal_CVPR2017_data.pkl`` holds per-family shape clusters (``cluster_means`` (5, B),
``cluster_cov`` (5, B, B); families cat, dog, horse, cow, hippo). They cannot be redistributed.

synthgen never unpickles at load time. Convert a ``.pkl`` once, through the restricted unpickler
of :mod:`synthgen.subjects.model_files` (also used by the SMPL converter), which only rebuilds
numpy arrays, chumpy values and scipy sparse matrices and refuses anything else::

    python -m synthgen.subjects.smal_files convert smal_CVPR2017.pkl            # -> .npz beside it
    python -m synthgen.subjects.smal_files convert smal_CVPR2017_data.pkl

Every entry of the pickle is either converted or reported (the report is printed and stored in
the ``.npz`` as ``_conversion_report``). Alternatively ``subject.animal.convert_pickle: true``
lets a run do that conversion itself, once (into a cache folder when the pickle's folder is
read-only), and say so in the log.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import pickle
from pathlib import Path

from synthgen.errors import MissingModelError, UserError
from synthgen.subjects.model_files import convert_pickle

log = logging.getLogger(__name__)

MODEL_KEYS = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table")
DOWNLOAD_HINT = ("get SMAL from https://smal.is.tue.mpg.de (free registration, non-commercial licence), or "
                 "use subject.model=quadruped (embedded)")


def _cache_root() -> Path:
    return Path(os.environ.get("SYNTHGEN_CACHE_DIR", str(Path.home() / ".cache" / "synthgen"))) / "smal"


def _cached_npz(pkl: Path) -> Path:
    digest = hashlib.sha256(str(pkl.resolve()).encode()).hexdigest()[:10]
    return _cache_root() / f"{pkl.stem}-{digest}.npz"


def resolve_npz(path: str | Path, field_name: str, convert: bool, required: tuple[str, ...] = ()) -> Path:
    """The ``.npz`` to read for a user-given model/cluster file (converting a ``.pkl`` if allowed)."""
    path = Path(path).expanduser()
    if path.suffix == ".npz":
        if not path.is_file():
            raise MissingModelError(f"{field_name}: {path} does not exist; {DOWNLOAD_HINT}")
        return path
    if path.suffix != ".pkl":
        raise UserError(f"{field_name}: {path} is neither a .npz nor a .pkl SMAL-family file")
    for candidate in (path.with_suffix(".npz"), _cached_npz(path)):
        if candidate.is_file():
            log.info("%s: reading the converted %s", path, candidate)
            return candidate
    if not path.is_file():
        raise MissingModelError(f"{field_name}: {path} does not exist (nor a converted .npz beside it); "
                                f"{DOWNLOAD_HINT}")
    if not convert:
        raise UserError(f"{field_name}: {path} is a pickle, which synthgen does not load (unpickling can run "
                        f"code). Convert it once: python -m synthgen.subjects.smal_files convert {path} "
                        f"(or set subject.animal.convert_pickle=true to let the run do it)")
    dst = path.with_suffix(".npz")
    if not os.access(path.parent, os.W_OK):
        dst = _cached_npz(path)
    log.warning("%s: unpickling once (subject.animal.convert_pickle=true) with a restricted unpickler that "
                "only rebuilds numpy arrays, to write %s; later runs read only the .npz", path, dst)
    report = convert_pickle(path, dst, required)
    for line in report.lines():
        log.info("%s", line)
    return dst


# --- command line -------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    """``python -m synthgen.subjects.smal_files convert SRC.pkl [DST.npz]``."""
    parser = argparse.ArgumentParser(description="Convert a SMAL-family .pkl (model or cluster data) to a "
                                     "plain .npz that synthgen reads without unpickling.")
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="pkl -> npz, reporting every entry")
    conv.add_argument("src", type=Path)
    conv.add_argument("dst", type=Path, nargs="?")
    quad = sub.add_parser("write-quadruped", help="save the embedded quadruped as a SMAL-format .npz")
    quad.add_argument("dst", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "write-quadruped":
        from synthgen.subjects.quadruped import write_quadruped

        log.info("wrote %s", write_quadruped(args.dst))
        return
    try:
        report = convert_pickle(args.src, args.dst or args.src.with_suffix(".npz"))
    except (UserError, pickle.UnpicklingError) as exc:
        raise SystemExit(f"error: {exc}") from None
    for line in report.lines():
        log.info("%s", line)


if __name__ == "__main__":
    main()
