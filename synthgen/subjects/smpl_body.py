"""SMPL, SMPL-H and SMPL-X bodies through ``smplx``, from the user's licensed model files.

Model files are NOT shipped (non-commercial licences). Get them (free registration) from
https://smpl.is.tue.mpg.de (SMPL), https://mano.is.tue.mpg.de (SMPL-H, "Extended SMPL+H") or
https://smpl-x.is.tue.mpg.de (SMPL-X), and point ``subject.model_path`` at the folder holding them
(smplx layout ``FOLDER/smpl/SMPL_NEUTRAL.pkl``, or ``FOLDER/SMPL_NEUTRAL.pkl``, ``.npz`` too) or at
the file itself (e.g. ``basicmodel_neutral_lbs_10_207_0_v1.1.0.pkl`` as downloaded). ``.npz``
files are preferred over ``.pkl`` in a folder and read with ``allow_pickle=False`` (object entries
are skipped); ``.pkl`` files go through smplx's own loader, which unpickles them.

Official ``.pkl`` files hold ``chumpy`` objects, and chumpy does not import with current numpy.
Convert such a file once, without chumpy (the restricted unpickler of
:mod:`synthgen.subjects.model_files` keeps only numeric arrays)::

    python -m synthgen.subjects.smpl_body SMPL_NEUTRAL.pkl SMPL_NEUTRAL.npz

Frames: smplx works in SMPL's frame (x = body's left, y = up, z = forward); posed outputs are
rotated into synthgen's world frame with :data:`SMPL_TO_WORLD` and put on the ground (z = 0).

Keypoints (the 23 ``KEYPOINT_NAMES``, then the body joints of ``BODY_JOINTS``: pelvis, spine2,
spine3, neck, head, SMPL-X's jaw, and the template's crown vertex as head_top): shoulders, elbows, wrists, hips, knees and ankles are the
SMPL joints of those names (regressed anatomical joint centres: a few cm off where COCO
annotators put hips and shoulders); nose, eyes, ears, big/small toes and heels are the surface
vertices smplx uses for those points (``smplx.vertex_ids.vertex_ids['smplh']`` for SMPL and
SMPL-H, ``['smplx']`` for SMPL-X).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import io
import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from synthgen.errors import MissingModelError, UserError
from synthgen.recipe import SubjectConfig
from synthgen.seeding import sample_rng
from synthgen.subjects.base import (BATCH, BODY_JOINTS, KEYPOINT_NAMES, PART_NAMES, SMPL_TO_WORLD,
                                    PosedSubject, human_keypoints, ground_offset, parts_from_skinning,
                                    pose_in_fixed_batches)
from synthgen.subjects.model_files import load_pickled_arrays, plain_array, read_npz_arrays
from synthgen.subjects.poses import (SMPL_JOINTS, PoseFileBank, matrices_to_axis_angle,
                                     draw_body_pose)

log = logging.getLogger(__name__)

FILE_STEM = {"smpl": "SMPL", "smplh": "SMPLH", "smplx": "SMPLX"}
DOWNLOAD_URL = {"smpl": "https://smpl.is.tue.mpg.de", "smplh": "https://mano.is.tue.mpg.de",
                "smplx": "https://smpl-x.is.tue.mpg.de"}
BODY_POSE_JOINTS = {"smpl": 23, "smplh": 21, "smplx": 21}  # joints in ``body_pose`` (pelvis excluded)
REQUIRED_KEYS = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table")
CONVERT_HINT = "python -m synthgen.subjects.smpl_body FILE.pkl FILE.npz"

# KEYPOINT_NAMES entries read from smplx vertex ids; every other keypoint is the SMPL joint of that name.
KEYPOINT_VERTEX_KEYS = {
    "nose": "nose", "left_eye": "leye", "right_eye": "reye", "left_ear": "lear", "right_ear": "rear",
    "left_big_toe": "LBigToe", "right_big_toe": "RBigToe", "left_small_toe": "LSmallToe",
    "right_small_toe": "RSmallToe", "left_heel": "LHeel", "right_heel": "RHeel",
}
NUM_SHARED_JOINTS = 22  # pelvis..right_wrist: the same joints, same order, in all three models

# Joint name (without left_/right_) -> part; first matching prefix wins, unmatched -> torso.
_JOINT_PART_RULES = [
    ("shoulder", "{s}_upper_arm"), ("elbow", "{s}_forearm"), ("wrist", "{s}_hand"),
    ("hand", "{s}_hand"), ("index", "{s}_hand"), ("middle", "{s}_hand"), ("pinky", "{s}_hand"),
    ("ring", "{s}_hand"), ("thumb", "{s}_hand"), ("hip", "{s}_thigh"), ("knee", "{s}_shin"),
    ("ankle", "{s}_foot"), ("foot", "{s}_foot"), ("neck", "head"), ("head", "head"),
    ("jaw", "head"), ("eye", "head"),
]


# --- model files -------------------------------------------------------------------------------
def model_candidates(model: str, folder: Path, gender: str) -> list[Path]:
    """Files searched, in order, when ``subject.model_path`` is a folder."""
    stem = f"{FILE_STEM[model]}_{gender.upper()}"
    out = [d / f"{stem}.{ext}" for d in (folder / model, folder) for ext in ("npz", "pkl")]
    if model == "smplh":  # AMASS "Extended SMPL+H" layout
        out += [folder / "smplh" / gender / "model.npz", folder / gender / "model.npz"]
    return out


def missing_model_message(model: str, searched: list[Path]) -> str:
    """One line: what is missing, where it was looked for, where to get it, how to convert it."""
    return (f"{FILE_STEM[model]} model file not found (searched: {', '.join(map(str, searched))}). "
            f"Download it from {DOWNLOAD_URL[model]} (free registration, non-commercial licence) and "
            f"set subject.model_path to its folder or file. Official .pkl files holding chumpy "
            f"objects must be converted once to .npz: {CONVERT_HINT}")


def find_model_file(config: SubjectConfig) -> Path:
    """The model file ``config`` names; raises MissingModelError if there is none."""
    path = Path(str(config.model_path)).expanduser()
    if path.is_file() or path.suffix in (".pkl", ".npz"):
        candidates = [path]
    else:
        candidates = model_candidates(config.model, path, config.smpl_gender)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise MissingModelError(missing_model_message(config.model, candidates))


class _NoPickleNumpy:
    """numpy as ``smplx.body_models`` sees it while building SMPL-X: ``np.load`` never unpickles."""

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)

    @staticmethod
    def load(path, *args, **kwargs) -> dict[str, np.ndarray]:
        return read_npz_arrays(path)


@contextlib.contextmanager
def _smplx_npz_without_pickle():
    """smplx.SMPLX has no ``data_struct`` argument and loads .npz with allow_pickle=True."""
    import smplx.body_models as body_models

    saved = body_models.np
    body_models.np = _NoPickleNumpy()
    try:
        yield
    finally:
        body_models.np = saved


def _construct(model: str, path: Path, kwargs: dict[str, Any]) -> torch.nn.Module:
    """The smplx module for ``path`` (.npz without pickle, .pkl through smplx's loader)."""
    import smplx
    from smplx.utils import Struct

    cls = {"smpl": smplx.SMPL, "smplh": smplx.SMPLH, "smplx": smplx.SMPLX}[model]
    if path.suffix == ".pkl":
        extra = {} if model == "smpl" else {"ext": "pkl"}
        return cls(model_path=str(path), **extra, **kwargs)
    if path.suffix != ".npz":
        raise UserError(f"subject.model_path: {path} is neither a .pkl nor a .npz model file")
    if model == "smplx":
        with _smplx_npz_without_pickle():
            return cls(model_path=str(path), ext="npz", **kwargs)
    arrays = read_npz_arrays(path)
    missing = [k for k in REQUIRED_KEYS if k not in arrays]
    if missing:
        raise UserError(f"{path}: not a {FILE_STEM[model]} model file (missing arrays {missing})")
    return cls(model_path=None, data_struct=Struct(**arrays), **kwargs)


def load_body_model(model: str, path: Path, gender: str, num_betas: int) -> torch.nn.Module:
    """float32 smplx module with batch size :data:`BATCH` and at least ``num_betas`` betas."""
    kwargs = dict(gender=gender, num_betas=num_betas, batch_size=BATCH, dtype=torch.float32,
                  create_transl=False)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):  # smplx print()s its warnings
            body = _construct(model, path, kwargs)
    except ImportError:  # unpickling a .pkl that references chumpy (missing, or broken on numpy 2)
        if path.suffix != ".pkl":
            raise
        raise UserError(f"{path} holds chumpy objects; convert it once to .npz: python -m "
                        f"synthgen.subjects.smpl_body {path} {path.with_suffix('.npz')} (a folder "
                        f"then finds the .npz first)") from None
    except (AttributeError, KeyError, pickle.UnpicklingError) as exc:
        raise UserError(f"{path}: not a usable {FILE_STEM[model]} model file ({exc!r})") from None
    for line in filter(None, printed.getvalue().splitlines()):
        log.info("smplx: %s", line)
    if body.num_betas < num_betas:
        raise UserError(f"subject.shape.num_betas={num_betas} but {path} has only "
                        f"{body.num_betas} shape components")
    return body.eval()


