"""Motion: body poses over time, from embedded procedural motions or motion files.

A :class:`Motion` is a time series in the world frame of :mod:`synthgen.subjects.base` (metres,
Z up, ground z = 0, a body at heading 0 faces -Y):

- ``rotations`` (T, 24, 3, 3): SMPL local joint rotations in SMPL's canonical frame (the terms
  of :mod:`synthgen.subjects.poses`; entry 0, the pelvis, is unused), or
- ``anny_local`` (T, J, 3, 3): Anny local-ref bone rotations (entry 0 unused), for Anny files;
- ``root_rotation`` (T, 3, 3): the body's world orientation (identity = upright facing -Y);
- ``root_position`` (T, 3): the pelvis displacement since the first sample, metres.

:meth:`Motion.sample` resamples to any times: rotations by slerp between the two neighbouring
samples, positions linearly; times outside the clip hold its first/last sample.

Procedural motions (walk, turn, wave, squat, reach, sit_down) are keyframes made from the base
poses of :data:`synthgen.subjects.poses.BASE_POSES`, interpolated per joint with scipy's C2
``RotationSpline`` (smooth angular velocity, so the simulated IMUs see no steps), with a root
trajectory over the ground, sampled densely at :data:`DENSE_HZ`.

AMASS ``root_orient`` maps SMPL's canonical frame into AMASS's Z-up world, so the world
orientation of a body whose rest pose already stands in our world (``SMPL_TO_WORLD``) is
``R(root_orient) @ SMPL_TO_WORLD.T``; AMASS puts the pelvis at ``J0 + trans``, so the pelvis
displacement is ``trans - trans[0]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation, RotationSpline

from synthgen.errors import UserError
from synthgen.seeding import sample_rng
from synthgen.subjects.base import SMPL_TO_WORLD
from synthgen.subjects.poses import (
    JOINT_LIMITS_DEG,
    NUM_JOINTS,
    SMPL_JOINTS,
    base_pose_angles,
    euler_to_matrix,
)

__all__ = [
    "PROCEDURAL",
    "Motion",
    "MotionFileBank",
    "draw_motion",
    "load_motion_file",
    "procedural_motion",
    "slerp_matrices",
    "yaw_matrix",
]

DENSE_HZ = 120.0  # procedural motions are sampled this densely, then resampled by slerp


# --- rotations -----------------------------------------------------------------------------------
def yaw_matrix(yaw_rad: np.ndarray | float) -> np.ndarray:
    """(..., 3, 3) rotations about world +Z by ``yaw_rad``."""
    yaw = np.asarray(yaw_rad, dtype=np.float64)
    c, s = np.cos(yaw), np.sin(yaw)
    out = np.zeros(yaw.shape + (3, 3))
    out[..., 0, 0], out[..., 0, 1], out[..., 1, 0], out[..., 1, 1], out[..., 2, 2] = c, -s, s, c, 1.0
    return out


def slerp_matrices(r0: np.ndarray, r1: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Spherical interpolation ``r0 exp(w log(r0^T r1))``.

    r0, r1: (N, ..., 3, 3); w: (N,) weights in [0, 1]. Returns (N, ..., 3, 3).
    """
    shape = r0.shape
    a = Rotation.from_matrix(r0.reshape(-1, 3, 3))
    b = Rotation.from_matrix(r1.reshape(-1, 3, 3))
    rel = (a.inv() * b).as_rotvec().reshape(shape[0], -1, 3)
    step = Rotation.from_rotvec((rel * np.asarray(w, dtype=np.float64)[:, None, None]).reshape(-1, 3))
    return (a * step).as_matrix().reshape(shape)


def heading_of(rotation: np.ndarray) -> float:
    """Yaw (radians) of a body orientation: the angle of its forward (-Y at rest) on the ground."""
    forward = rotation @ np.array([0.0, -1.0, 0.0])
    # Rz(yaw) (0, -1, 0) = (sin yaw, -cos yaw, 0)
    return float(np.arctan2(forward[0], -forward[1])) if np.hypot(forward[0], forward[1]) > 1e-9 else 0.0


