"""Synthetic SMAL model files for tests (no licensed data), with SMAL's real array shapes.

``smal_CVPR2017.pkl`` has 3889 vertices, 7774 faces, 33 joints and 41 shape directions. The mesh
here is ONE closed genus-0 tube (169 rings x 23 segments + 2 poles = 3889 vertices, 2 x 169 x 23 =
7774 faces) that walks SMAL's 33-joint skeleton depth-first through the embedded quadruped's joint
positions: out along every leg, the tail and the neck to a tip, and back. Each ring is skinned to
the bone it lies on (50/50 at joints); each ``J_regressor`` row averages the ring at its joint,
so the regressed joints are the joint positions. Shape directions: 0 = size, 1 = height, the
other 39 = 1 mm noise; posedirs are small noise.

The model is written in a Y-up, +Z-forward frame (x = the animal's left), not synthgen's world
frame, so the loader has to find the axes (expected ``model_to_world`` = :data:`TO_WORLD`).
The pickle stores ``J_regressor`` as a scipy CSC matrix and ``v_template``/``shapedirs``/``weights``
as chumpy ``Ch`` objects, and carries entries without array data (a chumpy ``Select``, a None),
like the official files.
"""

from __future__ import annotations

import contextlib
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import scipy.sparse

from synthgen.subjects.animal_poses import SMAL_JOINTS, SMAL_PARENTS
from synthgen.subjects.quadruped import joint_position

NJ, RINGS, SEGS, NBETAS = 33, 169, 23, 41
NAMES, PARENTS = SMAL_JOINTS[:NJ], SMAL_PARENTS[:NJ]
# quadruped model frame (x forward, y left, z up) -> fixture frame (X left, Y up, Z forward)
TO_FIXTURE = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
TO_WORLD = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # fixture -> world
TIPS = {"LFoot": (0.05, 0.0, -0.035), "LFootBack": (0.05, 0.0, -0.035), "Tail7": (-0.04, 0.0, -0.04),
        "Mouth": (0.13, 0.0, -0.01)}
RADIUS = {"body": 0.11, "Neck": 0.07, "Head": 0.065, "Mouth": 0.04, "Leg": 0.035, "Foot": 0.03, "Tail": 0.02}


def _radius(name: str) -> float:
    if name.startswith(("pelvis", "spine")):
        return RADIUS["body"]
    if name in ("Neck", "Head", "Mouth"):
        return RADIUS[name]
    if name.startswith("Tail"):
        return RADIUS["Tail"]
    return RADIUS["Foot"] if "Foot" in name else RADIUS["Leg"]


def _tip(name: str) -> np.ndarray:
    offset = np.array(TIPS[name.replace("R", "L", 1) if name[0] == "R" else name])
    return joint_position(name) + offset


def skeleton_walk() -> list[tuple[np.ndarray, int, bool]]:
    """Depth-first walk: (position, joint index, is a tip) from the pelvis back to it."""
    children = {j: [c for c in range(NJ) if PARENTS[c] == j] for j in range(NJ)}
    out: list[tuple[np.ndarray, int, bool]] = []

    def visit(j: int) -> None:
        out.append((joint_position(NAMES[j]), j, False))
        for c in children[j]:
            visit(c)
            out.append((joint_position(NAMES[j]), j, False))
        if not children[j]:
            out.append((_tip(NAMES[j]), j, True))
            out.append((joint_position(NAMES[j]), j, False))

    visit(0)
    return out


def _driver(a: tuple, b: tuple) -> int:
    """The joint whose bone a walk segment lies on."""
    if a[2] or b[2]:
        return a[1]
    return a[1] if PARENTS[b[1]] == a[1] else b[1]


