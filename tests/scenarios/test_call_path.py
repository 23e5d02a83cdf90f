"""How often following a recipe from ``synthgen generate`` to the shards comes back to a module.

The measure, plainly: run ``synthgen generate`` in this process on a two-sample quickstart with the
Python profiler on in every thread. At every call of a function of the package, take the call
stack from the outermost frame to that function, keep only the frames of ``synthgen`` modules
(module bodies run by imports left out), and merge consecutive frames of the same module: that
is the path of modules the call went through, e.g. ``cli > run > engine.launch > engine.shards >
engine.launch`` (a callback). A module that appears ``k`` times in one path was left and
re-entered ``k - 1`` times. The house rule: no path re-enters a module more than twice.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter

from synthgen import cli

from tests.fixtures.recipes import ROOT
MAX_REENTRIES = 2


def _module_path(frame) -> tuple[str, ...]:
    """The synthgen modules on ``frame``'s stack, outermost first, consecutive repeats merged."""
    names = []
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name.startswith("synthgen") and frame.f_code.co_name != "<module>":
            if not names or names[-1] != name:
                names.append(name)
        frame = frame.f_back
    return tuple(reversed(names))


def module_paths(argv: list[str]) -> tuple[int, set[tuple[str, ...]]]:
    """Run ``synthgen ARGV`` here; its exit status and every module path its calls went through."""
    paths: set[tuple[str, ...]] = set()

    def profile(frame, event, arg):
        if event == "call" and frame.f_globals.get("__name__", "").startswith("synthgen"):
            paths.add(_module_path(frame))

    threading.setprofile(profile)
    sys.setprofile(profile)
    try:
        status = cli.main(argv)
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    return status, paths


def reentries(path: tuple[str, ...]) -> dict[str, int]:
    """Module -> times the path left it and came back (only modules that came back)."""
    return {name: count - 1 for name, count in Counter(path).items() if count > 1}


def test_reentries_counts_returns_to_a_module():
    assert reentries(("a", "b", "a", "c", "a")) == {"a": 2}
    assert reentries(("a", "b", "c")) == {}


def test_a_recipe_never_comes_back_to_a_module_more_than_twice(tmp_path):
    status, paths = module_paths(["generate", str(ROOT / "recipes/quickstart.yaml"), "--out", str(tmp_path / "run"),
                                  "--num-samples", "2", "--workers", "1", "--no-progress", "output.shard_size=2",
                                  "image.width=96", "image.height=96"])
    assert status == 0 and (tmp_path / "run/shards").is_dir()
    assert any(path[:3] == ("synthgen.cli", "synthgen.run", "synthgen.engine.launch") for path in paths)
    assert any("synthgen.engine.shards" in path and "synthgen.encode" in path for path in paths)
    worst = max(paths, key=lambda path: max(reentries(path).values(), default=0))
    assert max(reentries(worst).values(), default=0) <= MAX_REENTRIES, " > ".join(worst)
