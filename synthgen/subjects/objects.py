"""Rigid CAD objects as subjects: the embedded procedural set or the user's meshes through trimesh.

Sources (``subject.object``):

- ``model: builtin``: :mod:`synthgen.subjects.object_shapes` (chair, diningtable, mug, car);
- ``paths``: mesh files (obj, glb, gltf, ply, stl, off) or folders. A ShapeNetCore v2 folder (one
  synset, or the root holding synsets) is read as ``<synset>/<model>/models/model_normalized.obj``
  with the class named from the synset (PASCAL3D+ names where one exists) and the model id from its
  folder; any other folder is read Objaverse-style: every mesh below it, class = its parent folder,
  model id = its file name;
- ``index_csv``: 3D-DST's layout, columns ``class,path[,azimuth,elevation,model_id]`` (header
  optional, paths relative to the CSV).

Frames and normalisation: a file's axes are turned into the world frame (Z up, front -Y, left +X)
from ``up_axis``/``front_axis`` (auto: +Y up, and -Z front for ShapeNet and other formats, +Z for
glTF/GLB); then a CSV row's ``azimuth``/``elevation`` (the PASCAL3D+ viewpoint from which that model
shows its front) is undone, so every model faces azimuth 0; then the mesh is centred, scaled to a
box diagonal of ``size`` and stood on z = 0 with its box centred on the Z axis.

Labels (PASCAL3D+ names): ``class``, ``model_id``, ``cad_index`` (1-based index of the model in its
class), and from the camera ``azimuth``, ``elevation``, ``theta``, ``distance``, ``focal``, ``px``,
``py`` (:mod:`synthgen.viewpoint`). Part ids: ``parts: single`` = one part ("object");
``submesh`` = one id per scene node (builtin: semantic parts shared by all classes; files: node
order, names in ``labels.subject.part_names``). Keypoints: the 8 corners of the normalised
object's axis-aligned box (:data:`KEYPOINT_NAMES`), visible where the object's surface is there.
"""

from __future__ import annotations

import csv
import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import trimesh

from synthgen.errors import MissingModelError, UserError
from synthgen.recipe import ObjectConfig, SubjectConfig
from synthgen.seeding import sample_rng
from synthgen.subjects import object_shapes
from synthgen.subjects.base import PosedSubject

log = logging.getLogger(__name__)

MESH_SUFFIXES = (".obj", ".glb", ".gltf", ".ply", ".stl", ".off")
MAX_PARTS = 63
SHAPENET_FILE = Path("models") / "model_normalized.obj"
# ShapeNetCore synsets -> class names (PASCAL3D+'s 12 first, then other common ones).
SHAPENET_CLASSES = {
    "02691156": "aeroplane", "02834778": "bicycle", "04530566": "boat", "02876657": "bottle",
    "02924116": "bus", "02958343": "car", "03001627": "chair", "04379243": "diningtable",
    "03790512": "motorbike", "04256520": "sofa", "04468005": "train", "03211117": "tvmonitor",
    "03797390": "mug", "02828884": "bench", "03636649": "lamp", "03642806": "laptop",
    "02818832": "bed", "02933112": "cabinet", "02808440": "bathtub", "02747177": "trash_bin",
    "02773838": "bag", "02942699": "camera", "02946921": "can", "03046257": "clock",
    "03085013": "keyboard", "03325088": "faucet", "03467517": "guitar", "03593526": "jar",
    "03624134": "knife", "03691459": "loudspeaker", "03761084": "microwave", "03928116": "piano",
    "03948459": "pistol", "03991062": "flowerpot", "04004475": "printer", "04090263": "rifle",
    "04099429": "rocket", "04225987": "skateboard", "04330267": "stove", "04401088": "telephone",
    "04460130": "tower", "04554684": "washer", "02801938": "basket", "02843684": "birdhouse",
    "02871439": "bookshelf", "02880940": "bowl", "02954340": "cap", "03207941": "dishwasher",
    "03337140": "file_cabinet", "03513137": "helmet", "03710193": "mailbox", "03759954": "microphone",
    "03938244": "pillow", "04074963": "remote",
}
KEYPOINT_NAMES = [f"bbox_{x}_{y}_{z}" for x in ("left", "right") for y in ("front", "back")
                  for z in ("bottom", "top")]
# The 12 edges of the box (corners differing in one coordinate): the object's skeleton layer.
SKELETON = [(a, b) for i, a in enumerate(KEYPOINT_NAMES) for b in KEYPOINT_NAMES[i + 1:]
            if sum(x != y for x, y in zip(a.split("_")[1:], b.split("_")[1:])) == 1]
_AXES = {"+x": (1, 0, 0), "-x": (-1, 0, 0), "+y": (0, 1, 0), "-y": (0, -1, 0), "+z": (0, 0, 1), "-z": (0, 0, -1)}


