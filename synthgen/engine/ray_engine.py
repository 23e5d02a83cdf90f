"""The Ray engine (``synthgen generate ... --engine ray``): shards scheduled as resources free up.

Same plan, same per-shard code, same commit as the local engine: every shard is made by
:func:`synthgen.engine.shards.write_shards` on one :class:`~.run_folder.ShardTask` and committed
through the :class:`~.run_folder.RunFolder` (a folder every node sees, or an object-store URL),
so a shard's bytes do not depend on which node made it, in which order, or how often it was tried.

- A factory that does not use the device: a pool of shard makers, one actor per CPU of the
  cluster (``num_cpus=1``, on any node; more join as CPUs appear), each building the factory
  once and making whole shards (CPU stages, the weight-free image, encoding, the commit). The
  driver hands a shard to a maker as soon as it is free (a direct call: no worker lease per
  shard), so a node twice as slow ends up with about half the shards.
- A factory that uses the device: a pool of device actors, one per GPU (``num_gpus=1``; one actor
  with ``num_gpus=0`` on a cluster without GPUs), each loading its models once and taking the
  next shard when it is free. Inside a shard, the CPU stages of each chunk of
  ``factory.cpu_chunk`` samples run as Ray tasks on any node, a few chunks ahead; the actor runs
  the device stages (diffusion, SAM) in the recipe's fixed batch shapes, then writes the shard.

Faults: a worker process or node that dies takes its shard with it; the shard is made again
(a lost shard maker's shard goes to another maker, the maker is not restarted where no CPU is
free; a device actor is restarted by Ray, reloading its models, and the call is run again), up
to ``output.ray.max_retries`` times; partial files of the lost attempt are never taken for data
(the commit protocol). A sample that raises is not a fault: it is recorded in its shard's
sidecar and counts against ``output.max_errors`` exactly as under the local engine.

``ray`` is imported only here, and only when the Ray engine runs (``pip install 'synthgen[ray]'``).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from synthgen.engine.contract import Factory
from synthgen.engine.run_folder import RunFolder, ShardTask
from synthgen.engine.shards import write_shards
from synthgen.engine.streams import split_in_chunks
from synthgen.errors import UserError, WorkLost
from synthgen.recipe import Recipe, recipe_hash

log = logging.getLogger(__name__)

POLL_S = 1.0          # the driver refreshes progress and looks for finished shards this often
PREPARE_AHEAD = 4     # chunks of CPU stages in flight per device actor, at least
MAKER_WAIT_S = 120.0  # with no shard maker up, how long to wait for one before the run stops


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--engine ray needs the ray package; pip install 'synthgen[ray]' "
                        "(or use --engine local)") from None
    return ray


# --- in the worker processes --------------------------------------------------------------------
_FACTORIES: dict[tuple, Factory] = {}


def _factory(factory_class: type, recipe: Recipe, cpu_only: bool = False) -> Factory:
    """This worker process's factory for ``recipe`` (built once: Ray reuses worker processes)."""
    key = (factory_class, recipe_hash(recipe), cpu_only)
    if key not in _FACTORIES:
        _worker_setup()
        _FACTORIES.clear()  # one recipe at a time per worker: free the previous one's models
        _FACTORIES[key] = factory_class(recipe, cpu_only=True) if cpu_only else factory_class(recipe)
    return _FACTORIES[key]


def _worker_setup() -> None:
    """One thread per CPU Ray gave this worker (torch, OpenCV, llvmpipe), freed memory kept mapped."""
    import cv2
    import torch

    from synthgen.engine.memory import keep_freed_memory

    keep_freed_memory()
    threads = max(1, int(os.environ.get("OMP_NUM_THREADS", "1")))  # Ray sets it to the task's num_cpus
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    os.environ.setdefault("LP_NUM_THREADS", str(threads))
    logging.basicConfig(level=logging.WARNING)


def _errors_in_other_shards(folder: RunFolder, all_tasks: list[ShardTask], own: ShardTask) -> int:
    """Failures recorded in the complete shards other than ``own`` (the error budget's base)."""
    others = [t for t in all_tasks if t != own]
    return sum(len(info.get("errors", [])) for info in folder.read_sidecars(others).values())


class _Counts:
    """Samples this actor has made (progress only), read by the driver while a shard is being made
    (the actors run two threads: ``make`` and this)."""

    made = 0

    def _count(self) -> None:
        self.made += 1

    def made_so_far(self) -> int:
        return self.made


