"""Per-sample random streams.

Every random draw of sample ``i`` comes from ``numpy.random.Generator``s derived from
``(recipe seed, i, stream)`` alone, so sample i is the same whatever the number of workers,
their order, the ``--num-samples`` split or a resume. Each stage owns a named stream, so
adding a draw to one stage never shifts another stage's numbers. A rejected sample is redrawn
from :func:`attempt_seed` (attempt 1, 2, ...) in place of the recipe seed: its redraws, too,
depend on (recipe seed, i) alone.

Bits, not just draws: the arithmetic that feeds labels (body-model forward, camera framing,
projection, rasterising) runs under :func:`label_threads`, one torch intra-op thread in every
process. CPU kernels split their reductions by thread count (a sample's ``keypoints_2d`` differ
in the last bits between a 1- and a 2-thread process: benchmarks/README.md), so without it a
sample would depend on how many workers or ranks share the cores.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

LABEL_THREADS = 1
REDRAW_TAG = 0x5ED4A3  # keeps redraw seeds apart from any (recipe seed, index) pair
MEMBER_TAG = 0x6A0B5  # and group members' seeds apart from both

STREAMS = {
    "shape": 1,
    "pose": 2,
    "placement": 3,
    "camera": 4,
    "appearance": 5,
    "background": 6,
    "prompt": 7,
    "imu_noise": 8,
    "group": 9,
    "group_placement": 10,
    "scene": 11,
    "light": 12,
}


def seed63(*entropy: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence hashing)."""
    state = np.random.SeedSequence(list(entropy)).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


def attempt_seed(recipe_seed: int, attempt: int) -> int:
    """The seed every stream of sample attempt ``attempt`` is drawn from: the recipe seed for the
    first attempt, an independent 63-bit seed for each redraw of a rejected sample."""
    return recipe_seed if attempt == 0 else seed63(recipe_seed, REDRAW_TAG, attempt)


def member_seed(seed: int, member: int) -> int:
    """The seed member ``member`` of a group is drawn from (as :func:`attempt_seed` is for
    attempts): ``seed`` itself for the first member, so a group of one is the single subject."""
    return seed if member == 0 else seed63(seed, MEMBER_TAG, member)


def sample_seed(recipe_seed: int, index: int) -> int:
    """The 63-bit seed recorded in sample ``index``'s labels (and used by torch generators)."""
    return seed63(recipe_seed, index)


def sample_rng(recipe_seed: int, index: int, stream: str) -> np.random.Generator:
    """Independent generator for one stage of one sample."""
    if stream not in STREAMS:
        raise KeyError(f"unknown random stream {stream!r}; known: {sorted(STREAMS)}")
    return np.random.default_rng(np.random.SeedSequence([recipe_seed, index, STREAMS[stream]]))


@contextlib.contextmanager
def label_threads() -> Iterator[None]:
    """Run the block with ``LABEL_THREADS`` torch intra-op threads, then restore the count.

    torch's setting is per OS thread under OpenMP, so a CPU-stage thread can hold it while the
    main thread diffuses with all its threads.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(LABEL_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)
