"""Tests for the torch and OpenGL triangle rasterisers.

Analytic scenes check both against geometry; a real Anny body mesh checks
them against each other.  GL tests are skipped when no headless EGL context
can be created.
"""
from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest
import torch

from synthgen.render import culling, raster_gl, raster_torch
from synthgen.render import rasterize as render_rasterize

GL_OK = raster_gl.gl_available()
requires_gl = pytest.mark.skipif(
    not GL_OK, reason="no headless EGL/OpenGL 3.3 context (moderngl egl backend)")
BACKENDS = [pytest.param(raster_torch.rasterize, id="torch"),
            pytest.param(raster_gl.rasterize, id="gl", marks=requires_gl)]
BARY_TOL = {raster_torch.rasterize: 1e-6, raster_gl.rasterize: 1e-2}

W, H = 160, 120
# Asymmetric intrinsics so that x/y swaps or flips would be caught.
K = np.array([[100.0, 0.0, 80.3], [0.0, 110.0, 60.6], [0.0, 0.0, 1.0]])


def _quad(corners: np.ndarray, flip: bool = False):
    """Two triangles over 4 corners (4,3) given in order around the quad."""
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    return corners.astype(np.float32), faces[:, ::-1] if flip else faces


def _project(p: np.ndarray, k: np.ndarray = K) -> np.ndarray:
    """(N,3) camera points -> (N,2) pixel coordinates (u, v)."""
    q = p @ k.T
    return q[:, :2] / q[:, 2:]


def _rays(k: np.ndarray, width: int, height: int) -> np.ndarray:
    """(H,W,3) unit rays through pixel centres (u, v) = (col, row)."""
    r, c = np.mgrid[0:height, 0:width]
    d = np.stack([c, r, np.ones_like(c)], -1) @ np.linalg.inv(k).T
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


def _check_background(out: dict) -> None:
    bg = ~out["mask"]
    assert out["mask"].dtype == bool and out["triangle_id"].dtype == np.int32
    assert out["depth"].dtype == np.float32 and out["normal"].dtype == np.float32
    assert np.all(out["triangle_id"][bg] == -1) and np.all(out["depth"][bg] == 0)
    assert np.all(out["normal"][bg] == 0)
    assert np.array_equal(out["mask"], out["triangle_id"] >= 0)


def _reference(out: dict, v: np.ndarray, f: np.ndarray, k: np.ndarray):
    """Exact per-pixel attributes given the reported triangle ids (float64).

    Returns, for the mask pixels in row-major order, the 3D barycentrics of
    the ray/triangle-plane hit (N,3), its camera z (N,) and the expected
    oriented smooth normal (N,3).
    """
    r, c = np.nonzero(out["mask"])
    tid = out["triangle_id"][r, c]
    v = v.astype(np.float64)
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    vn = sum(np.stack([np.bincount(f[:, i], fn[:, j], len(v)) for j in range(3)], 1)
             for i in range(3))
    vn /= np.linalg.norm(vn, axis=1, keepdims=True)
    a, b, cc = (v[f[tid, i]] for i in range(3))
    nf = fn[tid]
    d = np.stack([c, r, np.ones_like(c)], 1) @ np.linalg.inv(k).T
    p = ((nf * a).sum(1) / (nf * d).sum(1))[:, None] * d
    w = np.stack([(nf * np.cross(q1 - q0, p - q0)).sum(1)
                  for q0, q1 in ((b, cc), (cc, a), (a, b))], 1) / (nf * nf).sum(1)[:, None]
    n = (w[:, :, None] * vn[f[tid]]).sum(1)
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    n[(nf * p).sum(1) > 0] *= -1  # visible side of the triangle
    dh = d / np.linalg.norm(d, axis=1, keepdims=True)
    dn = (n * dh).sum(1, keepdims=True)
    bent = n - (dn + raster_torch.NORMAL_EPS) * dh
    bent /= np.linalg.norm(bent, axis=1, keepdims=True)
    n = np.where(dn > -raster_torch.NORMAL_EPS, bent, n)
    return w, p[:, 2], n


