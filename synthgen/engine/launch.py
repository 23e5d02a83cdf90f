# Over 500 lines on purpose: one concern, the local engine's run (ranks, tasks, workers, signals, faults, progress).
"""Launch: which process makes which shard, signals, faults, progress, the manifest.

Every shard is committed through the run folder (:mod:`.run_folder`: a local folder or an
object-store URL), so any way of splitting the work makes the same bytes:

- One process: ``synthgen generate`` spreads shards over ``--workers`` spawned processes
  (each builds its own models and GL context; spawn, because EGL contexts and OpenMP state do
  not survive fork). A factory whose :meth:`~.contract.Factory.uses_device` runs its device
  stages in this process instead, with its CPU stages in loader workers.
- Ranks: under ``torchrun`` or ``accelerate launch`` (``WORLD_SIZE`` > 1) accelerate's
  ``PartialState`` gives this process its rank; rank ``R`` of ``W`` makes
  :func:`.run_folder.shards_of` ``(R, W)``. Rank 0 shows one progress bar for all ranks (the
  sidecars and the ranks' progress files) and writes the manifest once every rank is done.
- Independent tasks (``--task K/N``: SLURM arrays, Kubernetes Indexed Jobs, any loop): task ``K``
  makes ``shards_of(K, N)`` with no rendezvous and no barrier; ``synthgen finalize`` checks the
  whole and writes the final manifest.

Faults end in one line (:mod:`synthgen.errors`): SIGTERM / SIGINT start no new shard, give the
ones in flight ``output.grace_s`` to finish, then drop their partial files (:class:`Interrupted`);
a full disk names the output and what is complete (:class:`StorageError`). Pool workers ignore
both signals (the main process decides) and are killed with it (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import _thread
import contextlib
import errno
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable

from tqdm.auto import tqdm

from synthgen.engine.contract import Factory
from synthgen.engine.memory import keep_freed_memory
from synthgen.engine.run_folder import LOG_DIR, RunFolder, ShardTask, StagedShard, plan_shards, shards_of
from synthgen.engine.shards import check_budget, error_budget, write_shards
from synthgen.errors import Interrupted, StorageError, UserError
from synthgen.recipe import Recipe

log = logging.getLogger(__name__)


@dataclass
class Ranks:
    """This process's part of the run: rank ``rank`` of ``world`` (0 of 1 when not launched), or
    independent task ``rank`` of ``world`` (``task=True``: no barrier, no markers to wait for)."""

    rank: int = 0
    world: int = 1
    device: str | None = None
    barrier: Callable[[], None] = lambda: None
    task: bool = False

    @property
    def name(self) -> str:
        return f"task-{self.rank}-of-{self.world}" if self.task else f"rank-{self.rank}"


def ranks_from_launcher() -> Ranks:
    """Rank, world size, device and barrier from torchrun / accelerate launch, if any."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Ranks()
    import torch
    from accelerate import PartialState

    # ranks on one node share its cores: keep torch and llvmpipe from each taking all of them
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    threads = max(1, (os.cpu_count() or 1) // local)
    torch.set_num_threads(threads)
    os.environ.setdefault("LP_NUM_THREADS", str(threads))
    state = PartialState(cpu=not torch.cuda.is_available())
    return Ranks(state.process_index, state.num_processes, str(state.device), state.wait_for_everyone)


# --- signals -----------------------------------------------------------------------------------
class _Stop:
    """SIGTERM / SIGINT in the main thread: the first stops new shards and gives the ones in
    flight ``grace_s`` seconds (then interrupts the main thread); a second interrupts at once."""

    def __init__(self, grace_s: float):
        self.grace_s = grace_s
        self.event = threading.Event()
        self.signum: int | None = None
        self._timer: threading.Timer | None = None

    def is_set(self) -> bool:
        return self.event.is_set()

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield  # a notebook thread: signals stay Python's defaults
            return
        old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
            if self._timer is not None:
                self._timer.cancel()

    def _handle(self, signum, frame) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt  # a second signal, or the grace period is over
        self.signum = signum
        self.event.set()
        log.warning("%s: no new shards start; the shards in flight get %.0f s (output.grace_s) to finish",
                    signal.Signals(signum).name, self.grace_s)
        self._timer = threading.Timer(self.grace_s, _thread.interrupt_main)
        self._timer.daemon = True
        self._timer.start()


# --- worker processes --------------------------------------------------------------------------
_FACTORY: Factory | None = None
_PROGRESS = None


def _die_with_parent() -> None:
    """Linux: the kernel kills this process when its parent dies, even by SIGKILL (no orphans)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _init_worker(factory_class: type, recipe_json: dict, progress_queue, threads: int, parent: int) -> None:
    global _FACTORY, _PROGRESS
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)
    # the main process decides what a signal means (finish the shard in flight, or kill us)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    keep_freed_memory()
    import cv2
    import torch

    # one worker per core: keep torch, OpenCV and Mesa's llvmpipe from each starting a thread
    # per core (BLAS reads its limit at start-up: see _worker_thread_limits)
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    os.environ.setdefault("LP_NUM_THREADS", str(threads))
    logging.basicConfig(level=logging.WARNING)
    recipe = Recipe.model_validate(recipe_json)
    _FACTORY = factory_class(recipe)
    _PROGRESS = progress_queue


_FOLDERS: dict[tuple, RunFolder] = {}


def _run_shard(args: tuple[RunFolder, ShardTask, list]) -> dict[str, Any] | StagedShard:
    """One shard in a pool worker: committed here (local folder), or staged for the main process
    to upload (object store) while this worker makes its next shard."""
    folder, task, all_tasks = args
    assert _FACTORY is not None
    # this process's copy, kept across shards: it remembers the sidecars it has read
    folder = _FOLDERS.setdefault((folder.location, repr(sorted(folder.storage_options.items()))), folder)
    return write_shards(_FACTORY, folder, [task], 0, lambda: _PROGRESS.put(1),
                        lambda: errors_elsewhere(folder, all_tasks, [task]), stage_only=folder.remote)[0]


def errors_elsewhere(folder: RunFolder, all_tasks: list[ShardTask], own: list[ShardTask]) -> int:
    """Failures in the complete shards of ``all_tasks`` that are not in ``own`` (the caller counts those)."""
    others = [t for t in all_tasks if t not in own]
    return sum(len(info.get("errors", [])) for info in folder.read_sidecars(others).values())


def _run_in_process(factory_class: type, recipe: Recipe, folder: RunFolder, tasks: list, all_tasks: list,
                    device, tick, loader_workers: int, stop: _Stop) -> None:
    factory = factory_class(recipe, device)
    write_shards(factory, folder, tasks, loader_workers, tick, lambda: errors_elsewhere(folder, all_tasks, tasks),
                 stopping=stop.is_set)


# Thread pools that size themselves from the core count when a process starts. With a worker
# per core, more threads per worker only contend (benchmarks/README.md). A value the user set is kept.
_START_UP_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def _worker_thread_limits(threads: int):
    """Within the block, processes spawned from here start with ``threads`` BLAS/OpenMP threads."""
    saved = {name: os.environ.get(name) for name in _START_UP_THREAD_VARIABLES}
    for name in _START_UP_THREAD_VARIABLES:
        os.environ.setdefault(name, str(threads))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _run_in_pool(factory_class: type, recipe: Recipe, folder: RunFolder, tasks: list, all_tasks: list,
                 workers: int, tick, stop: _Stop) -> None:
    """Whole shards over ``workers`` processes, at most one in flight per worker, so that a stop
    starts nothing new; a shard the storage refuses counts against the error budget.

    On an object store a worker stages its shard and goes on to the next while this process puts
    it (:class:`_Uploads`); a new shard starts only while fewer than ``2 * workers`` are being
    made or put, so local staging holds at most ``2 * workers`` shards.

    A ``ProcessPoolExecutor``, not a ``multiprocessing.Pool``: a Pool replaces killed workers and
    its ``terminate`` can then wait forever on a queue lock a dead worker held."""
    ctx = mp.get_context("spawn")
    progress = ctx.Queue()
    threads = max(1, (os.cpu_count() or 1) // workers)

    def drain():
        while progress.get() is not None:
            tick()

    listener = threading.Thread(target=drain, daemon=True)
    listener.start()
    before = set(mp.active_children())
    pending, running, lost = list(tasks), {}, []
    uploads = _Uploads(folder)

    def failed(task: ShardTask, exc: StorageError) -> None:
        lost.append(exc)
        failures = errors_elsewhere(folder, all_tasks, []) + recipe.output.shard_size * len(lost)
        check_budget(recipe, failures, error_budget(recipe))

    try:
        with _worker_thread_limits(threads):
            pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                       initargs=(factory_class, recipe.model_dump(mode="json"), progress,
                                                 threads, os.getpid()))
            try:
                while pending or running or uploads.running:
                    while pending and len(running) < workers and len(running) + len(uploads.running) < 2 * workers \
                            and not stop.is_set():
                        task = pending.pop(0)
                        running[pool.submit(_run_shard, (folder, task, all_tasks))] = task
                    if not running and not uploads.running:
                        break
                    done, _ = wait([*running, *uploads.running], timeout=1.0, return_when=FIRST_COMPLETED)
                    for future in done:
                        task = running.pop(future, None) or uploads.running.pop(future)
                        try:
                            result = future.result()
                        except StorageError as exc:  # the others go on
                            if future in uploads.seen:  # a worker logs its own
                                log.error("%s not stored: %s", task.name, exc)
                            failed(task, exc)
                            continue
                        if isinstance(result, StagedShard):
                            uploads.start(result)
            except BaseException:
                _kill_children(before)  # they ignore SIGTERM and SIGINT: the main process decides
                for task in [*running.values(), *uploads.abort()]:
                    folder.drop_partials(task)
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            pool.shutdown(wait=True)
    finally:
        progress.put(None)
        listener.join(timeout=5)
    if lost:
        raise StorageError(f"{len(lost)} shard(s) could not be stored ({lost[0]}); complete shards are kept, "
                           f"rerun the same command to make the others")


class _Uploads:
    """Staged shards put to an object store from this process, each in a daemon thread of its own.
    After :meth:`abort` nothing waits for them: one still inside a put ends with the process, and
    its shard has no sidecar. ``running``: future -> shard; ``seen``: their futures."""

    def __init__(self, folder: RunFolder):
        self.folder = folder
        self.running: dict[Future, ShardTask] = {}
        self.seen: set[Future] = set()
        self.stopped = threading.Event()

    def start(self, staged: StagedShard) -> None:
        future: Future = Future()

        def put() -> None:
            try:
                future.set_result(self.folder.publish_shard(staged, abort=self.stopped.is_set))
            except BaseException as exc:
                future.set_exception(exc)

        self.running[future] = staged.task
        self.seen.add(future)
        threading.Thread(target=put, name=f"synthgen-upload-{staged.task.name}", daemon=True).start()

    def abort(self) -> list[ShardTask]:
        """Tell the uploads in flight to drop their shard at their next step (no sidecar is
        written after this); returns their shards."""
        self.stopped.set()
        return list(self.running.values())


def _kill_children(before: set) -> None:
    """SIGKILL this process's children started since ``before`` was taken, and reap them."""
    for child in set(mp.active_children()) - before:
        child.kill()
        child.join(timeout=10)


# --- progress ----------------------------------------------------------------------------------
class Progress:
    """A bar of samples, per sample and across processes: the shards complete in the run folder,
    plus this process's samples made since the start (its workers tick through a queue), plus
    the other ranks' counts from their progress files (rank 0). tqdm's rate and ETA count only
    this run's samples (``initial`` = what was already complete).

    ``publish``: write this process's count to ``logs/NAME.progress`` for rank 0.
    """

    def __init__(self, folder: RunFolder, shown: list[ShardTask], enabled: bool, name: str,
                 peers: str | None = None, publish: bool = False):
        self.folder, self.shown, self.name, self.peers, self.publish = folder, shown, name, peers, publish
        self.local = 0
        self.base = self.n = self._on_disk()[0]  # n: samples done, what the bar shows
        self.disk = (self.base, 0, 0)
        self.bar = tqdm(total=sum(t.stop - t.start for t in shown), initial=self.base, unit="sample",
                        desc="generate", disable=not enabled, smoothing=0.1, mininterval=1.0)
        self.stop = threading.Event()
        # an object store is listed every 10 s, a local folder every second
        self.every = 10 if folder.remote else 1
        self.thread = threading.Thread(target=self._watch, daemon=True)
        if enabled or publish:  # nobody to show or tell: no polling of the run folder
            self.thread.start()

    def _on_disk(self) -> tuple[int, int, int]:
        sidecars = self.folder.read_sidecars(self.shown).values()
        done = sum(i["stop"] - i["start"] for i in sidecars)
        return done, sum(i["samples"] for i in sidecars), sum(len(i.get("rejected", [])) for i in sidecars)

    def tick(self) -> None:
        self.local += 1

    def _watch(self) -> None:
        beat = 0
        while not self.stop.wait(1.0):
            beat += 1
            try:
                self.refresh(read=beat % self.every == 0)
            except Exception as exc:  # a storage hiccup must not end the run; the next beat retries
                log.debug("progress: %s", exc)

    def refresh(self, read: bool = True) -> None:
        others = 0
        if read:
            self.disk = self._on_disk()
            if self.publish:
                self.folder.write_progress(self.name, self.local)
        if self.peers is not None and read:
            others = sum(n for name, n in self.folder.progress(self.peers).items() if name != self.name)
            self._others = others
        others = getattr(self, "_others", 0)
        done, kept, rejected = self.disk
        self.n = min(self.bar.total, max(self.n, done, self.base + self.local + others))
        if self.n > self.bar.n and not self.bar.disable:
            self.bar.update(self.n - self.bar.n)
        if kept + rejected:
            self.bar.set_postfix(accepted=f"{100 * kept / (kept + rejected):.0f}%", refresh=False)

    def close(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()
            with contextlib.suppress(Exception):
                self.refresh()
        self.bar.close()


# --- the run ------------------------------------------------------------------------------------
def make_shards(factory_class: type, recipe: Recipe, out: str | RunFolder, workers: int = 1,
                progress: bool = True, loader_workers: int | None = None,
                task: tuple[int, int] | None = None, engine: str = "local", ray_address: str | None = None) -> dict:
    """Write every missing shard of ``recipe`` (of task ``K`` of ``N`` with ``task=(K, N)``) with
    ``factory_class``'s samples into ``out`` (a folder, an fsspec URL or a :class:`RunFolder`);
    returns the manifest (rank 0, tasks) or ``{"rank", "stats"}`` (other ranks).

    CPU factories spread whole shards over ``workers`` processes. A factory that uses the device
    runs its device stages in this process (one GPU per rank) and its CPU stages in
    ``loader_workers`` DataLoader processes (default: ``workers``). ``engine="ray"`` makes the
    shards on a Ray cluster instead (:mod:`.ray_engine`; ``ray_address`` or ``$RAY_ADDRESS``, else a
    local Ray for the run).
    """
    folder = out if isinstance(out, RunFolder) else RunFolder(out, recipe.output.storage_options)
    if task and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError(f"--task {task[0]}/{task[1]} under a launcher with WORLD_SIZE={os.environ['WORLD_SIZE']}: "
                        f"every rank would make the same task; use ranks (torchrun / accelerate launch) or "
                        f"independent --task processes, not both")
    ranks = Ranks(task[0], task[1], task=True) if task else ranks_from_launcher()
    tasks = plan_shards(recipe.num_samples, recipe.output.shard_size)
    own = shards_of(tasks, ranks.rank, ranks.world)
    stop = _Stop(recipe.output.grace_s)
    with stop.installed():
        try:
            return _make_shards(factory_class, recipe, folder, ranks, tasks, own, workers, progress,
                                loader_workers, stop, engine, ray_address)
        except BaseException as exc:
            raise _one_line(exc, recipe, folder, ranks, tasks, own, stop) from None


def _make_shards(factory_class: type, recipe: Recipe, folder: RunFolder, ranks: Ranks, tasks: list, own: list,
                 workers: int, progress: bool, loader_workers: int | None, stop: _Stop,
                 engine: str = "local", ray_address: str | None = None) -> dict:
    if ranks.rank == 0 or ranks.task:
        folder.prepare(recipe, tasks)
        if not ranks.task:
            folder.clear_markers("rank-")
    ranks.barrier()  # ranks only: every rank starts together (the end is polled in the run folder)
    rank_log = _log_to_file(folder, ranks)
    complete = folder.complete(tasks)
    mine = [t for t in own if t.index not in complete]
    folder.clear_in_flight(mine)  # what a killed run left; each shard marks itself when it starts
    log.info("%s %d/%d: %d of %d shards to write into %s", "task" if ranks.task else "rank", ranks.rank,
             ranks.world, len(mine), len(tasks), folder)
    shown = own if ranks.task else tasks
    bar = Progress(folder, shown, progress and (ranks.rank == 0 or ranks.task), ranks.name,
                    peers="rank-" if ranks.world > 1 and not ranks.task else None,
                    publish=ranks.world > 1 and not ranks.task and ranks.rank != 0)
    start = time.perf_counter()
    uses_device = factory_class.uses_device(recipe)
    workers = max(1, workers if uses_device else min(workers, len(mine)))
    failure = None
    cluster: dict[str, Any] = {}  # the Ray engine's: nodes, CPUs, GPUs, shards made per node
    try:
        if not mine:
            pass
        elif engine == "ray":
            from synthgen.engine.ray_engine import run_shards

            cluster = run_shards(factory_class, recipe, folder, mine, tasks, bar.tick, stop.is_set, ray_address)
        elif uses_device:
            loaders = workers if loader_workers is None else loader_workers
            _run_in_process(factory_class, recipe, folder, mine, tasks, ranks.device, bar.tick, loaders, stop)
        elif workers == 1:
            _run_in_process(factory_class, recipe, folder, mine, tasks, ranks.device, bar.tick,
                            loader_workers or 0, stop)
        else:
            _run_in_pool(factory_class, recipe, folder, mine, tasks, workers, bar.tick, stop)
    except BaseException as exc:
        failure = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        elapsed = time.perf_counter() - start
        made = sum(t.stop - t.start for t in mine)
        stats = {"last_run_seconds": round(elapsed, 3), "last_run_samples": made,
                 "last_run_samples_per_second": round(made / elapsed, 3) if elapsed > 0 else None,
                 "world_size": ranks.world} | ({"tasks": ranks.world} if ranks.task else {}) \
            | ({"engine": engine, "ray": cluster} if engine == "ray" else {"workers": workers})
        failure = failure or ("interrupted" if stop.is_set() else None)
        with contextlib.suppress(Exception):  # the run's own error is the one to report
            if ranks.world > 1 and not ranks.task:  # rank 0 waits for these, not a collective
                mark_rank_done(folder, ranks.rank, stats, failure)
            if ranks.task:
                folder.mark_done(ranks.name, {"task": ranks.rank, "tasks": ranks.world, "stats": stats,
                                              "failure": failure})
        if ranks.rank == 0 and ranks.world > 1 and not ranks.task and failure is None:
            wait_for_ranks(folder, ranks.world)  # the bar keeps refreshing from the sidecars
        bar.close()
        if rank_log is not None:
            logging.getLogger("synthgen").removeHandler(rank_log)
            rank_log.close()
    if stop.is_set():
        raise KeyboardInterrupt  # the in-flight shards finished: report as interrupted
    if ranks.rank != 0 and not ranks.task:  # rank 0 alone writes the manifest
        return {"rank": ranks.rank, "stats": stats}
    return folder.write_manifest(recipe, tasks, stats)


def _one_line(exc: BaseException, recipe: Recipe, folder: RunFolder, ranks: Ranks, tasks: list, own: list,
              stop: _Stop) -> BaseException:
    """The error to report for ``exc``: an interruption or a full disk as one line; else ``exc``."""
    shown = own if ranks.task else tasks
    part = f"task {ranks.rank}/{ranks.world}: " if ranks.task else ""

    def complete() -> int:
        try:
            return len(folder.complete(shown))
        except Exception:
            return 0

    if stop.signum is not None:
        if ranks.rank == 0 or ranks.task:
            with contextlib.suppress(Exception):  # what is complete, for status and readers
                folder.write_manifest(recipe, tasks)
        return Interrupted(f"{part}interrupted: {complete()} of {len(shown)} shards complete; rerun the same "
                           f"command to resume", stop.signum)
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" ({exc.filename})" if exc.filename else ""
        return StorageError(f"{part}{folder}: no space left on the device{where} (disk full or over quota); "
                            f"{complete()} of {len(shown)} shards complete; free space and rerun the same command")
    return exc


# --- the end of a run: polled in the run folder -------------------------------------------------
def clear_rank_markers(folder: RunFolder) -> None:
    """Rank 0, before the start barrier: remove the markers of an earlier run."""
    folder.clear_markers("rank-")


def mark_rank_done(folder: RunFolder, rank: int, stats: dict[str, Any], failure: str | None = None) -> None:
    """Write ``logs/rank-R.done`` (JSON: stats, the failure if any), whole."""
    folder.mark_done(f"rank-{rank}", {"rank": rank, "stats": stats, "failure": failure})


def wait_for_ranks(folder: RunFolder, world: int, poll_s: float = 5.0, report_s: float = 600.0,
                   on_poll: Callable[[], None] | None = None) -> dict[int, dict[str, Any]]:
    """Rank 0 waits, however long, until every rank has written its marker; returns them by rank.

    Ranks may end hours apart (one SDXL shard is ~20 minutes): a collective would time out
    (torch.distributed's default is 10 minutes), so rank 0 polls the run folder every ``poll_s``
    seconds and logs which ranks it is waiting for every ``report_s`` seconds. A rank that dies
    without a marker is the launcher's to report (torchrun stops the group).
    """
    start = last_report = time.monotonic()
    while True:
        found = folder.markers("rank-")
        done = {int(name.split("-")[1]): info for name, info in found.items()
                if name.split("-")[1].isdigit() and int(name.split("-")[1]) < world}
        if len(done) == world:
            for r, info in done.items():
                if info.get("failure"):
                    log.error("rank %d failed: %s", r, info["failure"])
            return done
        if on_poll is not None:
            on_poll()
        if time.monotonic() - last_report >= report_s:
            last_report = time.monotonic()
            log.info("waiting for ranks %s to finish (%.0f min so far)",
                     sorted(set(range(world)) - set(done)), (last_report - start) / 60)
        time.sleep(poll_s)


class _QuietFileHandler(logging.FileHandler):
    """A log file that never prints a traceback when it cannot be written (a full disk): the run
    reports the storage error itself, in one line."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


class _UploadedLog(_QuietFileHandler):
    """An object store's ``logs/NAME.log``: written to a local staging file (after the text an
    earlier run left there: local logs are appended to, objects cannot be) and put whole every
    ``every_s`` seconds while it grows, and at :meth:`close`."""

    def __init__(self, folder: RunFolder, rel: str, every_s: float = 30.0):
        self.folder, self.rel = folder, rel
        local = folder.staging_file(rel)
        local.write_text(folder.read_text(rel) or "")
        super().__init__(local)
        self.put_size = -1
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._keep_up, args=(every_s,), daemon=True,
                                       name="synthgen-log-upload")
        self.thread.start()

    def _put(self) -> None:
        self.flush()
        size = os.path.getsize(self.baseFilename)
        if size != self.put_size:
            self.folder.put_file(self.baseFilename, self.rel, retry=False)  # the next beat tries again
            self.put_size = size

    def _keep_up(self, every_s: float) -> None:
        while not self.stopped.wait(every_s):
            try:
                self._put()
            except Exception as exc:  # the log is a courtesy: never a reason to stop a run
                log.debug("%s: %s", self.rel, exc)

    def close(self) -> None:
        self.stopped.set()
        with contextlib.suppress(Exception):
            self._put()
        super().close()
        with contextlib.suppress(OSError):
            os.unlink(self.baseFilename)


def _log_to_file(folder: RunFolder, ranks: Ranks) -> logging.Handler:
    """Append this process's synthgen log records to DIR/logs/NAME.log (on an object store: put
    there every 30 s and at the end)."""
    if folder.remote:
        handler: logging.Handler = _UploadedLog(folder, f"{LOG_DIR}/{ranks.name}.log")
    else:
        path = os.path.join(folder.root, LOG_DIR, f"{ranks.name}.log")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        handler = _QuietFileHandler(path)
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s {ranks.name}/{ranks.world} %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    logging.getLogger("synthgen").addHandler(handler)
    return handler


def finalize(location: str) -> tuple[dict[str, Any], list[str]]:
    """Close a run made by independent tasks: write its manifest from the shards present; returns
    it and the missing shards, each named with the task that makes it (``shard-000003 (task 1/2)``,
    from the tasks' markers; the shard alone when no task has finished yet)."""
    folder = RunFolder(location)
    recipe = folder.recipe()
    tasks = plan_shards(recipe.num_samples, recipe.output.shard_size)
    counts = {info.get("tasks") for info in folder.markers("task-").values()}
    parts = counts.pop() if len(counts) == 1 else None
    stats = {"tasks": parts} if parts else {}
    manifest = folder.write_manifest(recipe, tasks, stats)
    complete = {s["path"] for s in manifest["shards"]}
    missing = [t.name + (f" (task {t.index % parts}/{parts})" if parts else "")
               for t in tasks if folder.shard_rel(t) not in complete]
    return manifest, missing


def exit_status_after_stop(code: int, wait_s: float = 10.0) -> int:
    """The exit status of a stopped run (the CLI's), once the CPU stages' prefetch thread (told to
    stop at its next sample) and the aborted shard writers (removing their partial files) have
    ended. One still inside native code after ``wait_s`` would abort the process at interpreter
    shutdown (C++ ``std::terminate``, exit -6) instead of ``code``: end at once then."""
    deadline = time.monotonic() + wait_s
    ahead = [t for t in threading.enumerate()
             if t.name.startswith(("synthgen-cpu-stages", "synthgen-device-stages", "synthgen-writer-"))]
    for thread in ahead:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in ahead):
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    return code
