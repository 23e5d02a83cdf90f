"""The device check: what a lent GPU must measure, in priority order, inside a time budget.

Steps, each in its own process (a hang, a crash or dynamo's state in one cannot touch the next)
with its own time limit; a step whose estimate no longer fits the budget is skipped:

1. ``sanity``: CUDA visible, an fp16 matrix product, a tiny-model ``synthgen generate`` with SAM
   on the device (the CLI, as a user runs it);
2. ``sd15_1cn``: SD1.5 + 1 ControlNet, 512², batch 16: reference and end to end
   (``benchmarks/diffusion.py``);
3. ``sam_share``: SAM ViT-B alone on the device over real rendered samples: kernel ms per image
   and its share beside the diffusion time per image of step 2;
4. ``sd15_2cn``: SD1.5 + 2 ControlNets;
5. ``sdxl_1cn``, then 6. ``flux_2cn``: only if the budget left covers their estimates.

Every finished measurement is printed at once as one JSON line on stdout and appended to
``OUT/results.jsonl``; a failed, timed-out or skipped step gives a line too (``status``,
``error``), and the next step runs. Logs go to stderr and ``OUT/gpu_check.log``.

The estimates (:data:`STEPS`) are for one H100/H200-class GPU and are NOT measurements: see
``ESTIMATES`` below for how each was made. ``--smoke`` runs the same steps on the CPU with the
tiny test models (64², 2 steps, batch 2); its figures say nothing about a GPU. Set
``SYNTHGEN_GPU_CHECK_FAIL=step[,step]`` to make steps fail on purpose (tests).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = "@@gpu-check-result "  # a child's measurement line on its stdout
FAIL_ENV = "SYNTHGEN_GPU_CHECK_FAIL"
RESERVE_S = 10  # kept back at the end of the budget: the driver stops cleanly before it runs out

log = logging.getLogger("benchmarks.gpu_check")


@dataclass(frozen=True)
class Step:
    name: str
    estimated_s: int   # one H100/H200-class GPU, cold caches (see ESTIMATES)
    smoke_s: int       # 2 shared CPU cores, tiny models (measured on the development machine)
    what: str


# How the GPU estimates were made (none is measured: no GPU has run synthgen yet).
# - Throughput: SD1.5's UNet costs ~0.8 TFLOP per 512² evaluation, its ControlNet ~0.35 more;
#   with classifier-free guidance that is ~2.3 TFLOP per image-step, 46 per 20-step image; at
#   ~40 % of an H100's ~990 dense fp16 TFLOP/s, ~8 img/s for SD1.5 + 1 ControlNet at batch 16
#   (public H100 figures for SD1.5 512² at batch 1 are ~50-60 it/s; batch 16 uses the chip better),
#   ~6 img/s with 2 ControlNets; SDXL 1024² is ~5x the work per step and 50 steps: ~0.6 img/s;
#   FLUX.1-dev 1024² (12 B transformer, 4096 image tokens, 28 steps, no CFG): ~0.3 img/s.
# - Start: a process importing torch + diffusers + synthgen ~10 s; building random full-size
#   weights on the GPU and saving them: SD1.5 ~15 s, SDXL ~40 s, FLUX ~150 s (24 GB to disk);
#   Anny's first build on a bare machine ~50 s (then cached).
# - torch.compile, cold (no inductor cache): UNet + ControlNet + VAE decoder ~90 s for SD1.5,
#   ~150 s for SDXL; the end-to-end phase recompiles after dynamo.reset() but hits the on-disk
#   FX graph cache: ~30 s.
# - End to end: 1 warm-up + 3 steady shards of 16; with random-weight SAM at the recipe's
#   min_iou most samples are redrawn (up to filter.max_attempts = 3): up to 3x the images.
STEPS = [
    Step("sanity", 75, 60, "CUDA visible, fp16 matmul, tiny synthgen generate with SAM on the device"),
    Step("sd15_1cn", 230, 110, "SD1.5 + 1 ControlNet 512², batch 16: reference and end to end"),
    Step("sam_share", 45, 40, "SAM ViT-B alone: kernel ms per image, share beside SD1.5's"),
    Step("sd15_2cn", 200, 110, "SD1.5 + 2 ControlNets 512², batch 16: reference and end to end"),
    Step("sdxl_1cn", 420, 150, "SDXL + 1 ControlNet 1024², 50 steps: reference and end to end"),
    Step("flux_2cn", 600, 150, "FLUX.1-dev + 2 ControlNets 1024², 28 steps: reference and end to end"),
]
BY_NAME = {s.name: s for s in STEPS}
NULL_FIELDS = ("reference_img_s", "end_to_end_img_s", "ratio", "gpu_busy", "busy_source", "sam_ms_per_img",
               "write_ms_per_img", "recompiles")


# --- the driver -----------------------------------------------------------------------------------
class Results:
    """Prints each line at once (flushed) and appends it to ``out/results.jsonl``."""

    def __init__(self, out: Path):
        self.path = out / "results.jsonl"
        self.lines: list[dict] = []

    def add(self, row: dict) -> None:
        row = {"config": row.get("step"), **{k: None for k in NULL_FIELDS}, **row}
        text = json.dumps(row)
        print(text, flush=True)
        with self.path.open("a") as f:
            f.write(text + "\n")
        self.lines.append(row)


def plan(names: list[str], budget_s: float, smoke: bool) -> tuple[list[Step], list[Step]]:
    """The steps that fit ``budget_s`` by their estimates, in priority order, and those that do not."""
    run, skip, used = [], [], 0
    for name in names:
        step = BY_NAME[name]
        cost = step.smoke_s if smoke else step.estimated_s
        if used + cost <= budget_s - RESERVE_S:
            run.append(step)
            used += cost
        else:
            skip.append(step)
    return run, skip


def dry_run(names: list[str], budget_s: float) -> int:
    """Print the plan (estimates for one H100/H200-class GPU); the last line is JSON."""
    run, skip = plan(names, budget_s, smoke=False)
    print(f"plan for a {budget_s:.0f} s budget on one H100/H200-class GPU (ESTIMATES, not measured; "
          f"{RESERVE_S} s kept in reserve):")
    print("step | estimated s | runs | what")
    print("--- | --- | --- | ---")
    for step in STEPS:
        if step.name in names:
            print(f"{step.name} | {step.estimated_s} | {'yes' if step in run else 'skipped: over budget'} | {step.what}")
    total = sum(s.estimated_s for s in run)
    print(f"estimated total of the steps that run: {total} s of {budget_s:.0f} s")
    print(json.dumps({"budget_s": budget_s, "estimated": True, "estimated_total_s": total,
                      "steps": [{"name": s.name, "estimated_s": s.estimated_s} for s in run],
                      "skipped": [{"name": s.name, "estimated_s": s.estimated_s} for s in skip]}), flush=True)
    return 0


def drive(opts) -> int:
    """Run the steps in order, each in a child process with its own limit, until the budget ends."""
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    results = Results(out)
    logfile = (out / "gpu_check.log").open("a")
    start = time.monotonic()
    deadline = start + opts.budget_s - RESERVE_S
    no_cuda = False
    for name in opts.names:
        step = BY_NAME[name]
        estimate = step.smoke_s if opts.smoke else step.estimated_s
        left = deadline - time.monotonic()
        if no_cuda:
            results.add({"step": name, "status": "skipped", "error": "no CUDA device (see the sanity line)"})
            continue
        if estimate > left:
            results.add({"step": name, "status": "skipped", "estimated_s": estimate,
                         "error": f"estimated {estimate} s > {left:.0f} s left of the budget"})
            continue
        limit = min(left, max(2 * estimate, estimate + 60) if not opts.smoke else max(4 * estimate, 240))
        rows = run_step(name, opts, limit, results, logfile)
        if name == "sanity" and not opts.smoke and rows and rows[-1].get("cuda") is False:
            no_cuda = True
    logfile.close()
    log.info("done in %.0f s; results in %s", time.monotonic() - start, results.path)
    return 0 if all(r.get("status") in ("ok", "skipped") for r in results.lines) else 1


def run_step(name: str, opts, limit: float, results: Results, logfile) -> list[dict]:
    """One step in a child process (its own session, killed whole at ``limit`` seconds)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--step", name, "--out", opts.out,
               "--models", opts.models] + (["--smoke"] if opts.smoke else [])
    log.info("step %s (limit %.0f s)", name, limit)
    t0 = time.monotonic()
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             bufsize=1, start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    rows: list[dict] = []
    reader = threading.Thread(target=_read, args=(child, name, rows, results, logfile, t0), daemon=True)
    reader.start()
    try:
        child.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        _kill(child)
        reader.join(5)
        results.add({"step": name, "status": "timeout", "elapsed_s": round(time.monotonic() - t0, 1),
                     "error": f"no end within its limit of {limit:.0f} s: killed"})
        return rows
    reader.join(10)
    if child.returncode != 0 or not rows:
        results.add({"step": name, "status": "failed", "elapsed_s": round(time.monotonic() - t0, 1),
                     "returncode": child.returncode, "error": _last_error(name, out=Path(opts.out))})
    return rows


