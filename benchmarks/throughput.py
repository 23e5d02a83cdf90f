"""Where one worker's CPU time per sample goes (quickstart recipe), and throughput against a naive loop.

Prints, in order:

1. a header: date, ``nproc``, load average, thread settings, render backend;
2. the per-stage table: ms per sample (median and inter-quartile range over the measured samples,
   after a warm-up chunk) in ONE process with one torch thread and one llvmpipe thread (what a
   worker of a 2-worker pool on 2 cores has). The stages are timed by calling, one at a time, the
   functions :class:`synthgen.images.ImageFactory` calls (body model, camera framing, raster,
   layer derivation, labels, shaded backend, filter, encoders, tar write); every sample's encoded
   record is then compared byte for byte with what the factory itself makes
   (``pose_subjects`` + ``prepare`` + ``finish`` + ``encode``), timed on the same samples;
3. bytes per sample crossing from a loader process to the device process: the whole prepared
   sample (before) and what ``ImageFactory.transferable`` sends (after), pickled, for the
   quickstart (shaded) and humanwild_sd15 (ControlNet) recipes (``--bytes-only``: just this);
4. throughput, measured the same way on both sides and interleaved (``--repeats``, each repeat: the
   naive loop, then generate for each ``--workers``): the naive per-sample loop (one process, Anny
   at batch 1, a second render pass, PIL's default PNG/JPEG encoders and webdataset's default
   encoder) and :func:`synthgen.run.generate`, each in a fresh process with the caller's
   environment (default threads) as a user would run them, start-up left out of both: the naive
   loop is timed after 2 warm-up samples; generate gives the marginal rate N / (t(2N) - t(N)),
   which cancels its start-up (imports, body model, GL probe, worker spawn) but differences two
   wall times that each vary by seconds, and the steady rate from the 2N run's shard sidecars
   (``workers x shard size / median shard time``, each worker's first shard left out). Ratios are
   taken within a repeat (the neighbours in time share the machine's load) and printed per repeat,
   then as median (min-max); so are CPU ms per sample (process CPU, all threads and workers), whose
   ratio (2 x naive / generate with 2 workers) load moves far less than wall rates;
5. Anny model start (cold in an empty cache, skipped with --quick/--skip-cold; warm) and peak
   resident memory.

    python benchmarks/throughput.py [--quick] [--samples 64] [--gen-samples 256] [--skip-cold] [--repeats 3]

``--quick`` (under ~2 minutes on 2 idle cores): 32 measured samples, 16 naive samples, generate on
32/64 samples in shards of 16 (the full run: 64, 64, 256/512 in the recipe's shards of 64). Numbers on a shared machine are noisy: compare medians, and rerun
before trusting a difference under ~10%.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RECIPE = ROOT / "recipes" / "quickstart.yaml"
_USER_ENV = dict(os.environ)  # generate runs get the caller's environment, as the CLI would

import numpy as np

_START_SNIPPET = """
import time, torch
t = time.perf_counter()
from synthgen.subjects.anny_body import load_anny_model
load_anny_model()
print(time.perf_counter() - t)
"""

# One generate run in a fresh process: only the generate() call is timed.
_GENERATE_SNIPPET = """
import json, resource, sys, tempfile, time
from pathlib import Path
from synthgen.recipe import load_recipe
from synthgen.run import generate
recipe = load_recipe(sys.argv[1], json.loads(sys.argv[2]))
def cpu():
    return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))
with tempfile.TemporaryDirectory() as out:
    start, cpu_start = time.perf_counter(), cpu()
    manifest = generate(recipe, out, workers=int(sys.argv[3]), progress=False)
    seconds, cpu_seconds = time.perf_counter() - start, cpu() - cpu_start
    shards = [json.loads(p.read_text()) for p in sorted(Path(out, "shards").glob("*.json"))]
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so it would report the parent's peak
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")]
rss_self = int(hwm[0].split()[1]) / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "written": manifest["num_samples_written"],
                  "shard_seconds": [s["seconds"] for s in shards], "shard_sizes": [s["stop"] - s["start"] for s in shards],
                  "errors": manifest["num_errors"], "rss_self_mb": rss_self,
                  "rss_children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


