"""Procedural worlds the subjects stand in: a ground plane, a room or a yard.

One module serves both factories: single images and crowds (:mod:`synthgen.images`) and
body-worn camera sequences (:mod:`synthgen.sequences`). It sits between the cameras and the
render stage: a scene is drawn around the subjects' ground positions (and, for images, the
camera's), then rasterised in the same pass as the subjects.

A :class:`SceneMesh` is one triangle soup in the world frame (metres, Z up, floor z = 0) with
per-face part ids (``SCENE_PART_NAMES``, numbered after the subject's parts) and per-face instance
ids (0 = nothing, 1 = :data:`BODY_INSTANCE` in a sequence, 2+ = scene objects, named in
``instance_names``). The caller concatenates the camera-frame subject and scene meshes (the scene
near-clipped, :func:`clip_near`) and the layers' triangle ids tell subjects
from scene.

Every flat face has its own vertices (no sharing across planes) so the rasteriser's smooth
vertex normals are the faces' normals; every face is drawn double-sided (the camera may stand
inside a room). Objects keep ``clearance_m`` from the subjects' path (and the camera).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np


__all__ = ["BODY_INSTANCE", "NEAR_CLIP", "SCENE_PART_NAMES", "SceneMesh", "WorldParams", "build_scene",
           "clip_near", "clip_plane", "clip_to_view", "ground_contact", "scene_ambient", "scene_record",
           "shadow_casters", "world_light"]

SCENE_PART_NAMES = ["ground", "wall", "ceiling", "furniture"]
BODY_INSTANCE = 1
NEAR_CLIP = 0.02  # metres: scene triangles are clipped here (the rasterisers cull at 0.01 m)
GROUND_HALF_M = 5000.0  # half side of an image's ground plane: its far edge lies within ~0.1 deg of the horizon


@dataclass(frozen=True)
class WorldParams:
    """What :func:`build_scene` reads from a recipe (the fields of the recipe's ``SequenceSceneConfig``).

    kinds: kind -> relative weight; room_size_m, room_height_m, tile_m: (low, high) ranges;
    objects: (min, max) count; clearance_m: objects' distance from the path, metres."""

    kinds: dict[str, float]
    room_size_m: tuple[float, float] = (6.0, 11.0)
    room_height_m: tuple[float, float] = (2.5, 3.2)
    objects: tuple[int, int] = (4, 9)
    clearance_m: float = 0.7
    tile_m: tuple[float, float] = (0.4, 1.0)


@dataclass
class SceneMesh:
    """vertices (V, 3) float64 world; faces (F, 3) int64; face_part (F,) uint8 index into
    ``part_names`` (the body's parts first); face_instance (F,) uint8; instance_albedo (I, 3)
    float32 in [0, 1] per instance id; checker: instance id -> tile size (m) of a floor pattern."""

    kind: str
    vertices: np.ndarray
    faces: np.ndarray
    face_part: np.ndarray
    face_instance: np.ndarray
    instance_names: list[str]
    instance_albedo: np.ndarray
    checker: dict[int, float] = field(default_factory=dict)
    sky: tuple[list[float], list[float]] | None = None  # (horizon, zenith) RGB, or None
    description: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def empty(kind: str = "none") -> SceneMesh:
        return SceneMesh(kind, np.zeros((0, 3)), np.zeros((0, 3), np.int64), np.zeros(0, np.uint8),
                         np.zeros(0, np.uint8), ["none", "body"], np.zeros((2, 3), np.float32),
                         sky=([0.75, 0.8, 0.85], [0.45, 0.6, 0.85]), description={"kind": kind})


# --- geometry ------------------------------------------------------------------------------------
def _quad(corner: np.ndarray, u: np.ndarray, v: np.ndarray, cell: float = 1e9) -> tuple[np.ndarray, np.ndarray]:
    """A planar rectangle ``corner + a u + b v`` (a, b in [0, 1]) split into cells <= ``cell`` m."""
    nu = max(1, int(np.ceil(np.linalg.norm(u) / cell)))
    nv = max(1, int(np.ceil(np.linalg.norm(v) / cell)))
    a, b = np.meshgrid(np.linspace(0, 1, nu + 1), np.linspace(0, 1, nv + 1), indexing="ij")
    verts = corner + a.reshape(-1, 1) * u + b.reshape(-1, 1) * v
    idx = np.arange((nu + 1) * (nv + 1)).reshape(nu + 1, nv + 1)
    q0, q1, q2, q3 = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
    faces = np.concatenate([np.stack([q0, q1, q2], 1), np.stack([q0, q2, q3], 1)])
    return verts, faces


def _box(cx: float, cy: float, z0: float, sx: float, sy: float, sz: float, yaw: float) -> tuple[np.ndarray, np.ndarray]:
    """An oriented box standing on z0: centre (cx, cy), sizes (sx, sy, sz), turned by yaw (rad).
    Every side is wound outward ((v1 - v0) x (v2 - v0) points out): a shadow map may cull it."""
    c, s = np.cos(yaw), np.sin(yaw)
    ex, ey, ez = np.array([c, s, 0.0]) * sx, np.array([-s, c, 0.0]) * sy, np.array([0.0, 0.0, sz])
    o = np.array([cx, cy, z0]) - ex / 2 - ey / 2
    # each side as one cell of _quad(corner, u, v), which faces u x v, in one array operation
    corner = np.stack([o, o + ez, o, o + ey, o, o + ex])[:, None]  # (6, 1, 3)
    u = np.stack([ey, ex, ex, ez, ez, ey])[:, None]
    v = np.stack([ex, ey, ez, ex, ey, ez])[:, None]
    verts = corner + _CELL_A * u + _CELL_B * v  # (6, 4, 3)
    return verts.reshape(-1, 3), (_CELL_FACES[None] + 4 * np.arange(6)[:, None, None]).reshape(-1, 3)


# one _quad cell: its corners' (a, b) and its two faces
_CELL_A = np.array([0.0, 0.0, 1.0, 1.0])[None, :, None]
_CELL_B = np.array([0.0, 1.0, 0.0, 1.0])[None, :, None]
_CELL_FACES = np.array([[0, 2, 3], [0, 3, 1]])


class _Builder:
    def __init__(self, part_offset: int):
        self.part_offset = part_offset
        self.verts, self.faces, self.parts, self.instances = [], [], [], []
        self.names, self.albedo = ["none", "body"], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
        self.count = 0
        self.footprints: list[tuple[float, float, float]] = []  # (x, y, radius) of placed objects
        self.checker: dict[int, float] = {}

    def instance(self, name: str, albedo: np.ndarray) -> int:
        if len(self.names) >= 255:
            raise ValueError("a scene holds at most 253 objects")
        self.names.append(name)
        self.albedo.append(np.asarray(albedo, dtype=float).tolist())
        return len(self.names) - 1

    def add(self, mesh: tuple[np.ndarray, np.ndarray], part: str, instance: int) -> None:
        verts, faces = mesh
        self.faces.append(faces + self.count)
        self.verts.append(verts)
        self.count += len(verts)
        self.parts.append(np.full(len(faces), self.part_offset + SCENE_PART_NAMES.index(part), np.uint8))
        self.instances.append(np.full(len(faces), instance, np.uint8))

    def mesh(self, kind: str, **kwargs) -> SceneMesh:
        if not self.faces:
            out = SceneMesh.empty(kind)
            out.sky, out.description = kwargs.get("sky", out.sky), kwargs.get("description", out.description)
            return out
        return SceneMesh(kind, np.concatenate(self.verts), np.concatenate(self.faces).astype(np.int64),
                         np.concatenate(self.parts), np.concatenate(self.instances), list(self.names),
                         np.asarray(self.albedo, dtype=np.float32), **kwargs)


def _colour(rng: np.random.Generator, hue: tuple[float, float] = (0, 180), sat: tuple[float, float] = (0.05, 0.4),
            val: tuple[float, float] = (0.45, 0.9)) -> np.ndarray:
    hsv = np.array([[[rng.uniform(*hue), rng.uniform(*sat) * 255, rng.uniform(*val) * 255]]], dtype=np.float32)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float64) / 255.0


