"""Sequences seen by body-worn cameras (EgoSim-style): motion -> body -> rig -> IMU -> scene ->
per-frame, per-camera layers and images -> one WebDataset sample per frame.

Indexing: global sample ``i`` is frame ``f = i % F`` of sequence ``s = i // F`` (F =
``sequence.frames``). Every random draw of sequence ``s`` comes from the synthgen.seeding
streams of (recipe seed, s), so a frame is the same whatever the split, worker or resume; a
shard that starts mid-sequence re-simulates the sequence from frame 0 (posing all F frames and
integrating the mounts: about a second for 64 frames, less than rendering one frame's views).

Streams of (seed, s): "shape" body shape; "pose" motion choice/speed/style; "placement" heading;
"camera" rig jitter; "background" scene; "appearance" materials, light and the per-frame sensor
noise seed; "generate" IMU noise; "prompt" the ControlNet prompt, then its per-camera seeds.

Per frame :meth:`SequenceFactory.prepare` renders every camera in one pass over body + scene:

1. cameras: the mount track's pose at the frame (spring-integrated or rigid);
2. render: body and near-clipped scene concatenated, rasterised once per camera (pinhole, or a
   wider pinhole remapped through the fisheye lens);
3. labels: per camera ``cam_int``, lens, ``cam_ext``/``cam_to_world``, the body's
   ``keypoints_3d`` in that camera and ``keypoints_2d`` with COCO visibility; per frame the
   body's pose parameters and world joints and each mount's IMU samples in (t_prev, t];
4. image: the shaded backend (materials fixed per sequence, light fixed in the world) or a
   ControlNet (one prompt per sequence and one seed per sequence and camera; see
   :class:`_ControlNetViews` for the flicker that remains).

Shard records: ``json`` (labels) and, for camera k, ``camk.jpg``, ``camk.<layer>.png`` (the
recipe's ``output.layers``) and ``camk.instance.png``. :func:`load_sequence_shards` reads them.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d

from synthgen import write
from synthgen.errors import UserError
from synthgen.generate.shaded import draw_appearance
from synthgen.imu import imu_readings
from synthgen.motion import Motion, MotionFileBank, draw_motion, heading_of
from synthgen.recipe import Recipe, recipe_hash
from synthgen.render import layers as layer_ops
from synthgen.render import render_layers
from synthgen.rigs import (
    SOCKET_BONES,
    Lens,
    MountTrack,
    build_lens,
    mount_offset,
    sim_rate,
    simulate_mounts,
    socket_rotation,
)
from synthgen.scene import (
    BODY_INSTANCE,
    SCENE_PART_NAMES,
    SceneMesh,
    build_scene,
    clip_near,
)
from synthgen.seeding import label_threads, sample_rng, sample_seed
from synthgen.sequence_config import SequenceConfig
from synthgen.subjects import build_subject_model
from synthgen.subjects.base import SMPL_TO_WORLD
from synthgen.subjects.poses import SMPL_JOINTS, SMPL_PARENTS, matrices_to_axis_angle

log = logging.getLogger(__name__)

__all__ = ["SequenceFactory", "contact_sheet", "frame_cameras", "load_sequence_shards",
           "sequence_config_of"]

LAYER_KEYS = {"normal": "normal_rgb", "depth": "depth_mm", "mask": "mask", "parts": "parts",
              "edges": "edges", "skeleton": "skeleton"}
BATCH = 16  # fixed body-model batch (padded), as in synthgen.subjects


def sequence_config_of(recipe: Recipe) -> SequenceConfig | None:
    """The recipe's ``sequence`` section (None for single-image recipes)."""
    return getattr(recipe, "sequence", None)


# --- bodies over time ----------------------------------------------------------------------------
@dataclass
class PosedFrames:
    """A body posed at T times, world axes, pelvis at the origin (translation added later).

    vertices (T, V, 3) float32; keypoints (T, K, 3) float32; joints (T, J, 3) float64 named
    ``joint_names``; socket_rotation (T, S, 3, 3) and socket_position (T, S, 3) for the sockets
    asked for; params: per-time JSON-ready pose parameters (translation filled in later).
    """

    vertices: np.ndarray
    keypoints: np.ndarray
    joints: np.ndarray
    joint_names: list[str]
    socket_rotation: np.ndarray
    socket_position: np.ndarray
    params: list[dict[str, Any]]
    rest_vertices: np.ndarray | None = None        # (V, 3) the rest T-pose, facing -Y
    rest_socket_position: np.ndarray | None = None  # (S, 3) its sockets (rotation = SMPL_TO_WORLD)


def _batched_forward(items: list, run: Callable[[list], list]) -> list:
    """``run`` on chunks of exactly BATCH items (the last padded), so arithmetic never depends
    on how many frames are posed."""
    out = []
    for start in range(0, len(items), BATCH):
        chunk = items[start:start + BATCH]
        out.extend(run(chunk + [chunk[-1]] * (BATCH - len(chunk)))[:len(chunk)])
    return out


