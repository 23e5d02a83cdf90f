"""Sample i depends on (recipe seed, i) only: splits, worker counts and resumes agree byte for byte."""

import json
import os

import webdataset as wds

from synthgen.run import generate
from synthgen.engine.run_folder import RunFolder, plan_shards
from tests.fixtures.recipes import small_recipe


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


def test_loader_processes_write_the_same_bytes_as_the_thread(tmp_path):
    """Samples from spawned loader processes (slimmed by ``transferable``, read by a prefetch
    thread) make shards whose every record is byte for byte the in-thread run's."""
    recipe = small_recipe(num_samples=4, output={"shard_size": 2, "layers": ["normal", "depth", "mask", "parts",
                                                                            "edges", "skeleton", "instance"]})
    generate(recipe, tmp_path / "thread", workers=1, loader_workers=0, progress=False)
    generate(recipe, tmp_path / "loaders", workers=1, loader_workers=2, progress=False)
    thread, loaders = _records(tmp_path / "thread"), _records(tmp_path / "loaders")
    assert sorted(thread) == sorted(loaders) and len(thread) == 4
    for key, record in thread.items():
        assert set(record) == set(loaders[key])
        for name, value in record.items():
            if not name.startswith("__") or name == "__key__":  # not the tar's own path
                assert loaders[key][name] == value, (key, name)


def test_transferable_keeps_what_the_device_stages_and_writer_read():
    """What a loader worker sends: the records made from it equal those from the whole sample
    (with and without meshes in the output), in a fraction of the pickled bytes."""
    import pickle

    import numpy as np

    from synthgen.images import ImageFactory

    for vertices, geometry in ((False, "none"), (True, "none"), (False, "room")):
        factory = ImageFactory(small_recipe(output={"vertices": vertices}, scene={"geometry": geometry}))
        whole = list(factory.prepared([0, 1]))
        slim = [factory.transferable(s) for s in factory.prepared([0, 1])]
        sizes = [len(pickle.dumps(s, protocol=pickle.HIGHEST_PROTOCOL)) for s in (whole[0], slim[0])]
        assert sizes[1] < (0.9 if vertices or geometry != "none" else 0.5) * sizes[0]  # meshes kept when written
        assert "triangle_id" not in slim[0]["layers"]
        assert ("depth" in slim[0]["layers"]) == (geometry != "none")  # a scene's shading reads it
        assert ("faces" in slim[0]) == vertices
        factory.finish(whole)
        factory.finish(slim)
        for a, b in zip(whole, slim):
            ra, rb = factory.encode(a), factory.encode(b)
            assert set(ra) == set(rb) and all(ra[k] == rb[k] for k in ra)
            assert np.array_equal(a["image"], b["image"])


def test_the_loader_stream_is_read_by_a_prefetch_thread(monkeypatch):
    """Samples from loader processes are received (unpickled) by a thread of their own, not by
    the thread that runs the device stages."""
    import threading

    from synthgen.engine import finished_samples, streams
    from synthgen.images import ImageFactory

    readers, real = [], streams.loader_stream

    def recorded(*args, **kwargs):
        for sample in real(*args, **kwargs):
            readers.append(threading.current_thread().name)
            assert sorted(sample["layers"]) == sorted(factory.device_layers & set(sample["layers"]))
            yield sample

    monkeypatch.setattr(streams, "loader_stream", recorded)
    factory = ImageFactory(small_recipe(num_samples=2))
    samples = list(finished_samples(factory, [0, 1], loader_workers=1))
    assert [s["index"] for s in samples] == [0, 1] and all(s["image"] is not None for s in samples)
    assert readers == ["synthgen-loader"] * 2 and threading.current_thread().name != "synthgen-loader"
