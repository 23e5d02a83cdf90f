"""Sunlight and the subjects' shadows on the scene: a shadow-map pass with the same rasteriser.

The sun is a directional light. The shadow casters (the subjects) are rasterised from a pinhole
"sun camera" placed :data:`SUN_DISTANCE_M` away along the sun direction, looking at them with a
field of view just wide enough to hold them (over a few metres the rays are parallel within a
degree); each visible scene pixel's 3D point is then moved into that camera and compared with
the depth it sees there (vectorised NumPy): a caster nearer to the sun than the point shades it.
"""

from __future__ import annotations

import numpy as np

from synthgen.render import rasterize

SUN_DISTANCE_M = 100.0
MAP_SIZE = 512  # shadow-map pixels a side
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


def sun_visibility(vertices_cam: np.ndarray, faces: np.ndarray, depth: np.ndarray, pixels: np.ndarray,
                   K: np.ndarray, sun_cam: np.ndarray, backend: str = "auto", size: int = MAP_SIZE) -> np.ndarray:
    """(H, W) uint8: 255 where a pixel of ``pixels`` sees the sun past the casters, 0 in their
    shadow (and 0 outside ``pixels``).

    vertices_cam (V, 3), faces (F, 3): the casters, camera frame; depth (H, W) metric z; pixels
    (H, W) bool, the receivers (scene pixels); K (3, 3); sun_cam (3,) unit direction toward the sun
    in the camera frame.
    """
    out = np.zeros(depth.shape, dtype=np.uint8)
    rows, cols = np.nonzero(pixels)
    if not len(rows):
        return out
    out[rows, cols] = 255
    if not len(faces):
        return out
    v = np.asarray(vertices_cam, dtype=np.float64)
    centre = (v.min(axis=0) + v.max(axis=0)) / 2
    radius = float(np.linalg.norm(v.max(axis=0) - v.min(axis=0))) / 2 + 0.05
    sun = np.asarray(sun_cam, dtype=np.float64) / np.linalg.norm(sun_cam)
    R = _look_along(-sun)  # the sun camera looks down the light rays
    eye = centre + SUN_DISTANCE_M * sun
    focal = (size / 2) * SUN_DISTANCE_M / (1.05 * radius)
    K_sun = np.array([[focal, 0.0, (size - 1) / 2], [0.0, focal, (size - 1) / 2], [0.0, 0.0, 1.0]])
    shadow_depth = rasterize(((v - eye) @ R.T).astype(np.float32), faces, K_sun, size, size, backend)["depth"]
    # receivers: pixel -> camera-frame point -> sun camera; only those inside the map's box can be shaded
    Kinv = np.linalg.inv(np.asarray(K, dtype=np.float64))
    z = depth[rows, cols].astype(np.float64)
    points = np.stack([cols * z, rows * z, z], axis=1) @ Kinv.T
    in_sun = (points - eye) @ R.T
    uv = in_sun @ K_sun.T
    u = np.rint(uv[:, 0] / uv[:, 2]).astype(np.int64)
    w = np.rint(uv[:, 1] / uv[:, 2]).astype(np.int64)
    inside = (u >= 0) & (u < size) & (w >= 0) & (w < size)
    caster = np.zeros(len(z))
    caster[inside] = shadow_depth[w[inside], u[inside]]
    shaded = (caster > 0) & (caster < in_sun[:, 2] - BIAS_M)
    out[rows[shaded], cols[shaded]] = 0
    return out
