"""Samples/s of one recipe on 1 and 2 ranks, and how long the generation stage waits for input.

Each rank is a real torch.distributed process started by ``torchrun`` (the same code path as
``accelerate launch``); each writes only its own shards. The input-wait fraction is the share of
the generation stage's time spent waiting for the CPU stages (subjects, cameras, render, prompt),
summed over shards from their sidecars.

    python benchmarks/scaling.py [--samples 192] [--recipe recipes/quickstart.yaml] [overrides ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(ranks: int, recipe: str, samples: int, overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as out:
        launcher = [sys.executable, "-m", "synthgen"] if ranks == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "-m", "synthgen"]
        cmd = launcher + ["generate", recipe, "--out", out, "--num-samples", str(samples), "--workers", "1",
                          "--no-progress", *overrides]
        start = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, env=_env())
        wall = time.perf_counter() - start
        manifest = json.loads((Path(out) / "manifest.json").read_text())
        return {"ranks": ranks, "wall_s": wall, "samples_per_s": samples / wall,
                "input_wait": manifest.get("stats", {}).get("generate_input_wait_fraction")}


def _env() -> dict:
    import os

    return dict(os.environ, OMP_NUM_THREADS="1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=192)
    parser.add_argument("--recipe", default="recipes/quickstart.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value recipe overrides")
    args = parser.parse_args()
    rows = [run(n, args.recipe, args.samples, args.overrides) for n in (1, 2)]
    print(f"\n{'ranks':>5} | {'wall (s)':>8} | {'samples/s':>9} | {'input-wait':>10}")
    print("-" * 44)
    for r in rows:
        wait = f"{100 * r['input_wait']:.1f}%" if r["input_wait"] is not None else "n/a"
        print(f"{r['ranks']:>5} | {r['wall_s']:>8.1f} | {r['samples_per_s']:>9.1f} | {wait:>10}")
    print(f"2-rank / 1-rank throughput: {rows[1]['samples_per_s'] / rows[0]['samples_per_s']:.2f}x "
          "(wall time includes each rank's start-up: model load, GL probe)")


if __name__ == "__main__":
    main()
