"""Conditioning layers derived from a rasterised frame: encodings ControlNets expect.

Every function is pure: arrays in, arrays out, shapes in the docstrings.
"""

from __future__ import annotations

import cv2
import numpy as np

# Camera-frame normal (OpenCV axes) -> encoded axes. "opengl": x right, y up, z toward the
# viewer, the convention of renderer normal passes and of the (128, 128, 255)-for-facing-the-
# camera look normal ControlNets are trained on. "bae": x left, y up, z toward the viewer, the
# Normal-BAE (ScanNet) estimates control_v11p_sd15_normalbae was trained on (red = facing left).
# "opencv": the raw camera axes.
NORMAL_CONVENTIONS = {
    "opengl": np.array([1.0, -1.0, -1.0], dtype=np.float32),
    "bae": np.array([-1.0, -1.0, -1.0], dtype=np.float32),
    "opencv": np.array([1.0, 1.0, 1.0], dtype=np.float32),
}

# Layer names in recipes (``output.layers``) -> keys of the render dict.
LAYER_KEYS = {"normal": "normal_rgb", "depth": "depth_mm", "mask": "mask", "parts": "parts",
              "edges": "edges", "skeleton": "skeleton", "instance": "instance"}

# OpenPose-18 body order, built from the COCO keypoint names (neck = mid-shoulders).
OPENPOSE_18 = ["nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder",
               "left_elbow", "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip",
               "left_knee", "left_ankle", "right_eye", "left_eye", "right_ear", "left_ear"]
OPENPOSE_LIMBS = [(1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11),
                  (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17)]
OPENPOSE_COLORS = [(255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0),
                   (85, 255, 0), (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255),
                   (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255), (170, 0, 255),
                   (255, 0, 255), (255, 0, 170), (255, 0, 85)]


def encode_normal(normal: np.ndarray, mask: np.ndarray, convention: str = "opengl") -> np.ndarray:
    """(H, W, 3) float unit normals (OpenCV camera axes) -> (H, W, 3) uint8 RGB, background 0."""
    rgb = np.zeros(normal.shape, dtype=np.uint8)
    flipped = normal[mask] * NORMAL_CONVENTIONS[convention]
    rgb[mask] = np.clip((flipped + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return rgb


def depth_to_millimetres(depth: np.ndarray) -> np.ndarray:
    """(H, W) float metres (0 = background) -> (H, W) uint16 millimetres, 0 = background.

    Depths beyond 65.534 m saturate at 65534 so that 0 keeps meaning "no surface".
    """
    mm = np.rint(depth * 1000.0)
    out = np.clip(mm, 0, 65534).astype(np.uint16)
    out[(depth > 0) & (out == 0)] = 1
    return out


def depth_for_control(depth: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(H, W) metres -> (H, W) uint8 inverted normalised depth (near = 255, background 0).

    The form MiDaS-style depth ControlNets see: foreground spans [~25, 255].
    """
    out = np.zeros(depth.shape, dtype=np.uint8)
    if not mask.any():
        return out
    z = depth[mask]
    near, far = float(z.min()), float(z.max())
    scaled = 1.0 - (z - near) / max(far - near, 1e-6)
    out[mask] = np.clip(25.0 + 230.0 * scaled, 0, 255).astype(np.uint8)
    return out


def canny_edges(image: np.ndarray, low: int, high: int) -> np.ndarray:
    """(H, W, 3) or (H, W) uint8 -> (H, W) uint8 edges in {0, 255} (OpenCV Canny)."""
    return cv2.Canny(image, low, high)


def openpose_keypoints(keypoints_2d: np.ndarray, names: list[str]) -> np.ndarray:
    """(K, 3) [x, y, visibility] with COCO names -> (18, 3) OpenPose-18 order (vis 0 = missing)."""
    index = {n: i for i, n in enumerate(names)}
    out = np.zeros((18, 3), dtype=np.float64)
    for j, name in enumerate(OPENPOSE_18):
        if name == "neck":
            if "left_shoulder" not in index or "right_shoulder" not in index:
                continue
            ls, rs = keypoints_2d[index["left_shoulder"]], keypoints_2d[index["right_shoulder"]]
            if ls[2] > 0 and rs[2] > 0:
                out[j] = [(ls[0] + rs[0]) / 2, (ls[1] + rs[1]) / 2, min(ls[2], rs[2])]
        elif name in index:
            out[j] = keypoints_2d[index[name]]
    return out


def draw_skeleton(keypoints_2d: np.ndarray, names: list[str], width: int, height: int,
                  edges: list[tuple[str, str]] | None = None) -> np.ndarray:
    """The ``skeleton`` layer: (K, 3) pixels + COCO visibility -> (H, W, 3) uint8 RGB on black.

    ``edges`` None: the OpenPose-18 stick figure from COCO names, the way OpenPose ControlNets
    were trained; else the subject's own limb graph (pairs of keypoint names), see
    :func:`draw_limbs`. Points with visibility 0 are not drawn.
    """
    if edges is not None:
        return draw_limbs(keypoints_2d, names, edges, width, height)
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    points = openpose_keypoints(keypoints_2d, names)
    stick = max(2, int(round(4 * max(width, height) / 512)))
    for (a, b), color in zip(OPENPOSE_LIMBS, OPENPOSE_COLORS):
        if points[a, 2] <= 0 or points[b, 2] <= 0:
            continue
        (xa, ya), (xb, yb) = points[a, :2], points[b, :2]
        length = float(np.hypot(xb - xa, yb - ya))
        angle = float(np.degrees(np.arctan2(yb - ya, xb - xa)))
        polygon = cv2.ellipse2Poly((int(round((xa + xb) / 2)), int(round((ya + yb) / 2))),
                                   (int(length / 2), stick), int(round(angle)), 0, 360, 1)
        cv2.fillConvexPoly(canvas, polygon, tuple(int(c * 0.6) for c in color))
    for j, color in enumerate(OPENPOSE_COLORS):
        if points[j, 2] > 0:
            cv2.circle(canvas, (int(round(points[j, 0])), int(round(points[j, 1]))), stick, color, -1)
    return canvas


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


def keypoint_visibility(uv: np.ndarray, depth_kp: np.ndarray, parts: np.ndarray,
                        depth: np.ndarray, keypoint_parts: list[tuple[int, ...]],
                        tolerance: float = 0.25) -> np.ndarray:
    """COCO visibility codes for projected keypoints.

    uv: (K, 2) pixels; depth_kp: (K,) camera z; parts: (H, W) part ids; depth: (H, W) metres.
    2 = the pixel shows one of the keypoint's own parts within ``tolerance`` metres of it,
    1 = inside the image but hidden, 0 = outside the image or behind the camera.
    """
    h, w = parts.shape
    col, row = np.rint(uv[:, 0]).astype(int), np.rint(uv[:, 1]).astype(int)
    inside = (depth_kp > 0) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
    vis = np.where(inside, 1, 0).astype(np.int64)
    for k in np.flatnonzero(inside):
        part = int(parts[row[k], col[k]])
        close = abs(float(depth[row[k], col[k]]) - float(depth_kp[k])) < tolerance
        if part in keypoint_parts[k] and close:
            vis[k] = 2
    return vis
