"""Filter stage: reject generated images that drifted from their labels.

Two kinds of checks, cheapest first, each rejection recorded with a reason:

1. :func:`cheap_checks` on the pixels alone: ``"nan"`` (non-finite values), ``"black"`` (a
   safety checker's blanked output: near-black pixels above ``filter.max_black_fraction``),
   ``"constant"`` (pixel standard deviation below ``filter.min_std``).
2. SAM alignment (``filter.sam``, HumanWild's "SAM overlay" check): SAM segments the image
   prompted with the rendered subject's box and, with ``point_prompts``, its visible keypoints;
   the sample is rejected when IoU(SAM mask, rendered mask) is below ``min_iou``
   (``"sam_iou"``) or when fewer than ``min_keypoints_in_mask`` of the visible keypoints fall
   inside SAM's mask (``"keypoints_outside_sam_mask"``). A sample whose rendered mask is empty
   is rejected as ``"empty_mask"`` without running SAM.

Why transformers' ``SamModel``/``SamProcessor`` and not ``segment-anything``'s ``SamPredictor``:
the two run the same network from the same checkpoints (``facebook/sam-vit-base|large|huge``),
but ``segment-anything`` imports ``torchvision``, which on our CPU machines exists only as the
~6 GB CUDA build of torch, whereas transformers' SAM (with its PIL image processor) needs only
torch, loads from a Hugging Face id or a local folder with ``from_pretrained``, and lets the
image encoder run batched. Masks are the same up to resize interpolation details.

Batching: images go through SAM's ViT image encoder in batches; the prompt encoder and mask
decoder (a small fraction of the cost) then run once per image with exactly that image's
prompts, so a sample's mask does not depend on which other samples share its batch (no point
padding).

Note: with ``point_prompts`` the keypoints that prompted SAM are usually inside its mask by
construction, so ``keypoints_in_sam_mask`` then mostly checks the keypoints that were not used
as prompts (at most ``max_points`` are); the IoU check carries most of the signal.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from synthgen.generate.model_check import (check_sam_model, locate, missing_entry, missing_model_error,
                                           sam_model)
from synthgen.labels import bbox_from_mask
from synthgen.recipe import FilterConfig, SamConfig

log = logging.getLogger(__name__)

__all__ = ["SampleFilter", "SamAligner", "cheap_checks", "keypoints_in_mask", "mask_iou",
           "select_points"]

BLACK_LEVEL = 8.0  # a pixel is "near-black" when all its channels are below this (0-255 scale)


# --- pure checks --------------------------------------------------------------------------------
def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (H, W) masks (any dtype; nonzero = inside).

    Two empty masks agree: 1.0.
    """
    a, b = np.asarray(a) != 0, np.asarray(b) != 0
    if a.shape != b.shape:
        raise ValueError(f"mask_iou: masks differ in shape, {a.shape} vs {b.shape}")
    union = int(np.count_nonzero(a | b))
    if union == 0:
        return 1.0
    return float(np.count_nonzero(a & b)) / union


