"""Anny humans (Apache-2.0, data in the wheel): the embedded default body model.

Anny builds its model data once (~40-50 s, ~800 MB written) into a cache; later starts take
~0.3 s. synthgen puts that cache under ``$SYNTHGEN_CACHE_DIR/anny`` (default
``~/.cache/synthgen/anny``) unless ``ANNY_CACHE_DIR`` is set, and after a cold build deletes the
intermediate files Anny no longer needs (only ``build_compact_model_data_*`` is read again).
One process builds while the others wait on ``.build.lock`` in that folder, and the build happens
in a private ``.build-*`` folder whose finished files are renamed into place, so an interrupted
build never leaves a cache that looks complete.
Never build with ``topology="smpl"/"smplx"``: those download non-commercial data.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from synthgen.errors import UserError
from synthgen.recipe import SubjectConfig, draw_weighted
from synthgen.seeding import sample_rng
from synthgen.subjects.base import (BATCH, BODY_JOINTS, KEYPOINT_NAMES, PART_NAMES, PosedSubject,
                                    ground_offset, human_keypoints, parts_from_skinning, pose_in_fixed_batches)
from synthgen.subjects.poses import SMPL_JOINTS, PoseFileBank, draw_body_pose, matrices_to_axis_angle
from synthgen.subjects.retarget import SMPL_TO_ANNY_BONE, rest_corrections, smpl_to_anny_rotations

log = logging.getLogger(__name__)

PHENOTYPES = ("gender", "age", "muscle", "weight", "height", "proportions")
COMPACT = "build_compact_model_data_*.safetensors"
LOCK_NAME = ".build.lock"


def cache_dir() -> Path:
    """Where Anny's model data is cached."""
    if os.environ.get("ANNY_CACHE_DIR"):
        return Path(os.environ["ANNY_CACHE_DIR"])
    root = os.environ.get("SYNTHGEN_CACHE_DIR", str(Path.home() / ".cache" / "synthgen"))
    return Path(root) / "anny"


def _prune_cache(folder: Path) -> None:
    """Delete Anny's large intermediate build files once the compact model data exists."""
    for version_dir in folder.glob("v*"):
        if not any(version_dir.glob(COMPACT)):
            continue
        for extra in ("load_data_*.safetensors", "build_model_data_*.safetensors"):
            for path in version_dir.glob(extra):
                path.unlink(missing_ok=True)


@contextlib.contextmanager
def _heartbeat(what: str, start: float, every: float = 10.0):
    """Log elapsed time every ``every`` seconds while a long step runs."""
    done = threading.Event()

    def beat():
        while not done.wait(every):
            log.warning("%s... %.0f s", what, time.perf_counter() - start)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


@contextlib.contextmanager
def _file_lock(path: Path, what: str, every: float):
    """Hold the inter-process lock ``path``, logging (then every ``every`` s) while another has it.

    The OS releases the lock when its holder dies, so a killed build never blocks the others.
    """
    import filelock

    lock = filelock.FileLock(str(path))
    start, timeout = time.perf_counter(), 0.0
    while True:
        try:
            lock.acquire(timeout=timeout)
            break
        except filelock.Timeout:
            log.log(logging.INFO if timeout else logging.WARNING,
                    "waiting for another process to finish building %s (lock %s, %.0f s so far)",
                    what, path, time.perf_counter() - start)
            timeout = every
    try:
        yield
    finally:
        lock.release()


def build_once(folder: Path, is_built: Callable[[], bool], build: Callable[[], None],
               what: str = "the cache", every: float = 30.0) -> bool:
    """Run ``build()`` unless ``is_built()``, in one process at a time across processes.

    Processes that find another one building wait on ``folder/.build.lock``, then see
    ``is_built()`` and return without building. Returns True when this call ran ``build``.
    """
    if is_built():
        return False
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with _file_lock(folder / LOCK_NAME, what, every):
        if is_built():
            log.info("%s in %s was built by another process", what, folder)
            return False
        build()
        if not is_built():
            raise RuntimeError(f"building {what} in {folder} finished without a complete result")
        return True


