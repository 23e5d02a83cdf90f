"""Near-plane clipping of open geometry (scenes) that reaches behind the camera.

The rasterisers drop any triangle with a vertex at z <= ``raster_gl.NEAR`` (0.01 m). A body
seen from outside never has such triangles, but a floor that runs under the camera, or a room
the camera stands in, does: those triangles are cut at :data:`NEAR_CLIP` first.
"""

from __future__ import annotations

import numpy as np

__all__ = ["NEAR_CLIP", "clip_near"]

NEAR_CLIP = 0.02  # metres: scene triangles are clipped here (the rasterisers cull at 0.01 m)


def clip_near(vertices: np.ndarray, faces: np.ndarray, near: float = NEAR_CLIP) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clip triangles against the plane z = ``near`` of the camera frame.

    vertices: (V, 3) camera frame; faces: (F, 3). Returns (V', 3) vertices (the input ones
    first, then the new cut points), (F', 3) faces and (F',) index of each output face's source
    face. A triangle with one vertex behind becomes two, with two behind one, with three none.
    """
    z = vertices[faces, 2]  # (F, 3)
    behind = z <= near
    count = behind.sum(axis=1)
    keep = faces[count == 0]
    out_faces, sources, new_verts = [keep], [np.flatnonzero(count == 0)], []
    base = len(vertices)
    for n_behind in (1, 2):
        sel = np.flatnonzero(count == n_behind)
        if not len(sel):
            continue
        f, bh = faces[sel], behind[sel]
        odd = np.argmax(bh if n_behind == 1 else ~bh, axis=1)  # the vertex alone on its side
        order = (odd[:, None] + np.arange(3)) % 3
        tri = np.take_along_axis(f, order, axis=1)  # rolled: odd vertex first, winding kept
        a, b, c = (vertices[tri[:, i]] for i in range(3))

        def cut(p, q):
            t = (near - p[:, 2]) / (q[:, 2] - p[:, 2])
            return p + t[:, None] * (q - p)

        ab, ac = cut(a, b), cut(a, c)
        m = len(sel)
        i_ab = base + np.arange(m)
        i_ac = base + m + np.arange(m)
        base += 2 * m
        new_verts += [ab, ac]
        if n_behind == 1:  # a behind: keep the quad ab, b, c, ac
            out_faces += [np.stack([i_ab, tri[:, 1], tri[:, 2]], 1), np.stack([i_ab, tri[:, 2], i_ac], 1)]
            sources += [sel, sel]
        else:  # only a in front
            out_faces.append(np.stack([tri[:, 0], i_ab, i_ac], 1))
            sources.append(sel)
    verts = np.concatenate([vertices] + new_verts) if new_verts else vertices
    return verts, np.concatenate(out_faces).astype(np.int64), np.concatenate(sources)