def synthetic_smal(seed: int = 0) -> dict[str, np.ndarray]:
    """Model arrays with smal_CVPR2017.pkl's keys and shapes, in the fixture frame."""
    rng = np.random.default_rng(seed)
    walk = skeleton_walk()
    pts = np.array([p for p, _, _ in walk])
    lengths = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    extra = RINGS - (len(walk) - 2)
    share = lengths / lengths.sum() * extra
    count = np.floor(share).astype(int)
    count[np.argsort(-(share - count))[: extra - count.sum()]] += 1
    plan = []  # (segment k, fraction f)
    for k, n in enumerate(count):
        if k > 0:
            plan.append((k, 0.0))
        plan += [(k, (i + 1) / (n + 1)) for i in range(n)]
    assert len(plan) == RINGS
    drivers = [_driver(walk[k], walk[k + 1]) for k in range(len(walk) - 1)]
    centres, tangents, radii, ring_weights = [], [], [], []
    for k, f in plan:
        d = pts[k + 1] - pts[k]
        t = d / max(np.linalg.norm(d), 1e-9)
        if f == 0.0:
            p = pts[k] - pts[k - 1]
            mean = p / max(np.linalg.norm(p), 1e-9) + t
            t = mean / np.linalg.norm(mean) if np.linalg.norm(mean) > 1e-6 else t
        centres.append(pts[k] + f * d)
        tangents.append(t)
        radii.append(_radius(NAMES[drivers[k]]))
        w = np.zeros(NJ)
        if f == 0.0:
            w[drivers[k - 1]] += 0.5
            w[drivers[k]] += 0.5
        else:
            w[drivers[k]] = 1.0
        ring_weights.append(w)
    us, u = [], np.array([0.0, 0.0, 1.0])
    for t in tangents:  # parallel transport
        u = u - (u @ t) * t
        if np.linalg.norm(u) < 1e-3:
            u = np.cross(t, [1.0, 0.0, 0.0] if abs(t[0]) < 0.9 else [0.0, 1.0, 0.0])
        u = u / np.linalg.norm(u)
        us.append(u)
    theta = 2 * np.pi * np.arange(SEGS) / SEGS
    rings = [c + r * (np.cos(theta)[:, None] * u + np.sin(theta)[:, None] * np.cross(t, u))
             for c, t, u, r in zip(centres, tangents, us, radii)]
    verts = np.concatenate(rings + [pts[[0, -1]]])
    weights = np.concatenate([np.repeat(w[None], SEGS, 0) for w in ring_weights]
                             + [np.eye(NJ)[[drivers[0], drivers[-1]]]])
    regressor = np.zeros((NJ, len(verts)))
    for j in range(NJ):
        r = next(i for i, (k, f) in enumerate(plan) if f == 0.0 and walk[k][1] == j and not walk[k][2])
        regressor[j, r * SEGS:(r + 1) * SEGS] = 1.0 / SEGS
    from synthgen.subjects.quadruped import tube_faces

    shapedirs = rng.normal(0, 0.001, (len(verts), 3, NBETAS))
    shapedirs[:, :, 0] = 0.05 * verts
    shapedirs[:, :, 1] = 0.0
    shapedirs[:, 2, 1] = 0.03 * verts[:, 2]
    parents = np.array(PARENTS, dtype=np.int64)
    parents[0] = 4294967295

    def to_fixture(a: np.ndarray) -> np.ndarray:
        return a @ TO_FIXTURE.T

    return {
        "v_template": to_fixture(verts), "f": tube_faces(RINGS, SEGS).astype(np.uint32),
        "J_regressor": regressor, "weights": weights, "J": to_fixture(regressor @ verts),
        "kintree_table": np.stack([parents, np.arange(NJ)]),
        "shapedirs": np.einsum("ij,vjb->vib", TO_FIXTURE, shapedirs),
        "posedirs": rng.normal(0, 1e-4, (len(verts), 3, 9 * (NJ - 1))),
        "bs_style": np.asarray("lbs"), "bs_type": np.asarray("lrotmin"),
    }


def synthetic_clusters(seed: int = 1) -> dict[str, list[np.ndarray]]:
    """smal_CVPR2017_data.pkl's layout: 5 family means (41,) and covariances (41, 41), as lists."""
    rng = np.random.default_rng(seed)
    means = [rng.normal(0, 1.0, NBETAS) * (i + 1) / 3 for i in range(5)]
    covs = []
    for _ in range(5):
        a = rng.normal(0, 0.3, (NBETAS, NBETAS))
        covs.append(a @ a.T / NBETAS + 0.05 * np.eye(NBETAS))
    return {"cluster_means": means, "cluster_cov": covs, "toys_betas": [rng.normal(0, 1, NBETAS)] * 3}


class FakeCh:
    """Pickles like a terminal ``chumpy.ch.Ch`` (its array in ``x``)."""

    def __init__(self, x):
        self.x = x


class FakeSelect:
    """Pickles like a ``chumpy.reordering.Select``: no ``x`` of its own."""

    def __init__(self, a, idxs):
        self.a, self.idxs = a, idxs


FakeCh.__module__, FakeCh.__qualname__ = "chumpy.ch", "Ch"
FakeSelect.__module__, FakeSelect.__qualname__ = "chumpy.reordering", "Select"


@contextlib.contextmanager
def fake_chumpy():
    """Make ``chumpy.ch.Ch`` / ``chumpy.reordering.Select`` importable while pickling."""
    mods = {"chumpy": types.ModuleType("chumpy"), "chumpy.ch": types.ModuleType("chumpy.ch"),
            "chumpy.reordering": types.ModuleType("chumpy.reordering")}
    mods["chumpy.ch"].Ch, mods["chumpy.reordering"].Select = FakeCh, FakeSelect
    saved = {k: sys.modules.get(k) for k in mods}
    sys.modules.update(mods)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def write_smal_pkl(path: Path, arrays: dict[str, np.ndarray] | None = None) -> Path:
    """The model as an official-style pickle (protocol 2, chumpy objects, sparse regressor)."""
    arrays = arrays if arrays is not None else synthetic_smal()
    data = dict(arrays, J_regressor=scipy.sparse.csc_matrix(arrays["J_regressor"]),
                v_template=FakeCh(arrays["v_template"]), shapedirs=FakeCh(arrays["shapedirs"]),
                weights=FakeCh(arrays["weights"]),
                weights_prior=FakeSelect(FakeCh(arrays["weights"]), np.arange(4)), sym_verts=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    with fake_chumpy(), open(path, "wb") as handle:
        pickle.dump(data, handle, protocol=2)
    return path


def write_clusters_pkl(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(synthetic_clusters(), handle, protocol=2)
    return path