class ShardMaker(_Counts):
    """A CPU actor: :meth:`make` writes one whole shard (CPU stages, the weight-free image,
    encoding, the commit) with the factory built at its first shard (so that a recipe the factory
    refuses stops the run with the factory's own error, as under the local engine)."""

    def __init__(self, factory_class: type, recipe: Recipe):
        self.factory_class, self.recipe = factory_class, recipe

    def ready(self) -> bool:
        return True

    def make(self, folder: RunFolder, task: ShardTask, all_tasks: list[ShardTask]) -> tuple[dict[str, Any], str]:
        """The shard's sidecar info and the node that made it."""
        info = write_shards(_factory(self.factory_class, self.recipe), folder, [task], 0, self._count,
                            lambda: _errors_in_other_shards(folder, all_tasks, task))[0]
        return info, _node()


def _node() -> str:
    import ray

    context = ray.get_runtime_context()
    return f"{context.get_node_id()[:8]} ({ray.util.get_node_ip_address()})"


def prepare_chunk(factory_class: type, recipe: Recipe, indices: list[int], attempt: int) -> list[dict[str, Any]]:
    """The CPU stages of ``indices`` (consecutive, one chunk) in this worker."""
    return list(_factory(factory_class, recipe, cpu_only=True).prepared(indices, attempt))


class _RemoteCpuStages:
    """A device actor's factory, with :meth:`prepared` run as Ray tasks on any node, a few chunks
    ahead, results in order; everything else (finish, encode, timing) is the actor's factory."""

    def __init__(self, factory: Factory, factory_class: type, recipe: Recipe, prepare_task, ahead: int):
        self._factory, self._class, self._recipe = factory, factory_class, recipe
        self._prepare, self._ahead = prepare_task, ahead

    def __getattr__(self, name: str):
        return getattr(self._factory, name)

    def prepared(self, indices: list[int], attempt: int = 0) -> Iterator[dict[str, Any]]:
        import ray

        chunks = iter(split_in_chunks(indices, max(1, self._factory.cpu_chunk)))
        in_flight: collections.deque = collections.deque()
        for chunk in chunks:
            in_flight.append(self._prepare.remote(self._class, self._recipe, chunk, attempt))
            if len(in_flight) >= self._ahead:
                break
        while in_flight:
            samples = ray.get(in_flight.popleft())
            chunk = next(chunks, None)
            if chunk is not None:
                in_flight.append(self._prepare.remote(self._class, self._recipe, chunk, attempt))
            yield from samples


class DeviceShards(_Counts):
    """A device actor: the factory's models loaded once; :meth:`make` writes one shard."""

    def __init__(self, factory_class: type, recipe: Recipe, prepare_task):
        _worker_setup()
        factory = factory_class(recipe)
        # enough chunks in flight for two device batches
        ahead = max(PREPARE_AHEAD, -(-2 * factory.batch_size // max(1, factory.cpu_chunk)))
        self.factory = _RemoteCpuStages(factory, factory_class, recipe, prepare_task, ahead)

    def make(self, folder: RunFolder, task: ShardTask, all_tasks: list[ShardTask]) -> tuple[dict[str, Any], str]:
        info = write_shards(self.factory, folder, [task], 0, self._count,
                            lambda: _errors_in_other_shards(folder, all_tasks, task))[0]
        return info, _node()


# --- in the driver ------------------------------------------------------------------------------
def run_shards(factory_class: type, recipe: Recipe, folder: RunFolder, tasks: list[ShardTask],
               all_tasks: list[ShardTask], tick: Callable[[], None], stopping: Callable[[], bool],
               address: str | None = None) -> dict[str, Any]:
    """Make ``tasks`` (the missing shards of ``all_tasks``) on a Ray cluster; returns what ran
    them (``nodes``, ``cpus``, ``gpus`` of the cluster, ``device_actors``, ``shards_per_node``:
    the run's ``stats.ray``; the local engine's ``stats.workers`` has no meaning here).

    ``address``: a running cluster (``ray://head:10001``, ``head:6379``, ``auto``); default
    ``$RAY_ADDRESS``; without either, a local Ray is started for this run and stopped after.
    ``tick()`` is called once per sample made anywhere; once ``stopping()`` is true no new shard
    starts (the ones in flight finish). Raises the first error a shard raised (error budget,
    storage), or :class:`WorkLost` when a shard was lost more than ``output.ray.max_retries`` times.
    """
    ray = _import_ray()
    if ray.is_initialized():  # a notebook that called ray.init() itself: its cluster, left as it is
        return _schedule(ray, factory_class, recipe, folder, tasks, all_tasks, tick, stopping)
    with _signal_handlers_kept():  # ray.init installs its own SIGTERM handler; the run's decides
        _connect(ray, address)
    try:
        return _schedule(ray, factory_class, recipe, folder, tasks, all_tasks, tick, stopping)
    finally:
        ray.shutdown()  # disconnects from a cluster; stops the local Ray started for the run


@contextlib.contextmanager
def _signal_handlers_kept():
    """Restore this process's SIGTERM / SIGINT handlers (the run's: finish the shards in flight)
    after the block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in saved.items():
            if handler is not None:
                signal.signal(s, handler)


def _connect(ray, address: str | None) -> None:
    """Join the cluster at ``address`` / ``$RAY_ADDRESS``, or start a local one for this run."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    quiet = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        log.info("joining the Ray cluster at %s", address)
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, ValueError) as exc:
            raise UserError(f"--ray-address {address}: no Ray cluster reachable there ({exc}); start one "
                            f"(`ray start --head`, KubeRay) or pass its address") from None
        return
    log.info("starting a local Ray for this run (%d CPUs)", os.cpu_count() or 1)
    ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False, **quiet)


