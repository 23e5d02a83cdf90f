"""Synthetic SMPL / SMPL-H / SMPL-X model files for tests (no licensed data).

The mesh is ONE closed genus-0 tube (so F = 2V - 4 like SMPL: 84 rings x 82 segments + 2 poles =
6890 vertices, 13776 faces) that walks the SMPL skeleton depth-first at approximate SMPL T-pose
joint positions (SMPL frame: x = body's left, y = up, z = forward, metres): out along each leg and
arm and back, then up the spine to the top of the head. Limbs are therefore covered twice (the way
out and the way back overlap), which is harmless for rendering. Each ring is skinned to the joint
that drives its bone (50/50 at joints), ``J_regressor`` rows average the vertices of a ring centred
on the joint (so regressed joints sit exactly at the joint positions), shapedirs are height/girth
plus small noise, posedirs small noise.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import scipy.sparse

from synthgen.subjects.poses import SMPL_JOINTS, SMPL_PARENTS

JOINTS = {  # approximate SMPL neutral T-pose joints (left side; right mirrors x)
    "pelvis": (0.0, -0.23, 0.02), "left_hip": (0.06, -0.32, 0.01), "spine1": (0.0, -0.12, -0.01),
    "left_knee": (0.10, -0.70, 0.01), "spine2": (0.0, 0.02, 0.01), "left_ankle": (0.09, -1.10, -0.03),
    "spine3": (0.0, 0.08, 0.03), "left_foot": (0.12, -1.16, 0.09), "neck": (0.0, 0.29, -0.01),
    "left_collar": (0.08, 0.20, 0.0), "head": (0.0, 0.36, 0.04), "left_shoulder": (0.19, 0.23, -0.01),
    "left_elbow": (0.45, 0.21, -0.03), "left_wrist": (0.71, 0.22, -0.03), "left_hand": (0.79, 0.21, -0.04),
}
TIPS = {"left_toe": (0.12, -1.17, 0.16), "left_fingertip": (0.88, 0.21, -0.04),
        "head_mid": (0.0, 0.46, 0.03), "head_top": (0.0, 0.56, 0.02)}
RADIUS = {  # tube radius of the bone a joint drives (metres)
    "pelvis": 0.10, "left_hip": 0.075, "left_knee": 0.05, "left_ankle": 0.04, "left_foot": 0.03,
    "spine1": 0.12, "spine2": 0.13, "spine3": 0.12, "neck": 0.05, "head": 0.09,
    "left_collar": 0.05, "left_shoulder": 0.045, "left_elbow": 0.037, "left_wrist": 0.03,
    "left_hand": 0.025,
}
TIP_RADIUS = {"left_toe": 0.012, "left_fingertip": 0.01, "head_mid": 0.1, "head_top": 0.0}
LAYOUT = {"smpl": (84, 82, 6890), "smplh": (84, 82, 6890), "smplx": (102, 102, 10475)}


def _mirror(name: str) -> str:
    return name.replace("left_", "right_") if name.startswith("left_") else name


def _position(name: str) -> np.ndarray:
    base = name.replace("right_", "left_")
    p = np.array(JOINTS.get(base, TIPS.get(base)), dtype=float)
    if name.startswith("right_"):
        p[0] = -p[0]
    return p


def _radius(name: str) -> float:
    base = name.replace("right_", "left_")
    return RADIUS.get(base, TIP_RADIUS.get(base))


def skeleton_walk() -> list[tuple[str, str]]:
    """Depth-first walk: (node name, name of the joint driving the segment that LEAVES it)."""
    walk = [("pelvis", "pelvis")]
    for s in ("left", "right"):
        chain = [f"{s}_hip", f"{s}_knee", f"{s}_ankle", f"{s}_foot"]
        out = [(j, j) for j in chain] + [(f"{s}_toe", f"{s}_foot")]
        back = [(j, p) for j, p in zip(chain[::-1], [f"{s}_ankle", f"{s}_knee", f"{s}_hip", "pelvis"])]
        walk += out + back + [("pelvis", "pelvis")]
    walk += [("spine1", "spine1"), ("spine2", "spine2"), ("spine3", "spine3")]
    for s in ("left", "right"):
        chain = [f"{s}_collar", f"{s}_shoulder", f"{s}_elbow", f"{s}_wrist", f"{s}_hand"]
        out = [(j, j) for j in chain] + [(f"{s}_fingertip", f"{s}_hand")]
        back = list(zip(chain[::-1], [f"{s}_wrist", f"{s}_elbow", f"{s}_shoulder", f"{s}_collar", "spine3"]))
        walk += out + back + [("spine3", "spine3")]
    return walk + [("neck", "neck"), ("head", "head"), ("head_mid", "head"), ("head_top", "head")]


def _ring_plan(rings: int) -> list[tuple[int, float]]:
    """(segment k, fraction along it) of every ring: one at each inner node, the rest spread by length."""
    walk = skeleton_walk()
    pts = np.array([_position(n) for n, _ in walk])
    lengths = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    extra = rings - (len(walk) - 2)
    share = lengths / lengths.sum() * extra
    count = np.floor(share).astype(int)
    count[np.argsort(-(share - count))[: extra - count.sum()]] += 1
    plan = []
    for k, n in enumerate(count):
        if k > 0:
            plan.append((k, 0.0))
        plan += [(k, (i + 1) / (n + 1)) for i in range(n)]
    assert len(plan) == rings
    return plan


def _frames(tangents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Parallel-transported (R, 3) u, w perpendicular to each unit tangent."""
    us, ws = [], []
    u = np.array([0.0, 0.0, 1.0])
    for t in tangents:
        u = u - (u @ t) * t
        if np.linalg.norm(u) < 1e-3:
            u = np.cross(t, [1.0, 0.0, 0.0] if abs(t[0]) < 0.9 else [0.0, 1.0, 0.0])
        u = u / np.linalg.norm(u)
        us.append(u)
        ws.append(np.cross(t, u))
    return np.array(us), np.array(ws)


