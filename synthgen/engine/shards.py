"""Whole shards from one stream of finished samples, with redraws and the error budget.

The commit protocol is :meth:`synthgen.engine.run_folder.RunFolder.commit_shard`'s; this module
decides what goes in: accepted samples as records, rejected ones in the sidecar
(and ``rejected/`` when the recipe keeps them) and drawn again, from the next attempt's seeds,
up to ``filter.max_attempts`` (so N asked for are N written unless an index gives up: the
sidecar's ``gave_up``); failed ones in the sidecar, counted against ``output.max_errors``. A shard
that the storage refuses after retries counts its samples against the same budget.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from synthgen.engine.contract import Factory
from synthgen.engine.run_folder import RunFolder, ShardTask
from synthgen.engine.streams import finished_samples
from synthgen.errors import ErrorBudgetExceeded, StorageError
from synthgen.recipe import Recipe

log = logging.getLogger(__name__)


def error_budget(recipe: Recipe) -> int:
    """How many samples may fail: ``output.max_errors`` as a count, or a fraction if below 1."""
    limit = recipe.output.max_errors
    return int(limit * recipe.num_samples) if limit < 1 else int(limit)


WRITE_AHEAD = 2  # batches of accepted samples queued for a shard's writer thread


def write_shards(factory: Factory, folder: RunFolder, tasks: list[ShardTask], loader_workers: int = 0,
                 on_sample: Callable[[], None] | None = None,
                 errors_before: Callable[[], int] = lambda: 0,
                 ahead: int = WRITE_AHEAD,
                 stopping: Callable[[], bool] = lambda: False, stage_only: bool = False) -> list[Any]:
    """Write ``tasks`` from one sample stream (so loader workers start once); returns the sidecars
    (``stage_only``: the :class:`~.run_folder.StagedShard` of each, for the caller to publish).

    ``errors_before()`` counts failures recorded in shards other than ``tasks`` (earlier runs,
    other processes); this call's own failures are counted here, from its reports, so a shard
    whose writer has just put its sidecar on disk is never counted twice.
    The device stages run in this thread; each shard's accepted samples go through a queue of
    ``ahead`` batches to a writer thread that encodes them and writes the tar while the next
    batches diffuse (``ahead=0``: encoded and written here, one after another; the bytes are
    the same either way). Once ``stopping()`` is true no new shard starts; the ones begun finish.
    A shard the storage refuses (:class:`StorageError` after retries) is logged, its samples
    count against the error budget, the others go on; the call then raises that error.
    """
    on_sample = _with_test_delay(on_sample)
    indices = [i for t in tasks for i in range(t.start, t.stop)]
    stream = finished_samples(factory, indices, loader_workers, keep_errors=True)
    depth = ahead * factory.batch_size
    writers: list[_Writer] = []
    infos: list[dict[str, Any]] = []
    results: list[Any] = []
    lost: list[tuple[ShardTask, StorageError]] = []
    commit = folder.stage_shard if stage_only else folder.commit_shard

    def collect(task: ShardTask, result: Callable[[], Any]) -> None:
        try:
            results.append(result())
            infos.append(results[-1].info if stage_only else results[-1])
        except StorageError as exc:
            log.error("%s not stored: %s", task.name, exc)
            lost.append((task, exc))
            own = sum(len(r["errors"]) for r in infos) + sum(t.stop - t.start for t, _ in lost)
            check_budget(factory.recipe, errors_before() + own, error_budget(factory.recipe))

    try:
        for task in tasks:
            if stopping():
                break
            own = sum(len(r["errors"]) for r in [*(w.report for w in writers), *infos]) + \
                sum(t.stop - t.start for t, _ in lost)
            report, accepted = _shard_samples(factory, task, stream, on_sample,
                                              lambda own=own: errors_before() + own)
            if depth <= 0:
                collect(task, lambda: _write_now(factory, commit, task, accepted, report))
                continue
            writer = _Writer(factory, commit, task, report, depth)
            writers.append(writer)  # before its thread opens a partial file: an interruption aborts it
            writer.start()
            for sample in accepted:
                writer.put(sample)
            writer.close()
            while len(writers) > 1:  # the previous shard's writer finishes while this one fills
                collect(writers[0].task, writers[0].result)
                writers.pop(0)  # after: an interruption while waiting still aborts it below
        while writers:
            collect(writers[0].task, writers[0].result)
            writers.pop(0)
    finally:
        _abort(writers, stream)
    if lost:
        raise StorageError(f"{len(lost)} shard(s) could not be stored ({lost[0][1]}); complete shards are "
                           f"kept, rerun the same command to make the others")
    return results


def _abort(writers: list["_Writer"], stream) -> None:
    """Stop the unfinished writers (their partial files go, nothing is renamed) and the CPU stages
    running ahead (at their next sample). The writers are told first, so that an interruption
    landing in this clean-up still leaves each of them ending on its own."""
    for writer in writers:
        writer.stop.set()
    try:
        stream.close()
    finally:
        for writer in writers:
            writer.join()


TEST_DELAY_VARIABLE = "SYNTHGEN_TEST_SAMPLE_DELAY_S"
TEST_CPU_VARIABLE = "SYNTHGEN_TEST_SAMPLE_CPU_S"


def _with_test_delay(on_sample: Callable[[], None] | None) -> Callable[[], None] | None:
    """Tests and benchmarks only, never for real runs: each sample made in a process whose
    environment has

    - ``SYNTHGEN_TEST_SAMPLE_DELAY_S``: sleeps that many seconds more (keeps a shard in flight, for
      the fault tests);
    - ``SYNTHGEN_TEST_SAMPLE_CPU_S``: spends that many more CPU seconds, on this thread's own
      clock (a slower node, for the balancing benchmark: a sleep would leave the core to the
      node's other threads, the CPU stages ahead and the writer, so the node would lose less
      throughput than its shard times say; spent CPU slows the node as slower hardware would)."""
    delay = float(os.environ.get(TEST_DELAY_VARIABLE) or 0)
    cpu = float(os.environ.get(TEST_CPU_VARIABLE) or 0)
    if delay <= 0 and cpu <= 0:
        return on_sample

    def slowed() -> None:
        time.sleep(delay)
        until = time.thread_time() + cpu
        while time.thread_time() < until:
            pass
        if on_sample is not None:
            on_sample()

    return slowed


def _write_now(factory: Factory, commit: Callable[..., Any], task: ShardTask,
               accepted: Iterator[dict[str, Any]], report: dict[str, Any]) -> Any:
    """Encode and write ``accepted`` in this thread (``ahead=0``) with ``commit``
    (:meth:`RunFolder.commit_shard` or :meth:`RunFolder.stage_shard`)."""
    times = {"encode": 0.0, "write": 0.0}
    return commit(task, _encoded(factory, accepted, times, report), report,
                  rejected=lambda: report.pop("_rejected_records"))


def _encoded(factory: Factory, samples: Iterator[dict[str, Any]], times: dict[str, float],
             report: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Records of ``samples``; ``times`` adds up encoding and tar writing (between yields), put
    in ``report`` as ``writer_encode_seconds`` / ``writer_write_seconds`` at the end."""
    for sample in samples:
        t0 = time.perf_counter()
        record = factory.encode(sample)
        t1 = time.perf_counter()
        yield record  # the tar writer writes it before asking for the next
        times["encode"] += t1 - t0
        times["write"] += time.perf_counter() - t1
    report.update({f"writer_{key}_seconds": round(value, 3) for key, value in times.items()})


