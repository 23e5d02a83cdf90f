"""Sunlight and shadows on the scene: a shadow-map pass with the same rasteriser.

The sun is a directional light. The shadow casters (the subjects, and the scene's objects:
furniture, crates, fences, :func:`synthgen.scene.shadow_casters`) are rasterised in one
depth-only pass from a pinhole "sun camera" placed at least :data:`SUN_DISTANCE_M` (and 20 times
the casters' radius) away along the sun direction, looking at them with a field of view just
wide enough to hold them (their rays are parallel within 3 degrees); the map is a rectangle with
one texel per :data:`TEXEL_M` of the casters' extent across the light, from a quarter of
:data:`MAP_SIZE` to :data:`MAX_MAP_SIZE` a side, and at most the image's side: the cap binds
only where the casters spread over metres (a yard's crates and fences), which the image shows at
a coarse scale too, and the receivers are tested on every other image pixel; twice the image's
side cost the quickstart ~2 ms of CPU a sample for little detail.
Each visible scene pixel's 3D point is then moved into that camera and compared with the depth
it sees there (vectorised NumPy): a caster nearer to the sun than the point shades it.
"""

from __future__ import annotations

import numpy as np

from synthgen.points import bounds
from synthgen.render import rasterize

SUN_DISTANCE_M = 100.0
MAP_SIZE = 256  # shadow-map pixels a side, at least
MAX_MAP_SIZE = 1024  # and at most
TEXEL_M = 0.01  # wanted texel size: the map grows with the casters up to MAX_MAP_SIZE
BIAS_M = 0.03  # a point must lie this far behind the caster's surface to be in its shadow


def draw_sun(rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """A sun: (3,) unit world direction toward it (Z up; elevation 25-70 deg), sky ambient in [0.25, 0.45]."""
    azimuth, elevation = rng.uniform(-np.pi, np.pi), np.radians(rng.uniform(25.0, 70.0))
    sun = np.array([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)])
    return sun, float(rng.uniform(0.25, 0.45))