@dataclass(frozen=True)
class ObjectEntry:
    """One CAD model of the catalogue (``path`` None = builtin)."""

    cls: str
    model_id: str
    path: str | None
    kind: str  # builtin | shapenet | file
    azimuth: float = 0.0
    elevation: float = 0.0


def axes_to_world(up: str, front: str) -> np.ndarray:
    """(3, 3) rotation taking a file's ``up``/``front`` axes to world +Z / -Y (left = up x front -> +X)."""
    u, f = np.array(_AXES[up], dtype=float), np.array(_AXES[front], dtype=float)
    if abs(u @ f) > 0.5:
        raise UserError(f"subject.object: up_axis={up} and front_axis={front} must be perpendicular")
    model = np.stack([np.cross(u, f), f, u], 1)
    world = np.array([[1.0, 0, 0], [0, -1.0, 0], [0, 0, 1.0]]).T
    return world @ model.T


def alignment(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """(3, 3) rotation bringing the viewpoint (azimuth, elevation) to (0, 0): Rx(e) @ Rz(-a)."""
    a, e = np.radians(azimuth_deg), np.radians(elevation_deg)
    rz = np.array([[np.cos(-a), -np.sin(-a), 0], [np.sin(-a), np.cos(-a), 0], [0, 0, 1.0]])
    rx = np.array([[1.0, 0, 0], [0, np.cos(e), -np.sin(e)], [0, np.sin(e), np.cos(e)]])
    return rx @ rz


# --- catalogue ----------------------------------------------------------------------------------
def _scan_folder(folder: Path) -> list[ObjectEntry]:
    shapenet = sorted(folder.glob(f"*/{SHAPENET_FILE.as_posix()}")) or \
        sorted(folder.glob(f"*/*/{SHAPENET_FILE.as_posix()}"))
    if shapenet:
        out = []
        for path in shapenet:
            model_dir = path.parent.parent
            synset = model_dir.parent.name
            out.append(ObjectEntry(SHAPENET_CLASSES.get(synset, synset), model_dir.name, str(path), "shapenet"))
        return out
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in MESH_SUFFIXES and p.is_file())
    return [ObjectEntry(p.parent.name, p.stem, str(p), "file") for p in files]


def _read_csv(path: Path) -> list[ObjectEntry]:
    if not path.is_file():
        raise UserError(f"subject.object.index_csv: {path} does not exist")
    out = []
    with open(path, newline="") as handle:
        rows = [r for r in csv.reader(handle) if r and not r[0].startswith("#")]
    if rows and rows[0][0].strip().lower() == "class":
        rows = rows[1:]
    for i, row in enumerate(rows):
        if len(row) < 2:
            raise UserError(f"{path}: row {i + 1} {row}: expected class,path[,azimuth,elevation,model_id]")
        file = Path(row[1].strip())
        file = file if file.is_absolute() else path.parent / file
        try:
            azimuth = float(row[2]) if len(row) > 2 and row[2].strip() else 0.0
            elevation = float(row[3]) if len(row) > 3 and row[3].strip() else 0.0
        except ValueError:
            raise UserError(f"{path}: row {i + 1} {row}: azimuth/elevation must be numbers (degrees)") from None
        model_id = row[4].strip() if len(row) > 4 and row[4].strip() else file.stem
        kind = "shapenet" if file.name == SHAPENET_FILE.name else "file"
        out.append(ObjectEntry(row[0].strip(), model_id, str(file), kind, azimuth, elevation))
    return out


def build_catalogue(config: SubjectConfig) -> list[ObjectEntry]:
    """Every model the recipe names, sorted by (class, model_id), filtered by ``object.classes``."""
    obj = config.object
    entries: list[ObjectEntry] = []
    if config.model == "builtin":
        entries = [ObjectEntry(cls, mid, None, "builtin") for cls, models in object_shapes.BUILTIN.items()
                   for mid, _ in models]
    else:
        for item in obj.paths:
            path = Path(item).expanduser()
            if path.is_dir():
                found = _scan_folder(path)
                if not found:
                    raise UserError(f"subject.object.paths: {path} holds no meshes ({', '.join(MESH_SUFFIXES)}) "
                                    f"and no ShapeNet */models/model_normalized.obj")
                entries += found
            elif path.is_file() and path.suffix.lower() in MESH_SUFFIXES:
                kind = "shapenet" if path.name == SHAPENET_FILE.name else "file"
                model_dir = path.parent.parent if kind == "shapenet" else path.parent
                cls = SHAPENET_CLASSES.get(model_dir.parent.name, model_dir.parent.name) if kind == "shapenet" \
                    else path.parent.name
                entries.append(ObjectEntry(cls, model_dir.name if kind == "shapenet" else path.stem,
                                           str(path), kind))
            elif not path.exists():
                raise MissingModelError(f"subject.object.paths: {str(path)!r} does not exist; give mesh files "
                                        f"or ShapeNet/Objaverse folders, or use subject.model=builtin")
            else:
                raise UserError(f"subject.object.paths: {item!r} is neither a folder nor a mesh file "
                                f"({', '.join(MESH_SUFFIXES)})")
        if obj.index_csv:
            entries += _read_csv(Path(obj.index_csv).expanduser())
    if obj.classes:
        known = sorted({e.cls for e in entries})
        unknown = sorted(set(obj.classes) - set(known))
        if unknown:
            raise UserError(f"subject.object.classes: {unknown} not found; the catalogue has {known}")
        entries = [e for e in entries if e.cls in obj.classes]
    return sorted(set(entries), key=lambda e: (e.cls, e.model_id, e.path or ""))


