# More than names on purpose: the render stage's entry point (render_layers) is this package's face.
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

__all__ = ["derive_layers", "rasterize", "rasterize_with_scene", "render_layers", "resolve_backend", "layers"]


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
              backend: str = "auto", depth_only: bool = False, cull_back_faces: bool | None = None) -> dict:
    """The raw raster of one mesh: ``triangle_id``, ``depth``, ``normal``, ``mask`` (see
    :mod:`synthgen.render.raster_gl`). vertices_cam (V, 3) camera frame; faces (F, 3); K (3, 3).
    depth_only: only ``depth`` and ``mask`` (a shadow map: cheaper).

    Back faces are skipped where they cannot be seen (:func:`culling.can_cull_back_faces`), or as
    ``cull_back_faces`` says when the caller knows.
    """
    vertices_cam = vertices_cam.astype(np.float32)
    cull = culling.can_cull_back_faces(vertices_cam, faces, NEAR) if cull_back_faces is None else cull_back_faces
    return _rasterizer(backend)(vertices_cam, faces, K, width, height, cull_back_faces=cull, depth_only=depth_only)


def rasterize_with_scene(vertices_cam: np.ndarray, faces: np.ndarray, scene_vertices_cam: np.ndarray,
                         scene_faces: np.ndarray, K: np.ndarray, width: int, height: int,
                         backend: str = "auto") -> dict:
    """One raster of subjects and scene together (see :func:`rasterize`).

    vertices_cam (V, 3), faces (F, 3): the subjects (closed surfaces); scene_vertices_cam (S, 3),
    scene_faces (G, 3): open scene geometry, camera frame. The scene is clipped to the view (the
    near plane and the image sides, :func:`synthgen.scene.clip_to_view`) and every scene triangle
    is wound to face the camera, so it shows from either side (double-sided) while the subjects'
    back faces are skipped when that is safe for them alone (:func:`culling.can_cull_back_faces`),
    exactly as :func:`rasterize` would draw them (their vertex normals are unchanged: the scene
    shares no vertex with them).
    ``triangle_id`` indexes the concatenation: [0, F) subjects, F + g scene face g.
    """
    from synthgen.scene import clip_to_view  # the scene stage comes before this one

    vertices_cam = np.asarray(vertices_cam, dtype=np.float32)
    cull = culling.can_cull_back_faces(vertices_cam, faces, NEAR)  # the caller's array: memoised per topology
    faces = np.asarray(faces, dtype=np.int64)
    # every vertex left lies past the near plane: the rasteriser drops no face
    sv, sf, source = clip_to_view(np.asarray(scene_vertices_cam, dtype=np.float64), np.asarray(scene_faces, np.int64),
                                  K, width, height)
    a, b, c = (sv[sf[:, i]] for i in range(3))
    away = np.einsum("ij,ij->i", np.cross(b - a, c - a), a) > 0  # the winding turned from the camera
    sf = np.where(away[:, None], sf[:, [0, 2, 1]], sf)
    raw = _rasterizer(backend)(np.concatenate([vertices_cam, sv.astype(np.float32)]),
                               np.concatenate([faces, sf + len(vertices_cam)]), K, width, height,
                               cull_back_faces=cull)
    if len(sf) and not np.array_equal(source, np.arange(len(scene_faces))):  # faces clipped or dropped
        lookup = np.concatenate([np.arange(len(faces)), len(faces) + source, [-1]]).astype(np.int32)
        raw["triangle_id"] = lookup[raw["triangle_id"]]  # -1 (background) stays -1
    return raw


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
    return layers_from_raster(raw, face_parts, canny, normal_convention, **encoding)


def layers_from_raster(raw: dict, face_parts: np.ndarray, canny: tuple[int, int] = (100, 200),
                       normal_convention: str = "opengl", **encoding) -> dict:
    """The layers of a raw raster (:func:`rasterize` or :func:`rasterize_with_scene`);
    face_parts (F,) uint8 part id per face of the raster's index space."""
    tri = raw["triangle_id"]
    parts = np.take(np.append(np.asarray(face_parts, dtype=np.uint8), np.uint8(0)), tri)  # id -1 reads the 0
    return derive_layers(raw["normal"], raw["depth"], parts, tri, canny, normal_convention, **encoding)


def derive_layers(normal: np.ndarray, depth: np.ndarray, parts: np.ndarray, triangle_id: np.ndarray,
                  canny: tuple[int, int] = (100, 200), normal_convention: str = "opengl",
                  normal_background: str = "black", edges_source: str = "normals",
                  scene_normal: np.ndarray | None = None, with_shaded: bool = False,
                  subject_faces: int | None = None, scene_in: tuple[str, ...] = ()) -> dict:
    """Every conditioning layer from the raw ones (also after a lens remap of the raw layers).

    normal (H, W, 3) float32 camera frame; depth (H, W) float32 metres; parts (H, W) uint8;
    triangle_id (H, W) int32, -1 = background; scene_normal: (H, W, 3) float32 normals drawn
    behind the subject when ``normal_background="ground"`` (0 = none). ``shaded`` is made only
    when the edges or ``with_shaded`` (a stored layer, a ControlNet input) need it.
    subject_faces: with scene geometry in the raster, triangle ids >= this are the scene's (the
    ``mask`` is the subjects'); scene_in: the layers (normal, depth, parts, edges, shaded) that show
    the scene, the others are drawn as if it were absent (its pixels background). Returns the dict
    documented in this module (plus ``scene`` (H, W) bool, the scene's pixels, with a scene;
    ``depth`` and ``normal`` then keep the scene whatever ``scene_in`` says, the stored forms follow it).
    """
    covered = triangle_id >= 0
    mask = covered if subject_faces is None else covered & (triangle_id < subject_faces)
    with_scene = subject_faces is not None

    def shown(layer: str) -> np.ndarray:
        return covered if with_scene and layer in scene_in else mask

    flat_outside = edges_source == "shaded" or normal_background != "ground"  # one colour behind the subject
    normal_rgb = layers.encode_normal(normal, shown("normal"), normal_convention, normal_background, scene_normal)
    edge_pixels = shown("edges")
    shaded = None
    if with_shaded or edges_source == "shaded":
        shaded = layers.shade(normal, shown("shaded"))
    if edges_source == "shaded":
        edge_image = shaded if edge_pixels is shown("shaded") else layers.shade(normal, edge_pixels)
    else:
        edge_image = normal_rgb if edge_pixels is shown("normal") else layers.encode_normal(
            normal, edge_pixels, normal_convention, normal_background, scene_normal)
    depth_shown = shown("depth")
    stored_depth = depth if depth_shown is covered else np.where(depth_shown, depth, np.float32(0.0))
    if with_scene and "parts" not in scene_in:
        parts = np.where(mask, parts, np.uint8(0))
    out = {
        "normal": normal,
        "normal_rgb": normal_rgb,
        "depth": depth,
        "depth_mm": layers.depth_to_millimetres(stored_depth),
        "depth_control": layers.depth_for_control(stored_depth, depth_shown),
        "mask": mask.astype(np.uint8) * 255,
        "parts": parts,
        "edges": layers.canny_edges(edge_image, *canny,
                                    constant_outside=edge_pixels if flat_outside and edge_pixels is mask else None),
        "triangle_id": triangle_id,
    }
    if with_scene:
        out["scene"] = covered & ~mask
    if shaded is not None:
        out["shaded"] = shaded
    if scene_normal is not None:
        out["scene_normal"] = scene_normal
    return out