# --- the motion record ---------------------------------------------------------------------------
@dataclass
class Motion:
    """A body motion sampled at ``fps`` (see the module docstring for the arrays' meaning)."""

    name: str
    source: str                       # "procedural", "amass" or "anny"
    fps: float
    root_rotation: np.ndarray         # (T, 3, 3)
    root_position: np.ndarray         # (T, 3)
    rotations: np.ndarray | None = None   # (T, 24, 3, 3) SMPL local rotations
    anny_local: np.ndarray | None = None  # (T, J, 3, 3) Anny local-ref rotations
    grounding: str = "per_frame"
    props: list[dict[str, Any]] = field(default_factory=list)  # scene props the motion needs
    info: dict[str, Any] = field(default_factory=dict)         # JSON-ready description

    @property
    def num_samples(self) -> int:
        return len(self.root_position)

    @property
    def duration(self) -> float:
        """Seconds from the first to the last sample."""
        return (self.num_samples - 1) / self.fps

    def sample(self, times: np.ndarray) -> Motion:
        """The motion at ``times`` (N,) seconds (slerp/lerp between samples, clamped at the ends).

        The result's ``fps`` is that of ``times`` when they are evenly spaced, else 0.
        """
        times = np.asarray(times, dtype=np.float64)
        x = np.clip(times * self.fps, 0.0, self.num_samples - 1)
        i0 = np.minimum(np.floor(x).astype(np.int64), max(self.num_samples - 2, 0))
        i1 = np.minimum(i0 + 1, self.num_samples - 1)
        w = x - i0

        def rot(a):
            return None if a is None else slerp_matrices(a[i0], a[i1], w)

        step = np.diff(times)
        fps = float(1.0 / step[0]) if len(step) and np.allclose(step, step[0]) and step[0] > 0 else 0.0
        return replace(self, fps=fps, root_rotation=rot(self.root_rotation[:, None])[:, 0],
                       root_position=self.root_position[i0] * (1 - w)[:, None] + self.root_position[i1] * w[:, None],
                       rotations=rot(self.rotations), anny_local=rot(self.anny_local))

    def turned(self, yaw_rad: float) -> Motion:
        """The same motion turned about the vertical through its start point."""
        rz = yaw_matrix(yaw_rad)
        return replace(self, root_rotation=rz @ self.root_rotation, root_position=self.root_position @ rz.T)


# --- procedural motions --------------------------------------------------------------------------
_MIRROR = {j: j.replace("left_", "@").replace("right_", "left_").replace("@", "right_") for j in SMPL_JOINTS}
_MIRROR_INDEX = np.array([SMPL_JOINTS.index(_MIRROR[j]) for j in SMPL_JOINTS])


def _pose(base: str | None = "standing", **joints: tuple[float, float, float]) -> np.ndarray:
    """(24, 3) Euler degrees: a library base pose with some joints replaced."""
    angles = base_pose_angles(base) if base else np.zeros((NUM_JOINTS, 3))
    for name, xyz in joints.items():
        angles[SMPL_JOINTS.index(name)] = xyz
    return angles


def mirror_angles(angles: np.ndarray) -> np.ndarray:
    """(..., 24, 3) Euler degrees -> the left/right mirror image (swap sides, negate y and z)."""
    out = angles[..., _MIRROR_INDEX, :].copy()
    out[..., 1:] *= -1.0
    return out


def _walk_keys() -> tuple[np.ndarray, np.ndarray]:
    """One gait cycle: key phases (5,) in [0, 1] and Euler angles (5, 24, 3)."""
    contact = _pose(None, left_hip=(-28, 0, 3), left_knee=(6, 0, 0), left_ankle=(-8, 0, 0),
                    right_hip=(14, 0, -3), right_knee=(22, 0, 0), right_ankle=(12, 0, 0),
                    left_shoulder=(22, 0, -73), right_shoulder=(-24, 0, 73),
                    left_elbow=(0, -12, 0), right_elbow=(0, 28, 0), spine1=(4, 3, 0), spine3=(0, -5, 0),
                    left_collar=(0, 0, -4), right_collar=(0, 0, 4), pelvis=(1, -4, 0))
    passing = _pose(None, left_hip=(-4, 0, 3), left_knee=(9, 0, 0), right_hip=(-20, 0, -3),
                    right_knee=(62, 0, 0), right_ankle=(-10, 0, 0),
                    left_shoulder=(2, 0, -74), right_shoulder=(-2, 0, 74),
                    left_elbow=(0, -18, 0), right_elbow=(0, 18, 0), spine1=(5, 0, 0),
                    left_collar=(0, 0, -4), right_collar=(0, 0, 4), pelvis=(2, 0, 3))
    keys = np.stack([contact, passing, mirror_angles(contact), mirror_angles(passing), contact])
    return np.array([0.0, 0.25, 0.5, 0.75, 1.0]), keys


def _cycle(phases: np.ndarray, keys: np.ndarray, period: float, t_end: float) -> tuple[np.ndarray, np.ndarray]:
    """Repeat one cycle's keys (phases in [0, 1], last = first) to cover [0, t_end]."""
    cycles = int(np.ceil(t_end / period)) + 1
    times = np.concatenate([(c + phases[:-1]) * period for c in range(cycles)] + [[cycles * period]])
    angles = np.concatenate([keys[:-1]] * cycles + [keys[-1:]])
    return times, angles


