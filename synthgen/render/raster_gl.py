"""OpenGL (moderngl, headless EGL) triangle rasteriser.

Same interface and conventions as :mod:`synthgen.render.raster_torch`:

* ``vertices`` are in the OpenCV camera frame: x right, y down, z forward, metres.
* Integer pixel coordinates are pixel CENTRES: pixel (row ``r``, col ``c``) is
  sampled at the image point ``(u, v) = (c, r)`` where
  ``(u, v) = (K @ X)[:2] / (K @ X)[2]`` exactly (no half-pixel offset).
  GL samples fragments at window coordinates ``(c + 0.5, r + 0.5)``, so the
  projection matrix maps ``(u, v)`` to window ``(u + 0.5, v + 0.5)``.  Image
  row ``r`` is GL framebuffer row ``r``: GL's y axis points up and
  ``Framebuffer.read`` returns the bottom row first, so the two flips cancel
  and the read-back array is already top-row-first.  ``K`` must have last row
  ``[0, 0, 1]``.
* Near plane: any triangle with a vertex at ``z <= NEAR`` (0.01 m) is culled
  entirely on the CPU (GL would otherwise clip it).  No far plane (infinite
  far projection).
* Faces are double-sided unless ``cull_back_faces``: then faces whose winding
  turns away from the camera (``(v1-v0)x(v2-v0)`` pointing away) are skipped,
  which only the caller can know is safe (:mod:`synthgen.render.culling`).
* Outputs (numpy): ``triangle_id`` (H,W) int32, -1 background; ``depth`` (H,W)
  float32 metric camera z (perspective-correct varying), 0 background;
  ``normal`` (H,W,3) float32 unit camera-frame normal (smooth, interpolated
  unit area-weighted vertex normals, renormalised), 0 background; ``mask``
  (H,W) bool.  Normal orientation: flipped to the visible side of the
  triangle (``gl_FrontFacing``), then, if ``dot(n, ray) > -NORMAL_EPS``, bent
  towards the camera along the ray until that component is ``-NORMAL_EPS``
  and renormalised, so ``dot(n, ray) < 0`` (identical to the torch version).

One render pass writes RGB32F (normal), R32F (camera z) and R32I
(``gl_PrimitiveID + 1``, 0 = background) colour attachments plus a depth
buffer; no MSAA.  Only the id and depth buffers are cleared per frame; the
normal and z read back are zeroed where no id was drawn.  A depth-only pass
(a shadow map) runs a program that writes camera z alone into a cleared R32F
attachment of its own (sharing the depth buffer).

Processes: an EGL context must be created in the process that uses it.  If a
process that owns a context forks, creating a new context in the child hangs
(Mesa llvmpipe), so this module refuses to do that (RuntimeError) and
:func:`gl_available` returns False in such a child.  :func:`gl_available`
itself probes in a short-lived subprocess so that it never leaves an EGL
context behind in the calling process.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys

import cv2
import numpy as np

logger = logging.getLogger(__name__)

NEAR = 0.01  # metres; triangles with any vertex at z <= NEAR are culled
NORMAL_EPS = 1e-3  # minimum |dot(n, ray)| for normals bent towards the camera
FBO_MIN_SIDE = 64  # framebuffers are squares of a power-of-two side, at least this

_VERTEX_SHADER = """
#version 330
uniform mat4 proj;
in vec3 in_pos;
in vec3 in_nrm;
out vec3 v_pos;
out vec3 v_nrm;
void main() {
    v_pos = in_pos;
    v_nrm = in_nrm;
    gl_Position = proj * vec4(in_pos, 1.0);
}
"""

_FRAGMENT_SHADER = """
#version 330
const float NORMAL_EPS = %r;
in vec3 v_pos;
in vec3 v_nrm;
layout(location = 0) out vec3 out_normal;
layout(location = 1) out float out_depth;
layout(location = 2) out int out_id;
void main() {
    vec3 d = normalize(v_pos);
    vec3 n = gl_FrontFacing ? v_nrm : -v_nrm;
    float ln = length(n);
    n = ln > 1e-12 ? n / ln : -d;
    float dn = dot(n, d);
    if (dn > -NORMAL_EPS) n = normalize(n - (dn + NORMAL_EPS) * d);
    out_normal = n;
    out_depth = v_pos.z;
    out_id = gl_PrimitiveID + 1;
}
""" % NORMAL_EPS

# A shadow map needs only camera z: a program without normals or ids, drawn into one cleared R32F
# attachment (z > 0 wherever something was drawn), sets triangles up in ~60 % of the time.
_DEPTH_VERTEX_SHADER = """
#version 330
uniform mat4 proj;
in vec3 in_pos;
out float v_z;
void main() {
    v_z = in_pos.z;
    gl_Position = proj * vec4(in_pos, 1.0);
}
"""

_DEPTH_FRAGMENT_SHADER = """
#version 330
in float v_z;
layout(location = 0) out float out_depth;
void main() {
    out_depth = v_z;
}
"""

_PROBE = ("import moderngl; c = moderngl.create_standalone_context(backend='egl'); "
          "assert c.version_code >= 330; c.release()")

_owner_pid: int | None = None  # pid of the process that created a GL context
_available: bool | None = None
_instances: dict[int, "GLRasterizer"] = {}


def projection_matrix(K: np.ndarray, width: int, height: int) -> np.ndarray:
    """(4,4) float64 clip matrix for camera-frame points (OpenCV axes).

    Window coords are ``(u + 0.5, v + 0.5)`` with ``(u, v)`` the projection
    by ``K``; ``w_clip = z`` and ``ndc_z = 1 - 2 NEAR / z`` (infinite far).
    """
    k = np.asarray(K, dtype=np.float64)
    p = np.zeros((4, 4))
    p[0, :3] = (2.0 * k[0] + (1.0 - width) * k[2]) / width
    p[1, :3] = (2.0 * k[1] + (1.0 - height) * k[2]) / height
    p[2] = [0.0, 0.0, 1.0, -2.0 * NEAR]
    p[3, :3] = k[2]
    return p


def vertex_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Unit area-weighted vertex normals: v (V,3) float32, f (F,3) int -> (V,3)."""
    vt = np.ascontiguousarray(v.T)  # (3,V)
    a, b, c = (np.take(vt, f[:, i], axis=1) for i in range(3))  # (3,F) each
    e1, e2 = b - a, c - a
    fn = e1[[1, 2, 0]] * e2[[2, 0, 1]] - e1[[2, 0, 1]] * e2[[1, 2, 0]]  # (3,F)
    idx = f.T.reshape(-1)
    vn = np.stack([np.bincount(idx, np.tile(fn[j], 3), minlength=len(v))
                   for j in range(3)], 1)
    n = np.linalg.norm(vn, axis=1, keepdims=True)
    return (vn / np.maximum(n, 1e-20)).astype(np.float32)


