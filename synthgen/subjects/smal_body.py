"""SMAL-family quadrupeds (and synthgen's embedded stand-in) posed through ``smplx.lbs``.

Model files. SMAL (Zuffi et al., CVPR 2017; https://smal.is.tue.mpg.de) and the SMAL+ variants used
by BARC/BITE/GenZoo come as pickled dicts with SMPL's keys: ``v_template`` (V, 3), ``f`` (F, 3),
``shapedirs`` (V, 3, B), ``posedirs`` (V, 3, 9(J-1)), ``J_regressor`` (J, V, often scipy sparse),
``weights`` (V, J), ``kintree_table`` (2, J); SMAL: V = 3889, F = 7774, J = 33, B = 41. The
companion ``smal_CVPR2017_data.pkl`` holds per-family shape clusters (``cluster_means`` (5, B),
``cluster_cov`` (5, B, B); families cat, dog, horse, cow, hippo). They cannot be redistributed.

synthgen never unpickles at load time. Convert a ``.pkl`` once, through the restricted unpickler
of :mod:`synthgen.subjects.model_files` (also used by the SMPL converter), which only rebuilds
numpy arrays, chumpy values and scipy sparse matrices and refuses anything else::

    python -m synthgen.subjects.smal_body convert smal_CVPR2017.pkl            # -> .npz beside it
    python -m synthgen.subjects.smal_body convert smal_CVPR2017_data.pkl

Every entry of the pickle is either converted or reported (the report is printed and stored in
the ``.npz`` as ``_conversion_report``). Alternatively ``subject.animal.convert_pickle: true``
lets a run do that conversion itself, once, and say so in the log.

Frames. Each model's axes are found from its rest joints (up = paws -> spine, forward = pelvis
-> head) and turned into synthgen's world frame (Z up, facing -Y, on z = 0) by ``model_to_world``
(snapped to an exact signed permutation when the model is axis-aligned). Labels keep SMAL's own
terms: ``poses`` (3J axis-angle, root first, in the model frame), ``betas``, ``transl`` (model
frame), so that ``model_to_world @ (SMAL(poses, betas) + transl)`` is the world-frame mesh.

Keypoints: Animal3D's 26 (:data:`synthgen.subjects.animal_poses.KEYPOINT_NAMES`), as
``vertex_weights @ vertices + joint_weights @ joints``. Sources, in order: ``animal.keypoints_file``;
the model file's own ``keypoint_vertex_weights``/``keypoint_joint_weights`` (the embedded
quadruped has exact ones); else joints for the limb/neck/tail keypoints and geometric surface
points for eyes, ears, nose, mouth and tail tip (extreme vertices of the head/ear/tail regions
along fixed directions: approximate, recorded as ``keypoint_source: geometric``).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from synthgen.errors import MissingModelError, UserError
from synthgen.recipe import AnimalConfig, SubjectConfig
from synthgen.seeding import sample_rng
from synthgen.subjects import animal_poses as ap
from synthgen.subjects.base import PosedSubject, ground_offset, parts_from_skinning
from synthgen.subjects.model_files import convert_pickle, read_npz_arrays

log = logging.getLogger(__name__)

BATCH = 16  # fixed forward batch: padding keeps every sample's arithmetic independent of the split
MODEL_KEYS = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table")
SMAL_FAMILIES = ["cat", "dog", "horse", "cow", "hippo"]  # smal_CVPR2017_data.pkl cluster order
DOWNLOAD_HINT = ("get SMAL from https://smal.is.tue.mpg.de (free registration, non-commercial licence), or "
                 "use subject.model=quadruped (embedded)")
WORLD_RIGHT, WORLD_FORWARD, WORLD_UP = np.array([-1.0, 0, 0]), np.array([0, -1.0, 0]), np.array([0, 0, 1.0])
PAWS = ("LFoot", "RFoot", "LFootBack", "RFootBack")


# --- model / cluster files ---------------------------------------------------------------------
def _cache_root() -> Path:
    return Path(os.environ.get("SYNTHGEN_CACHE_DIR", str(Path.home() / ".cache" / "synthgen"))) / "smal"


def _cached_npz(pkl: Path) -> Path:
    digest = hashlib.sha256(str(pkl.resolve()).encode()).hexdigest()[:10]
    return _cache_root() / f"{pkl.stem}-{digest}.npz"


def resolve_npz(path: str | Path, field_name: str, convert: bool, required: tuple[str, ...] = ()) -> Path:
    """The ``.npz`` to read for a user-given model/cluster file (converting a ``.pkl`` if allowed)."""
    path = Path(path).expanduser()
    if path.suffix == ".npz":
        if not path.is_file():
            raise MissingModelError(f"{field_name}: {path} does not exist; {DOWNLOAD_HINT}")
        return path
    if path.suffix != ".pkl":
        raise UserError(f"{field_name}: {path} is neither a .npz nor a .pkl SMAL-family file")
    for candidate in (path.with_suffix(".npz"), _cached_npz(path)):
        if candidate.is_file():
            log.info("%s: reading the converted %s", path, candidate)
            return candidate
    if not path.is_file():
        raise MissingModelError(f"{field_name}: {path} does not exist (nor a converted .npz beside it); "
                                f"{DOWNLOAD_HINT}")
    if not convert:
        raise UserError(f"{field_name}: {path} is a pickle, which synthgen does not load (unpickling can run "
                        f"code). Convert it once: python -m synthgen.subjects.smal_body convert {path} "
                        f"(or set subject.animal.convert_pickle=true to let the run do it)")
    dst = path.with_suffix(".npz")
    if not os.access(path.parent, os.W_OK):
        dst = _cached_npz(path)
    log.warning("%s: unpickling once (subject.animal.convert_pickle=true) with a restricted unpickler that "
                "only rebuilds numpy arrays, to write %s; later runs read only the .npz", path, dst)
    report = convert_pickle(path, dst, required)
    for line in report.lines():
        log.info("%s", line)
    return dst


# --- the model ----------------------------------------------------------------------------------
@dataclass
class SmalModel:
    """SMAL-format arrays as float32 tensors for ``smplx.lbs``, plus what synthgen derives."""

    name: str
    source: str
    v_template: torch.Tensor   # (V, 3)
    shapedirs: torch.Tensor    # (V, 3, B)
    posedirs: torch.Tensor     # (9(J-1), 3V)
    J_regressor: torch.Tensor  # (J, V)
    parents: torch.Tensor      # (J,) int64, parents[0] = -1
    weights: torch.Tensor      # (V, J)
    faces: np.ndarray          # (F, 3) int32
    joint_names: list[str]
    arrays: dict[str, np.ndarray]

    @property
    def num_betas(self) -> int:
        return int(self.shapedirs.shape[-1])

    def rest_joints(self) -> np.ndarray:
        """(J, 3) float64 joints of the mean shape, model frame."""
        return self.arrays["J_regressor"].astype(np.float64) @ self.arrays["v_template"].astype(np.float64)


def model_from_arrays(arrays: dict[str, np.ndarray], name: str, source: str,
                      joint_names: list[str] | None = None) -> SmalModel:
    """Validate SMAL-format arrays and wrap them (``joint_names``: override for odd skeletons)."""
    missing = [k for k in MODEL_KEYS if k not in arrays]
    if missing:
        raise UserError(f"{source}: not a SMAL-family model (missing arrays {missing}; has {sorted(arrays)})")
    v = np.asarray(arrays["v_template"], dtype=np.float64)
    nv = len(v)
    weights = np.asarray(arrays["weights"], dtype=np.float64)
    nj = weights.shape[1]
    shapes = {"shapedirs": (nv, 3), "posedirs": (nv, 3, 9 * (nj - 1)), "J_regressor": (nj, nv),
              "kintree_table": (2, nj)}
    for key, shape in shapes.items():
        if tuple(np.shape(arrays[key])[:len(shape)]) != shape:
            raise UserError(f"{source}: {key} has shape {list(np.shape(arrays[key]))}, expected "
                            f"{list(shape)}{'[...]' if key == 'shapedirs' else ''} for {nv} vertices, "
                            f"{nj} joints")
    parents = np.asarray(arrays["kintree_table"][0], dtype=np.int64).copy()
    parents[0] = -1
    names = _joint_names(arrays, parents, joint_names, source)
    posedirs = np.asarray(arrays["posedirs"], dtype=np.float64).reshape(-1, 9 * (nj - 1)).T
    return SmalModel(
        name=name, source=source,
        v_template=torch.tensor(v, dtype=torch.float32),
        shapedirs=torch.tensor(np.asarray(arrays["shapedirs"]), dtype=torch.float32),
        posedirs=torch.tensor(posedirs, dtype=torch.float32),
        J_regressor=torch.tensor(np.asarray(arrays["J_regressor"]), dtype=torch.float32),
        parents=torch.from_numpy(parents), weights=torch.tensor(weights, dtype=torch.float32),
        faces=np.asarray(arrays["f"], dtype=np.int64).astype(np.int32), joint_names=names,
        arrays=arrays)


def _joint_names(arrays: dict[str, np.ndarray], parents: np.ndarray, override: list[str] | None,
                 source: str) -> list[str]:
    nj = len(parents)
    if override is not None:
        names = list(override)
        if len(names) != nj:
            raise UserError(f"subject.animal.joint_names has {len(names)} names but {source} has {nj} joints")
    elif "joint_names" in arrays:
        names = [str(n) for n in arrays["joint_names"]]
    elif nj in (33, 35) and list(parents[1:]) == ap.SMAL_PARENTS[1:nj]:
        names = ap.SMAL_JOINTS[:nj]
    else:
        raise UserError(f"{source}: {nj} joints with parents {parents.tolist()} is not SMAL's 33/35-joint "
                        f"skeleton; give subject.animal.joint_names (SMAL names, e.g. {ap.SMAL_JOINTS[:4]}...)")
    needed = [n for n in ap.SMAL_JOINTS[:ap.NUM_SMAL_JOINTS] if n not in names]
    if needed:
        raise UserError(f"{source}: joint names lack SMAL joints {needed}; synthgen needs SMAL's 33 joints")
    return names


def load_model(config: SubjectConfig) -> SmalModel:
    """The embedded quadruped (model=quadruped) or the user's SMAL-family file (model=smal)."""
    if config.model == "quadruped":
        from synthgen.subjects.quadruped import quadruped_arrays

        return model_from_arrays(quadruped_arrays(), "quadruped", "embedded quadruped")
    path = resolve_npz(config.model_path, "subject.model_path", config.animal.convert_pickle, MODEL_KEYS)
    return model_from_arrays(read_npz_arrays(path), "smal", str(path), config.animal.joint_names)