def _joint_names(model: str, num_joints: int) -> list[str]:
    """Names of the ``num_joints`` kinematic joints of ``model``."""
    from smplx.joint_names import JOINT_NAMES, SMPLH_JOINT_NAMES

    names = {"smpl": SMPL_JOINTS, "smplh": SMPLH_JOINT_NAMES, "smplx": JOINT_NAMES}[model]
    return list(names[:num_joints])


def joint_part_ids(joint_names: list[str]) -> np.ndarray:
    """(J,) PART_NAMES index per joint (pelvis/spines/collars -> torso, neck/head/jaw/eyes -> head)."""
    out = np.full(len(joint_names), PART_NAMES.index("torso"), dtype=np.int64)
    for j, name in enumerate(joint_names):
        side, _, base = name.partition("_") if name.startswith(("left_", "right_")) else ("", "", name)
        for prefix, part in _JOINT_PART_RULES:
            if base.startswith(prefix):
                out[j] = PART_NAMES.index(part.format(s=side))
                break
    return out


def gather_joints(model: str) -> int:
    """How many leading smplx joints keypoints read: pelvis..right_wrist, and SMPL-X's jaw (22)."""
    return NUM_SHARED_JOINTS + (model == "smplx")


def keypoint_gather_index(model: str, head_top_vertex: int) -> tuple[list[str], np.ndarray]:
    """Keypoint names and (K,) indices into ``cat([joints[:, :gather_joints(model)], vertices], 1)``."""
    from smplx.vertex_ids import vertex_ids

    ids = vertex_ids["smplx" if model == "smplx" else "smplh"]
    first = gather_joints(model)
    joint_names = SMPL_JOINTS[:NUM_SHARED_JOINTS] + ["jaw"] * (model == "smplx")
    out = [first + ids[KEYPOINT_VERTEX_KEYS[n]] if n in KEYPOINT_VERTEX_KEYS
           else SMPL_JOINTS.index(n) for n in KEYPOINT_NAMES]
    joints = [j for j, smpl in BODY_JOINTS.items() if smpl in joint_names]
    names, _ = human_keypoints(joints + ["head_top"])
    out += [first + head_top_vertex if n == "head_top" else joint_names.index(BODY_JOINTS[n])
            for n in names[len(KEYPOINT_NAMES):]]
    return names, np.asarray(out, dtype=np.int64)