# furniture-like blocks: name -> list of (dx, dy, z0, sx, sy, sz) boxes in the object's frame,
# given its size draw (w, d, h) in metres
def _furniture(kind: str, w: float, d: float, h: float) -> list[tuple[float, ...]]:
    leg = 0.05
    if kind == "table":
        top = [(0.0, 0.0, h - 0.04, w, d, 0.04)]
        return top + [(sx * (w / 2 - leg), sy * (d / 2 - leg), 0.0, leg, leg, h - 0.04)
                      for sx in (-1, 1) for sy in (-1, 1)]
    if kind == "chair":
        seat = 0.45
        legs = [(sx * (w / 2 - leg), sy * (d / 2 - leg), 0.0, leg, leg, seat - 0.04)
                for sx in (-1, 1) for sy in (-1, 1)]
        return legs + [(0.0, 0.0, seat - 0.04, w, d, 0.04), (0.0, d / 2 - 0.03, seat, w, 0.05, 0.45)]
    if kind == "shelf":
        boards = [(0.0, 0.0, z, w, d, 0.03) for z in np.linspace(0.0, h - 0.03, 5)]
        return boards + [(sx * (w / 2 - 0.015), 0.0, 0.0, 0.03, d, h) for sx in (-1, 1)] + [(0.0, d / 2 - 0.01, 0.0, w, 0.02, h)]
    if kind == "sofa":
        return [(0.0, 0.0, 0.0, w, d, 0.42), (0.0, d / 2 - 0.1, 0.42, w, 0.2, 0.4),
                (-w / 2 + 0.1, 0.0, 0.42, 0.2, d, 0.22), (w / 2 - 0.1, 0.0, 0.42, 0.2, d, 0.22)]
    return [(0.0, 0.0, 0.0, w, d, h)]  # crate, cabinet, pillar, planter, bench block


