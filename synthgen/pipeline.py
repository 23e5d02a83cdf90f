"""The run: plan shards, then per sample subjects -> cameras -> render -> generate -> write.

Data flows one way. A sample is a plain dict that each stage adds keys to:
``index, seed`` (plan) -> ``subject`` (subjects) -> ``camera, camera_draw`` (cameras) ->
``layers, keypoints_2d, keypoints_3d`` (render) -> ``image, appearance`` (generate) -> ``labels``.
Shards are the unit of work: each worker process builds its own models (and GL context) and
writes whole shards; samples never depend on which process made them.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tqdm.auto import tqdm

from synthgen import write
from synthgen.cameras import sample_camera
from synthgen.generate.shaded import render_shaded
from synthgen.recipe import Recipe, recipe_hash
from synthgen.render import layers as layer_ops
from synthgen.render import render_layers
from synthgen.seeding import sample_rng, sample_seed
from synthgen.subjects import build_subject_model

log = logging.getLogger(__name__)

LAYER_KEYS = {"normal": "normal_rgb", "depth": "depth_mm", "mask": "mask", "parts": "parts",
              "edges": "edges", "skeleton": "skeleton"}
CHUNK = 32  # samples posed per body-model call


def _f32(array: np.ndarray) -> list:
    return np.asarray(array, dtype=np.float32).tolist()


def bbox_from_mask(mask: np.ndarray) -> list[float]:
    """[x, y, w, h] of the silhouette in pixels (pixel-centre coordinates, edges at +-0.5)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    x0, y0 = cols[0] - 0.5, rows[0] - 0.5
    return [float(x0), float(y0), float(cols[-1] + 0.5 - x0), float(rows[-1] + 0.5 - y0)]