def _check_reference(out: dict, v, f, k, bary_tol: float) -> None:
    """Covered pixel centres lie in their triangle; depth/normal are exact there.

    ``bary_tol`` allows for GL's snapping of vertices to 1/256 pixel.
    """
    w, z, n = _reference(out, v, f, k)
    m = out["mask"]
    assert w.min() >= -bary_tol
    np.testing.assert_allclose(out["depth"][m], z, rtol=1e-5)
    cos = np.clip((out["normal"][m] * n).sum(1), -1, 1)
    assert np.degrees(np.arccos(cos)).max() < 0.1


# --------------------------------------------------------------------------
# analytic scenes
# --------------------------------------------------------------------------

@pytest.mark.parametrize("flip", [False, True], ids=["ccw", "cw"])
@pytest.mark.parametrize("rasterize", BACKENDS)
def test_fronto_parallel_plane(rasterize, flip):
    x0, x1, y0, y1, z = -0.7, 0.5, -0.4, 0.3, 2.0
    corners = np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]])
    out = rasterize(*_quad(corners, flip), K, W, H)
    (u0, v0), (u1, v1) = _project(corners[[0, 2]])
    r, c = np.mgrid[0:H, 0:W]
    expected = (c >= u0) & (c <= u1) & (r >= v0) & (r <= v1)
    # no pixel centre is within 0.01 px of the outline -> exact expectation
    assert min(abs(np.array([u0, u1, v0, v1]) - np.round([u0, u1, v0, v1]))) > 0.01
    assert out["triangle_id"].shape == (H, W) and out["normal"].shape == (H, W, 3)
    assert np.array_equal(out["mask"], expected)
    rows, cols = np.nonzero(out["mask"])
    assert abs(cols.min() - u0) <= 1 and abs(cols.max() - u1) <= 1
    assert abs(rows.min() - v0) <= 1 and abs(rows.max() - v1) <= 1
    np.testing.assert_allclose(out["depth"][expected], z, atol=1e-6)
    np.testing.assert_allclose(out["normal"][expected], [[0, 0, -1]] * expected.sum(), atol=1e-5)
    assert set(np.unique(out["triangle_id"][expected])) == {0, 1}
    _check_background(out)


@pytest.mark.parametrize("rasterize", BACKENDS)
def test_tilted_plane_perspective_correct(rasterize):
    """Plane z = 2 + 0.5 y: depth along the ray is not affine in screen space."""
    ys, xs = np.array([-0.5, -0.5, 0.5, 0.5]), np.array([-0.6, 0.6, 0.6, -0.6])
    out = rasterize(*_quad(np.stack([xs, ys, 2 + 0.5 * ys], 1)), K, W, H)
    inner = out["mask"].copy()
    inner[1:-1] &= out["mask"][:-2] & out["mask"][2:]  # drop outline rows
    r = np.mgrid[0:H, 0:W][0]
    z_true = 2.0 / (1.0 - 0.5 * (r - K[1, 2]) / K[1, 1])
    np.testing.assert_allclose(out["depth"][inner], z_true[inner], rtol=2e-6)
    n_true = np.array([0.0, 0.5, -1.0]) / np.sqrt(1.25)
    np.testing.assert_allclose(out["normal"][inner], np.broadcast_to(n_true, (inner.sum(), 3)),
                               atol=1e-5)
    assert inner.sum() > 2000


def _flat_cube(center, size: float):
    """Axis-aligned cube with unshared vertices per side (flat normals)."""
    verts, faces = [], []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            a, b = [i for i in range(3) if i != axis]
            quad = np.zeros((4, 3))
            quad[:, axis] = sign
            quad[:, a] = [-1, 1, 1, -1]
            quad[:, b] = [-1, -1, 1, 1]
            faces += [[len(verts) * 4 + i for i in t] for t in ([0, 1, 2], [0, 2, 3])]
            verts.append(quad)
    v = np.concatenate(verts) * size / 2 + np.asarray(center)
    return v.astype(np.float32), np.array(faces)


@pytest.mark.parametrize("rasterize", BACKENDS)
def test_fold_perspective_correct_smooth_normals(rasterize):
    """Two triangles folded along an edge receding from z=1 to z=6.

    The shared vertices have averaged normals, so interpolation must use
    perspective-correct barycentrics to match the reference.
    """
    v = np.array([[-0.8, 0.3, 2.0], [0.0, -0.4, 1.0], [0.0, 0.4, 6.0], [0.8, 0.3, 3.0]])
    f = np.array([[0, 1, 2], [1, 3, 2]])
    out = rasterize(v.astype(np.float32), f, K, W, H)
    assert out["mask"].sum() > 1000
    _check_reference(out, v.astype(np.float32), f, K, BARY_TOL[rasterize])
    n = out["normal"][out["mask"]]
    assert np.ptp(n, axis=0).max() > 0.3  # normals really vary across the fold