# The naive loop in a fresh process with the caller's environment (default threads), as a user
# would run it: the same conditions as a generate run; only the loop after its warm-up is timed.
_NAIVE_SNIPPET = """
import json, sys
sys.path.insert(0, sys.argv[1])
from throughput import naive_baseline
from synthgen.recipe import load_recipe
print(json.dumps(naive_baseline(load_recipe(sys.argv[2], json.loads(sys.argv[3])), int(sys.argv[4]))))
"""


# --- start-up ----------------------------------------------------------------------------------
def anny_start_seconds(cache_dir: str) -> float:
    env = dict(_USER_ENV, ANNY_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, "-c", _START_SNIPPET], env=env, capture_output=True,
                         text=True, check=True, cwd=ROOT)
    return float(out.stdout.strip().splitlines()[-1])


def _warm_cache() -> Path:
    from synthgen.subjects.anny_body import cache_dir

    return cache_dir()


# --- per-stage table ---------------------------------------------------------------------------
class Clock:
    """Wall (perf_counter) and process CPU (process_time, all threads) seconds per stage and sample."""

    def __init__(self):
        self.wall: dict[str, dict[int, float]] = defaultdict(dict)
        self.cpu: dict[str, dict[int, float]] = defaultdict(dict)
        self.order: list[str] = []

    @contextmanager
    def __call__(self, stage: str, indices, share: int = 1):
        """Time the block; ``share`` samples split it (a batch): each gets 1/share of it."""
        w, c = time.perf_counter(), time.process_time()
        yield
        dw, dc = (time.perf_counter() - w) / share, (time.process_time() - c) / share
        if stage not in self.order:
            self.order.append(stage)
        for i in ([indices] if isinstance(indices, int) else indices):
            self.wall[stage][i] = self.wall[stage].get(i, 0.0) + dw
            self.cpu[stage][i] = self.cpu[stage].get(i, 0.0) + dc

    def ms(self, stages: list[str], keep: list[int], cpu: bool = False) -> np.ndarray:
        """(len(keep),) ms per sample, summed over ``stages``."""
        table = self.cpu if cpu else self.wall
        return np.array([sum(table[s].get(i, 0.0) for s in stages) for i in keep]) * 1e3