def _walk(rng, t_end, speed):
    period = rng.uniform(1.0, 1.15) / speed
    phases, keys = _walk_keys()
    times, angles = _cycle(phases, keys, period, t_end)
    velocity = 1.3 / period * rng.uniform(0.9, 1.05)  # two ~0.65 m steps per cycle

    def root(t):
        return np.zeros_like(t), np.stack([np.zeros_like(t), -velocity * t, np.zeros_like(t)], 1)

    return times, angles, root, [], {"period_s": period, "speed_mps": velocity}


def _turn(rng, t_end, speed):
    times, angles, _, _, info = _walk(rng, t_end, speed)
    rate = np.radians(rng.uniform(35.0, 70.0)) * rng.choice([-1.0, 1.0])  # yaw rate, rad/s
    velocity = info["speed_mps"] * 0.85
    ramp = 0.6  # the turn eases in over this many seconds (smooth angular velocity)

    def yaw(t):
        s = np.clip(t / ramp, 0.0, 1.0)
        return rate * np.where(t < ramp, ramp * s ** 3 * (1 - s / 2), t - ramp / 2)

    def root(t):
        fine = np.linspace(0.0, max(float(np.max(t)), 1e-6), max(int(np.max(t) * 400), 2))
        heading = yaw(fine)
        vx, vy = velocity * np.sin(heading), -velocity * np.cos(heading)  # forward = Rz(yaw) (0,-1,0)
        dt = np.diff(fine, prepend=0.0)
        x, y = np.cumsum(vx * dt) - vx[0] * dt[0], np.cumsum(vy * dt) - vy[0] * dt[0]
        return yaw(t), np.stack([np.interp(t, fine, x), np.interp(t, fine, y), np.zeros_like(t)], 1)

    return times, angles, root, [], info | {"yaw_rate_deg_s": float(np.degrees(rate)), "speed_mps": velocity}


def _static_root(t):
    return np.zeros_like(t), np.zeros((len(t), 3))


def _wave(rng, t_end, speed):
    side = rng.choice(["left", "right"])
    period = rng.uniform(0.55, 0.8) / speed
    raise_s = rng.uniform(0.4, 0.7) / speed
    # upper arm out to the side, forearm up; the elbow angle swings the hand
    right = {"right_shoulder": (-90, 0, -12), "right_elbow": (0, 80, 0), "right_wrist": (0, 0, 15),
             "spine1": (0, 0, 3)}
    high = _pose("standing", **right)
    low = _pose("standing", **(right | {"right_elbow": (0, 125, 0)}))
    if side == "left":
        high, low = mirror_angles(high), mirror_angles(low)
    times, angles = [0.0, raise_s], [_pose("standing"), high]
    t, up = raise_s, False
    while t < t_end + period:
        t += period / 2
        times.append(t)
        angles.append(high if up else low)
        up = not up
    return np.array(times), np.stack(angles), _static_root, [], {"hand": str(side), "wave_period_s": period}


def _squat(rng, t_end, speed):
    period = rng.uniform(2.2, 3.0) / speed
    depth = rng.uniform(0.6, 1.0)
    stand, crouch = _pose("standing"), base_pose_angles("crouching")
    crouch = stand + depth * (crouch - stand)
    crouch[0] = (12 * depth, 0, 0)  # the pelvis tips forward
    phases = np.array([0.0, 0.12, 0.5, 0.62, 1.0])
    keys = np.stack([stand, stand + 0.15 * (crouch - stand), crouch, crouch, stand])
    times, angles = _cycle(phases, keys, period, t_end)
    return times, angles, _static_root, [], {"period_s": period, "depth": depth}


def _reach(rng, t_end, speed):
    period = rng.uniform(4.0, 5.0) / speed
    stand, reach = _pose("standing"), base_pose_angles("reaching")
    reach = reach + np.where(np.arange(NUM_JOINTS)[:, None] == SMPL_JOINTS.index("spine2"), [10, 0, 0], 0)
    reach[0] = (6, -6, 0)  # the pelvis tips and turns toward the reach
    phases = np.array([0.0, 0.2, 0.3, 0.5, 0.7, 0.8, 1.0])
    keys = np.stack([stand, reach, reach, stand, mirror_angles(reach), mirror_angles(reach), stand])
    times, angles = _cycle(phases, keys, period, t_end)
    return times, angles, _static_root, [], {"period_s": period}