def _schedule(ray, factory_class: type, recipe: Recipe, folder: RunFolder, tasks: list[ShardTask],
              all_tasks: list[ShardTask], tick: Callable[[], None], stopping: Callable[[], bool]) -> dict[str, Any]:
    retries = recipe.output.ray.max_retries
    resources = ray.cluster_resources()
    summary: dict[str, Any] = {"nodes": len([n for n in ray.nodes() if n.get("Alive")]),
                               "cpus": resources.get("CPU", 0), "gpus": resources.get("GPU", 0)}
    log.info("Ray cluster: %d nodes, %g CPUs, %g GPUs", summary["nodes"], summary["cpus"], summary["gpus"])
    if factory_class.uses_device(recipe):
        start, slots, actors = _device_pool(ray, factory_class, recipe, folder, all_tasks, retries)
        summary["device_actors"] = slots()
        lost = None
    else:
        makers = _MakerPool(ray, factory_class, recipe)
        start, slots, lost = (lambda task: makers.start(task, folder, all_tasks)), makers.slots, makers.lost

        def actors() -> list:
            return makers.ready
    progress = _Progress(ray, actors, tick)

    pending, running = list(tasks), {}
    tries: collections.Counter = collections.Counter()
    per_node: collections.Counter = collections.Counter()
    try:
        while pending or running:
            while pending and len(running) < slots() and not stopping():
                task = pending.pop(0)
                running[start(task)] = task
            if not running:
                if pending and not stopping():
                    raise _lost(pending[0], retries, RuntimeError("no shard maker left"))
                break
            done, _ = ray.wait(list(running), num_returns=1, timeout=POLL_S)
            progress.poll()
            for ref in done:
                task = running.pop(ref)
                if lost is not None and lost(ref):  # its maker died with it: another one makes it
                    tries[task] += 1
                    with contextlib.suppress(Exception):
                        folder.drop_partials(task)
                    if tries[task] > retries:
                        raise _lost(task, retries, RuntimeError("shard maker lost"))
                    log.warning("%s lost with its shard maker; making it again (try %d of %d)", task.name,
                                tries[task] + 1, retries + 1)
                    pending.insert(0, task)
                    continue
                _, node = _result(ray, ref, task, retries)
                per_node[node] += 1
                log.debug("%s made on node %s", task.name, node)
        progress.poll(force=True)
        log.info("shards made per node: %s", ", ".join(f"{node}: {n}" for node, n in sorted(per_node.items())))
        return summary | {"shards_per_node": dict(sorted(per_node.items()))}
    except BaseException:
        for ref, task in running.items():  # a stop after the grace period, or another shard's error
            with contextlib.suppress(Exception):
                ray.cancel(ref)  # actor calls: a plain cancel (force is refused)
            with contextlib.suppress(Exception):
                folder.drop_partials(task)
        raise