def model_axes(model: SmalModel) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(right, forward, up) unit axes of the animal in its model frame, and model_to_world (3, 3)."""
    J = model.rest_joints()
    idx = {n: i for i, n in enumerate(model.joint_names)}
    paws = J[[idx[p] for p in PAWS]].mean(0)
    back = J[[idx["pelvis"], idx["spine3"]]].mean(0)
    up = back - paws
    up /= np.linalg.norm(up)
    forward = J[idx["Head"]] - J[idx["pelvis"]]
    forward -= (forward @ up) * up
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    to_world = np.stack([WORLD_RIGHT, WORLD_FORWARD, WORLD_UP], 1) @ np.stack([right, forward, up], 1).T
    snapped = np.round(to_world)
    if np.abs(to_world - snapped).max() < 0.05 and np.allclose(snapped @ snapped.T, np.eye(3)):
        to_world = snapped + 0.0  # no negative zeros
        right, forward, up = snapped.T @ WORLD_RIGHT, snapped.T @ WORLD_FORWARD, snapped.T @ WORLD_UP
    return right, forward, up, to_world


# --- keypoints ----------------------------------------------------------------------------------
def geometric_keypoints(model: SmalModel, to_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(26, V) vertex and (26, J) joint weights: joints where Animal3D's keypoint is a joint,
    else the extreme rest vertex of the head/ear/tail region along a fixed direction (approximate)."""
    V = model.arrays["v_template"].astype(np.float64) @ to_world.T  # world axes, rest pose
    J = model.rest_joints() @ to_world.T
    idx = {n: i for i, n in enumerate(model.joint_names)}
    dominant = np.asarray(model.joint_names)[np.argmax(model.arrays["weights"], axis=1)]
    head_region = np.isin(dominant, ["Head", "Mouth"])  # the face, without the ears
    fwd, up, left = WORLD_FORWARD, WORLD_UP, -WORLD_RIGHT
    h = J[idx["Head"]]
    ahead = (V - h) @ fwd

    def extreme(mask: np.ndarray, direction: np.ndarray) -> int:
        if not mask.any():
            raise UserError(f"{model.source}: cannot place surface keypoints (no vertices skinned to the "
                            f"head/ears/tail); give subject.animal.keypoints_file")
        ids = np.flatnonzero(mask)
        return int(ids[np.argmax(V[ids] @ direction)])

    nose = extreme(head_region, fwd + 0.15 * up)
    reach = ahead / max(ahead[nose], 1e-9)  # 0 at the head joint, 1 at the nose tip
    front = head_region & (reach >= 0.5)
    eyes = head_region & (reach >= 0.15) & (reach <= 0.5)
    cheeks = head_region & (reach >= 0.4) & (reach <= 0.8)
    surface = {
        "nose": nose, "mouth_mid": extreme(front, fwd - 0.6 * up),
        "left_mouth": extreme(cheeks, 0.2 * fwd - 0.6 * up + 0.8 * left),
        "right_mouth": extreme(cheeks, 0.2 * fwd - 0.6 * up - 0.8 * left),
        "left_eye": extreme(eyes, 0.3 * fwd + 0.8 * up + 0.5 * left),
        "right_eye": extreme(eyes, 0.3 * fwd + 0.8 * up - 0.5 * left),
        "tail_end": extreme(np.char.startswith(dominant.astype(str), "Tail"), -fwd),
    }
    for side, sign in (("left", 1.0), ("right", -1.0)):
        ear = dominant == ("LEar" if side == "left" else "REar")
        surface[f"{side}_ear"] = extreme(ear, up) if ear.any() else \
            extreme(head_region, up + 0.5 * sign * left - 0.3 * fwd)
    wv = np.zeros((len(ap.KEYPOINT_NAMES), len(V)))
    wj = np.zeros((len(ap.KEYPOINT_NAMES), len(J)))
    for k, name in enumerate(ap.KEYPOINT_NAMES):
        if name in ap.KEYPOINT_JOINTS:
            wj[k, idx[ap.KEYPOINT_JOINTS[name]]] = 1.0
        else:
            wv[k, surface[name]] = 1.0
    return wv, wj