@pytest.mark.parametrize("rasterize", BACKENDS)
def test_cube_front_and_side(rasterize):
    """Cube x in [1.1, 2.1], y in [-0.7, 0.3], z in [3.5, 4.5]: front and left side."""
    out = rasterize(*_flat_cube([1.6, -0.2, 4.0], 1.0), K, W, H)
    m, n, d = out["mask"], out["normal"], out["depth"]
    c = np.mgrid[0:H, 0:W][1]
    front = m & (np.abs(n[..., 2] + 1) < 1e-5)
    side = m & (np.abs(n[..., 0] + 1) < 1e-5)
    assert front.sum() > 500 and side.sum() > 100
    assert not np.any(m & ~front & ~side)
    np.testing.assert_allclose(d[front], 3.5, atol=1e-6)
    z_side = 1.1 * K[0, 0] / (c - K[0, 2])  # x = 1.1 along the pixel ray
    np.testing.assert_allclose(d[side], z_side[side], rtol=1e-5)


@pytest.mark.parametrize("rasterize", BACKENDS)
def test_pixel_centre_convention(rasterize):
    """A tiny triangle around image point (u=37, v=81) covers only pixel [81, 37]."""
    k = np.array([[300.0, 0, 100], [0, 300.0, 60], [0, 0, 1]])
    z = 3.0

    def tri(u, v, rad=0.3):
        ang = np.array([0.1, 2.2, 4.3])
        uv = np.stack([u + rad * np.cos(ang), v + rad * np.sin(ang)], 1)
        return np.c_[(uv - k[:2, 2]) / np.diag(k)[:2] * z, np.full(3, z)]

    faces = np.array([[0, 1, 2]])
    out = rasterize(tri(37.0, 81.0).astype(np.float32), faces, k, 200, 120)
    assert np.argwhere(out["mask"]).tolist() == [[81, 37]]
    out = rasterize(tri(37.5, 81.5).astype(np.float32), faces, k, 200, 120)
    assert not out["mask"].any()


@pytest.mark.parametrize("rasterize", BACKENDS)
def test_no_cracks_grid_on_pixel_centres(rasterize):
    """Grid vertices exactly on pixel centres, bumpy depth, random diagonals."""
    rng = np.random.default_rng(0)
    us, vs = np.meshgrid(np.arange(10, 150, 3), np.arange(8, 110, 2))
    z = 2.0 + 0.3 * rng.random(us.shape)
    v = np.stack([(us - K[0, 2]) / K[0, 0] * z, (vs - K[1, 2]) / K[1, 1] * z, z], -1)
    idx = np.arange(us.size).reshape(us.shape)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, 1:], idx[1:, :-1]
    diag = rng.random(a.shape) < 0.5
    t1 = np.where(diag[..., None], np.stack([a, b, c], -1), np.stack([a, b, d], -1))
    t2 = np.where(diag[..., None], np.stack([a, c, d], -1), np.stack([b, c, d], -1))
    faces = np.concatenate([t1.reshape(-1, 3), t2.reshape(-1, 3)])
    out = rasterize(v.reshape(-1, 3).astype(np.float32), faces, K, W, H)
    # interior pixel centres (outer outline excluded: fill rule dependent)
    assert out["mask"][9:108, 11:148].all()
    assert not out["mask"][:8].any() and not out["mask"][:, :10].any()


@pytest.mark.parametrize("rasterize", BACKENDS)
def test_no_cracks_sliver_fan(rasterize):
    """97 sliver triangles meeting at a vertex placed exactly on a pixel centre."""
    n, rad, z, (cu, cv) = 97, 40.0, 2.5, (70.0, 55.0)
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
    uv = np.concatenate([[[cu, cv]], np.stack([cu + rad * np.cos(ang), cv + rad * np.sin(ang)], 1)])
    v = np.c_[(uv - K[:2, 2]) / np.diag(K)[:2] * z, np.full(len(uv), z)]
    faces = np.stack([np.zeros(n, int), 1 + np.arange(n), 1 + (np.arange(n) + 1) % n], 1)
    out = rasterize(v.astype(np.float32), faces, K, W, H)
    r, c = np.mgrid[0:H, 0:W]
    inside = np.hypot(c - cu, r - cv) < rad * np.cos(np.pi / n) - 1e-3
    assert out["mask"][inside].all()
    np.testing.assert_allclose(out["depth"][inside], z, atol=1e-6)


