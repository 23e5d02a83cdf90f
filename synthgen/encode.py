"""Sample encoders: arrays and labels -> the bytes of a shard record's members.

The factories build their records with these (``{"__key__", "json": encode_json(labels),
"jpg": encode_jpg(image), "NAME.png": encode_layer(NAME, layer), ...}``); the engine only writes
the bytes it is handed.
"""

from __future__ import annotations

import io
import json
from typing import Any

import cv2
import numpy as np

# Rendered layers are flat regions on black: the "up" filter with run-length deflate is much
# faster than OpenCV's default adaptive filtering for about the same size; one-channel label maps
# (mask, parts, ids) are faster and smaller without a filter, 16-bit depth with the default
# deflate strategy and the "sub" filter (ground and walls: depth changes evenly along a row);
# drawings (OpenPose skeletons: thin flat-colour limbs on black) are label maps in RGB, without
# a filter. The timings: benchmarks/README.md.
_PNG_RGB = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
            cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
_PNG_LABELS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
               cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]
_PNG_16BIT = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]


def _png_params(array: np.ndarray, drawing: bool) -> list[int]:
    if array.dtype == np.uint16:
        return _PNG_16BIT
    return _PNG_LABELS if array.ndim == 2 or drawing else _PNG_RGB


def _opencv_channel_order(array: np.ndarray) -> np.ndarray:
    """RGB(A) -> BGR(A) as OpenCV's codecs expect (cvtColor: much faster than a reversed copy)."""
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return cv2.cvtColor(array, cv2.COLOR_RGB2BGR if array.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    return np.ascontiguousarray(array)


def encode_png(array: np.ndarray, drawing: bool = False) -> bytes:
    """(H, W) uint8/uint16 or (H, W, 3|4) uint8 RGB(A) -> PNG bytes (16-bit stays 16-bit);
    ``drawing``: flat colours on black, such as skeletons (only the speed and size change)."""
    ok, buf = cv2.imencode(".png", _opencv_channel_order(array), _png_params(array, drawing))
    if not ok:
        raise ValueError(f"PNG encoding failed for an array of shape {array.shape} {array.dtype}")
    return buf.tobytes()


DRAWN_LAYERS = {"skeleton"}  # stored layers that are drawings (see the PNG settings above)


def encode_layer(name: str, array: np.ndarray) -> bytes:
    """A stored layer ``name`` (a key of ``output.layers``) as PNG bytes, with its kind's settings."""
    return encode_png(array, drawing=name in DRAWN_LAYERS)


def encode_jpg(rgb: np.ndarray, quality: int) -> bytes:
    """(H, W, 3) uint8 RGB -> JPEG bytes."""
    ok, buf = cv2.imencode(".jpg", _opencv_channel_order(rgb), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def encode_json(labels: dict[str, Any]) -> bytes:
    return json.dumps(labels, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def encode_npz(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()
