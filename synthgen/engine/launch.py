"""Launch: which process makes which shard, progress, the manifest.

- One process: ``synthgen generate`` spreads shards over ``--workers`` spawned processes
  (each builds its own models and GL context; spawn, because EGL contexts and OpenMP state do
  not survive fork).
- Many processes or nodes: under ``torchrun`` or ``accelerate launch`` (``WORLD_SIZE`` > 1)
  accelerate's ``PartialState`` gives this process its rank; shard ``k`` belongs to rank
  ``k % world_size``, so no rank writes another's shard and the dataset is the same for any
  world size. Rank 0 shows one progress bar for all ranks (it watches the shard sidecars appear)
  and writes the manifest once every rank is done.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing as mp
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tqdm.auto import tqdm

from synthgen import write
from synthgen.engine.contract import Factory
from synthgen.engine.memory import keep_freed_memory
from synthgen.engine.shards import write_shards
from synthgen.recipe import Recipe

log = logging.getLogger(__name__)


@dataclass
class Ranks:
    """This process's place in a distributed launch (rank 0 of 1 when not launched)."""

    rank: int = 0
    world: int = 1
    device: str | None = None
    barrier: Callable[[], None] = lambda: None


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


# --- worker processes --------------------------------------------------------------------------
_FACTORY: Factory | None = None
_PROGRESS = None


def _init_worker(factory_class: type, recipe_json: dict, progress_queue, threads: int) -> None:
    global _FACTORY, _PROGRESS
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


def _run_shard(args: tuple[str, write.ShardTask, list]) -> dict[str, Any]:
    out_dir, task, all_tasks = args
    assert _FACTORY is not None
    return write_shards(_FACTORY, Path(out_dir), [task], 0, lambda: _PROGRESS.put(1),
                        lambda: _errors_elsewhere(Path(out_dir), all_tasks, [task]))[0]


def _errors_elsewhere(out_dir: Path, all_tasks: list[write.ShardTask], own: list[write.ShardTask]) -> int:
    """Failures in the complete shards of ``all_tasks`` that are not in ``own`` (the caller counts those)."""
    others = [t for t in all_tasks if t not in own]
    return sum(len(info.get("errors", [])) for info in write.read_sidecars(out_dir, others).values())


def _run_in_process(factory_class: type, recipe: Recipe, out_dir: Path, tasks: list, all_tasks: list,
                    device, tick, loader_workers: int) -> None:
    factory = factory_class(recipe, device)
    write_shards(factory, out_dir, tasks, loader_workers, tick, lambda: _errors_elsewhere(out_dir, all_tasks, tasks))


# Thread pools that size themselves from the core count when a process starts. With a worker
# per core, more threads per worker only contend: one BLAS thread per worker measured +7 %
# samples/s for the quickstart on 2 cores. A value the user set is kept.
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