class _AnnyFrames:
    """Anny bodies over time: SMPL rotations retargeted (synthgen.subjects.retarget) or Anny files."""

    family = "anny"

    def __init__(self, model, sockets: list[str]):
        from synthgen.subjects.retarget import SMPL_TO_ANNY_BONE

        self.model = model
        self.sockets = sockets
        labels = model.bone_labels
        self.socket_bones = [labels.index(SOCKET_BONES["anny"][s]) for s in sockets]
        self.joint_names = ["pelvis"] + [j for j in SMPL_JOINTS if j in SMPL_TO_ANNY_BONE]
        self.joint_bones = [0] + [labels.index(SMPL_TO_ANNY_BONE[j]) for j in self.joint_names[1:]]

    def _local(self, motion: Motion) -> np.ndarray:
        from synthgen.subjects.retarget import smpl_to_anny_rotations

        m, T = self.model, motion.num_samples
        J = len(m.bone_labels)
        if motion.rotations is not None:
            local = np.stack([smpl_to_anny_rotations(r, m.bone_labels, m.corrections) for r in motion.rotations])
        else:
            if motion.anny_local.shape[1] != J:
                raise UserError(f"motion {motion.info.get('file', motion.name)}: {motion.anny_local.shape[1]} "
                                f"bones, but this Anny rig has {J}")
            local = motion.anny_local.copy()
        local[:, 0] = motion.root_rotation
        rest = smpl_to_anny_rotations(np.tile(np.eye(3), (len(SMPL_JOINTS), 1, 1)), m.bone_labels, m.corrections)
        rest[0] = np.eye(3)
        out = np.tile(np.eye(4), (T + 1, J, 1, 1))
        out[:T, :, :3, :3], out[T, :, :3, :3] = local, rest
        return out.astype(np.float32)

    def pose(self, draw: dict[str, Any], motion: Motion) -> PosedFrames:
        from synthgen.subjects.anny_body import PHENOTYPES

        pose = self._local(motion)
        pheno = {k: torch.full((BATCH,), float(draw["phenotype"][k]), dtype=torch.float32) for k in PHENOTYPES}

        def run(chunk):
            with torch.no_grad():
                result = self.model.model(pose_parameters=torch.from_numpy(np.stack(chunk)), phenotype_kwargs=pheno)
                kp = self.model.keypoint_regressor(result)
            return list(zip(result["vertices"].numpy(), kp.numpy(), result["bone_poses"].numpy()))

        outs = _batched_forward(list(pose), run)
        verts = np.stack([o[0] for o in outs[:-1]])
        kps = np.stack([o[1] for o in outs[:-1]])
        bones = np.stack([o[2] for o in outs]).astype(np.float64)
        rest = bones[-1]
        bones = bones[:-1]
        sock_rot = np.stack([socket_rotation(bones[:, b, :3, :3], rest[b, :3, :3]) for b in self.socket_bones], 1)
        sock_pos = bones[:, self.socket_bones][:, :, :3, 3]
        rotvec = np.float32(matrices_to_axis_angle(pose[:-1, 1:, :3, :3].astype(np.float64)))
        params = [{"root_rotation": np.float32(pose[t, 0, :3, :3]).tolist(), "bone_rotvec": rotvec[t].tolist()}
                  for t in range(len(verts))]
        rest_verts = outs[-1][0] - rest[0, :3, 3]
        return PosedFrames(verts, kps, bones[:, self.joint_bones][:, :, :3, 3], self.joint_names, sock_rot, sock_pos,
                           params, rest_verts, rest[self.socket_bones, :3, 3] - rest[0, :3, 3])

    def sequence_params(self, draw: dict[str, Any]) -> dict[str, Any]:
        return {"body_model": {"name": "anny", "version": self.model.version, "rig": "anny",
                               "pose_parameterization": "local-ref"},
                "phenotype": {k: float(np.float32(v)) for k, v in draw["phenotype"].items()},
                "age_years": float(np.float32(draw["age_years"])), "has_betas": False}


class _SmplFrames:
    """SMPL / SMPL-H / SMPL-X bodies over time through smplx (AMASS-style rotations as they are)."""

    family = "smpl"

    def __init__(self, model, sockets: list[str]):
        from synthgen.subjects.smpl_body import BODY_POSE_JOINTS

        self.model = model
        self.sockets = sockets
        self.socket_joints = [SMPL_JOINTS.index(SOCKET_BONES["smpl"][s]) for s in sockets]
        self.body_joints = BODY_POSE_JOINTS[model.name]
        self.joint_names = SMPL_JOINTS[:22]

    def pose(self, draw: dict[str, Any], motion: Motion) -> PosedFrames:
        if motion.rotations is None:
            raise UserError(f"motion {motion.name} is an Anny-native file; subject.model="
                            f"{self.model.name} needs SMPL-family motions (AMASS .npz)")
        S = SMPL_TO_WORLD
        T = motion.num_samples
        rotations = motion.rotations.copy()
        rotations[:, 0] = S.T @ motion.root_rotation @ S  # world orientation -> smplx global_orient
        rotations = np.concatenate([rotations, np.tile(np.eye(3), (1, len(SMPL_JOINTS), 1, 1))])
        betas = np.float32(draw["betas"])
        params = [{"betas": betas, "global_orient": np.float32(matrices_to_axis_angle(r[0])),
                   "body_pose": np.float32(matrices_to_axis_angle(r[1:1 + self.body_joints]).reshape(-1))}
                  for r in rotations]
        body = self.model.body

        def run(chunk):
            stacked = {k: torch.from_numpy(np.stack([p[k] for p in chunk])) for k in chunk[0]}
            with torch.no_grad():
                out = body(**stacked)
            both = torch.cat([out.joints[:, :22], out.vertices], dim=1)[:, self.model.keypoint_index]
            return list(zip(out.vertices.numpy(), both.numpy(), out.joints[:, :22].numpy()))

        outs = _batched_forward(params, run)
        pelvis = np.stack([o[2][0] for o in outs[:-1]])  # SMPL frame, fixed by betas
        verts = np.stack([(o[0] - o[2][0]) @ S.T for o in outs[:-1]]).astype(np.float32)
        kps = np.stack([(o[1] - o[2][0]) @ S.T for o in outs[:-1]]).astype(np.float32)
        joints = np.stack([(o[2] - o[2][0]) @ S.T for o in outs[:-1]]).astype(np.float64)
        glob = np.zeros((T, len(SMPL_JOINTS), 3, 3))
        for j, parent in enumerate(SMPL_PARENTS):  # global joint rotations, SMPL frame
            glob[:, j] = rotations[:T, j] if parent < 0 else glob[:, parent] @ rotations[:T, j]
        sock_rot = np.stack([socket_rotation(S @ glob[:, j], S) for j in self.socket_joints], 1)
        sock_pos = joints[:, self.socket_joints]
        labels = [{"global_orient": p["global_orient"].tolist(), "body_pose": p["body_pose"].tolist(),
                   "pelvis_smpl": np.float32(pelvis[t]).tolist()} for t, p in enumerate(params[:-1])]
        rest_joints = (outs[-1][2] - outs[-1][2][0]) @ S.T
        return PosedFrames(verts, kps, joints, list(self.joint_names), sock_rot, sock_pos, labels,
                           ((outs[-1][0] - outs[-1][2][0]) @ S.T).astype(np.float32), rest_joints[self.socket_joints])

    def sequence_params(self, draw: dict[str, Any]) -> dict[str, Any]:
        return {"body_model": {"name": self.model.name, "version": self.model.version,
                               "gender": self.model.config.smpl_gender, "num_betas": self.model.num_betas},
                "betas": np.float32(draw["betas"]).tolist(), "has_betas": True}


# --- one simulated sequence ----------------------------------------------------------------------
@dataclass
class _Sequence:
    index: int
    motion: Motion
    posed: PosedFrames
    translation: np.ndarray        # (F, 3) pelvis world position per frame
    sub_posed: PosedFrames | None  # motion blur: (F * n) sub-frame bodies
    sub_translation: np.ndarray | None
    sub_steps: np.ndarray | None   # (F, n) track steps of the sub-frames
    scene: SceneMesh
    track: MountTrack
    frame_steps: np.ndarray        # (F,) track step of each frame
    imu: list[dict[str, np.ndarray] | None]
    mounts: list[dict[str, Any]]   # per mount: jittered offset/look, for the labels
    body_face_albedo: np.ndarray   # (F_body, 3) float32
    body_face_specular: np.ndarray
    light_world: np.ndarray        # (3,) unit, toward the light
    ambient: float
    gain: float
    noise_seed: int
    appearance: dict[str, Any]
    labels: dict[str, Any]         # sequence-level labels (the same in every frame)
    prompt: tuple[str, str] | None = None
    view_seeds: list[int] = field(default_factory=list)