_ROOM_OBJECTS = {"table": ((0.8, 1.6), (0.6, 0.9), (0.7, 0.78)), "chair": ((0.42, 0.5), (0.42, 0.5), (0.9, 0.9)),
                 "shelf": ((0.6, 1.2), (0.3, 0.4), (1.5, 2.0)), "sofa": ((1.6, 2.2), (0.8, 0.95), (0.82, 0.82)),
                 "crate": ((0.3, 0.7), (0.3, 0.7), (0.3, 0.7)), "cabinet": ((0.5, 1.0), (0.4, 0.6), (0.8, 1.2))}
_YARD_OBJECTS = {"crate": ((0.4, 1.0), (0.4, 1.0), (0.4, 1.0)), "pillar": ((0.3, 0.6), (0.3, 0.6), (1.5, 3.0)),
                 "bench": ((1.2, 2.0), (0.4, 0.5), (0.45, 0.5)), "planter": ((0.6, 1.4), (0.6, 1.4), (0.4, 0.8)),
                 "table": ((0.8, 1.6), (0.6, 0.9), (0.7, 0.78))}


def _path_distance(path: np.ndarray, xy: np.ndarray) -> float:
    return float(np.min(np.linalg.norm(path - xy, axis=1))) if len(path) else np.inf


def _place(b: _Builder, rng, kind: str, spec, path: np.ndarray, lo: np.ndarray, hi: np.ndarray,
           clearance: float, walls: list | None) -> bool:
    (w0, w1), (d0, d1), (h0, h1) = spec
    w, d, h = rng.uniform(w0, w1), rng.uniform(d0, d1), rng.uniform(h0, h1)
    radius = 0.5 * np.hypot(w, d)
    for _ in range(40):
        if walls and kind in ("shelf", "sofa", "cabinet") and rng.random() < 0.8:
            side = int(rng.integers(4))  # back against a wall, facing the room
            along = rng.uniform(0.1, 0.9)
            xy = {0: [lo[0] + along * (hi[0] - lo[0]), lo[1] + d / 2 + 0.02],
                  1: [lo[0] + along * (hi[0] - lo[0]), hi[1] - d / 2 - 0.02],
                  2: [lo[0] + d / 2 + 0.02, lo[1] + along * (hi[1] - lo[1])],
                  3: [hi[0] - d / 2 - 0.02, lo[1] + along * (hi[1] - lo[1])]}[side]
            yaw = {0: np.pi, 1: 0.0, 2: np.pi / 2, 3: -np.pi / 2}[side]  # back (+y of the object) to the wall
            xy = np.array(xy)
        else:
            xy = rng.uniform(lo + radius, hi - radius) if np.all(hi - lo > 2 * radius) else (lo + hi) / 2
            yaw = rng.uniform(-np.pi, np.pi)
        if _path_distance(path, xy) < clearance + radius:
            continue
        if any(np.hypot(xy[0] - x, xy[1] - y) < r + radius + 0.1 for x, y, r in b.footprints):
            continue
        _add_object(b, rng, kind, xy, yaw, w, d, h)
        b.footprints.append((float(xy[0]), float(xy[1]), float(radius)))
        return True
    return False