def _sit_down(rng, t_end, speed):
    stand, sit = _pose("standing"), _pose("sitting", pelvis=(-6, 0, 0))
    lean = _pose("standing", left_hip=(-55, 0, 5), right_hip=(-55, 0, -5), left_knee=(60, 0, 0),
                 right_knee=(60, 0, 0), spine1=(30, 0, 0), spine2=(10, 0, 0),
                 left_shoulder=(0, -35, -65), right_shoulder=(0, 35, 65), pelvis=(15, 0, 0))
    hold, down = rng.uniform(0.2, 0.6), rng.uniform(1.0, 1.4) / speed
    times = np.array([0.0, hold, hold + 0.55 * down, hold + down, max(t_end, hold + down) + 1.0])
    angles = np.stack([stand, stand, lean, sit, sit])
    # a seat under the pelvis once seated: placed from the body posed at at_s (synthgen.sequence)
    # from_s..at_s: the pelvis moves back over the seat (synthgen.sequence keeps the feet in place)
    props = [{"kind": "seat", "from_s": hold, "at_s": hold + down, "size": [0.48, 0.46]}]
    return times, angles, _static_root, props, {"sit_at_s": hold + down}


# latest start phase (seconds into the motion) a sequence may begin at
_MAX_START_S = {"walk": 1.5, "turn": 1.5, "wave": 1.0, "squat": 3.0, "reach": 5.0, "sit_down": 0.3}

PROCEDURAL: dict[str, Callable] = {"walk": _walk, "turn": _turn, "wave": _wave, "squat": _squat,
                                   "reach": _reach, "sit_down": _sit_down}


def procedural_motion(name: str, rng: np.random.Generator, duration: float, speed: float = 1.0,
                      style_noise_deg: float = 0.0) -> Motion:
    """An embedded motion covering ``[0, duration]`` seconds, sampled at :data:`DENSE_HZ`.

    The cycle starts at a random phase; ``style_noise_deg`` adds one constant random offset per
    joint angle (the same in every key: a per-sequence "style"), then keys are clipped to the
    joint limits. Props' times (keys ending in ``_s``) are given in the returned motion's time, and
    the motion is sampled far enough to reach ``at_s``.
    """
    if name not in PROCEDURAL:
        raise KeyError(f"unknown procedural motion {name!r}; known: {sorted(PROCEDURAL)}")
    offset = float(rng.uniform(0.0, _MAX_START_S[name]))  # start phase, seconds
    times, angles, root, props, info = PROCEDURAL[name](rng, duration + offset + 0.5, speed)
    style = rng.normal(0.0, style_noise_deg, size=(NUM_JOINTS, 3)) if style_noise_deg > 0 else 0.0
    angles = np.clip(angles + style, JOINT_LIMITS_DEG[..., 0], JOINT_LIMITS_DEG[..., 1])
    props = [p | {k: max(v - offset, 0.0) for k, v in p.items() if k.endswith("_s")} for p in props]
    end = max([duration] + [p["at_s"] for p in props if "at_s" in p])
    dense = np.arange(int(np.ceil(end * DENSE_HZ - 1e-9)) + 1) / DENSE_HZ
    t = np.clip(dense + offset, times[0], times[-1])
    rotations = np.empty((len(dense), NUM_JOINTS, 3, 3))
    mats = euler_to_matrix(angles)
    for j in range(NUM_JOINTS):
        rotations[:, j] = RotationSpline(times, Rotation.from_matrix(mats[:, j]))(t).as_matrix()
    yaw, position = root(t)
    yaw, position = yaw - yaw[0], position - position[0]
    # the pelvis keys (SMPL terms) ride on the heading: world orientation = Rz(yaw) S R_pelvis S^T
    pelvis = SMPL_TO_WORLD @ rotations[:, 0] @ SMPL_TO_WORLD.T
    rotations[:, 0] = np.eye(3)
    return Motion(name=name, source="procedural", fps=DENSE_HZ, rotations=rotations,
                  root_rotation=yaw_matrix(yaw) @ pelvis, root_position=position, grounding="per_frame",
                  props=props, info={"name": name, "source": "procedural", "speed": round(speed, 4),
                                     "start_phase_s": round(offset, 4)}
                  | {k: round(float(v), 4) if isinstance(v, float) else v for k, v in info.items()})


# --- motion files --------------------------------------------------------------------------------
def _framerate(data, path: Path) -> float:
    for key in ("mocap_framerate", "mocap_frame_rate", "fps", "framerate"):
        if key in data:
            return float(np.asarray(data[key]).reshape(-1)[0])
    raise UserError(f"sequence.motion.files: {path} has no frame rate (keys {sorted(data.files)}); "
                    "add 'mocap_framerate' (AMASS) or 'fps'")


