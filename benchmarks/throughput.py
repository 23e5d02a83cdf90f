"""Throughput of the quickstart recipe on this machine, against a naive per-sample loop.

Prints one table:
- Anny model cold start (empty cache, in a subprocess) and warm start;
- samples/s for labels + layers + shards (backend.kind=none), and for the full quickstart with
  shaded images, with synthgen's pipeline (all cores, one process per core);
- samples/s of a naive baseline on the same samples: one process, Anny at batch 1, the render
  done in separate passes (normals+depth, then the mask), PIL's default PNG/JPEG encoders and
  webdataset's default encoder;
- peak resident memory of the main process and of the worker processes.

    python benchmarks/throughput.py [--samples 256] [--skip-cold]
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from synthgen.pipeline import SampleFactory  # noqa: E402
from synthgen.run import generate  # noqa: E402
from synthgen.recipe import load_recipe  # noqa: E402

_START_SNIPPET = """
import time, torch
t = time.perf_counter()
from synthgen.subjects.anny_body import load_anny_model
load_anny_model()
print(time.perf_counter() - t)
"""


def anny_start_seconds(cache_dir: str) -> float:
    env = dict(os.environ, ANNY_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, "-c", _START_SNIPPET], env=env, capture_output=True,
                         text=True, check=True, cwd=ROOT)
    return float(out.stdout.strip().splitlines()[-1])


def timed_generate(recipe, workers: int) -> str:
    """'wall samples/s (steady samples/s)': wall time includes starting the worker processes
    (imports, body model, GL probe); steady divides by the shards' own making time."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        generate(recipe, out, workers=workers, progress=False)
        wall = recipe.num_samples / (time.perf_counter() - start)
        busy = sum(json.loads(p.read_text())["seconds"] for p in Path(out, "shards").glob("*.json"))
        steady = recipe.num_samples / (busy / min(workers, len(list(Path(out, "shards").glob("*.json")))))
        return f"{wall:.1f} samples/s wall ({steady:.1f} steady)"


def naive_baseline(recipe) -> float:
    """One process, batch 1, two render passes, default PIL/webdataset encoders."""
    import webdataset as wds
    from PIL import Image

    from synthgen.render import render_layers
    from synthgen.subjects import anny_body

    anny_body.BATCH = 1

    factory = SampleFactory(recipe)
    model = factory.subject_model
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        with wds.TarWriter(os.path.join(out, "naive.tar")) as sink:
            for index in range(recipe.num_samples):
                subject = model.pose([model.draw(recipe.seed, index)])[0]  # batch of one
                sample = factory.prepare(index, subject)
                factory.finish([sample])
                # a second pass for the mask, as two-pass renderers need
                render_layers(sample["vertices_cam"], model.faces, model.face_parts, sample["camera"].K,
                              recipe.image.width, recipe.image.height, recipe.render.backend)
                record = {"__key__": f"{index:09d}", "json": sample["labels"],
                          "jpg": Image.fromarray(sample["image"])}
                for name in ("normal_rgb", "depth_mm", "mask", "parts", "edges", "skeleton"):
                    buf = io.BytesIO()
                    Image.fromarray(sample["layers"][name]).save(buf, format="PNG")
                    record[f"{name}.png"] = buf.getvalue()
                sink.write(record)
        return recipe.num_samples / (time.perf_counter() - start)


class _Rows(list):
    """Rows of the final table, also logged as they come (a long run shows progress)."""

    def append(self, row) -> None:
        logging.getLogger("benchmark").warning("%s: %s", *row)
        super().append(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--naive-samples", type=int, default=64)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip-cold", action="store_true", help="skip the ~50 s cold start")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    rows = _Rows()
    if not args.skip_cold:
        with tempfile.TemporaryDirectory() as cache:
            rows.append(("Anny model start, cold (empty cache)", f"{anny_start_seconds(cache):.1f} s"))
    rows.append(("Anny model start, warm", f"{anny_start_seconds(str(_warm_cache())):.2f} s"))

    quick = load_recipe(ROOT / "recipes" / "quickstart.yaml", [f"num_samples={args.samples}"])
    from synthgen.render import resolve_backend

    rows.append(("render backend", resolve_backend(quick.render.backend)))
    layers_only = quick.model_copy(update={"backend": quick.backend.model_copy(update={"kind": "none"})})
    rows.append((f"labels+layers+shards, {args.workers} workers", timed_generate(layers_only, args.workers)))
    rows.append((f"full quickstart (shaded images), {args.workers} workers", timed_generate(quick, args.workers)))
    rows.append(("full quickstart, 1 worker", timed_generate(quick, 1)))
    naive = quick.model_copy(update={"num_samples": args.naive_samples})
    rows.append((f"naive per-sample loop, 1 process ({args.naive_samples} samples)",
                 f"{naive_baseline(naive):.1f} samples/s"))
    rows.append(("peak RSS, main process", f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"))
    rows.append(("peak RSS, largest worker",
                 f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MB"))

    width = max(len(r[0]) for r in rows)
    print(f"\n{'measure':<{width}} | value\n{'-' * width}-+-{'-' * 20}")
    for name, value in rows:
        print(f"{name:<{width}} | {value}")
    print(json.dumps({"cpu_count": os.cpu_count(), "image": [quick.image.width, quick.image.height]}))


def _warm_cache() -> Path:
    from synthgen.subjects.anny_body import cache_dir

    return cache_dir()


if __name__ == "__main__":
    main()