def _add_object(b: _Builder, rng, kind: str, xy, yaw: float, w: float, d: float, h: float,
                albedo: np.ndarray | None = None) -> None:
    albedo = _colour(rng, sat=(0.1, 0.7), val=(0.25, 0.85)) if albedo is None else albedo
    inst = b.instance(f"{kind}_{len(b.names) - 2}", albedo)
    c, s = np.cos(yaw), np.sin(yaw)
    for dx, dy, z0, sx, sy, sz in _furniture(kind, w, d, h):
        b.add(_box(xy[0] + c * dx - s * dy, xy[1] + s * dx + c * dy, z0, sx, sy, sz, yaw), "furniture", inst)


def build_scene(config, rng: np.random.Generator, path_xy: np.ndarray, part_offset: int,
                props: list[dict[str, Any]] | None = None, ground_half_m: float | None = None,
                camera_height: float | None = None) -> SceneMesh:
    """A scene drawn from ``rng`` around ``path_xy`` (N, 2), the subjects' ground track.

    config: a :class:`WorldParams` (or the recipe's ``SequenceSceneConfig``, same fields).
    part_offset: number of subject part names (scene part ids follow them). props: motion props,
    e.g. ``{"kind": "seat", "centre": [x, y], "top": z, "yaw": rad, "size": [w, d]}``.
    ground_half_m: None = a ground 30 m wider than the path in 2.5 m cells (sequences); else one
    quad of that half side about the path (images: reaches the horizon). camera_height: a room
    whose ceiling is lower than this (plus 0.3 m) is left open-topped, a cut-away set.
    """
    kinds = sorted(k for k, w in config.kinds.items() if w > 0)
    p = np.array([config.kinds[k] for k in kinds], dtype=float)
    kind = kinds[int(rng.choice(len(kinds), p=p / p.sum()))]
    b = _Builder(part_offset)
    path = np.asarray(path_xy, dtype=np.float64).reshape(-1, 2)
    centre = (path.min(axis=0) + path.max(axis=0)) / 2 if len(path) else np.zeros(2)
    extent = path.max(axis=0) - path.min(axis=0) if len(path) else np.zeros(2)
    description: dict[str, Any] = {"kind": kind}
    if kind == "none":
        out = SceneMesh.empty("none")
        out.description = description
        return out
    tile = float(rng.uniform(*config.tile_m))
    floor_colour = _colour(rng, hue=(5, 30), sat=(0.15, 0.5), val=(0.35, 0.75))
    for prop in props or []:  # the motion's props first: they are needed, the rest is decoration
        if prop.get("kind") == "seat":
            w, d = prop.get("size", [0.48, 0.46])
            xy, top, yaw = np.asarray(prop["centre"], float), float(prop["top"]), float(prop.get("yaw", 0.0))
            inst = b.instance("seat", _colour(rng, sat=(0.2, 0.6), val=(0.3, 0.7)))
            b.add(_box(xy[0], xy[1], 0.0, w, d, top, yaw), "furniture", inst)
            back = np.array([-np.sin(yaw), np.cos(yaw)]) * (d / 2 - 0.03)  # behind the sitter (+y of the seat)
            b.add(_box(xy[0] + back[0], xy[1] + back[1], top, w, 0.06, 0.45, yaw), "furniture", inst)
            b.footprints.append((float(xy[0]), float(xy[1]), 0.5 * float(np.hypot(w, d))))
    if kind == "room":
        size = np.array([rng.uniform(*config.room_size_m), rng.uniform(*config.room_size_m)])
        margin = config.clearance_m + 0.8
        size = np.maximum(size, extent + 2 * margin)
        slack = np.maximum((size - extent) / 2 - margin, 0.0)  # >= 0 up to rounding
        centre = centre + rng.uniform(-slack, slack)
        lo, hi = centre - size / 2, centre + size / 2
        height = float(rng.uniform(*config.room_height_m))
        floor = b.instance("floor", floor_colour)
        b.add(_quad(np.array([lo[0], lo[1], 0.0]), np.array([size[0], 0, 0]), np.array([0, size[1], 0]), 2.0),
              "ground", floor)
        b.checker[floor] = tile
        wall_colour = _colour(rng, sat=(0.02, 0.25), val=(0.6, 0.95))
        corners = [np.array([lo[0], lo[1], 0.0]), np.array([hi[0], lo[1], 0.0]), np.array([hi[0], hi[1], 0.0]),
                   np.array([lo[0], hi[1], 0.0])]
        for i in range(4):
            a, c = corners[i], corners[(i + 1) % 4]
            inst = b.instance(f"wall_{i}", np.clip(wall_colour * rng.uniform(0.9, 1.1), 0, 1))
            b.add(_quad(a, c - a, np.array([0.0, 0.0, height]), 2.0), "wall", inst)
        ceiling = b.instance("ceiling", np.clip(wall_colour * 1.1, 0, 1))
        open_top = camera_height is not None and camera_height > height - 0.3
        if not open_top:
            b.add(_quad(np.array([lo[0], lo[1], height]), np.array([size[0], 0, 0]), np.array([0, size[1], 0]),
                        2.0), "ceiling", ceiling)
        count = int(rng.integers(config.objects[0], config.objects[1] + 1))
        names = sorted(_ROOM_OBJECTS)
        placed = [names[int(rng.integers(len(names)))] for _ in range(count)]
        placed = [k for k in placed if _place(b, rng, k, _ROOM_OBJECTS[k], path, lo, hi, config.clearance_m, [True])]
        description |= {"size_m": np.round(size, 3).tolist(), "height_m": round(height, 3),
                        "origin_m": np.round(lo, 3).tolist(), "objects": placed}
        if open_top:
            description["open_top"] = True
        sky = None
    else:  # ground, yard: a large tiled ground; yards add fences and blocks under a sky
        size = extent + 30.0 if ground_half_m is None else np.full(2, 2.0 * ground_half_m)
        lo = centre - size / 2
        floor = b.instance("ground", _colour(rng, hue=(20, 70), sat=(0.2, 0.5), val=(0.3, 0.6))
                           if kind == "yard" else floor_colour)
        b.add(_quad(np.array([lo[0], lo[1], 0.0]), np.array([size[0], 0, 0]), np.array([0, size[1], 0]),
                    2.5 if ground_half_m is None else 1e9), "ground", floor)
        b.checker[floor] = tile * (2.0 if kind == "yard" else 1.0)
        placed = []
        if kind == "yard":
            inner_lo, inner_hi = centre - extent / 2 - 6.0, centre + extent / 2 + 6.0
            fence = _colour(rng, sat=(0.05, 0.3), val=(0.4, 0.8))
            for i in range(int(rng.integers(2, 5))):  # fence/wall segments around the path
                ang = rng.uniform(-np.pi, np.pi)
                dist = rng.uniform(3.5, 8.0) + np.linalg.norm(extent) / 2
                mid = centre + dist * np.array([np.cos(ang), np.sin(ang)])
                inst = b.instance(f"fence_{i}", np.clip(fence * rng.uniform(0.85, 1.15), 0, 1))
                b.add(_box(mid[0], mid[1], 0.0, rng.uniform(3.0, 8.0), 0.12, rng.uniform(1.0, 2.2),
                           ang + np.pi / 2), "wall", inst)
            count = int(rng.integers(config.objects[0], config.objects[1] + 1))
            names = sorted(_YARD_OBJECTS)
            placed = [names[int(rng.integers(len(names)))] for _ in range(count)]
            placed = [k for k in placed if _place(b, rng, k, _YARD_OBJECTS[k], path, inner_lo, inner_hi,
                                                  config.clearance_m, None)]
        description |= {"size_m": np.round(size, 3).tolist(), "objects": placed}
        sky = (_colour(rng, hue=(95, 110), sat=(0.05, 0.2), val=(0.8, 0.95)).tolist(),
               _colour(rng, hue=(100, 115), sat=(0.3, 0.6), val=(0.7, 0.95)).tolist())
    description |= {"instances": list(b.names), "floor_tile_m": round(tile, 3)}
    return b.mesh(kind, checker=dict(b.checker), sky=sky, description=description)