def data_version_dir() -> str:
    """Glob of Anny's per-data-version cache folder (``v14``...), any version if unknown."""
    try:
        from anny.models.model_data import CURRENT_DATA_VERSION
    except ImportError:
        return "v*"
    return f"v{CURRENT_DATA_VERSION}"


def _readable(path: Path) -> bool:
    """Whether ``path`` is a whole safetensors file (a truncated one fails its header check)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt"):
            return True
    except (OSError, SafetensorError):
        return False


def cache_is_built(folder: Path) -> bool:
    """Whether ``folder`` holds complete compact model data for this Anny's data version."""
    return any(_readable(p) for p in folder.glob(f"{data_version_dir()}/{COMPACT}"))


def _fsync(path: Path) -> None:
    """Flush ``path`` to disk, so a rename never publishes a file whose bytes may be lost."""
    with open(path, "rb") as stream:
        os.fsync(stream.fileno())


def build_cache(folder: Path) -> None:
    """Build Anny's model data in a private ``folder/.build-*`` folder, then rename the compact
    files into ``folder`` (same file system: a file appears only once complete). Call under the lock.
    """
    import anny
    import anny.paths

    for stale in folder.glob(".build-*"):  # left by a killed build; the lock holder alone builds
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=folder))
    start = time.perf_counter()
    log.warning("Building Anny's model data once into %s (about 50 s; later starts are fast)", folder)
    try:
        anny.paths.set_anny_cache_path(staging)
        with _heartbeat("building Anny model data", start):
            anny.Anny()
        for built in staging.glob(f"v*/{COMPACT}"):
            _fsync(built)
            target = folder / built.parent.name / built.name
            target.parent.mkdir(exist_ok=True)
            os.replace(built, target)
    finally:
        anny.paths.set_anny_cache_path(folder)
        shutil.rmtree(staging, ignore_errors=True)
    _prune_cache(folder)
    log.info("Anny model data built in %.1f s", time.perf_counter() - start)


def usable_cache_dir() -> Path:
    """``cache_dir()``, created; ``UserError`` naming the variables to set when it cannot be."""
    folder = cache_dir()
    fix = "set SYNTHGEN_CACHE_DIR (or ANNY_CACHE_DIR) to a folder you can write to"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"Anny cache folder {folder} cannot be created ({exc.strerror}); {fix}") from None
    if not cache_is_built(folder) and not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"Anny cache folder {folder} holds no complete model data and is not writable, "
                        f"so Anny's model data cannot be built there; {fix}")
    return folder


def _quiet_warp() -> None:
    """Keep NVIDIA Warp (Anny's skinning kernels) to warnings: at its default level every worker
    prints a banner and a line per kernel module to stdout. A level the user set is kept. Without
    Warp installed, Anny skins with its torch LBS and there is nothing to quiet."""
    try:
        import warp
    except ImportError:
        return

    if warp.config.log_level == warp.LOG_INFO:
        warp.config.log_level = warp.LOG_WARNING


@functools.lru_cache(maxsize=1)
def load_anny_model():
    """The float32 Anny model (process-wide singleton), building its cache once if needed."""
    import anny
    import anny.paths

    _quiet_warp()

    folder = usable_cache_dir()
    start = time.perf_counter()
    built = build_once(folder, lambda: cache_is_built(folder), lambda: build_cache(folder),
                       what="Anny's model data")
    anny.paths.set_anny_cache_path(folder)
    model = anny.Anny().to(torch.float32)
    log.info("Anny model ready in %.2f s (%s start)", time.perf_counter() - start,
             "cold" if built else "warm")
    return model


def _bone_part_ids(bone_labels: list[str]) -> np.ndarray:
    """(J,) part id of each Anny bone."""
    rules = [("upperarm", "{s}_upper_arm"), ("lowerarm", "{s}_forearm"), ("wrist", "{s}_hand"),
             ("finger", "{s}_hand"), ("metacarpal", "{s}_hand"), ("upperleg", "{s}_thigh"),
             ("lowerleg", "{s}_shin"), ("foot", "{s}_foot"), ("toe", "{s}_foot"),
             ("neck", "head"), ("head", "head"), ("eye", "head")]
    out = np.full(len(bone_labels), PART_NAMES.index("torso"), dtype=np.int64)
    for i, label in enumerate(bone_labels):
        side = "left" if label.endswith(".L") else "right"
        for prefix, part in rules:
            if label.startswith(prefix):
                out[i] = PART_NAMES.index(part.format(s=side))
                break
    return out


