"""What a factory provides: the contract between a sample kind and the engine.

A sample is a plain dict that the stages fill in. The engine only reads ``index`` (int),
``error`` (str, present when the sample failed), ``filter`` (``{"accepted": bool, "reason": ...}``,
present when a filter ran) and hands every other key back to the factory. A rejected sample
is drawn again (``attempt`` 1, 2, ...) up to the recipe's ``filter.max_attempts``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from synthgen.recipe import Recipe


class Factory(Protocol):
    """Makes the samples of one recipe in one process.

    Built as ``FactoryClass(recipe, device=None, cpu_only=False)``: ``cpu_only`` builds only
    what :meth:`prepared` needs (spawned loader workers build one each; a factory class is
    pickled by reference, so it must live at module level).
    """

    recipe: Recipe
    timing: dict[str, float]   # seconds, accumulated; "input_wait" and "device" (the device stages) at least
    batch_size: int            # samples per :meth:`finish` call on the device
    cpu_chunk: int             # consecutive samples that share CPU work (a body-model batch,
                               # one simulated sequence); a loader worker takes whole chunks

    @staticmethod
    def uses_device(recipe: Recipe) -> bool:
        """Whether :meth:`finish` needs the device (a GPU model): the engine then runs it in one
        process per device and the CPU stages in loader workers; otherwise whole shards are
        spread over worker processes. Asked of the class, before any factory is built."""

    def prepared(self, indices: list[int], attempt: int = 0) -> Iterator[dict[str, Any]]:
        """CPU stages (subjects, cameras, render, prompt) of ``indices``, in order, drawn for
        ``attempt`` (0, or the redraw number of rejected samples: see
        :func:`synthgen.seeding.attempt_seed`). Runs in a prefetch thread or a loader worker; a
        failing sample comes out as ``{"index": i, "error": "Type: message"}``."""

    def finish(self, batch: list[dict[str, Any]]) -> None:
        """Device stages (generate, filter) of a batch of prepared samples, in place; failed
        samples pass through untouched."""

    def encode(self, sample: dict[str, Any]) -> dict[str, Any]:
        """A finished sample as a webdataset record: ``{"__key__": ..., "json": bytes, ext: bytes}``."""