def stage_table(recipe, samples: int, warmup: int) -> tuple[list[tuple], list[str]]:
    """Rows (label, median ms, p25, p75, cpu median ms, leaf) and notes."""
    from synthgen import encode
    from synthgen.engine.run_folder import RunFolder, ShardTask
    from synthgen.cameras import sample_camera, sample_viewpoint_camera
    from synthgen.filter import cheap_checks
    from synthgen.images import CAMERA_MIN_HEIGHT_M, SUBJECT_ID, ImageFactory
    from synthgen.render import rasterize, resolve_backend
    from synthgen.render import layers as L
    from synthgen.seeding import label_threads, sample_rng, sample_seed
    from synthgen.subjects import anny_body

    r, out_cfg = recipe, recipe.output
    factory = ImageFactory(recipe)
    model = factory.subject_model
    batch = anny_body.BATCH if r.subject.model == "anny" else 16
    indices = list(range(warmup + samples))
    keep = indices[warmup:]
    clock, reference = Clock(), Clock()
    records, mismatched = {}, set()

    for start in range(0, len(indices), batch):
        chunk = indices[start:start + batch]
        # 1. body model, as pose_subjects: draws, then one forward of a padded batch
        with label_threads():
            with clock("body model: draw (phenotype, pose)", chunk, len(chunk)):
                draws = [model.draw(r.seed, i) for i in chunk]
            with clock(f"body model: forward (batch of {batch})", chunk, len(chunk)):
                subjects = model.pose(draws)
        for index, subject in zip(chunk, subjects):
            s = {"index": index, "attempt": 0, "seed": sample_seed(r.seed, index), "subject": subject,
                 "subjects": [subject], "placements": [np.zeros(3)]}
            with label_threads():
                # 2. camera framing, as prepare
                with clock("camera framing", index):
                    rng = sample_rng(r.seed, index, "camera")
                    if r.camera.mode == "viewpoint":
                        camera, drawn = sample_viewpoint_camera(rng, r.camera, subject.vertices, r.image.width,
                                                                r.image.height)
                    else:
                        points = subject.vertices if r.subject.kind == "object" else subject.vertices[::7]
                        camera, drawn = sample_camera(rng, r.camera, points, r.image.width, r.image.height,
                                                      CAMERA_MIN_HEIGHT_M if r.scene.has_geometry else None)
                s.update(camera=camera, camera_draw=drawn)
                if r.scene.has_geometry:  # 2b. scene geometry, then one render of subject + scene (ImageFactory.render)
                    with clock("scene: build (room/yard/ground mesh)", index):
                        s["scene"] = factory.scene(sample_rng(r.seed, index, "scene"), [np.zeros(3)], camera)
                    with clock("render with scene (raster, layers, keypoints, shadow map)", index):
                        factory.render(s)
                    with clock("labels (view record)", index):
                        s["labels"] = factory.labels(s)
                else:
                    # 3. raster and 4. layer derivation, as ImageFactory.render and render_layers
                    with clock(f"raster ({resolve_backend(r.render.backend)}: to_camera + rasterize)", index):
                        vertices_cam = camera.to_camera(subject.vertices)
                        faces, face_parts = model.mesh(subject)
                        raw = rasterize(vertices_cam.astype(np.float32), faces, camera.K, camera.width,
                                        camera.height, r.render.backend)
                    tri, mask = raw["triangle_id"], raw["mask"]
                    with clock("layers: parts (face -> part id)", index):
                        parts = np.zeros(tri.shape, dtype=np.uint8)
                        parts[mask] = face_parts[tri[mask]]
                    with clock("layers: encode normal (normal_rgb)", index):
                        normal_rgb = L.encode_normal(raw["normal"], mask, r.render.normal_convention)
                    with clock("layers: depth mm", index):
                        depth_mm = L.depth_to_millimetres(raw["depth"])
                    with clock("layers: depth control (unused by shaded)", index):
                        depth_control = L.depth_for_control(raw["depth"], mask)
                    with clock("layers: mask + instance", index):
                        mask_u8 = mask.astype(np.uint8) * 255
                        instance = np.where(mask_u8 > 0, SUBJECT_ID, 0).astype(np.uint8)
                    with clock("layers: canny edges", index):
                        edges = L.canny_edges(normal_rgb, r.render.canny_low, r.render.canny_high)
                    with clock("layers: keypoints (project + visibility)", index):
                        kp3d = camera.to_camera(subject.keypoints_3d.astype(np.float64)).astype(np.float32)
                        uv = camera.project(kp3d)
                        vis = L.keypoint_visibility(uv, kp3d[:, 2], parts, raw["depth"], model.keypoint_parts)
                        kp2d = np.concatenate([uv, vis[:, None]], axis=1)
                    with clock("layers: skeleton draw", index):
                        skeleton = L.draw_skeleton(kp2d, model.keypoint_names, camera.width, camera.height,
                                                   model.skeleton_edges)
                    s.update(layers={"normal": raw["normal"], "normal_rgb": normal_rgb, "depth": raw["depth"],
                                     "depth_mm": depth_mm, "depth_control": depth_control, "mask": mask_u8,
                                     "parts": parts, "edges": edges, "triangle_id": tri, "instance": instance,
                                     "skeleton": skeleton},
                             keypoints_3d=kp3d, keypoints_2d=kp2d, vertices_cam=vertices_cam,
                             member_keypoints=[(kp2d, kp3d)], unoccluded_pixels=[int(np.count_nonzero(mask))],
                             faces=faces, face_instance=np.ones(len(faces), np.uint8))
                    # labels (and the prompt, when the recipe builds one)
                    with clock("labels (view record)", index):
                        s["labels"] = factory.labels(s)
                if factory.prompter is not None:
                    with clock("prompt", index):
                        prompt, negative = factory.prompter.build(s, sample_rng(r.seed, index, "prompt"))
                        s.update(prompt=prompt, negative_prompt=negative)
                        s["labels"].update(prompt=prompt, negative_prompt=negative)
            # 5. image backend and 6. filter, as finish
            with clock(f"image backend ({r.backend.kind}.generate)", index):
                factory.backend.generate([s])
            s["labels"]["appearance"] = s.get("appearance")
            if factory.sample_filter is not None:
                with clock("filter: cheap checks", index):
                    reason = cheap_checks(s["image"], factory.sample_filter.config)
                verdict = factory.sample_filter.score([s])[0]  # (untimed) the exact verdict dict
                assert verdict["reason"] == reason
                s["filter"] = s["labels"]["filter"] = verdict
            # 7. encoders, as encode
            record = {"__key__": f"{index:09d}"}
            with clock("encode json", index):
                record["json"] = encode.encode_json(s["labels"])
            if s.get("image") is not None:
                with clock("encode jpg (image)", index):
                    record["jpg"] = encode.encode_jpg(s["image"], out_cfg.jpeg_quality)
            for name in out_cfg.layers:
                with clock(f"encode png {name}", index):
                    record[f"{name}.png"] = encode.encode_layer(name, s["layers"][L.LAYER_KEYS[name]])
            if out_cfg.vertices:
                with clock("encode npz (vertices)", index):
                    arrays = {"vertices": s["vertices_cam"].astype(np.float32), "faces": s["faces"].astype(np.int32),
                              "face_instance": np.ones(len(s["faces"]), np.uint8)} | subject.arrays
                    record["npz"] = encode.encode_npz(arrays)
            records[index] = record

        # the same samples through the factory's own methods: the check on the table's coverage
        with reference("factory", chunk, len(chunk)), label_threads():
            subjects = factory.pose_subjects(chunk)
        for index, subject in zip(chunk, subjects):
            with reference("factory", index):
                with label_threads():
                    s = factory.prepare(index, subject)
                factory.finish([s])
                encoded = factory.encode(s)
            if encoded != records[index]:
                mismatched.add(index)

    # 8. tar write, as RunFolder.commit_shard (fsync included), in shards of ``batch`` records
    with tempfile.TemporaryDirectory() as out:
        for k, start in enumerate(range(0, len(indices), batch)):
            chunk = indices[start:start + batch]
            task = ShardTask(k, chunk[0], chunk[-1] + 1)
            with clock(f"tar write (commit_shard, {batch}/shard, fsync)", chunk, len(chunk)):
                RunFolder(out).commit_shard(task, (records[i] for i in chunk))

    def row(label, stages, leaf):
        wall = clock.ms(stages, keep)
        return (label, float(np.median(wall)), float(np.percentile(wall, 25)), float(np.percentile(wall, 75)),
                float(np.median(clock.ms(stages, keep, cpu=True))), leaf)

    rows = [row(stage, [stage], True) for stage in clock.order]
    groups = [("body model", "body model"), ("layer derivation", "layers:"), ("encoders", "encode ")]
    for label, prefix in groups:
        rows.append(row(f"= {label} (sum)", [s for s in clock.order if s.startswith(prefix)], False))
    rows.append(row("= sum of stages", clock.order, False))
    no_tar = [s for s in clock.order if not s.startswith("tar write")]
    rows.append(row("= sum of stages without tar", no_tar, False))
    factory_ms = reference.ms(["factory"], keep)
    rows.append(("= factory path: pose_subjects/16 + prepare + finish + encode", float(np.median(factory_ms)),
                 float(np.percentile(factory_ms, 25)), float(np.percentile(factory_ms, 75)),
                 float(np.median(reference.ms(["factory"], keep, cpu=True))), False))
    notes = [f"records identical to the factory's for {len(indices) - len(mismatched)}/{len(indices)} samples"
             + (f" (MISMATCH: {sorted(mismatched)[:8]} ...)" if mismatched else "")]
    return rows, notes


