"""The ``skeleton`` layer for subjects with their own keypoint graph (animals, object boxes).

Subject models that define ``skeleton`` (pairs of keypoint names) get ``draw_skeleton(keypoints_2d,
width, height)`` from :func:`draw_limbs`: each limb a coloured stick on black (colours spaced in
hue, in limb order), keypoints as dots; points with visibility 0 (outside the image) are skipped.
"""

from __future__ import annotations

import cv2
import numpy as np


def limb_colours(count: int) -> list[tuple[int, int, int]]:
    """``count`` RGB colours evenly spaced in hue."""
    hsv = np.stack([np.linspace(0, 179, count, endpoint=False), np.full(count, 255), np.full(count, 255)], 1)
    rgb = cv2.cvtColor(hsv.astype(np.uint8)[None], cv2.COLOR_HSV2RGB)[0]
    return [tuple(int(c) for c in colour) for colour in rgb]


def draw_limbs(keypoints_2d: np.ndarray, names: list[str], edges: list[tuple[str, str]], width: int,
               height: int) -> np.ndarray:
    """(K, 3) pixels + COCO visibility -> (H, W, 3) uint8 RGB limb graph on black."""
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    index = {n: i for i, n in enumerate(names)}
    points = np.asarray(keypoints_2d, dtype=np.float64)
    stick = max(1, int(round(3 * max(width, height) / 512)))
    for (a, b), colour in zip(edges, limb_colours(len(edges))):
        pa, pb = points[index[a]], points[index[b]]
        if pa[2] <= 0 or pb[2] <= 0:
            continue
        cv2.line(canvas, (int(round(pa[0])), int(round(pa[1]))), (int(round(pb[0])), int(round(pb[1]))),
                 tuple(int(c * 0.7) for c in colour), stick + 1, cv2.LINE_AA)
    for u, v, vis in points:
        if vis > 0:
            cv2.circle(canvas, (int(round(u)), int(round(v))), stick + 1, (255, 255, 255), -1, cv2.LINE_AA)
    return canvas