# --- light ---------------------------------------------------------------------------------------
_NO_SHADOW = ("none", "body", "ground", "floor", "ceiling")  # instances that cast no shadow


def shadow_casters(scene: SceneMesh) -> np.ndarray:
    """(G,) int64 indices of the scene faces that cast shadows: objects, furniture, props and
    fences; not the ground, a room's floor, walls or ceiling (the sun lights a room's inside)."""
    casts = np.array([not (name in _NO_SHADOW or name.startswith("wall_")) for name in scene.instance_names])
    return np.flatnonzero(casts[scene.face_instance]) if len(scene.faces) else np.zeros(0, np.int64)


def scene_ambient(kind: str, ambient: float) -> float:
    """The sky ambient a scene of ``kind`` is lit with: a room's raised to 0.45-0.6 (bounce light)."""
    return 0.45 + 0.75 * (ambient - 0.25) if kind == "room" else ambient


def world_light(scene: SceneMesh, sun_world: np.ndarray, ambient: float, R: np.ndarray, t: np.ndarray,
                K: np.ndarray) -> dict[str, Any]:
    """What the shaded backends read to light and texture a scene seen by one camera: the sun
    (toward it, world and camera frame), the sky ambient, the sky colours, world up in the camera
    frame, the camera (K (3, 3); R (3, 3), t (3,): world -> camera) and the scene's instances.
    One light set for single images and sequence views (:mod:`synthgen.generate.materials`).
    Inside a room the sky ambient (0.25-0.45, :func:`synthgen.render.shadow.draw_sun`) is raised to
    0.45-0.6: light bounces off the walls, and walls facing away from the sun would look unlit."""
    R = np.asarray(R, dtype=np.float64)
    ambient = scene_ambient(scene.kind, ambient)
    return {"kind": scene.kind, "sun_cam": R @ sun_world, "sun_world": np.asarray(sun_world), "ambient": ambient,
            "sky": scene.sky, "up_cam": R[:, 2].copy(), "K": np.asarray(K), "R": R, "t": np.asarray(t),
            "instance_names": list(scene.instance_names), "instance_albedo": scene.instance_albedo}


