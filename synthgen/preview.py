"""Contact sheets: a row per sample with the image (keypoints and box drawn over it) and its
layers; for sequences, a row per frame with every camera."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from synthgen.render.layers import draw_skeleton, limb_colours

COLUMNS = ("image", "overlay", "normal", "depth", "parts", "edges", "skeleton")


def _colour_depth(depth_mm: np.ndarray) -> np.ndarray:
    fg = depth_mm > 0
    out = np.zeros(depth_mm.shape + (3,), dtype=np.uint8)
    if fg.any():  # inverse depth (near bright): a ground reaching the horizon leaves the near range visible
        inverse = 1.0 / depth_mm[fg].astype(np.float32)
        low, high = float(inverse.min()), float(inverse.max())
        scaled = 50 + (inverse - low) / max(high - low, 1e-9) * 205
        coloured = cv2.applyColorMap(scaled.astype(np.uint8)[:, None], cv2.COLORMAP_TURBO)[:, 0, ::-1]
        out[fg] = coloured
    return out


def _colour_parts(parts: np.ndarray) -> np.ndarray:
    palette = cv2.applyColorMap(np.linspace(0, 255, 16).astype(np.uint8)[:, None], cv2.COLORMAP_JET)[:, 0, ::-1]
    out = palette[(parts.astype(np.int64) * 7) % 16].copy()
    out[parts == 0] = 0
    return out


def overlay(image: np.ndarray, view: dict[str, Any], mask: np.ndarray | None = None,
            skeleton: np.ndarray | None = None, instance: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) RGB with each subject's pixels tinted in its own colour (``instance``: the id
    layer; else the ``mask`` in one colour), each instance's box in that colour, visible (filled) /
    hidden (ring) keypoints, and the skeleton layer (drawn from the keypoints as OpenPose-18
    when not given). ``view``: a view record of :mod:`synthgen.labels`."""
    out = image.copy()
    instances = view["instances"]
    several = instance is not None and len(instances) > 1
    colours = {i["id"]: np.array(c) for i, c in zip(instances, limb_colours(len(instances)))} if several else {}
    for ident, colour in colours.items():
        own = instance == ident
        out[own] = (0.55 * out[own] + 0.45 * colour).astype(np.uint8)
    if not several and mask is not None:
        out[mask > 0] = (0.6 * out[mask > 0] + 0.4 * np.array([40, 200, 255])).astype(np.uint8)
    if skeleton is None:
        skeleton = np.zeros_like(out)
        for instance in instances:
            skeleton = np.maximum(skeleton, draw_skeleton(np.asarray(instance["keypoints_2d"]),
                                                          instance["keypoint_names"], image.shape[1], image.shape[0]))
    elif skeleton.ndim == 2:
        skeleton = np.repeat(skeleton[..., None], 3, axis=2)
    drawn = skeleton.any(axis=2)
    out[drawn] = (0.3 * out[drawn] + 0.7 * skeleton[drawn]).astype(np.uint8)
    for record in instances:
        x, y, w, h = record["bbox"]
        box = tuple(int(c) for c in colours.get(record["id"], np.array([255, 255, 0])))
        cv2.rectangle(out, (int(round(x)), int(round(y))), (int(round(x + w)), int(round(y + h))), box, 2)
        for u, v, vis in np.asarray(record["keypoints_2d"]):
            if vis > 0:
                cv2.circle(out, (int(round(u)), int(round(v))), 4, (255, 0, 0) if vis == 2 else (255, 255, 255),
                           -1 if vis == 2 else 1)
    return out