def beta_params(distribution, anny_age: float) -> tuple[float, float]:
    """Anny's age-conditional Beta(alpha, beta) of a phenotype at one age: its anchors
    interpolated linearly, clamped at the ends, as ``get_distribution_params`` does for a batch
    (that call's torch overhead, four times per sample, is what this avoids)."""
    ages = distribution.age_anchors.numpy()
    return (float(np.interp(anny_age, ages, distribution.alpha_anchors.numpy())),
            float(np.interp(anny_age, ages, distribution.beta_anchors.numpy())))


class AnnyBody:
    """Anny humans: phenotype draws, library/file poses retargeted from SMPL terms; keypoints: COCO-23
    then Anny's own joints (bone heads: pelvis = root, spine, thorax, neck, head; head_top = the
    crown vertex), see :data:`synthgen.subjects.base.BODY_JOINTS`."""

    name = "anny"
    skeleton_edges = None  # OpenPose-18 from the COCO keypoints

    def __init__(self, config: SubjectConfig):
        import anny

        self.config = config
        self.version = anny.__version__
        self.model = load_anny_model()
        self.bone_labels = list(self.model.bone_labels)
        self.keypoint_regressor = anny.KeypointsRegressor.coco(self.model, labels=KEYPOINT_NAMES)
        self.shape_prior = anny.shape_distribution.SimpleShapeDistribution(self.model)
        self.faces = self.model.faces.cpu().numpy().astype(np.int32)
        self.face_parts = self._face_parts()
        self.part_names = PART_NAMES
        self.joint_bones = self._joint_bones()
        self.head_top_vertex = int(np.argmax(self.model.template_vertices[:, 2].cpu().numpy()))
        self.keypoint_names, self.keypoint_parts = human_keypoints(list(self.joint_bones) + ["head_top"])
        self.corrections = rest_corrections(self.bone_labels, self._rest_heads())
        self.pose_files = PoseFileBank(config.pose.files) if config.pose.files else None

    def _joint_bones(self) -> dict[str, int]:
        """Our body-joint names Anny has a bone for -> bone index (the pelvis is the root bone)."""
        bones = {"pelvis": "root"} | {name: SMPL_TO_ANNY_BONE[smpl] for name, smpl in BODY_JOINTS.items()
                                      if smpl in SMPL_TO_ANNY_BONE}
        return {name: self.bone_labels.index(bone) for name, bone in bones.items()}

    def _keypoints(self, result: dict) -> torch.Tensor:
        """(B, K, 3) keypoints of a forward ``result``: COCO-23 (Anny's regressor), the joint bones'
        heads, the crown vertex."""
        joints = result["bone_poses"][:, list(self.joint_bones.values()), :3, 3]
        top = result["vertices"][:, [self.head_top_vertex]]
        return torch.cat([self.keypoint_regressor(result), joints.to(top.dtype), top], dim=1)

    def _rest_heads(self) -> np.ndarray:
        out = self._forward(torch.eye(4).expand(1, len(self.bone_labels), 4, 4).clone(),
                            {k: torch.full((1,), 0.5) for k in PHENOTYPES})
        return out["bone_poses"][0, :, :3, 3].numpy().astype(np.float64)

    def _face_parts(self) -> np.ndarray:
        idx = self.model.vertex_bone_indices.cpu().numpy()
        w = self.model.vertex_bone_weights.cpu().numpy()
        dense = np.zeros((idx.shape[0], len(self.bone_labels)), dtype=np.float32)
        np.add.at(dense, (np.arange(idx.shape[0])[:, None], idx), w)
        return parts_from_skinning(dense, _bone_part_ids(self.bone_labels), self.faces)

    # --- draws -------------------------------------------------------------------------------
    def _draw_phenotype(self, rng: np.random.Generator,
                        bins: dict[str, int] | None = None) -> tuple[dict[str, float], float]:
        """Phenotypes and age in years; the bins of weighted shape attributes go into ``bins``."""
        shape, bins = self.config.shape, {} if bins is None else bins

        def weighted(name: str) -> float:
            value, k = draw_weighted(rng, getattr(shape, name))
            if k is not None:
                bins[f"subject.shape.{name}"] = k
            return value

        age_years = weighted("age_years")
        gender = weighted("gender")
        prior = self.shape_prior
        anny_age = prior.morphological_age_mapping.morphological_to_anny_age(
            torch.tensor([age_years], dtype=torch.float32))
        pheno = {"gender": gender, "age": float(anny_age[0])}
        group = "boys" if gender <= 0.5 else "girls"
        for key in ("height", "weight", "muscle", "proportions"):
            fixed = getattr(shape, key)
            if fixed is not None:
                pheno[key] = weighted(key)
                continue
            alpha, beta = beta_params(getattr(prior, f"{group}_conditional_{key}_distribution"), pheno["age"])
            pheno[key] = float(rng.beta(alpha, beta))
        return pheno, age_years

    def draw(self, recipe_seed: int, index: int) -> dict[str, Any]:
        """Phenotype, pose (SMPL terms) and heading of sample ``index``."""
        bins: dict[str, int] = {}
        pheno, age_years = self._draw_phenotype(sample_rng(recipe_seed, index, "shape"), bins)
        pose_name, rotations, yaw = draw_body_pose(self.config.pose, self.pose_files, recipe_seed, index)
        return {"phenotype": pheno, "age_years": age_years, "pose_name": pose_name,
                "smpl_rotations": rotations, "yaw_deg": yaw} | ({"bins": bins} if bins else {})

    # --- posing ------------------------------------------------------------------------------
    def mesh(self, subject: PosedSubject) -> tuple[np.ndarray, np.ndarray]:
        return self.faces, self.face_parts

    def camera_labels(self, subject: PosedSubject, camera, keypoints_2d: np.ndarray,
                      keypoints_3d: np.ndarray) -> dict[str, Any]:
        return {}

    def _forward(self, pose: torch.Tensor, phenotypes: dict[str, torch.Tensor]) -> dict:
        with torch.no_grad():
            return self.model(pose_parameters=pose, phenotype_kwargs=phenotypes)

    def _pose_parameters(self, draw: dict[str, Any]) -> np.ndarray:
        """(J, 4, 4) float32 local-ref transforms; the root holds the heading only."""
        local = smpl_to_anny_rotations(draw["smpl_rotations"], self.bone_labels, self.corrections)
        local[0] = Rotation.from_euler("z", draw["yaw_deg"], degrees=True).as_matrix()
        out = np.tile(np.eye(4), (len(local), 1, 1))
        out[:, :3, :3] = local
        return out.astype(np.float32)

    def pose(self, draws: list[dict[str, Any]]) -> list[PosedSubject]:
        return pose_in_fixed_batches(draws, BATCH, self._pose_batch)

    def _pose_batch(self, draws: list[dict[str, Any]], padded: list[dict[str, Any]]) -> list[PosedSubject]:
        pose = torch.from_numpy(np.stack([self._pose_parameters(d) for d in padded]))
        pheno = {k: torch.tensor([d["phenotype"][k] for d in padded], dtype=torch.float32)
                 for k in PHENOTYPES}
        result = self._forward(pose, pheno)
        vertices = result["vertices"]
        rest_z = result["rest_vertices"][..., 2]
        heights = (rest_z.max(dim=1).values - rest_z.min(dim=1).values).numpy()
        keypoints = self._keypoints(result)
        posed = []
        for b, draw in enumerate(draws):
            v = vertices[b].numpy()
            offset = ground_offset(v).astype(np.float32)
            root = pose[b, 0].numpy().copy()
            root[:3, 3] = offset
            posed.append(PosedSubject(
                vertices=v + offset,
                keypoints_3d=keypoints[b].numpy() + offset,
                params=self._labels(draw, pose[b].numpy(), root) | {"height_m": float(heights[b])},
                arrays={"pose_parameters": np.concatenate([root[None], pose[b, 1:].numpy()])},
            ))
        return posed

    def _labels(self, draw: dict[str, Any], pose: np.ndarray, root: np.ndarray) -> dict[str, Any]:
        return {
            "body_model": {"name": "anny", "version": self.version, "rig": "anny",
                           "pose_parameterization": "local-ref"},
            "phenotype": {k: float(np.float32(v)) for k, v in draw["phenotype"].items()},
            "age_years": float(np.float32(draw["age_years"])),
            "pose_name": draw["pose_name"],
            **({"bins": draw["bins"]} if "bins" in draw else {}),  # weighted shape attributes' bins
            "root_transform": np.float32(root).tolist(),
            "bone_rotvec": np.float32(matrices_to_axis_angle(pose[1:, :3, :3].astype(np.float64))).tolist(),
            "has_body_pose": True,
            "has_betas": False,
        }

    # --- over time (synthgen.subjects.base.PosesOverTime) ------------------------------------
    @property
    def num_bones(self) -> int:
        """J, the number of bones of the Anny rig (the length of ``pose_parameters``)."""
        return len(self.bone_labels)

    def bone_index(self, name: str) -> int:
        """Index into the J bones of the Anny bone called ``name`` (e.g. ``"head"``)."""
        return self.bone_labels.index(name)

    def smpl_joint_bones(self) -> dict[str, int]:
        """The SMPL joints Anny has a bone for (SMPL order, pelvis first) -> index of that bone."""
        return {"pelvis": 0} | {j: self.bone_index(SMPL_TO_ANNY_BONE[j]) for j in SMPL_JOINTS
                                if j in SMPL_TO_ANNY_BONE}

    def retarget_smpl(self, rotations: np.ndarray) -> np.ndarray:
        """(T, 24, 3, 3) SMPL local rotations (SMPL frame) -> (T, J, 3, 3) float64 Anny local-ref
        rotations, arm rest corrections included (see :func:`synthgen.subjects.retarget.smpl_to_anny_rotations`).
        """
        return np.stack([smpl_to_anny_rotations(r, self.bone_labels, self.corrections) for r in rotations])

    def forward_frames(self, pose: np.ndarray, phenotype: dict[str, float]) -> dict[str, np.ndarray]:
        """Pose one body (one ``phenotype``) at N frames.

        pose: (N, J, 4, 4) float32 local-ref transforms. Runs in padded batches of exactly
        :data:`BATCH` under ``torch.no_grad``, so a frame's bits never depend on N. Returns float32
        ``vertices`` (N, V, 3), ``keypoints`` (N, K, 3) (``keypoint_names``) and ``bone_poses``
        (N, J, 4, 4) world transforms of the bones, all in Anny's world frame (model origin, no grounding).
        """
        pheno = {k: torch.full((BATCH,), float(phenotype[k]), dtype=torch.float32) for k in PHENOTYPES}

        def run(chunk: list[np.ndarray], padded: list[np.ndarray]) -> list[tuple[np.ndarray, ...]]:
            with torch.no_grad():
                result = self.model(pose_parameters=torch.from_numpy(np.stack(padded)), phenotype_kwargs=pheno)
                keypoints = self._keypoints(result)
            return list(zip(result["vertices"].numpy(), keypoints.numpy(),
                            result["bone_poses"].numpy()))[:len(chunk)]

        outs = pose_in_fixed_batches(list(pose), BATCH, run)
        keys = ("vertices", "keypoints", "bone_poses")
        return {key: np.stack([o[i] for o in outs]) for i, key in enumerate(keys)}

    def sequence_params(self, draw: dict[str, Any]) -> dict[str, Any]:
        """JSON-ready labels of a drawn body that hold for every frame (model, phenotype, age)."""
        return {"body_model": {"name": "anny", "version": self.version, "rig": "anny",
                               "pose_parameterization": "local-ref"},
                "phenotype": {k: float(np.float32(v)) for k, v in draw["phenotype"].items()},
                "age_years": float(np.float32(draw["age_years"])), "has_betas": False}