_END = object()


class _Aborted(Exception):
    """The device side failed: the writer drops its partial shard."""


class _Writer(threading.Thread):
    """Encodes and writes one shard from a bounded queue of accepted samples (its own thread).

    The commit protocol is :meth:`RunFolder.commit_shard`'s (``commit``; or
    :meth:`RunFolder.stage_shard`, publishing left to the caller): the shard is published only
    after every record is written, so an abort or a kill leaves no shard.
    """

    def __init__(self, factory: Factory, commit: Callable[..., Any], task: ShardTask, report: dict[str, Any],
                 depth: int):
        super().__init__(name=f"synthgen-writer-{task.name}", daemon=True)
        self.factory, self.commit, self.task, self.report = factory, commit, task, report
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self.stop = threading.Event()
        self.info: Any = None
        self.error: BaseException | None = None
        self.times = {"encode": 0.0, "write": 0.0}

    def _samples(self) -> Iterator[dict[str, Any]]:
        while True:
            try:
                item = self.queue.get(timeout=0.1)
            except queue.Empty:
                if self.stop.is_set():
                    raise _Aborted(self.task.name) from None
                continue
            if item is _END:
                return
            yield item

    def run(self) -> None:
        try:
            self.info = self.commit(
                self.task, _encoded(self.factory, self._samples(), self.times, self.report),
                self.report, rejected=lambda: self.report.pop("_rejected_records"))
        except BaseException as exc:  # re-raised in the device thread
            self.error = exc

    def put(self, item) -> None:
        """Queue ``item``, waiting while the queue is full; re-raises the writer's error."""
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                if not self.is_alive():
                    raise RuntimeError(f"the writer of {self.task.name} stopped") from self.error

    def close(self) -> None:
        self.put(_END)

    def result(self) -> Any:
        """What ``commit`` returned (the sidecar info, or the staged shard); the writer's error otherwise."""
        self.join()
        if self.error is not None:
            raise self.error
        assert self.info is not None
        return self.info