@pytest.mark.parametrize("rasterize", BACKENDS)
def test_near_plane_culls_whole_triangles(rasterize):
    far = np.array([[-0.5, -0.5, 1.0], [0.5, -0.5, 1.0], [0.0, 0.5, 1.0]])
    near = far.copy()
    near[0, 2] = 0.005  # one vertex in front of the near plane (0.01 m)
    behind = far * [1, 1, -1]
    v = np.concatenate([far, near, behind]).astype(np.float32)
    out = rasterize(v, np.arange(9).reshape(3, 3), K, W, H)
    assert set(np.unique(out["triangle_id"])) == {-1, 0}
    out = rasterize(v, np.arange(3, 9).reshape(2, 3), K, W, H)
    assert not out["mask"].any()
    _check_background(out)


@pytest.mark.parametrize("rasterize", BACKENDS)
def test_empty_mesh(rasterize):
    out = rasterize(np.zeros((0, 3), np.float32), np.zeros((0, 3), int), K, W, H)
    assert not out["mask"].any() and out["normal"].shape == (H, W, 3)
    _check_background(out)


# --------------------------------------------------------------------------
# Anny body mesh
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def anny_mesh():
    """Anny body in rest pose: (V,3) float32 metres (Z up, faces -Y), (F,3) int64."""
    anny = pytest.importorskip("anny")
    model = anny.Anny().to(torch.float32)
    with torch.no_grad():
        out = model(pose_parameters=torch.eye(4).repeat(1, 104, 1, 1),
                    phenotype_kwargs={k: torch.full((1,), 0.5) for k in model.phenotype_labels})
    return out["vertices"][0].numpy().astype(np.float32), model.faces.numpy().astype(np.int64)


def _anny_camera(v: np.ndarray, eye) -> np.ndarray:
    """Anny coords -> OpenCV camera at ``eye`` looking along +Y, upright.

    camera x = X, camera y = -Z (down), camera z = Y (forward).
    """
    e = np.asarray(eye, dtype=np.float32)
    return np.stack([v[:, 0] - e[0], -(v[:, 2] - e[2]), v[:, 1] - e[1]], 1)


def _chest(v: np.ndarray) -> np.ndarray:
    """A point on the front of the chest (Anny coords)."""
    zc = v[:, 2].min() + 0.72 * np.ptp(v[:, 2])
    band = (np.abs(v[:, 2] - zc) < 0.02) & (np.abs(v[:, 0]) < 0.05)
    return np.array([0.0, v[band, 1].min(), zc])


K_BODY = np.array([[560.0, 0, 255.5], [0, 560.0, 255.5], [0, 0, 1]])


def _agreement(a: dict, b: dict) -> dict:
    both = a["mask"] & b["mask"]
    same = both & (a["triangle_id"] == b["triangle_id"])
    cos = np.clip((a["normal"] * b["normal"]).sum(-1)[same], -1, 1)
    return dict(iou=both.sum() / (a["mask"] | b["mask"]).sum(),
                depth_med=np.median(np.abs(a["depth"] - b["depth"])[both]),
                same_id=same.sum() / both.sum(),
                angle_mean=np.degrees(np.arccos(cos)).mean())


def _check_normals(out: dict, k: np.ndarray) -> None:
    m = out["mask"]
    n = out["normal"][m]
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-5)
    assert np.all((n * _rays(k, *m.shape[::-1])[m]).sum(1) < 0)


def test_torch_anny_full_body(anny_mesh):
    v, f = anny_mesh
    out = raster_torch.rasterize(_anny_camera(v, [0, -3.0, 0]), f, K_BODY, 512, 512)
    rows = np.nonzero(out["mask"].any(1))[0]
    assert 0.5 < (rows.max() - rows.min()) / 512 < 0.7  # ~60% of the height
    head = out["depth"][rows.min():rows.min() + 20]
    assert 2.7 < np.median(out["depth"][out["mask"]]) < 3.1 and head.any()
    assert out["triangle_id"].max() < len(f)
    _check_reference(out, _anny_camera(v, [0, -3.0, 0]), f, K_BODY, 1e-6)
    _check_normals(out, K_BODY)
    _check_background(out)


