"""Read synthgen shards back for training: a webdataset pipeline yielding decoded arrays.

Image runs and sequence runs read alike, one item per shard sample (an image, or a frame of
every body-worn camera):

>>> from synthgen.data import load_shards
>>> for item in load_shards("out/quickstart"):
...     view = item["views"]["image"]       # sequences: item["views"]["cam0"], ...
...     view["image"]                       # (H, W, 3) uint8 RGB
...     view["depth"]                       # (H, W) float32 metres, 0 = background
...     view["instances"][0]["keypoints_2d"]  # (K, 3) float32 x, y, COCO visibility
...     item["labels"]                      # the whole label record (see synthgen.labels)

A single-image run's one view is also merged into the item (``item["image"]``,
``item["instances"]``, ...). ``flat=True`` puts the arrays of a view's one instance beside it
(``item["keypoints_2d"]``, ``item["bbox"]``, ...) for single-subject training code. Runs with
``output.formats=[synthgen, hmr2]`` also give ``item["data.pyd"]``, 4D-Humans' list of people.
``examples/train_regressor.py`` shows a whole training loop on these items.

Hugging Face ``datasets`` reads the same shards:
``datasets.load_dataset("webdataset", data_files={"train": shard_paths(DIR)}, split="train")``.

A run on object storage reads the same way: ``load_shards("s3://bucket/run")`` (fsspec, with the
backend's standard credentials and endpoint variables, e.g. ``AWS_ENDPOINT_URL``). Only shards
whose sidecar is there (complete ones) are read.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any, Iterable

import cv2
import numpy as np
import webdataset as wds
from webdataset.gopen import gopen_schemes

from synthgen.engine.run_folder import RunFolder, is_url, plan_shards
from synthgen.errors import UserError
from synthgen.labels import views_of

VIEW_ARRAYS = ("cam_int", "cam_ext", "cam_to_world")
INSTANCE_ARRAYS = ("keypoints_2d", "keypoints_3d", "bbox", "center", "scale")
PARAM_ARRAYS = ("betas", "body_pose", "global_orient", "transl", "bone_rotvec", "root_transform", "poses")


def _gopen_fsspec(url: str, mode: str = "rb", bufsize: int = 8192, **kw):
    """webdataset's opener for object-store URLs, through fsspec."""
    import fsspec

    return fsspec.open(url, mode).open()


# webdataset opens URLs through its gopen_schemes table: object stores go through fsspec (gs://
# too when gcsfs is installed, instead of webdataset's gsutil pipe)
for _scheme in ("s3", "gcs", "az", "abfs", "abfss", "memory", *(("gs",) if importlib.util.find_spec("gcsfs") else ())):
    gopen_schemes[_scheme] = _gopen_fsspec


def shard_paths(dataset: str | Path) -> list[str]:
    """Paths or URLs of the complete shards (those with a sidecar) of a run folder or URL, in
    order; or the given shard ``.tar`` itself."""
    location = str(dataset)
    if location.endswith(".tar"):
        if not is_url(location) and not Path(location).is_file():
            raise UserError(f"{location}: no such shard file (give a shard .tar, or the --out folder or URL "
                            f"of a `synthgen generate` run)")
        return [location]
    folder = RunFolder(location)
    recipe = folder.recipe()
    tasks = plan_shards(recipe.num_samples, recipe.output.shard_size)
    shards = [folder.url(folder.shard_rel(tasks[k])) for k in sorted(folder.complete(tasks))]
    if not shards:
        raise UserError(f"{location} has no complete shard yet (see `synthgen status {location}`)")
    return shards


def decode_image(key: str, data: bytes) -> Any:
    """A webdataset decoder for PNG/JPG members: RGB or one-channel arrays, 16-bit kept."""
    ext = key.rsplit(".", 1)[-1].lower()
    if ext not in ("png", "jpg", "jpeg"):
        return None
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is not None and array.ndim == 3 and array.shape[2] in (3, 4):
        array = cv2.cvtColor(array, cv2.COLOR_BGR2RGB if array.shape[2] == 3 else cv2.COLOR_BGRA2RGBA)
    return array