def _shard_samples(factory: Factory, task: ShardTask, stream: Iterator[dict[str, Any]],
                   on_sample: Callable[[], None] | None,
                   errors_before: Callable[[], int]) -> tuple[dict[str, Any], Iterator[dict[str, Any]]]:
    """The shard's report (filled as it goes) and a generator of its accepted samples, in
    order: the first draws of ``task``'s indices from ``stream``, then redraws of the rejected
    ones. Runs the device stages (in the caller's thread). ``errors_before()``, the failures
    counted elsewhere, is asked for at this shard's first failure only (on an object store it
    reads other shards' sidecars)."""
    report: dict[str, Any] = {"rejected": [], "errors": [], "filter": [], "_rejected_records": []}
    budget = error_budget(factory.recipe)
    base: list[int] = []  # errors_before(), once asked
    start, timing_before = time.perf_counter(), dict(factory.timing)

    def accepted(sample: dict[str, Any]) -> bool:
        """Whether to write ``sample``; otherwise it is entered in the report."""
        attempt = sample.get("attempt", 0)
        if "error" in sample:
            report["errors"].append({"index": sample["index"], "attempt": attempt, "error": sample["error"]})
            if not base:
                base.append(errors_before())
            check_budget(factory.recipe, base[0] + len(report["errors"]), budget)
            return False
        verdict = sample.get("filter") or {"accepted": True}
        if "filter" in sample:  # every verdict with its scores, for re-thresholding later
            report["filter"].append({"index": sample["index"], "attempt": attempt, **verdict})
        if verdict["accepted"]:
            return True
        report["rejected"].append({"index": sample["index"], "attempt": attempt, "reason": verdict.get("reason")})
        if factory.recipe.filter.write_rejected:
            record = factory.encode(sample)
            record["__key__"] = f"{record['__key__']}_attempt{attempt}"
            report["_rejected_records"].append(record)
        return False

    def samples():
        rejected = []
        for _ in range(task.start, task.stop):
            sample = next(stream)
            if on_sample is not None:
                on_sample()
            if accepted(sample):
                yield sample
            elif "error" not in sample:
                rejected.append(sample["index"])
        # redraws, in index order after the first attempts: which ones depends on verdicts alone
        for attempt in range(1, factory.recipe.filter.max_attempts):
            redraw, rejected = rejected, []
            for sample in finished_samples(factory, redraw, keep_errors=True, attempt=attempt) if redraw else ():
                if accepted(sample):
                    yield sample
                elif "error" not in sample:
                    rejected.append(sample["index"])
        report["gave_up"] = rejected
        report["seconds"] = round(time.perf_counter() - start, 3)
        for key, total in factory.timing.items():
            report[f"{key}_seconds"] = round(total - timing_before.get(key, 0.0), 3)

    return report, samples()


def check_budget(recipe: Recipe, failed: int, budget: int) -> None:
    if failed > budget:
        raise ErrorBudgetExceeded(
            f"{failed} samples failed, more than output.max_errors={recipe.output.max_errors} allows; "
            f"the failures are listed in the shard sidecars (shards/*.json) and the log")