# --- labels --------------------------------------------------------------------------------------
CONTACT_M = 0.02  # a surface point within this height of the ground touches it


def scene_record(scene: SceneMesh, R: np.ndarray, t: np.ndarray) -> dict[str, Any]:
    """The ``scene`` label of a view: kind, the ground plane in the camera frame, the room's box.

    R (3, 3), t (3,): world -> camera. The ground plane is ``normal . X + offset = 0`` for camera-
    frame points X: ``normal`` is the world up axis in the camera frame, ``offset`` the camera's
    height above the ground (metres). A room's box is given in the world frame (floor z = 0) as
    ``room_box_world: [[x0, y0, 0], [x1, y1, height]]``.
    """
    R, t = np.asarray(R, np.float64), np.asarray(t, np.float64)
    normal = R[:, 2]
    record: dict[str, Any] = {"kind": scene.kind,
                              "ground_plane_cam": {"normal": np.round(normal, 7).tolist(),
                                                   "offset": round(float(-normal @ t), 6)},
                              "instances": list(scene.instance_names[2:])}
    d = scene.description
    if scene.kind == "room":
        lo, size = np.asarray(d["origin_m"]), np.asarray(d["size_m"])
        record["room_box_world"] = [[*lo.tolist(), 0.0], [*(lo + size).round(3).tolist(), d["height_m"]]]
        record["open_top"] = bool(d.get("open_top", False))
    return record