def keypoint_regressor(model: SmalModel, config: AnimalConfig, to_world: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, str]:
    """(26, V) vertex weights, (26, J) joint weights and where they came from."""
    nv, nj, nk = model.v_template.shape[0], len(model.joint_names), len(ap.KEYPOINT_NAMES)
    if config.keypoints_file:
        path = Path(config.keypoints_file)
        if not path.is_file():
            raise UserError(f"subject.animal.keypoints_file: {path} does not exist")
        data = read_npz_arrays(path)
        wv, wj = np.zeros((nk, nv)), np.zeros((nk, nj))
        if "vertex_ids" in data:
            ids = np.asarray(data["vertex_ids"], dtype=np.int64)
            if ids.shape != (nk,) or ids.max() >= nv:
                raise UserError(f"{path}: vertex_ids must be ({nk},) indices below {nv}, got {ids.shape}")
            wv[np.arange(nk), ids] = 1.0
        if "vertex_weights" in data:
            wv = np.asarray(data["vertex_weights"], dtype=np.float64)
        if "joint_weights" in data:
            wj = np.asarray(data["joint_weights"], dtype=np.float64)
        if wv.shape != (nk, nv) or wj.shape != (nk, nj) or not (wv.any() or wj.any()):
            raise UserError(f"{path}: expected vertex_ids ({nk},), vertex_weights ({nk}, {nv}) and/or "
                            f"joint_weights ({nk}, {nj}) for the 26 Animal3D keypoints; has {sorted(data)}")
        return wv, wj, f"file:{path.name}"
    if "keypoint_vertex_weights" in model.arrays and "keypoint_joint_weights" in model.arrays:
        return (np.asarray(model.arrays["keypoint_vertex_weights"], dtype=np.float64),
                np.asarray(model.arrays["keypoint_joint_weights"], dtype=np.float64), "model")
    wv, wj = geometric_keypoints(model, to_world)
    return wv, wj, "geometric"


