"""Samples/s of one recipe on 1 and 2 ranks, and how long the generation stage waits for input;
or (``--storage``) to a local folder and to an S3 endpoint side by side.

Each rank is a real torch.distributed process started by ``torchrun`` (the same code path as
``accelerate launch``); each writes only its own shards. The input-wait fraction is the share of
the generation stage's time spent waiting for the CPU stages (subjects, cameras, render, prompt),
summed over shards from their sidecars.

``--storage``: the same run (``--workers`` processes) into a temporary folder and into
``s3://bench/run`` on moto's S3 server over HTTP on this machine (through s3fs, as a real bucket
is reached), alternated ``--repeats`` times; the table gives median samples/s (the run's own
rate from its manifest, and the wall time of the command) and the object store's overhead.

    python benchmarks/scaling.py [--samples 192] [--recipe recipes/quickstart.yaml] [overrides ...]
    python benchmarks/scaling.py --storage [--samples 192] [--workers 2] [--repeats 3]
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


def run_storage(out: str, recipe: str, samples: int, workers: int, overrides: list[str], env: dict,
                read_manifest) -> dict:
    cmd = [sys.executable, "-m", "synthgen", "generate", recipe, "--out", out, "--num-samples", str(samples),
           "--workers", str(workers), "--no-progress", *overrides]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, env=env)
    wall = time.perf_counter() - start
    stats = read_manifest()["stats"]
    return {"wall": samples / wall, "run": stats["last_run_samples_per_second"]}


def storage_table(recipe: str, samples: int, workers: int, repeats: int, overrides: list[str]) -> None:
    """Local folder vs moto's S3 server, alternated, medians."""
    import logging
    import socket
    import statistics

    import s3fs
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the server's access log
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    keys = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    fs = s3fs.S3FileSystem(endpoint_url=keys["AWS_ENDPOINT_URL"], key="bench", secret="bench")
    fs.mkdir("bench")
    rows = {"local folder": [], "s3 (moto, HTTP)": []}
    try:
        for k in range(repeats):
            with tempfile.TemporaryDirectory() as out:
                rows["local folder"].append(run_storage(
                    out, recipe, samples, workers, overrides, _env(),
                    lambda: json.loads((Path(out) / "manifest.json").read_text())))
            url = f"s3://bench/run{k}"
            rows["s3 (moto, HTTP)"].append(run_storage(
                url, recipe, samples, workers, overrides, _env() | keys,
                lambda: json.loads(fs.cat_file(f"bench/run{k}/manifest.json"))))
    finally:
        server.stop()
    medians = {name: {key: statistics.median(r[key] for r in runs) for key in ("run", "wall")}
               for name, runs in rows.items()}
    print(f"\n{samples} samples, --workers {workers}, median of {repeats} alternated runs")
    print(f"{'output':>16} | {'samples/s (run)':>15} | {'samples/s (wall)':>16} | runs (run rate)")
    print("-" * 78)
    for name, m in medians.items():
        each = ", ".join(f"{r['run']:.1f}" for r in rows[name])
        print(f"{name:>16} | {m['run']:>15.1f} | {m['wall']:>16.1f} | {each}")
    local, s3 = medians["local folder"]["run"], medians["s3 (moto, HTTP)"]["run"]
    print(f"object-store overhead: {100 * (local - s3) / local:+.1f}% of the local rate (target <= 10%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=192)
    parser.add_argument("--recipe", default="recipes/quickstart.yaml")
    parser.add_argument("--storage", action="store_true", help="local folder vs S3 endpoint instead of ranks")
    parser.add_argument("--workers", type=int, default=2, help="--storage: worker processes per run")
    parser.add_argument("--repeats", type=int, default=3, help="--storage: runs of each, alternated")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value recipe overrides")
    args = parser.parse_args()
    if args.storage:
        storage_table(args.recipe, args.samples, args.workers, args.repeats, args.overrides)
        return
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
