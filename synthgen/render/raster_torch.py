"""Vectorised pure-torch z-buffer triangle rasteriser (CPU, no system libraries).

Conventions (shared with :mod:`synthgen.render.raster_gl`, same interface):

* ``vertices`` are in the OpenCV camera frame: x right, y down, z forward, metres.
* Integer pixel coordinates are pixel CENTRES: pixel (row ``r``, col ``c``) is
  sampled at the image point ``(u, v) = (c, r)`` where
  ``(u, v) = (K @ X)[:2] / (K @ X)[2]`` exactly (no half-pixel offset).
* Near plane: any triangle with a vertex at ``z <= NEAR`` (0.01 m) is culled
  entirely (not clipped).
* Faces are double-sided unless ``cull_back_faces``: then faces whose winding
  turns away from the camera are skipped (as raster_gl does).
* A pixel centre lying exactly on an edge shared by two triangles may go to
  either of them, but there are no cracks: coverage uses inclusive edge tests
  with a small tolerance.
* Outputs (numpy): ``triangle_id`` (H,W) int32, -1 background; ``depth`` (H,W)
  float32 metric camera z (not ray length), perspective-correct, 0 background;
  ``normal`` (H,W,3) float32 unit camera-frame normal, smooth (perspective-
  correct barycentric interpolation of unit area-weighted vertex normals,
  renormalised), 0 background; ``mask`` (H,W) bool.
* Normal orientation: the normal is first flipped to the side of the triangle
  that is seen (screen-space winding), then, if it still points away from the
  camera (possible for smooth normals near silhouettes), it is bent towards the
  camera along ``d`` (the unit ray from the camera through the pixel) until
  ``dot(n, d) = -NORMAL_EPS`` and renormalised.  Hence ``dot(n, d) < 0`` on
  every covered pixel.

Algorithm: project vertices, compute per-face pixel bounding boxes, enumerate
all candidate (face, pixel) pairs of the bboxes as one flat index space that is
processed in bounded chunks (a huge close-up face is split across chunks),
evaluate barycentrics with edge functions (float64), resolve visibility with a
``scatter_reduce('amin')`` on an int64 key ``(float32 depth bits << 32) | face``,
then shade only the winning pixels.  Peak memory is bounded by ``CHUNK_PAIRS``
candidates (about 40 MB) plus a few (H*W) images, whatever the face sizes.
Computation is float64 for coverage/depth, float32 for normals; no autograd.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

logger = logging.getLogger(__name__)

NEAR = 0.01  # metres; triangles with any vertex at z <= NEAR are culled
NORMAL_EPS = 1e-3  # minimum |dot(n, ray)| for normals bent towards the camera
_EDGE_EPS = 1e-7  # inclusive barycentric tolerance (float64) -> no cracks
_BBOX_PAD = 1e-6  # pixels; bbox padding so on-edge centres are enumerated
CHUNK_PAIRS = 1 << 17  # max candidate (face, pixel) pairs processed at once
_EMPTY = torch.iinfo(torch.int64).max


def rasterize(vertices: np.ndarray, faces: np.ndarray, K: np.ndarray,
              width: int, height: int, cull_back_faces: bool = False, depth_only: bool = False) -> dict:
    """Rasterise a triangle mesh given in the OpenCV camera frame.

    Args:
        vertices: (V,3) float32 camera-frame positions in metres.
        faces: (F,3) int vertex indices.
        K: (3,3) float pinhole intrinsics.
        width, height: image size in pixels.
        cull_back_faces: skip faces turned away from the camera.
        depth_only: only ``depth`` and ``mask`` (a shadow map).

    Returns:
        dict with ``triangle_id`` (H,W) int32, ``depth`` (H,W) float32,
        ``normal`` (H,W,3) float32, ``mask`` (H,W) bool (see module docstring).
    """
    v = torch.from_numpy(np.ascontiguousarray(vertices, dtype=np.float64)).reshape(-1, 3)
    f = torch.from_numpy(np.ascontiguousarray(faces, dtype=np.int64)).reshape(-1, 3)
    k = torch.from_numpy(np.ascontiguousarray(K, dtype=np.float64)).reshape(3, 3)
    with torch.no_grad():
        setup = _setup_faces(*_project(v, k), f, width, height, cull_back_faces)
        key = _zbuffer(setup, width, height)
        if depth_only:
            return _depth_only(key, width, height)
        return _shade(key, setup, v, f, k, width, height)


def _depth_only(key, width, height) -> dict:
    """``depth`` and ``mask`` of the z-buffer (see rasterize): no normals, no triangle ids."""
    hw = width * height
    pix = (key != _EMPTY).nonzero().squeeze(1)
    depth = (key.index_select(0, pix) >> 32).to(torch.int32).view(torch.float32)
    dep = torch.zeros(hw, dtype=torch.float32).index_put_((pix,), depth).numpy().reshape(height, width)
    return dict(depth=dep, mask=dep > 0)


def _project(v: torch.Tensor, k: torch.Tensor):
    """(V,3) float64 camera points -> pixel coords u (V,), v (V,), depth z (V,)."""
    p = v @ k.T
    z = v[:, 2]
    w = torch.where(p[:, 2].abs() > 1e-12, p[:, 2], torch.full_like(z, 1e-12))
    return p[:, 0] / w, p[:, 1] / w, z


def _min3(a, b, c):
    return torch.minimum(torch.minimum(a, b), c)


def _max3(a, b, c):
    return torch.maximum(torch.maximum(a, b), c)


def _setup_faces(u: torch.Tensor, v: torch.Tensor, z: torch.Tensor,
                 f: torch.Tensor, width: int, height: int, cull_back_faces: bool = False) -> dict:
    """Cull faces and build the per-face raster setup.

    Args: u, v, z (V,) float64 projected vertices; f (F,3) int64.

    Returns a dict over the F' kept faces: ``ids`` (F',) original face index,
    ``pix0`` (F',) flat index of the bbox origin (c0, r0), ``c0``/``r0``/``bw``
    (F',) bbox origin and width, ``counts`` (F',) bbox pixel count, ``coef``
    (F',12) float64 linear forms in (dx, dy) relative to the bbox origin, as
    x-slopes [0:4], y-slopes [4:8] and offsets [8:12] of (b0, b1, b2, 1/z);
    ``iz`` (F',3) vertex 1/z; ``front`` (F',) bool (the triangle's
    normal (v1-v0)x(v2-v0) faces the camera).
    """
    ft = f.T.contiguous()
    fu, fv, fz = ([t.index_select(0, ft[i]) for i in range(3)] for t in (u, v, z))
    c0 = torch.ceil(_min3(*fu) - _BBOX_PAD).clamp(0, width).long()
    c1 = torch.floor(_max3(*fu) + _BBOX_PAD).clamp(-1, width - 1).long()
    r0 = torch.ceil(_min3(*fv) - _BBOX_PAD).clamp(0, height).long()
    r1 = torch.floor(_max3(*fv) + _BBOX_PAD).clamp(-1, height - 1).long()
    bw, bh = (c1 - c0 + 1).clamp(min=0), (r1 - r0 + 1).clamp(min=0)
    area2 = (fu[1] - fu[0]) * (fv[2] - fv[0]) - (fv[1] - fv[0]) * (fu[2] - fu[0])
    keep = (_min3(*fz) > NEAR) & (area2.abs() > 1e-12) & (bw * bh > 0)
    if cull_back_faces:
        keep &= area2 < 0
    ids = keep.nonzero().squeeze(1)
    sel = [t.index_select(0, ids) for t in (*fu, *fv, *fz, area2, c0, r0, bw, bh)]
    fu, fv, iz = sel[0:3], sel[3:6], [1.0 / t for t in sel[6:9]]
    area2, c0, r0, bw, bh = sel[9:]
    coef = _edge_coefficients(fu, fv, area2, c0, r0, iz)
    return dict(ids=ids, pix0=r0 * width + c0, c0=c0, r0=r0, bw=bw,
                counts=bw * bh, coef=coef, iz=torch.stack(iz, 1), front=area2 < 0)


def _edge_coefficients(fu, fv, area2, c0, r0, iz) -> torch.Tensor:
    """Barycentric and 1/z linear forms (F,12), see :func:`_setup_faces`.

    fu, fv, iz: lists of 3 (F,) per-corner u, v, 1/z; area2, c0, r0: (F,).
    Barycentric i is the edge function of edge (j, k) = (i+1, i+2) over twice
    the signed area, so it is 1 at corner i and 0 on the opposite edge.
    """
    s = 1.0 / area2
    x0, y0 = c0.to(s.dtype), r0.to(s.dtype)
    sx, sy, off = [], [], []
    for i in range(3):
        j, k = (i + 1) % 3, (i + 2) % 3
        eu, ev = fu[k] - fu[j], fv[k] - fv[j]
        sx.append(-ev * s)
        sy.append(eu * s)
        off.append((eu * (y0 - fv[j]) - ev * (x0 - fu[j])) * s)  # E_i at origin
    for g in (sx, sy, off):
        g.append(g[0] * iz[0] + g[1] * iz[1] + g[2] * iz[2])
    return torch.stack(sx + sy + off, 1)


def _zbuffer(setup: dict, width: int, height: int) -> torch.Tensor:
    """Visibility: (H*W,) int64 keys ``(z float32 bits << 32) | kept face``.

    Candidates are the concatenation of all face bboxes (face-major); they are
    processed in slices of at most ``CHUNK_PAIRS``, a huge face spanning several.
    """
    key = torch.full((width * height,), _EMPTY, dtype=torch.int64)
    counts = setup["counts"]
    if counts.numel() == 0:
        return key
    ends = counts.cumsum(0)
    starts = ends - counts
    total = int(ends[-1])
    bounds = torch.arange(0, total + CHUNK_PAIRS, CHUNK_PAIRS).clamp(max=total)
    first = torch.searchsorted(ends, bounds[:-1], right=True).tolist()
    last = torch.searchsorted(ends, bounds[1:] - 1, right=True).tolist()
    bounds = bounds.tolist()
    for s, e, f0, f1 in zip(bounds[:-1], bounds[1:], first, last):
        c = counts[f0:f1 + 1].clone()
        c[0] -= s - starts[f0]  # candidates of face f0 before s
        c[-1] -= ends[f1] - e  # candidates of face f1 from e on
        fi = f0 + torch.repeat_interleave(c, output_size=e - s)
        local = torch.arange(s, e) - starts.index_select(0, fi)
        _zbuffer_chunk(key, setup, fi, local, width)
    return key


def _zbuffer_chunk(key, setup, fi, local, width) -> None:
    """Z-test candidates: face fi (N,) and flat bbox-local pixel index (N,)."""
    bw = setup["bw"].index_select(0, fi)
    dy = local.div(bw, rounding_mode="floor")
    dx = local - dy * bw
    b0, b1, b2, iz = _eval_forms(setup["coef"].index_select(0, fi), dx, dy)
    inside = (_min3(b0, b1, b2) >= -_EDGE_EPS) & (iz > 0)
    zbits = (1.0 / iz).float().view(torch.int32).long()
    pix = setup["pix0"].index_select(0, fi) + dy * width + dx
    val = torch.where(inside, (zbits << 32) | fi, _EMPTY)
    key.scatter_reduce_(0, pix, val, "amin")


def _eval_forms(coef: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor):
    """Evaluate (N,12) linear forms at offsets (N,) -> b0, b1, b2, 1/z (N,)."""
    x, y = dx.to(coef.dtype), dy.to(coef.dtype)
    return [torch.addcmul(torch.addcmul(coef[:, i + 8], coef[:, i], x), coef[:, i + 4], y)
            for i in range(4)]


def vertex_normals(v: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Unit area-weighted vertex normals: v (V,3) float, f (F,3) int64 -> (V,3)."""
    ft = f.T.contiguous()
    a, b, c = (v.index_select(0, ft[i]) for i in range(3))
    fn = _cross3(b - a, c - a)  # (F,3) = 2 * area * unit normal
    vn = torch.zeros_like(v).index_add_(0, ft.reshape(-1), fn.repeat(3, 1))
    return vn / vn.norm(dim=1, keepdim=True).clamp_min(1e-20)


def _cross3(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Row-wise cross product of (N,3) tensors (faster than linalg.cross)."""
    (p0, p1, p2), (q0, q1, q2) = p.unbind(1), q.unbind(1)
    return torch.stack([p1 * q2 - p2 * q1, p2 * q0 - p0 * q2, p0 * q1 - p1 * q0], 1)


def _shade(key, setup, v, f, k, width, height) -> dict:
    """Decode the z-buffer and compute per-pixel outputs (see rasterize)."""
    pix = (key != _EMPTY).nonzero().squeeze(1)
    kk = key.index_select(0, pix)
    fl = kk & 0xFFFFFFFF  # kept-face index of each covered pixel
    depth = (kk >> 32).to(torch.int32).view(torch.float32)
    r = pix.div(width, rounding_mode="floor")
    c = pix - r * width
    pick = {n: setup[n].index_select(0, fl) for n in ("coef", "c0", "r0", "iz", "ids", "front")}
    forms = _eval_forms(pick["coef"], c - pick["c0"], r - pick["r0"])
    w = torch.stack(forms[:3], 1).float() * pick["iz"].float()
    w = w / w.sum(1, keepdim=True)  # perspective-correct barycentrics (N,3)
    corners = f.index_select(0, pick["ids"]).T  # (3,N) vertex ids
    vn = vertex_normals(v.float(), f)
    n = sum(w[:, i:i + 1] * vn.index_select(0, corners[i]) for i in range(3))
    n = torch.where(pick["front"][:, None], n, -n)
    n = _orient(n, _rays(c, r, k))
    return _to_numpy(pix, pick["ids"], depth, n, width, height)


def _rays(c: torch.Tensor, r: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Unit float32 camera rays (N,3) through pixel centres (u,v) = (c,r)."""
    ki = torch.linalg.inv(k).float()
    x, y = c.float(), r.float()
    d = torch.stack([ki[i, 0] * x + ki[i, 1] * y + ki[i, 2] for i in range(3)], 1)
    return d / d.norm(dim=1, keepdim=True)


def _orient(n: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Normalise n (N,3); bend it towards -d where dot(n, d) > -NORMAL_EPS.

    The bent normal has component -NORMAL_EPS along the unit ray d before
    renormalisation, so dot(n, d) < 0 afterwards.
    """
    ln = n.norm(dim=1, keepdim=True)
    n = torch.where(ln > 1e-12, n / ln.clamp_min(1e-12), -d)
    dn = (n * d).sum(1, keepdim=True)
    bent = n - (dn + NORMAL_EPS) * d
    return torch.where(dn > -NORMAL_EPS, bent / bent.norm(dim=1, keepdim=True), n)


def _to_numpy(pix, fid, depth, n, width, height) -> dict:
    """Scatter per-pixel values into full (H,W[,3]) numpy images."""
    hw = width * height
    tid = torch.full((hw,), -1, dtype=torch.int32).index_put_((pix,), fid.int())
    dep = torch.zeros(hw, dtype=torch.float32).index_put_((pix,), depth)
    nrm = torch.zeros(hw, 3, dtype=torch.float32).index_put_((pix,), n.float())
    tid = tid.numpy().reshape(height, width)
    return dict(triangle_id=tid, depth=dep.numpy().reshape(height, width),
                normal=nrm.numpy().reshape(height, width, 3), mask=tid >= 0)
