"""The device check (``benchmarks/gpu_check.sh``): its plan fits the budget, and its driver records
every measurement at once, on stdout and in the results file, whatever a step does.

The smoke run is the real driver on the CPU with the tiny models (a step in a child process each,
the end-to-end run through ``synthgen generate``), cut to three steps to stay within a minute or two
on 2 cores; one of them is made to fail through ``SYNTHGEN_GPU_CHECK_FAIL``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
REQUIRED = ("config", "reference_img_s", "end_to_end_img_s", "ratio", "gpu_busy", "busy_source",
            "sam_ms_per_img", "write_ms_per_img", "recompiles")


def _run(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHON": sys.executable, **(env or {})})


def test_dry_run_plan_fits_600_s_with_sanity_then_sd15_and_sam_first():
    done = _run("--dry-run", "--budget-s", "600", timeout=60)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout.strip().splitlines()[-1])
    names = [step["name"] for step in plan["steps"]]
    assert names[:3] == ["sanity", "sd15_1cn", "sam_share"]
    assert plan["estimated_total_s"] == sum(step["estimated_s"] for step in plan["steps"]) <= 600
    assert all(step["estimated_s"] > 0 for step in plan["steps"])
    assert plan["estimated"] is True
    # what does not fit is named, not silently dropped: SDXL and FLUX need more than is left
    assert {s["name"] for s in plan["skipped"]} == {"sdxl_1cn", "flux_2cn"}
    assert "estimated" in done.stdout.lower() and "not measured" in done.stdout.lower()


def test_dry_run_smaller_budget_keeps_priority_order():
    done = _run("--dry-run", "--budget-s", "320", timeout=60)
    plan = json.loads(done.stdout.strip().splitlines()[-1])
    assert [s["name"] for s in plan["steps"]] == ["sanity", "sd15_1cn"]
    assert plan["estimated_total_s"] <= 320


def test_smoke_records_each_measurement_and_survives_a_failing_step(tmp_path):
    out = tmp_path / "check"
    done = _run("--smoke", "--out", str(out), "--steps", "sanity,sd15_1cn,sam_share",
                env={"SYNTHGEN_GPU_CHECK_FAIL": "sanity"})
    assert done.returncode == 1, done.stderr[-2000:]  # a step failed: the check says so
    printed = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    stored = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert printed == stored
    assert [r["config"] for r in printed] == ["sanity", "sd15_1cn", "sam_share"]
    for row in printed:
        assert set(REQUIRED) <= set(row), row

    failed, e2e, sam = printed
    assert failed["status"] == "failed" and "SYNTHGEN_GPU_CHECK_FAIL" in failed["error"]
    assert e2e["status"] == "ok" and sam["status"] == "ok"
    # the end-to-end row: real figures, labelled as CPU ones
    assert e2e["busy_source"] == "cpu-wall" and e2e["smoke"] is True
    assert e2e["reference_img_s"] > 0 and e2e["end_to_end_img_s"] > 0
    assert e2e["ratio"] == pytest.approx(e2e["end_to_end_img_s"] / e2e["reference_img_s"], rel=0.01)
    assert 0 < e2e["gpu_busy"] <= 1.0 + 1e-6
    assert e2e["sam_ms_per_img"] > 0 and e2e["write_ms_per_img"] >= 0
    assert e2e["recompiles"] == 0 and e2e["speed"] == {}  # nothing compiled on the CPU
    assert e2e["scheduler"] == "UniPCMultistepScheduler"  # the recipe's own scheduler
    assert e2e["steady_images"] == 2 * e2e["batch"]  # two steady one-batch shards, SAM keeps all
    # SAM's share: computed against the reference line written before it
    assert sam["sam_ms_per_img"] > 0 and 0 < sam["sam_share"] < 1
    assert sam["diffusion_ms_per_img"] == pytest.approx(1000 / e2e["reference_img_s"], rel=0.01)
    assert "sd15_1cn" in (out / "gpu_check.log").read_text()


def test_a_step_past_its_budget_is_skipped_and_recorded(tmp_path):
    out = tmp_path / "check"
    done = _run("--smoke", "--out", str(out), "--steps", "sdxl_1cn", "--budget-s", "30", timeout=120)
    assert done.returncode == 0, done.stderr
    (row,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert row["config"] == "sdxl_1cn" and row["status"] == "skipped" and "budget" in row["error"]
    assert set(REQUIRED) <= set(row)


def test_busy_fraction_counts_overlapping_kernels_once():
    sys.path.insert(0, str(ROOT))
    from benchmarks.diffusion import busy_fraction

    spans = np.array([[0, 10], [5, 20], [30, 40], [95, 120]], dtype=np.int64)
    # [0, 20] and [30, 40] and [95, 100] inside the window [0, 100]: 20 + 10 + 5
    assert busy_fraction(spans, 0, 100) == pytest.approx(0.35)
    assert busy_fraction(spans, 10, 30) == pytest.approx(0.5)
    assert busy_fraction(spans, 50, 90) == 0.0


def test_profiler_kernel_clock_is_the_wall_clock_of_the_sidecars():
    """The window comes from file times (wall clock, ns); the profiler's event times must be on
    the same clock for the kernel intervals to be cut by it. Checked here on CPU events."""
    import time

    import torch
    from torch.profiler import ProfilerActivity, profile

    before = time.time_ns()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.ones(64, 64) @ torch.ones(64, 64)
    after = time.time_ns()
    starts = [e.start_ns() for e in prof.profiler.kineto_results.events()]
    assert starts and all(before <= s <= after for s in starts)


def test_word_merges_make_known_words_one_token_and_keep_the_byte_level_ids(tmp_path):
    """The benchmark's random-weight tokenizers: prompts about as long in tokens as with CLIP's
    vocabulary (a byte-level one would send every prompt through compel), special ids unchanged."""
    from synthgen.testing.tiny_models import TINY_VOCAB_SIZE, write_clip_tokenizer

    plain = write_clip_tokenizer(tmp_path / "plain")
    words = write_clip_tokenizer(tmp_path / "words", ["standing", "photo", "elderly", "man"])
    text = "a photo of an elderly man, standing"
    assert len(plain) == TINY_VOCAB_SIZE and len(words) > TINY_VOCAB_SIZE
    assert words.bos_token_id == plain.bos_token_id == TINY_VOCAB_SIZE - 2
    assert words.eos_token_id == plain.eos_token_id == TINY_VOCAB_SIZE - 1
    ids = words(text)["input_ids"]
    assert len(ids) < len(plain(text)["input_ids"]) // 2
    assert len(words("standing")["input_ids"]) == 3  # <start> standing <end>
    same = plain.decode(plain(text)["input_ids"], skip_special_tokens=True)
    assert words.decode(ids, skip_special_tokens=True) == same  # the same text comes back


def test_anny_bodies_pose_without_nvidia_warp_as_on_a_device_machine():
    """The device wheels (benchmarks/gpu_wheels.sh) leave NVIDIA Warp out to fit the 64 MiB that
    travels: Anny must then load with its torch skinning and synthgen must pose a body."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['warp'] = None\n"
        "from synthgen.subjects.anny_body import load_anny_model\n"
        "model = load_anny_model()\n"
        "print(model._skinning_method.__module__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "anny.skinning.skinning"
