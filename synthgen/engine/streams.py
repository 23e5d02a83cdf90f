"""Sample streams: the CPU stages run ahead of the device stages.

``loader_workers == 0``: the CPU stages run in a background thread of this process.
``loader_workers > 0``: in that many spawned DataLoader processes, each with its own factory
(models, GL context); worker ``w`` prepares chunks ``w, w + n, ...`` of ``factory.cpu_chunk``
consecutive samples and the DataLoader's round robin gives the chunks back in order. A worker
sends each sample through ``factory.transferable`` when the factory has one (only what the
device stages and the writer read crosses the process boundary), and a prefetch thread of this
process receives them, so the device stages never wait on unpickling.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import torch.utils.data as tud

from synthgen.engine.contract import Factory
from synthgen.recipe import Recipe

log = logging.getLogger(__name__)


def finished_samples(factory: Factory, indices: list[int], loader_workers: int = 0,
                     keep_errors: bool = False, attempt: int = 0) -> Iterator[dict[str, Any]]:
    """Finished samples of ``indices`` (drawn for ``attempt``) in order; failed ones only with
    ``keep_errors``.

    ``factory.timing["input_wait"]`` accumulates how long the device stages waited for input,
    ``["device"]`` how long they worked: the numbers behind the input-wait fraction.
    """
    depth = 2 * factory.batch_size
    if loader_workers > 0:
        log.info("CPU stages of %d samples in %d loader workers, chunks of %d", len(indices), loader_workers,
                 factory.cpu_chunk)
        # read by a thread: unpickling the workers' samples does not hold up the device stages
        prepared = _prefetch(loader_stream(type(factory), factory.recipe, indices, factory.cpu_chunk,
                                            loader_workers, depth, attempt), depth, name="synthgen-loader")
    else:
        prepared = _prefetch(factory.prepared(indices, attempt), depth)
    yield from _finish_batches(factory, _batched(prepared, factory.batch_size), keep_errors)


# one device per process: batches of the main stream and of redraws never run at the same time
DEVICE_LOCK = threading.Lock()


def _finish_batches(factory: Factory, batches: Iterator[list], keep_errors: bool) -> Iterator[dict[str, Any]]:
    while True:
        t0 = time.perf_counter()
        batch = next(batches, None)
        t1 = time.perf_counter()
        if not batch:
            return
        with DEVICE_LOCK:
            factory.finish(batch)
        factory.timing["input_wait"] += t1 - t0
        factory.timing["device"] += time.perf_counter() - t1
        for sample in batch:
            if keep_errors or "error" not in sample:
                yield sample


def _prefetch(items: Iterator, depth: int, name: str = "synthgen-cpu-stages") -> Iterator:
    """Run an iterator in a background thread, ``depth`` items ahead (errors re-raised here).

    Closing the returned generator (or dropping it) stops the thread at its next item.
    """
    box: queue.Queue = queue.Queue(maxsize=max(1, depth))
    done, stop = object(), threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                box.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def fill():
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as exc:  # surfaced in the consumer
            put(exc)
        finally:  # a generator (e.g. the loader stream) shuts its workers down here, in its thread
            close = getattr(items, "close", None)
            if close is not None:
                close()
        put(done)

    threading.Thread(target=fill, daemon=True, name=name).start()
    try:
        while (item := box.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def write_ahead(samples: Iterator[dict[str, Any]], batches: int, batch_size: int) -> Iterator[dict[str, Any]]:
    """The device stages of ``samples`` run in a thread up to ``batches`` batches ahead of the
    consumer (the writer: encoding and tar writing), which then overlaps the next batches'
    diffusion; ``batches == 0``: one after another in the consumer's thread."""
    if batches <= 0:
        return samples
    return _prefetch(samples, batches * batch_size, name="synthgen-device-stages")


def _batched(items: Iterator, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def split_in_chunks(indices: list[int], chunk: int) -> list[list[int]]:
    """Runs of consecutive indices that share ``index // chunk`` (a sequence, a posing batch)."""
    out: list[list[int]] = []
    for index in indices:
        if out and index // chunk == out[-1][-1] // chunk and index == out[-1][-1] + 1:
            out[-1].append(index)
        else:
            out.append([index])
    return out


_WORKER_FACTORY: dict[str, Factory] = {}


class _PreparedChunks(tud.IterableDataset):
    """The CPU stages as a DataLoader dataset yielding one list of prepared samples per chunk."""

    def __init__(self, factory_class: type, recipe_json: dict, chunks: list[list[int]], attempt: int):
        self.factory_class, self.recipe_json, self.chunks = factory_class, recipe_json, chunks
        self.attempt = attempt

    def __iter__(self):
        info = tud.get_worker_info()
        worker, count = (info.id, info.num_workers) if info else (0, 1)
        if "factory" not in _WORKER_FACTORY:
            recipe = Recipe.model_validate(self.recipe_json)
            _WORKER_FACTORY["factory"] = self.factory_class(recipe, cpu_only=True)
        factory = _WORKER_FACTORY["factory"]
        slim = getattr(factory, "transferable", None) or _as_is  # only what the device process reads
        for chunk in self.chunks[worker::count]:
            yield [slim(sample) for sample in factory.prepared(chunk, self.attempt)]


def _as_is(item):
    return item


def loader_stream(factory_class: type, recipe: Recipe, indices: list[int], chunk: int, workers: int,
                   depth: int, attempt: int) -> Iterator[dict[str, Any]]:
    chunks = split_in_chunks(indices, max(1, chunk))
    dataset = _PreparedChunks(factory_class, recipe.model_dump(mode="json"), chunks, attempt)
    per_chunk = max(1, len(indices) // max(1, len(chunks)))
    ahead = max(1, -(-depth // (workers * per_chunk)))  # chunks per worker covering ``depth`` samples
    loader = tud.DataLoader(dataset, batch_size=None, num_workers=workers, multiprocessing_context="spawn",
                            prefetch_factor=ahead, collate_fn=_as_is)
    for prepared in loader:
        yield from prepared