def _read(child, name: str, rows: list, results: Results, logfile, t0: float) -> None:
    """Forward a child's output: measurement lines to the results, the rest to the log."""
    for line in child.stdout:
        if line.startswith(RESULT):
            row = {"step": name, "status": "ok", **json.loads(line[len(RESULT):]),
                   "elapsed_s": round(time.monotonic() - t0, 1)}
            rows.append(row)
            results.add(row)
        else:
            logfile.write(f"[{name}] {line}")
            logfile.flush()
            sys.stderr.write(f"[{name}] {line}")


def _kill(child) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(child.pid, sig)
            child.wait(timeout=wait)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


def _last_error(name: str, out: Path) -> str:
    """The last error-looking line the step logged."""
    lines = [line for line in (out / "gpu_check.log").read_text().splitlines() if line.startswith(f"[{name}] ")]
    for line in reversed(lines):
        if "Error" in line or "error" in line or "Exception" in line:
            return line[len(name) + 3:][:500]
    return (lines[-1][len(name) + 3:] if lines else "no output")[:500]


# --- the steps (in the child) ---------------------------------------------------------------------
def emit(row: dict) -> None:
    print(RESULT + json.dumps(row), flush=True)


def step_sanity(opts) -> None:
    """CUDA, an fp16 matrix product, and ``synthgen generate`` of a tiny recipe with SAM."""
    import torch

    cuda = torch.cuda.is_available()
    row: dict = {"config": "sanity", "torch": torch.__version__, "cuda": cuda,
                 "device": torch.cuda.get_device_name() if cuda else f"CPU, {os.cpu_count()} cores"}
    if not cuda and not opts.smoke:
        emit(row | {"error": "torch sees no CUDA device"})
        raise SystemExit(1)
    device, n, reps = ("cuda", 8192, 20) if cuda else ("cpu", 256, 3)
    a = torch.randn(n, n, device=device, dtype=torch.float16)
    (a @ a).sum().item()
    t0 = time.perf_counter()
    for _ in range(reps):
        b = a @ a
    float(b[0, 0])
    row["fp16_matmul_tflops"] = round(2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e12, 2)
    row.update(tiny_generate(opts, "cuda" if cuda else "cpu"))
    emit(row)