def load_motion_file(path: str | Path) -> Motion:
    """An AMASS-style or Anny-native ``.npz`` motion (never unpickles)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sequence.motion.files: {str(path)!r} does not exist")
    with np.load(path, allow_pickle=False) as data:
        fps = _framerate(data, path)
        if "anny_pose_parameters" in data:
            pp = np.asarray(data["anny_pose_parameters"], dtype=np.float64)
            if pp.ndim != 4 or pp.shape[2:] != (4, 4) or len(pp) < 1:
                raise UserError(f"{path}: anny_pose_parameters must be (T, J, 4, 4), got {pp.shape}")
            return Motion(name=path.stem, source="anny", fps=fps, anny_local=pp[:, :, :3, :3],
                          root_rotation=pp[:, 0, :3, :3], root_position=pp[:, 0, :3, 3] - pp[0, 0, :3, 3],
                          grounding="per_frame", info={"name": path.stem, "source": "anny", "file": str(path)})
        if "poses" not in data or "trans" not in data:
            raise UserError(f"sequence.motion.files: {path} has keys {sorted(data.files)}; expected "
                            "'poses' + 'trans' + 'mocap_framerate' (AMASS) or 'anny_pose_parameters' + 'fps'")
        poses = np.asarray(data["poses"], dtype=np.float64)
        trans = np.asarray(data["trans"], dtype=np.float64).reshape(-1, 3)
    poses = poses.reshape(len(poses), -1)
    if poses.shape[1] < 66 or len(poses) != len(trans) or len(poses) < 1:
        raise UserError(f"{path}: poses must be (T, >=66) and trans (T, 3) with the same T, got "
                        f"{poses.shape} and {trans.shape}")
    rotations = np.tile(np.eye(3), (len(poses), NUM_JOINTS, 1, 1))
    rotations[:, 1:22] = Rotation.from_rotvec(poses[:, 3:66].reshape(-1, 3)).as_matrix().reshape(-1, 21, 3, 3)
    root = Rotation.from_rotvec(poses[:, :3]).as_matrix() @ SMPL_TO_WORLD.T
    return Motion(name=path.stem, source="amass", fps=fps, rotations=rotations, root_rotation=root,
                  root_position=trans - trans[0], info={"name": path.stem, "source": "amass", "file": str(path)})


class MotionFileBank:
    """Motion files loaded once per process."""

    def __init__(self, paths: list[str]):
        self.motions = [load_motion_file(p) for p in paths]

    def draw(self, rng: np.random.Generator, duration: float) -> Motion:
        """A random clip and a random window of ``duration`` seconds within it (held at the end)."""
        motion = self.motions[int(rng.integers(len(self.motions)))]
        start = float(rng.uniform(0.0, max(motion.duration - duration, 0.0)))
        times = start + np.arange(int(np.ceil(duration * motion.fps - 1e-9)) + 1) / motion.fps
        window = motion.sample(times)
        window = replace(window, fps=motion.fps, root_position=window.root_position - window.root_position[0],
                         info=motion.info | {"start_s": round(start, 4), "clip_duration_s": round(motion.duration, 4),
                                             "held_at_end": bool(motion.duration < duration)})
        return window


def draw_motion(config, bank: MotionFileBank | None, recipe_seed: int, sequence: int,
                duration: float) -> Motion:
    """The motion of ``sequence`` (``config``: a MotionConfig), covering ``duration`` seconds.

    Draws come from the "pose" (choice, speed, style) and "placement" (heading) streams of
    (recipe seed, sequence) only.
    """
    rng = sample_rng(recipe_seed, sequence, "pose")
    yaw = np.radians(float(sample_rng(recipe_seed, sequence, "placement").uniform(*config.yaw_deg)))
    if bank is not None and rng.random() < config.file_fraction:
        motion = bank.draw(rng, duration)
        if config.align_heading:
            yaw -= heading_of(motion.root_rotation[0])
        motion = replace(motion, grounding=config.grounding)
    else:
        names = sorted(n for n, w in config.library.items() if w > 0)
        p = np.array([config.library[n] for n in names], dtype=float)
        name = names[int(rng.choice(len(names), p=p / p.sum()))]
        speed = float(rng.uniform(*config.speed))
        motion = procedural_motion(name, rng, duration, speed, config.style_noise_deg)
    motion = motion.turned(yaw)
    motion.info = motion.info | {"yaw_deg": round(float(np.degrees(yaw)), 4), "grounding": motion.grounding}
    return motion