class SampleFactory:
    """Makes the samples of one recipe in this process."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.hash = recipe_hash(recipe)
        self.subject_model = build_subject_model(recipe.subject)

    # 1. subjects ------------------------------------------------------------------------------
    def pose_subjects(self, indices: list[int]) -> list:
        draws = [self.subject_model.draw(self.recipe.seed, i) for i in indices]
        return self.subject_model.pose(draws)

    # 2.-5. one sample -------------------------------------------------------------------------
    def make_sample(self, index: int, subject) -> dict[str, Any]:
        r = self.recipe
        w, h = r.image.width, r.image.height
        sample: dict[str, Any] = {"index": index, "seed": sample_seed(r.seed, index), "subject": subject}
        camera, drawn = sample_camera(sample_rng(r.seed, index, "camera"), r.camera,
                                      subject.vertices[::7], w, h)
        sample.update(camera=camera, camera_draw=drawn)
        self._render(sample)
        self._generate(sample)
        sample["labels"] = self.labels(sample)
        return sample

    def _generate(self, sample: dict[str, Any]) -> None:
        r, index = self.recipe, sample["index"]
        if r.backend.kind == "none":
            sample.update(image=None, appearance=None)
            return
        image, appearance = render_shaded(sample["layers"], self.subject_model.part_names,
                                          sample_rng(r.seed, index, "appearance"),
                                          sample_rng(r.seed, index, "background"), r.backend.shaded)
        sample.update(image=image, appearance=appearance)

    def _render(self, sample: dict[str, Any]) -> None:
        r, model, camera = self.recipe, self.subject_model, sample["camera"]
        vertices_cam = camera.to_camera(sample["subject"].vertices)
        layers = render_layers(vertices_cam, model.faces, model.face_parts, camera.K,
                               camera.width, camera.height, r.render.backend,
                               (r.render.canny_low, r.render.canny_high), r.render.normal_convention)
        kp3d = camera.to_camera(sample["subject"].keypoints_3d.astype(np.float64)).astype(np.float32)
        uv = camera.project(kp3d)
        vis = layer_ops.keypoint_visibility(uv, kp3d[:, 2], layers["parts"], layers["depth"],
                                            model.keypoint_parts)
        kp2d = np.concatenate([uv, vis[:, None]], axis=1)
        layers["skeleton"] = layer_ops.draw_skeleton(kp2d, model.keypoint_names, camera.width, camera.height)
        sample.update(layers=layers, keypoints_3d=kp3d, keypoints_2d=kp2d, vertices_cam=vertices_cam)

    def labels(self, sample: dict[str, Any]) -> dict[str, Any]:
        camera, model = sample["camera"], self.subject_model
        bbox = bbox_from_mask(sample["layers"]["mask"] > 0)
        return {
            "index": sample["index"], "seed": sample["seed"], "recipe_hash": self.hash,
            "image_size": [camera.width, camera.height],
            "cam_int": camera.K.tolist(), "cam_ext": camera.cam_ext.tolist(),
            "camera": {k: float(np.float32(v)) for k, v in sample["camera_draw"].items()},
            "keypoints_2d": sample["keypoints_2d"].tolist(),
            "keypoints_3d": sample["keypoints_3d"].tolist(),
            "keypoint_names": model.keypoint_names,
            "bbox": bbox, "center": [bbox[0] + bbox[2] / 2, bbox[1] + bbox[3] / 2],
            "scale": max(bbox[2], bbox[3]) / 200.0,
            "subject": {"kind": self.recipe.subject.kind, "model": model.name} | sample["subject"].params,
            "appearance": sample["appearance"],
            "part_names": model.part_names,
            "conventions": {"camera": "opencv", "depth": "z_mm_uint16_0_is_background",
                            "normal": self.recipe.render.normal_convention,
                            "pixel_centre": "integer", "visibility": "coco_0_1_2"},
        }

    # 6. encode ------------------------------------------------------------------------------
    def encode(self, sample: dict[str, Any]) -> dict[str, Any]:
        out = self.recipe.output
        record = {"__key__": f"{sample['index']:09d}", "json": write.encode_json(sample["labels"])}
        if sample["image"] is not None:
            record["jpg"] = write.encode_jpg(sample["image"], out.jpeg_quality)
        for name in out.layers:
            record[f"{name}.png"] = write.encode_png(sample["layers"][LAYER_KEYS[name]])
        if out.vertices:
            arrays = {"vertices": sample["vertices_cam"].astype(np.float32),
                      "faces": self.subject_model.faces} | sample["subject"].arrays
            record["npz"] = write.encode_npz(arrays)
        return record

    def samples(self, indices: list[int]) -> Iterator[dict[str, Any]]:
        for start in range(0, len(indices), CHUNK):
            chunk = indices[start:start + CHUNK]
            for index, subject in zip(chunk, self.pose_subjects(chunk)):
                yield self.make_sample(index, subject)

    def shard_records(self, task: write.ShardTask, on_sample=None) -> Iterator[dict[str, Any]]:
        for sample in self.samples(list(range(task.start, task.stop))):
            yield self.encode(sample)
            if on_sample is not None:
                on_sample()


# --- worker processes --------------------------------------------------------------------------
_FACTORY: SampleFactory | None = None
_PROGRESS = None


def _init_worker(recipe_json: dict, progress_queue, threads: int) -> None:
    global _FACTORY, _PROGRESS
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)
    _FACTORY = SampleFactory(Recipe.model_validate(recipe_json))
    _PROGRESS = progress_queue


def _run_shard(args: tuple[str, write.ShardTask]) -> dict[str, Any]:
    out_dir, task = args
    assert _FACTORY is not None
    return write.write_shard(Path(out_dir), task, _FACTORY.shard_records(task, lambda: _PROGRESS.put(1)))


def _drain(queue, bar: tqdm) -> None:
    while True:
        item = queue.get()
        if item is None:
            return
        bar.update(item)


def generate(recipe: Recipe, out_dir: str | Path, workers: int = 1, progress: bool = True) -> dict:
    """Write every missing shard of ``recipe`` into ``out_dir``; returns the manifest."""
    out_dir = Path(out_dir)
    write.check_output_dir(out_dir, recipe)
    tasks = write.plan_shards(recipe.num_samples, recipe.output.shard_size)
    todo = [t for t in tasks if not write.is_complete(out_dir, t)]
    done = recipe.num_samples - sum(t.stop - t.start for t in todo)
    log.info("%d/%d shards to write (%d samples already done) into %s", len(todo), len(tasks), done, out_dir)
    write.write_manifest(out_dir, recipe, tasks)
    start = time.perf_counter()
    bar = tqdm(total=recipe.num_samples, initial=done, unit="sample", disable=not progress,
               desc="generate", smoothing=0.1)
    workers = max(1, min(workers, len(todo)))
    try:
        if workers == 1:
            factory = SampleFactory(recipe)
            for task in todo:
                write.write_shard(out_dir, task, factory.shard_records(task, lambda: bar.update(1)))
        else:
            _generate_parallel(recipe, out_dir, todo, workers, bar)
    finally:
        bar.close()
    elapsed = time.perf_counter() - start
    made = sum(t.stop - t.start for t in todo)
    stats = {"last_run_seconds": round(elapsed, 3), "last_run_samples": made,
             "last_run_samples_per_second": round(made / elapsed, 3) if elapsed > 0 else None,
             "workers": workers}
    return write.write_manifest(out_dir, recipe, tasks, stats)


def _generate_parallel(recipe: Recipe, out_dir: Path, todo: list, workers: int, bar: tqdm) -> None:
    # spawn: EGL contexts and warp/OpenMP state do not survive fork
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    listener = threading.Thread(target=_drain, args=(queue, bar), daemon=True)
    listener.start()
    threads = max(1, (os.cpu_count() or 1) // workers)
    try:
        with ctx.Pool(workers, initializer=_init_worker,
                      initargs=(recipe.model_dump(mode="json"), queue, threads)) as pool:
            for _ in pool.imap_unordered(_run_shard, [(str(out_dir), t) for t in todo]):
                pass
    finally:
        queue.put(None)
        listener.join(timeout=5)
