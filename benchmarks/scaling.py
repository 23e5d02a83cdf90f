"""Samples/s of one recipe on 1 and 2 ranks, and how long the generation stage waits for input;
or (``--storage``) to a local folder and to an S3 endpoint side by side.

Each rank is a real torch.distributed process started by ``torchrun`` (the same code path as
``accelerate launch``); each writes only its own shards. The input-wait fraction is the share of
the generation stage's time spent waiting for the CPU stages (subjects, cameras, render, prompt),
summed over shards from their sidecars.

``--storage``: the same run (``--workers`` processes) into a temporary folder and into
``s3://bench/run`` on moto's S3 server over HTTP on this machine (in a process of its own, standing
for a remote service; through s3fs, as a real bucket is reached), alternated ``--repeats`` times;
the table gives each run, mean and spread of samples/s (the run's own rate from its manifest, and
the wall time of the command) and the object store's overhead.

    python benchmarks/scaling.py [--samples 192] [--recipe recipes/quickstart.yaml] [overrides ...]
    python benchmarks/scaling.py --storage [--samples 320] [--workers 2] [--repeats 3]

``--engine ray`` compares the Ray engine with the local one instead (see :func:`ray_main`):

    python benchmarks/scaling.py --engine ray [--samples 192] [--shard-size 4] [--delay S] [--repeats 3]
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
                "input_wait": manifest.get("stats", {}).get("device_input_wait_fraction")}


def _env() -> dict:
    import os

    return dict(os.environ, OMP_NUM_THREADS="1")


def run_storage(out: str, recipe: str, samples: int, workers: int, overrides: list[str], env: dict,
                read_manifest) -> dict:
    cmd = [sys.executable, "-m", "synthgen", "generate", recipe, "--out", out, "--num-samples", str(samples),
           "--workers", str(workers), "--no-progress", *overrides]
    import resource

    def cpu() -> float:  # this process's waited-for descendants: the run, its workers
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    start, cpu_start = time.perf_counter(), cpu()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, env=env)
    wall, used = time.perf_counter() - start, cpu() - cpu_start
    stats = read_manifest()["stats"]
    return {"wall": samples / wall, "run": stats["last_run_samples_per_second"], "cpu_ms": 1000 * used / samples}


class MotoServer:
    """moto's S3 server in a process of its own (``python -m moto.server``), standing for a remote
    service: its CPU time is measured, not hidden in the benchmark's process."""

    def __init__(self):
        import socket

        import psutil

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.ps = psutil.Process(self.proc.pid)
        self.keys = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.port}", "AWS_ACCESS_KEY_ID": "bench",
                     "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
        import s3fs

        self.fs = s3fs.S3FileSystem(endpoint_url=self.keys["AWS_ENDPOINT_URL"], key="bench", secret="bench")
        deadline = time.monotonic() + 60
        while True:
            try:
                self.fs.mkdir("bench")
                break
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.2)

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def _mean_spread(values: list[float]) -> tuple[float, float]:
    import statistics

    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def storage_table(recipe: str, samples: int, workers: int, repeats: int, overrides: list[str]) -> None:
    """Local folder vs moto's S3 server (its own process), alternated; each run, mean and spread."""
    server = MotoServer()
    rows = {"local folder": [], "s3 (moto, HTTP)": []}
    server_cpu: list[float] = []
    try:
        for k in range(repeats):
            with tempfile.TemporaryDirectory() as out:
                rows["local folder"].append(run_storage(
                    out, recipe, samples, workers, overrides, _env(),
                    lambda: json.loads((Path(out) / "manifest.json").read_text())))
            url, before = f"s3://bench/run{k}", server.cpu_seconds()
            rows["s3 (moto, HTTP)"].append(run_storage(
                url, recipe, samples, workers, overrides, _env() | server.keys,
                lambda: json.loads(server.fs.cat_file(f"bench/run{k}/manifest.json"))))
            server_cpu.append(server.cpu_seconds() - before)
            server.fs.rm(f"bench/run{k}", recursive=True)  # moto keeps objects in memory
            print(f"  round {k + 1}: local {rows['local folder'][-1]['run']:.2f}, "
                  f"s3 {rows['s3 (moto, HTTP)'][-1]['run']:.2f} samples/s", flush=True)
    finally:
        server.stop()
    print(f"\n{samples} samples of {recipe}, --workers {workers}, {repeats} alternated rounds (local, s3, ...); "
          f"the S3 endpoint is moto's server in its own process on the same 2 cores, standing for a remote "
          f"service (it used {sum(server_cpu) / len(server_cpu):.1f} CPU s per run here, which a remote "
          f"store would not take from the workers)")
    print(f"{'output':>16} | {'samples/s (run), mean ± sd':>26} | {'samples/s (wall), mean ± sd':>27} | "
          f"each run (run rate)")
    print("-" * 104)
    means = {}
    for name, runs in rows.items():
        run_mean, run_sd = _mean_spread([r["run"] for r in runs])
        wall_mean, wall_sd = _mean_spread([r["wall"] for r in runs])
        means[name] = run_mean
        each = ", ".join(f"{r['run']:.2f}" for r in runs)
        print(f"{name:>16} | {run_mean:>17.2f} ± {run_sd:<6.2f} | {wall_mean:>18.2f} ± {wall_sd:<6.2f} | {each}")
    cpu = {name: _mean_spread([r["cpu_ms"] for r in runs]) for name, runs in rows.items()}
    print("CPU per sample, the run's processes (less sensitive to company on the machine than rates): " +
          ", ".join(f"{name} {m:.0f} ± {sd:.0f} ms" for name, (m, sd) in cpu.items()) +
          f"; the S3 server {1000 * sum(server_cpu) / len(server_cpu) / samples:.0f} ms more")
    local, s3 = means["local folder"], means["s3 (moto, HTTP)"]
    pairs = [100 * (a["run"] - b["run"]) / a["run"] for a, b in zip(rows["local folder"], rows["s3 (moto, HTTP)"])]
    pair_mean, pair_sd = _mean_spread(pairs)
    print(f"object-store overhead: {100 * (local - s3) / local:+.1f}% of the mean local rate; per round "
          f"{', '.join(f'{x:+.1f}%' for x in pairs)} (mean {pair_mean:+.1f} ± {pair_sd:.1f}); target <= 10%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=None,
                        help="default: 192; --storage: 320 (the quickstart's own)")
    parser.add_argument("--recipe", default="recipes/quickstart.yaml")
    parser.add_argument("--storage", action="store_true", help="local folder vs S3 endpoint instead of ranks")
    parser.add_argument("--workers", type=int, default=2, help="--storage: worker processes per run")
    parser.add_argument("--repeats", type=int, default=3, help="--storage, --engine ray: runs of each, alternated")
    parser.add_argument("--engine", choices=["local", "ray"], default="local",
                        help="ray: the Ray engine beside the local one, balanced and with a slowed node")
    parser.add_argument("--shard-size", type=int, default=4, help="--engine ray: samples per shard (many "
                        "shards, so that balancing can act)")
    parser.add_argument("--delay", type=float, default=None, help="--engine ray: CPU seconds added per "
                        "sample on the slowed node (default: one sample's measured time, so it is about 2x slower)")
    parser.add_argument("--only", choices=["balanced", "slowed"], default=None,
                        help="--engine ray: just one half (slowed: --delay or 0.065 s by default)")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value recipe overrides")
    args = parser.parse_args()
    if args.samples is None:
        args.samples = 320 if args.storage else 384 if args.engine == "ray" else 192
    if args.storage:
        storage_table(args.recipe, args.samples, args.workers, args.repeats, args.overrides)
        return
    if args.engine == "ray":
        ray_main(args)
        return
    rows = [run(n, args.recipe, args.samples, args.overrides) for n in (1, 2)]
    print(f"\n{'ranks':>5} | {'wall (s)':>8} | {'samples/s':>9} | {'input-wait':>10}")
    print("-" * 44)
    for r in rows:
        wait = f"{100 * r['input_wait']:.1f}%" if r["input_wait"] is not None else "n/a"
        print(f"{r['ranks']:>5} | {r['wall_s']:>8.1f} | {r['samples_per_s']:>9.1f} | {wait:>10}")
    print(f"2-rank / 1-rank throughput: {rows[1]['samples_per_s'] / rows[0]['samples_per_s']:.2f}x "
          "(wall time includes each rank's start-up: model load, GL probe)")


