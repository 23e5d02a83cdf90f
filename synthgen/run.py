"""Running a recipe: the one place that maps a recipe to the factory making its samples.

- :func:`factory_class`: a recipe with a ``sequence:`` section makes body-worn camera
  sequences (:class:`synthgen.sequences.SequenceFactory`), any other single images
  (:class:`synthgen.images.ImageFactory`).
- :func:`generate`: checks the output location and that every model the recipe names is on disk, then lets
  :mod:`synthgen.engine.launch` write the shards (ranks, workers, progress, manifest).
"""

from __future__ import annotations

from pathlib import Path

from synthgen.engine import launch
from synthgen.engine.run_folder import RunFolder
from synthgen.errors import UserError
from synthgen.generate import check_backend_models
from synthgen.recipe import Recipe


def factory_class(recipe: Recipe) -> type:
    """The factory class that makes ``recipe``'s samples."""
    if recipe.sequence is not None:
        from synthgen.sequences import SequenceFactory

        return SequenceFactory
    from synthgen.images import ImageFactory

    return ImageFactory


def build_factory(recipe: Recipe, device: str | None = None, cpu_only: bool = False):
    """A factory for ``recipe`` in this process (models built here)."""
    return factory_class(recipe)(recipe, device=device, cpu_only=cpu_only)


def generate(recipe: Recipe, out: str | Path, workers: int = 1, progress: bool = True,
             loader_workers: int | None = None, task: tuple[int, int] | None = None,
             engine: str = "local", ray_address: str | None = None) -> dict:
    """Write every missing shard of ``recipe`` (of task ``K`` of ``N`` with ``task=(K, N)``) into
    ``out``, a folder or an fsspec URL (``s3://bucket/run``); returns the manifest. Checks the
    output location, the engine and the models first; how the shards are then made (workers,
    device stages, ``engine="ray"``): :func:`synthgen.engine.launch.make_shards`.
    """
    folder = RunFolder(out, recipe.output.storage_options)  # a bad URL fails here, before any work
    check_backend_models(recipe)  # missing weights fail here, before any work
    if engine not in ("local", "ray"):
        raise UserError(f"--engine {engine}: unknown engine; use --engine local or --engine ray")
    if engine == "ray" and task is not None:
        raise UserError("--engine ray makes every shard of the run (Ray balances them over the cluster); "
                        "drop --task, or use --engine local with --task")
    return launch.make_shards(factory_class(recipe), recipe, folder, workers, progress, loader_workers, task,
                              engine, ray_address)