def print_stage_table(rows: list[tuple]) -> None:
    total = next(r[1] for r in rows if r[0] == "= sum of stages")
    width = max(len(r[0]) for r in rows)
    head = f"{'stage (per sample)':<{width}} | {'median ms':>9} | {'p25-p75 ms':>13} | {'cpu ms':>7} | {'share':>5}"
    print(head)
    print("-" * len(head))
    for label, med, p25, p75, cpu, leaf in rows:
        if not leaf and label.startswith("= body model"):
            print("-" * len(head))
        print(f"{label:<{width}} | {med:9.2f} | {p25:6.2f}-{p75:6.2f} | {cpu:7.2f} | {100 * med / total:4.0f}%")


# --- naive baseline ----------------------------------------------------------------------------
def naive_baseline(recipe, warmup: int = 2) -> dict:
    """One process, batch 1, two render passes, default PIL/webdataset encoders, over
    ``recipe.num_samples`` samples after ``warmup`` more (the GL context, first-call costs):
    ``rate`` samples/s and ``cpu_ms`` process CPU per sample (all threads) of the timed ones."""
    import webdataset as wds
    from PIL import Image

    from synthgen.images import ImageFactory
    from synthgen.render import render_layers
    from synthgen.subjects import anny_body

    factory = ImageFactory(recipe)
    model = factory.subject_model
    batch, anny_body.BATCH = anny_body.BATCH, 1
    try:
        with tempfile.TemporaryDirectory() as out:
            with wds.TarWriter(os.path.join(out, "naive.tar")) as sink:
                for index in range(recipe.num_samples + warmup):
                    if index == warmup:
                        start, cpu_start = time.perf_counter(), time.process_time()
                    subject = model.pose([model.draw(recipe.seed, index)])[0]  # batch of one
                    sample = factory.prepare(index, [subject])
                    factory.finish([sample])
                    # a second pass for the mask, as two-pass renderers need
                    faces, face_parts = model.mesh(subject)
                    render_layers(sample["vertices_cam"], faces, face_parts, sample["camera"].K,
                                  recipe.image.width, recipe.image.height, recipe.render.backend)
                    record = {"__key__": f"{index:09d}", "json": sample["labels"],
                              "jpg": Image.fromarray(sample["image"])}
                    for name in ("normal_rgb", "depth_mm", "mask", "parts", "edges", "skeleton", "instance"):
                        buf = io.BytesIO()
                        Image.fromarray(sample["layers"][name]).save(buf, format="PNG")
                        record[f"{name}.png"] = buf.getvalue()
                    sink.write(record)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            return {"rate": recipe.num_samples / seconds, "cpu_ms": 1e3 * cpu / recipe.num_samples}
    finally:
        anny_body.BATCH = batch


