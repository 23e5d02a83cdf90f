"""SAM masks for the filter stage: a transformers ``SamModel`` prompted with boxes and points, batched on the device.

Why transformers' ``SamModel``/``SamProcessor`` and not ``segment-anything``'s ``SamPredictor``:
the two run the same network from the same checkpoints (``facebook/sam-vit-base|large|huge``),
but ``segment-anything`` imports ``torchvision``, which on our CPU machines exists only as the
~6 GB CUDA build of torch, whereas transformers' SAM (with its PIL image processor) needs only
torch, loads from a Hugging Face id or a local folder with ``from_pretrained``, and lets the
image encoder run batched. Masks are the same up to resize interpolation details.

Batching and device: SAM runs on the image backend's device, ``filter.sam.batch_size`` images
at a time (default: the backend's batch; a CUDA out-of-memory error halves it). Its ViT image
encoder runs in ``filter.sam.dtype`` (fp16 on CUDA, fp32 on CPU), the prompt encoder and mask
decoder in fp32. Per batch, resizing (one interpolation per image size) and normalising, the
image encoder, the prompt encoder and mask decoder (one call per group of images with the same
number of point prompts: never padded, so a sample's mask does not depend on its batch), mask
upscaling and the IoU and keypoint scores (one vectorised pass) all run there; only the scores
come back to the host, in one copy.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from synthgen.generate.model_check import (check_sam_model, locate, missing_entry, missing_model_error,
                                           sam_model)
from synthgen.generate.speed import DeviceClock, resolve_device
from synthgen.recipe import SamConfig

log = logging.getLogger(__name__)

__all__ = ["SamAligner", "positions_by_key", "select_points", "to_255"]


def to_255(image: np.ndarray) -> np.ndarray:
    """(H, W[, C]) image as float32 on the 0-255 scale; floats are taken as [0, 1]."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image.astype(np.float32)
    if np.issubdtype(image.dtype, np.floating):
        return image.astype(np.float32) * np.float32(255.0)
    raise TypeError(f"images must be uint8 (0-255) or float ([0, 1]), got {image.dtype}")


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


def _sam_dtype(config: SamConfig, device: str) -> Any:
    """``config.dtype`` as a torch dtype; ``auto`` = fp16 on CUDA, fp32 elsewhere."""
    import torch

    name = config.dtype
    if name == "auto":
        name = "fp16" if device.startswith("cuda") else "fp32"
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


