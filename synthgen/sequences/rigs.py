"""Body-worn camera rigs: sockets on bones, lenses, and spring-damper mounts.

Frames and conventions:

- World: metres, Z up, ground z = 0 (:mod:`synthgen.subjects.base`). Gravity is -Z.
- Socket frame: x = the body's left, y = up, z = forward *when the body stands in the rest
  T-pose facing -Y*; it turns with its bone: ``R_socket(t) = R_bone(t) R_bone_rest^T S`` with
  ``S = SMPL_TO_WORLD`` (the body axes at rest) and ``R_bone_rest`` the bone's world rotation in
  the T-pose. Its origin is the bone's joint centre. So a mount's ``offset_m``/``look_deg`` mean
  the same on Anny (A-pose rest) and on SMPL (T-pose rest).
- Camera (and IMU) frame: OpenCV, x right, y down, z forward. ``cam_to_world`` (4, 4) maps camera
  coordinates to the world; ``cam_ext`` is its inverse.
- Lenses: ``pinhole`` projects ``(K X)[:2] / (K X)[2]``; ``fisheye`` is OpenCV's fisheye model
  (Kannala-Brandt, k1..k4) with theta = the angle from the optical axis (valid beyond 90 deg).

Spring mounts: each camera is a unit mass tied to its socket pose ``(p_s, R_s)`` (the socket
times the mount offset) by a spring-damper, in translation and rotation::

    a     = -k  (p - p_s)            - c  (v - v_s)
    alpha = -kr log(R R_s^T)         - cr (w - w_s)      (world-frame rotation vector / rates)

integrated with semi-implicit Euler at a fixed substep from rest on the socket at t = 0. The
socket trajectory between frames is a C2 interpolation of the per-frame socket poses
(not-a-knot cubic splines for positions, scipy ``RotationSpline`` for rotations), so a rigid
mount's IMU is the exact derivative of a smooth path through the rendered camera poses.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import lcm
from typing import Any

import numpy as np
from scipy.interpolate import CubicSpline
from scipy.spatial.transform import Rotation, RotationSpline

from synthgen.recipe import DistortionConfig, MountConfig, SpringConfig
from synthgen.subjects.base import SMPL_TO_WORLD

__all__ = [
    "SOCKET_BONES",
    "Lens",
    "MountTrack",
    "build_lens",
    "mount_offset",
    "project_fisheye",
    "sim_rate",
    "simulate_mounts",
    "socket_rotation",
    "unproject_fisheye",
]

# socket -> bone (Anny) or joint (SMPL family) whose motion carries it.
SOCKET_BONES = {
    "anny": {"head": "head", "neck": "neck01", "chest": "spine01", "pelvis": "root",
             "left_upper_arm": "upperarm01.L", "right_upper_arm": "upperarm01.R",
             "left_forearm": "lowerarm01.L", "right_forearm": "lowerarm01.R",
             "left_wrist": "wrist.L", "right_wrist": "wrist.R",
             "left_thigh": "upperleg01.L", "right_thigh": "upperleg01.R",
             "left_knee": "lowerleg01.L", "right_knee": "lowerleg01.R",
             "left_ankle": "foot.L", "right_ankle": "foot.R"},
    "smpl": {"head": "head", "neck": "neck", "chest": "spine3", "pelvis": "pelvis",
             "left_upper_arm": "left_shoulder", "right_upper_arm": "right_shoulder",
             "left_forearm": "left_elbow", "right_forearm": "right_elbow",
             "left_wrist": "left_wrist", "right_wrist": "right_wrist",
             "left_thigh": "left_hip", "right_thigh": "right_hip",
             "left_knee": "left_knee", "right_knee": "right_knee",
             "left_ankle": "left_ankle", "right_ankle": "right_ankle"},
}

# camera axes (x right, y down, z forward) written in the socket frame (x left, y up, z forward)
_CAMERA_IN_SOCKET = np.diag([-1.0, -1.0, 1.0])


# --- sockets and mounts --------------------------------------------------------------------------
def socket_rotation(bone_rotation: np.ndarray, bone_rest_rotation: np.ndarray) -> np.ndarray:
    """(..., 3, 3) socket-to-world rotation of a bone; ``bone_rest_rotation`` (3, 3) is its T-pose one.

    The result is projected onto SO(3) (body models work in float32), so socket and camera poses
    are exact rotations.
    """
    out = np.asarray(bone_rotation, dtype=np.float64) @ (np.asarray(bone_rest_rotation, dtype=np.float64).T
                                                         @ SMPL_TO_WORLD)
    return Rotation.from_matrix(out.reshape(-1, 3, 3)).as_matrix().reshape(out.shape)


def mount_offset(offset_m, look_deg) -> np.ndarray:
    """(4, 4) camera-to-socket transform of a mount: position ``offset_m`` and ``look_deg``
    (yaw about the socket's up, + toward its x; pitch, + up; roll about the optical axis)."""
    yaw, pitch, roll = np.radians(np.asarray(look_deg, dtype=np.float64))
    look = Rotation.from_euler("YX", [yaw, -pitch]).as_matrix()  # intrinsic: yaw, then pitch
    out = np.eye(4)
    out[:3, :3] = look @ _CAMERA_IN_SOCKET @ Rotation.from_euler("z", roll).as_matrix()
    out[:3, 3] = offset_m
    return out


# --- lenses --------------------------------------------------------------------------------------
def _theta_d(theta: np.ndarray, k: np.ndarray) -> np.ndarray:
    t2 = theta * theta
    return theta * (1.0 + t2 * (k[0] + t2 * (k[1] + t2 * (k[2] + t2 * k[3]))))


def project_fisheye(points_cam: np.ndarray, K: np.ndarray, k: np.ndarray) -> np.ndarray:
    """(N, 3) camera-frame points -> (N, 2) pixels through OpenCV's fisheye model.

    theta = atan2(sqrt(x^2 + y^2), z) (points behind the camera have theta > 90 deg); equal to
    ``cv2.fisheye.projectPoints`` for z > 0.
    """
    p = np.asarray(points_cam, dtype=np.float64)
    r = np.hypot(p[:, 0], p[:, 1])
    theta = np.arctan2(r, p[:, 2])
    off_axis = r > 1e-12
    scale = np.empty_like(r)
    scale[off_axis] = _theta_d(theta[off_axis], np.asarray(k, dtype=np.float64)) / r[off_axis]
    scale[~off_axis] = 1.0 / np.maximum(p[~off_axis, 2], 1e-12)  # on the axis theta_d/r -> 1/z
    x, y = p[:, 0] * scale, p[:, 1] * scale
    return np.stack([K[0, 0] * x + K[0, 1] * y + K[0, 2], K[1, 1] * y + K[1, 2]], axis=1)


def unproject_fisheye(uv: np.ndarray, K: np.ndarray, k: np.ndarray, iterations: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) pixels -> (N, 3) unit rays (camera frame) and (N,) theta, inverting the fisheye
    polynomial by Newton's method (theta_d must be monotonic over the image)."""
    k = np.asarray(k, dtype=np.float64)
    y = (uv[:, 1] - K[1, 2]) / K[1, 1]
    x = (uv[:, 0] - K[0, 2] - K[0, 1] * y) / K[0, 0]
    rd = np.hypot(x, y)
    theta = rd.copy()
    for _ in range(iterations):
        t2 = theta * theta
        f = _theta_d(theta, k) - rd
        df = 1.0 + t2 * (3 * k[0] + t2 * (5 * k[1] + t2 * (7 * k[2] + t2 * 9 * k[3])))
        theta = theta - f / df
    s = np.where(rd > 1e-12, np.sin(theta) / np.maximum(rd, 1e-12), 1.0)
    rays = np.stack([x * s, y * s, np.cos(theta)], axis=1)
    return rays / np.linalg.norm(rays, axis=1, keepdims=True), theta


@dataclass
class Lens:
    """A mount's optics.

    ``K``: the labelled intrinsics (``cam_int``). ``model``: "pinhole" or "fisheye" (``k``: its
    k1..k4). ``applied``: images/layers/keypoints follow the lens (else pinhole images with K and
    the lens stored for the user). When a fisheye is applied the scene is rendered as a pinhole
    image ``render_K`` of ``render_size`` and remapped with ``map_x``/``map_y`` (H, W) float32;
    ``valid`` (H, W) bool marks pixels within ``max_angle`` (the rest is black, no data).
    """

    name: str
    K: np.ndarray
    width: int
    height: int
    model: str = "pinhole"
    k: np.ndarray | None = None
    applied: bool = False
    render_K: np.ndarray | None = None
    render_size: tuple[int, int] | None = None
    map_x: np.ndarray | None = None
    map_y: np.ndarray | None = None
    valid: np.ndarray | None = None
    max_angle: float = np.pi

    @property
    def remaps(self) -> bool:
        return self.map_x is not None

    def project(self, points_cam: np.ndarray) -> np.ndarray:
        """(N, 3) camera frame -> (N, 2) pixels of the stored image (through the lens if applied)."""
        if self.model == "fisheye" and self.applied:
            return project_fisheye(points_cam, self.K, self.k)
        p = points_cam.astype(np.float64) @ self.K.T
        return p[:, :2] / p[:, 2:3]

    def in_field(self, points_cam: np.ndarray) -> np.ndarray:
        """(N,) bool: the ray is within the rendered field (always true for pinhole images)."""
        if not self.remaps:
            return np.ones(len(points_cam), dtype=bool)
        p = np.asarray(points_cam, dtype=np.float64)
        return np.arctan2(np.hypot(p[:, 0], p[:, 1]), p[:, 2]) <= self.max_angle

    def labels(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "applied": bool(self.applied)}
        if self.model == "fisheye":
            out |= {"convention": "opencv_fisheye", "k": [float(v) for v in self.k]}
        if self.remaps:
            out |= {"max_angle_deg": float(np.degrees(self.max_angle)),
                    "render_cam_int": self.render_K.tolist(), "render_size": list(self.render_size)}
        return out


def pinhole_K(fov_deg: float, width: int, height: int) -> np.ndarray:
    """(3, 3) square-pixel K with horizontal field of view ``fov_deg`` and the centre at
    ((W-1)/2, (H-1)/2) (integer pixel centres, as in synthgen.cameras)."""
    f = (width / 2.0) / np.tan(np.radians(fov_deg) / 2.0)
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def build_lens(mount: MountConfig, width: int, height: int) -> Lens:
    """The lens of ``mount`` for ``width`` x ``height`` images (remap tables built here, once)."""
    dist: DistortionConfig = mount.distortion
    if dist.model == "none":
        return Lens(mount.name, pinhole_K(mount.fov_deg, width, height), width, height)
    k = np.asarray(dist.k, dtype=np.float64)
    half = np.radians(mount.fov_deg) / 2.0
    f = (width / 2.0) / float(_theta_d(np.array([half]), k)[0])
    K = np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])
    thetas = np.linspace(0.0, np.pi * 0.99, 2000)
    if np.any(np.diff(_theta_d(thetas[thetas <= max(half * 1.5, np.radians(dist.max_angle_deg))], k)) <= 0):
        raise ValueError(f"mount {mount.name}: fisheye k={list(dist.k)} is not monotonic over the image; "
                         "use smaller |k| values")
    if not dist.apply:
        return Lens(mount.name, K, width, height, "fisheye", k, applied=False)
    # fisheye pixels -> rays; keep those within max_angle; a pinhole render that covers them
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    rays, theta = unproject_fisheye(np.stack([cols.ravel(), rows.ravel()], 1), K, k)
    max_angle = np.radians(dist.max_angle_deg)
    valid = theta <= max_angle
    tx = np.abs(rays[valid, 0] / rays[valid, 2]).max()
    ty = np.abs(rays[valid, 1] / rays[valid, 2]).max()
    rw, rh = (int(np.ceil(width * dist.render_scale / 8.0) * 8), int(np.ceil(height * dist.render_scale / 8.0) * 8))
    fr = min((rw / 2.0 - 1.0) / tx, (rh / 2.0 - 1.0) / ty)
    render_K = np.array([[fr, 0.0, (rw - 1) / 2.0], [0.0, fr, (rh - 1) / 2.0], [0.0, 0.0, 1.0]])
    z = np.where(valid, rays[:, 2], 1.0)
    map_x = np.where(valid, fr * rays[:, 0] / z + render_K[0, 2], -10.0).astype(np.float32)
    map_y = np.where(valid, fr * rays[:, 1] / z + render_K[1, 2], -10.0).astype(np.float32)
    return Lens(mount.name, K, width, height, "fisheye", k, True, render_K, (rw, rh),
                map_x.reshape(height, width), map_y.reshape(height, width), valid.reshape(height, width),
                float(max_angle))


