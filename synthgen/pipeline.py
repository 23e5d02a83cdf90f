"""The run: plan shards, then per sample subjects -> cameras -> render -> prompt -> generate ->
filter -> write.

Data flows one way. A sample is a plain dict that each stage adds keys to:
``index, seed`` (plan) -> ``subject`` (subjects) -> ``camera, camera_draw`` (cameras) ->
``layers, keypoints_2d, keypoints_3d`` (render) -> ``prompt, negative_prompt`` (prompt) ->
``image, appearance`` (generate) -> ``labels`` -> ``filter`` (filter) -> a shard record (write).

The CPU stages (subjects to prompt) run ahead in a background thread while the generate and
filter stages consume batches, so a GPU never waits for rendering. Shards are the unit of work:
each process writes whole shards; samples never depend on which process made them.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch.utils.data as tud

from synthgen import write
from synthgen.cameras import sample_camera, sample_viewpoint_camera
from synthgen.errors import ErrorBudgetExceeded
from synthgen.generate import build_image_backend
from synthgen.recipe import Recipe, recipe_hash
from synthgen.render import layers as layer_ops
from synthgen.render import render_layers
from synthgen.seeding import label_threads, sample_rng, sample_seed
from synthgen.subjects import build_subject_model

log = logging.getLogger(__name__)

LAYER_KEYS = {"normal": "normal_rgb", "depth": "depth_mm", "mask": "mask", "parts": "parts",
              "edges": "edges", "skeleton": "skeleton"}
CHUNK = 32  # samples posed per body-model call


def bbox_from_mask(mask: np.ndarray) -> list[float]:
    """[x, y, w, h] of the silhouette in pixels (pixel-centre coordinates, edges at +-0.5)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    x0, y0 = cols[0] - 0.5, rows[0] - 0.5
    return [float(x0), float(y0), float(cols[-1] + 0.5 - x0), float(rows[-1] + 0.5 - y0)]


def error_budget(recipe: Recipe) -> int:
    limit = recipe.output.max_errors
    return int(limit * recipe.num_samples) if limit < 1 else int(limit)


