"""The shard writer thread (engine.shards.write_shards with ``ahead``): the same bytes as the sequential
path, a failing writer leaves no shard, and the error budget counts each shard once."""

from __future__ import annotations

import time

import pytest

from synthgen.errors import ErrorBudgetExceeded
from tests.fixtures.recipes import small_recipe


def test_writer_thread_writes_the_same_bytes_as_the_sequential_path(tmp_path):
    from synthgen.engine.run_folder import RunFolder, plan_shards
    from synthgen.engine.shards import write_shards
    from synthgen.images import ImageFactory

    recipe = small_recipe(num_samples=6, image={"width": 64, "height": 64}, output={"shard_size": 2})
    factory = ImageFactory(recipe)
    tasks = plan_shards(recipe.num_samples, recipe.output.shard_size)
    sequential = write_shards(factory, RunFolder(tmp_path / "a"), tasks, ahead=0)
    overlapped = write_shards(factory, RunFolder(tmp_path / "b"), tasks, ahead=2)
    for task, x, y in zip(tasks, sequential, overlapped):
        assert (tmp_path / "a" / "shards" / f"{task.name}.tar").read_bytes() == \
            (tmp_path / "b" / "shards" / f"{task.name}.tar").read_bytes()
        assert x["samples"] == y["samples"] == 2 and y["writer_encode_seconds"] >= 0


def test_a_failing_writer_stops_the_run_and_leaves_no_shard(tmp_path, monkeypatch):
    from synthgen.engine.run_folder import RunFolder, plan_shards
    from synthgen.engine.shards import write_shards
    from synthgen.images import ImageFactory

    recipe = small_recipe(num_samples=4, image={"width": 64, "height": 64}, output={"shard_size": 2})
    factory = ImageFactory(recipe)
    encode = factory.encode

    def full_disk(sample):
        if sample["index"] == 3:
            raise OSError(28, "No space left on device")
        return encode(sample)

    monkeypatch.setattr(factory, "encode", full_disk)
    tasks = plan_shards(recipe.num_samples, recipe.output.shard_size)
    with pytest.raises(OSError, match="No space left"):
        write_shards(factory, RunFolder(tmp_path), tasks, ahead=2)
    shards = tmp_path / "shards"
    assert RunFolder(tmp_path).is_complete(tasks[0]) and not RunFolder(tmp_path).is_complete(tasks[1])
    assert not list(shards.glob("*.partial-*"))


def test_a_shard_is_counted_once_against_the_error_budget_when_its_writer_is_ahead(tmp_path, monkeypatch):
    """The worst timing: each shard's writer has put its sidecar on disk before the next shard
    starts (a fast disk, a slow device). Its failures must count once, not from disk and again
    from the writer list: 3 failures under ``max_errors=3`` finish the run."""
    from synthgen.engine.run_folder import RunFolder, plan_shards
    from synthgen.engine.launch import errors_elsewhere
    from synthgen.engine.shards import write_shards
    from synthgen.images import ImageFactory

    recipe = small_recipe(num_samples=6, image={"width": 64, "height": 64},
                          output={"shard_size": 2, "max_errors": 3})
    factory = ImageFactory(recipe)
    prepared = factory.prepared

    def failing_evens(indices, attempt=0):
        for sample in prepared(indices, attempt):
            yield {"index": sample["index"], "error": "RuntimeError: injected"} if sample["index"] % 2 == 0 else sample

    monkeypatch.setattr(factory, "prepared", failing_evens)
    tasks = plan_shards(recipe.num_samples, recipe.output.shard_size)
    calls = []

    def after_earlier_writers(out):
        def count():
            earlier = tasks[:len(calls)]
            calls.append(out)
            deadline = time.monotonic() + 60
            while not all(RunFolder(out).is_complete(t) for t in earlier) and time.monotonic() < deadline:
                time.sleep(0.01)
            return errors_elsewhere(RunFolder(out), tasks, tasks)
        return count

    infos = write_shards(factory, RunFolder(tmp_path), tasks, errors_before=after_earlier_writers(tmp_path), ahead=2)
    assert len(calls) == 3 and [len(i["errors"]) for i in infos] == [1, 1, 1]
    assert [i["samples"] for i in infos] == [1, 1, 1]
    # the budget still stops a run that goes over it, with the same timing
    calls.clear()
    factory.recipe = small_recipe(num_samples=6, image={"width": 64, "height": 64},
                                  output={"shard_size": 2, "max_errors": 2})
    with pytest.raises(ErrorBudgetExceeded, match="3 samples failed"):
        write_shards(factory, RunFolder(tmp_path / "over"), tasks, errors_before=after_earlier_writers(tmp_path / "over"),
                     ahead=2)