# --- the factory ---------------------------------------------------------------------------------
class SequenceFactory:
    """Makes the frames of a sequence recipe in this process; run.generate uses it like
    :class:`synthgen.pipeline.SampleFactory` (``write_shards``, ``samples``).

    ``sequence``: the SequenceConfig when ``recipe`` has no ``sequence`` field (tests).
    ``loader_workers`` is accepted for API compatibility; the CPU stages run in this process.
    """

    def __init__(self, recipe: Recipe, device: str | None = None, loader_workers: int = 0,
                 cpu_only: bool = False, sequence: SequenceConfig | None = None):
        # 1. check inputs
        self.recipe = recipe
        self.config = sequence or sequence_config_of(recipe)
        if self.config is None:
            raise UserError("SequenceFactory needs a recipe with a `sequence:` section")
        if recipe.subject.kind != "human":
            raise UserError(f"sequence recipes need subject.kind=human (anny or smpl/smplh/smplx), "
                            f"got subject.kind={recipe.subject.kind}")
        self.hash = recipe_hash(recipe)
        self.width, self.height = recipe.image.width, recipe.image.height
        # 2. models, built once
        model = build_subject_model(recipe.subject)
        self.sockets = sorted({m.socket for m in self.config.rig.mounts})
        self.body = _AnnyFrames(model, self.sockets) if model.name == "anny" else _SmplFrames(model, self.sockets)
        self.subject_model = model
        self.part_names = list(model.part_names) + SCENE_PART_NAMES
        self.bank = MotionFileBank(self.config.motion.files) if self.config.motion.files else None
        self.lenses = [build_lens(m, self.width, self.height) for m in self.config.rig.mounts]
        self.rate = sim_rate(self.config.fps, self.config.imu.rate_hz, self.config.substep_hz)
        self.views = None if cpu_only else self._views(device)
        self.timing = {"input_wait": 0.0, "generate": 0.0, "simulate": 0.0}
        self._cache: OrderedDict[int, _Sequence] = OrderedDict()
        size, frames = recipe.output.shard_size, self.config.frames
        if size % frames and frames % size:
            log.info("output.shard_size=%d is not a multiple (or divisor) of sequence.frames=%d: shards "
                     "that start mid-sequence re-simulate it from frame 0", size, frames)

    def _views(self, device):
        kind = self.recipe.backend.kind
        if kind == "controlnet":
            return _ControlNetViews(self.recipe, device)
        return None

    @property
    def frames(self) -> int:
        return self.config.frames

    # 1. simulate a sequence (motion, body, rig, IMU, scene, materials) -------------------------
    def sequence(self, s: int) -> _Sequence:
        """Sequence ``s``, simulated from its frame 0 (cached: the last two)."""
        if s in self._cache:
            self._cache.move_to_end(s)
            return self._cache[s]
        start = time.perf_counter()
        seq = self._simulate(s)
        self.timing["simulate"] += time.perf_counter() - start
        self._cache[s] = seq
        while len(self._cache) > 2:
            self._cache.popitem(last=False)
        return seq

    def _simulate(self, s: int) -> _Sequence:
        cfg, seed = self.config, self.recipe.seed
        F, fps = cfg.frames, cfg.fps
        times = np.arange(F) / fps
        duration = float(times[-1])
        # motion and body
        draw = self.subject_model.draw(seed, s)
        motion = draw_motion(cfg.motion, self.bank, seed, s, duration)
        seat = next((p for p in motion.props if p.get("kind") == "seat"), None)
        pose_times = np.append(times, seat["at_s"]) if seat else times
        posed_all = self.body.pose(draw, motion.sample(pose_times))
        posed = _take(posed_all, slice(0, F))
        frame_motion = motion.sample(times)
        z = self._grounding(motion, posed, frame_motion, fps)
        translation = np.column_stack([frame_motion.root_position[:, :2], z])
        props, sit_shift = [], None
        if seat:
            seat_pose = _take(posed_all, slice(F, F + 1))
            seat_motion = motion.sample(np.array([seat["at_s"]]))
            sit_shift = self._sit_shift(seat, posed_all, seat_motion)
            translation[:, :2] += sit_shift(times)
            props.append(self._seat(seat, seat_pose, seat_motion, sit_shift(np.array([seat["at_s"]]))[0]))
        # motion blur sub-frames
        sub_posed = sub_translation = sub_steps = None
        n = cfg.motion_blur.subframes
        if n > 1:
            offsets = (np.arange(n) / (n - 1) - 0.5) * cfg.motion_blur.shutter / fps
            sub_times = np.clip(times[:, None] + offsets, 0.0, duration)
            sub_motion = motion.sample(sub_times.ravel())
            sub_posed = self.body.pose(draw, sub_motion)
            sub_translation = np.column_stack([sub_motion.root_position[:, :2], np.interp(sub_times.ravel(), times, z)])
            if sit_shift is not None:
                sub_translation[:, :2] += sit_shift(sub_times.ravel())
        # rig: socket x mount offset targets, then the mounts' tracks
        mounts, targets = self._targets(s, posed, translation)
        springs = [m.spring if m.spring is not None else cfg.rig.spring for m in cfg.rig.mounts]
        track = simulate_mounts(times, targets[..., :3, 3], targets[..., :3, :3], springs, self.rate)
        frame_steps = np.arange(F) * (self.rate // fps)
        if n > 1:
            sub_steps = track.step_of(sub_times)
        imu_rng = sample_rng(seed, s, "generate")
        imu = [imu_readings(track, m, cfg.imu, imu_rng) if mount.imu else None
               for m, mount in enumerate(cfg.rig.mounts)]
        # scene around the path
        scene = build_scene(cfg.scene, sample_rng(seed, s, "background"), translation[:, :2],
                            len(self.subject_model.part_names), props)
        # materials (fixed for the sequence), light fixed in the world
        app_rng = sample_rng(seed, s, "appearance")
        appearance = draw_appearance(app_rng, self.subject_model.part_names)
        az, el = app_rng.uniform(-np.pi, np.pi), np.radians(app_rng.uniform(35.0, 75.0))
        light = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        ambient, gain = float(app_rng.uniform(0.3, 0.5)), float(app_rng.uniform(0.9, 1.1))
        noise_seed = int(app_rng.integers(2**63))
        face_parts = self.subject_model.face_parts
        seq = _Sequence(
            index=s, motion=motion, posed=posed, translation=translation, sub_posed=sub_posed,
            sub_translation=sub_translation, sub_steps=sub_steps, scene=scene, track=track,
            frame_steps=frame_steps, imu=imu, mounts=mounts,
            body_face_albedo=appearance["albedo"].astype(np.float32)[face_parts],
            body_face_specular=appearance["specular"].astype(np.float32)[face_parts],
            light_world=light, ambient=ambient, gain=gain, noise_seed=noise_seed,
            appearance=appearance["summary"] | {"light_dir_world": np.round(light, 4).tolist(),
                                                "ambient": round(ambient, 4), "gain": round(gain, 4)},
            labels={})
        seq.labels = self._sequence_labels(seq, draw)
        if self.views is not None:
            self.views.prepare_sequence(seq, self, draw)
        return seq

    @staticmethod
    def _grounding(motion: Motion, posed: PosedFrames, frames: Motion, fps: int) -> np.ndarray:
        """(F,) pelvis height per frame: lowest vertex on z = 0, smoothed (Gaussian, sd 65 ms: feet
        then touch the floor within ~1-2 cm, and the pelvis's vertical acceleration stays human,
        a few m/s^2, without kinks where the supporting foot changes), or frame 0 on the floor
        plus the file's vertical root motion."""
        lowest = posed.vertices[..., 2].min(axis=1).astype(np.float64)
        if motion.grounding == "first_frame":
            return -lowest[0] + frames.root_position[:, 2]
        z = -lowest
        sigma = 0.065 * fps
        return gaussian_filter1d(z, sigma, mode="nearest") if sigma >= 0.5 and len(z) > 2 else z

    def _sit_shift(self, prop: dict[str, Any], posed_all: PosedFrames, at: Motion) -> Callable:
        """Horizontal pelvis shift over time that keeps the feet in place while sitting down.

        The seated pose (last posed frame) has its ankles ahead of the pelvis; the pelvis moves
        back by that distance (beyond frame 0's) along a smoothstep from ``from_s`` to ``at_s``.
        """
        names = self.subject_model.keypoint_names
        ankles = [names.index("left_ankle"), names.index("right_ankle")]
        yaw = heading_of(at.root_rotation[0])
        forward = np.array([np.sin(yaw), -np.cos(yaw)])
        seated = float(posed_all.keypoints[-1, ankles, :2].mean(axis=0) @ forward)
        standing = float(posed_all.keypoints[0, ankles, :2].mean(axis=0) @ forward)
        distance = max(seated - standing, 0.0)
        t0, t1 = float(prop.get("from_s", 0.0)), float(prop["at_s"])

        def shift(t: np.ndarray) -> np.ndarray:
            x = np.clip((np.asarray(t, dtype=np.float64) - t0) / max(t1 - t0, 1e-6), 0.0, 1.0)
            return -(x * x * (3 - 2 * x) * distance)[:, None] * forward

        return shift

    def _seat(self, prop: dict[str, Any], posed: PosedFrames, at: Motion, shift: np.ndarray) -> dict[str, Any]:
        """A seat under the body posed sitting: top at its buttocks, centred under its pelvis."""
        v = posed.vertices[0].astype(np.float64)
        lift = -v[:, 2].min()  # that frame grounded on its own
        near = np.hypot(v[:, 0], v[:, 1]) < 0.15
        top = float(v[near, 2].min() + lift) if near.any() else 0.45
        yaw = heading_of(at.root_rotation[0])
        back = np.array([-np.sin(yaw), np.cos(yaw)])  # behind a body facing Rz(yaw) (0, -1, 0)
        centre = at.root_position[0, :2] + shift + 0.06 * back
        return {"kind": "seat", "centre": centre.tolist(), "top": max(top, 0.2), "yaw": yaw,
                "size": prop.get("size", [0.48, 0.46])}

    def _targets(self, s: int, posed: PosedFrames, translation: np.ndarray) -> tuple[list[dict], np.ndarray]:
        """Per-mount jittered offsets and the (F, M, 4, 4) target camera-to-world poses."""
        rig = self.config.rig
        rng = sample_rng(self.recipe.seed, s, "camera")
        F = len(translation)
        targets = np.zeros((F, len(rig.mounts), 4, 4))
        mounts = []
        for m, mount in enumerate(rig.mounts):
            offset = np.asarray(mount.offset_m) + rng.uniform(-1, 1, 3) * rig.offset_jitter_m
            look = np.asarray(mount.look_deg) + rng.uniform(-1, 1, 3) * rig.look_jitter_deg
            k = self.sockets.index(mount.socket)
            if mount.standoff_m is not None:  # measured on the rest T-pose: the same for any motion
                offset = _standoff(offset, mount.standoff_m, posed.rest_vertices, SMPL_TO_WORLD,
                                   posed.rest_socket_position[k])
            cam_in_socket = mount_offset(offset, look)
            socket = np.tile(np.eye(4), (F, 1, 1))
            socket[:, :3, :3] = posed.socket_rotation[:, k]
            socket[:, :3, 3] = posed.socket_position[:, k] + translation
            targets[:, m] = socket @ cam_in_socket
            mounts.append({"offset_m": np.round(offset, 6).tolist(), "look_deg": np.round(look, 6).tolist(),
                           "cam_in_socket": cam_in_socket.tolist()})
        return mounts, targets

    def _sequence_labels(self, seq: _Sequence, draw: dict[str, Any]) -> dict[str, Any]:
        cfg = self.config
        rig = []
        for m, (mount, lens) in enumerate(zip(cfg.rig.mounts, self.lenses)):
            spring = mount.spring if mount.spring is not None else cfg.rig.spring
            bone = SOCKET_BONES[self.body.family][mount.socket]
            rig.append({"key": f"cam{m}", "name": mount.name, "socket": mount.socket, "bone": bone,
                        "offset_m": seq.mounts[m]["offset_m"], "look_deg": seq.mounts[m]["look_deg"],
                        "cam_in_socket": seq.mounts[m]["cam_in_socket"], "fov_deg": mount.fov_deg,
                        "cam_int": lens.K.tolist(), "distortion": lens.labels(),
                        "spring": spring.model_dump() if spring.enabled else None, "imu": mount.imu})
        return {
            "id": seq.index, "frames": cfg.frames, "fps": cfg.fps, "motion": seq.motion.info,
            "rig": rig, "scene": seq.scene.description, "integration_rate_hz": self.rate,
            "imu": cfg.imu.model_dump(), "appearance": seq.appearance,
            "body": {"kind": "human", "model": self.subject_model.name} | self.body.sequence_params(draw),
        }

    # 2.-3. render and label one frame ---------------------------------------------------------
    def prepare(self, index: int) -> dict[str, Any]:
        """Frame ``index``: every camera's layers (and shaded image), and the labels."""
        F = self.config.frames
        s, f = divmod(index, F)
        seq = self.sequence(s)
        sample: dict[str, Any] = {"index": index, "seed": sample_seed(self.recipe.seed, index),
                                  "sequence": s, "frame": f, "views": []}
        world_verts = seq.posed.vertices[f] + seq.translation[f].astype(np.float32)
        world_kp = seq.posed.keypoints[f].astype(np.float64) + seq.translation[f]
        for m, lens in enumerate(self.lenses):
            step = int(seq.frame_steps[f])
            c2w = seq.track.pose(step, m)
            view = self._render_view(seq, lens, c2w, world_verts, shade=self.recipe.backend.kind == "shaded")
            if self.recipe.backend.kind == "shaded":
                view["image_float"] = self._blurred(seq, f, m, lens, view["image_float"])
                view["image"] = self._finish_image(seq, f, m, lens, view.pop("image_float"))
            self._keypoints(view, lens, world_kp)
            view["imu"] = self._imu_window(seq, m, f)
            sample["views"].append(view)
        sample["labels"] = self._labels(seq, sample, world_kp)
        sample["world_vertices"] = world_verts
        return sample

    def _render_view(self, seq: _Sequence, lens: Lens, c2w: np.ndarray, world_verts: np.ndarray,
                     shade: bool) -> dict[str, Any]:
        r = self.recipe
        R, t = c2w[:3, :3].T, -c2w[:3, :3].T @ c2w[:3, 3]
        K, (w, h) = (lens.render_K, lens.render_size) if lens.remaps else (lens.K, (lens.width, lens.height))
        body = (world_verts @ R.T.astype(np.float32) + t.astype(np.float32)).astype(np.float32)
        faces, scene = self.subject_model.faces, seq.scene
        # one mesh, body first, clipped at the near plane (a camera 2 cm off the skin or the floor
        # would otherwise lose every triangle that reaches behind it)
        verts = np.concatenate([body.astype(np.float64), scene.vertices @ R.T + t])
        verts, all_faces, src = clip_near(verts, np.concatenate([faces.astype(np.int64), scene.faces + len(body)]))
        parts = np.concatenate([self.subject_model.face_parts, scene.face_part])[src]
        instance = np.concatenate([np.full(len(faces), BODY_INSTANCE, np.uint8), scene.face_instance])[src]
        verts = verts.astype(np.float32)
        layers = render_layers(verts, all_faces, parts, K, w, h, r.render.backend,
                               (r.render.canny_low, r.render.canny_high), r.render.normal_convention)
        tri = layers["triangle_id"]
        covered = tri >= 0
        layers["instance"] = np.where(covered, instance[np.maximum(tri, 0)], 0).astype(np.uint8)
        view: dict[str, Any] = {"cam_to_world": c2w, "R": R, "t": t, "layers": layers}
        if shade:
            albedo = np.concatenate([seq.body_face_albedo, scene.instance_albedo[scene.face_instance]])[src]
            spec = np.concatenate([seq.body_face_specular, np.full(len(scene.faces), 0.05, np.float32)])[src]
            view["image_float"] = _shade(layers, albedo, spec, instance, scene, seq, R, t, K)
        if lens.remaps:
            view["layers"] = self._remap_layers(layers, lens)
            if shade:
                view["image_float"] = cv2.remap(view["image_float"], lens.map_x, lens.map_y, cv2.INTER_LINEAR,
                                                borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        layers = view["layers"]
        layers["mask"] = (layers["instance"] == BODY_INSTANCE).astype(np.uint8) * 255
        return view

    def _remap_layers(self, layers: dict[str, np.ndarray], lens: Lens) -> dict[str, np.ndarray]:
        """Pinhole render -> fisheye image (nearest for ids, depth and normals; 0 outside the field)."""
        r = self.recipe

        def near(a):
            return cv2.remap(a, lens.map_x, lens.map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=0)

        tri = near(layers["triangle_id"].astype(np.float32) + 1.0).astype(np.int64) - 1  # exact below 2**24
        depth, normal = near(layers["depth"]), near(layers["normal"])
        covered = tri >= 0
        normal_rgb = layer_ops.encode_normal(normal, covered, r.render.normal_convention)
        return {"normal": normal, "normal_rgb": normal_rgb, "depth": depth,
                "depth_mm": layer_ops.depth_to_millimetres(depth),
                "depth_control": layer_ops.depth_for_control(depth, covered),
                "parts": near(layers["parts"]), "instance": near(layers["instance"]),
                "edges": layer_ops.canny_edges(normal_rgb, r.render.canny_low, r.render.canny_high),
                "triangle_id": tri.astype(np.int32)}

    def _blurred(self, seq: _Sequence, f: int, m: int, lens: Lens, image: np.ndarray) -> np.ndarray:
        """Mean of the sub-frame renders (the frame's own render is replaced by them)."""
        if seq.sub_posed is None:
            return image
        n = seq.sub_steps.shape[1]
        acc = np.zeros_like(image)
        for j in range(n):
            k = f * n + j
            verts = seq.sub_posed.vertices[k] + seq.sub_translation[k].astype(np.float32)
            view = self._render_view(seq, lens, seq.track.pose(int(seq.sub_steps[f, j]), m), verts, shade=True)
            acc += view["image_float"]
        return acc / n

    def _finish_image(self, seq: _Sequence, f: int, m: int, lens: Lens, image: np.ndarray) -> np.ndarray:
        """Float RGB in [0, ~1] -> uint8 with the sequence's gain and per-frame sensor noise."""
        rng = np.random.default_rng([seq.noise_seed, f, m])
        noise = rng.standard_normal(image.shape[:2] + (1,), dtype=np.float32) * np.float32(2.0)
        out = image * np.float32(seq.gain * 255.0) + noise
        if lens.valid is not None:
            out[~lens.valid] = 0.0
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)

    def _keypoints(self, view: dict[str, Any], lens: Lens, world_kp: np.ndarray) -> None:
        layers = view["layers"]
        kp3d = (world_kp @ view["R"].T + view["t"]).astype(np.float32)
        uv = lens.project(kp3d)
        finite = np.isfinite(uv).all(axis=1)
        uv[~finite] = 0.0  # a keypoint exactly in the camera's plane (never in practice)
        vis = layer_ops.keypoint_visibility(uv, kp3d[:, 2], layers["parts"], layers["depth"],
                                            self.subject_model.keypoint_parts)
        vis[~lens.in_field(kp3d) | ~finite] = 0
        kp2d = np.concatenate([uv, vis[:, None]], axis=1)
        layers["skeleton"] = layer_ops.draw_skeleton(kp2d, self.subject_model.keypoint_names, lens.width,
                                                     lens.height)
        view.update(keypoints_3d=kp3d, keypoints_2d=kp2d)

    def _imu_window(self, seq: _Sequence, m: int, f: int) -> dict[str, list] | None:
        """Mount m's IMU samples with t in (t_{f-1}, t_f] (frame 0: the sample at t = 0)."""
        imu = seq.imu[m]
        if imu is None:
            return None
        per = self.config.imu.rate_hz / self.config.fps
        hi = int(np.floor(f * per + 1e-9))
        lo = 0 if f == 0 else int(np.floor((f - 1) * per + 1e-9)) + 1
        sl = slice(lo, hi + 1)
        return {"t": np.round(imu["t"][sl], 9).tolist(),
                **{k: np.float32(imu[k][sl]).tolist() for k in ("accel", "gyro", "accel_true", "gyro_true")}}

    def _labels(self, seq: _Sequence, sample: dict[str, Any], world_kp: np.ndarray) -> dict[str, Any]:
        f = sample["frame"]
        posed = seq.posed
        cameras = {}
        for m, (view, lens) in enumerate(zip(sample["views"], self.lenses)):
            k = self.sockets.index(self.config.rig.mounts[m].socket)
            socket = np.eye(4)
            socket[:3, :3] = posed.socket_rotation[f, k]
            socket[:3, 3] = posed.socket_position[f, k] + seq.translation[f]
            ext = np.eye(4)
            ext[:3, :3], ext[:3, 3] = view["R"], view["t"]
            mask = view["layers"]["mask"] > 0
            cameras[f"cam{m}"] = {
                "name": self.config.rig.mounts[m].name, "cam_int": lens.K.tolist(), "distortion": lens.labels(),
                "image_size": [lens.width, lens.height], "cam_ext": ext.tolist(),
                "cam_to_world": view["cam_to_world"].tolist(), "socket_to_world": socket.tolist(),
                "keypoints_3d": view["keypoints_3d"].tolist(), "keypoints_2d": view["keypoints_2d"].tolist(),
                "bbox": _bbox(mask), "body_pixels": int(mask.sum()),
            }
            if view["imu"] is not None:
                cameras[f"cam{m}"]["imu"] = view["imu"]
        translation = seq.translation[f]
        body = dict(posed.params[f])
        if self.body.family == "anny":
            root = np.eye(4)
            root[:3, :3] = np.asarray(body.pop("root_rotation"))
            root[:3, 3] = translation
            body["root_transform"] = np.float32(root).tolist()
        else:  # smplx(betas, global_orient, body_pose) + transl, then SMPL_TO_WORLD, is the world body
            pelvis = np.asarray(body.pop("pelvis_smpl"), dtype=np.float64)
            body["transl"] = np.float32(SMPL_TO_WORLD.T @ translation - pelvis).tolist()
        body |= {"has_body_pose": True, "pelvis_world": np.float32(translation).tolist(),
                 "joints_world": np.float32(posed.joints[f] + translation).tolist(),
                 "keypoints_3d_world": np.float32(world_kp).tolist()}
        return {
            "index": sample["index"], "seed": sample["seed"], "recipe_hash": self.hash,
            "frame": f, "time_s": f / self.config.fps, "sequence": seq.labels,
            "image_size": [self.width, self.height], "cameras": cameras, "body": body,
            "keypoint_names": self.subject_model.keypoint_names, "joint_names": posed.joint_names,
            "part_names": self.part_names,
            "conventions": {"camera": "opencv", "world": "z_up_metres_ground_z0", "gravity": "-z",
                            "depth": "z_mm_uint16_0_is_background", "normal": self.recipe.render.normal_convention,
                            "pixel_centre": "integer", "visibility": "coco_0_1_2",
                            "imu_frame": "camera (opencv axes); accel = specific force incl. gravity, m/s^2; "
                                         "gyro = rad/s; samples with t in (t_prev_frame, t_frame]",
                            "mask": "body only (instance 1)", "instance": "0 none, 1 body, 2+ sequence.scene.instances"},
        }

    # 4. images (ControlNet) and the sample stream ---------------------------------------------
    def finish(self, batch: list[dict[str, Any]]) -> None:
        """Images for a batch of prepared frames (shaded images were made in prepare)."""
        ok = [s for s in batch if "error" not in s]
        if self.views is not None and ok:
            self.views.generate(ok, self)
        for sample in ok:
            if self.recipe.backend.kind == "none":
                for view in sample["views"]:
                    view["image"] = None

    def prepared(self, indices: list[int]) -> Iterator[dict[str, Any]]:
        for index in indices:
            try:
                with label_threads():
                    sample = self.prepare(index)
            except (UserError, KeyboardInterrupt):
                raise
            except Exception as exc:  # one bad frame must not stop the run
                log.exception("frame %d failed", index)
                sample = {"index": index, "error": f"{type(exc).__name__}: {exc}"}
            yield sample

    def samples(self, indices: list[int], keep_errors: bool = False) -> Iterator[dict[str, Any]]:
        """Finished frames in the order of ``indices`` (sequences simulated as needed)."""
        per_batch = 1 if self.views is None else max(1, self.views.batch_size // len(self.lenses))
        from synthgen.pipeline import finish_batches

        stream = self.prepared(list(indices))
        batches = iter(lambda: [s for _, s in zip(range(per_batch), stream)], [])
        yield from finish_batches(self, batches, keep_errors)

    # 5. encode and write ----------------------------------------------------------------------
    def encode(self, sample: dict[str, Any]) -> dict[str, Any]:
        out = self.recipe.output
        record = {"__key__": f"{sample['index']:09d}", "json": write.encode_json(sample["labels"])}
        for m, view in enumerate(sample["views"]):
            if view.get("image") is not None:
                record[f"cam{m}.jpg"] = write.encode_jpg(view["image"], out.jpeg_quality)
            for name in out.layers:
                record[f"cam{m}.{name}.png"] = write.encode_png(view["layers"][LAYER_KEYS[name]])
            if self.config.instance_layer:
                record[f"cam{m}.instance.png"] = write.encode_png(view["layers"]["instance"])
        if out.vertices:
            record["npz"] = write.encode_npz({"vertices_world": sample["world_vertices"].astype(np.float32),
                                              "faces": self.subject_model.faces})
        return record

    def write_shards(self, out_dir: Path, tasks: list[write.ShardTask],
                     on_sample: Callable[[], None] | None = None,
                     errors_before: Callable[[], int] = lambda: 0) -> list[dict[str, Any]]:
        """Make and write whole shards (same contract as SampleFactory.write_shards)."""
        from synthgen.pipeline import write_shards

        return write_shards(self, out_dir, tasks, on_sample, errors_before)


# --- helpers ---------------------------------------------------------------------------------------
def _take(posed: PosedFrames, sl: slice) -> PosedFrames:
    return PosedFrames(posed.vertices[sl], posed.keypoints[sl], posed.joints[sl], posed.joint_names,
                       posed.socket_rotation[sl], posed.socket_position[sl], posed.params[sl],
                       posed.rest_vertices, posed.rest_socket_position)


def _standoff(offset: np.ndarray, standoff: float, vertices: np.ndarray, rotation: np.ndarray,
              position: np.ndarray, radius: float = 0.04, reach: float = 0.5) -> np.ndarray:
    """``offset`` rescaled so the camera sits ``standoff`` m outside the skin along its direction.

    The skin is the farthest vertex within ``radius`` of the ray from the joint centre along
    ``offset`` (and within ``reach`` of the joint); vertices (V, 3) and the socket pose are the
    same frame's, world axes.
    """
    norm = float(np.linalg.norm(offset))
    if norm < 1e-9:
        return offset
    d = offset / norm
    local = (vertices.astype(np.float64) - position) @ rotation  # socket frame
    along = local @ d
    near = (np.linalg.norm(local - along[:, None] * d, axis=1) < radius) & (along > 0) & (along < reach)
    skin = float(along[near].max()) if near.any() else 0.0
    return d * (skin + standoff)


def _bbox(mask: np.ndarray) -> list[float]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    x0, y0 = cols[0] - 0.5, rows[0] - 0.5
    return [float(x0), float(y0), float(cols[-1] + 0.5 - x0), float(rows[-1] + 0.5 - y0)]


def _shade(layers: dict, face_albedo: np.ndarray, face_spec: np.ndarray, face_instance: np.ndarray,
           scene: SceneMesh, seq: _Sequence, R: np.ndarray, t: np.ndarray, K: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 linear-ish RGB of one pinhole render: Lambert + Blinn-Phong under the
    sequence's world-fixed light, floor tiles in world coordinates, sky where nothing was hit."""
    tri = layers["triangle_id"]
    covered = tri >= 0
    ids = np.where(covered, tri, 0)
    n = layers["normal"]
    light = (R @ seq.light_world).astype(np.float32)
    half = light + np.float32([0.0, 0.0, -1.0])
    half /= np.linalg.norm(half)
    albedo = face_albedo.astype(np.float32, copy=False)[ids]
    h, w = tri.shape
    dirs = _pixel_directions(K.tobytes(), w, h)  # (H, W, 3) K^-1 [u, v, 1]
    if scene.checker:  # back-project the tiled floors' pixels to the world for the pattern
        sizes = np.zeros(256, np.float32)
        sizes[list(scene.checker)] = 1.0 / np.asarray(list(scene.checker.values()), dtype=np.float32)
        inv_tile = sizes[face_instance[ids]]
        flat = np.flatnonzero(covered & (inv_tile > 0))
        if len(flat):
            cam = dirs.reshape(-1, 3)[flat] * layers["depth"].reshape(-1)[flat][:, None]
            Rxy = R[:, :2].astype(np.float32)
            world = (cam @ Rxy - (t @ R[:, :2]).astype(np.float32)) * inv_tile.reshape(-1)[flat][:, None]
            cell = np.floor(world)
            frac = np.abs(world - cell - np.float32(0.5))
            parity = (cell[:, 0] + cell[:, 1]) % 2
            factor = np.where(parity > 0, np.float32(1.08), np.float32(0.92))
            factor[(frac > 0.485).any(axis=1)] = 0.7  # grout lines
            albedo.reshape(-1, 3)[flat] *= factor[:, None]
    nx, ny, nz = n[..., 0], n[..., 1], n[..., 2]
    diffuse = np.maximum(nx * light[0] + ny * light[1] + nz * light[2], 0.0)
    spec = nx * half[0] + ny * half[1] + nz * half[2]
    spec[spec < 0.5] = 0.0  # 0.5 ** 32 ~ 2e-10: zero it before squaring (no denormals)
    for _ in range(5):  # ** 32
        spec *= spec
    shading = np.float32(seq.ambient) + np.float32(1.0 - seq.ambient) * diffuse
    out = albedo * shading[..., None] + (spec * face_spec.astype(np.float32, copy=False)[ids])[..., None]
    out[~covered] = 0.0
    if scene.sky is not None and not covered.all():  # sky gradient by ray elevation
        empty = ~covered
        rays = dirs[empty]
        up = np.sqrt(np.clip((rays @ R[:, 2].astype(np.float32)) / np.sqrt((rays * rays).sum(axis=1)), 0.0, 1.0))
        horizon, zenith = (np.asarray(c, dtype=np.float32) for c in scene.sky)
        out[empty] = horizon + up[:, None] * (zenith - horizon)
    return out


@functools.lru_cache(maxsize=16)
def _pixel_directions(K_bytes: bytes, width: int, height: int) -> np.ndarray:
    """(H, W, 3) float32 K^-1 [c, r, 1] of every pixel centre (cached per camera)."""
    K = np.frombuffer(K_bytes, dtype=np.float64).reshape(3, 3)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    pix = np.stack([cols, rows, np.ones_like(cols)], axis=-1) @ np.linalg.inv(K).T
    out = pix.astype(np.float32)
    out.flags.writeable = False
    return out


class _ControlNetViews:
    """ControlNet images for sequences: every camera of a sequence shares one prompt (drawn once
    per sequence from the "prompt" stream, describing the body at frame 0) and each camera keeps
    one seed for the whole sequence, so identity and style stay put as far as the model allows.

    What still flickers: diffusion has no temporal coupling, so with a fixed seed and prompt the
    texture, lighting and background details still change from frame to frame as the control
    images move (strongest on cloth folds, hair and the background; identity drifts less).
    """

    def __init__(self, recipe: Recipe, device):
        from synthgen.generate.controlnet import ControlNetBackend
        from synthgen.prompt import PromptBuilder

        config = recipe.backend.controlnet
        if device is not None and config.device == "auto":
            config = config.model_copy(update={"device": "cuda" if str(device).startswith("cuda") else "cpu"})
        self.config = config
        self.pipeline = ControlNetBackend(config, recipe.image.width, recipe.image.height)
        self.prompter = PromptBuilder(recipe.prompt)
        self.batch_size = config.batch_size

    def prepare_sequence(self, seq: _Sequence, factory: SequenceFactory, draw: dict[str, Any]) -> None:
        from synthgen.subjects.base import PosedSubject

        r = factory.recipe
        params = {"age_years": draw.get("age_years"), "phenotype": draw.get("phenotype")}
        if "betas" in draw:
            params = {"body_model": {"gender": r.subject.smpl_gender}}
        subject = PosedSubject(vertices=seq.posed.vertices[0], keypoints_3d=seq.posed.keypoints[0], params=params)
        rng = sample_rng(r.seed, seq.index, "prompt")
        seq.prompt = self.prompter.build({"subject": subject, "labels": {}}, rng)
        seq.view_seeds = [int(v) for v in rng.integers(0, 2**63, size=len(factory.lenses))]
        seq.labels["prompt"] = {"prompt": seq.prompt[0], "negative_prompt": seq.prompt[1],
                                "seeds": seq.view_seeds}

    def generate(self, samples: list[dict[str, Any]], factory: SequenceFactory) -> None:
        views = []
        for sample in samples:
            seq = factory.sequence(sample["sequence"])
            for m, view in enumerate(sample["views"]):
                views.append({"layers": view["layers"], "prompt": seq.prompt[0], "negative_prompt": seq.prompt[1],
                              "seed": seq.view_seeds[m]})
        images = iter(self.pipeline.generate(views))
        for sample in samples:
            for m, view in enumerate(sample["views"]):
                image = next(images)
                lens = factory.lenses[m]
                if lens.valid is not None:
                    image = image.copy()
                    image[~lens.valid] = 0
                view["image"] = image


# --- reading and looking -------------------------------------------------------------------------
def frame_cameras(raw: dict[str, Any]) -> dict[str, Any]:
    """A decoded shard sample -> {"labels", "cameras": {"cam0": {"image", "depth" (metres),
    "mask" (bool), other layers, and that camera's labels with arrays as float32}}}."""
    labels = raw["json"]
    cameras: dict[str, dict[str, Any]] = {k: dict(v) for k, v in labels["cameras"].items()}
    for key, value in raw.items():
        if not key.startswith("cam") or "." not in key:
            continue
        cam, _, rest = key.partition(".")
        name = rest.rsplit(".", 1)[0] if rest.count(".") else "image"
        cameras.setdefault(cam, {})[name] = value
    for cam in cameras.values():
        if "depth" in cam and isinstance(cam["depth"], np.ndarray):
            cam["depth"] = cam["depth"].astype(np.float32) / 1000.0
        if "mask" in cam and isinstance(cam["mask"], np.ndarray):
            cam["mask"] = cam["mask"] > 0
        for name in ("cam_int", "cam_ext", "cam_to_world", "keypoints_2d", "keypoints_3d", "bbox"):
            if name in cam:
                cam[name] = np.asarray(cam[name], dtype=np.float32)
    return {"__key__": raw["__key__"], "labels": labels, "cameras": cameras}


def load_sequence_shards(dataset: str | Path, split_by_node: bool = True):
    """A webdataset pipeline over a sequence dataset's shards yielding :func:`frame_cameras`
    dicts, in frame order (no shuffling: frames of a sequence stay together)."""
    import webdataset as wds

    from synthgen.data import _decode_image, shard_paths

    urls = shard_paths(dataset)
    pipeline = wds.WebDataset(urls, shardshuffle=False, empty_check=False,
                              nodesplitter=wds.split_by_node if split_by_node else wds.single_node_only)
    return pipeline.decode(_decode_image).map(frame_cameras)


def contact_sheet(samples: list[dict[str, Any]], tile: int = 192, overlay: bool = True) -> np.ndarray:
    """(rows = frames, columns = cameras) grid of the images (or normals without images), with the
    body's keypoints drawn (filled = visible, ring = hidden) and camera names on top."""
    if not samples:
        raise ValueError("contact_sheet needs at least one sample")
    names = [c["name"] for c in samples[0]["labels"]["cameras"].values()]
    header = np.full((24, tile * len(names) + 90, 3), 255, np.uint8)
    for c, name in enumerate(names):
        cv2.putText(header, name, (90 + c * tile + 6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    rows = [header]
    for sample in samples:
        tiles = []
        for m, view in enumerate(sample["views"]):
            image = view.get("image")
            image = view["layers"]["normal_rgb"] if image is None else image
            image = image.copy()
            if overlay:
                mask = view["layers"]["mask"] > 0
                edge = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
                image[edge] = (0, 255, 255)
                for u, v, vis in view["keypoints_2d"]:
                    if vis > 0:
                        cv2.circle(image, (int(round(u)), int(round(v))), 3, (255, 0, 0) if vis == 2 else (255, 255, 255),
                                   -1 if vis == 2 else 1)
            tiles.append(cv2.resize(image, (tile, tile), interpolation=cv2.INTER_AREA))
        label = np.full((tile, 90, 3), 255, np.uint8)
        labels = sample["labels"]
        for k, text in enumerate([f"seq {labels['sequence']['id']}", f"frame {labels['frame']}",
                                  f"{labels['time_s']:.2f} s", labels["sequence"]["motion"].get("name", "")]):
            cv2.putText(label, str(text), (4, 20 + 18 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        rows.append(np.concatenate([label] + tiles, axis=1))
    return np.concatenate(rows, axis=0)


# --- recipes and dispatch ------------------------------------------------------------------------
def factory_class(recipe: Recipe) -> type:
    """The factory that makes ``recipe``'s samples: SequenceFactory when it has a ``sequence:``
    section, else :class:`synthgen.pipeline.SampleFactory` (what run.py should construct)."""
    if sequence_config_of(recipe) is not None:
        return SequenceFactory
    from synthgen.pipeline import SampleFactory

    return SampleFactory


def load_sequence_recipe(source: str | Path | dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """A recipe with a ``sequence:`` section, from a YAML path or a dict, with dotted overrides.

    Once ``Recipe`` has its ``sequence`` field this is ``load_recipe``/``recipe_from_dict``;
    before that it validates the same data against a ``Recipe`` subclass that adds the field.
    """
    from synthgen import recipe as recipe_module

    if "sequence" in Recipe.model_fields:
        if isinstance(source, dict):
            return recipe_module.recipe_from_dict(source, overrides)
        return recipe_module.load_recipe(source, overrides)
    import yaml
    from omegaconf import OmegaConf
    from pydantic import ValidationError

    data = source if isinstance(source, dict) else yaml.safe_load(Path(source).read_text()) or {}
    merged = OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(data), OmegaConf.from_dotlist(list(overrides))),
                                    resolve=True)
    try:
        return _RecipeWithSequence.model_validate(merged)
    except ValidationError as exc:
        raise recipe_module.RecipeError(recipe_module._format_error(exc)) from None


class _RecipeWithSequence(Recipe):
    sequence: SequenceConfig | None = None
