# Over 500 lines: one factory, the sequence pipeline read top to bottom (motion, body, rig, IMU, scene, views).
"""Sequences seen by body-worn cameras (EgoSim-style): motion -> body -> rig -> IMU -> scene ->
per-frame, per-camera layers and images -> one WebDataset sample per frame.

Indexing: global sample ``i`` is frame ``f = i % F`` of sequence ``s = i // F`` (F =
``sequence.frames``). Every random draw of sequence ``s`` comes from the synthgen.seeding
streams of (recipe seed, s), so a frame is the same whatever the split, worker or resume; a
shard that starts mid-sequence re-simulates the sequence from frame 0 (posing all F frames and
integrating the mounts: about a second for 64 frames, less than rendering one frame's views).

Streams of (seed, s): "shape" body shape; "pose" motion choice/speed/style; "placement" heading;
"camera" rig jitter; "background" scene; "appearance" materials, light and the per-frame sensor
noise seed; "imu_noise" IMU noise; "prompt" the ControlNet prompt, then its per-camera seeds.

Per frame :meth:`SequenceFactory.prepare` renders every camera in one pass over body + scene:

1. cameras: the mount track's pose at the frame (spring-integrated or rigid);
2. render: body and near-clipped scene concatenated, rasterised once per camera (pinhole, or a
   wider pinhole remapped through the fisheye lens);
3. labels: per camera ``cam_int``, lens, ``cam_ext``/``cam_to_world``, the body's
   ``keypoints_3d`` in that camera and ``keypoints_2d`` with COCO visibility; per frame the
   body's pose parameters and world joints and each mount's IMU samples in (t_prev, t];
4. image: the shaded backend (materials fixed per sequence, light fixed in the world) or a
   ControlNet (one prompt per sequence and one seed per sequence and camera; see
   :class:`.views.ControlNetViews` for the flicker that remains).

Shard records: ``json`` (labels: per camera a view record of :mod:`synthgen.labels` under
``views.camk``) and, for camera k, ``camk.jpg``, ``camk.<layer>.png`` (the recipe's
``output.layers``) and ``camk.instance.png``. :func:`synthgen.data.load_shards` reads them.
"""


from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from synthgen import encode
from synthgen.errors import UserError
from synthgen.generate.materials import choose_materials
from synthgen.generate.shaded import draw_appearance
from synthgen.labels import instance_record, view_record
from synthgen.recipe import Recipe, recipe_hash
from synthgen.render import layers as layer_ops
from synthgen.render import derive_layers, render_layers
from synthgen.render.shadow import draw_sun
from synthgen.seeding import label_threads, sample_rng, sample_seed
from synthgen.sequences.bodies import (PosedFrames, frames_model, ground_heights, seat_under, sitting_shift,
                                       take_frames)
from synthgen.sequences.imu import imu_readings
from synthgen.sequences.motion import Motion, MotionFileBank, draw_motion
from synthgen.sequences.rigs import (SOCKET_BONES, Lens, MountTrack, build_lens, mount_offset, sim_rate,
                                     simulate_mounts, standoff_offset)
from synthgen.scene import scene_ambient
from synthgen.sequences.scene import BODY_INSTANCE, SCENE_PART_NAMES, SceneMesh, build_scene, clip_near
from synthgen.sequences.shading import shade_view
from synthgen.sequences.views import ControlNetViews, sequence_prompt
from synthgen.subjects import build_subject_model
from synthgen.subjects.base import SMPL_TO_WORLD

log = logging.getLogger(__name__)

SEQUENCE_CHUNK = 8

__all__ = ["SequenceFactory"]


@dataclass
class Sequence:
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
    sun_world: np.ndarray          # (3,) unit, toward the sun (render.shadow.draw_sun)
    ambient: float                 # sky ambient as drawn (scene.world_light raises a room's)
    material_seed: int             # the scene's materials (generate.materials), the same every frame
    gain: float
    noise_seed: int
    appearance: dict[str, Any]
    labels: dict[str, Any]         # sequence-level labels (the same in every frame)
    prompt: dict[str, Any] | None = None   # views.sequence_prompt: prompt, negative prompt, seeds