def tiny_generate(opts, device: str) -> dict:
    """``python -m synthgen generate`` of 8 samples with the tiny SD1.5 and SAM on ``device``."""
    import yaml

    from synthgen.testing.tiny_models import build_tiny_sam, build_tiny_sd15

    root = Path(opts.models).expanduser() / "sanity"
    models = build_tiny_sd15(root / "sd15", num_controlnets=1) if not (root / "sd15/base").is_dir() else \
        {"base": str(root / "sd15/base"), "controlnets": [str(root / "sd15/controlnet-0")]}
    sam = root / "sam"
    if not (sam / "config.json").is_file():
        build_tiny_sam(sam)
    recipe = {"name": "sanity", "seed": 0, "num_samples": 8, "image": {"width": 64, "height": 64},
              "backend": {"kind": "controlnet", "controlnet": {
                  "family": "sd15", "base_model": models["base"], "steps": 2, "batch_size": 4,
                  "controlnets": [{"model": models["controlnets"][0], "layer": "normal"}],
                  "device": device, "dtype": "fp16" if device == "cuda" else "fp32", "local_files_only": True}},
              "filter": {"sam": {"model": str(sam), "min_iou": 0.0, "min_keypoints_in_mask": 0.0}},
              "output": {"shard_size": 4}}
    work = root / "run"  # beside the models: --out keeps only the results, the log and env.txt
    (work / "recipe.yaml").parent.mkdir(parents=True, exist_ok=True)
    (work / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    data = work / "dataset"
    if data.exists():
        import shutil

        shutil.rmtree(data)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "synthgen", "generate", str(work / "recipe.yaml"), "--out",
                           str(data), "--workers", "1", "--loader-workers", "0", "--no-progress"],
                          cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"synthgen generate failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    sidecars = [json.loads(p.read_text()) for p in sorted((data / "shards").glob("shard-*.json"))]
    scored = [f for s in sidecars for f in s.get("filter", []) if f.get("sam_iou") is not None]
    if not scored:
        raise RuntimeError("synthgen generate wrote shards, but SAM scored no sample")
    return {"generate_seconds": round(seconds, 1), "generate_samples": sum(s["samples"] for s in sidecars),
            "sam_scored": len(scored), "sam_seconds": round(sum(s.get("sam_seconds", 0.0) for s in sidecars), 3)}