def ground_contact(vertices_world: np.ndarray, faces: np.ndarray, face_parts: np.ndarray,
                   part_names: list[str], tolerance: float = CONTACT_M) -> dict[str, Any]:
    """Whether a subject's lowest surface points lie on the ground z = 0 within ``tolerance``.

    vertices_world (V, 3); faces (F, 3); face_parts (F,) ids into ``part_names``. Returns
    ``ground_contact`` (bool), ``lowest_point_m`` (height of the lowest vertex) and
    ``contact_parts`` (names of the parts with a vertex within ``tolerance`` of the ground).
    """
    z = np.asarray(vertices_world)[:, 2]
    lowest = float(z.min())
    near = np.abs(z) <= tolerance
    touching = near[faces].any(axis=1)
    parts = sorted({part_names[p] for p in np.unique(face_parts[touching])}) if touching.any() else []
    return {"ground_contact": bool(abs(lowest) <= tolerance), "lowest_point_m": round(lowest, 4),
            "contact_parts": parts}


# --- rendering help ------------------------------------------------------------------------------
def clip_near(vertices: np.ndarray, faces: np.ndarray, near: float = NEAR_CLIP) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clip triangles against the plane z = ``near`` of the camera frame.

    vertices: (V, 3) camera frame; faces: (F, 3). Returns (V', 3) vertices (the input ones
    first, then the new cut points), (F', 3) faces and (F',) index of each output face's source
    face. A triangle with one vertex behind becomes two, with two behind one, with three none.
    """
    return clip_plane(vertices, faces, np.array([0.0, 0.0, 1.0]), near)


def clip_plane(vertices: np.ndarray, faces: np.ndarray, normal: np.ndarray,
               offset: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the part of each triangle where ``normal . p > offset``; outputs as :func:`clip_near`
    (whose plane is normal (0, 0, 1), offset ``near``). The winding of every piece is its source's."""
    side = np.asarray(vertices, dtype=np.float64) @ np.asarray(normal, dtype=np.float64) - offset  # (V,)
    behind = side[faces] <= 0.0  # (F, 3)
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
        sa, sb, sc = (side[tri[:, i]] for i in range(3))
        ab = a + (sa / (sa - sb))[:, None] * (b - a)  # where each edge from a crosses the plane
        ac = a + (sa / (sa - sc))[:, None] * (c - a)
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


VIEW_MARGIN_PX = 8  # clip_to_view keeps this many pixels beyond each image side


def clip_to_view(vertices: np.ndarray, faces: np.ndarray, K: np.ndarray, width: int, height: int,
                 near: float = NEAR_CLIP) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clip triangles to the camera's view: the near plane and the four image sides
    (:data:`VIEW_MARGIN_PX` outside them), so no pixel of the image changes; outputs as
    :func:`clip_near`, without the vertices no face uses.

    vertices (V, 3) camera frame, faces (F, 3), K (3, 3) with last row (0, 0, 1). A ground plane
    kilometres wide, or a wall a few centimetres from the lens, projects to triangles thousands
    of pixels across, which Mesa's llvmpipe draws far more slowly than their on-screen part
    (benchmarks/README.md)."""
    k = np.asarray(K, dtype=np.float64)
    margin = float(VIEW_MARGIN_PX)
    # u = (K[0] . p) / z >= -margin  <=>  (K[0] + (0, 0, margin)) . p >= 0 for z > 0, and so on
    sides = [k[0] + [0.0, 0.0, margin], [0.0, 0.0, width - 1 + margin] - k[0],
             k[1] + [0.0, 0.0, margin], [0.0, 0.0, height - 1 + margin] - k[1]]
    verts, out, source = clip_near(vertices, faces, near)
    for normal in sides:
        verts, out, step = clip_plane(verts, out, normal, 0.0)
        source = source[step]
    used, out = np.unique(out, return_inverse=True)
    return verts[used], out.reshape(-1, 3), source