def _look_along(direction: np.ndarray) -> np.ndarray:
    """(3, 3) rotation whose third row (the optical axis) is ``direction`` (unit)."""
    helper = np.array([0.0, 1.0, 0.0]) if abs(direction[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
    right = np.cross(helper, direction)
    right /= np.linalg.norm(right)
    return np.stack([right, np.cross(direction, right), direction])


def _shadow_box(lo: np.ndarray, hi: np.ndarray, sun: np.ndarray, up: np.ndarray, height: float, K: np.ndarray,
                width: int, height_px: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) image box that holds every pixel the casters' shadow can fall on: the
    projection of their bounding box (lo, hi), (3,) camera frame, and of that box pushed away from
    the sun down to the ground (``up``: world up in the camera frame, ``height``: the camera's
    height); the whole image when part of that volume lies behind the camera."""
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    above = np.maximum(corners @ up + height, 0.0)  # height of each corner above the ground
    rise = max(float(sun @ up), 1e-3)  # the sun is above the horizon: rays away from it go down
    pushed = corners - sun[None] * (above / rise)[:, None]  # each corner's shadow on the ground
    points = np.concatenate([corners, pushed])
    if np.any(points[:, 2] <= 0.05):
        return 0, 0, width, height_px
    p = points @ np.asarray(K, dtype=np.float64).T
    u, w = p[:, 0] / p[:, 2], p[:, 1] / p[:, 2]
    x0, x1 = int(np.clip(np.floor(u.min()) - 1, 0, width)), int(np.clip(np.ceil(u.max()) + 2, 0, width))
    y0, y1 = int(np.clip(np.floor(w.min()) - 1, 0, height_px)), int(np.clip(np.ceil(w.max()) + 2, 0, height_px))
    return x0, y0, x1, y1


def sun_visibility(vertices_cam: np.ndarray, faces: np.ndarray, depth: np.ndarray, pixels: np.ndarray,
                   K: np.ndarray, sun_cam: np.ndarray, up_cam: np.ndarray, camera_height: float,
                   backend: str = "auto", size: int | None = None, step: int = 1,
                   cull_back_faces: bool | None = None) -> np.ndarray:
    """(H, W) uint8: 255 where a pixel of ``pixels`` sees the sun past the casters, 0 in their
    shadow (and 0 outside ``pixels``).

    vertices_cam (V, 3), faces (F, 3): the casters, camera frame; depth (H, W) metric z; pixels
    (H, W) bool, the receivers (scene pixels); K (3, 3); sun_cam (3,) unit direction toward the sun
    in the camera frame; up_cam (3,) world up in the camera frame and camera_height (metres): the
    ground, which bounds where a shadow can fall (only that image box is tested). size: the map's
    side (None: from the casters' extent, see the module). step: test every step-th pixel (rows and
    columns from even multiples), each standing for its step x step block. cull_back_faces: draw
    only the casters' faces toward the sun (None: when :mod:`synthgen.render.culling` finds that
    safe; the scene's boxes are wound outward, so callers pass the people's verdict with them).
    """
    out = pixels.astype(np.uint8) * np.uint8(255)
    if not len(faces) or not pixels.any():
        return out
    v = np.asarray(vertices_cam, dtype=np.float32)
    sun = np.asarray(sun_cam, dtype=np.float64) / np.linalg.norm(sun_cam)
    lo, hi = (b.astype(np.float64) for b in bounds(v))
    centre = (lo + hi) / 2
    radius = float(np.linalg.norm(hi - lo)) / 2 + 0.05
    distance = max(SUN_DISTANCE_M, 20.0 * radius)
    R = _look_along(-sun)  # the sun camera looks down the light rays
    eye = centre + distance * sun
    # float32 (the rasteriser's precision): millimetres at the sun camera's 100 m are 1e-5 relative
    v_sun = v @ R.T.astype(np.float32) - (R @ eye).astype(np.float32)
    # the casters' extent across the light, (x, y) half sides in metres: a yard's spread-out
    # objects fill a rectangle, and a tall person seen from a high sun a short one
    sun_lo, sun_hi = bounds(v_sun[:, :2])
    middle = (R @ (centre - eye))[:2]
    half = np.maximum(np.abs(sun_lo - middle), np.abs(sun_hi - middle)) + 0.05
    height_px, width = depth.shape
    if size is None:  # one texel per TEXEL_M, no finer than the image's resolution
        largest = max(MAP_SIZE, min(MAX_MAP_SIZE, max(height_px, width)))
        map_w, map_h = (int(np.clip(np.ceil(2.1 * h / TEXEL_M), MAP_SIZE // 4, largest)) for h in half)
    else:
        map_w = map_h = size
    near = distance - radius  # the casters' nearest depth from the sun: the widest projection
    fx, fy = (map_w / 2) * near / (1.05 * half[0]), (map_h / 2) * near / (1.05 * half[1])
    K_sun = np.array([[fx, 0.0, (map_w - 1) / 2], [0.0, fy, (map_h - 1) / 2], [0.0, 0.0, 1.0]])
    shadow_depth = rasterize(v_sun, faces, K_sun, map_w, map_h, backend,
                             depth_only=True, cull_back_faces=cull_back_faces)["depth"]
    x0, y0, x1, y1 = _shadow_box(lo, hi, sun, np.asarray(up_cam, np.float64), camera_height, K, width, height_px)
    if x1 <= x0 or y1 <= y0:
        return out
    # pixel (c, r) at depth z -> sun camera: z R K^-1 [c, r, 1] - R eye, then K_sun: one affine map;
    # tested on every ``step``-th pixel of the box (the shaded backend reads every other one)
    x0, y0 = x0 - x0 % step, y0 - y0 % step
    A = (K_sun @ R @ np.linalg.inv(np.asarray(K, dtype=np.float64))).astype(np.float32)
    q = (K_sun @ R @ eye).astype(np.float32)
    Az = (R @ np.linalg.inv(np.asarray(K, dtype=np.float64)))[2].astype(np.float32)
    qz = np.float32((R @ eye)[2])
    c = np.arange(x0, x1, step, dtype=np.float32)[None, :]
    r = np.arange(y0, y1, step, dtype=np.float32)[:, None]
    box = (slice(y0, y1, step), slice(x0, x1, step))
    z = depth[box]
    hom = [z * (A[k, 0] * c + A[k, 1] * r + A[k, 2]) - q[k] for k in range(3)]
    depth_sun = z * (Az[0] * c + Az[1] * r + Az[2]) - qz
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.rint(hom[0] / hom[2])
        w = np.rint(hom[1] / hom[2])
    inside = pixels[box] & (u >= 0) & (u < map_w) & (w >= 0) & (w < map_h)
    ui = np.where(inside, u, 0).astype(np.int64)
    wi = np.where(inside, w, 0).astype(np.int64)
    caster = np.where(inside, shadow_depth[wi, ui], np.float32(0.0))
    shaded = (caster > 0) & (caster < depth_sun - np.float32(BIAS_M))
    if step == 1:
        out[box][shaded] = 0
        return out
    block = np.repeat(np.repeat(shaded, step, axis=0), step, axis=1)  # each tested pixel: its block
    rows, cols = min(block.shape[0], out.shape[0] - y0), min(block.shape[1], out.shape[1] - x0)
    out[y0:y0 + rows, x0:x0 + cols][block[:rows, :cols]] = 0
    return out