def tube_mesh(rings: int, segs: int):
    """Vertices (R*S+2, 3), faces (2*R*S, 3), ring centres (R, 3), ring bone pairs, ring node names."""
    walk = skeleton_walk()
    pts = np.array([_position(n) for n, _ in walk])
    rad = np.array([_radius(n) for n, _ in walk])
    centres, tangents, radii, bones, nodes = [], [], [], [], []
    for k, f in _ring_plan(rings):
        d_out = pts[k + 1] - pts[k]
        d_in = pts[k] - pts[k - 1] if k > 0 else d_out
        t = d_out / np.linalg.norm(d_out)
        if f == 0.0:
            mean = d_in / np.linalg.norm(d_in) + t
            t = mean / np.linalg.norm(mean) if np.linalg.norm(mean) > 1e-6 else t
        centres.append(pts[k] + f * d_out)
        tangents.append(t)
        radii.append((1 - f) * rad[k] + f * rad[k + 1])
        bones.append((walk[k - 1][1], walk[k][1]) if f == 0.0 else (walk[k][1], walk[k][1]))
        nodes.append(walk[k][0] if f == 0.0 else None)
    u, w = _frames(np.array(tangents))
    theta = 2 * np.pi * np.arange(segs) / segs
    ring_pts = (np.array(centres)[:, None] + np.array(radii)[:, None, None]
                * (np.cos(theta)[None, :, None] * u[:, None] + np.sin(theta)[None, :, None] * w[:, None]))
    vertices = np.concatenate([ring_pts.reshape(-1, 3), pts[[0, -1]]])
    return vertices, tube_faces(rings, segs), np.array(centres), bones, nodes


def tube_faces(rings: int, segs: int) -> np.ndarray:
    """(2*R*S, 3) faces of R rings of S vertices plus a start pole (R*S) and an end pole (R*S+1)."""
    i, j = np.meshgrid(np.arange(rings - 1), np.arange(segs), indexing="ij")
    a, b = i * segs + j, i * segs + (j + 1) % segs
    c, d = a + segs, b + segs
    side = np.concatenate([np.stack([a, b, d], -1).reshape(-1, 3), np.stack([a, d, c], -1).reshape(-1, 3)])
    j = np.arange(segs)
    last = (rings - 1) * segs
    start = np.stack([np.full(segs, rings * segs), (j + 1) % segs, j], -1)
    end = np.stack([np.full(segs, rings * segs + 1), last + j, last + (j + 1) % segs], -1)
    return np.concatenate([side, start, end]).astype(np.int64)


def joint_names(kind: str) -> list[str]:
    """Kinematic joint names of the model kind (smplx's own lists for SMPL-H/X)."""
    from smplx.joint_names import JOINT_NAMES, SMPLH_JOINT_NAMES

    return {"smpl": SMPL_JOINTS, "smplh": SMPLH_JOINT_NAMES[:52], "smplx": JOINT_NAMES[:55]}[kind]


def parents(names: list[str]) -> list[int]:
    """Parent index per joint: SMPL's for the body, fingers chain from the wrist, face from head."""
    out = list(SMPL_PARENTS[:22])
    for name in names[22:]:
        if name[-1] in "23":
            out.append(names.index(name[:-1] + str(int(name[-1]) - 1)))
        elif name[-1] == "1":
            out.append(names.index(name.split("_")[0] + "_wrist"))
        elif name in ("left_hand", "right_hand"):
            out.append(names.index(name.replace("hand", "wrist")))
        else:  # jaw, eyes
            out.append(names.index("head"))
    return out