# --- meshes -------------------------------------------------------------------------------------
@dataclass
class NormalisedMesh:
    vertices: np.ndarray    # (V, 3) float32 world, on the ground
    faces: np.ndarray       # (F, 3) int32
    submesh: np.ndarray     # (F,) int, index into names
    names: list[str]        # submesh names
    scale: float            # file units -> metres


def _file_axes(entry: ObjectEntry, obj: ObjectConfig) -> tuple[str, str]:
    up = "+y" if obj.up_axis == "auto" else obj.up_axis
    if obj.front_axis != "auto":
        return up, obj.front_axis
    gltf = entry.path is not None and Path(entry.path).suffix.lower() in (".glb", ".gltf")
    return up, "+z" if gltf else "-z"


def _load_parts(entry: ObjectEntry) -> list[tuple[str, trimesh.Trimesh]]:
    if entry.path is None:
        build = dict(object_shapes.BUILTIN[entry.cls])[entry.model_id]
        return build()
    try:
        loaded = trimesh.load(entry.path, process=False, skip_materials=True)
    except Exception as exc:  # trimesh raises many types for unreadable files
        raise UserError(f"cannot read mesh {entry.path}: {type(exc).__name__}: {exc}") from None
    if isinstance(loaded, trimesh.Trimesh):
        return [(Path(entry.path).stem, loaded)]
    if not isinstance(loaded, trimesh.Scene):
        raise UserError(f"{entry.path}: not a triangle mesh (trimesh gave a {type(loaded).__name__})")
    parts = []
    for node in sorted(loaded.graph.nodes_geometry):
        transform, geometry = loaded.graph[node]
        mesh = loaded.geometry[geometry]
        if isinstance(mesh, trimesh.Trimesh) and len(mesh.faces):
            parts.append((str(node), mesh.copy().apply_transform(transform)))
    if not parts:
        raise UserError(f"{entry.path}: the file holds no triangles")
    return parts


def normalise(entry: ObjectEntry, obj: ObjectConfig) -> NormalisedMesh:
    """World-frame, unit-normalised mesh of one catalogue entry (see the module docstring)."""
    parts = _load_parts(entry)
    rotation = np.eye(3) if entry.kind == "builtin" else axes_to_world(*_file_axes(entry, obj))
    rotation = alignment(entry.azimuth, entry.elevation) @ rotation
    vertices, faces, submesh, offset = [], [], [], 0
    for k, (_, mesh) in enumerate(parts):
        vertices.append(np.asarray(mesh.vertices, dtype=np.float64) @ rotation.T)
        faces.append(np.asarray(mesh.faces, dtype=np.int64) + offset)
        submesh.append(np.full(len(mesh.faces), k))
        offset += len(mesh.vertices)
    v = np.concatenate(vertices)
    lo, hi = v.min(0), v.max(0)
    diagonal = float(np.linalg.norm(hi - lo))
    if not np.isfinite(diagonal) or diagonal <= 0:
        raise UserError(f"{entry.path or entry.model_id}: degenerate mesh (box diagonal {diagonal})")
    scale = obj.size / diagonal
    v = (v - (lo + hi) / 2.0) * scale
    v[:, 2] -= v[:, 2].min()
    return NormalisedMesh(v.astype(np.float32), np.concatenate(faces).astype(np.int32),
                          np.concatenate(submesh), [n for n, _ in parts], scale)


def object_part_names(config: SubjectConfig) -> list[str]:
    """Part names of the object model a recipe names (index = part id in the parts layer)."""
    if config.object.parts == "single":
        return ["background", "object"]
    if config.model == "builtin":
        return object_shapes.PART_NAMES
    return ["background"] + [f"part_{k}" for k in range(1, MAX_PARTS + 1)]