def sample_row(sample: dict[str, Any], tile: int) -> np.ndarray:
    layers = sample["layers"]
    image = sample["image"] if sample["image"] is not None else layers["normal_rgb"]
    tiles = {
        "image": image,
        "overlay": overlay(image, sample["labels"], layers["mask"], layers["skeleton"], layers.get("instance")),
        "normal": layers["normal_rgb"],
        "depth": _colour_depth(layers["depth_mm"]),
        "parts": _colour_parts(layers["parts"]),
        "edges": np.repeat(layers["edges"][..., None], 3, axis=2),
        "skeleton": layers["skeleton"],
    }
    return np.concatenate([cv2.resize(tiles[c], (tile, tile), interpolation=cv2.INTER_AREA)
                           for c in COLUMNS], axis=1)


def contact_sheet(samples: list[dict[str, Any]], tile: int = 256) -> np.ndarray:
    """A sheet of in-memory samples: single images as rows of layers (:func:`image_sheet`),
    sequence frames as rows of cameras (:func:`frame_sheet`)."""
    if not samples:
        raise ValueError("contact_sheet needs at least one sample")
    if "views" in samples[0]:
        return frame_sheet(samples, tile=min(tile, 192))
    return image_sheet(samples, tile)


def image_sheet(samples: list[dict[str, Any]], tile: int = 256) -> np.ndarray:
    """(N*tile + header, len(COLUMNS)*tile, 3) uint8 RGB sheet."""
    header = np.full((28, tile * len(COLUMNS), 3), 255, dtype=np.uint8)
    for i, name in enumerate(COLUMNS):
        cv2.putText(header, name, (i * tile + 8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    rows = [sample_row(s, tile) for s in samples]
    for row, s in zip(rows, samples):
        cv2.putText(row, _caption(s), (6, tile - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return np.concatenate([header] + rows, axis=0)


def _caption(sample: dict[str, Any]) -> str:
    """'#index' and what the subject is: pose and age, species, or class."""
    params = sample["labels"]["instances"][0]["params"]
    words = [f"#{sample['index']}"]
    for key in ("species", "class", "pose_name"):
        if params.get(key):
            words.append(str(params[key]))
    if params.get("age_years") is not None:
        words.append(f"age {params['age_years']:.0f}")
    return " ".join(words)


def frame_sheet(samples: list[dict[str, Any]], tile: int = 192, marks: bool = True) -> np.ndarray:
    """(rows = frames, columns = cameras) grid of the images (or normals without images), with the
    body's keypoints drawn (filled = visible, ring = hidden) and camera names on top."""
    names = [c["name"] for c in samples[0]["labels"]["views"].values()]
    header = np.full((24, tile * len(names) + 90, 3), 255, np.uint8)
    for c, name in enumerate(names):
        cv2.putText(header, name, (90 + c * tile + 6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    rows = [header]
    for sample in samples:
        tiles = []
        for m, view in enumerate(sample["views"]):
            image = view.get("image")
            image = view["layers"]["normal_rgb"] if image is None else image
            image = image.copy()
            if marks:
                mask = view["layers"]["mask"] > 0
                edge = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
                image[edge] = (0, 255, 255)
                for u, v, vis in view["keypoints_2d"]:
                    if vis > 0:
                        cv2.circle(image, (int(round(u)), int(round(v))), 3, (255, 0, 0) if vis == 2 else (255, 255, 255),
                                   -1 if vis == 2 else 1)
            tiles.append(cv2.resize(image, (tile, tile), interpolation=cv2.INTER_AREA))
        label = np.full((tile, 90, 3), 255, np.uint8)
        labels = sample["labels"]
        for k, text in enumerate([f"seq {labels['sequence']['id']}", f"frame {labels['frame']}",
                                  f"{labels['time_s']:.2f} s", labels["sequence"]["motion"].get("name", "")]):
            cv2.putText(label, str(text), (4, 20 + 18 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        rows.append(np.concatenate([label] + tiles, axis=1))
    return np.concatenate(rows, axis=0)


def save_rgb(path: str | Path, rgb: np.ndarray) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), rgb[..., ::-1]):
        raise OSError(f"cannot write {path}: use a .png or .jpg name in a writable folder")