# --- shapes -------------------------------------------------------------------------------------
@dataclass
class Family:
    """A Gaussian over betas: mean (B,) and lower Cholesky factor (B, B)."""

    name: str
    mean: np.ndarray
    chol: np.ndarray
    source: str


def load_families(config: AnimalConfig, model: SmalModel, num_betas: int) -> dict[str, Family]:
    """Species families from cluster data (file or model) and recipe Gaussians (which override)."""
    data: dict[str, np.ndarray] = {}
    source = ""
    if config.cluster_file:
        path = resolve_npz(config.cluster_file, "subject.animal.cluster_file", config.convert_pickle,
                           ("cluster_means",))
        data, source = read_npz_arrays(path), path.name
    elif "cluster_means" in model.arrays:
        data, source = model.arrays, "model"
    families: dict[str, Family] = {}
    if "cluster_means" in data:
        means = np.asarray(data["cluster_means"], dtype=np.float64).reshape(len(data["cluster_means"]), -1)
        covs = np.asarray(data["cluster_cov"], dtype=np.float64) if "cluster_cov" in data else \
            np.stack([np.eye(means.shape[1])] * len(means))
        if means.shape[1] < num_betas:
            raise UserError(f"cluster data ({source}) has {means.shape[1]} betas per family; "
                            f"subject.animal.num_betas={num_betas} needs at least that many")
        names = [str(n) for n in data["cluster_names"]] if "cluster_names" in data else \
            list(config.family_names or (SMAL_FAMILIES if len(means) == 5 else
                                         [f"family_{i}" for i in range(len(means))]))
        if len(names) != len(means):
            raise UserError(f"subject.animal.family_names has {len(names)} names for {len(means)} clusters")
        for name, mean, cov in zip(names, means, covs):
            cov = cov[:num_betas, :num_betas]
            chol = np.linalg.cholesky(0.5 * (cov + cov.T) + 1e-9 * np.eye(num_betas))
            families[name] = Family(name, mean[:num_betas], chol, f"clusters:{source}")
    for name, shape in config.species_shapes.items():
        mean = np.broadcast_to(np.asarray(shape.mean, dtype=np.float64), (num_betas,)).copy() \
            if np.size(shape.mean) in (1, num_betas) else None
        sd = np.asarray(shape.sd, dtype=np.float64)
        if mean is None or np.size(sd) not in (1, num_betas):
            raise UserError(f"subject.animal.species_shapes.{name}: mean and sd need 1 or {num_betas} values")
        families[name] = Family(name, mean, np.diag(np.broadcast_to(sd, (num_betas,))), "recipe")
    if config.species:
        unknown = sorted(set(config.species) - set(families))
        if unknown and families:
            raise UserError(f"subject.animal.species: {unknown} have no shape distribution; known families: "
                            f"{sorted(families)} (add subject.animal.species_shapes for new ones)")
        for name in unknown:  # no cluster data at all: the recipe's fallback Gaussian
            families[name] = Family(name, np.full(num_betas, config.betas_mean),
                                    np.eye(num_betas) * config.betas_sd, "recipe:betas_mean/betas_sd")
        families = {n: families[n] for n in sorted(config.species)}
    if not families:
        families["animal"] = Family("animal", np.full(num_betas, config.betas_mean),
                                    np.eye(num_betas) * config.betas_sd, "recipe:betas_mean/betas_sd")
    return families