def _instance_arrays(instance: dict[str, Any]) -> dict[str, Any]:
    out = dict(instance)
    for name in INSTANCE_ARRAYS:
        if name in out:
            out[name] = np.asarray(out[name], dtype=np.float32)
    params = instance.get("params", {})
    out["params"] = {k: (np.asarray(v, dtype=np.float32) if k in PARAM_ARRAYS else v) for k, v in params.items()}
    return out


def _view_members(raw: dict[str, Any], single: bool) -> dict[str, dict[str, Any]]:
    """Decoded members by view: ``jpg`` / ``NAME.png`` (images) or ``camK.jpg`` / ``camK.NAME.png``."""
    views: dict[str, dict[str, Any]] = {}
    for key, value in raw.items():
        if key.startswith("__") or key in ("json", "npz", "data.pyd"):
            continue
        view, _, member = (("image", "", key) if single else key.partition("."))
        name = member.rsplit(".", 1)[0] if member.count(".") else "image"
        if name == "depth":
            value = value.astype(np.float32) / 1000.0
        elif name == "mask":
            value = value > 0
        views.setdefault(view, {})[name] = value
    return views


def to_training_sample(raw: dict[str, Any], flat: bool = False) -> dict[str, Any]:
    """A decoded webdataset sample -> ``{"__key__", "labels", "views": {name: view}}``; a view holds
    its image and layers (depth in metres, mask bool), ``cam_int``/``cam_ext`` and ``instances``
    as float32 arrays."""
    labels = raw["json"]
    single = "views" not in labels
    members = _view_members(raw, single)
    views = {}
    for name, record in views_of(labels).items():
        view = members.get(name, {})
        view.update({k: np.asarray(record[k], dtype=np.float32) for k in VIEW_ARRAYS if k in record})
        view["instances"] = [_instance_arrays(i) for i in record["instances"]]
        if flat:
            view.update(_flat(view["instances"], raw["__key__"], name))
        views[name] = view
    out: dict[str, Any] = {"__key__": raw["__key__"], "labels": labels, "views": views}
    if single:
        out.update(views["image"])
    if "npz" in raw:
        out.update({f"npz.{k}": v for k, v in raw["npz"].items()})
    if "data.pyd" in raw:  # output.formats: hmr2 (4D-Humans' list of people)
        out["data.pyd"] = raw["data.pyd"]
    return out


def _flat(instances: list[dict[str, Any]], key: str, view: str) -> dict[str, Any]:
    if len(instances) != 1:
        raise UserError(f"sample {key} view {view} has {len(instances)} instances; flat=True needs exactly "
                        f"one (read item['views'][view]['instances'] instead)")
    instance = instances[0]
    return {k: instance[k] for k in INSTANCE_ARRAYS if k in instance} | instance["params"]


def load_shards(dataset: str | Path | Iterable[str], shuffle: int = 0, split_by_node: bool = True,
                flat: bool = False):
    """A ``webdataset.WebDataset`` over a dataset folder or shard paths, decoded for training.

    ``shuffle``: sample shuffle buffer (0 = file order; keep 0 for sequences to keep frames in
    order). Under torch.distributed, shards are split across ranks (``split_by_node``) and
    across DataLoader workers. ``flat``: see the module docstring.
    """
    urls = shard_paths(dataset) if isinstance(dataset, (str, Path)) else list(dataset)
    pipeline = wds.WebDataset(urls, shardshuffle=False, empty_check=False,
                              nodesplitter=wds.split_by_node if split_by_node else wds.single_node_only)
    if shuffle:
        pipeline = pipeline.shuffle(shuffle)
    return pipeline.decode(decode_image).map(functools.partial(to_training_sample, flat=flat))