# --- --engine ray ---------------------------------------------------------------------------------
def _generate(recipe: str, out: str, samples: int, shard_size: int, overrides: list[str], extra: list[str],
              env: dict | None = None, background: bool = False, core: int | None = None):
    pinned = ["taskset", "-c", str(core)] if core is not None else []  # one "node" per core
    cmd = [*pinned, sys.executable, "-m", "synthgen", "generate", recipe, "--out", out, "--num-samples", str(samples),
           f"output.shard_size={shard_size}", "--no-progress", *overrides, *extra]
    if background:
        return subprocess.Popen(cmd, cwd=ROOT, env=env or _env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    result = subprocess.run(cmd, cwd=ROOT, env=env or _env(), capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
    return result.stderr


def _timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def _span(out: str) -> float:
    """Seconds from the first shard's start to the last shard's commit, from the sidecars: the
    generation itself, without process start-up, model loading or joining a cluster."""
    sidecars = [json.loads(p.read_text()) for p in Path(out, "shards").glob("*.json")]
    return max(i["finished_at"] for i in sidecars) - min(i["finished_at"] - i["seconds"] for i in sidecars)


def _static_split(recipe: str, out: str, samples: int, shard_size: int, overrides: list[str], delay: float) -> None:
    """Two independent tasks at once (``--task K/2``: shards k % 2 == K), each pinned to a core of
    its own, the second on the slowed "node" (the test-only extra CPU per sample in its
    environment), then ``finalize``."""
    slow = dict(_env(), SYNTHGEN_TEST_SAMPLE_CPU_S=str(delay))
    runs = [_generate(recipe, out, samples, shard_size, overrides, ["--task", f"{k}/2", "--workers", "1"],
                      env=slow if k == 1 else None, background=True, core=k) for k in range(2)]
    for run in runs:
        _, err = run.communicate()
        if run.returncode != 0:
            raise RuntimeError(f"a task failed:\n{err[-3000:]}")
    subprocess.run([sys.executable, "-m", "synthgen", "finalize", out], cwd=ROOT, env=_env(), check=True,
                   capture_output=True)


def ray_main(args) -> None:
    """The Ray engine beside the local one on this machine (2 cores), ``--repeats`` alternated rounds:

    1. balanced: the local engine (``--workers 2``), the Ray engine on a running two-node cluster
       (one CPU each) and on a local Ray it starts itself;
    2. one node slowed on purpose (``SYNTHGEN_TEST_SAMPLE_CPU_S``, test-only: CPU seconds spent
       per sample on that node): the static split (two ``--task K/2`` processes, the second
       slowed) against the Ray engine on a cluster whose second worker node is slowed. Each "node"
       (task, Ray worker node) is pinned to a core of its own (taskset), as on two machines; the
       Ray head takes no work (``--num-cpus 0``) and floats. Ray hands shards out as they finish,
       so the slow node makes fewer.

    Two clocks per run: ``wall`` (the command: process start-up, model load, joining the cluster,
    every shard) and ``span`` (first shard started to last shard committed, from the sidecars:
    the generation alone, where balancing acts). Each cluster is started before the timed runs
    and serves all of its rounds (every run is a new Ray job with its own worker processes).
    Every run's shards are checked byte-identical to the first local run's."""

    sys.path.insert(0, str(ROOT))
    from synthgen.testing.ray_cluster import LocalCluster

    common = (args.recipe, args.samples, args.shard_size, args.overrides)
    rows: dict[str, dict[str, list[float]]] = {}
    reference: dict[str, bytes] = {}
    per_node: dict[str, list[list[int]]] = {}  # shards made on each node, per run
    slowdown: list[float] = []  # the slowed static task's span over the other's (same shard count)

    def case(name: str, action) -> None:
        with tempfile.TemporaryDirectory() as out:
            wall = _timed(lambda: action(out))
            span = _span(out)
            manifest = json.loads(Path(out, "manifest.json").read_text())
            ray_stats = manifest.get("stats", {}).get("ray")
            if ray_stats:  # the Ray engine's own count: a slow node makes fewer shards
                per_node.setdefault(name, []).append(sorted(ray_stats["shards_per_node"].values(), reverse=True))
            if name.startswith("static"):  # how much slower the slowed task really was: its own span
                per_task = [[], []]  # (start, end) of each task's shards; equal shard counts
                for p in Path(out, "shards").glob("shard-*.json"):
                    info = json.loads(p.read_text())
                    per_task[int(p.stem.split("-")[1]) % 2].append(
                        (info["finished_at"] - info["seconds"], info["finished_at"]))
                fast, slow = (max(e for _, e in t) - min(s for s, _ in t) for t in per_task)
                slowdown.append(slow / fast)
                print(f"  slowed task: its shards took {slowdown[-1]:.2f}x the other's span "
                      f"({slow:.1f} s against {fast:.1f} s)", flush=True)
            shards = {p.name: p.read_bytes() for p in sorted(Path(out, "shards").glob("*.tar"))}
            if not reference:
                reference.update(shards)
            elif shards != reference:
                raise RuntimeError(f"{name}: shards differ from the local engine's")
        rows.setdefault(name, {"wall": [], "span": []})
        rows[name]["wall"].append(wall)
        rows[name]["span"].append(span)
        print(f"  {name}: wall {wall:.1f} s, span {span:.1f} s", flush=True)

    def on(cluster):
        return lambda out: _generate(*common[:1], out, *common[1:], ["--engine", "ray", "--ray-address",
                                                                       cluster.address], env=cluster.env)

    cluster = LocalCluster()
    try:
        for _ in range(args.repeats if args.only != "slowed" else 0):
            case("local engine, 2 workers", lambda out: _generate(*common[:1], out, *common[1:], ["--workers", "2"]))
            case("ray, 2-node cluster running", on(cluster))
            case("ray, local Ray started for the run", lambda out: _generate(
                *common[:1], out, *common[1:], ["--engine", "ray"], env=dict(_env(), RAY_AUTH_MODE="disabled")))
    finally:
        cluster.stop()
    if args.only == "balanced":
        _ray_table(args, rows, per_node)
        return
    # one sample's CPU seconds on one core: the balanced local runs' fastest span x 2 workers / samples
    balanced = rows.get("local engine, 2 workers")
    per_sample = 2 * min(balanced["span"]) / args.samples if balanced else 0.065
    delay = args.delay if args.delay is not None else round(per_sample, 3)
    print(f"slowed node: +{delay:.3f} CPU s per sample (one sample takes ~{per_sample:.3f} s on a core: about "
          f"{1 + delay / per_sample:.1f}x slower)", flush=True)
    cluster = LocalCluster(node2_cpu_s=delay, pin=True)
    try:
        for _ in range(args.repeats):
            case("static split (--task K/2), one slowed", lambda out: _static_split(*common[:1], out, *common[1:],
                                                                                    delay))
            case("ray, 2-node cluster, one slowed", on(cluster))
    finally:
        cluster.stop()
    _ray_table(args, rows, per_node)
    print("the slowed static task's span over the other's (how much slower that node really was): " +
          ", ".join(f"{x:.2f}x" for x in slowdown))


def _ray_table(args, rows: dict[str, dict[str, list[float]]], per_node: dict[str, list[list[int]]]) -> None:
    import statistics

    first = rows.get("local engine, 2 workers") or next(iter(rows.values()))
    base = {k: statistics.mean(first[k]) for k in ("wall", "span")}
    print(f"\n{args.samples} samples, shards of {args.shard_size}, {args.recipe}; {args.repeats} alternated rounds; "
          f"all runs byte-identical. wall: the command; span: first shard started to last committed")
    print(f"{'case':<40} | {'wall (s), each run':>22} | {'span (s), each run':>22} | {'local/this, wall':>16} | "
          f"{'span':>5}")
    print("-" * 118)
    for name, clocks in rows.items():
        walls, spans = clocks["wall"], clocks["span"]
        print(f"{name:<40} | {', '.join(f'{w:.1f}' for w in walls):>22} | {', '.join(f'{w:.1f}' for w in spans):>22} | "
              f"{base['wall'] / statistics.mean(walls):>15.2f}x | {base['span'] / statistics.mean(spans):>4.2f}x")
    static, slowed = rows.get("static split (--task K/2), one slowed"), rows.get("ray, 2-node cluster, one slowed")
    for clock in ("span", "wall") if static else ():
        each = [a / b for a, b in zip(static[clock], slowed[clock])]
        print(f"one node slowed, {clock}: the Ray engine finishes {', '.join(f'{x:.2f}x' for x in each)} sooner than "
              f"the static split (mean {statistics.mean(each):.2f}x; target >= 1.3x)")
    for name, counts in per_node.items():
        print(f"shards per node, {name}: " + "; ".join(" / ".join(map(str, c)) for c in counts))


if __name__ == "__main__":
    main()