def step_config(name: str, opts) -> None:
    """Reference and end to end of one configuration (``benchmarks/diffusion.py``)."""
    from benchmarks import diffusion

    argv = ["--configs", name, "--models", opts.models, "--work", str(Path(opts.models) / "work")]
    if opts.smoke:
        argv += ["--smoke", "--batches", "2", "--shards", "2"]
    emit(diffusion.measure(name, diffusion.options(argv)))


def step_sam_share(opts) -> None:
    """SAM alone on real rendered samples of the SD1.5 recipe, ``batches`` batches of 16 (2 with
    ``--smoke``): ms per image (profiler kernel time on CUDA, wall time on a CPU) and its share
    of the device time per image beside SD1.5 + 1 ControlNet's reference (``results.jsonl``)."""
    import numpy as np
    import torch

    from benchmarks import diffusion
    from synthgen.filter import SampleFilter
    from synthgen.recipe import recipe_from_dict

    opts_d = diffusion.options(["--configs", "sd15_1cn", "--models", opts.models]
                               + (["--smoke"] if opts.smoke else []))
    root = Path(opts.models).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    models = {"base": "unused", "controlnets": ["unused"], "sam": str(diffusion.sam_for(root, opts.smoke))}
    recipe = recipe_from_dict(diffusion.bench_recipe("sd15_1cn", models, opts_d))
    batch, batches = opts_d.batch, 2 if opts.smoke else 4
    samples = diffusion.prepared_samples(recipe, batch)
    rng = np.random.default_rng(0)
    for sample in samples:  # a photo-like stand-in for the diffused image: the control image plus noise
        noise = rng.integers(-20, 20, sample["layers"]["controls"][0].shape)
        sample["image"] = np.clip(sample["layers"]["controls"][0] + noise, 0, 255).astype(np.uint8)
    sam_filter = SampleFilter(recipe.filter, opts_d.device, batch_size=batch)
    sam_filter.score(samples)  # warm-up
    cuda = opts_d.device == "cuda"
    profiler, error = diffusion._start_profiler() if cuda else (None, None)
    t0 = time.time_ns()
    for _ in range(batches):
        sam_filter.score(samples)
    if cuda:
        torch.cuda.synchronize()
    t1 = time.time_ns()
    kernels, error = diffusion._stop_profiler(profiler, error)
    images = batch * batches
    if kernels is not None:
        busy_ms = diffusion.busy_fraction(kernels, t0, t1) * (t1 - t0) / 1e6
        source = "profiler"
    else:
        busy_ms = (t1 - t0) / 1e6 if not cuda else sam_filter.aligner.timing.get("sam", 0.0) * 1000
        source = "cpu-wall" if not cuda else "cuda-events"
    sam_ms = busy_ms / images
    reference = _earlier_row(Path(opts.out), "sd15_1cn")
    diffusion_ms = 1000 / reference["reference_img_s"] if reference and reference.get("reference_img_s") else None
    emit({"config": "sam_share", "device": diffusion.device_name(opts_d.device), "images": images,
          "batch": batch, "sam_ms_per_img": round(sam_ms, 2), "sam_wall_ms_per_img": round((t1 - t0) / 1e6 / images, 2),
          "busy_source": source, "gpu_busy": round(busy_ms / ((t1 - t0) / 1e6), 3),
          "diffusion_ms_per_img": None if diffusion_ms is None else round(diffusion_ms, 2),
          "sam_share": None if diffusion_ms is None else round(sam_ms / (sam_ms + diffusion_ms), 4),
          "sam_share_of": "sd15_1cn reference_img_s" if diffusion_ms else "no sd15_1cn line",
          **({"profiler_error": error} if error else {})})