def test_torch_chunking_is_invariant(anny_mesh, monkeypatch):
    v, f = anny_mesh
    vc = _anny_camera(v, _chest(v) - [0, 0.4, 0])
    ref = raster_torch.rasterize(vc, f, K_BODY, 256, 256)
    monkeypatch.setattr(raster_torch, "CHUNK_PAIRS", 1000)
    out = raster_torch.rasterize(vc, f, K_BODY, 256, 256)
    for name in ref:
        assert np.array_equal(ref[name], out[name]), name


@requires_gl
@pytest.mark.parametrize("view", ["full_body", "chest_close_up", "inside_pelvis"])
def test_torch_and_gl_agree_on_anny(anny_mesh, view):
    v, f = anny_mesh
    eye = {"full_body": np.array([0, -3.0, 0]),
           "chest_close_up": _chest(v) - [0, 0.4, 0],
           "inside_pelvis": np.zeros(3)}[view]
    vc = _anny_camera(v, eye)
    a = raster_torch.rasterize(vc, f, K_BODY, 512, 512)
    b = raster_gl.rasterize(vc, f, K_BODY, 512, 512)
    stats = _agreement(a, b)
    assert stats["iou"] > 0.995, stats
    assert stats["depth_med"] < 1e-4, stats
    assert stats["same_id"] > 0.99, stats
    assert stats["angle_mean"] < 2.0, stats
    for out, tol in ((a, 1e-6), (b, 1e-2)):
        _check_reference(out, vc, f, K_BODY, tol)
        _check_normals(out, K_BODY)
        _check_background(out)
    if view == "chest_close_up":  # the body overflows the image
        assert a["mask"].mean() > 0.5 and a["mask"][[0, -1]].any(1).all()
    if view == "inside_pelvis":  # seen from inside: back faces + near culling
        assert (vc[f][:, :, 2].min(1) <= raster_torch.NEAR).any() and a["mask"].all()


# --------------------------------------------------------------------------
# Back-face culling: only where it cannot change the image
# --------------------------------------------------------------------------

def _closed_cube(center, size: float):
    """Cube with 8 shared vertices, faces wound outward ((v1-v0)x(v2-v0) points out)."""
    c = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
    faces = []
    for axis in range(3):
        for sign in (-1, 1):
            quad = [i for i in range(8) if c[i, axis] == sign]  # 4 corners of that side
            centre = c[quad].mean(0)
            a, b = [j for j in range(3) if j != axis]
            ring = sorted(quad, key=lambda i: np.arctan2(c[i, b] - centre[b], c[i, a] - centre[a]))
            tri = [[ring[0], ring[1], ring[2]], [ring[0], ring[2], ring[3]]]
            n = np.cross(c[tri[0][1]] - c[tri[0][0]], c[tri[0][2]] - c[tri[0][0]])
            faces += tri if n[axis] * sign > 0 else [t[::-1] for t in tri]
    v = c * size / 2 + np.asarray(center, dtype=np.float64)
    return v.astype(np.float32), np.array(faces)


def test_closed_outward_surfaces_are_recognised(anny_mesh):
    v, f = _closed_cube([0, 0, 3], 1.0)
    assert culling.is_closed_outward(v, f)
    assert not culling.is_closed_outward(v, f[:, ::-1])      # wound inward
    assert not culling.is_closed_outward(v, f[1:])            # a hole
    flipped_one = f.copy()
    flipped_one[0] = flipped_one[0, ::-1]
    assert not culling.is_closed_outward(v, flipped_one)      # inconsistent winding
    assert not culling.is_closed_outward(*_quad(np.array([[0, 0, 2], [1, 0, 2], [1, 1, 2], [0, 1, 2]])))
    av, af = anny_mesh  # the real body: 27,420 faces, closed, wound outward
    assert culling.is_closed_outward(av, af)
    two = np.concatenate([af, af + len(av)])  # a group of two bodies is still closed
    assert culling.is_closed_outward(np.concatenate([av, av + [1.0, 0, 0]]), two)