class _MakerPool:
    """Shard makers, one per CPU of the cluster: :meth:`start` gives a shard to a free one.

    A maker whose call failed because it died is dropped (:meth:`lost`); makers are added while
    the cluster has a free CPU (checked at most every ``POLL_S``: nodes that join, a node that
    came back), each used once it is ready."""

    def __init__(self, ray, factory_class: type, recipe: Recipe):
        self.ray = ray
        self.actor_class = ray.remote(ShardMaker).options(num_cpus=1, max_restarts=0, max_task_retries=0,
                                                          max_concurrency=2)
        self.args = (factory_class, recipe)
        self.ready: list = []               # makers that are up
        self.starting: dict = {}            # ready() ref -> maker still starting
        self.busy: dict = {}                # call ref -> its maker
        self.checked = time.monotonic()
        for _ in range(max(1, int(ray.cluster_resources().get("CPU", 1)))):
            self._add()

    def _add(self) -> None:
        maker = self.actor_class.remote(*self.args)
        self.starting[maker.ready.remote()] = maker

    def _refresh(self, force: bool = False) -> None:
        if self.starting:
            up, _ = self.ray.wait(list(self.starting), num_returns=len(self.starting), timeout=0)
            for ref in up:
                maker = self.starting.pop(ref)
                try:
                    self.ray.get(ref)
                    self.ready.append(maker)
                except self.ray.exceptions.RayError:  # died while starting (its node was lost)
                    pass
        if not self.starting and (force or time.monotonic() - self.checked > POLL_S):
            self.checked = time.monotonic()
            if self.ray.available_resources().get("CPU", 0) >= 1:
                self._add()

    def slots(self) -> int:
        """How many shards may be in flight now: the makers that are up. With none (the start,
        or every maker lost), waits for those starting, and up to ``MAKER_WAIT_S`` for a free CPU
        to start one on."""
        self._refresh()
        deadline = time.monotonic() + MAKER_WAIT_S
        while not self.ready:
            if self.starting:  # being placed or building its factory: as long as it takes
                self.ray.wait(list(self.starting), num_returns=1, timeout=POLL_S)
            elif time.monotonic() < deadline:
                time.sleep(POLL_S / 4)
            else:
                break
            self._refresh(force=True)
        return len(self.ready)

    def start(self, task: ShardTask, folder: RunFolder, all_tasks: list[ShardTask]):
        maker = next(m for m in self.ready if m not in self.busy.values())
        ref = maker.make.remote(folder, task, all_tasks)
        self.busy[ref] = maker
        return ref

    def lost(self, ref) -> bool:
        """Whether ``ref`` (a finished call) failed because its maker died; such a maker is dropped."""
        maker = self.busy.pop(ref)
        try:
            self.ray.get(ref, timeout=0)
        except self.ray.exceptions.RayActorError:
            self.ready.remove(maker)
            return True
        except Exception:
            return False
        return False


def _device_pool(ray, factory_class: type, recipe: Recipe, folder: RunFolder, all_tasks: list[ShardTask],
                 retries: int):
    """Device actors (one per GPU, or one with ``num_gpus=0``) and the function giving each its next shard."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    count, per_actor = (gpus, 1) if gpus else (1, 0)
    prepare = ray.remote(prepare_chunk).options(num_cpus=1, max_retries=retries, retry_exceptions=False)
    actor_class = ray.remote(DeviceShards).options(num_gpus=per_actor, num_cpus=0, max_restarts=retries,
                                                   max_task_retries=retries, max_concurrency=2)
    actors = [actor_class.remote(factory_class, recipe, prepare) for _ in range(count)]
    log.info("%d device actor(s), num_gpus=%d each", count, per_actor)
    busy: dict[int, Any] = {}  # actor number -> its call in flight

    def start(task: ShardTask):
        free = next(i for i in range(count) if i not in busy or _ready(ray, busy[i]))
        busy[free] = actors[free].make.remote(folder, task, all_tasks)
        return busy[free]

    def slots() -> int:
        return count

    return start, slots, lambda: actors


def _ready(ray, ref) -> bool:
    done, _ = ray.wait([ref], timeout=0)
    return bool(done)


class _Progress:
    """Ticks the driver's progress once per sample the actors made: asks each actor how many it
    has made (at most every ``POLL_S``), keeping the highest count seen per actor, so a lost or
    restarted actor never takes progress back."""

    def __init__(self, ray, actors: Callable[[], list], tick: Callable[[], None]):
        self.ray, self.actors, self.tick = ray, actors, tick
        self.counts: dict = {}
        self.seen, self.last = 0, 0.0

    def poll(self, force: bool = False) -> None:
        if not force and time.monotonic() - self.last < POLL_S:
            return
        self.last = time.monotonic()
        asked = {actor: actor.made_so_far.remote() for actor in self.actors()}
        if not asked:
            return
        ready, _ = self.ray.wait(list(asked.values()), num_returns=len(asked), timeout=POLL_S)
        ready = set(ready)
        for actor, ref in asked.items():
            if ref in ready:
                with contextlib.suppress(Exception):  # progress only: never a reason to stop
                    self.counts[actor] = max(self.counts.get(actor, 0), self.ray.get(ref))
        total = sum(self.counts.values())
        for _ in range(max(0, total - self.seen)):
            self.tick()
        self.seen = max(self.seen, total)


def _result(ray, ref, task: ShardTask, retries: int) -> tuple[dict[str, Any], str]:
    """The shard's sidecar info and node; the shard's own error as it was raised (error budget, storage),
    or :class:`WorkLost` (one line) when its workers kept dying."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, ray.exceptions.RayError):  # a device actor's CPU-stage task was lost
            raise _lost(task, retries, cause) from None
        if isinstance(cause, Exception):
            raise cause from None
        raise
    except ray.exceptions.RayError as exc:  # the worker, actor or node died, after the retries
        raise _lost(task, retries, exc) from None


def _lost(task: ShardTask, retries: int, exc: BaseException) -> WorkLost:
    return WorkLost(f"{task.name}: lost {retries + 1} times ({type(exc).__name__}); raise "
                    f"output.ray.max_retries or check the cluster's nodes; complete shards are kept, "
                    f"rerun the same command to make the others")