class SequenceFactory:
    """Makes the frames of a sequence recipe in this process (an engine Factory: see
    :mod:`synthgen.engine.contract`). ``cpu_only`` builds what :meth:`prepared` needs."""

    @staticmethod
    def uses_device(recipe: Recipe) -> bool:
        """Whether :meth:`finish` runs on the device (ControlNet views) rather than the CPU."""
        return recipe.backend.kind == "controlnet"

    def __init__(self, recipe: Recipe, device: str | None = None, cpu_only: bool = False):
        # 1. check inputs
        self.recipe = recipe
        self.config = recipe.sequence
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
        self.body = frames_model(model, self.sockets)
        self.subject_model = model
        self.part_names = list(model.part_names) + SCENE_PART_NAMES
        self.bank = MotionFileBank(self.config.motion.files) if self.config.motion.files else None
        self.lenses = [build_lens(m, self.width, self.height) for m in self.config.rig.mounts]
        self.rate = sim_rate(self.config.fps, self.config.imu.rate_hz, self.config.substep_hz)
        self.prompter = self._prompter()
        self.views = None if cpu_only or recipe.backend.kind != "controlnet" else ControlNetViews(recipe, device)
        self.timing = {"input_wait": 0.0, "device": 0.0, "simulate": 0.0}
        self._cache: OrderedDict[int, Sequence] = OrderedDict()
        size, frames = recipe.output.shard_size, self.config.frames
        if size % frames and frames % size:
            log.info("output.shard_size=%d is not a multiple (or divisor) of sequence.frames=%d: shards "
                     "that start mid-sequence re-simulate it from frame 0", size, frames)

    def _prompter(self):
        if self.recipe.backend.kind != "controlnet":
            return None
        from synthgen.prompt import PromptBuilder

        return PromptBuilder(self.recipe.prompt)

    @property
    def batch_size(self) -> int:
        """Frames per device batch: the ControlNet batch spread over the cameras of a frame."""
        return 1 if self.views is None else max(1, self.views.batch_size // len(self.lenses))

    @property
    def cpu_chunk(self) -> int:
        """Frames a loader worker takes together: at most 8, so that a chunk's views (about
        5 MB each at 384x384) stay small in memory; a worker re-simulates a sequence it meets
        again (about a second per 64 frames, against ~10 s to render their views)."""
        return min(self.config.frames, SEQUENCE_CHUNK)

    # 1. simulate a sequence (motion, body, rig, IMU, scene, materials) -------------------------
    def sequence(self, s: int) -> Sequence:
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

    def _simulate(self, s: int) -> Sequence:
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
        posed = take_frames(posed_all, slice(0, F))
        frame_motion = motion.sample(times)
        z = ground_heights(motion, posed, frame_motion, fps)
        translation = np.column_stack([frame_motion.root_position[:, :2], z])
        props, sit_shift = [], None
        if seat:
            seat_pose = take_frames(posed_all, slice(F, F + 1))
            seat_motion = motion.sample(np.array([seat["at_s"]]))
            sit_shift = sitting_shift(seat, posed_all, seat_motion, self.subject_model.keypoint_names)
            translation[:, :2] += sit_shift(times)
            props.append(seat_under(seat, seat_pose, seat_motion, sit_shift(np.array([seat["at_s"]]))[0]))
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
        imu_rng = sample_rng(seed, s, "imu_noise")
        imu = [imu_readings(track, m, cfg.imu, imu_rng) if mount.imu else None
               for m, mount in enumerate(cfg.rig.mounts)]
        # scene around the path
        scene = build_scene(cfg.scene, sample_rng(seed, s, "background"), translation[:, :2],
                            len(self.subject_model.part_names), props)
        # materials (fixed for the sequence), light fixed in the world
        app_rng = sample_rng(seed, s, "appearance")
        appearance = draw_appearance(app_rng, self.subject_model.part_names)
        sun, ambient = draw_sun(app_rng)  # the single-image light set, fixed in the world
        gain = float(app_rng.uniform(0.9, 1.1))
        noise_seed, material_seed = int(app_rng.integers(2**63)), int(app_rng.integers(2**63))
        materials = choose_materials(np.random.default_rng(material_seed), scene.kind, scene.instance_names,
                                     scene.instance_albedo)  # what shading.shade_view draws again per view
        face_parts = self.subject_model.face_parts
        seq = Sequence(
            index=s, motion=motion, posed=posed, translation=translation, sub_posed=sub_posed,
            sub_translation=sub_translation, sub_steps=sub_steps, scene=scene, track=track,
            frame_steps=frame_steps, imu=imu, mounts=mounts,
            body_face_albedo=appearance["albedo"].astype(np.float32)[face_parts],
            body_face_specular=appearance["specular"].astype(np.float32)[face_parts],
            sun_world=sun, ambient=ambient, material_seed=material_seed, gain=gain, noise_seed=noise_seed,
            appearance=appearance["summary"] | {"light_dir_world": np.round(sun, 4).tolist(),
                                                "ambient": round(scene_ambient(scene.kind, ambient), 4),
                                                "gain": round(gain, 4),
                                                "scene_materials": {name: m[0] for name, m in
                                                                    zip(scene.instance_names[2:], materials[2:])}},
            labels={})
        seq.labels = self._sequence_labels(seq, draw)
        if self.prompter is not None:
            seq.prompt = sequence_prompt(self.prompter, self.recipe, s, draw, posed.vertices[0],
                                         posed.keypoints[0], len(self.lenses))
            seq.labels["prompt"] = seq.prompt
        return seq

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
                offset = standoff_offset(offset, mount.standoff_m, posed.rest_vertices, SMPL_TO_WORLD,
                                   posed.rest_socket_position[k])
            cam_in_socket = mount_offset(offset, look)
            socket = np.tile(np.eye(4), (F, 1, 1))
            socket[:, :3, :3] = posed.socket_rotation[:, k]
            socket[:, :3, 3] = posed.socket_position[:, k] + translation
            targets[:, m] = socket @ cam_in_socket
            mounts.append({"offset_m": np.round(offset, 6).tolist(), "look_deg": np.round(look, 6).tolist(),
                           "cam_in_socket": cam_in_socket.tolist()})
        return mounts, targets

    def _sequence_labels(self, seq: Sequence, draw: dict[str, Any]) -> dict[str, Any]:
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
        if seq.prompt is not None:
            sample["prompt"] = seq.prompt
        return sample

    def _render_view(self, seq: Sequence, lens: Lens, c2w: np.ndarray, world_verts: np.ndarray,
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
                               (r.render.canny_low, r.render.canny_high), r.render.normal_convention,
                               normal_background=r.render.normal_background,
                               edges_source=r.render.edges_source,
                               with_shaded="shaded" in r.output.layers)
        tri = layers["triangle_id"]
        covered = tri >= 0
        layers["instance"] = np.where(covered, instance[np.maximum(tri, 0)], 0).astype(np.uint8)
        view: dict[str, Any] = {"cam_to_world": c2w, "R": R, "t": t, "layers": layers}
        if shade:
            albedo = np.concatenate([seq.body_face_albedo, scene.instance_albedo[scene.face_instance]])[src]
            spec = np.concatenate([seq.body_face_specular, np.full(len(scene.faces), 0.05, np.float32)])[src]
            view["image_float"] = shade_view(layers, albedo, spec, scene, seq, R, t, K, body, faces,
                                             float(c2w[2, 3]), r.render.backend)
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

        tri = near(layers["triangle_id"].astype(np.float32) + 1.0).astype(np.int32) - 1  # exact below 2**24
        out = derive_layers(near(layers["normal"]), near(layers["depth"]), near(layers["parts"]), tri,
                            (r.render.canny_low, r.render.canny_high), r.render.normal_convention,
                            normal_background=r.render.normal_background, edges_source=r.render.edges_source,
                            with_shaded="shaded" in r.output.layers)
        out["instance"] = near(layers["instance"])
        return out

    def _blurred(self, seq: Sequence, f: int, m: int, lens: Lens, image: np.ndarray) -> np.ndarray:
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

    def _finish_image(self, seq: Sequence, f: int, m: int, lens: Lens, image: np.ndarray) -> np.ndarray:
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
                                                     lens.height, self.subject_model.skeleton_edges)
        view.update(keypoints_3d=kp3d, keypoints_2d=kp2d)

    def _imu_window(self, seq: Sequence, m: int, f: int) -> dict[str, list] | None:
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

    def _labels(self, seq: Sequence, sample: dict[str, Any], world_kp: np.ndarray) -> dict[str, Any]:
        """Frame labels: per camera a view record (the body as instance 1) with the mount's
        pose, lens and IMU; per frame the body in the world; the sequence's own labels."""
        f, posed = sample["frame"], seq.posed
        body = self._body_params(seq, f)
        views = {}
        for m, (view, lens) in enumerate(zip(sample["views"], self.lenses)):
            k = self.sockets.index(self.config.rig.mounts[m].socket)
            socket = np.eye(4)
            socket[:3, :3] = posed.socket_rotation[f, k]
            socket[:3, 3] = posed.socket_position[f, k] + seq.translation[f]
            ext = np.eye(4)
            ext[:3, :3], ext[:3, 3] = view["R"], view["t"]
            mask = view["layers"]["instance"] == BODY_INSTANCE
            instance = instance_record(BODY_INSTANCE, "human", self.subject_model.name, view["keypoints_2d"],
                                       view["keypoints_3d"], self.subject_model.keypoint_names, mask, body)
            views[f"cam{m}"] = view_record(lens.width, lens.height, lens.K, ext, [instance]) | {
                "name": self.config.rig.mounts[m].name, "distortion": lens.labels(),
                "cam_to_world": view["cam_to_world"].tolist(), "socket_to_world": socket.tolist(),
                "body_pixels": int(mask.sum())} | ({"imu": view["imu"]} if view["imu"] is not None else {})
        translation = seq.translation[f]
        return {
            "index": sample["index"], "seed": sample["seed"], "recipe_hash": self.hash,
            "frame": f, "time_s": f / self.config.fps, "sequence": seq.labels, "views": views,
            "body": {"pelvis_world": np.float32(translation).tolist(),
                     "joints_world": np.float32(posed.joints[f] + translation).tolist(),
                     "keypoints_3d_world": np.float32(world_kp).tolist(), "joint_names": posed.joint_names},
            "part_names": self.part_names,
            "conventions": {"camera": "opencv", "world": "z_up_metres_ground_z0", "gravity": "-z",
                            "depth": "z_mm_uint16_0_is_background", "normal": self.recipe.render.normal_convention,
                            "pixel_centre": "integer", "visibility": "coco_0_1_2",
                            "imu_frame": "camera (opencv axes); accel = specific force incl. gravity, m/s^2; "
                                         "gyro = rad/s; samples with t in (t_prev_frame, t_frame]",
                            "mask": "body only (instance 1)",
                            "instance": "0 none, 1 body, 2+ sequence.scene.instances"},
        }

    def _body_params(self, seq: Sequence, f: int) -> dict[str, Any]:
        """The body's parameters at frame f in the model's own terms, world placement included."""
        translation = seq.translation[f]
        body = dict(seq.posed.params[f])
        if self.body.family == "anny":
            root = np.eye(4)
            root[:3, :3] = np.asarray(body.pop("root_rotation"))
            root[:3, 3] = translation
            body["root_transform"] = np.float32(root).tolist()
        else:  # smplx(betas, global_orient, body_pose) + transl, then SMPL_TO_WORLD, is the world body
            pelvis = np.asarray(body.pop("pelvis_smpl"), dtype=np.float64)
            body["transl"] = np.float32(SMPL_TO_WORLD.T @ translation - pelvis).tolist()
        return seq.labels["body"] | body | {"has_body_pose": True}

    def finish(self, batch: list[dict[str, Any]]) -> None:
        """Images for a batch of prepared frames (shaded images were made in prepare)."""
        ok = [s for s in batch if "error" not in s]
        if self.views is not None and ok:
            self.views.generate(ok, self.lenses)
        for sample in ok:
            for view in sample["views"]:
                view.setdefault("image", None)

    def prepared(self, indices: list[int], attempt: int = 0) -> Iterator[dict[str, Any]]:
        """CPU stages of frames ``indices`` (sequences simulated as needed); a failing frame
        comes out as ``{"index", "error"}``. Frames have no filter, so never a redraw."""
        if attempt:
            raise ValueError(f"sequence frames are never redrawn (attempt {attempt} asked for)")
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

    # 5. encode --------------------------------------------------------------------------------
    def encode(self, sample: dict[str, Any]) -> dict[str, Any]:
        out = self.recipe.output
        record = {"__key__": f"{sample['index']:09d}", "json": encode.encode_json(sample["labels"])}
        for m, view in enumerate(sample["views"]):
            if view.get("image") is not None:
                record[f"cam{m}.jpg"] = encode.encode_jpg(view["image"], out.jpeg_quality)
            for name in out.layers:
                record[f"cam{m}.{name}.png"] = encode.encode_layer(name, view["layers"][layer_ops.LAYER_KEYS[name]])
            if self.config.instance_layer and "instance" not in out.layers:
                record[f"cam{m}.instance.png"] = encode.encode_png(view["layers"]["instance"])
        if out.vertices:
            record["npz"] = encode.encode_npz({"vertices_world": sample["world_vertices"].astype(np.float32),
                                              "faces": self.subject_model.faces})
        return record
