"""Groups: several posed subjects on one ground plane, no two of them interpenetrating.

The stage between subjects and cameras for scenes with more than one subject. Each member is
posed as a single subject is (standing on z = 0, centred on the origin, see
:mod:`synthgen.subjects.base`); :func:`place_on_ground` then draws a ground-plane offset for each
member after the first until its surface keeps ``clearance`` metres from every member already
placed.

The test is on the posed surfaces, not on root positions: both meshes are sampled densely enough
(:func:`surface_points`, every point of a triangle within ``spacing`` of a sample) that two
surfaces which cross would have samples closer than ``2 * spacing <= clearance``. So a placement
that passes cannot interpenetrate, whatever the poses (outstretched arms, a child beside an adult).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

CLEARANCE_M = 0.02  # closest allowed approach of two surfaces
SPACING_M = CLEARANCE_M / 2  # surface sample spacing that makes the clearance test exact


def surface_points(vertices: np.ndarray, faces: np.ndarray, spacing: float = SPACING_M) -> np.ndarray:
    """(P, 3) points on a triangle mesh such that every point of every face lies within
    ``spacing`` of one of them: the vertices, plus a barycentric grid on faces whose longest
    edge exceeds ``spacing``.

    vertices: (V, 3) metres; faces: (F, 3) int.
    """
    tri = vertices[faces]  # (F, 3, 3)
    longest = np.linalg.norm(tri - tri[:, [1, 2, 0]], axis=2).max(axis=1)  # (F,)
    steps = np.ceil(longest / spacing).astype(int)  # grid divisions per edge: sub-edges <= spacing
    points = [vertices]
    for n in np.unique(steps[steps > 1]):
        i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
        keep = (i + j <= n) & ~(((i == 0) & (j == 0)) | ((i == n) & (j == 0)) | ((i == 0) & (j == n)))
        w = np.stack([n - i[keep] - j[keep], i[keep], j[keep]], axis=1) / n  # (G, 3) barycentric
        points.append(np.einsum("gk,fkd->fgd", w, tri[steps == n]).reshape(-1, 3))
    return np.concatenate(points).astype(np.float64)


def _overlap(lo_a: np.ndarray, hi_a: np.ndarray, lo_b: np.ndarray, hi_b: np.ndarray, margin: float) -> bool:
    return bool(np.all(lo_a - margin <= hi_b) and np.all(lo_b - margin <= hi_a))


class _Placed:
    """A placed member's surface samples, with a k-d tree built on first need."""

    def __init__(self, points: np.ndarray):
        self.points, self.lo, self.hi = points, points.min(axis=0), points.max(axis=0)
        self._tree: cKDTree | None = None

    def closer_than(self, points: np.ndarray, clearance: float) -> bool:
        """Whether any of ``points`` (N, 3) comes within ``clearance`` of this member's surface."""
        near = points[np.all((points >= self.lo - clearance) & (points <= self.hi + clearance), axis=1)]
        if not len(near):
            return False
        if self._tree is None:
            self._tree = cKDTree(self.points)
        distance, _ = self._tree.query(near, distance_upper_bound=clearance)
        return bool(np.isfinite(distance).any())


def place_on_ground(rng: np.random.Generator, surfaces: list[np.ndarray], spread_m: tuple[float, float],
                    clearance: float = CLEARANCE_M, tries: int = 50) -> list[np.ndarray | None]:
    """A ground-plane offset (3,) for each member, or None where no clear spot was found.

    surfaces: per member, (P_i, 3) world-frame surface samples of its posed mesh
    (:func:`surface_points`), standing on z = 0 about the origin. Member 0 stays at the origin;
    member k tries up to ``tries`` spots at a distance drawn from ``spread_m`` (scaled by
    sqrt(k), so the group fills a disc at a steady density) in a uniformly drawn direction,
    and takes the first that keeps ``clearance`` from every member placed before it. The draws
    depend only on ``rng`` and the surfaces, so a group is reproducible.
    """
    placed: list[_Placed] = []
    offsets: list[np.ndarray | None] = []
    for k, points in enumerate(surfaces):
        offset = np.zeros(3) if k == 0 else None
        for _ in range(0 if k == 0 else tries):
            radius = float(rng.uniform(*spread_m)) * np.sqrt(k)
            angle = float(rng.uniform(0.0, 2.0 * np.pi))
            candidate = np.array([radius * np.cos(angle), radius * np.sin(angle), 0.0])
            moved = points + candidate
            lo, hi = moved.min(axis=0), moved.max(axis=0)
            if not any(_overlap(lo, hi, p.lo, p.hi, clearance) and p.closer_than(moved, clearance)
                       for p in placed):
                offset = candidate
                break
        offsets.append(offset)
        if offset is not None:
            placed.append(_Placed(points + offset))
    return offsets


def place_members(members: list, mesh_of, rng: np.random.Generator, spread_m: tuple[float, float],
                  clearance: float, tries: int) -> tuple[list, list[np.ndarray]]:
    """The members that found a clear spot, moved there, and their (3,) world offsets.

    members: :class:`synthgen.subjects.base.PosedSubject` s standing at the origin; mesh_of:
    member -> (faces (F, 3), face_parts (F,)). Vertices and keypoints move; ``params`` stay in
    the model's own terms (the labels carry the offset as ``placement_world``).
    """
    from synthgen.subjects.base import PosedSubject

    surfaces = [surface_points(m.vertices.astype(np.float64), np.asarray(mesh_of(m)[0]),
                               clearance / 2) for m in members]
    placed, offsets = [], []
    for member, offset in zip(members, place_on_ground(rng, surfaces, spread_m, clearance, tries)):
        if offset is None:
            continue
        shift = offset.astype(np.float32)
        placed.append(PosedSubject(vertices=member.vertices + shift, keypoints_3d=member.keypoints_3d + shift,
                                   params=member.params, arrays=member.arrays))
        offsets.append(offset)
    return placed, offsets


def combined_mesh(vertices: list[np.ndarray], meshes: list[tuple[np.ndarray, np.ndarray]]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One mesh of every member for one render pass.

    vertices: per member (V_k, 3); meshes: per member (faces (F_k, 3), face_parts (F_k,)).
    Returns vertices (V, 3), faces (F, 3) int (offset per member; a lone member's own array, so
    per-topology caches downstream hit), face_parts (F,) uint8 and face_instance (F,) uint8:
    member k's faces carry id k + 1 (``instances[k].id``).
    """
    if len(meshes) == 1:
        (faces, parts), = meshes
        return vertices[0], faces, np.asarray(parts, dtype=np.uint8), np.ones(len(faces), np.uint8)
    starts = np.cumsum([0] + [len(v) for v in vertices[:-1]])
    faces = np.concatenate([np.asarray(f, dtype=np.int64) + s for (f, _), s in zip(meshes, starts)])
    parts = np.concatenate([np.asarray(p, dtype=np.uint8) for _, p in meshes])
    instance = np.concatenate([np.full(len(f), k + 1, np.uint8) for k, (f, _) in enumerate(meshes)])
    return np.concatenate(vertices), faces, parts, instance