def draw_betas(rng: np.random.Generator, family: Family, bound: float, tries: int = 100
               ) -> tuple[np.ndarray, int]:
    """Betas ~ N(mean, chol chol^T) with every |beta| <= bound (redrawn; clipped after ``tries``)."""
    for attempt in range(tries):
        betas = family.mean + family.chol @ rng.standard_normal(len(family.mean))
        if np.all(np.abs(betas) <= bound):
            return betas, attempt
    return np.clip(betas, -bound, bound), tries


# --- poses --------------------------------------------------------------------------------------
class AnimalPoseBank:
    """Poses from ``.npz`` files: key ``poses`` (N, 3J') axis-angle in the model's joint order.

    The root (first 3 values) is ignored: the heading is drawn. Files with fewer joints than the
    model (33-joint SMAL poses for a 35-joint model) leave the extra joints at rest.
    """

    def __init__(self, paths: list[str], num_joints: int):
        chunks = []
        for p in paths:
            path = Path(p)
            if not path.is_file():
                raise UserError(f"subject.animal.pose_files: {str(path)!r} does not exist")
            with np.load(path, allow_pickle=False) as data:
                if "poses" not in data:
                    raise UserError(f"subject.animal.pose_files: {path} has keys {sorted(data.files)}; "
                                    "expected 'poses' (N, 3*J) axis-angle")
                raw = np.asarray(data["poses"], dtype=np.float64)
            raw = raw.reshape(len(raw), -1)
            if raw.shape[1] % 3 or raw.shape[1] // 3 < ap.NUM_SMAL_JOINTS:
                raise UserError(f"subject.animal.pose_files: {path} poses have {raw.shape[1]} values per row; "
                                f"expected 3 x {num_joints} (at least 3 x {ap.NUM_SMAL_JOINTS})")
            joints = raw.reshape(len(raw), -1, 3)[:, :num_joints]
            out = np.zeros((len(raw), num_joints, 3))
            out[:, 1:joints.shape[1]] = joints[:, 1:]
            chunks.append(out)
        self.poses = np.concatenate(chunks)

    def sample(self, rng: np.random.Generator) -> tuple[str, np.ndarray]:
        k = int(rng.integers(len(self.poses)))
        return f"file:{k}", Rotation.from_rotvec(self.poses[k]).as_matrix()