def _joint_index(names: list[str], name: str) -> int:
    """Tube bone name -> joint index (SMPL's hand joints are middle1 in SMPL-H/X)."""
    if name not in names and name.endswith("_hand"):
        name = name.replace("hand", "middle1")
    return names.index(name)


def synthetic_model(kind: str = "smpl", num_betas: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """Model arrays with the real SMPL-family keys and shapes (SMPL: 6890 vertices, 13776 faces)."""
    rng = np.random.default_rng(seed)
    rings, segs, nverts = LAYOUT[kind]
    verts, faces, centres, bones, nodes = tube_mesh(rings, segs)
    names = joint_names(kind)
    nj = len(names)
    verts = np.concatenate([verts, np.repeat(verts[-2:-1], nverts - len(verts), 0)])  # pad: at pelvis
    weights = np.zeros((nverts, nj))
    weights[len(bones) * segs:, _joint_index(names, "pelvis")] = 1.0
    weights[len(bones) * segs + 1, :] = 0.0
    weights[len(bones) * segs + 1, _joint_index(names, "head")] = 1.0
    for r, (a, b) in enumerate(bones):
        weights[r * segs:(r + 1) * segs, _joint_index(names, a)] += 0.5
        weights[r * segs:(r + 1) * segs, _joint_index(names, b)] += 0.5
    regressor = np.zeros((nj, nverts))
    for j, name in enumerate(names):
        node = name
        if node not in nodes:  # SMPL-H/X extras: fingers sit at the hand, jaw and eyes at the head
            node = "head" if name == "jaw" or "eye" in name else name.split("_")[0] + "_hand"
        r = nodes.index(node)
        regressor[j, r * segs:(r + 1) * segs] = 1.0 / segs
    shapedirs = _shapedirs(verts, centres, segs, num_betas if kind != "smplx" else 20, rng)
    out = {
        "v_template": verts, "f": faces.astype(np.uint32), "J_regressor": regressor, "weights": weights,
        "kintree_table": np.array([[4294967295] + parents(names)[1:], list(range(nj))], dtype=np.int64),
        "shapedirs": shapedirs, "posedirs": rng.normal(0, 1e-3, (nverts, 3, 9 * (nj - 1))),
        "J": regressor @ verts, "bs_style": np.asarray("lbs"), "bs_type": np.asarray("lrotmin"),
    }
    if kind != "smpl":
        for s in "lr":
            out[f"hands_components{s}"] = np.linalg.qr(rng.normal(size=(45, 45)))[0]
            out[f"hands_mean{s}"] = rng.normal(0, 0.05, 45)
    if kind == "smplx":
        out["lmk_faces_idx"] = rng.integers(0, len(faces), 51)
        bary = rng.random((51, 3))
        out["lmk_bary_coords"] = bary / bary.sum(1, keepdims=True)
    return out


def _shapedirs(verts: np.ndarray, centres: np.ndarray, segs: int, n: int,
               rng: np.random.Generator) -> np.ndarray:
    """(V, 3, n): beta 0 = height (3 %/unit), beta 1 = girth (10 %/unit), others 2 mm noise."""
    out = rng.normal(0, 0.002, (len(verts), 3, n))
    out[:, :, 0] = 0.0
    out[:, 1, 0] = 0.03 * (verts[:, 1] - verts[:, 1].min())
    ring = np.full(len(verts), -1)
    ring[: len(centres) * segs] = np.repeat(np.arange(len(centres)), segs)
    radial = np.where(ring[:, None] >= 0, verts - centres[np.maximum(ring, 0)], 0.0)
    out[:, :, 1] = 0.1 * radial
    return out


def write_model(path: Path, kind: str = "smpl", num_betas: int = 10,
                arrays: dict | None = None, protocol: int = 2) -> Path:
    """Save synthetic model arrays as ``.npz`` or as a plain pickled dict ``.pkl`` (by suffix).

    The ``.pkl`` stores ``J_regressor`` as a scipy CSC matrix, like the official files.
    """
    arrays = arrays if arrays is not None else synthetic_model(kind, num_betas)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npz":
        np.savez(path, **arrays)
    else:
        data = dict(arrays, J_regressor=scipy.sparse.csc_matrix(arrays["J_regressor"]))
        with open(path, "wb") as handle:
            pickle.dump(data, handle, protocol=protocol)
    return path