@dataclass
class MeshSubject(PosedSubject):
    """A posed subject that carries its own mesh (objects differ per sample).

    faces: (F, 3) int32; face_parts: (F,) uint8 index into the model's ``part_names``.
    """

    faces: np.ndarray | None = None
    face_parts: np.ndarray | None = None


class ObjectModel:
    """Rigid objects: a class and model per sample, unit-normalised, standing at the origin."""

    keypoint_names = KEYPOINT_NAMES
    skeleton_edges = SKELETON

    def __init__(self, config: SubjectConfig):
        self.config, self.object = config, config.object
        self.name = config.model
        self.catalogue = build_catalogue(config)
        if not self.catalogue:
            raise UserError("subject.object: no models found; check subject.object.paths / index_csv / classes")
        self.classes = sorted({e.cls for e in self.catalogue})
        self.by_class = {c: [i for i, e in enumerate(self.catalogue) if e.cls == c] for c in self.classes}
        weights = self.object.classes or {c: 1.0 for c in self.classes}
        p = np.array([weights[c] for c in self.classes], dtype=float)
        self.class_p = p / p.sum()
        self.part_names = object_part_names(config)
        every = tuple(range(1, len(self.part_names)))
        self.keypoint_parts = [every] * len(KEYPOINT_NAMES)
        self._mesh = functools.lru_cache(maxsize=64)(self._normalised)
        log.info("objects: %d models in %d classes %s", len(self.catalogue), len(self.classes), self.classes)

    @property
    def faces(self) -> np.ndarray:
        raise AttributeError("object subjects carry their own faces: read subject.faces (MeshSubject); "
                             "the pipeline must render sample['subject'].faces when present")

    @property
    def face_parts(self) -> np.ndarray:
        raise AttributeError("object subjects carry their own face parts: read subject.face_parts")

    def _normalised(self, index: int) -> NormalisedMesh:
        return normalise(self.catalogue[index], self.object)

    # --- draws -------------------------------------------------------------------------------
    def draw(self, recipe_seed: int, index: int) -> dict[str, Any]:
        """Class and catalogue model of sample ``index`` (the "shape" stream)."""
        rng = sample_rng(recipe_seed, index, "shape")
        cls = self.classes[int(rng.choice(len(self.classes), p=self.class_p))]
        members = self.by_class[cls]
        return {"class": cls, "entry": members[int(rng.integers(len(members)))]}

    # --- posing ------------------------------------------------------------------------------
    def pose(self, draws: list[dict[str, Any]]) -> list[MeshSubject]:
        """Each drawn model as a world-frame subject (no batch arithmetic: split-independent)."""
        return [self._subject(d) for d in draws]

    def _face_parts(self, mesh: NormalisedMesh) -> tuple[np.ndarray, list[str]]:
        if self.object.parts == "single":
            return np.ones(len(mesh.faces), dtype=np.uint8), ["background", "object"]
        if self.name == "builtin":
            names = [n.rsplit("_", 1)[0] if n.rsplit("_", 1)[-1].isdigit() else n for n in mesh.names]
            ids = np.array([self.part_names.index(n) for n in names])
            return ids[mesh.submesh].astype(np.uint8), self.part_names
        ids = np.minimum(mesh.submesh + 1, MAX_PARTS).astype(np.uint8)
        return ids, ["background"] + mesh.names[:MAX_PARTS]

    def _subject(self, draw: dict[str, Any]) -> MeshSubject:
        entry = self.catalogue[draw["entry"]]
        mesh = self._mesh(draw["entry"])
        face_parts, part_names = self._face_parts(mesh)
        lo, hi = mesh.vertices.min(0), mesh.vertices.max(0)
        corners = np.array([[hi[0] if x == "left" else lo[0], lo[1] if y == "front" else hi[1],
                             lo[2] if z == "bottom" else hi[2]]
                            for x in ("left", "right") for y in ("front", "back") for z in ("bottom", "top")],
                           dtype=np.float32)
        cad_index = self.by_class[entry.cls].index(draw["entry"]) + 1
        params = {"class": entry.cls, "model_id": entry.model_id, "cad_index": cad_index,
                  "source": entry.path or "builtin", "size": self.object.size, "scale": float(mesh.scale),
                  "align_azimuth": entry.azimuth, "align_elevation": entry.elevation,
                  "part_names": part_names}
        return MeshSubject(vertices=mesh.vertices.copy(), keypoints_3d=corners, params=params,
                           faces=mesh.faces, face_parts=face_parts)

    def mesh(self, subject: PosedSubject) -> tuple[np.ndarray, np.ndarray]:
        return subject.faces, subject.face_parts

    def camera_labels(self, subject: PosedSubject, camera, keypoints_2d: np.ndarray,
                      keypoints_3d: np.ndarray) -> dict[str, Any]:
        from synthgen.subjects.labels import object_camera_labels

        return object_camera_labels(subject, camera)
