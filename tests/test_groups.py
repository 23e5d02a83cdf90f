"""Placing several real Anny bodies on one ground plane (synthgen.groups), checked independently
of the placement's own clearance test: a generalised winding number says no vertex of any body
lies inside another body."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from synthgen.groups import CLEARANCE_M, SPACING_M, place_on_ground, surface_points


def winding_numbers(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(N,) generalised winding number of each point w.r.t. a triangle mesh (~1 inside, ~0 outside):
    the sum of the triangles' signed solid angles (Van Oosterom & Strackee) over 4 pi."""
    out = np.empty(len(points))
    tri = vertices[faces].astype(np.float64)  # (F, 3, 3)
    for start in range(0, len(points), 64):
        p = points[start:start + 64, None, None, :]
        a, b, c = (tri[None, :, k, :] - p[:, :, 0, :] for k in range(3))  # (n, F, 3) each
        la, lb, lc = (np.linalg.norm(x, axis=-1) for x in (a, b, c))
        det = np.einsum("nfd,nfd->nf", a, np.cross(b, c))
        den = (la * lb * lc + np.einsum("nfd,nfd->nf", a, b) * lc + np.einsum("nfd,nfd->nf", a, c) * lb
               + np.einsum("nfd,nfd->nf", b, c) * la)
        out[start:start + 64] = np.abs(2.0 * np.arctan2(det, den).sum(axis=1) / (4.0 * np.pi))
    return out


@pytest.fixture(scope="module")
def bodies(anny_factory):
    """Four real Anny bodies of different ages and poses, each standing on z = 0 at the origin."""
    model = anny_factory.subject_model
    subjects = [group[0] for group in anny_factory.pose_subjects([0, 1, 2, 3])]
    faces = np.asarray(model.mesh(subjects[0])[0])
    return [s.vertices.astype(np.float64) for s in subjects], faces, [s.keypoints_3d for s in subjects]


def test_surface_samples_cover_every_face_within_the_spacing(bodies):
    vertices, faces = bodies[0][0], bodies[1]
    samples = surface_points(vertices, faces)
    rng = np.random.default_rng(0)
    picked = rng.integers(len(faces), size=2000)
    w = rng.dirichlet(np.ones(3), size=2000)
    on_faces = np.einsum("nk,nkd->nd", w, vertices[faces[picked]])
    distance, _ = cKDTree(samples).query(on_faces)
    assert distance.max() <= SPACING_M + 1e-9


def test_placed_bodies_do_not_interpenetrate(bodies):
    vertices, faces, _ = bodies
    surfaces = [surface_points(v, faces) for v in vertices]
    offsets = place_on_ground(np.random.default_rng(3), surfaces, spread_m=(0.3, 0.6))
    assert all(o is not None for o in offsets)
    assert np.allclose(offsets[0], 0.0) and all(o[2] == 0.0 for o in offsets)
    placed = [v + o for v, o in zip(vertices, offsets)]
    # tight enough to be a crowd: some pair of bodies closer than 30 cm
    gaps = [cKDTree(placed[i]).query(placed[j])[0].min() for i in range(4) for j in range(i + 1, 4)]
    assert min(gaps) < 0.3
    assert min(gaps) >= CLEARANCE_M - SPACING_M  # vertex-to-vertex, so within one sample spacing
    for i in range(4):
        for j in range(4):
            if i == j:
                continue
            # the 40 vertices of body j closest to body i's surface: the first to be inside it
            closest = np.argsort(cKDTree(placed[i]).query(placed[j])[0])[:40]
            assert winding_numbers(placed[j][closest], placed[i], faces).max() < 0.5, (i, j)


def test_the_independent_check_sees_an_overlap(bodies):
    """The winding-number check is not vacuous: a body's own hip and shoulder keypoints are inside
    it, and a second body dropped on the first has vertices inside it."""
    vertices, faces, keypoints = bodies
    joints = keypoints[1][[5, 6, 11, 12]].astype(np.float64)  # COCO shoulders and hips
    assert winding_numbers(joints, vertices[1], faces).min() > 0.9
    lo, hi = vertices[0].min(0), vertices[0].max(0)
    other = vertices[1][np.all((vertices[1] >= lo) & (vertices[1] <= hi), axis=1)][::32]
    assert winding_numbers(other, vertices[0], faces).max() > 0.5


def test_no_clear_spot_gives_none_and_placement_is_reproducible(bodies):
    vertices, faces, _ = bodies
    surfaces = [surface_points(v, faces) for v in vertices[:3]]
    crowded = place_on_ground(np.random.default_rng(1), surfaces, spread_m=(0.0, 0.02), tries=5)
    assert crowded[0] is not None and crowded[1] is None and crowded[2] is None
    a = place_on_ground(np.random.default_rng(9), surfaces, spread_m=(0.4, 0.8))
    b = place_on_ground(np.random.default_rng(9), surfaces, spread_m=(0.4, 0.8))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