def _prefetch(items: Iterator, depth: int) -> Iterator:
    """Run an iterator in a background thread, ``depth`` items ahead (errors re-raised here)."""
    box: queue.Queue = queue.Queue(maxsize=max(1, depth))
    done = object()

    def fill():
        try:
            for item in items:
                box.put(item)
        except BaseException as exc:  # surfaced in the consumer
            box.put(exc)
        box.put(done)

    threading.Thread(target=fill, daemon=True, name="synthgen-cpu-stages").start()
    while (item := box.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


def _batched(items: Iterator, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class SampleFactory:
    """Makes the samples of one recipe in this process (models built once, here)."""

    def __init__(self, recipe: Recipe, device: str | None = None, loader_workers: int = 0,
                 cpu_only: bool = False):
        """``loader_workers`` > 0 runs the CPU stages in that many spawned DataLoader processes
        (each with its own models and GL context); ``cpu_only`` builds just those stages."""
        self.recipe = recipe
        self.hash = recipe_hash(recipe)
        self.loader_workers = loader_workers
        self.subject_model = build_subject_model(recipe.subject) if loader_workers == 0 or cpu_only \
            else _PartsOnly(recipe)
        self.prompter = self._prompter()
        if cpu_only:
            return
        self.backend = build_image_backend(recipe, self.subject_model.part_names, device)
        self.sample_filter = self._filter(device)
        self.timing = {"input_wait": 0.0, "generate": 0.0}

    def _prompter(self):
        if not (self.recipe.backend.kind == "controlnet" or self.recipe.prompt.prompts_file):
            return None
        from synthgen.prompt import PromptBuilder

        return PromptBuilder(self.recipe.prompt, subject_kind=self.recipe.subject.kind)

    def _filter(self, device: str | None):
        if self.recipe.backend.kind == "none":
            return None
        from synthgen.filter import SampleFilter

        return SampleFilter(self.recipe.filter, device or "cpu")

    # 1. subjects ------------------------------------------------------------------------------
    def pose_subjects(self, indices: list[int]) -> list:
        draws = [self.subject_model.draw(self.recipe.seed, i) for i in indices]
        return self.subject_model.pose(draws)

    # 2. cameras, 3. render, 4. prompt: the CPU stages of one sample ---------------------------
    def prepare(self, index: int, subject) -> dict[str, Any]:
        r = self.recipe
        sample: dict[str, Any] = {"index": index, "seed": sample_seed(r.seed, index), "subject": subject}
        if r.camera.mode == "viewpoint":  # 3D-DST / PASCAL3D+ viewpoint about the subject's box centre
            camera, drawn = sample_viewpoint_camera(sample_rng(r.seed, index, "camera"), r.camera,
                                                    subject.vertices, r.image.width, r.image.height)
        else:  # low-poly CAD objects need every vertex to be framed right
            points = subject.vertices if r.subject.kind == "object" else subject.vertices[::7]
            camera, drawn = sample_camera(sample_rng(r.seed, index, "camera"), r.camera,
                                          points, r.image.width, r.image.height)
        sample.update(camera=camera, camera_draw=drawn)
        self._render(sample)
        sample["labels"] = self.labels(sample)
        if self.prompter is not None:
            prompt, negative = self.prompter.build(sample, sample_rng(r.seed, index, "prompt"))
            sample.update(prompt=prompt, negative_prompt=negative)
            sample["labels"].update(prompt=prompt, negative_prompt=negative)
        return sample

    def _render(self, sample: dict[str, Any]) -> None:
        r, model, camera = self.recipe, self.subject_model, sample["camera"]
        vertices_cam = camera.to_camera(sample["subject"].vertices)
        faces, face_parts = self._mesh(sample["subject"])
        layers = render_layers(vertices_cam, faces, face_parts, camera.K,
                               camera.width, camera.height, r.render.backend,
                               (r.render.canny_low, r.render.canny_high), r.render.normal_convention)
        kp3d = camera.to_camera(sample["subject"].keypoints_3d.astype(np.float64)).astype(np.float32)
        uv = camera.project(kp3d)
        vis = layer_ops.keypoint_visibility(uv, kp3d[:, 2], layers["parts"], layers["depth"],
                                            model.keypoint_parts)
        kp2d = np.concatenate([uv, vis[:, None]], axis=1)
        draw = getattr(model, "draw_skeleton", None)  # animals, objects: their own limb graph
        layers["skeleton"] = (draw(kp2d, camera.width, camera.height) if draw is not None else
                              layer_ops.draw_skeleton(kp2d, model.keypoint_names, camera.width, camera.height))
        sample.update(layers=layers, keypoints_3d=kp3d, keypoints_2d=kp2d, vertices_cam=vertices_cam)

    def labels(self, sample: dict[str, Any]) -> dict[str, Any]:
        camera, model = sample["camera"], self.subject_model
        bbox = bbox_from_mask(sample["layers"]["mask"] > 0)
        out = {
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
            "part_names": model.part_names,
            "conventions": {"camera": "opencv", "depth": "z_mm_uint16_0_is_background",
                            "normal": self.recipe.render.normal_convention,
                            "pixel_centre": "integer", "visibility": "coco_0_1_2"},
        }
        camera_labels = getattr(model, "camera_labels", None)  # animals: GenZoo fields; objects: PASCAL3D+
        if camera_labels is not None:
            out["subject"].update(camera_labels(sample["subject"], camera, sample["keypoints_2d"],
                                                sample["keypoints_3d"]))
        return out

    def _mesh(self, subject) -> tuple[np.ndarray, np.ndarray]:
        """(F, 3) faces and (F,) part ids: the model's, or the subject's own (objects)."""
        faces = getattr(subject, "faces", None)
        if faces is None:
            return self.subject_model.faces, self.subject_model.face_parts
        return faces, subject.face_parts

    def prepared(self, indices: list[int]) -> Iterator[dict[str, Any]]:
        """CPU stages; a sample that raises comes out as ``{"index", "error"}`` instead."""
        for start in range(0, len(indices), CHUNK):
            chunk = indices[start:start + CHUNK]
            with label_threads():
                subjects = self._pose_or_errors(chunk)
            for index, subject in zip(chunk, subjects):
                if isinstance(subject, Exception):
                    yield {"index": index, "error": f"{type(subject).__name__}: {subject}"}
                    continue
                try:
                    with label_threads():
                        sample = self.prepare(index, subject)
                except Exception as exc:  # one bad sample must not stop the run
                    log.exception("sample %d failed", index)
                    sample = {"index": index, "error": f"{type(exc).__name__}: {exc}"}
                yield sample

    def _pose_or_errors(self, chunk: list[int]) -> list:
        try:
            return self.pose_subjects(chunk)
        except Exception:
            if len(chunk) == 1:
                raise
        out = []
        for index in chunk:  # isolate the failing sample(s)
            try:
                out.extend(self.pose_subjects([index]))
            except Exception as exc:
                log.exception("sample %d failed while posing", index)
                out.append(exc)
        return out

    # 5. generate, 6. filter: batched ----------------------------------------------------------
    def finish(self, batch: list[dict[str, Any]]) -> None:
        """Images and filter scores for a batch of prepared samples (errors pass through)."""
        ok = [s for s in batch if "error" not in s]
        if not ok:
            return
        self.backend.generate(ok)
        ok = [s for s in ok if "error" not in s]
        for sample in ok:
            sample["labels"]["appearance"] = sample.get("appearance")
        if self.sample_filter is None or not ok:
            return
        for sample, verdict in zip(ok, self.sample_filter.score(ok)):
            sample["filter"] = verdict
            sample["labels"]["filter"] = verdict

    def samples(self, indices: list[int], keep_errors: bool = False) -> Iterator[dict[str, Any]]:
        """Finished samples, the CPU stages running one batch ahead of generation.

        ``self.timing`` accumulates how long generation waited for input ("input_wait") and how
        long generate + filter took ("generate"), the numbers behind the input-wait fraction.
        """
        if self.loader_workers > 0:
            prepared = _loader_stream(self.recipe, indices, self.loader_workers, 2 * self.backend.batch_size)
        else:
            prepared = _prefetch(self.prepared(indices), depth=2 * self.backend.batch_size)
        yield from finish_batches(self, _batched(prepared, self.backend.batch_size), keep_errors)

    # 7. encode --------------------------------------------------------------------------------
    def encode(self, sample: dict[str, Any]) -> dict[str, Any]:
        out = self.recipe.output
        record = {"__key__": f"{sample['index']:09d}", "json": write.encode_json(sample["labels"])}
        if sample["image"] is not None:
            record["jpg"] = write.encode_jpg(sample["image"], out.jpeg_quality)
        for name in out.layers:
            record[f"{name}.png"] = write.encode_png(sample["layers"][LAYER_KEYS[name]])
        if out.vertices:
            arrays = {"vertices": sample["vertices_cam"].astype(np.float32),
                      "faces": self._mesh(sample["subject"])[0]} | sample["subject"].arrays
            record["npz"] = write.encode_npz(arrays)
        return record

    def write_shards(self, out_dir: Path, tasks: list[write.ShardTask],
                     on_sample: Callable[[], None] | None = None,
                     errors_before: Callable[[], int] = lambda: 0) -> list[dict[str, Any]]:
        """Make and write shards from one sample stream (so loader workers start once)."""
        return write_shards(self, out_dir, tasks, on_sample, errors_before)


def finish_batches(factory, batches: Iterator[list], keep_errors: bool) -> Iterator[dict[str, Any]]:
    """Run ``factory.finish`` on each batch, timing the wait for input against the work.

    Accumulates ``factory.timing["input_wait"]`` and ``["generate"]``; yields the batch's samples
    (failed ones only with ``keep_errors``).
    """
    while True:
        t0 = time.perf_counter()
        batch = next(batches, None)
        t1 = time.perf_counter()
        if not batch:
            return
        factory.finish(batch)
        factory.timing["input_wait"] += t1 - t0
        factory.timing["generate"] += time.perf_counter() - t1
        for sample in batch:
            if keep_errors or "error" not in sample:
                yield sample


# --- shards from any factory (single images here, frames in synthgen.sequence) ---------------
def write_shards(factory, out_dir: Path, tasks: list[write.ShardTask],
                 on_sample: Callable[[], None] | None = None,
                 errors_before: Callable[[], int] = lambda: 0) -> list[dict[str, Any]]:
    """Write ``tasks`` from one ``factory.samples`` stream, encoding with ``factory.encode``.

    Rejected (``sample["filter"]["accepted"]`` false) and failed (``sample["error"]``) samples are
    listed in each shard's sidecar; ``errors_before()`` counts failures already recorded (other
    shards, other processes) against ``output.max_errors``.
    """
    stream = factory.samples([i for t in tasks for i in range(t.start, t.stop)], keep_errors=True)
    return [_write_one(factory, Path(out_dir), task, stream, on_sample, errors_before()) for task in tasks]


def _write_one(factory, out_dir: Path, task: write.ShardTask, stream: Iterator[dict[str, Any]],
               on_sample, errors_before: int) -> dict[str, Any]:
    report: dict[str, Any] = {"rejected": [], "errors": []}
    rejected_records: list[dict[str, Any]] = []
    budget = error_budget(factory.recipe)
    start, timing_before = time.perf_counter(), dict(factory.timing)

    def records():
        for _ in range(task.start, task.stop):
            sample = next(stream)
            if on_sample is not None:
                on_sample()
            if "error" in sample:
                report["errors"].append({"index": sample["index"], "error": sample["error"]})
                if errors_before + len(report["errors"]) > budget:
                    raise ErrorBudgetExceeded(
                        f"{errors_before + len(report['errors'])} samples failed, more than "
                        f"output.max_errors={factory.recipe.output.max_errors} allows; the failures "
                        f"are listed in the shard sidecars (shards/*.json) and the log")
                continue
            verdict = sample.get("filter") or {"accepted": True}
            if not verdict["accepted"]:
                report["rejected"].append({"index": sample["index"], "reason": verdict.get("reason")})
                if factory.recipe.filter.write_rejected:
                    rejected_records.append(factory.encode(sample))
                continue
            yield factory.encode(sample)
        report["seconds"] = round(time.perf_counter() - start, 3)
        for key, total in factory.timing.items():
            report[f"{key}_seconds"] = round(total - timing_before[key], 3)

    return write.write_shard(out_dir, task, records(), report, rejected=lambda: rejected_records)


# --- CPU stages in DataLoader worker processes ----------------------------------------------
class _PartsOnly:
    """What the main process needs of the subject model when workers do the posing."""

    def __init__(self, recipe: Recipe):
        from synthgen.subjects import subject_part_names

        self.part_names = subject_part_names(recipe.subject)


_WORKER_FACTORY: SampleFactory | None = None


def _worker_factory(recipe_json: dict) -> SampleFactory:
    global _WORKER_FACTORY
    if _WORKER_FACTORY is None:
        _WORKER_FACTORY = SampleFactory(Recipe.model_validate(recipe_json), cpu_only=True)
    return _WORKER_FACTORY


class PreparedSamples(tud.IterableDataset):
    """The CPU stages as a DataLoader dataset: worker w prepares ``indices[w::n]``; the
    DataLoader's round-robin over workers gives them back in index order."""

    def __init__(self, recipe_json: dict, indices: list[int]):
        self.recipe_json, self.indices = recipe_json, indices

    def __iter__(self):
        info = tud.get_worker_info()
        worker, count = (info.id, info.num_workers) if info else (0, 1)
        yield from _worker_factory(self.recipe_json).prepared(self.indices[worker::count])


def _as_is(item):
    return item


def _loader_stream(recipe: Recipe, indices: list[int], workers: int, depth: int) -> Iterator[dict]:
    dataset = PreparedSamples(recipe.model_dump(mode="json"), indices)
    loader = tud.DataLoader(dataset, batch_size=None, num_workers=workers, multiprocessing_context="spawn",
                            prefetch_factor=max(2, depth // workers), collate_fn=_as_is)
    yield from loader
