"""Export stage: a finished run -> the files other training code reads (``synthgen export``).

- ``coco``: ``DIR/images/KEY.jpg`` + ``DIR/annotations/person_keypoints.json`` (pycocotools,
  mmpose), one annotation per human instance (:mod:`synthgen.formats.coco`);
- ``bedlam``: ``DIR/images/KEY.jpg`` + ``DIR/labels/shard-K.npz`` with BEDLAM's keys, one row per
  SMPL / SMPL-X instance (:mod:`synthgen.formats.bedlam`).

Both stream the shards sample by sample (undecoded tar members; the image bytes are copied, not
re-encoded), so memory stays flat whatever the run's size: COCO's lists go to temporary JSON-lines
files that are joined into the annotation file at the end; BEDLAM keeps one shard's rows.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import webdataset as wds
from tqdm import tqdm

from synthgen import __version__
from synthgen.data import shard_paths
from synthgen.errors import UserError
from synthgen.formats import bedlam, coco
from synthgen.labels import views_of
from synthgen.engine.run_folder import RunFolder, check_writable_folder

log = logging.getLogger(__name__)

COCO_FILE = "annotations/person_keypoints.json"


def check_exportable(kind: str, run: str, manifest: dict[str, Any]) -> None:
    """Refuse, in one line, a run that ``kind`` cannot represent."""
    recipe = manifest["recipe"]
    subject = recipe["subject"]
    where = f"synthgen export {kind} {run}"
    if recipe.get("sequence") is not None:
        raise UserError(f"{where}: a body-worn camera sequence run (recipe has a sequence section); "
                        f"{kind} exports take single-image runs; read sequences with synthgen.data.load_shards")
    if recipe["backend"]["kind"] == "none":
        raise UserError(f"{where}: the run has no images (backend.kind=none); generate with "
                        f"backend.kind=shaded or controlnet")
    if kind == "coco" and subject["kind"] != "human":
        labels = "Animal3D/GenZoo" if subject["kind"] == "animal" else "PASCAL3D+"
        raise UserError(f"{where}: subject.kind={subject['kind']}, but COCO person keypoints hold humans; "
                        f"the run's labels already carry the {labels} fields (instances[].camera_labels)")
    if kind == "bedlam" and (subject["kind"] != "human" or subject["model"] not in bedlam.MODELS):
        raise UserError(f"{where}: subject.model={subject['model']}, but BEDLAM labels are SMPL / SMPL-X "
                        f"parameters (subject.model=smpl or smplx); use `synthgen export coco` or "
                        f"output.formats=[synthgen, hmr2] instead")


def _samples(run: str, total: int, progress: bool) -> Iterator[dict[str, Any]]:
    """Undecoded samples of every complete shard, in order, with a progress bar."""
    pipeline = wds.WebDataset(shard_paths(run), shardshuffle=False, empty_check=False,
                              nodesplitter=wds.single_node_only)
    yield from tqdm(pipeline, total=total, disable=not progress, unit="sample", desc="export")


def _instance_masks(raw: dict[str, Any]) -> np.ndarray | None:
    data = raw.get("instance.png")
    return None if data is None else cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def _write_image(out: Path, key: str, raw: dict[str, Any]) -> str:
    name = f"{key}.jpg"
    (out / "images" / name).write_bytes(raw["jpg"])
    return name


def _prepare(kind: str, run: str, out: Path) -> dict[str, Any]:
    manifest = RunFolder(run).read_manifest()  # refuses a folder or URL that is not a run
    check_exportable(kind, run, manifest)
    shard_paths(run)  # refuses a run without complete shards
    check_writable_folder(out, "--out", "pass a folder you can write to")
    (out / "images").mkdir(parents=True, exist_ok=True)
    return manifest


def export_coco(run: str | Path, out: str | Path, progress: bool = True) -> dict[str, Any]:
    """Write the COCO export of ``run`` into ``out``; returns counts."""
    run, out = str(run), Path(out)
    manifest = _prepare("coco", run, out)
    (out / "annotations").mkdir(exist_ok=True)
    parts = {name: out / "annotations" / f".{name}.jsonl.partial-{os.getpid()}" for name in ("images", "annotations")}
    counts = {"images": 0, "annotations": 0}
    try:
        with open(parts["images"], "w") as images, open(parts["annotations"], "w") as annotations:
            for raw in _samples(run, manifest["num_samples_written"], progress):
                labels, ids = json.loads(raw["json"]), _instance_masks(raw)
                width, height = labels["image_size"]
                entry = coco.image_entry(labels["index"], _write_image(out, raw["__key__"], raw), width, height)
                images.write(json.dumps(entry) + "\n")
                counts["images"] += 1
                for instance in labels["instances"]:
                    mask = None if ids is None else ids == instance["id"]
                    ann = coco.annotation(counts["annotations"] + 1, labels["index"], instance, mask)
                    if ann is not None:
                        annotations.write(json.dumps(ann) + "\n")
                        counts["annotations"] += 1
        _join_coco(out / COCO_FILE, parts, manifest)
    finally:
        for path in parts.values():
            path.unlink(missing_ok=True)
    log.info("COCO export: %d images, %d person annotations -> %s", counts["images"], counts["annotations"],
             out / COCO_FILE)
    return counts


def _join_coco(path: Path, parts: dict[str, Path], manifest: dict[str, Any]) -> None:
    """Stream the JSON-lines parts into one COCO file (atomically)."""
    info = {"description": f"synthgen run, recipe {manifest['recipe'].get('name')}",
            "version": __version__, "recipe_hash": manifest["recipe_hash"]}
    tmp = path.with_name(f"{path.name}.partial-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(json.dumps({"info": info, "licenses": [], "categories": [coco.PERSON]})[:-1])
        for name, part in parts.items():
            f.write(f', "{name}": [')
            with open(part) as lines:
                for k, line in enumerate(lines):
                    f.write(("," if k else "") + line.rstrip("\n"))
            f.write("]")
        f.write("}")
    os.replace(tmp, path)


def export_bedlam(run: str | Path, out: str | Path, progress: bool = True) -> dict[str, Any]:
    """Write the BEDLAM export of ``run`` into ``out`` (one npz per shard); returns counts."""
    run, out = str(run), Path(out)
    manifest = _prepare("bedlam", run, out)
    (out / "labels").mkdir(exist_ok=True)
    counts = {"images": 0, "rows": 0, "files": 0}
    rows: list[dict[str, Any]] = []
    shard = None
    for raw in _samples(run, manifest["num_samples_written"], progress):
        if raw["__url__"] != shard:
            _write_npz(out, shard, rows, counts)
            shard, rows = raw["__url__"], []
        name = _write_image(out, raw["__key__"], raw)
        counts["images"] += 1
        view = views_of(json.loads(raw["json"]))["image"]
        found = (bedlam.row(instance, view, name) for instance in view["instances"])
        rows += [r for r in found if r is not None]
    _write_npz(out, shard, rows, counts)
    log.info("BEDLAM export: %d images, %d rows in %d npz files -> %s", counts["images"], counts["rows"],
             counts["files"], out / "labels")
    return counts


def _write_npz(out: Path, shard: str | None, rows: list[dict[str, Any]], counts: dict[str, int]) -> None:
    """One shard's rows -> ``labels/shard-K.npz`` (nothing for a shard without SMPL people)."""
    if shard is None or not rows:
        return
    np.savez(out / "labels" / f"{Path(shard).stem}.npz", **bedlam.stack(rows))
    counts["files"] += 1
    counts["rows"] += len(rows)
