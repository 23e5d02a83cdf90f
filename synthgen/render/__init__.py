"""Render stage: a posed mesh seen by a camera -> a dict of named layers.

:func:`render_layers` returns (H = image height, W = width):

============  =====================  =====================================================
name          shape, dtype           meaning
============  =====================  =====================================================
normal        (H, W, 3) float32      unit normal, OpenCV camera axes; 0 in background
normal_rgb    (H, W, 3) uint8        normal encoded for normal ControlNets (see layers.py)
depth         (H, W) float32         metric camera z, 0 in background
depth_mm      (H, W) uint16          depth in millimetres, 0 = background (16-bit PNG)
depth_control (H, W) uint8           inverted normalised depth (near bright) for depth CNs
mask          (H, W) uint8           instance silhouette, 255 = subject
parts         (H, W) uint8           part id per pixel (0 background; subject.part_names)
shaded        (H, W, 3) uint8        shaded render: normal colours, ambient + headlight (on demand)
edges         (H, W) uint8           Canny edges of ``normal_rgb`` or ``shaded``, {0, 255}
triangle_id   (H, W) int32           visible face index, -1 background
============  =====================  =====================================================

The ``skeleton`` layer needs keypoints and is drawn by :func:`layers.draw_skeleton`.
Backends: ``gl`` (moderngl + EGL, one pass) and ``torch`` (pure-pip z-buffer); ``auto`` picks
gl when an EGL context can be made in this process.
"""

from __future__ import annotations

import functools
import logging
from typing import Callable

import numpy as np

from synthgen.render import culling, layers
from synthgen.render.raster_gl import NEAR  # (no GL import: moderngl loads on first use)

log = logging.getLogger(__name__)

__all__ = ["derive_layers", "rasterize", "render_layers", "resolve_backend", "layers"]


@functools.lru_cache(maxsize=None)
def resolve_backend(name: str) -> str:
    """'auto' -> 'gl' when EGL works here, else 'torch'."""
    if name != "auto":
        return name
    from synthgen.render import raster_gl

    chosen = "gl" if raster_gl.gl_available() else "torch"
    log.info("render backend: %s", chosen)
    return chosen


def _rasterizer(backend: str) -> Callable:
    if resolve_backend(backend) == "gl":
        from synthgen.render import raster_gl

        if not raster_gl.gl_available():
            raise RuntimeError("render.backend=gl but no EGL context can be created here "
                               "(install Mesa's libegl1 and libgl1-mesa-dri, or use render.backend=torch)")
        return raster_gl.rasterize
    from synthgen.render import raster_torch

    return raster_torch.rasterize


def rasterize(vertices_cam: np.ndarray, faces: np.ndarray, K: np.ndarray, width: int, height: int,
              backend: str = "auto") -> dict:
    """The raw raster of one mesh: ``triangle_id``, ``depth``, ``normal``, ``mask`` (see
    :mod:`synthgen.render.raster_gl`). vertices_cam (V, 3) camera frame; faces (F, 3); K (3, 3).

    Back faces are skipped where they cannot be seen (:func:`culling.can_cull_back_faces`).
    """
    vertices_cam = vertices_cam.astype(np.float32)
    cull = culling.can_cull_back_faces(vertices_cam, faces, NEAR)
    return _rasterizer(backend)(vertices_cam, faces, K, width, height, cull_back_faces=cull)


def render_layers(vertices_cam: np.ndarray, faces: np.ndarray, face_parts: np.ndarray,
                  K: np.ndarray, width: int, height: int, backend: str = "auto",
                  canny: tuple[int, int] = (100, 200), normal_convention: str = "opengl",
                  **encoding) -> dict:
    """Rasterise one mesh and derive every conditioning layer.

    vertices_cam: (V, 3) float32 camera frame; faces: (F, 3) int; face_parts: (F,) uint8;
    K: (3, 3); ``encoding``: ``normal_background``, ``edges_source``, ``scene_normal``, ``with_shaded`` of
    :func:`derive_layers`. Returns the dict documented in this module.
    """
    raw = rasterize(vertices_cam, faces, K, width, height, backend)
    tri, mask = raw["triangle_id"], raw["mask"]
    parts = np.zeros(tri.shape, dtype=np.uint8)
    parts[mask] = face_parts[tri[mask]]
    return derive_layers(raw["normal"], raw["depth"], parts, tri, canny, normal_convention, **encoding)


def derive_layers(normal: np.ndarray, depth: np.ndarray, parts: np.ndarray, triangle_id: np.ndarray,
                  canny: tuple[int, int] = (100, 200), normal_convention: str = "opengl",
                  normal_background: str = "black", edges_source: str = "normals",
                  scene_normal: np.ndarray | None = None, with_shaded: bool = False) -> dict:
    """Every conditioning layer from the raw ones (also after a lens remap of the raw layers).

    normal (H, W, 3) float32 camera frame; depth (H, W) float32 metres; parts (H, W) uint8;
    triangle_id (H, W) int32, -1 = background; scene_normal: (H, W, 3) float32 normals drawn
    behind the subject when ``normal_background="ground"`` (0 = none). ``shaded`` is made only
    when the edges or ``with_shaded`` (a stored layer, a ControlNet input) need it. Returns the
    dict documented in this module.
    """
    mask = triangle_id >= 0
    flat_outside = edges_source == "shaded" or normal_background != "ground"  # one colour behind the subject
    normal_rgb = layers.encode_normal(normal, mask, normal_convention, normal_background, scene_normal)
    shaded = layers.shade(normal, mask) if with_shaded or edges_source == "shaded" else None
    out = {
        "normal": normal,
        "normal_rgb": normal_rgb,
        "depth": depth,
        "depth_mm": layers.depth_to_millimetres(depth),
        "depth_control": layers.depth_for_control(depth, mask),
        "mask": mask.astype(np.uint8) * 255,
        "parts": parts,
        "edges": layers.canny_edges(shaded if edges_source == "shaded" else normal_rgb, *canny,
                                    constant_outside=mask if flat_outside else None),
        "triangle_id": triangle_id,
    }
    if shaded is not None:
        out["shaded"] = shaded
    if scene_normal is not None:
        out["scene_normal"] = scene_normal
    return out