def test_culling_only_where_the_camera_is_outside(anny_mesh):
    v, f = anny_mesh
    assert culling.can_cull_back_faces(_anny_camera(v, [0, -3.0, 0]), f, raster_torch.NEAR)
    assert not culling.can_cull_back_faces(_anny_camera(v, np.zeros(3)), f, raster_torch.NEAR)  # inside
    plane = _quad(np.array([[-1, -1, 2], [1, -1, 2], [1, 1, 2], [-1, 1, 2]]))
    assert not culling.can_cull_back_faces(*plane, raster_torch.NEAR)  # an open shell: both sides drawn


@pytest.mark.parametrize("backend", ["torch", pytest.param("gl", marks=requires_gl)])
def test_culled_closed_surfaces_look_the_same(backend, anny_mesh):
    """A closed, outward-wound body seen from outside: the culled raster is the double-sided one
    (a skinning fold seen from its inside-out side is the only possible difference)."""
    rasterize = {"torch": raster_torch.rasterize, "gl": raster_gl.rasterize}[backend]
    v, f = anny_mesh
    for eye in ([0, -3.0, 0], [1.5, -2.0, 0.5], _chest(v) - [0, 0.4, 0]):
        vc = _anny_camera(v, eye)
        both = rasterize(vc, f, K_BODY, 256, 256)
        culled = rasterize(vc, f, K_BODY, 256, 256, cull_back_faces=True)
        assert np.array_equal(both["mask"], culled["mask"])
        assert np.mean(both["triangle_id"] != culled["triangle_id"]) < 1e-4
    cube = _closed_cube([0.3, -0.2, 4.0], 1.0)
    for name, layer in rasterize(*cube, K, W, H).items():
        assert np.array_equal(layer, rasterize(*cube, K, W, H, cull_back_faces=True)[name]), name


@pytest.mark.parametrize("rasterize", BACKENDS)
def test_depth_only_raster_is_the_full_rasters_depth_and_mask(rasterize, anny_mesh):
    """A shadow map's depth-only pass draws the same depth and coverage as the full raster."""
    v, f = anny_mesh
    for eye in ([0, -3.0, 0], [0.3, -2.5, 0.4]):
        vc = _anny_camera(v, eye)
        full = rasterize(vc, f, K_BODY, 512, 512, cull_back_faces=True)
        depth_only = rasterize(vc, f, K_BODY, 512, 512, cull_back_faces=True, depth_only=True)
        assert set(depth_only) == {"depth", "mask"} and full["mask"].any()
        assert np.array_equal(depth_only["mask"], full["mask"])
        assert np.array_equal(depth_only["depth"], full["depth"])


@pytest.mark.parametrize("rasterize", BACKENDS)
def test_a_frame_keeps_nothing_of_the_previous_one(rasterize):
    """GL clears only its id and depth buffers: normal and depth must still read 0 wherever
    this frame drew nothing, after a frame that covered the whole image."""
    big = _quad(np.array([[-9, -9, 2], [9, -9, 2], [9, 9, 2], [-9, 9, 2]]))
    small = _quad(np.array([[0, 0, 3], [0.2, 0, 3], [0.2, 0.2, 3], [0, 0.2, 3]]))
    assert rasterize(*big, K, W, H)["mask"].all()
    out = rasterize(*small, K, W, H)
    assert 0 < out["mask"].sum() < W * H / 4
    _check_background(out)


@requires_gl
def test_gl_reads_back_only_the_box_it_can_draw_in(anny_mesh, monkeypatch):
    """The read-back covers the projected vertices' box: the layers equal a whole-frame read,
    for a body inside the image, one overflowing it, one seen from inside (near culling) and
    tiny triangles between pixel centres."""
    v, f = anny_mesh
    sliver = _quad(np.array([[0.001, 0.001, 2.0], [0.004, 0.001, 2.0], [0.004, 0.003, 2.0], [0.001, 0.003, 2.0]]))
    scenes = [(_anny_camera(v, eye), f, K_BODY, 512, 512)
              for eye in ([0, -3.0, 0], [1.5, -2.0, 0.5], _chest(v) - [0, 0.4, 0], np.zeros(3))]
    scenes.append((*sliver, K, W, H))
    boxes = [raster_gl.pixel_box(vc.astype(np.float32), k, w, h) for vc, _, k, w, h in scenes]
    assert raster_gl.pixel_box(scenes[0][0] * [1, 1, -1], K_BODY, 512, 512) is None  # all behind the camera
    boxed = [raster_gl.rasterize(*scene) for scene in scenes]
    monkeypatch.setattr(raster_gl, "pixel_box", lambda pos, k, w, h: (0, 0, w, h))
    for scene, box, out in zip(scenes, boxes, boxed):
        whole = raster_gl.rasterize(*scene)
        for name in whole:
            assert np.array_equal(out[name], whole[name]), name
        if whole["mask"].any():
            rows, cols = np.nonzero(whole["mask"])
            x0, y0, x1, y1 = box
            assert x0 <= cols.min() and cols.max() < x1 and y0 <= rows.min() and rows.max() < y1
    assert boxes[0][2] - boxes[0][0] < 256 and boxes[2] == (0, 0, 512, 512)  # a body far away; a close-up


