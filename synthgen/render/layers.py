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
# "omnidata": x left, y up, z away from the viewer, what HumanWild's SDXL normal ControlNet
# (geyongtao/HumanWild, trained on omnidata-style normals) takes: RGB = (n . [-1, -1, +1] + 1) / 2;
# measured on WildHuman's data/controlnet_conditions/00000_0_0002.png (see tests/render/test_layers.py).
NORMAL_CONVENTIONS = {
    "opengl": np.array([1.0, -1.0, -1.0], dtype=np.float32),
    "bae": np.array([-1.0, -1.0, -1.0], dtype=np.float32),
    "opencv": np.array([1.0, 1.0, 1.0], dtype=np.float32),
    "omnidata": np.array([-1.0, -1.0, 1.0], dtype=np.float32),
}

# The camera-facing normal in OpenCV axes (a wall behind the subject, seen head on).
FACING_CAMERA = np.array([0.0, 0.0, -1.0], dtype=np.float32)
GREY = 127  # HumanWild's background: (127, 127, 127) with alpha 0 in its RGBA conditions

# Layer names in recipes (``output.layers``) -> keys of the render dict.
LAYER_KEYS = {"normal": "normal_rgb", "depth": "depth_mm", "mask": "mask", "parts": "parts",
              "edges": "edges", "skeleton": "skeleton", "instance": "instance", "shaded": "shaded"}

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


def _quantise_normals(normals: np.ndarray, convention: str) -> np.ndarray:
    """(..., 3) float OpenCV-axes normals -> (..., 3) uint8 in ``convention``, rint((n' + 1) 127.5)."""
    if normals.ndim == 3 and normals.dtype == np.float32:  # an image: two OpenCV passes
        affine = np.hstack([np.diag(NORMAL_CONVENTIONS[convention] * 127.5), np.full((3, 1), 127.5)])
        # (n' + 1) 127.5 lies in [0, 255] for unit normals (|.| only folds -1e-5 rounding to 0);
        # convertScaleAbs rounds to nearest and saturates
        return cv2.convertScaleAbs(cv2.transform(normals, affine.astype(np.float32)))
    q = normals * NORMAL_CONVENTIONS[convention]
    q += 1.0  # in place: image-sized temporaries cost a page fault per 4 KiB
    q *= 127.5
    q += 0.5
    return np.clip(q, 0, 255, out=q).astype(np.uint8)


def normal_background_value(convention: str, background: str) -> np.ndarray:
    """(3,) uint8 RGB of a flat background: black 0, grey 127, or a camera-facing surface.

    ``facing`` is written the way the Normal-BAE annotator of ControlNet 1.1 quantises
    (``((n + 1) * 0.5).clip(0, 1) * 255`` cast to uint8, i.e. floored): (127, 127, 255) for bae
    and opengl, the value it writes for a wall seen head on. It never writes (0, 0, 0), which is
    not a unit normal.
    """
    if background == "black":
        return np.zeros(3, dtype=np.uint8)
    if background in ("grey", "ground"):
        return np.full(3, GREY, dtype=np.uint8)
    if background == "facing":
        flipped = FACING_CAMERA * NORMAL_CONVENTIONS[convention]
        return (np.clip((flipped + 1.0) * 0.5, 0, 1) * 255.0).astype(np.uint8)
    raise ValueError(f"normal background {background!r} is not black, grey, facing or ground")


