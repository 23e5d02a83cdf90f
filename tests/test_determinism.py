"""Sample i depends on (recipe seed, i) only: splits, worker counts and resumes agree byte for byte."""

import json
import os

import webdataset as wds

from synthgen.run import generate
from synthgen.engine.run_folder import RunFolder, plan_shards
from tests.conftest import small_recipe


def shard_path(out, task):
    return out / RunFolder.shard_rel(task)


def _records(out):
    paths = sorted((out / "shards").glob("shard-*.tar"))
    return {s["__key__"]: s for p in paths for s in wds.WebDataset(str(p), shardshuffle=False)}


def test_split_runs_and_workers_match_one_run(tmp_path, generated):
    reference_dir, recipe = generated
    reference = _records(reference_dir)
    two_workers = tmp_path / "two"
    generate(recipe, two_workers, workers=2, progress=False)
    resumed = tmp_path / "resumed"
    generate(recipe.model_copy(update={"num_samples": 3}), resumed, workers=1, progress=False)
    generate(recipe, resumed, workers=1, progress=False)
    for other in (_records(two_workers), _records(resumed)):
        assert sorted(other) == sorted(reference)
        for key, sample in reference.items():
            assert other[key]["json"] == sample["json"]
            assert other[key]["jpg"] == sample["jpg"]
            assert other[key]["depth.png"] == sample["depth.png"]


def test_rerun_skips_complete_shards_and_redoes_missing_ones(tmp_path):
    recipe = small_recipe(num_samples=4)
    out = tmp_path / "run"
    generate(recipe, out, workers=1, progress=False)
    first, second = (shard_path(out, t) for t in plan_shards(4, 2))
    stamp = first.stat().st_mtime_ns
    before = second.read_bytes()
    second.unlink()
    (out / "shards" / "shard-000001.tar.partial-123").write_bytes(b"torn write")
    manifest = generate(recipe, out, workers=1, progress=False)
    assert first.stat().st_mtime_ns == stamp
    assert second.read_bytes() == before
    assert manifest["complete"] and manifest["num_samples_written"] == 4


def test_other_recipe_into_same_folder_is_refused_without_touching_it(tmp_path):
    import pytest

    from synthgen.errors import UserError

    out = tmp_path / "run"
    generate(small_recipe(num_samples=2), out, workers=1, progress=False)
    listing = sorted(os.listdir(out / "shards"))
    with pytest.raises(UserError, match="another recipe"):
        generate(small_recipe(num_samples=2, seed=99), out, workers=1, progress=False)
    assert sorted(os.listdir(out / "shards")) == listing
    assert json.loads((out / "manifest.json").read_text())["recipe"]["seed"] == 7