def _earlier_row(out: Path, config: str) -> dict | None:
    path = out / "results.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    rows = [r for r in rows if r.get("config") == config and r.get("status") == "ok"]
    return rows[-1] if rows else None


def child(name: str, opts) -> int:
    """Run step ``name`` in this process (called by the driver as a child)."""
    sys.path.insert(0, str(ROOT))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout)
    for noisy in ("diffusers", "transformers", "synthgen", "torch"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if name in {n.strip() for n in os.environ.get(FAIL_ENV, "").split(",")}:
        raise RuntimeError(f"step {name} failed on purpose ({FAIL_ENV}={os.environ[FAIL_ENV]})")
    if name == "sanity":
        step_sanity(opts)
    elif name == "sam_share":
        step_sam_share(opts)
    else:
        step_config(name, opts)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=600, help="total seconds (default 600)")
    parser.add_argument("--out", default="gpu-check", help="results.jsonl and gpu_check.log (default gpu-check/)")
    parser.add_argument("--models", default=None, help="random-weight models, built once and kept "
                        "(default ~/.cache/synthgen/bench-diffusion; OUT/models with --smoke)")
    parser.add_argument("--steps", default=",".join(s.name for s in STEPS),
                        help="comma-separated subset, run in the order given (default: all, priority order)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan with its estimates; run nothing")
    parser.add_argument("--smoke", action="store_true", help="the same steps on the CPU with tiny models")
    parser.add_argument("--step", help=argparse.SUPPRESS)  # the driver's child
    opts = parser.parse_args(argv)
    names = [n.strip() for n in opts.steps.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        parser.error(f"--steps: unknown {unknown}; choose from {list(BY_NAME)}")
    opts.names = names
    if opts.dry_run:
        return dry_run(names, opts.budget_s)
    opts.out = str(Path(opts.out).resolve())
    opts.models = str(Path(opts.models).expanduser().resolve()) if opts.models else (
        str(Path(opts.out) / "models") if opts.smoke else str(Path.home() / ".cache/synthgen/bench-diffusion"))
    if opts.step:
        return child(opts.step, opts)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s gpu_check: %(message)s", stream=sys.stderr)
    return drive(opts)


if __name__ == "__main__":
    sys.exit(main())
