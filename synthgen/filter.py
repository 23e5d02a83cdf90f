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

SAM itself (which model class, batching, device, dtype): :mod:`synthgen.sam`.

Note: with ``point_prompts`` the keypoints that prompted SAM are usually inside its mask by
construction, so ``keypoints_in_sam_mask`` then mostly checks the keypoints that were not used
as prompts (at most ``max_points`` are); the IoU check carries most of the signal.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from synthgen.labels import bbox_from_mask
from synthgen.recipe import FilterConfig
from synthgen.sam import SamAligner, positions_by_key, select_points, to_255

log = logging.getLogger(__name__)

__all__ = ["SampleFilter", "SamAligner", "cheap_checks", "keypoints_in_mask", "mask_iou", "mask_scores",
           "select_points"]

BLACK_LEVEL = 8.0  # a pixel is "near-black" when all its channels are below this (0-255 scale)


# --- pure checks --------------------------------------------------------------------------------
def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (H, W) masks (any dtype; nonzero = inside).

    Two empty masks agree: 1.0. One mask's case of :func:`mask_scores`.
    """
    a, b = np.asarray(a) != 0, np.asarray(b) != 0
    return mask_scores([a], [{"pixels": b, "keypoints_2d": np.zeros((0, 3))}])[0][0]


def keypoints_in_mask(keypoints_2d: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of visible keypoints (COCO visibility 2) inside ``mask``.

    keypoints_2d: (K, 3) x, y, visibility; pixel centres at integer coordinates, so a keypoint
    falls in pixel (round(y), round(x)). mask: (H, W), nonzero = inside. Keypoints outside the
    image count as outside the mask. Returns 1.0 when no keypoint is visible. One mask's case
    of :func:`mask_scores`.
    """
    mask = np.asarray(mask) != 0
    return mask_scores([mask], [{"pixels": mask, "keypoints_2d": keypoints_2d}])[0][1]


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
    pixels = image if image.dtype == np.uint8 else to_255(image)  # uint8 stays uint8: fast path
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


def mask_scores(masks: Sequence[Any], people: Sequence[dict[str, Any]]) -> list[tuple[float, float]]:
    """(IoU with the person's rendered pixels, fraction of its visible keypoints inside) per SAM
    mask, for the whole batch at once (:func:`mask_iou` and :func:`keypoints_in_mask` are its
    one-mask cases), computed where the masks are (the device, for SAM's own): integer counts,
    float64 ratios, brought back to the host in one copy (one sync) as a (J, 2) array.

    masks: J (H, W) bool masks (tensors or arrays); people: J dicts with ``pixels`` (H, W) bool
    and ``keypoints_2d`` (K, 3). Masks of one size are scored together (one rendered-pixel copy).
    """
    import torch

    if not len(masks):
        return []
    masks = [torch.as_tensor(mask) for mask in masks]
    device = masks[0].device
    scores = torch.empty((len(masks), 2), dtype=torch.float64, device=device)
    for size, members in positions_by_key([tuple(mask.shape) for mask in masks]).items():
        stack = torch.stack([masks[k] for k in members]).to(device)  # (G, H, W) bool
        pixels = np.stack([np.asarray(people[k]["pixels"], dtype=bool) for k in members])
        if pixels.shape[1:] != size:
            raise ValueError(f"mask_iou: masks differ in shape, {size} vs {pixels.shape[1:]}")
        pixels = torch.from_numpy(pixels).to(device, non_blocking=True)
        inter = (stack & pixels).flatten(1).sum(1).double()
        union = (stack | pixels).flatten(1).sum(1).double()
        rows = torch.tensor(members, device=device)
        scores[rows, 0] = torch.where(union > 0, inter / union.clamp(min=1), 1.0)
        scores[rows, 1] = _keypoints_inside(stack, [people[k]["keypoints_2d"] for k in members])
    return [(float(a), float(b)) for a, b in scores.cpu().numpy()]


def _keypoints_inside(masks: Any, keypoints: Sequence[np.ndarray]) -> Any:
    """The fraction of visible keypoints inside each (H, W) bool mask of ``masks`` (G, H, W), with
    its (K, 3) keypoints: (G,) float64 on the masks' device, one gather for the group."""
    import torch

    count, height, width = masks.shape
    flat_index, visible = [], np.zeros(count, dtype=np.float64)
    for k, kp in enumerate(keypoints):
        kp = np.asarray(kp, dtype=np.float64).reshape(-1, 3)
        seen = kp[kp[:, 2] == 2]
        cols, rows = np.rint(seen[:, 0]), np.rint(seen[:, 1])
        inside = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height) & np.isfinite(cols + rows)
        flat_index.append(rows[inside].astype(np.int64) * width + cols[inside].astype(np.int64))
        visible[k] = len(seen)
    longest = max((len(index) for index in flat_index), default=0)
    index = np.full((count, max(longest, 1)), -1, dtype=np.int64)  # -1: no keypoint in this column
    for k, row in enumerate(flat_index):
        index[k, :len(row)] = row
    index = torch.from_numpy(index).to(masks.device, non_blocking=True)
    hits = (masks.reshape(count, -1).gather(1, index.clamp(min=0)) & (index >= 0)).sum(1).double()
    visible = torch.from_numpy(visible).to(masks.device, non_blocking=True)
    return torch.where(visible > 0, hits / visible.clamp(min=1), 1.0)


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

    def __init__(self, config: FilterConfig, device: str | Any = "cpu", batch_size: int = 4,
                 oom_halving: bool = True):
        self.config = config
        self.aligner = None
        if config.sam is not None:  # filter.sam.batch_size, else the caller's (the image backend's)
            self.aligner = SamAligner(config.sam, device, config.sam.batch_size or batch_size,
                                      oom_halving=oom_halving)

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
            masks = [np.asarray(sam_masks[i]) != 0 for i, _ in jobs]
        elif jobs:
            assert self.aligner is not None
            images = [samples[i].get("image_device", samples[i]["image"]) for i, _ in jobs]
            masks = self.aligner.device_masks(images, [p["box"] for _, p in jobs],
                                              [p["points"] for _, p in jobs] if sam.point_prompts else None)
        else:
            masks = []
        scores: dict[int, list[dict[str, Any]]] = {}
        for (i, person), (iou, inside) in zip(jobs, mask_scores(masks, [p for _, p in jobs])):
            reason = ("sam_iou" if iou < sam.min_iou else
                      "keypoints_outside_sam_mask" if inside < sam.min_keypoints_in_mask else None)
            scores.setdefault(i, []).append({"id": person["id"], "sam_iou": round(iou, 6),
                                             "keypoints_in_sam_mask": round(inside, 6), "reason": reason})
        for i, people in scores.items():
            results[i].update(_verdict(people, sam.group_policy))
        return results