def keypoints_in_mask(keypoints_2d: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of visible keypoints (COCO visibility 2) inside ``mask``.

    keypoints_2d: (K, 3) x, y, visibility; pixel centres at integer coordinates, so a keypoint
    falls in pixel (round(y), round(x)). mask: (H, W), nonzero = inside. Keypoints outside the
    image count as outside the mask. Returns 1.0 when no keypoint is visible.
    """
    kp = np.asarray(keypoints_2d, dtype=np.float64).reshape(-1, 3)
    mask = np.asarray(mask) != 0
    visible = kp[kp[:, 2] == 2]
    if len(visible) == 0:
        return 1.0
    cols, rows = np.rint(visible[:, 0]), np.rint(visible[:, 1])
    height, width = mask.shape
    inside = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height) & np.isfinite(cols + rows)
    hits = np.zeros(len(visible), dtype=bool)
    hits[inside] = mask[rows[inside].astype(np.int64), cols[inside].astype(np.int64)]
    return float(hits.mean())


def _to_255(image: np.ndarray) -> np.ndarray:
    """(H, W[, C]) image as float32 on the 0-255 scale; floats are taken as [0, 1]."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image.astype(np.float32)
    if np.issubdtype(image.dtype, np.floating):
        return image.astype(np.float32) * np.float32(255.0)
    raise TypeError(f"images must be uint8 (0-255) or float ([0, 1]), got {image.dtype}")


def cheap_checks(image: np.ndarray, config: FilterConfig) -> str | None:
    """Reason to reject an image from its pixels alone, or ``None`` when it passes.

    image: (H, W, 3) or (H, W), uint8 0-255 or float in [0, 1] (diffusers' ``output_type="np"``).
    Checks, in order: ``"nan"`` any non-finite value; ``"black"`` the fraction of pixels whose
    channels are all below 8/255 exceeds ``config.max_black_fraction``; ``"constant"`` the pixel
    standard deviation (0-255 scale) is below ``config.min_std``.
    """
    image = np.asarray(image)
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        return "nan"
    pixels = image if image.dtype == np.uint8 else _to_255(image)  # uint8 stays uint8: fast path
    if pixels.size == 0:
        return "constant"
    if _black_fraction(pixels) > config.max_black_fraction:
        return "black"
    if _global_std(pixels) < config.min_std:
        return "constant"
    return None


def _black_fraction(pixels: np.ndarray) -> float:
    """Fraction of pixels whose channels are all below BLACK_LEVEL."""
    if pixels.dtype == np.uint8:
        import cv2

        level = int(np.ceil(BLACK_LEVEL)) - 1
        dark = cv2.inRange(pixels, (0,) * (pixels.shape[-1] if pixels.ndim == 3 else 1),
                           (level,) * (pixels.shape[-1] if pixels.ndim == 3 else 1))
        return np.count_nonzero(dark) / dark.size
    brightest = pixels.max(axis=-1) if pixels.ndim == 3 else pixels
    return np.count_nonzero(brightest < BLACK_LEVEL) / brightest.size


def _global_std(pixels: np.ndarray) -> float:
    """Standard deviation over all values of an (H, W[, C]) image, from per-channel moments."""
    import cv2

    means, stds = cv2.meanStdDev(np.ascontiguousarray(pixels))
    means, variances = means.ravel(), stds.ravel() ** 2
    return float(np.sqrt(max(np.mean(variances + means ** 2) - np.mean(means) ** 2, 0.0)))


def select_points(points: np.ndarray, max_points: int | None) -> np.ndarray:
    """At most ``max_points`` of ``points`` (N, 2), spread over the body (farthest-point order).

    Deterministic: starts from the point nearest the centroid. ``None`` keeps all.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if max_points is None or len(points) <= max_points:
        return points
    chosen = [int(np.argmin(np.linalg.norm(points - points.mean(axis=0), axis=1)))]
    dist = np.linalg.norm(points - points[chosen[0]], axis=1)
    while len(chosen) < max_points:
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(points - points[nxt], axis=1))
    return points[sorted(chosen)]


# --- SAM ------------------------------------------------------------------------------------------
def _resolve_device(device: str | Any) -> Any:
    import torch

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _first_sentence(exc: BaseException) -> str:
    return str(exc).strip().split(". ")[0].splitlines()[0]


def _load_sam(config: SamConfig, dtype: Any) -> tuple[Any, Any]:
    """(SamProcessor, SamModel in ``dtype``) of ``config.model``, on the CPU.

    Checks first (:func:`synthgen.generate.model_check.check_sam_model`); a model on disk loads
    without the hub, one the hub serves is downloaded. Raises MissingModelError.
    """
    from transformers import SamModel, SamProcessor

    wanted = sam_model(config)
    check_sam_model(config)
    on_disk = locate(wanted.name, wanted.problems, offline=True) is None
    if not on_disk:
        log.warning("Downloading SAM %s from the Hugging Face hub", wanted.name)
    local = Path(wanted.name).expanduser()
    source = str(local) if local.is_dir() else wanted.name
    try:
        processor = SamProcessor.from_pretrained(source, local_files_only=on_disk)
        model = SamModel.from_pretrained(source, local_files_only=on_disk, dtype=dtype)
    except OSError as exc:
        entry = missing_entry(wanted, f"loading failed: {_first_sentence(exc)}")
        raise missing_model_error("the SAM filter", [entry], None) from None
    return processor, model


class SamAligner:
    """Masks from a transformers ``SamModel``, prompted with boxes and optional points.

    ``config.model``: a Hugging Face id (e.g. ``facebook/sam-vit-base``) or a local folder
    holding ``config.json`` + weights + the ``SamProcessor`` config, as written by
    ``save_pretrained``. Missing weights raise :class:`~synthgen.errors.MissingModelError` here,
    before any work.
    ``batch_size`` images go through the image encoder at once.
    """

    def __init__(self, config: SamConfig, device: str | Any = "cpu", batch_size: int = 4,
                 max_points: int | None = 8, dtype: Any = None):
        import torch

        self.config = config
        self.device = _resolve_device(device)
        self.batch_size = max(1, int(batch_size))
        self.max_points = max_points
        self.dtype = dtype or torch.float32
        start = time.perf_counter()
        self.processor, self.model = _load_sam(config, self.dtype)
        self.model.to(self.device).eval()
        self.target_size = int(self.processor.image_processor.size["longest_edge"])
        log.info("SAM %s loaded on %s in %.2f s", config.model, self.device, time.perf_counter() - start)

    def _scale(self, height: int, width: int) -> tuple[float, float]:
        """Pixel -> model-input coordinate factors (x, y), as SAM resizes the longest side."""
        scale = self.target_size / max(height, width)
        new_h, new_w = int(height * scale + 0.5), int(width * scale + 0.5)
        return new_w / width, new_h / height

    def masks(self, images: Sequence[np.ndarray], boxes: Sequence[Sequence[float]],
              points: Sequence[np.ndarray | None] | None = None) -> list[np.ndarray]:
        """One (H, W) bool mask per image.

        images: (H, W, 3) uint8 RGB (or float in [0, 1]; (H, W) gray is repeated to RGB).
        boxes: [x0, y0, x1, y1] per image in pixels. points: per image an (N, 2) array of
        positive points in pixels (None or empty = box only); at most ``max_points`` are used,
        spread out. SAM returns a single mask (``multimask_output=False``): with a box prompt
        the target is unambiguous, the case SAM's authors give for one output mask.
        """
        import torch

        if len(boxes) != len(images) or (points is not None and len(points) != len(images)):
            raise ValueError(f"masks: {len(images)} images need as many boxes and points lists, "
                             f"got {len(boxes)} boxes and {None if points is None else len(points)}")
        out: list[np.ndarray] = []
        for start in range(0, len(images), self.batch_size):
            stop = min(start + self.batch_size, len(images))
            batch = [_as_rgb8(image) for image in images[start:stop]]
            t0 = time.perf_counter()
            encoded = self.processor(images=batch, return_tensors="pt")
            pixel_values = encoded["pixel_values"].to(self.device, self.dtype)
            with torch.inference_mode():
                embeddings = self.model.get_image_embeddings(pixel_values)
                for j, image in enumerate(batch):
                    i = start + j
                    pts = None if points is None else points[i]
                    out.append(self._decode(embeddings[j:j + 1], image.shape[:2], boxes[i], pts,
                                            encoded["original_sizes"][j:j + 1],
                                            encoded["reshaped_input_sizes"][j:j + 1]))
            log.debug("SAM: %d images in %.3f s", stop - start, time.perf_counter() - t0)
        return out

    def _decode(self, embedding, size: tuple[int, int], box: Sequence[float], points,
                original_sizes, reshaped_sizes) -> np.ndarray:
        import torch

        sx, sy = self._scale(*size)
        x0, y0, x1, y1 = (float(v) for v in box)
        kwargs: dict[str, Any] = {"input_boxes": torch.tensor([[[x0 * sx, y0 * sy, x1 * sx, y1 * sy]]],
                                                              dtype=self.dtype, device=self.device)}
        if points is not None and len(points):
            chosen = select_points(points, self.max_points) * np.array([sx, sy])
            kwargs["input_points"] = torch.tensor(chosen[None, None], dtype=self.dtype, device=self.device)
            kwargs["input_labels"] = torch.ones((1, 1, len(chosen)), dtype=torch.long, device=self.device)
        # a box (with or without points) is not ambiguous: one mask, as SAM's authors advise
        # (multimask_output=True is for a lone point, where whole/part/subpart are all plausible)
        result = self.model(image_embeddings=embedding, multimask_output=False, **kwargs)
        low_res = result.pred_masks[:, :1, :1].float().cpu()  # (1, 1, 1, h, w) logits
        mask = self.processor.post_process_masks(low_res, original_sizes, reshaped_sizes)[0]
        return mask[0, 0].numpy().astype(bool)


def _as_rgb8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.clip(np.nan_to_num(_to_255(image)) + 0.5, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"images must be (H, W, 3) RGB, got shape {image.shape}")
    return np.ascontiguousarray(image[..., :3])


# --- the stage --------------------------------------------------------------------------------
def _people(sample: dict[str, Any]) -> list[dict[str, Any]]:
    """Each seen person's SAM prompt and reference: ``id``, ``box`` [x0, y0, x1, y1] (its visible
    ``bbox``, else the mask's), ``points`` (N, 2) visible keypoints, ``keypoints_2d`` (K, 3) and
    ``pixels`` (H, W) bool (its pixels of the ``instance`` layer; the whole mask for one person)."""
    mask = sample["layers"]["mask"] > 0
    instances = (sample.get("labels") or {}).get("instances") or [{"id": 1}]
    several = len(instances) > 1
    out = []
    for k, record in enumerate(instances):
        keypoints = np.asarray(record["keypoints_2d"] if "keypoints_2d" in record else sample["keypoints_2d"],
                               dtype=np.float64).reshape(-1, 3)
        pixels = sample["layers"]["instance"] == record["id"] if several else mask
        if several and not pixels.any():
            continue  # hidden behind the others: nothing for SAM to find
        x, y, w, h = (float(v) for v in (record.get("bbox") or bbox_from_mask(pixels)))
        out.append({"id": record["id"], "box": [x, y, x + w, y + h], "points": keypoints[keypoints[:, 2] == 2, :2],
                    "keypoints_2d": keypoints, "pixels": pixels})
    return out


def _verdict(people: list[dict[str, Any]], policy: str) -> dict[str, Any]:
    """A sample's verdict from its people's SAM scores (one person: that person's)."""
    failing = [p for p in people if p["reason"] is not None]
    kept = [p for p in people if p["reason"] is None]
    out: dict[str, Any] = {"sam_iou": min(p["sam_iou"] for p in people),
                           "keypoints_in_sam_mask": min(p["keypoints_in_sam_mask"] for p in people)}
    if len(people) > 1:
        out["instances"] = people
    if policy == "drop" and kept and failing:
        return out | {"accepted": True, "reason": None, "dropped": [p["id"] for p in failing]}
    reason = failing[0]["reason"] if failing else None
    return out | {"accepted": reason is None, "reason": reason}


class SampleFilter:
    """Scores samples and decides which to keep, from a recipe's ``filter`` section.

    With ``config.sam`` set, SAM is loaded here (a missing model fails now, before any work).
    """

    def __init__(self, config: FilterConfig, device: str | Any = "cpu", batch_size: int = 4):
        self.config = config
        self.aligner = SamAligner(config.sam, device, batch_size) if config.sam is not None else None

    def score(self, samples: Sequence[dict[str, Any]],
              sam_masks: Sequence[np.ndarray | None] | None = None) -> list[dict[str, Any]]:
        """Per sample ``{"accepted", "reason", "sam_iou", "keypoints_in_sam_mask"}``.

        Each sample needs ``image``; the SAM check also reads ``layers["mask"]`` (H, W) uint8
        (255 = subject), ``keypoints_2d`` (K, 3) and ``labels["instances"][0]["bbox"]`` (else the mask's box).
        Cheap checks run first and SAM only sees the images that pass them.

        sam_masks: optional (H, W) masks standing in for SAM's output, one per sample (entries
        for samples that fail the cheap checks are ignored): the seam that lets callers who
        already have masks, and tests, use the decision logic without running the model.
        """
        results = []
        for i, sample in enumerate(samples):
            if sample.get("image") is None:
                raise ValueError(f"filter: sample {sample.get('index', i)} has no image "
                                 "(backend.kind=none makes none; set filter to defaults)")
            reason = cheap_checks(sample["image"], self.config)
            results.append({"accepted": reason is None, "reason": reason, "sam_iou": None,
                            "keypoints_in_sam_mask": None})
        sam = self.config.sam
        if sam is None:
            if sam_masks is not None:
                raise ValueError("filter: sam_masks given but filter.sam is off (null)")
            return results
        if sam_masks is not None and len(sam_masks) != len(samples):
            raise ValueError(f"filter: {len(samples)} samples but {len(sam_masks)} sam_masks")

        # one SAM prompt per person (its visible box and keypoints), every person of every sample
        jobs = []
        for i, sample in enumerate(samples):
            if results[i]["reason"] is None:
                if not np.any(sample["layers"]["mask"]):
                    results[i].update(accepted=False, reason="empty_mask")
                else:
                    jobs += [(i, person) for person in _people(sample)]
        if sam_masks is not None:
            masks = [sam_masks[i] for i, _ in jobs]
        elif jobs:
            assert self.aligner is not None
            masks = self.aligner.masks([samples[i]["image"] for i, _ in jobs], [p["box"] for _, p in jobs],
                                       [p["points"] for _, p in jobs] if sam.point_prompts else None)
        else:
            masks = []
        scores: dict[int, list[dict[str, Any]]] = {}
        for (i, person), sam_mask in zip(jobs, masks):
            sam_mask = np.asarray(sam_mask) != 0
            iou = mask_iou(sam_mask, person["pixels"])
            inside = keypoints_in_mask(person["keypoints_2d"], sam_mask)
            reason = ("sam_iou" if iou < sam.min_iou else
                      "keypoints_outside_sam_mask" if inside < sam.min_keypoints_in_mask else None)
            scores.setdefault(i, []).append({"id": person["id"], "sam_iou": round(iou, 6),
                                             "keypoints_in_sam_mask": round(inside, 6), "reason": reason})
        for i, people in scores.items():
            results[i].update(_verdict(people, sam.group_policy))
        return results


