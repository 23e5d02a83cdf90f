"""SMAL-family quadrupeds (and synthgen's embedded stand-in) as a subject model, posed through ``smplx.lbs``.

The model file and its conversion: :mod:`synthgen.subjects.smal_files`; the model's arrays and
axes: :mod:`synthgen.subjects.smal_model`; keypoints: :mod:`synthgen.subjects.animal_keypoints`;
species shapes: :mod:`synthgen.subjects.animal_shapes`; poses: :mod:`synthgen.subjects.animal_poses`.
Labels keep SMAL's own terms: ``poses`` (3J axis-angle, root first, in the model frame), ``betas``,
``transl`` (model frame), so that ``model_to_world @ (SMAL(poses, betas) + transl)`` is the
world-frame mesh.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from synthgen.errors import UserError
from synthgen.recipe import SubjectConfig
from synthgen.seeding import sample_rng
from synthgen.subjects import animal_poses as ap
from synthgen.subjects.animal_keypoints import keypoint_regressor
from synthgen.subjects.animal_shapes import draw_betas, load_families
from synthgen.subjects.base import BATCH, PosedSubject, ground_offset, parts_from_skinning, pose_in_fixed_batches
from synthgen.subjects.smal_model import load_model, model_axes

log = logging.getLogger(__name__)


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
        self.pose_bank = ap.AnimalPoseBank(self.animal.pose_files, len(self.model.joint_names)) \
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
        return pose_in_fixed_batches(draws, BATCH, self._pose_batch)

    def _pose_batch(self, draws: list[dict[str, Any]], padded_draws: list[dict[str, Any]]) -> list[PosedSubject]:
        params = [self.parameters(d) for d in padded_draws]
        betas = torch.from_numpy(np.stack([p["betas"] for p in params]))
        poses = torch.from_numpy(np.stack([p["poses"] for p in params]))
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
