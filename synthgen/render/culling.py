"""When back faces can be skipped without changing what the camera sees.

A closed surface whose faces all wind outward, seen from outside, shows only faces that turn
toward the camera: the first surface a ray meets enters the volume. Skipping the others
(back-face culling) halves the triangles a rasteriser sets up. Bodies (Anny, SMPL) are such
surfaces; scanned or CAD objects often are not (open shells, single-sided planes), and a
body-worn camera may sit inside its wearer's bounding box, so the test is made per mesh and
per view, never assumed.

The one case where culling changes a pixel is a skinning fold that turns the surface inside
out (an elbow bent past its limit): there the camera meets a back face first, and culling shows
the front face just behind it (a few pixels, never on the silhouette: see benchmarks/README.md).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np

from synthgen.render.topology import PerFaces

_CACHE_SIZE = 64
_outward_closed: OrderedDict[bytes, bool] = OrderedDict()  # topology digest -> verdict


def is_closed_outward(vertices: np.ndarray, faces: np.ndarray) -> bool:
    """Whether ``faces`` form closed, consistently wound surfaces that enclose positive volume.

    vertices: (V, 3) float, any right-handed frame; faces: (F, 3) int. Closed and consistent:
    every directed edge (a, b) occurs exactly once and its reverse (b, a) exactly once. The
    winding is outward when the signed volume sum(v0 . (v1 x v2)) / 6 is positive, i.e. each
    face's (v1 - v0) x (v2 - v0) points out of the volume.
    """
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if len(faces) == 0:
        return False
    n = int(faces.max()) + 1
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    keys = directed[:, 0] * n + directed[:, 1]
    reverse = directed[:, 1] * n + directed[:, 0]
    keys.sort()
    if np.any(keys[1:] == keys[:-1]):  # an edge used twice in one direction: inconsistent winding
        return False
    if not np.array_equal(keys, np.sort(reverse)):  # an edge without its twin: a hole
        return False
    v = np.asarray(vertices, dtype=np.float64)
    a, b, c = v[faces[:, 0]], v[faces[:, 1]], v[faces[:, 2]]
    return float(np.einsum("ij,ij->", a, np.cross(b, c))) > 0.0


def _verdict_by_bytes(faces: np.ndarray, vertices: np.ndarray) -> bool:
    """:func:`is_closed_outward`, cached by the faces' bytes (the winding of a closed surface
    does not change with its pose)."""
    faces = np.ascontiguousarray(faces)
    key = hashlib.blake2b(faces.view(np.uint8), digest_size=16).digest() + str(faces.dtype).encode()
    verdict = _outward_closed.get(key)
    if verdict is None:
        verdict = is_closed_outward(vertices, faces)
        _outward_closed[key] = verdict
        if len(_outward_closed) > _CACHE_SIZE:
            _outward_closed.popitem(last=False)
    return verdict


def can_cull_back_faces(vertices_cam: np.ndarray, faces: np.ndarray, near: float) -> bool:
    """Whether back faces are invisible in this view.

    vertices_cam: (V, 3) camera frame (OpenCV, the camera at the origin looking along +z);
    faces: (F, 3); near: the rasteriser's near plane. True when the surface is closed and wound
    outward and the whole mesh lies beyond the near plane (so no face is clipped away, which
    would open the surface, and the camera is outside it).
    """
    if len(vertices_cam) == 0 or float(np.min(vertices_cam[:, 2])) <= near:
        return False
    return _topology_verdict(faces, vertices_cam)


_topology_verdict = PerFaces(_verdict_by_bytes)  # by array first: hashing a body's faces is slow


def closed_outward(vertices: np.ndarray, faces: np.ndarray) -> bool:
    """:func:`is_closed_outward`, cached per topology: whether a camera outside the surface (a
    shadow map's sun) may skip its back faces."""
    return _topology_verdict(faces, vertices)