def _run_in_pool(factory_class: type, recipe: Recipe, out_dir: Path, tasks: list, all_tasks: list,
                 workers: int, tick) -> None:
    ctx = mp.get_context("spawn")
    progress = ctx.Queue()
    threads = max(1, (os.cpu_count() or 1) // workers)

    def drain():
        while progress.get() is not None:
            tick()

    listener = threading.Thread(target=drain, daemon=True)
    listener.start()
    try:
        with _worker_thread_limits(threads):
            pool = ctx.Pool(workers, initializer=_init_worker,
                            initargs=(factory_class, recipe.model_dump(mode="json"), progress, threads))
        with pool:
            jobs = [(str(out_dir), t, all_tasks) for t in tasks]
            for _ in pool.imap_unordered(_run_shard, jobs):
                pass
    finally:
        progress.put(None)
        listener.join(timeout=5)


class _Progress:
    """Rank 0's bar: complete shards on disk (every rank's) plus this process's samples in flight."""

    def __init__(self, out_dir: Path, tasks: list, total: int, enabled: bool):
        self.out_dir, self.tasks = out_dir, tasks
        self.local = 0
        self.bar = tqdm(total=total, unit="sample", desc="generate", disable=not enabled,
                        smoothing=0.1, mininterval=1.0)
        self.stop = threading.Event()
        self.base = self._on_disk()[0]
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _on_disk(self) -> tuple[int, int, int]:
        sidecars = write.read_sidecars(self.out_dir, self.tasks).values()
        done = sum(i["stop"] - i["start"] for i in sidecars)
        return done, sum(i["samples"] for i in sidecars), sum(len(i.get("rejected", [])) for i in sidecars)

    def tick(self) -> None:
        self.local += 1

    def _watch(self) -> None:
        while not self.stop.wait(1.0):
            self.refresh()

    def refresh(self) -> None:
        done, kept, rejected = self._on_disk()
        self.bar.n = max(done, self.base + self.local)
        if kept + rejected:
            self.bar.set_postfix(accepted=f"{100 * kept / (kept + rejected):.0f}%", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.refresh()
        self.bar.close()


def generate(factory_class: type, recipe: Recipe, out_dir: str | Path, workers: int = 1,
             progress: bool = True, loader_workers: int | None = None) -> dict:
    """Write every missing shard of ``recipe`` with ``factory_class``'s samples; returns the
    manifest (rank 0) or ``{"rank", "stats"}`` (other ranks).

    CPU backends (shaded, none) spread whole shards over ``workers`` processes. The controlnet
    backend runs generation in this process (one GPU per rank) and its CPU stages in
    ``loader_workers`` DataLoader processes (default: ``workers``).
    """
    out_dir = Path(out_dir)
    ranks = ranks_from_launcher()
    tasks = write.plan_shards(recipe.num_samples, recipe.output.shard_size)
    if ranks.rank == 0:
        write.check_output_dir(out_dir, recipe)
        write.write_manifest(out_dir, recipe, tasks)
        clear_rank_markers(out_dir)
    ranks.barrier()  # the only collective: every rank starts together (the end is polled on disk)
    rank_log = _log_to_file(out_dir / "logs" / f"rank-{ranks.rank}.log", ranks)
    mine = [t for t in tasks if t.index % ranks.world == ranks.rank and not write.is_complete(out_dir, t)]
    log.info("rank %d/%d: %d of %d shards to write into %s", ranks.rank, ranks.world, len(mine),
             len(tasks), out_dir)
    bar = _Progress(out_dir, tasks, recipe.num_samples, progress and ranks.rank == 0)
    start = time.perf_counter()
    uses_gpu = recipe.backend.kind == "controlnet"
    workers = max(1, workers if uses_gpu else min(workers, len(mine)))
    failure = None
    try:
        if not mine:
            pass
        elif uses_gpu:
            loaders = workers if loader_workers is None else loader_workers
            _run_in_process(factory_class, recipe, out_dir, mine, tasks, ranks.device, bar.tick, loaders)
        elif workers == 1:
            _run_in_process(factory_class, recipe, out_dir, mine, tasks, ranks.device, bar.tick,
                            loader_workers or 0)
        else:
            _run_in_pool(factory_class, recipe, out_dir, mine, tasks, workers, bar.tick)
    except BaseException as exc:
        failure = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        elapsed = time.perf_counter() - start
        made = sum(t.stop - t.start for t in mine)
        stats = {"last_run_seconds": round(elapsed, 3), "last_run_samples": made,
                 "last_run_samples_per_second": round(made / elapsed, 3) if elapsed > 0 else None,
                 "workers": workers, "world_size": ranks.world}
        if ranks.world > 1:  # on the shared output folder: rank 0 waits for these, not a collective
            mark_rank_done(out_dir, ranks.rank, stats, failure)
        if ranks.rank == 0 and ranks.world > 1 and failure is None:
            wait_for_ranks(out_dir, ranks.world)  # the bar keeps refreshing from the sidecars
        bar.close()
        logging.getLogger("synthgen").removeHandler(rank_log)
        rank_log.close()
    if ranks.rank != 0:  # rank 0 alone writes the manifest
        return {"rank": ranks.rank, "stats": stats}
    return write.write_manifest(out_dir, recipe, tasks, stats)


# --- the end of a run: polled on the shared output folder ---------------------------------------
RANK_MARKERS = "logs/rank-{rank}.done"


def _marker(out_dir: Path, rank: int) -> Path:
    return Path(out_dir) / RANK_MARKERS.format(rank=rank)


def clear_rank_markers(out_dir: Path) -> None:
    """Rank 0, before the start barrier: remove the markers of an earlier run."""
    for stale in (Path(out_dir) / "logs").glob("rank-*.done"):
        stale.unlink(missing_ok=True)


def mark_rank_done(out_dir: Path, rank: int, stats: dict[str, Any], failure: str | None = None) -> None:
    """Write ``logs/rank-R.done`` (JSON: stats, the failure if any), atomically."""
    path = _marker(out_dir, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.partial-{os.getpid()}")
    tmp.write_text(json.dumps({"rank": rank, "stats": stats, "failure": failure}))
    os.replace(tmp, path)


def wait_for_ranks(out_dir: Path, world: int, poll_s: float = 5.0, report_s: float = 600.0,
                   on_poll: Callable[[], None] | None = None) -> dict[int, dict[str, Any]]:
    """Rank 0 waits, however long, until every rank has written its marker; returns them by rank.

    Ranks may end hours apart (one SDXL shard is ~20 minutes): a collective would time out
    (torch.distributed's default is 10 minutes), so rank 0 polls the shared output folder every
    ``poll_s`` seconds and logs which ranks it is waiting for every ``report_s`` seconds. A rank
    that dies without a marker is the launcher's to report (torchrun stops the group).
    """
    start = last_report = time.monotonic()
    while True:
        done = {r: _marker(out_dir, r) for r in range(world) if _marker(out_dir, r).is_file()}
        if len(done) == world:
            infos = {r: json.loads(path.read_text()) for r, path in done.items()}
            for r, info in infos.items():
                if info.get("failure"):
                    log.error("rank %d failed: %s", r, info["failure"])
            return infos
        if on_poll is not None:
            on_poll()
        if time.monotonic() - last_report >= report_s:
            last_report = time.monotonic()
            log.info("waiting for ranks %s to finish (%.0f min so far)",
                     sorted(set(range(world)) - set(done)), (last_report - start) / 60)
        time.sleep(poll_s)


def _log_to_file(path: Path, ranks: Ranks) -> logging.Handler:
    """Append this rank's synthgen log records to DIR/logs/rank-R.log."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s rank {ranks.rank}/{ranks.world} %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    logging.getLogger("synthgen").addHandler(handler)
    return handler
