"""A SMAL-format model as tensors for ``smplx.lbs``: its arrays checked, its joints named, its axes found.

Frames. Each model's axes are found from its rest joints (up = paws -> spine, forward = pelvis
-> head) and turned into synthgen's world frame (Z up, facing -Y, on z = 0) by ``model_to_world``
(snapped to an exact signed permutation when the model is axis-aligned).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from synthgen.errors import UserError
from synthgen.recipe import SubjectConfig
from synthgen.subjects import animal_poses as ap
from synthgen.subjects.model_files import read_npz_arrays
from synthgen.subjects.smal_files import MODEL_KEYS, resolve_npz

WORLD_RIGHT, WORLD_FORWARD, WORLD_UP = np.array([-1.0, 0, 0]), np.array([0, -1.0, 0]), np.array([0, 0, 1.0])
PAWS = ("LFoot", "RFoot", "LFootBack", "RFootBack")


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