class SamAligner:
    """Masks from a transformers ``SamModel``, prompted with boxes and optional points, computed
    on ``device`` from end to end.

    ``config.model``: a Hugging Face id (e.g. ``facebook/sam-vit-base``) or a local folder
    holding ``config.json`` + weights + the ``SamProcessor`` config, as written by
    ``save_pretrained``. Missing weights raise :class:`~synthgen.errors.MissingModelError` here,
    before any work. ``config.dtype`` (auto: fp16 on CUDA, fp32 on CPU) is the ViT image
    encoder's precision; the prompt encoder and mask decoder run in fp32.

    Per batch of ``batch_size`` images (halved for the rest of the run by a CUDA out-of-memory
    error, unless ``oom_halving`` is off): resizing (longest side to the processor's
    ``longest_edge``, bilinear with antialiasing, rounded to 8-bit levels as the processor's PIL
    resize does; one interpolation per image size), normalising and padding run on the device;
    the ViT image encoder runs once on
    the batch; the prompt encoder and mask decoder run once per group of images with the same
    number of point prompts (no padding points: a padded prompt would change a mask, so a
    sample's mask does not depend on its batch); masks are upscaled and thresholded on the
    device. :attr:`timing` ``["sam"]`` holds the device seconds spent.
    """

    def __init__(self, config: SamConfig, device: str | Any = "cpu", batch_size: int = 4,
                 max_points: int | None = 8, dtype: Any = None, oom_halving: bool = True):
        import torch

        self.config, self.oom_halving = config, oom_halving
        self.device = resolve_device(device, "the filter's device")
        self.batch_size = max(1, int(batch_size))
        self.max_points = max_points
        self.dtype = dtype or _sam_dtype(config, self.device)
        start = time.perf_counter()
        # the ViT image encoder (nearly all of SAM's work) in ``dtype``; the prompt encoder and
        # mask decoder (small, and where box/point coordinates and mask logits live) in fp32
        self.processor, self.model = _load_sam(config, torch.float32)
        self.model.to(self.device).eval()
        self.model.vision_encoder.to(self.dtype)
        images = self.processor.image_processor
        self.target_size = int(images.size["longest_edge"])
        self.pad_size = (int(images.pad_size["height"]), int(images.pad_size["width"]))
        self.mean = torch.tensor(images.image_mean, dtype=torch.float32, device=self.device).view(3, 1, 1)
        self.std = torch.tensor(images.image_std, dtype=torch.float32, device=self.device).view(3, 1, 1)
        self.timing: dict[str, float] = {}
        self.clock = DeviceClock(self.device, self.timing)
        log.info("SAM %s loaded on %s (%s) in %.2f s", config.model, self.device,
                 str(self.dtype).removeprefix("torch."), time.perf_counter() - start)

    def input_scale(self, height: int, width: int) -> tuple[float, float]:
        """Pixel -> model-input coordinate factors (x, y), as SAM resizes the longest side."""
        new_h, new_w = self._resized(height, width)
        return new_w / width, new_h / height

    def _resized(self, height: int, width: int) -> tuple[int, int]:
        scale = self.target_size / max(height, width)
        return int(height * scale + 0.5), int(width * scale + 0.5)

    def masks(self, images: Sequence[np.ndarray], boxes: Sequence[Sequence[float]],
              points: Sequence[np.ndarray | None] | None = None) -> list[np.ndarray]:
        """One (H, W) bool mask per image, as NumPy (see :meth:`device_masks`)."""
        return [mask.cpu().numpy() for mask in self.device_masks(images, boxes, points)]

    def device_masks(self, images: Sequence[Any], boxes: Sequence[Sequence[float]],
                     points: Sequence[np.ndarray | None] | None = None) -> list[Any]:
        """One (H, W) bool mask per image, a tensor on the device.

        images: (H, W, 3) uint8 RGB, NumPy or a tensor on any device (or float in [0, 1];
        (H, W) gray is repeated to RGB). boxes: [x0, y0, x1, y1] per image in pixels. points:
        per image an (N, 2) array of positive points in pixels (None or empty = box only); at
        most ``max_points`` are used, spread out. SAM returns a single mask
        (``multimask_output=False``): with a box prompt the target is unambiguous, the case SAM's
        authors give for one output mask.
        """
        import torch

        if len(boxes) != len(images) or (points is not None and len(points) != len(images)):
            raise ValueError(f"masks: {len(images)} images need as many boxes and points lists, "
                             f"got {len(boxes)} boxes and {None if points is None else len(points)}")
        out: list[Any] = []
        start = 0
        while start < len(images):
            stop = min(start + self.batch_size, len(images))
            try:
                out += self._batch_masks(images[start:stop], boxes[start:stop],
                                         None if points is None else points[start:stop])
            except torch.cuda.OutOfMemoryError as exc:  # the except block drops exc and its frames
                if not self.oom_halving or self.batch_size == 1:
                    raise
                message = str(exc).splitlines()[0] if str(exc) else "out of memory"
                self._halve(message)
                continue
            log.debug("SAM: %d images", stop - start)
            start = stop
        return out

    def _halve(self, message: str) -> None:
        """Halve ``batch_size`` for the rest of the run after a CUDA out-of-memory error, logged."""
        import torch

        old, self.batch_size = self.batch_size, max(1, self.batch_size // 2)
        log.warning("CUDA out of memory at SAM batch %d (%s): SAM's batch halved to %d for the rest of "
                    "this run; set filter.sam.batch_size=%d to start there", old, message,
                    self.batch_size, self.batch_size)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _batch_masks(self, images: Sequence[Any], boxes: Sequence[Sequence[float]],
                     points: Sequence[np.ndarray | None] | None) -> list[Any]:
        """(H, W) bool masks of one batch (at most ``batch_size`` images), on the device."""
        import torch

        batch = [self._as_tensor(image) for image in images]
        prompts = [self._prompt(image.shape[:2], box, None if points is None else pts)
                   for image, box, pts in zip(batch, boxes, points if points is not None else [None] * len(batch))]
        with self.clock.timing("sam"), torch.inference_mode():
            embeddings = self.model.get_image_embeddings(self.pixel_values(batch)).float()
            logits = self._decode(embeddings, prompts)
            return [m.clone() for m in self._upscale(logits, [image.shape[:2] for image in batch])]

    def _as_tensor(self, image: Any) -> Any:
        """(H, W, 3) uint8 RGB on the device."""
        import torch

        if isinstance(image, torch.Tensor):
            if image.dtype == torch.uint8 and image.ndim == 3 and image.shape[-1] == 3:
                return image.to(self.device, non_blocking=True)
            image = image.cpu().numpy()
        return torch.from_numpy(_as_rgb8(image)).to(self.device)

    def pixel_values(self, batch: list[Any]) -> Any:
        """(B, 3, P, P) model input: each image resized (longest side ``target_size``), in
        8-bit levels, normalised, zero-padded at the bottom and right to ``pad_size``. Images of
        one size (a recipe's, as a rule) are resized together in one interpolation."""
        import torch
        import torch.nn.functional as F

        pixel_values = torch.zeros((len(batch), 3, *self.pad_size), dtype=torch.float32, device=self.device)
        for (size, members) in positions_by_key([tuple(image.shape[:2]) for image in batch]).items():
            height, width = self._resized(*size)
            chw = torch.stack([batch[k] for k in members]).permute(0, 3, 1, 2).float()  # (G, 3, H, W)
            if (height, width) != size:
                chw = F.interpolate(chw, (height, width), mode="bilinear", antialias=True,
                                    align_corners=False).round_().clamp_(0, 255)
            pixel_values[members, :, :height, :width] = (chw * (1 / 255) - self.mean) / self.std
        return pixel_values.to(self.dtype)

    def _prompt(self, size: tuple[int, int], box: Sequence[float], points) -> tuple[list[float], np.ndarray | None]:
        """The box and (at most ``max_points``) points of one image in model-input coordinates."""
        sx, sy = self.input_scale(*size)
        x0, y0, x1, y1 = (float(v) for v in box)
        chosen = None
        if points is not None and len(points):
            chosen = select_points(points, self.max_points) * np.array([sx, sy])
        return [x0 * sx, y0 * sy, x1 * sx, y1 * sy], chosen

    def _decode(self, embeddings, prompts: list[tuple[list[float], np.ndarray | None]]) -> Any:
        """(B, h, w) low-resolution mask logits: one decoder call per group of images with the
        same number of points (a box, with or without points, is not ambiguous: one mask, as
        SAM's authors advise)."""
        import torch

        groups: dict[int, list[int]] = {}
        for k, (_, pts) in enumerate(prompts):
            groups.setdefault(0 if pts is None else len(pts), []).append(k)
        logits = None
        for count, members in groups.items():
            kwargs: dict[str, Any] = {"input_boxes": torch.tensor(
                [[prompts[k][0]] for k in members], dtype=torch.float32, device=self.device)}
            if count:
                kwargs["input_points"] = torch.tensor(np.stack([prompts[k][1] for k in members])[:, None],
                                                      dtype=torch.float32, device=self.device)
                kwargs["input_labels"] = torch.ones((len(members), 1, count), dtype=torch.long, device=self.device)
            result = self.model(image_embeddings=embeddings[members], multimask_output=False, **kwargs)
            low_res = result.pred_masks[:, 0, 0].float()  # (G, h, w)
            if logits is None:
                logits = low_res.new_empty((len(prompts), *low_res.shape[1:]))
            logits[members] = low_res
        return logits

    def _upscale(self, logits, sizes: list[tuple[int, int]]) -> list[Any]:
        """(H, W) bool masks: logits upscaled to the padded input, cropped to the resized image,
        upscaled to the original size and thresholded at 0 (``SamProcessor.post_process_masks``),
        one interpolation per group of equal image sizes."""
        import torch.nn.functional as F

        out: list[Any] = [None] * len(sizes)
        for (height, width), members in positions_by_key([tuple(size) for size in sizes]).items():
            resized = self._resized(height, width)
            masks = F.interpolate(logits[members][:, None], self.pad_size, mode="bilinear", align_corners=False)
            masks = masks[..., :resized[0], :resized[1]]
            masks = F.interpolate(masks, (height, width), mode="bilinear", align_corners=False)[:, 0] > 0
            for k, mask in zip(members, masks):
                out[k] = mask
        return out


def positions_by_key(keys: Sequence[Any]) -> dict[Any, list[int]]:
    """key -> the positions holding it, in first-seen order."""
    groups: dict[Any, list[int]] = {}
    for k, key in enumerate(keys):
        groups.setdefault(key, []).append(k)
    return groups


def _as_rgb8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.clip(np.nan_to_num(to_255(image)) + 0.5, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"images must be (H, W, 3) RGB, got shape {image.shape}")
    return np.ascontiguousarray(image[..., :3])
