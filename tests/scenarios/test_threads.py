"""Labels do not depend on how many threads a process computes with.

CPU kernels split reductions by thread count: on an AVX-512 machine a 1-thread and a 2-thread
process gave ``keypoints_2d`` 24.177703644594718 vs 24.177704338778373 until the label arithmetic
ran under ``synthgen.seeding.label_threads``. These tests run the quickstart recipe in processes
that start with different thread settings and compare the labels byte for byte. (CI also runs the
determinism tests a second time with OMP_NUM_THREADS=1: see .ci/run.)
"""

import os
import subprocess
import sys

import torch
import webdataset as wds

from synthgen.seeding import LABEL_THREADS, label_threads
from tests.fixtures.recipes import ROOT


def _quickstart_labels(out, env_threads: str | None, workers: int) -> dict[str, bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if env_threads is not None:
        env["OMP_NUM_THREADS"] = env_threads
    cmd = [sys.executable, "-m", "synthgen", "generate", "recipes/quickstart.yaml", "--out", str(out),
           "--num-samples", "8", "--workers", str(workers), "--no-progress", "output.shard_size=4"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    tars = sorted(str(p) for p in (out / "shards").glob("shard-*.tar"))
    return {r["__key__"]: r["json"] for r in wds.WebDataset(tars, shardshuffle=False)}


def test_quickstart_labels_are_byte_identical_for_any_thread_setting(tmp_path):
    unset = _quickstart_labels(tmp_path / "unset", None, workers=1)       # torch: one thread per core
    one = _quickstart_labels(tmp_path / "omp1", "1", workers=1)           # every pool has one thread
    pool = _quickstart_labels(tmp_path / "pool", None, workers=2)         # spawned workers
    assert len(unset) == 8
    assert one == unset
    assert pool == unset


def test_label_threads_sets_and_restores_the_count():
    before = torch.get_num_threads()
    with label_threads():
        assert torch.get_num_threads() == LABEL_THREADS
    assert torch.get_num_threads() == before