# --- the subject model -------------------------------------------------------------------------
class SmplBody:
    """SMPL / SMPL-H / SMPL-X: Gaussian betas, library/file poses, yaw about SMPL's up axis."""

    skeleton_edges = None  # OpenPose-18 from the COCO keypoints

    def __init__(self, config: SubjectConfig):
        self.config = config
        self.name = config.model
        self.num_betas = config.shape.num_betas
        self.version = importlib.metadata.version("smplx")
        self.path = find_model_file(config)
        self.body = load_body_model(config.model, self.path, config.smpl_gender, self.num_betas)
        self.faces = np.asarray(self.body.faces, dtype=np.int32)
        weights = self.body.lbs_weights.cpu().numpy()
        self.joint_names = _joint_names(config.model, weights.shape[1])
        self.face_parts = parts_from_skinning(weights, joint_part_ids(self.joint_names), self.faces)
        self.part_names = PART_NAMES
        head_top = int(np.argmax(self.body.v_template[:, 1].cpu().numpy()))  # SMPL frame: y up
        self.keypoint_names, self.keypoint_parts = human_keypoints(
            keypoint_gather_index(config.model, head_top)[0][len(KEYPOINT_NAMES):])
        self.keypoint_index = torch.from_numpy(keypoint_gather_index(config.model, head_top)[1])
        self.to_world = torch.tensor(SMPL_TO_WORLD.T, dtype=torch.float32)  # row vectors: v @ M.T
        self.pose_files = PoseFileBank(config.pose.files) if config.pose.files else None
        log.info("%s model %s: %d vertices, %d joints, %d betas", self.name, self.path,
                 weights.shape[0], weights.shape[1], self.num_betas)

    def mesh(self, subject: PosedSubject) -> tuple[np.ndarray, np.ndarray]:
        return self.faces, self.face_parts

    def camera_labels(self, subject: PosedSubject, camera, keypoints_2d: np.ndarray,
                      keypoints_3d: np.ndarray) -> dict[str, Any]:
        """The root in this camera (HMR2 / BEDLAM ``pose_cam[:3]``, ``trans_cam``).

        ``global_orient_cam`` (3,) axis-angle and ``transl_cam`` (3,) metres such that smplx with
        (``global_orient_cam``, ``body_pose``, ``betas``, transl=``transl_cam``) gives the body in
        the OpenCV camera frame: R_cam = R @ SMPL_TO_WORLD @ R_orient and, the root rotating
        about the rest pelvis J0, transl_cam = pelvis_cam - J0.
        """
        R, t = np.asarray(camera.R, dtype=np.float64), np.asarray(camera.t, dtype=np.float64)
        pelvis_world = np.asarray(subject.keypoints_3d[self.keypoint_names.index("pelvis")], dtype=np.float64)
        rest_pelvis = SMPL_TO_WORLD.T @ pelvis_world - np.asarray(subject.arrays["transl"], dtype=np.float64)
        orient = R @ SMPL_TO_WORLD @ Rotation.from_rotvec(subject.arrays["global_orient"]).as_matrix()
        return {"global_orient_cam": np.float32(Rotation.from_matrix(orient).as_rotvec()).tolist(),
                "transl_cam": np.float32(R @ pelvis_world + t - rest_pelvis).tolist()}

    # --- draws -------------------------------------------------------------------------------
    def draw(self, recipe_seed: int, index: int) -> dict[str, Any]:
        """Betas, pose (SMPL local rotations) and heading of sample ``index``."""
        shape = self.config.shape
        betas = sample_rng(recipe_seed, index, "shape").normal(shape.betas_mean, shape.betas_sd,
                                                                size=self.num_betas)
        pose_name, rotations, yaw = draw_body_pose(self.config.pose, self.pose_files, recipe_seed, index)
        return {"betas": betas, "pose_name": pose_name, "smpl_rotations": rotations, "yaw_deg": yaw}

    # --- posing ------------------------------------------------------------------------------
    def parameters(self, draw: dict[str, Any]) -> dict[str, np.ndarray]:
        """float32 smplx inputs of one draw: betas (B,), global_orient (3,), body_pose (3*J,)."""
        joints = BODY_POSE_JOINTS[self.name]
        body_pose = matrices_to_axis_angle(np.asarray(draw["smpl_rotations"])[1:1 + joints])
        orient = Rotation.from_euler("y", draw["yaw_deg"], degrees=True).as_rotvec()
        return {"betas": np.float32(draw["betas"]), "global_orient": np.float32(orient),
                "body_pose": np.float32(body_pose.reshape(-1))}

    def _run(self, params: list[dict[str, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Exactly BATCH parameter sets -> SMPL-frame (BATCH, V, 3) vertices, (BATCH, K, 3)
        keypoints and (BATCH, 22, 3) joints (pelvis..right_wrist)."""
        stacked = {k: torch.from_numpy(np.stack([p[k] for p in params])) for k in params[0]}
        with torch.no_grad():
            out = self.body(**stacked)
        both = torch.cat([out.joints[:, :gather_joints(self.name)], out.vertices], dim=1)
        return out.vertices, both[:, self.keypoint_index], out.joints[:, :NUM_SHARED_JOINTS]

    def forward(self, params: list[dict[str, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Exactly BATCH parameter sets -> SMPL-frame (BATCH, V, 3) vertices, (BATCH, K, 3) keypoints."""
        vertices, keypoints, _ = self._run(params)
        return vertices, keypoints

    def pose(self, draws: list[dict[str, Any]]) -> list[PosedSubject]:
        """World-frame subjects on the ground, posed BATCH at a time (padded; split-independent)."""
        return pose_in_fixed_batches(draws, BATCH, self._pose_batch)

    def _pose_batch(self, draws: list[dict[str, Any]], padded: list[dict[str, Any]]) -> list[PosedSubject]:
        """At most BATCH draws -> subjects; vertices (V, 3) and keypoints (K, 3) float32, world frame."""
        params = [self.parameters(d) for d in padded]
        vertices, keypoints = self.forward(params)
        vertices, keypoints = (vertices @ self.to_world).numpy(), (keypoints @ self.to_world).numpy()
        posed = []
        for b, (draw, p) in enumerate(zip(draws, params)):
            offset = ground_offset(vertices[b]).astype(np.float32)
            transl = np.float32(SMPL_TO_WORLD.T @ offset)  # exact: a signed permutation
            arrays = p | {"transl": transl}
            posed.append(PosedSubject(vertices=vertices[b] + offset,
                                      keypoints_3d=keypoints[b] + offset,
                                      params=self._labels(draw, arrays), arrays=arrays))
        return posed

    def _labels(self, draw: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        """HMR2/BEDLAM-style labels; global_orient and transl are in SMPL's own frame."""
        body_model = {"name": self.name, "version": self.version,
                      "gender": self.config.smpl_gender, "num_betas": self.num_betas}
        if self.name != "smpl":
            body_model["hand_pose"] = "mean (zero hand pose, flat_hand_mean=false)"
        return {"body_model": body_model, **{k: v.tolist() for k, v in arrays.items()},
                "pose_name": draw["pose_name"], "has_body_pose": True, "has_betas": True}


    # --- over time (synthgen.subjects.base.PosesOverTime) ------------------------------------
    @property
    def num_body_pose_joints(self) -> int:
        """Joints in smplx's ``body_pose`` (pelvis excluded): 23 for SMPL, 21 for SMPL-H/SMPL-X."""
        return BODY_POSE_JOINTS[self.name]

    def bone_index(self, name: str) -> int:
        """Index of the kinematic joint ``name``; the first 22 (pelvis..right_wrist) are
        SMPL_JOINTS' order in all three models."""
        return self.joint_names.index(name)

    def forward_frames(self, params: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Run smplx on N parameter sets (float32 ``betas`` (B,), ``global_orient`` (3,), ``body_pose``
        (3 * num_body_pose_joints,) axis-angle), in padded batches of exactly :data:`BATCH` under
        ``torch.no_grad``, so a frame's bits never depend on N.

        Returns float32 arrays in SMPL's own frame (no transl, no grounding): ``vertices`` (N, V, 3),
        ``keypoints`` (N, K, 3) (``keypoint_names``), ``joints`` (N, 22, 3) pelvis..right_wrist.
        """
        def run(chunk: list[dict], padded: list[dict]) -> list[tuple[np.ndarray, ...]]:
            return list(zip(*(t.numpy() for t in self._run(padded))))[:len(chunk)]

        outs = pose_in_fixed_batches(params, BATCH, run)
        return {key: np.stack([o[i] for o in outs]) for i, key in enumerate(("vertices", "keypoints", "joints"))}

    def sequence_params(self, draw: dict[str, Any]) -> dict[str, Any]:
        """JSON-ready labels of a drawn body that hold for every frame (model, betas)."""
        return {"body_model": {"name": self.name, "version": self.version,
                               "gender": self.config.smpl_gender, "num_betas": self.num_betas},
                "betas": np.float32(draw["betas"]).tolist(), "has_betas": True}


# --- one-off conversion of official (chumpy) .pkl files ---------------------------------------
def convert_to_npz(src: str | Path, dst: str | Path) -> Path:
    """Rewrite a SMPL-family ``.pkl`` (chumpy/scipy objects allowed) as a plain ``.npz``.

    Needs neither chumpy nor a trusting unpickler: only numpy arrays, chumpy ``Ch`` values
    (their ``x``) and scipy sparse matrices (made dense) are read; other entries are dropped.
    """
    data = load_pickled_arrays(src)
    arrays = {k: a for k, a in ((k, plain_array(v)) for k, v in data.items()) if a is not None}
    dropped = sorted(set(data) - set(arrays))
    missing = [k for k in REQUIRED_KEYS if k not in arrays]
    if missing:
        raise UserError(f"{src}: could not read {missing} (dropped entries: {dropped})")
    if dropped:
        log.info("%s: dropped entries without array data: %s", src, dropped)
    dst = Path(dst)
    np.savez(dst, **arrays)
    return dst


def main(argv: list[str] | None = None) -> None:
    """``python -m synthgen.subjects.smpl_body SRC.pkl [DST.npz]``."""
    parser = argparse.ArgumentParser(description="Convert an official SMPL/SMPL-H/SMPL-X .pkl "
                                     "(chumpy objects) to a plain .npz that synthgen reads safely.")
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path, nargs="?")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = convert_to_npz(args.src, args.dst or args.src.with_suffix(".npz"))
    log.info("wrote %s", out)


if __name__ == "__main__":
    main()
