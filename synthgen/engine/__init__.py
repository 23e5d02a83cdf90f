"""The engine: runs any factory's samples into shards. It knows no sample kind.

- :mod:`.contract` the :class:`Factory` protocol every sample kind implements;
- :mod:`.streams` CPU stages ahead of the device (a prefetch thread or spawned DataLoader
  workers), device batches, timing;
- :mod:`.shards` whole shards from one sample stream: records, rejects, failures, error budget;
- :mod:`.launch` which process writes which shard (ranks, worker pools), progress, manifest.
- :mod:`.ray_engine` the same shards on a Ray cluster (``--engine ray``; ray imported only there).

``synthgen.run`` maps a recipe to its factory and calls :func:`.launch.make_shards`.
"""

from synthgen.engine.contract import Factory
from synthgen.engine.streams import finished_samples

__all__ = ["Factory", "finished_samples"]
