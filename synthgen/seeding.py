"""Per-sample random streams.

Every random draw of sample ``i`` comes from ``numpy.random.Generator``s derived from
``(recipe seed, i, stream)`` alone, so sample i is the same whatever the number of workers,
their order, the ``--num-samples`` split or a resume. Each stage owns a named stream, so
adding a draw to one stage never shifts another stage's numbers.
"""

from __future__ import annotations

import numpy as np

STREAMS = {
    "shape": 1,
    "pose": 2,
    "placement": 3,
    "camera": 4,
    "appearance": 5,
    "background": 6,
    "prompt": 7,
    "generate": 8,
}


def sample_seed(recipe_seed: int, index: int) -> int:
    """The 63-bit seed recorded in sample ``index``'s labels (and used by torch generators)."""
    state = np.random.SeedSequence([recipe_seed, index]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


def sample_rng(recipe_seed: int, index: int, stream: str) -> np.random.Generator:
    """Independent generator for one stage of one sample."""
    if stream not in STREAMS:
        raise KeyError(f"unknown random stream {stream!r}; known: {sorted(STREAMS)}")
    return np.random.default_rng(np.random.SeedSequence([recipe_seed, index, STREAMS[stream]]))
