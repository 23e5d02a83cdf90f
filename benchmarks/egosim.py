"""Throughput of the EgoSim recipe (six body-worn cameras per frame) on this machine.

Prints one table: the cost of simulating a sequence (motion, body, spring mounts, IMU, scene),
of re-simulating it for a shard that starts mid-sequence, of rendering one frame's six views,
and end-to-end frames/s and camera-views/s through ``run.generate`` (shards written), with shaded
images and with labels + layers only. Optionally writes a contact sheet (PNG) and a GIF of one
sequence across all cameras.

    python benchmarks/egosim.py [--sequences 2] [--size 384] [--workers 1]
                                [--sheet out/egosim_sheet.png] [--gif out/egosim.gif]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np

from synthgen import run
from synthgen.engine import finished_samples
from synthgen.preview import contact_sheet
from synthgen.recipe import load_recipe
from synthgen.sequences import SequenceFactory


def timed_generate(recipe, workers: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        run.generate(recipe, out, workers=workers, progress=False)
        return recipe.num_samples / (time.perf_counter() - start)


def sheet_and_gif(recipe, sheet: str | None, gif: str | None, every: int) -> None:
    from synthgen.preview import save_rgb

    factory = SequenceFactory(recipe)
    frames = list(finished_samples(factory, list(range(recipe.sequence.frames))))
    if sheet:
        save_rgb(sheet, contact_sheet(frames[::every], tile=192))
        logging.getLogger("benchmark").warning("contact sheet: %s", sheet)
    if gif:
        import imageio.v2 as imageio

        tiles = [np.concatenate([v["image"] for v in f["views"]], axis=1) for f in frames]
        small = [t[::2, ::2] for t in tiles]
        Path(gif).parent.mkdir(parents=True, exist_ok=True)
        imageio.mimsave(gif, small, duration=1000 / recipe.sequence.fps, loop=0)
        logging.getLogger("benchmark").warning("gif: %s", gif)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=2, help="sequences generated end to end")
    parser.add_argument("--frames", type=int, default=64, help="frames per sequence")
    parser.add_argument("--size", type=int, default=384, help="image width = height, pixels")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--render", default="auto", help="render.backend: auto, gl or torch")
    parser.add_argument("--sheet", help="write a contact sheet PNG of sequence 0 (every --every-th frame)")
    parser.add_argument("--gif", help="write a GIF of sequence 0 (all cameras side by side, half size)")
    parser.add_argument("--every", type=int, default=8)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    n = args.sequences * args.frames
    recipe = load_recipe(ROOT / "recipes" / "egosim.yaml", [
        f"num_samples={n}", f"sequence.frames={args.frames}", f"output.shard_size={args.frames}",
        f"image.width={args.size}", f"image.height={args.size}", f"render.backend={args.render}"])
    cams = len(recipe.sequence.rig.mounts)
    from synthgen.render import resolve_backend

    rows = [("render backend", resolve_backend(recipe.render.backend)),
            ("image size, cameras", f"{args.size}x{args.size}, {cams}")]

    factory = SequenceFactory(recipe)
    start = time.perf_counter()
    for s in range(3):
        factory.sequence(s)
    rows.append((f"simulate a sequence ({args.frames} frames: motion, body, springs, IMU, scene)",
                 f"{(time.perf_counter() - start) / 3:.2f} s"))
    fresh = SequenceFactory(recipe)
    start = time.perf_counter()
    next(finished_samples(fresh, [args.frames // 2]))
    first = time.perf_counter() - start
    start = time.perf_counter()
    next(finished_samples(fresh, [args.frames // 2 + 1]))
    warm = time.perf_counter() - start
    rows.append(("first frame of a shard starting mid-sequence (re-simulates)", f"{first:.2f} s"))
    rows.append(("next frame (sequence cached)", f"{warm:.2f} s = {cams / warm:.1f} views/s"))

    fps = timed_generate(recipe, args.workers)
    rows.append((f"end to end, shaded images, {args.workers} worker(s), {n} frames",
                 f"{fps:.2f} frames/s = {fps * cams:.1f} camera-views/s"))
    none = recipe.model_copy(update={"backend": recipe.backend.model_copy(update={"kind": "none"})})
    fps = timed_generate(none, args.workers)
    rows.append((f"end to end, labels + layers only, {args.workers} worker(s)",
                 f"{fps:.2f} frames/s = {fps * cams:.1f} camera-views/s"))

    width = max(len(r[0]) for r in rows)
    print(f"\n{'measure':<{width}} | value\n{'-' * width}-+-{'-' * 34}")
    for name, value in rows:
        print(f"{name:<{width}} | {value}")
    print(json.dumps({"cpu_count": os.cpu_count(), "frames_per_sequence": args.frames,
                      "imu_rate_hz": recipe.sequence.imu.rate_hz, "fps": recipe.sequence.fps}))
    if args.sheet or args.gif:
        sheet_and_gif(recipe, args.sheet, args.gif, args.every)


if __name__ == "__main__":
    main()