# --- spring-damper mounts ------------------------------------------------------------------------
def sim_rate(fps: int, imu_rate: int, substep_hz: int) -> int:
    """Integration rate: the smallest multiple of lcm(fps, imu_rate) that is >= substep_hz."""
    base = lcm(int(fps), int(imu_rate))
    return base * max(1, -(-int(substep_hz) // base))


def _so3_exp(w: np.ndarray) -> np.ndarray:
    """(M, 3) rotation vectors -> (M, 3, 3) (Rodrigues)."""
    theta = np.linalg.norm(w, axis=1)
    small = theta < 1e-9
    a = np.where(small, 1.0 - theta ** 2 / 6.0, np.sin(theta) / np.where(small, 1.0, theta))
    b = np.where(small, 0.5 - theta ** 2 / 24.0, (1.0 - np.cos(theta)) / np.where(small, 1.0, theta ** 2))
    W = np.zeros((len(w), 3, 3))
    W[:, 0, 1], W[:, 0, 2], W[:, 1, 2] = -w[:, 2], w[:, 1], -w[:, 0]
    W[:, 1, 0], W[:, 2, 0], W[:, 2, 1] = w[:, 2], -w[:, 1], w[:, 0]
    return np.eye(3) + a[:, None, None] * W + b[:, None, None] * (W @ W)


def _so3_log(R: np.ndarray) -> np.ndarray:
    """(M, 3, 3) -> (M, 3) rotation vectors (angles well below pi: the spring keeps them small)."""
    cos = np.clip((np.trace(R, axis1=1, axis2=2) - 1.0) / 2.0, -1.0, 1.0)
    theta = np.arccos(cos)
    v = np.stack([R[:, 2, 1] - R[:, 1, 2], R[:, 0, 2] - R[:, 2, 0], R[:, 1, 0] - R[:, 0, 1]], axis=1)
    sin = np.sin(theta)
    scale = np.where(theta < 1e-6, 0.5 + theta ** 2 / 12.0, theta / (2.0 * np.where(theta < 1e-6, 1.0, sin)))
    return v * scale[:, None]


@dataclass
class MountTrack:
    """Mount states at the integration times ``t`` (N,) = n / rate, for M mounts.

    position, velocity, acceleration: (N, M, 3) world, metres (per second, per second squared);
    rotation: (N, M, 3, 3) camera-to-world; omega: (N, M, 3) world-frame angular velocity, rad/s.
    """

    rate: int
    t: np.ndarray
    position: np.ndarray
    velocity: np.ndarray
    acceleration: np.ndarray
    rotation: np.ndarray
    omega: np.ndarray

    def step_of(self, time_s: float | np.ndarray) -> np.ndarray:
        """Index of the integration step nearest to ``time_s`` (clamped to the track)."""
        return np.clip(np.rint(np.asarray(time_s) * self.rate).astype(np.int64), 0, len(self.t) - 1)

    def pose(self, step: int, mount: int) -> np.ndarray:
        """(4, 4) camera-to-world of ``mount`` at integration step ``step``."""
        out = np.eye(4)
        out[:3, :3], out[:3, 3] = self.rotation[step, mount], self.position[step, mount]
        return out


def target_splines(times: np.ndarray, positions: np.ndarray, rotations: np.ndarray):
    """C2 interpolants through per-frame target poses.

    times: (F,) seconds; positions: (F, M, 3); rotations: (F, M, 3, 3). Returns a function
    ``(t (N,)) -> p, v, a (N, M, 3), R (N, M, 3, 3), w (N, M, 3) world rates``.
    """
    cs = CubicSpline(times, positions, axis=0, bc_type="not-a-knot") if len(times) > 2 else None
    splines = [RotationSpline(times, Rotation.from_matrix(rotations[:, m])) for m in range(rotations.shape[1])]

    def evaluate(t: np.ndarray):
        if cs is not None:
            p, v, a = cs(t), cs(t, 1), cs(t, 2)
        else:  # two frames: a straight line at constant velocity
            slope = (positions[1] - positions[0]) / (times[1] - times[0])
            p = positions[0] + (t - times[0])[:, None, None] * slope
            v, a = np.broadcast_to(slope, p.shape).copy(), np.zeros_like(p)
        R = np.stack([s(t).as_matrix() for s in splines], axis=1)
        w_body = np.stack([s(t, 1) for s in splines], axis=1)  # scipy's rates are body-frame
        w = np.einsum("nmij,nmj->nmi", R, w_body)
        return p, v, a, R, w

    return evaluate


def simulate_mounts(times: np.ndarray, positions: np.ndarray, rotations: np.ndarray,
                    springs: list[SpringConfig | None], rate: int) -> MountTrack:
    """Mount trajectories over ``[times[0], times[-1]]`` at ``rate`` Hz.

    times: (F,) frame times from 0; positions (F, M, 3) / rotations (F, M, 3, 3): the target
    (socket x offset) camera poses at those times; springs: per mount, None or disabled = rigid.
    Rigid mounts follow the C2 target exactly (derivatives analytic); spring mounts start at rest
    on their target and are integrated with semi-implicit Euler at step 1 / rate.
    """
    n = int(round((times[-1] - times[0]) * rate)) + 1
    t = times[0] + np.arange(n) / rate
    p, v, a, R, w = target_splines(times, positions, rotations)(t)
    sprung = [m for m, s in enumerate(springs) if s is not None and s.enabled]
    if sprung:
        p, v, a, R, w = (x.copy() for x in (p, v, a, R, w))
        idx = np.array(sprung)
        k = np.array([springs[m].stiffness for m in sprung])[:, None]
        c = np.array([springs[m].damping for m in sprung])[:, None]
        kr = np.array([springs[m].angular_stiffness for m in sprung])[:, None]
        cr = np.array([springs[m].angular_damping for m in sprung])[:, None]
        tp, tv, tR, tw = p[:, idx].copy(), v[:, idx].copy(), R[:, idx].copy(), w[:, idx].copy()
        pos, vel, rot, omg = tp[0].copy(), tv[0].copy(), tR[0].copy(), tw[0].copy()
        h = 1.0 / rate
        for i in range(n):
            acc = -k * (pos - tp[i]) - c * (vel - tv[i])
            alpha = -kr * _so3_log(rot @ np.transpose(tR[i], (0, 2, 1))) - cr * (omg - tw[i])
            p[i, idx], v[i, idx], a[i, idx], R[i, idx], w[i, idx] = pos, vel, acc, rot, omg
            vel = vel + h * acc
            pos = pos + h * vel
            omg = omg + h * alpha
            rot = _so3_exp(h * omg) @ rot
    return MountTrack(rate, t, p, v, a, R, w)


def standoff_offset(offset: np.ndarray, standoff: float, vertices: np.ndarray, rotation: np.ndarray,
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
