"""Whole shards from one stream of finished samples, with redraws and the error budget.

The commit protocol (``.partial`` file, sidecar, rename) is :func:`synthgen.write.write_shard`;
this module decides what goes in: accepted samples as records, rejected ones in the sidecar
(and ``rejected/`` when the recipe keeps them) and drawn again, from the next attempt's seeds,
up to ``filter.max_attempts`` (so N asked for are N written unless an index gives up: the
sidecar's ``gave_up``); failed ones in the sidecar, counted against ``output.max_errors``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from synthgen import write
from synthgen.engine.contract import Factory
from synthgen.engine.streams import finished_samples, write_ahead
from synthgen.errors import ErrorBudgetExceeded
from synthgen.recipe import Recipe


def error_budget(recipe: Recipe) -> int:
    """How many samples may fail: ``output.max_errors`` as a count, or a fraction if below 1."""
    limit = recipe.output.max_errors
    return int(limit * recipe.num_samples) if limit < 1 else int(limit)


WRITE_AHEAD = 2  # batches the device stages may run ahead of the writer


def write_shards(factory: Factory, out_dir: Path, tasks: list[write.ShardTask], loader_workers: int = 0,
                 on_sample: Callable[[], None] | None = None,
                 errors_before: Callable[[], int] = lambda: 0,
                 ahead: int = WRITE_AHEAD) -> list[dict[str, Any]]:
    """Write ``tasks`` from one sample stream (so loader workers start once); returns the sidecars.

    ``errors_before()`` counts failures already recorded (other shards, other processes).
    ``ahead``: the device stages run in a thread up to this many batches ahead of this one,
    which encodes and writes (0: one after another; the bytes are the same).
    """
    indices = [i for t in tasks for i in range(t.start, t.stop)]
    stream = write_ahead(finished_samples(factory, indices, loader_workers, keep_errors=True), ahead,
                         factory.batch_size)
    try:
        return [_write_one(factory, Path(out_dir), task, stream, on_sample, errors_before()) for task in tasks]
    finally:
        getattr(stream, "close", lambda: None)()  # stops the device thread on an error


def _write_one(factory: Factory, out_dir: Path, task: write.ShardTask, stream: Iterator[dict[str, Any]],
               on_sample: Callable[[], None] | None, errors_before: int) -> dict[str, Any]:
    report: dict[str, Any] = {"rejected": [], "errors": [], "filter": []}
    rejected_records: list[dict[str, Any]] = []
    budget = error_budget(factory.recipe)
    start, timing_before = time.perf_counter(), dict(factory.timing)
    writer = {"wait": 0.0, "encode": 0.0, "write": 0.0}

    def outcome(sample: dict[str, Any]) -> dict[str, Any] | None:
        """The record of an accepted sample; None (and an entry in the report) otherwise."""
        attempt = sample.get("attempt", 0)
        if "error" in sample:
            report["errors"].append({"index": sample["index"], "attempt": attempt, "error": sample["error"]})
            _check_budget(factory.recipe, errors_before + len(report["errors"]), budget)
            return None
        verdict = sample.get("filter") or {"accepted": True}
        if "filter" in sample:  # every verdict with its scores, for re-thresholding later
            report["filter"].append({"index": sample["index"], "attempt": attempt, **verdict})
        if verdict["accepted"]:
            t0 = time.perf_counter()
            record = factory.encode(sample)
            writer["encode"] += time.perf_counter() - t0
            return record
        report["rejected"].append({"index": sample["index"], "attempt": attempt, "reason": verdict.get("reason")})
        if factory.recipe.filter.write_rejected:
            record = factory.encode(sample)
            record["__key__"] = f"{record['__key__']}_attempt{attempt}"
            rejected_records.append(record)
        return None

    def records():
        rejected = []
        for _ in range(task.start, task.stop):
            t0 = time.perf_counter()
            sample = next(stream)
            writer["wait"] += time.perf_counter() - t0
            if on_sample is not None:
                on_sample()
            record = outcome(sample)
            if record is not None:
                t0 = time.perf_counter()
                yield record  # the tar writer writes it before asking for the next
                writer["write"] += time.perf_counter() - t0
            elif "error" not in sample:
                rejected.append(sample["index"])
        # redraws, in index order after the first attempts: which ones depends on verdicts alone
        for attempt in range(1, factory.recipe.filter.max_attempts):
            redraw, rejected = rejected, []
            for sample in finished_samples(factory, redraw, keep_errors=True, attempt=attempt) if redraw else ():
                record = outcome(sample)
                if record is not None:
                    yield record
                elif "error" not in sample:
                    rejected.append(sample["index"])
        report["gave_up"] = rejected
        report["seconds"] = round(time.perf_counter() - start, 3)
        for key, total in factory.timing.items():
            report[f"{key}_seconds"] = round(total - timing_before.get(key, 0.0), 3)
        for key, total in writer.items():  # the writer's own: waiting for samples, encode, tar write
            report[f"writer_{key}_seconds"] = round(total, 3)

    return write.write_shard(out_dir, task, records(), report, rejected=lambda: rejected_records)


def _check_budget(recipe: Recipe, failed: int, budget: int) -> None:
    if failed > budget:
        raise ErrorBudgetExceeded(
            f"{failed} samples failed, more than output.max_errors={recipe.output.max_errors} allows; "
            f"the failures are listed in the shard sidecars (shards/*.json) and the log")