# --- the subject model --------------------------------------------------------------------------
class SmalBody:
    """Quadrupeds: species-family shapes, library/file poses, SMAL terms in the labels."""

    part_names = ap.PART_NAMES
    keypoint_names = ap.KEYPOINT_NAMES
    keypoint_parts = ap.KEYPOINT_PARTS
    skeleton_edges = ap.SKELETON  # Animal3D's limb graph

    def __init__(self, config: SubjectConfig):
        self.config = config
        self.animal = config.animal
        self.model = load_model(config)
        self.name = config.model
        self.num_betas = self.animal.num_betas or self.model.num_betas
        if self.num_betas > self.model.num_betas:
            raise UserError(f"subject.animal.num_betas={self.num_betas} but {self.model.source} has only "
                            f"{self.model.num_betas} shape directions")
        self.shapedirs = self.model.shapedirs[..., :self.num_betas].contiguous()
        self.axis_right, self.axis_forward, self.axis_up, self.to_world = model_axes(self.model)
        self.faces = self.model.faces
        self.face_parts = parts_from_skinning(self.model.weights.numpy(),
                                              ap.joint_part_ids(self.model.joint_names), self.faces)
        wv, wj, self.keypoint_source = keypoint_regressor(self.model, self.animal, self.to_world)
        self.kp_vertex = torch.tensor(wv, dtype=torch.float32)
        self.kp_joint = torch.tensor(wj, dtype=torch.float32)
        self.families = load_families(self.animal, self.model, self.num_betas)
        weights = self.animal.species or {n: 1.0 for n in self.families}
        self.species_names = sorted(weights)
        p = np.array([weights[n] for n in self.species_names], dtype=float)
        self.species_p = p / p.sum()
        self.pose_bank = AnimalPoseBank(self.animal.pose_files, len(self.model.joint_names)) \
            if self.animal.pose_files else None
        unknown = sorted(set(self.animal.library) - set(ap.BASE_POSES))
        if unknown:
            raise UserError(f"subject.animal.library: unknown poses {unknown}; known: {sorted(ap.BASE_POSES)}")
        self.version = str(np.asarray(self.model.arrays.get("model_version", "")))
        log.info("%s (%s): %d vertices, %d joints, %d betas, families %s, keypoints: %s", self.name,
                 self.model.source, self.model.v_template.shape[0], len(self.model.joint_names),
                 self.num_betas, self.species_names, self.keypoint_source)

    # --- draws -------------------------------------------------------------------------------
    def draw(self, recipe_seed: int, index: int) -> dict[str, Any]:
        """Species, betas, pose (model-frame local rotations, root = heading) of sample ``index``."""
        shape_rng = sample_rng(recipe_seed, index, "shape")
        species = self.species_names[int(shape_rng.choice(len(self.species_names), p=self.species_p))]
        betas, redraws = draw_betas(shape_rng, self.families[species], self.animal.max_abs_beta)
        pose_rng = sample_rng(recipe_seed, index, "pose")
        names = self.model.joint_names
        if self.pose_bank is not None and pose_rng.random() < self.animal.pose_file_fraction:
            pose_name, rotations = self.pose_bank.sample(pose_rng)
        else:
            pose_name, angles = ap.sample_library_angles(pose_rng, self.animal.library,
                                                         self.animal.noise_deg, names)
            rotations = ap.anatomical_to_matrices(angles, names, self.axis_right, self.axis_forward,
                                                   self.axis_up)
        yaw = float(sample_rng(recipe_seed, index, "placement").uniform(*self.animal.yaw_deg))
        heading = Rotation.from_rotvec(np.radians(yaw) * self.axis_up).as_matrix()
        rotations = np.array(rotations)
        rotations[0] = heading @ rotations[0]
        return {"species": species, "betas": betas, "shape_redraws": redraws, "pose_name": pose_name,
                "rotations": rotations, "yaw_deg": yaw}

    # --- posing ------------------------------------------------------------------------------
    def parameters(self, draw: dict[str, Any]) -> dict[str, np.ndarray]:
        """float32 SMAL inputs of one draw: betas (B,), poses (3J,) axis-angle (root first)."""
        poses = Rotation.from_matrix(np.asarray(draw["rotations"])).as_rotvec().reshape(-1)
        return {"betas": np.float32(draw["betas"]), "poses": np.float32(poses)}

    def forward(self, betas: torch.Tensor, poses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, B), (N, 3J) -> model-frame vertices (N, V, 3), joints (N, J, 3) through smplx.lbs."""
        from smplx.lbs import lbs

        m = self.model
        with torch.no_grad():
            return lbs(betas, poses, m.v_template, self.shapedirs, m.posedirs, m.J_regressor, m.parents,
                       m.weights)

    def pose(self, draws: list[dict[str, Any]]) -> list[PosedSubject]:
        """World-frame subjects on the ground, BATCH at a time (padded: split-independent)."""
        out: list[PosedSubject] = []
        for start in range(0, len(draws), BATCH):
            out.extend(self._pose_batch(draws[start:start + BATCH]))
        return out

    def _pose_batch(self, draws: list[dict[str, Any]]) -> list[PosedSubject]:
        params = [self.parameters(d) for d in draws]
        padded = params + [params[-1]] * (BATCH - len(params))
        betas = torch.from_numpy(np.stack([p["betas"] for p in padded]))
        poses = torch.from_numpy(np.stack([p["poses"] for p in padded]))
        vertices, joints = self.forward(betas, poses)
        keypoints = self.kp_vertex @ vertices + self.kp_joint @ joints
        to_world = torch.tensor(self.to_world.T, dtype=torch.float32)
        v_world, k_world = (vertices @ to_world).numpy(), (keypoints @ to_world).numpy()
        posed = []
        for b, (draw, p) in enumerate(zip(draws, params)):
            offset = ground_offset(v_world[b])
            transl = np.float32(self.to_world.T @ offset)
            arrays = {"poses": p["poses"], "betas": p["betas"], "transl": transl}
            posed.append(PosedSubject(vertices=v_world[b] + offset.astype(np.float32),
                                      keypoints_3d=k_world[b] + offset.astype(np.float32),
                                      params=self._labels(draw, arrays, joints[b, 0].numpy()), arrays=arrays))
        return posed

    def _labels(self, draw: dict[str, Any], arrays: dict[str, np.ndarray], root: np.ndarray) -> dict[str, Any]:
        """GenZoo/Animal3D names: poses, betas, transl (model frame), species."""
        body_model = {"name": self.name, "source": Path(self.model.source).name if self.name == "smal"
                      else "embedded", "version": self.version, "num_betas": self.num_betas,
                      "num_joints": len(self.model.joint_names),
                      "model_to_world": self.to_world.tolist(), "keypoint_source": self.keypoint_source}
        return {"body_model": body_model, "species": draw["species"],
                **{k: v.tolist() for k, v in arrays.items()},
                "root_joint": np.float32(root).tolist(), "pose_name": draw["pose_name"],
                "yaw_deg": float(np.float32(draw["yaw_deg"])), "shape_redraws": int(draw["shape_redraws"]),
                "has_body_pose": True, "has_betas": True}

    def mesh(self, subject: PosedSubject) -> tuple[np.ndarray, np.ndarray]:
        return self.faces, self.face_parts

    # --- labels that need the camera (see synthgen.subjects.labels) -----------------------------
    def camera_labels(self, subject: PosedSubject, camera, keypoints_2d: np.ndarray,
                      keypoints_3d: np.ndarray) -> dict[str, Any]:
        from synthgen.subjects.labels import animal_camera_labels

        return animal_camera_labels(subject, camera, keypoints_2d, keypoints_3d, self.to_world)


# --- command line -------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    """``python -m synthgen.subjects.smal_body convert SRC.pkl [DST.npz]``."""
    parser = argparse.ArgumentParser(description="Convert a SMAL-family .pkl (model or cluster data) to a "
                                     "plain .npz that synthgen reads without unpickling.")
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="pkl -> npz, reporting every entry")
    conv.add_argument("src", type=Path)
    conv.add_argument("dst", type=Path, nargs="?")
    quad = sub.add_parser("write-quadruped", help="save the embedded quadruped as a SMAL-format .npz")
    quad.add_argument("dst", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "write-quadruped":
        from synthgen.subjects.quadruped import write_quadruped

        log.info("wrote %s", write_quadruped(args.dst))
        return
    try:
        report = convert_pickle(args.src, args.dst or args.src.with_suffix(".npz"))
    except (UserError, pickle.UnpicklingError) as exc:
        raise SystemExit(f"error: {exc}") from None
    for line in report.lines():
        log.info("%s", line)


if __name__ == "__main__":
    main()