@requires_gl
def test_framebuffers_stay_few_whatever_the_frame_sizes():
    """Shadow maps come in a new size almost every sample: GL keeps one framebuffer per
    power-of-two side (it once kept one per size, ~6 MB of host memory a sample), and a frame
    drawn in the corner of a bigger framebuffer equals the same frame in a fresh one of its size."""
    quad = _quad(np.array([[-0.5, -0.4, 2], [0.6, -0.4, 2], [0.6, 0.5, 2.5], [-0.5, 0.5, 2.5]]))
    used = raster_gl.GLRasterizer()
    try:
        for side in range(40, 1100, 23):
            k = K * [[side / W, 1, side / W], [1, side / H / 2, side / H / 4], [1, 1, 1]]
            used.rasterize(*quad, k, side, side // 2 + 7)
        assert used.framebuffer_count <= 6
        fresh = raster_gl.GLRasterizer()
        try:
            a, b = used.rasterize(*quad, K, W, H), fresh.rasterize(*quad, K, W, H)
        finally:
            fresh.release()
    finally:
        used.release()
    assert a["mask"].sum() > 1000
    for name in a:
        assert np.array_equal(a[name], b[name]), name


def test_open_meshes_stay_double_sided():
    """A plane seen from behind is drawn by the render stage (objects are often open shells)."""
    v, f = _quad(np.array([[-1, -1, 2], [1, -1, 2], [1, 1, 2], [-1, 1, 2]]), flip=True)
    for flip in (False, True):
        out = render_rasterize(v, f[:, ::-1] if flip else f, K, W, H, backend="torch")
        assert out["mask"].sum() > 1000


# --------------------------------------------------------------------------
# GL process handling
# --------------------------------------------------------------------------

def test_gl_available_is_cached_bool():
    assert raster_gl.gl_available() is GL_OK and isinstance(GL_OK, bool)


def _forked_child(queue) -> None:
    verts, faces = _quad(np.array([[0, 0, 1.0], [0.1, 0, 1.0], [0.1, 0.1, 1.0]]))
    try:
        raster_gl.rasterize(verts, faces[:1], K, W, H)
        queue.put(("rendered", raster_gl.gl_available()))
    except RuntimeError:
        queue.put(("refused", raster_gl.gl_available()))


@requires_gl
def test_gl_refuses_inherited_context_instead_of_hanging():
    verts, faces = _quad(np.array([[0, 0, 1.0], [0.1, 0, 1.0], [0.1, 0.1, 1.0], [0, 0.1, 1.0]]))
    assert raster_gl.rasterize(verts, faces, K, W, H)["mask"].any()  # context in parent
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_forked_child, args=(queue,))
    proc.start()
    proc.join(60)
    if proc.is_alive():
        proc.kill()
        pytest.fail("forked child hung")
    assert queue.get(timeout=5) == ("refused", False)


@requires_gl
def test_gl_instances_coexist():
    """Several GLRasterizer instances (contexts) in one process do not interfere."""
    corners = np.array([[-0.5, -0.5, 2.0], [0.5, -0.5, 2.0], [0.5, 0.5, 2.0], [-0.5, 0.5, 2.0]])
    verts, faces = _quad(corners)
    first, second = raster_gl.GLRasterizer(), raster_gl.GLRasterizer()
    try:
        ref = first.rasterize(verts, faces, K, W, H)
        other = second.rasterize(verts * [1, 1, 2], faces, K, 100, 80)
        again = first.rasterize(verts, faces, K, W, H)
    finally:
        second.release()
        first.release()
    assert other["mask"].sum() < ref["mask"].sum()
    assert all(np.array_equal(ref[name], again[name]) for name in ref)
