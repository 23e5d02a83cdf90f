"""synthgen's embedded CAD objects: small procedural meshes so the object path runs by default.

Eight models in four classes (chair, diningtable, mug, car; PASCAL3D+ class names where they
exist), two models each, built from trimesh primitives in synthgen's world frame (metres, Z up,
front facing -Y, the object's left at +X, standing on z = 0). Each model is a list of named
submeshes whose names are semantic parts (:data:`PART_NAMES`). They are stand-ins for ShapeNet /
Objaverse models: right class silhouettes, no detail, no textures.

:func:`export_builtin` writes them as glTF binaries (Y up, front +Z, the glTF convention) with a
3D-DST-style ``index.csv`` beside them; ``assets/objects/`` in the repository was made with it.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import trimesh
from trimesh import creation

PART_NAMES = ["background", "seat", "back", "leg", "armrest", "top", "body", "handle", "cabin", "wheel"]
WORLD_TO_GLTF = np.array([[1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, -1.0, 0, 0], [0, 0, 0, 1.0]])

Parts = list[tuple[str, trimesh.Trimesh]]


def _box(extents, center) -> trimesh.Trimesh:
    return creation.box(extents=extents, transform=trimesh.transformations.translation_matrix(center))


def _rod(a, b, radius: float, sections: int = 16) -> trimesh.Trimesh:
    return creation.cylinder(radius=radius, segment=np.array([a, b], dtype=float), sections=sections)


def _hull(points) -> trimesh.Trimesh:
    return trimesh.Trimesh(vertices=np.asarray(points, dtype=float)).convex_hull


def chair(arms: bool) -> Parts:
    parts = [("seat", _box((0.46, 0.46, 0.05), (0, 0, 0.455)))]
    for x in (-0.2, 0.2):
        for y in (-0.2, 0.2):
            parts.append(("leg", _rod((x, y, 0.0), (x, y, 0.43), 0.018)))
    height = 0.5 if arms else 0.42
    parts.append(("back", _box((0.46, 0.045, height), (0, 0.2075, 0.48 + height / 2))))
    for x in (-0.2, 0.2):  # back posts continue the rear legs
        parts.append(("back", _rod((x, 0.21, 0.45), (x, 0.21, 0.48 + height), 0.02)))
    if arms:
        for x in (-0.25, 0.25):
            parts.append(("armrest", _box((0.06, 0.44, 0.04), (x, -0.01, 0.70))))
            parts.append(("armrest", _rod((x, -0.19, 0.48), (x, -0.19, 0.68), 0.016)))
    return parts


def table(round_top: bool) -> Parts:
    if round_top:
        return [("top", creation.cylinder(radius=0.5, height=0.035, sections=48,
                                          transform=trimesh.transformations.translation_matrix((0, 0, 0.7375)))),
                ("leg", _rod((0, 0, 0.03), (0, 0, 0.72), 0.05)),
                ("leg", creation.cylinder(radius=0.28, height=0.03, sections=48,
                                          transform=trimesh.transformations.translation_matrix((0, 0, 0.015))))]
    parts = [("top", _box((0.85, 1.4, 0.04), (0, 0, 0.735)))]
    for x in (-0.36, 0.36):
        for y in (-0.62, 0.62):
            parts.append(("leg", _box((0.055, 0.055, 0.715), (x, y, 0.3575))))
    parts.append(("top", _box((0.72, 1.24, 0.08), (0, 0, 0.675))))  # apron
    return parts


def mug(tall: bool) -> Parts:
    h, r = (0.16, 0.035) if tall else (0.10, 0.042)
    wall = 0.004
    profile = [(0.0, 0.0), (r, 0.0), (r + 0.002, h), (r - wall, h), (r - wall - 0.001, 0.008), (0.0, 0.008)]
    body = creation.revolve(np.array(profile), sections=48)
    handle_r = 0.32 * h
    torus = creation.torus(handle_r, 0.0075 if not tall else 0.006, major_sections=32, minor_sections=12)
    torus.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, (1, 0, 0)))
    torus.apply_translation((-(r + 0.003), 0.0, 0.5 * h))
    outside = (torus.vertices[torus.faces][..., 0] < -(r - 0.002)).any(axis=1)  # the ends hide in the wall
    handle = trimesh.Trimesh(torus.vertices, torus.faces[outside], process=True)
    handle.remove_unreferenced_vertices()
    return [("body", body), ("handle", handle)]


def car(suv: bool) -> Parts:
    width, length = (1.85, 4.6) if suv else (1.78, 4.5)
    bottom, belt = 0.28, (1.05 if suv else 0.9)
    hw, hl = width / 2, length / 2
    body = _hull([(sx * hw, y, z) for sx in (-1, 1) for y, z in
                  [(-hl, bottom + 0.12), (-hl + 0.15, bottom), (hl - 0.15, bottom), (hl, bottom + 0.12),
                   (-hl + 0.05, belt - 0.12), (-hl + 0.5, belt), (hl - 0.1, belt), (hl, belt - 0.1)]])
    roof = 1.75 if suv else 1.42
    cabin_front, cabin_back = (-0.75, hl - 0.15) if suv else (-0.55, hl - 0.85)
    cabin = _hull([(sx * (hw - 0.05), y, z) for sx in (-1, 1) for y, z in
                   [(cabin_front - 0.55, belt), (cabin_back + 0.2, belt),
                    (cabin_front + 0.3, roof), (cabin_back - 0.1, roof)]])
    parts = [("body", body), ("cabin", cabin)]
    wheel_r = 0.36 if suv else 0.32
    for sx in (-1, 1):
        for y in (-hl + 0.95, hl - 0.95):
            x = sx * (hw - 0.1)
            parts.append(("wheel", _rod((x - 0.12, y, wheel_r), (x + 0.12, y, wheel_r), wheel_r, 24)))
    return parts


BUILTIN: dict[str, list[tuple[str, Callable[[], Parts]]]] = {
    "car": [("car_sedan", lambda: car(False)), ("car_suv", lambda: car(True))],
    "chair": [("chair_plain", lambda: chair(False)), ("chair_armchair", lambda: chair(True))],
    "diningtable": [("table_rectangular", lambda: table(False)), ("table_round", lambda: table(True))],
    "mug": [("mug_classic", lambda: mug(False)), ("mug_tall", lambda: mug(True))],
}


def export_builtin(folder: str | Path) -> Path:
    """Write every builtin model as ``folder/<class>/<model_id>.glb`` (glTF axes: Y up, front +Z;
    one scene node per part, named ``<part>_<k>``) and ``folder/index.csv`` (3D-DST layout:
    class,path,azimuth,elevation,model_id). Returns the CSV path."""
    folder = Path(folder)
    rows = []
    for cls, models in BUILTIN.items():
        for model_id, build in models:
            scene = trimesh.Scene()
            for k, (part, mesh) in enumerate(build()):
                scene.add_geometry(mesh.copy().apply_transform(WORLD_TO_GLTF), node_name=f"{part}_{k}",
                                   geom_name=f"{part}_{k}")
            path = folder / cls / f"{model_id}.glb"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(scene.export(file_type="glb"))
            rows.append([cls, f"{cls}/{model_id}.glb", 0.0, 0.0, model_id])
    index = folder / "index.csv"
    with open(index, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "path", "azimuth", "elevation", "model_id"])
        writer.writerows(rows)
    return index