def encode_normal(normal: np.ndarray, mask: np.ndarray, convention: str = "opengl",
                  background: str = "black", scene_normal: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) float unit normals (OpenCV camera axes) -> (H, W, 3) uint8 RGB.

    mask: (H, W) bool, the subject. Background pixels get :func:`normal_background_value`;
    with ``background="ground"``, ``scene_normal`` ((H, W, 3) float, 0 where no surface, e.g.
    :func:`ground_plane_normals`) is encoded behind the subject and grey elsewhere.
    """
    rgb = np.empty(normal.shape, dtype=np.uint8)
    height, width = normal.shape[:2]
    # one row tiled and copied row by row: NumPy broadcasts a (3,) value over an image 50x slower
    rgb.reshape(height, -1)[:] = np.tile(normal_background_value(convention, background), width)
    if background == "ground" and scene_normal is not None:
        seen = ~mask & (np.abs(scene_normal).sum(axis=-1) > 0)
        rgb[seen] = _quantise_normals(scene_normal[seen], convention)
    # the subject's box, quantised whole and copied through the mask: boolean gathers and
    # scatters of (H, W, 3) images cost five times as much
    mask8 = mask.view(np.uint8) if mask.dtype == bool else (mask > 0).view(np.uint8)
    x, y, w, h = cv2.boundingRect(mask8)
    box = (slice(y, y + h), slice(x, x + w))
    if w and h:
        rgb[box] = cv2.copyTo(_quantise_normals(normal[box], convention), mask8[box], rgb[box])
    return rgb


def ground_plane_normals(K: np.ndarray, cam_ext: np.ndarray, width: int, height: int) -> np.ndarray:
    """(H, W, 3) float32 camera-frame normals of the world ground plane z = 0, 0 where not seen.

    K: (3, 3); cam_ext: (4, 4) world -> camera (OpenCV). A pixel sees the ground when its ray
    meets z = 0 in front of the camera; the normal is the world up axis, turned toward the camera.
    """
    R, t = np.asarray(cam_ext, np.float64)[:3, :3], np.asarray(cam_ext, np.float64)[:3, 3]
    centre = -R.T @ t  # camera centre in the world
    cols, rows = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    rays_cam = np.stack([cols, rows, np.ones_like(cols)], -1) @ np.linalg.inv(np.asarray(K, np.float64)).T
    rays_z = rays_cam @ R[2]  # world z component of each ray (R^T d)_z
    with np.errstate(divide="ignore", invalid="ignore"):
        hit = (-centre[2] / rays_z) > 0
    up_cam = R[:, 2] * (1.0 if centre[2] >= 0 else -1.0)  # world +z (or -z below the ground)
    out = np.zeros((height, width, 3), dtype=np.float32)
    out[hit] = up_cam.astype(np.float32)
    return out


def shade(normal: np.ndarray, mask: np.ndarray, ambient: float = 0.5, light: float = 0.5) -> np.ndarray:
    """(H, W, 3) float OpenCV normals -> (H, W, 3) uint8 shaded render, background 0.

    GenZoo's MeshRenderer look (``color=None``): each surface coloured by its normal,
    (n + 1) / 2 in OpenGL camera axes, lit by ``ambient`` plus a headlight of weight ``light``
    (Lambert: the cosine between the normal and the view direction).
    """
    out = np.zeros(normal.shape, dtype=np.uint8)
    n = normal[mask].astype(np.float32)
    albedo = (n * NORMAL_CONVENTIONS["opengl"] + 1.0) * 0.5
    lit = ambient + light * np.clip(-n[:, 2:3], 0.0, 1.0)
    out[mask] = np.clip(albedo * lit * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


def depth_to_millimetres(depth: np.ndarray) -> np.ndarray:
    """(H, W) float metres (0 = background) -> (H, W) uint16 millimetres, 0 = background.

    Depths beyond 65.534 m saturate at 65534 so that 0 keeps meaning "no surface".
    """
    mm = np.rint(depth * 1000.0)
    out = np.clip(mm, 0, 65534).astype(np.uint16)
    out[(depth > 0) & (out == 0)] = 1
    return out


def encode_depth(depth: np.ndarray, mask: np.ndarray, form: str = "minmax",
                 max_depth_m: float = 10.0) -> np.ndarray:
    """(H, W) depth (any unit for min-max forms; metres for ``metric``) -> (H, W) uint8, near bright.

    mask: (H, W) bool foreground; background is 0 in every form.
    - ``minmax``: GenZoo's ``rint(255 (1 - (d - min) / (max - min)))`` over the foreground, which
      spans 0..255 (a flat subject is 255).
    - ``minmax_25``: the same squeezed into 25..255, truncated (synthgen's earlier form).
    - ``inverse``: min-max normalised inverse depth 1/d (MiDaS-style disparity), rint to 0..255.
    - ``metric``: ``rint(255 (1 - d / max_depth_m))`` clipped to 0..255 (a fixed metric scale).
    """
    out = np.zeros(depth.shape, dtype=np.uint8)
    if not mask.any():
        return out
    z = depth[mask].astype(np.float64)
    if form == "minmax_25":
        return depth_for_control(depth, mask)
    if form == "metric":
        scaled = 1.0 - z / max_depth_m
    else:
        if form == "inverse":
            z = -1.0 / z  # larger = farther, like z, so the same min-max applies
        elif form != "minmax":
            raise ValueError(f"depth form {form!r} is not minmax, minmax_25, inverse or metric")
        near, far = z.min(), z.max()
        scaled = 1.0 - (z - near) / (far - near) if far > near else np.ones_like(z)
    out[mask] = np.rint(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)
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


def control_from_layers(layers: dict, encoding: dict) -> np.ndarray:
    """The (H, W, 3) uint8 RGB image a ControlNet receives, from a sample's render dict.

    layers: the render dict (``normal`` float, ``mask``, ``depth_mm``, ``skeleton``, and
    ``scene_normal`` when a ground is wanted; with scene geometry ``scene``, its (H, W) bool
    pixels, and ``scene_in``, the layers that show it); encoding: a resolved encoding
    (:meth:`synthgen.recipe.ControlNetUnit.resolved_encoding`). Depth forms read the stored
    16-bit millimetres, so anyone can recompute them from ``depth.png``.
    """
    mask = layers["mask"] > 0
    layer = encoding["layer"]
    height, width = mask.shape
    detect = detect_size(width, height, encoding.get("resolution"))
    if layers.get("scene") is not None and layer in layers.get("scene_in", ()):  # scene geometry drawn too
        mask = mask | layers["scene"]
    if layer == "normal":
        image = encode_normal(layers["normal"], mask, encoding["normal"], encoding["background"],
                              layers.get("scene_normal"))
    elif layer == "depth":
        depth = layers["depth_mm"].astype(np.float64) / 1000.0
        image = encode_depth(depth, mask, encoding["depth"], encoding.get("max_depth_m", 10.0))
    elif layer == "edges":
        source = layers["shaded"] if encoding["edges"] == "shaded" else layers["normal_rgb"]
        if detect is not None:  # the annotator ran on the downscaled image
            source = cv2.resize(source, detect, interpolation=cv2.INTER_AREA)
        image = canny_edges(source, *encoding["canny"])
    elif layer == "mask":
        image = layers["mask"]
    else:
        image = layers[layer]
    if detect is not None:
        if image.shape[:2] != detect[::-1]:
            image = cv2.resize(image, detect, interpolation=cv2.INTER_AREA)
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image)


def detect_size(width: int, height: int, resolution: int | None) -> tuple[int, int] | None:
    """(w, h) with the short side ``resolution`` (aspect kept) at which an annotator computes a
    ControlNet input, as controlnet_aux's ``detect_resolution`` does before resizing the result to
    the image (INTER_LINEAR); None when that is the image size itself or no resolution is set."""
    if not resolution or resolution == min(width, height):
        return None
    scale = resolution / min(width, height)
    return max(1, int(round(width * scale))), max(1, int(round(height * scale)))


_CANNY_MARGIN = 4  # px around a box that hold every pixel Canny reads for an edge inside it


def canny_edges(image: np.ndarray, low: int, high: int, constant_outside: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) or (H, W) uint8 -> (H, W) uint8 edges in {0, 255} (OpenCV Canny).

    constant_outside: optional (H, W) bool mask outside which ``image`` is one colour. A constant
    region has no edges, so Canny then runs on the mask's box grown by a few pixels only: the
    same edges (Sobel, non-maximum suppression and hysteresis never see past that margin).
    """
    if constant_outside is None:
        return cv2.Canny(image, low, high)
    out = np.zeros(image.shape[:2], dtype=np.uint8)
    x, y, w, h = cv2.boundingRect(constant_outside.view(np.uint8))
    if not (w and h):
        return out
    rows = slice(max(y - _CANNY_MARGIN, 0), min(y + h + _CANNY_MARGIN, out.shape[0]))
    cols = slice(max(x - _CANNY_MARGIN, 0), min(x + w + _CANNY_MARGIN, out.shape[1]))
    out[rows, cols] = cv2.Canny(np.ascontiguousarray(image[rows, cols]), low, high)
    return out


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
                        tolerance: float = 0.25, own: np.ndarray | None = None) -> np.ndarray:
    """COCO visibility codes for projected keypoints.

    uv: (K, 2) pixels; depth_kp: (K,) camera z; parts: (H, W) part ids; depth: (H, W) metres;
    own: (H, W) bool pixels of the keypoints' subject when several share the image (None: all).
    2 = the pixel shows one of the keypoint's own parts (of its own subject) within ``tolerance``
    metres of it, 1 = inside the image but hidden (by itself or by another subject), 0 = outside
    the image or behind the camera.
    """
    h, w = parts.shape
    col, row = np.rint(uv[:, 0]).astype(int), np.rint(uv[:, 1]).astype(int)
    inside = (depth_kp > 0) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
    vis = np.where(inside, 1, 0).astype(np.int64)
    for k in np.flatnonzero(inside):
        part = int(parts[row[k], col[k]])
        close = abs(float(depth[row[k], col[k]]) - float(depth_kp[k])) < tolerance
        if part in keypoint_parts[k] and close and (own is None or own[row[k], col[k]]):
            vis[k] = 2
    return vis