def _inherited_context() -> bool:
    """True if a parent process created an EGL context before forking us."""
    return _owner_pid is not None and _owner_pid != os.getpid()


class GLRasterizer:
    """Headless EGL rasteriser; context and buffers are created lazily.

    The context is created on first use in the calling process; framebuffers
    are cached per (width, height), vertex/index buffers grow as needed.
    Not thread-safe: use one instance per thread.
    """

    def __init__(self) -> None:
        self._ctx = None
        self._prog = None
        self._pid: int | None = None
        self._fbos: dict[int, tuple] = {}  # square side -> (FBO, cleared FBO, depth-only FBO)
        self._buffers: dict[str, object] = {}
        self._vao = self._depth_prog = self._depth_vao = None

    def _context(self):
        """The (lazily created) moderngl context of this process."""
        global _owner_pid
        if self._ctx is not None:
            if self._pid != os.getpid():
                raise RuntimeError("GLRasterizer used in a forked child; create "
                                   "a new one in the child (spawn start method)")
            return self._ctx
        if _inherited_context():
            raise RuntimeError("a parent process created an EGL context before "
                               "fork; creating one here would hang")
        import moderngl

        ctx = moderngl.create_standalone_context(backend="egl", require=330)
        _owner_pid, self._pid = os.getpid(), os.getpid()
        self._prog = ctx.program(vertex_shader=_VERTEX_SHADER,
                                 fragment_shader=_FRAGMENT_SHADER)
        self._depth_prog = ctx.program(vertex_shader=_DEPTH_VERTEX_SHADER,
                                       fragment_shader=_DEPTH_FRAGMENT_SHADER)
        ctx.front_face = "cw"  # (u,v) clockwise == normal faces the camera
        ctx.cull_face = "back"  # used only when enabled (cull_back_faces)
        self._ctx = ctx
        logger.debug("created EGL context: %s", ctx.info.get("GL_RENDERER"))
        return ctx

    def _framebuffer(self, width: int, height: int):
        """(FBO, cleared FBO, depth-only FBO) whose viewport is ``width`` x ``height``: RGB32F
        normal, R32F z, R32I id + 1, depth buffer; the second holds only the id and depth buffers,
        the ones a frame must start cleared (the others are read where an id was drawn: clearing
        float RGB is slow on llvmpipe); the third an R32F z of its own and the same depth buffer.
        One triple per power-of-two side, drawn into its lower-left corner: shadow maps come in a
        new size almost every sample, and a set per size made the cache (host memory under
        llvmpipe) grow by ~6 MB a sample."""
        side = FBO_MIN_SIDE
        while side < max(width, height):
            side *= 2
        fbos = self._fbos.get(side)
        if fbos is None:
            ctx, size = self._ctx, (side, side)
            ids, depth = ctx.renderbuffer(size, 1, dtype="i4"), ctx.depth_renderbuffer(size)
            color = [ctx.renderbuffer(size, 3, dtype="f4"), ctx.renderbuffer(size, 1, dtype="f4"), ids]
            fbos = (ctx.framebuffer(color, depth), ctx.framebuffer([ids], depth),
                    ctx.framebuffer([ctx.renderbuffer(size, 1, dtype="f4")], depth))
            self._fbos[side] = fbos
        for fbo in fbos:
            fbo.viewport = (0, 0, width, height)
        return fbos

    @property
    def framebuffer_count(self) -> int:
        """How many framebuffer sets this rasterizer keeps for reuse (one per power-of-two side)."""
        return len(self._fbos)

    def _buffer(self, name: str, data: np.ndarray):
        """Upload ``data`` into a named buffer, growing it when too small."""
        buf = self._buffers.get(name)
        if buf is None or buf.size < data.nbytes:
            if buf is not None:
                buf.release()
            buf = self._ctx.buffer(reserve=max(data.nbytes, 1) * 5 // 4)
            self._buffers[name] = buf
            self._vao = self._depth_vao = None
        buf.write(data)
        return buf

    def _vertex_array(self, pos: np.ndarray, nrm: np.ndarray | None, idx: np.ndarray):
        """Upload mesh data and return the (cached) vertex array object: of the full program, or
        of the depth-only one when ``nrm`` is None."""
        if nrm is None:
            pos_buf, idx_buf = self._buffer("pos", pos), self._buffer("idx", idx)
            if self._depth_vao is None:
                self._depth_vao = self._ctx.vertex_array(self._depth_prog, [(pos_buf, "3f", "in_pos")],
                                                         index_buffer=idx_buf, index_element_size=4)
            return self._depth_vao
        bufs = [self._buffer(n, d) for n, d in (("pos", pos), ("nrm", nrm), ("idx", idx))]
        if self._vao is None:
            self._vao = self._ctx.vertex_array(
                self._prog, [(bufs[0], "3f", "in_pos"), (bufs[1], "3f", "in_nrm")],
                index_buffer=bufs[2], index_element_size=4)
        return self._vao

    def rasterize(self, vertices: np.ndarray, faces: np.ndarray, K: np.ndarray,
                  width: int, height: int, cull_back_faces: bool = False, depth_only: bool = False) -> dict:
        """Rasterise; arguments and outputs as :func:`rasterize`."""
        pos = np.ascontiguousarray(vertices, dtype=np.float32).reshape(-1, 3)
        faces = np.asarray(faces)
        if faces.ndim != 2:
            faces = faces.reshape(-1, 3)
        kept = _kept_faces(pos, faces)
        idx = np.ascontiguousarray(faces if kept is None else faces[kept], dtype=np.int32)
        with self._context():  # make current: several instances may coexist
            fbo = self._draw(pos, faces, idx, K, width, height, cull_back_faces, depth_only)
            return _read_back(fbo, kept, width, height, pixel_box(pos, K, width, height) if len(idx) else None,
                              depth_only)

    def _draw(self, pos, faces, idx, K, width: int, height: int, cull_back_faces: bool = False,
              depth_only: bool = False):
        """Render kept faces idx (F',3) int32 into the cached FBO; return it."""
        import moderngl

        fbo, cleared, depth_fbo = self._framebuffer(width, height)
        if depth_only:
            fbo = cleared = depth_fbo
        cleared.use()
        cleared.clear(0.0, 0.0, 0.0, 0.0, depth=1.0, viewport=(0, 0, width, height))
        fbo.use()
        self._ctx.enable_only(moderngl.DEPTH_TEST | (moderngl.CULL_FACE if cull_back_faces else 0))
        self._ctx.depth_func = "<"
        if len(idx):
            proj = projection_matrix(K, width, height)
            program = self._depth_prog if depth_only else self._prog
            program["proj"].write(proj.T.astype("f4").tobytes())  # column-major
            vao = self._vertex_array(pos, None if depth_only else vertex_normals(pos, faces), idx)
            vao.render(moderngl.TRIANGLES, vertices=3 * len(idx))
        return fbo

    def release(self) -> None:
        """Free the context and its objects (only in the creating process)."""
        if self._ctx is not None and self._pid == os.getpid():
            self._ctx.release()
        self._ctx, self._prog, self._pid, self._vao = None, None, None, None
        self._depth_prog = self._depth_vao = None
        self._fbos, self._buffers = {}, {}


def _kept_faces(pos: np.ndarray, faces: np.ndarray) -> np.ndarray | None:
    """Indices (F',) of faces with all vertices beyond NEAR; None if all are."""
    ok = pos[:, 2] > NEAR
    if ok.all():
        return None
    return np.flatnonzero(ok[faces].all(1))


def pixel_box(pos: np.ndarray, K: np.ndarray, width: int, height: int) -> tuple[int, int, int, int] | None:
    """Half-open pixel box ``(x0, y0, x1, y1)`` holding every pixel whose centre a face of
    ``pos`` (V, 3) beyond NEAR can cover, clipped to the image; None when it is empty.

    A triangle covers only pixel centres inside its projected hull, so the box of the projected
    vertices bounds the raster; one pixel of margin absorbs rounding in GL's setup.
    """
    front = pos[:, 2] > NEAR
    x, y, z = pos.T if front.all() else pos[front].T
    if not len(z):
        return None
    # each point projects to K @ (a, b, 1), done per coordinate: an (N, 3) @ (3, 3) product and
    # an (N, 2) / (N, 1) broadcast cost NumPy ten times more (benchmarks/README.md)
    a, b = x / z, y / z
    k = np.asarray(K, np.float64)
    u = a * np.float32(k[0, 0])
    u += b * np.float32(k[0, 1])
    v = b * np.float32(k[1, 1])
    v += a * np.float32(k[1, 0])
    lo = np.floor([u.min() + k[0, 2], v.min() + k[1, 2]]) - 1
    hi = np.ceil([u.max() + k[0, 2], v.max() + k[1, 2]]) + 2
    x0, y0 = int(max(lo[0], 0)), int(max(lo[1], 0))
    x1, y1 = int(min(hi[0], width)), int(min(hi[1], height))
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def _read_back(fbo, kept: np.ndarray | None, width: int, height: int,
               box: tuple[int, int, int, int] | None, depth_only: bool = False) -> dict:
    """Read the attachments into the output dict (see module docstring), only inside ``box``
    (:func:`pixel_box`): nothing is drawn outside it, and llvmpipe's read-back of float
    buffers is slow. depth_only: only ``depth`` and
    ``mask`` (no normals, no triangle ids), from the depth-only framebuffer."""
    depth = np.zeros((height, width), np.float32)
    if depth_only:
        if box is not None:
            x0, y0, x1, y1 = box
            box_depth = np.empty((y1 - y0, x1 - x0), np.float32)
            fbo.read_into(box_depth, viewport=(x0, y0, x1 - x0, y1 - y0), components=1, attachment=0, dtype="f4")
            depth[y0:y1, x0:x1] = box_depth
        return dict(depth=depth, mask=depth > 0)  # z > NEAR wherever a face was drawn
    normal = np.zeros((height, width, 3), np.float32)
    tid = np.full((height, width), -1, np.int32)
    mask = np.zeros((height, width), bool)
    if box is not None:
        x0, y0, x1, y1 = box
        w, h = x1 - x0, y1 - y0
        window = (slice(y0, y1), slice(x0, x1))
        raw = np.empty((h, w), np.int32)
        fbo.read_into(raw, viewport=(x0, y0, w, h), components=1, attachment=2, dtype="i4")
        box_depth = np.empty((h, w), np.float32)
        fbo.read_into(box_depth, viewport=(x0, y0, w, h), components=1, attachment=1, dtype="f4")
        drawn = (raw != 0).view(np.uint8)  # normal and depth hold an older frame elsewhere
        np.multiply(box_depth, drawn, out=depth[window])
        box_normal = np.empty((h, w, 3), np.float32)
        fbo.read_into(box_normal, viewport=(x0, y0, w, h), components=3, attachment=0, dtype="f4")
        cv2.copyTo(box_normal, drawn, normal[window])
        tid[window] = raw - 1 if kept is None else np.concatenate([[-1], kept]).astype(np.int32)[raw]
        mask[window] = drawn.view(bool)
    return dict(triangle_id=tid, depth=depth, normal=normal, mask=tid >= 0)


def gl_available() -> bool:
    """Whether a headless EGL GL 3.3 context can be made here (cached, never raises).

    Probes in a subprocess so that no EGL context is left in this process
    (which would make forked children hang).  Returns False in a forked child
    of a process that already owns a context.
    """
    global _available
    if _inherited_context():
        return False
    if _owner_pid == os.getpid():
        return True
    if _available is None:
        try:
            res = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True,
                                 timeout=120, text=True)
            _available = res.returncode == 0
            if not _available:
                logger.info("EGL/GL unavailable: %s", res.stderr.strip()[-500:])
        except Exception as exc:  # noqa: BLE001 - must never raise
            logger.info("EGL/GL probe failed: %r", exc)
            _available = False
    return _available


def get_rasterizer() -> GLRasterizer:
    """The per-process cached :class:`GLRasterizer`."""
    pid = os.getpid()
    if pid not in _instances:
        _instances[pid] = GLRasterizer()
    return _instances[pid]


def rasterize(vertices: np.ndarray, faces: np.ndarray, K: np.ndarray,
              width: int, height: int, cull_back_faces: bool = False, depth_only: bool = False) -> dict:
    """Rasterise a triangle mesh given in the OpenCV camera frame.

    Args:
        vertices: (V,3) float32 camera-frame positions in metres.
        faces: (F,3) int vertex indices.
        K: (3,3) float pinhole intrinsics (last row [0, 0, 1]).
        width, height: image size in pixels.
        cull_back_faces: skip faces turned away from the camera (see module docstring).
        depth_only: only ``depth`` and ``mask`` (a shadow map): no vertex normals, normals or ids.

    Returns:
        dict with ``triangle_id`` (H,W) int32, ``depth`` (H,W) float32,
        ``normal`` (H,W,3) float32, ``mask`` (H,W) bool (see module docstring).
    """
    return get_rasterizer().rasterize(vertices, faces, K, width, height, cull_back_faces, depth_only)