def naive_run(overrides: list[str]) -> dict:
    """:func:`naive_baseline` in a fresh process (the caller's environment)."""
    out = subprocess.run([sys.executable, "-c", _NAIVE_SNIPPET, str(Path(__file__).parent), str(RECIPE),
                          json.dumps(overrides), "2"], env=_USER_ENV, capture_output=True, text=True, cwd=ROOT,
                         check=False)
    if out.returncode != 0:
        raise RuntimeError(f"naive loop failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- generate ----------------------------------------------------------------------------------
def generate_run(overrides: list[str], workers: int) -> dict:
    """synthgen.run.generate in a fresh process (the caller's environment): seconds, RSS."""
    out = subprocess.run([sys.executable, "-c", _GENERATE_SNIPPET, str(RECIPE), json.dumps(overrides),
                          str(workers)], env=_USER_ENV, capture_output=True, text=True, cwd=ROOT,
                         check=False)
    if out.returncode != 0:
        raise RuntimeError(f"generate (workers={workers}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def steady_rate(run: dict, workers: int) -> float:
    """Samples/s of ``workers`` shard writers in steady state: ``workers x shard size / median
    shard time``, leaving out the ``workers`` slowest shards (each worker's first, which carries
    its start-up). Unlike N / (t(2N) - t(N)) it does not difference two noisy wall times."""
    timed = sorted(zip(run["shard_seconds"], run["shard_sizes"]))[:-workers or None]
    if not timed:
        return float("nan")
    return workers * float(np.median([size / seconds for seconds, size in timed]))


def generate_rates(base: list[str], workers: int, n: int) -> dict:
    """Wall samples/s for N and 2N samples, and the marginal rate N / (t(2N) - t(N))."""
    one = generate_run(base + [f"num_samples={n}"], workers)
    two = generate_run(base + [f"num_samples={2 * n}"], workers)
    extra = two["seconds"] - one["seconds"]
    extra_cpu = two["cpu_seconds"] - one["cpu_seconds"]
    return {"wall_n": n / one["seconds"], "wall_2n": 2 * n / two["seconds"],
            "cpu_ms": 1e3 * extra_cpu / n if extra_cpu > 0 else float("nan"),
            "marginal": n / extra if extra > 0 else float("nan"), "t_n": one["seconds"], "t_2n": two["seconds"],
            "steady": steady_rate(two, workers),
            "rss_main_mb": max(one["rss_self_mb"], two["rss_self_mb"]),
            "rss_worker_mb": max(one["rss_children_mb"], two["rss_children_mb"]),
            "errors": one["errors"] + two["errors"]}


# --- main --------------------------------------------------------------------------------------
def transfer_bytes(recipe_name: str, n: int = 4) -> tuple[str, float, float]:
    """(recipe line, median pickled bytes of a prepared sample as a loader worker made it before
    (the whole sample), and as it sends it now (``ImageFactory.transferable``)) over ``n`` samples."""
    import pickle

    from synthgen.images import ImageFactory
    from synthgen.recipe import load_recipe

    recipe = load_recipe(ROOT / "recipes" / recipe_name, [])
    factory = ImageFactory(recipe, cpu_only=True)
    before, after = [], []
    for sample in factory.prepared(list(range(n))):
        before.append(len(pickle.dumps(sample, protocol=pickle.HIGHEST_PROTOCOL)))
        after.append(len(pickle.dumps(factory.transferable(sample), protocol=pickle.HIGHEST_PROTOCOL)))
    what = (f"{recipe_name} ({recipe.image.width}x{recipe.image.height}, {recipe.backend.kind}, "
            f"vertices {recipe.output.vertices})")
    return what, float(np.median(before)), float(np.median(after))


def print_transfer_bytes(recipes: list[str]) -> None:
    print("## Bytes per sample from a loader process to the device process (pickled, median of 4)")
    print("# before: the whole prepared sample; after: ImageFactory.transferable (what the device "
          "stages and the writer read)")
    rows = [transfer_bytes(name) for name in recipes]
    width = max(len(r[0]) for r in rows)
    print(f"{'recipe':<{width}} | before MB | after MB | after/before")
    for what, before, after in rows:
        print(f"{what:<{width}} | {before / 1e6:9.2f} | {after / 1e6:8.2f} | {after / before:.2f}")
    print(flush=True)


def _nproc() -> str:
    try:
        return subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return str(os.cpu_count())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts, no cold start (< ~2 min)")
    parser.add_argument("--samples", type=int, default=None, help="measured samples in the stage table (64)")
    parser.add_argument("--warmup", type=int, default=16, help="warm-up samples, not measured (16)")
    parser.add_argument("--naive-samples", type=int, default=None, help="naive loop samples (64)")
    parser.add_argument("--gen-samples", type=int, default=None, help="N of the N/2N generate runs (256)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--skip-cold", action="store_true", help="skip the ~50 s Anny cold start")
    parser.add_argument("--skip-generate", action="store_true")
    parser.add_argument("--skip-stages", action="store_true", help="no per-stage table")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved naive/generate repeats (3; quick 2)")
    parser.add_argument("--shard-size", type=int, default=None,
                        help="generate's shard size (quick 16, else the recipe's): steady needs a few per worker")
    parser.add_argument("--bytes-only", action="store_true",
                        help="only the bytes-per-sample table (loader process -> device process)")
    args = parser.parse_args()
    samples = args.samples or (32 if args.quick else 64)
    naive_n = args.naive_samples or (16 if args.quick else 64)
    gen_n = args.gen_samples or (32 if args.quick else 256)
    # quick: shards of 16 so that even N=32 gives 2 workers a shard each
    shard_size = args.shard_size or (16 if args.quick else None)
    gen_base = [f"output.shard_size={shard_size}"] if shard_size else []
    args.repeats = args.repeats or (2 if args.quick else 3)

    # one worker's conditions: one torch thread, one llvmpipe thread (set before any GL context)
    os.environ.setdefault("LP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from synthgen.recipe import load_recipe
    from synthgen.render import resolve_backend

    recipe = load_recipe(RECIPE, [])
    start = time.time()
    print(f"# synthgen throughput, {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"# nproc {_nproc()}, os.cpu_count {os.cpu_count()}, loadavg {os.getloadavg()[0]:.2f} "
          f"{os.getloadavg()[1]:.2f}, python {platform.python_version()}, torch {torch.__version__}")
    print(f"# recipe {RECIPE.relative_to(ROOT)}: {recipe.image.width}x{recipe.image.height}, "
          f"render {recipe.render.backend} -> {resolve_backend(recipe.render.backend)}, "
          f"backend {recipe.backend.kind}, layers {','.join(recipe.output.layers)}")
    print("# allocator: the stage table (here) and the naive loop (its own process) run with glibc's "
          "defaults; generate's workers keep freed memory mapped (synthgen.engine.memory)")
    print("# NOISE: the cores are shared with other work; rows differ run to run by ~10-30%, "
          "trust medians and ratios, not single digits.\n")
    print_transfer_bytes(["quickstart.yaml", "humanwild_sd15.yaml"])
    if args.bytes_only:
        return

    if not args.skip_stages:
        print(f"## Per-stage, one process, torch threads {torch.get_num_threads()}, LP_NUM_THREADS "
              f"{os.environ['LP_NUM_THREADS']}; {samples} samples after {args.warmup} warm-up "
              f"(cpu ms = process CPU, all threads)", flush=True)
        rows, notes = stage_table(recipe, samples, args.warmup)
        print_stage_table(rows)
        for note in notes:
            print(f"# {note}")
        leaves = sorted((r for r in rows if r[5]), key=lambda r: -r[1])
        print("# top 3 stages: " + "; ".join(f"{r[0]} {r[1]:.1f} ms" for r in leaves[:3]))
        ceiling = 1e3 / next(r[1] for r in rows if r[0] == "= sum of stages")
        print(f"# one worker's ceiling from the table: {ceiling:.1f} samples/s\n", flush=True)

    print("## Throughput (samples/s): naive loop and generate, interleaved, each in a fresh process with "
          "the caller's environment; start-up left out of both", flush=True)
    print(f"# {args.repeats} repeats of: naive ({naive_n} samples after 2 warm-up) -> generate workers="
          f"{','.join(map(str, args.workers))} (N={gen_n} and 2N; steady from the 2N run's shard times, "
          "marginal N/(t2N-tN)); ratios within a repeat", flush=True)
    rows_by_what: dict[str, list[dict]] = defaultdict(list)
    naive_rates, naive_cpu = [], []
    rss = {}
    runs = [] if args.skip_generate else [(w, recipe.backend.kind, gen_base) for w in args.workers]
    if runs and not args.quick:
        runs.append((max(args.workers), "none", gen_base + ["backend.kind=none"]))
    for repeat in range(args.repeats):
        naive = naive_run([f"num_samples={naive_n}"])
        naive_rates.append(naive["rate"])
        naive_cpu.append(naive["cpu_ms"])
        print(f"[{repeat + 1}/{args.repeats}] load {os.getloadavg()[0]:.1f}  naive {naive['rate']:.2f}/s "
              f"({naive['cpu_ms']:.0f} ms CPU/sample)", flush=True)
        for workers, kind, base in runs:
            g = generate_rates(base, workers, gen_n)
            what = f"workers={workers}" + ("" if kind == recipe.backend.kind else f", backend {kind}")
            # t(2N) - t(N) shrinks to nothing when the load drops during the 2N run: a marginal rate
            # above 1.5 x the steady one is such a case, left out of the medians
            unreliable = not g["marginal"] <= 1.5 * g["steady"]
            if unreliable:
                g["marginal"] = float("nan")
            g |= {"steady_x": g["steady"] / naive["rate"], "marginal_x": g["marginal"] / naive["rate"],
                  "cpu_x": 2 * naive["cpu_ms"] / g["cpu_ms"] if workers == 2 else float("nan")}
            rows_by_what[what].append(g)
            print(f"      {what}: steady {g['steady']:.2f}/s = {g['steady_x']:.2f}x, marginal {g['marginal']:.2f}/s"
                  f" = {g['marginal_x']:.2f}x, {g['cpu_ms']:.0f} ms CPU/sample (t {g['t_n']:.1f}/{g['t_2n']:.1f} s)"
                  + (", marginal UNRELIABLE (t2N - tN too small or negative)" if unreliable else "")
                  + (f", {g['errors']} failed" if g["errors"] else "")
                  + (f", load {os.getloadavg()[0]:.1f}"), flush=True)
            rss[f"generate {what}"] = (g["rss_main_mb"], g["rss_worker_mb"] if workers > 1 else 0)

    def spread(values) -> str:
        values = np.asarray(values, dtype=float)
        return f"{np.nanmedian(values):.2f}  ({np.nanmin(values):.2f}-{np.nanmax(values):.2f})"

    out_rows = [(f"naive per-sample loop, 1 process ({naive_n} samples): samples/s", spread(naive_rates)),
                ("naive per-sample loop: CPU ms/sample", spread(naive_cpu))]
    for what, gs in rows_by_what.items():
        out_rows += [(f"generate {what}: steady samples/s", spread([g["steady"] for g in gs])),
                     (f"generate {what}: steady / naive (same repeat)", spread([g["steady_x"] for g in gs])),
                     (f"generate {what}: marginal samples/s", spread([g["marginal"] for g in gs])),
                     (f"generate {what}: marginal / naive (same repeat)", spread([g["marginal_x"] for g in gs])),
                     (f"generate {what}: CPU ms/sample (2N - N)", spread([g["cpu_ms"] for g in gs]))]
        if what == "workers=2":
            out_rows.append((f"generate {what}: CPU proxy 2 x naive CPU / generate CPU",
                             spread([g["cpu_x"] for g in gs])))
    print("# median (min-max) over the repeats")
    if not (args.quick or args.skip_cold):
        with tempfile.TemporaryDirectory() as cache:
            out_rows.append(("Anny model start, cold (empty cache)", f"{anny_start_seconds(cache):.1f} s"))
    out_rows.append(("Anny model start, warm", f"{anny_start_seconds(str(_warm_cache())):.2f} s"))
    out_rows.append(("peak RSS, this process (stage table)",
                     f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"))
    for what, (main_mb, worker_mb) in rss.items():
        out_rows.append((f"peak RSS, {what}: main / largest worker",
                         f"{main_mb:.0f} MB / " + (f"{worker_mb:.0f} MB" if worker_mb else "-")))

    width = max(len(r[0]) for r in out_rows)
    print(f"\n{'measure':<{width}} | value\n{'-' * width}-+-{'-' * 30}")
    for name, value in out_rows:
        print(f"{name:<{width}} | {value}")
    print(f"# total {time.time() - start:.0f} s; loadavg at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
