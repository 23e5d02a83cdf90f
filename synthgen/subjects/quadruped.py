"""synthgen's embedded quadruped: a stand-in for SMAL, built by code in SMAL's own file format.

SMAL model files cannot be redistributed, so the animal path runs by default on this model. It is
NOT SMAL and has no statistical shape space learned from scans; it is an articulated, skinned,
dog-like mesh with SMAL's 35-joint skeleton (SMAL+ layout: SMAL's 33 joints plus two ears) and
hand-made linear shape directions, so that everything downstream of a SMAL file (loading,
skinning through ``smplx.lbs``, species shape sampling, joint-limit poses, keypoints, labels)
runs unchanged on it.

Construction (deterministic, no randomness, fast): the body is a set of closed, overlapping
generalised cylinders (torso, neck+head, four legs, tail, two ears) swept along polylines through
designed joint positions. Every joint sits at a node of one tube, and its ``J_regressor`` row
averages the ring of vertices at that node, so the regressed rest joints are exactly the designed
ones and follow the shape directions. Skinning weights belong to the bone leaving each node,
blended 50/50 at the nodes; ``posedirs`` are zero (no pose correctives). The ``Mouth`` joint has no
skin weights (the jaw does not open), and the joint-limit prior keeps it near rest.

Model frame: metres, x forward (the nose), y the animal's left, z up, paws on z = 0 (SMAL files
use other frames; :mod:`synthgen.subjects.smal_model` finds each model's axes from its joints).

Shape directions (betas, per unit): 0 size (+6 %), 1 leg length (+3.5 cm), 2 body length
(+6 cm), 3 girth (+10 % torso cross-section), 4 head size (+12 %), 5 neck length (+3.75 cm),
6 tail length (+12 %), 7 leg thickness (+12 %), 8 snout length (+20 % of its length), 9 ear size
(+25 %). Five species families (cat, dog, horse, cow, hippo, SMAL's families) come as Gaussians
over these, stored like SMAL's ``cluster_means`` / ``cluster_cov``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthgen.subjects.animal_poses import KEYPOINT_JOINTS, KEYPOINT_NAMES, SMAL_JOINTS, SMAL_PARENTS

MODEL_NAME = "synthgen-quadruped"
MODEL_VERSION = "1"
SHAPE_NAMES = ["size", "leg_length", "body_length", "girth", "head_size", "neck_length",
               "tail_length", "leg_thickness", "snout_length", "ear_size"]
FAMILIES = ["cat", "dog", "horse", "cow", "hippo"]
SPACING = 0.02  # metres between rings

# Designed rest joints (model frame), left side; right mirrors y.
_JOINTS = {
    "pelvis": (-0.26, 0.0, 0.50), "pelvis0": (-0.17, 0.0, 0.51), "spine": (-0.08, 0.0, 0.515),
    "spine0": (0.0, 0.0, 0.52), "spine1": (0.08, 0.0, 0.52), "spine2": (0.16, 0.0, 0.525),
    "spine3": (0.23, 0.0, 0.53),
    "LLeg1": (0.22, 0.08, 0.44), "LLeg2": (0.20, 0.085, 0.29), "LLeg3": (0.21, 0.08, 0.11),
    "LFoot": (0.22, 0.08, 0.04),
    "Neck": (0.31, 0.0, 0.60), "Head": (0.40, 0.0, 0.72), "Mouth": (0.47, 0.0, 0.70),
    "LLegBack1": (-0.25, 0.075, 0.45), "LLegBack2": (-0.18, 0.085, 0.30), "LLegBack3": (-0.29, 0.08, 0.14),
    "LFootBack": (-0.27, 0.08, 0.04),
    "Tail1": (-0.36, 0.0, 0.53), "Tail2": (-0.41, 0.0, 0.52), "Tail3": (-0.46, 0.0, 0.50),
    "Tail4": (-0.51, 0.0, 0.475), "Tail5": (-0.56, 0.0, 0.445), "Tail6": (-0.60, 0.0, 0.41),
    "Tail7": (-0.64, 0.0, 0.37),
    "LEar": (0.40, 0.05, 0.79),
}
# Surface landmarks (model frame) for the keypoints that are not joints: nearest vertex of a tube.
_LANDMARKS = {
    "left_eye": ("head", (0.47, 0.045, 0.75)), "nose": ("head", (0.62, 0.0, 0.70)),
    "mouth_mid": ("head", (0.59, 0.0, 0.665)), "left_mouth": ("head", (0.52, 0.04, 0.68)),
    "left_ear": ("left_ear", (0.385, 0.09, 0.90)), "tail_end": ("tail", (-0.72, 0.0, 0.32)),
}


def joint_position(name: str) -> np.ndarray:
    """Designed rest position of a SMAL joint of the quadruped (model frame)."""
    if name in _JOINTS:
        return np.array(_JOINTS[name], dtype=np.float64)
    left = "L" + name[1:]
    p = np.array(_JOINTS[left], dtype=np.float64)
    p[1] = -p[1]
    return p


@dataclass
class Tube:
    """A closed generalised cylinder along ``nodes`` (N, 3) with elliptical ``radii`` (N, 2).

    ``drivers[k]``: the joint whose bone moves the segment from node k to k+1; ``node_joints[k]``:
    the joint located at node k (its regressor ring), or None. Ring axes: u = hint x tangent
    (first radius), w = tangent x u (second radius).
    """

    name: str
    nodes: np.ndarray
    radii: np.ndarray
    drivers: list[str]
    node_joints: list[str | None]
    segs: int
    hint: tuple[float, float, float]


def _mirror(names: list[str | None]) -> list[str | None]:
    return [n if n is None or not n.startswith("L") else "R" + n[1:] for n in names]


def _tubes() -> list[Tube]:
    J = joint_position
    spine = ["pelvis", "pelvis0", "spine", "spine0", "spine1", "spine2", "spine3"]
    tubes = [
        Tube("body",
             np.array([(-0.40, 0.0, 0.50)] + [J(n) for n in spine] + [(0.33, 0.0, 0.53)]),
             np.array([(0.08, 0.09), (0.115, 0.13), (0.12, 0.135), (0.12, 0.14), (0.12, 0.145),
                       (0.125, 0.15), (0.13, 0.155), (0.13, 0.155), (0.09, 0.11)]),
             ["pelvis"] + spine, [None] + spine + [None], 24, (0.0, 0.0, 1.0)),
        Tube("head",
             np.array([(0.25, 0.0, 0.55), J("Neck"), J("Head"), J("Mouth"), (0.60, 0.0, 0.69)]),
             np.array([(0.085, 0.09), (0.07, 0.075), (0.07, 0.075), (0.045, 0.042), (0.028, 0.026)]),
             ["spine3", "Neck", "Head", "Head"], [None, "Neck", "Head", "Mouth", None], 20, (0.0, 0.0, 1.0)),
        Tube("tail",
             np.array([(-0.33, 0.0, 0.54)] + [J(f"Tail{i}") for i in range(1, 8)] + [(-0.68, 0.0, 0.33)]),
             np.column_stack([np.linspace(0.035, 0.012, 9)] * 2),
             ["pelvis"] + [f"Tail{i}" for i in range(1, 8)], [None] + [f"Tail{i}" for i in range(1, 8)] + [None],
             10, (0.0, 0.0, 1.0)),
    ]
    for side in "LR":
        s = 1.0 if side == "L" else -1.0
        front = [f"{side}Leg1", f"{side}Leg2", f"{side}Leg3", f"{side}Foot"]
        hind = [f"{side}LegBack1", f"{side}LegBack2", f"{side}LegBack3", f"{side}FootBack"]
        tubes.append(Tube(
            f"{'left' if side == 'L' else 'right'}_front_leg",
            np.array([(0.225, 0.08 * s, 0.50)] + [J(n) for n in front] + [(0.27, 0.08 * s, 0.025)]),
            np.array([(0.055, 0.055), (0.05, 0.05), (0.04, 0.04), (0.028, 0.028), (0.03, 0.032),
                      (0.022, 0.02)]),
            ["spine3"] + front, [None] + front + [None], 12, (1.0, 0.0, 0.0)))
        tubes.append(Tube(
            f"{'left' if side == 'L' else 'right'}_hind_leg",
            np.array([(-0.24, 0.075 * s, 0.52)] + [J(n) for n in hind] + [(-0.22, 0.08 * s, 0.025)]),
            np.array([(0.07, 0.07), (0.065, 0.07), (0.04, 0.045), (0.028, 0.028), (0.03, 0.032),
                      (0.022, 0.02)]),
            ["pelvis"] + hind, [None] + hind + [None], 12, (1.0, 0.0, 0.0)))
        ear = J(f"{side}Ear")
        tubes.append(Tube(
            f"{'left' if side == 'L' else 'right'}_ear",
            np.array([ear - (0.0, 0.005 * s, 0.03), ear, (0.385, 0.085 * s, 0.89)]),
            np.array([(0.028, 0.009), (0.026, 0.008), (0.003, 0.002)]),
            ["Head", f"{side}Ear"], [None, f"{side}Ear", None], 8, (1.0, 0.0, 0.0)))
    return tubes


@dataclass
class _Swept:
    vertices: np.ndarray      # (V, 3)
    faces: np.ndarray         # (F, 3)
    centres: np.ndarray       # (V, 3) ring centre of each vertex
    param: np.ndarray         # (V,) segment index + fraction along it (caps: clamped ends)
    weights: dict[str, np.ndarray]  # joint -> (V,) skinning weight
    node_rings: dict[str, np.ndarray]  # joint -> vertex ids of its node ring


def _sweep(tube: Tube, cap_rings: int = 3, blend: float = 0.35) -> _Swept:
    """Vertices, outward-wound faces, ring centres, parameters and skinning of one tube."""
    nodes, radii = tube.nodes, tube.radii
    rings = []  # (centre, tangent, radius pair, segment k, fraction f)
    for k in range(len(nodes) - 1):
        length = float(np.linalg.norm(nodes[k + 1] - nodes[k]))
        n = max(1, int(round(length / SPACING)))
        for i in range(n):
            f = i / n
            rings.append((nodes[k] + f * (nodes[k + 1] - nodes[k]), k, f))
    rings.append((nodes[-1], len(nodes) - 2, 1.0))

    def tangent(k: int, f: float) -> np.ndarray:
        d = nodes[k + 1] - nodes[k]
        t = d / np.linalg.norm(d)
        if f == 0.0 and k > 0:  # at an inner node: bisect the two segments
            p = nodes[k] - nodes[k - 1]
            t = t + p / np.linalg.norm(p)
        elif f == 1.0 and k + 2 < len(nodes):
            q = nodes[k + 2] - nodes[k + 1]
            t = t + q / np.linalg.norm(q)
        return t / np.linalg.norm(t)

    centres, tangents, rad, params = [], [], [], []
    for c, k, f in rings:
        centres.append(c)
        tangents.append(tangent(k, f))
        rad.append((1 - f) * radii[k] + f * radii[k + 1])
        params.append(k + f)
    # hemispherical caps: extra rings shrinking towards a pole beyond each end
    start_t, end_t = tangents[0], tangents[-1]
    start_r, end_r = np.asarray(rad[0]), np.asarray(rad[-1])
    h0, h1 = float(start_r.mean()), float(end_r.mean())
    pre = [(centres[0] - start_t * h0 * np.sin(a), start_t, start_r * np.cos(a), params[0])
           for a in np.linspace(0, np.pi / 2, cap_rings + 2)[1:-1][::-1]]
    post = [(centres[-1] + end_t * h1 * np.sin(a), end_t, end_r * np.cos(a), params[-1])
            for a in np.linspace(0, np.pi / 2, cap_rings + 2)[1:-1]]
    allr = pre + list(zip(centres, tangents, rad, params)) + post
    hint = np.asarray(tube.hint, dtype=np.float64)
    theta = 2 * np.pi * np.arange(tube.segs) / tube.segs
    verts, vcent, vparam = [], [], []
    for c, t, r, p in allr:
        u = np.cross(hint, t)
        u /= np.linalg.norm(u)
        w = np.cross(t, u)
        ring = c + r[0] * np.cos(theta)[:, None] * u + r[1] * np.sin(theta)[:, None] * w
        verts.append(ring)
        vcent.append(np.repeat(c[None], tube.segs, 0))
        vparam.append(np.full(tube.segs, p))
    R, S = len(allr), tube.segs
    poles = np.array([centres[0] - start_t * h0, centres[-1] + end_t * h1])
    vertices = np.concatenate(verts + [poles])
    centres_v = np.concatenate(vcent + [poles])
    param_v = np.concatenate(vparam + [np.array([params[0], params[-1]])])
    faces = tube_faces(R, S)

    # skinning: the bone leaving the node, blended with the neighbour bone near each node
    weights: dict[str, np.ndarray] = {}
    nseg = len(nodes) - 1
    for v, p in enumerate(param_v):
        k = min(int(np.floor(p)), nseg - 1)
        f = p - k
        mix = {tube.drivers[k]: 1.0}
        if f < blend and k > 0:
            a = 0.5 * (1.0 - f / blend)
            mix = {tube.drivers[k]: 1.0 - a}
            mix[tube.drivers[k - 1]] = mix.get(tube.drivers[k - 1], 0.0) + a
        elif f > 1.0 - blend and k + 1 < nseg:
            a = 0.5 * (1.0 - (1.0 - f) / blend)
            mix = {tube.drivers[k]: 1.0 - a}
            mix[tube.drivers[k + 1]] = mix.get(tube.drivers[k + 1], 0.0) + a
        for joint, value in mix.items():
            weights.setdefault(joint, np.zeros(len(vertices)))[v] += value
    node_rings = {}
    offset = len(pre)
    for k, joint in enumerate(tube.node_joints):
        if joint is None:
            continue
        r = offset + next(i for i, (_, kk, f) in enumerate(rings) if (kk == k and f == 0.0)
                          or (k == nseg and f == 1.0))
        node_rings[joint] = np.arange(r * S, (r + 1) * S)
    return _Swept(vertices, faces, centres_v, param_v, weights, node_rings)


def tube_faces(rings: int, segs: int) -> np.ndarray:
    """(2*R*S, 3) outward-wound faces of R rings of S vertices (ring axis order u -> w) closed by a
    start pole (vertex R*S, before ring 0) and an end pole (R*S+1, after the last ring)."""
    i, j = np.meshgrid(np.arange(rings - 1), np.arange(segs), indexing="ij")
    a, b = i * segs + j, i * segs + (j + 1) % segs
    c, d = a + segs, b + segs
    side = np.concatenate([np.stack([a, b, d], -1).reshape(-1, 3), np.stack([a, d, c], -1).reshape(-1, 3)])
    j = np.arange(segs)
    last = (rings - 1) * segs
    start = np.stack([np.full(segs, rings * segs), (j + 1) % segs, j], -1)
    end = np.stack([np.full(segs, rings * segs + 1), last + j, last + (j + 1) % segs], -1)
    return np.concatenate([side, start, end]).astype(np.int64)


def _shape_directions(parts: list[tuple[Tube, _Swept]], offsets: list[int], nverts: int) -> np.ndarray:
    """(V, 3, 10) linear shape directions (see the module docstring)."""
    out = np.zeros((nverts, 3, len(SHAPE_NAMES)))
    J = joint_position
    head, neck = J("Head"), J("Neck")
    x0, half = (J("spine3")[0] + J("pelvis")[0]) / 2, (J("spine3")[0] - J("pelvis")[0]) / 2
    for (tube, swept), start in zip(parts, offsets):
        v, c, p = swept.vertices, swept.centres, swept.param
        sl = slice(start, start + len(v))
        d = out[sl]
        d[:, :, 0] = 0.06 * v                                           # size about the ground origin
        d[:, 2, 1] = 0.035 * np.clip(v[:, 2] / 0.36, 0.0, 1.0)         # leg length: lift body, stretch legs
        leg = tube.name.endswith("_leg")
        anchor_x = np.full(len(v), tube.nodes[0][0]) if leg else v[:, 0]
        d[:, 0, 2] = 0.03 * np.clip((anchor_x - x0) / half, -1.0, 1.0)  # body length, +3 cm each end
        radial = v - c
        if tube.name == "body":
            radial_yz = radial.copy()
            radial_yz[:, 0] = 0.0
            d[:, :, 3] = 0.10 * radial_yz                                # girth
        if leg:
            d[:, 1, 3] = 0.10 * tube.nodes[0][1]                         # legs follow the wider body
            s = np.clip(p, 0.0, 1.0)                                     # thickness below the top node
            d[:, :, 7] = 0.12 * radial * s[:, None]
        if tube.name == "head":
            s_head = np.clip(p - 1.0, 0.0, 1.0)                          # 0 before Neck, 1 from Head on
            d[:, :, 4] = 0.12 * (v - head) * s_head[:, None]             # head size
            d[:, :, 5] = 0.25 * (head - neck) * s_head[:, None]          # neck length
            s_snout = np.clip(p - 2.0, 0.0, 1.0)
            d[:, 0, 8] = 0.20 * (v[:, 0] - head[0]) * s_snout            # snout length
        if tube.name.endswith("_ear"):
            d[:, :, 4] = 0.12 * (v - head)
            d[:, :, 5] = 0.25 * (head - neck)
            d[:, :, 9] = 0.25 * (v - tube.nodes[0])                      # ear size
        if tube.name == "tail":
            s = np.clip(p, 0.0, 1.0)
            d[:, :, 6] = 0.12 * (v - J("Tail1")) * s[:, None]            # tail length
    return out


def _clusters() -> tuple[np.ndarray, np.ndarray]:
    """(5, 10) means and (5, 10, 10) covariances of the species families over the shape directions."""
    #                size  leg  body girth head neck tail legth snout ear
    means = np.array([[-7.0, -1.0, 0.5, -1.0, 1.0, -1.0, 2.0, -1.5, -2.5, 1.0],   # cat
                      [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],          # dog
                      [6.0, 5.0, 1.5, 0.0, 1.0, 4.0, 1.0, 0.0, 4.0, 0.0],          # horse
                      [5.0, 1.0, 2.5, 4.0, 1.5, 0.0, 0.0, 2.0, 2.0, -1.0],         # cow
                      [4.0, -4.0, 2.0, 7.0, 4.0, -2.0, -4.0, 4.0, 2.0, -3.0]])     # hippo
    sd = np.array([[0.8, 0.6, 0.6, 0.6, 0.5, 0.6, 0.8, 0.5, 0.5, 0.6],
                   [1.5, 1.2, 1.0, 1.0, 0.8, 1.0, 1.0, 0.8, 1.2, 1.2],
                   [0.8, 0.8, 0.6, 0.6, 0.5, 0.8, 0.6, 0.5, 0.6, 0.5],
                   [0.7, 0.6, 0.6, 0.8, 0.5, 0.5, 0.6, 0.6, 0.5, 0.5],
                   [0.5, 0.5, 0.5, 0.8, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]])
    corr = np.eye(10)
    corr[0, 1] = corr[1, 0] = 0.3  # bigger animals have somewhat longer legs
    cov = np.stack([np.outer(s, s) * corr for s in sd])
    return means, cov


@functools.lru_cache(maxsize=1)
def _build() -> dict[str, np.ndarray]:
    tubes = _tubes()
    swept = [_sweep(t) for t in tubes]
    offsets = np.cumsum([0] + [len(s.vertices) for s in swept])[:-1].tolist()
    vertices = np.concatenate([s.vertices for s in swept])
    faces = np.concatenate([s.faces + o for s, o in zip(swept, offsets)])
    nv, nj = len(vertices), len(SMAL_JOINTS)
    weights = np.zeros((nv, nj))
    regressor = np.zeros((nj, nv))
    for s, o in zip(swept, offsets):
        for joint, w in s.weights.items():
            weights[o:o + len(w), SMAL_JOINTS.index(joint)] += w
        for joint, ring in s.node_rings.items():
            regressor[SMAL_JOINTS.index(joint), ring + o] = 1.0 / len(ring)
    assert np.allclose(weights.sum(1), 1.0) and np.allclose(regressor.sum(1), 1.0)

    kp_vertex = np.zeros((len(KEYPOINT_NAMES), nv))
    kp_joint = np.zeros((len(KEYPOINT_NAMES), nj))
    tube_range = {t.name: (o, o + len(s.vertices)) for t, s, o in zip(tubes, swept, offsets)}
    for k, name in enumerate(KEYPOINT_NAMES):
        if name in KEYPOINT_JOINTS:
            kp_joint[k, SMAL_JOINTS.index(KEYPOINT_JOINTS[name])] = 1.0
            continue
        left = name.replace("right_", "left_")
        tube, target = _LANDMARKS[left]
        target = np.array(target, dtype=np.float64)
        if name.startswith("right_"):
            target[1] = -target[1]
            tube = tube.replace("left_", "right_")
        lo, hi = tube_range[tube]
        kp_vertex[k, lo + int(np.argmin(np.linalg.norm(vertices[lo:hi] - target, axis=1)))] = 1.0

    means, cov = _clusters()
    parents = np.array(SMAL_PARENTS, dtype=np.int64)
    parents[0] = 4294967295
    return {
        "v_template": vertices, "f": faces.astype(np.uint32), "weights": weights,
        "J_regressor": regressor, "J": regressor @ vertices,
        "kintree_table": np.stack([parents, np.arange(nj)]),
        "shapedirs": _shape_directions(list(zip(tubes, swept)), offsets, nv),
        "posedirs": np.zeros((nv, 3, 9 * (nj - 1))),
        "joint_names": np.array(SMAL_JOINTS), "shape_names": np.array(SHAPE_NAMES),
        "cluster_means": means, "cluster_cov": cov, "cluster_names": np.array(FAMILIES),
        "keypoint_vertex_weights": kp_vertex, "keypoint_joint_weights": kp_joint,
        "keypoint_names": np.array(KEYPOINT_NAMES),
        "model_name": np.array(MODEL_NAME), "model_version": np.array(MODEL_VERSION),
    }


def quadruped_arrays() -> dict[str, np.ndarray]:
    """The embedded quadruped as SMAL-format arrays (fresh copies; built once per process)."""
    return {k: v.copy() for k, v in _build().items()}


def write_quadruped(path: str | Path) -> Path:
    """Save the embedded quadruped as a SMAL-format ``.npz`` (readable by the ``smal`` model)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **_build())
    return path
