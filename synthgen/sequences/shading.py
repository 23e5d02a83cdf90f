"""Weight-free images of sequence views: the shaded backend with a world-fixed light and scene.

The per-pixel light model is :func:`synthgen.generate.shaded.blinn_phong`, the one the
single-image shaded backend uses.
"""

from __future__ import annotations

import functools

import numpy as np

from synthgen.generate.shaded import blinn_phong
from synthgen.sequences.scene import SceneMesh


def shade_view(layers: dict, face_albedo: np.ndarray, face_spec: np.ndarray, face_instance: np.ndarray,
               scene: SceneMesh, seq, R: np.ndarray, t: np.ndarray, K: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 linear-ish RGB of one pinhole render: Lambert + Blinn-Phong under the
    sequence's world-fixed light, floor tiles in world coordinates, sky where nothing was hit."""
    tri = layers["triangle_id"]
    covered = tri >= 0
    ids = np.where(covered, tri, 0)
    n = layers["normal"]
    light = (R @ seq.light_world).astype(np.float32)
    albedo = face_albedo.astype(np.float32, copy=False)[ids]
    h, w = tri.shape
    dirs = _pixel_directions(K.tobytes(), w, h)  # (H, W, 3) K^-1 [u, v, 1]
    if scene.checker:  # back-project the tiled floors' pixels to the world for the pattern
        sizes = np.zeros(256, np.float32)
        sizes[list(scene.checker)] = 1.0 / np.asarray(list(scene.checker.values()), dtype=np.float32)
        inv_tile = sizes[face_instance[ids]]
        flat = np.flatnonzero(covered & (inv_tile > 0))
        if len(flat):
            cam = dirs.reshape(-1, 3)[flat] * layers["depth"].reshape(-1)[flat][:, None]
            Rxy = R[:, :2].astype(np.float32)
            world = (cam @ Rxy - (t @ R[:, :2]).astype(np.float32)) * inv_tile.reshape(-1)[flat][:, None]
            cell = np.floor(world)
            frac = np.abs(world - cell - np.float32(0.5))
            parity = (cell[:, 0] + cell[:, 1]) % 2
            factor = np.where(parity > 0, np.float32(1.08), np.float32(0.92))
            factor[(frac > 0.485).any(axis=1)] = 0.7  # grout lines
            albedo.reshape(-1, 3)[flat] *= factor[:, None]
    out = np.zeros(n.shape, dtype=np.float32)
    out[covered] = blinn_phong(n[covered], light, albedo[covered],
                               face_spec.astype(np.float32, copy=False)[ids[covered]], seq.ambient)
    if scene.sky is not None and not covered.all():  # sky gradient by ray elevation
        empty = ~covered
        rays = dirs[empty]
        up = np.sqrt(np.clip((rays @ R[:, 2].astype(np.float32)) / np.sqrt((rays * rays).sum(axis=1)), 0.0, 1.0))
        horizon, zenith = (np.asarray(c, dtype=np.float32) for c in scene.sky)
        out[empty] = horizon + up[:, None] * (zenith - horizon)
    return out


@functools.lru_cache(maxsize=16)
def _pixel_directions(K_bytes: bytes, width: int, height: int) -> np.ndarray:
    """(H, W, 3) float32 K^-1 [c, r, 1] of every pixel centre (cached per camera)."""
    K = np.frombuffer(K_bytes, dtype=np.float64).reshape(3, 3)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    pix = np.stack([cols, rows, np.ones_like(cols)], axis=-1) @ np.linalg.inv(K).T
    out = pix.astype(np.float32)
    out.flags.writeable = False
    return out
