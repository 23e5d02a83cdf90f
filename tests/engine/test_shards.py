"""A run asked for N samples writes N accepted ones: rejected indices are drawn again from the
next attempt's seeds (filter.max_attempts), deterministically, with the real shaded backend and
the real filter's cheap checks."""

from __future__ import annotations

import json
import tarfile

import numpy as np
from tests.fixtures.recipes import small_recipe

from synthgen.data import load_shards
from synthgen.report import run_status
from synthgen.run import generate


def _recipe(min_std: float, max_attempts: int, write_rejected: bool = False):
    return small_recipe(num_samples=8, output={"shard_size": 4},
                        filter={"min_std": min_std, "max_attempts": max_attempts,
                                "write_rejected": write_rejected})


def _by_index(out):
    return {item["labels"]["index"]: item for item in load_shards(out)}


def test_rejected_indices_are_redrawn_until_accepted(tmp_path):
    # 1. every first attempt, unfiltered: the threshold that rejects about half of them
    first = _by_index(_generate(_recipe(0.0, 1), tmp_path / "all"))
    spread = {i: float(np.std(item["image"].astype(np.float64))) for i, item in first.items()}
    threshold = float(np.median(list(spread.values())))
    low = {i for i, s in spread.items() if s < threshold - 0.5}
    assert 2 <= len(low) <= 5

    # 2. the same recipe with that threshold and up to 6 draws per index
    out = tmp_path / "redrawn"
    written = _by_index(_generate(_recipe(threshold, 6), out))
    sidecars = [json.loads(p.read_text()) for p in sorted((out / "shards").glob("*.json"))]
    rejected = [r for s in sidecars for r in s["rejected"]]
    gave_up = [i for s in sidecars for i in s["gave_up"]]
    assert len(written) + len(gave_up) == 8 and len(written) >= 7
    assert {r["index"] for r in rejected if r["attempt"] == 0} >= low
    for index, item in written.items():
        labels = item["labels"]
        earlier = sorted(r["attempt"] for r in rejected if r["index"] == index)
        assert labels["attempt"] == len(earlier) and earlier == list(range(len(earlier)))
        if labels["attempt"] == 0:  # an accepted first draw is exactly the unfiltered sample
            same = {k for k in labels if k != "recipe_hash"}  # the hash covers the filter settings
            assert {k: labels[k] for k in same} == {k: first[index]["labels"][k] for k in same}
        else:  # a redraw is a new sample: new seed, new body, new camera
            assert labels["seed"] != first[index]["labels"]["seed"]
            assert labels["instances"][0]["params"] != first[index]["labels"]["instances"][0]["params"]
            assert labels["cam_ext"] != first[index]["labels"]["cam_ext"]
    status = run_status(out)
    assert status["written"] == len(written) and status["rejected"] == len(rejected)
    assert status["attempts_per_accepted"] == (len(written) + len(rejected)) / len(written) > 1.0

    # 3. the same dataset from two pool workers, byte for byte
    again = tmp_path / "two_workers"
    generate(_recipe(threshold, 6), again, workers=2, progress=False)
    for tar in sorted((out / "shards").glob("*.tar")):
        assert tar.read_bytes() == (again / "shards" / tar.name).read_bytes()


def test_no_redraw_with_one_attempt_and_rejects_kept_aside_under_their_attempt(tmp_path):
    recipe = _recipe(255.0, 2, write_rejected=True)  # nothing passes: every index gives up
    manifest = generate(recipe, tmp_path / "none", workers=1, progress=False)
    assert manifest["num_samples_written"] == 0 and manifest["num_rejected"] == 16
    keys = []
    for tar in sorted((tmp_path / "none" / "rejected").glob("*.tar")):
        with tarfile.open(tar) as t:
            keys += sorted({m.name.split(".")[0] for m in t.getmembers()})
    assert len(keys) == len(set(keys)) == 16
    assert {k.rsplit("_attempt", 1)[1] for k in keys} == {"0", "1"}
    once = generate(_recipe(255.0, 1), tmp_path / "once", workers=1, progress=False)
    assert once["num_rejected"] == 8
    assert run_status(tmp_path / "once")["gave_up"] == 8


def _generate(recipe, out):
    generate(recipe, out, workers=1, progress=False)
    return out
