"""Pinhole cameras that frame a posed subject.

Conventions (used everywhere in synthgen):
- Camera frame: OpenCV, x right, y down, z forward, metres.
- ``cam_ext`` (4x4) maps world -> camera: ``X_cam = R @ X_world + t``.
- ``cam_int`` K (3x3); ``keypoints_2d = (K @ X_cam)[:2] / (K @ X_cam)[2]`` exactly.
- Pixel centres sit at integer coordinates: pixel (row r, col c) covers [c-0.5, c+0.5] x
  [r-0.5, r+0.5]; the image centre is ((W-1)/2, (H-1)/2).
- Depth is camera z (not ray length).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from synthgen.recipe import CameraConfig


@dataclass
class Camera:
    """K: (3, 3) intrinsics. R: (3, 3), t: (3,) world -> camera. Image ``width`` x ``height``."""

    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    width: int
    height: int

    @property
    def cam_ext(self) -> np.ndarray:
        """(4, 4) world -> camera."""
        out = np.eye(4)
        out[:3, :3], out[:3, 3] = self.R, self.t
        return out

    @property
    def position(self) -> np.ndarray:
        """(3,) camera centre in the world frame."""
        return -self.R.T @ self.t

    def to_camera(self, points_world: np.ndarray) -> np.ndarray:
        """(N, 3) world -> (N, 3) camera frame, same dtype as the input."""
        return (points_world @ self.R.T.astype(points_world.dtype)) + self.t.astype(points_world.dtype)

    def project(self, points_cam: np.ndarray) -> np.ndarray:
        """(N, 3) camera frame -> (N, 2) pixels, float64."""
        p = points_cam.astype(np.float64) @ self.K.T
        return p[:, :2] / p[:, 2:3]


def intrinsics_from_fov(fov_deg: float, width: int, height: int) -> np.ndarray:
    """(3, 3) K with square pixels and the given vertical field of view."""
    f = (height / 2.0) / np.tan(np.radians(fov_deg) / 2.0)
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def look_at(position: np.ndarray, target: np.ndarray, roll_deg: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """World -> camera (R, t) for a camera at ``position`` looking at ``target``, world up = +Z."""
    forward = target - position
    forward = forward / np.linalg.norm(forward)
    up = np.array([0.0, 0.0, 1.0])
    if abs(forward @ up) > 0.999:
        up = np.array([0.0, 1.0, 0.0])
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    R = np.stack([right, down, forward])
    if roll_deg:
        R = Rotation.from_rotvec([0.0, 0.0, np.radians(roll_deg)]).as_matrix() @ R
    return R, -R @ position


def _elevation(rng: np.random.Generator, cfg: CameraConfig) -> float:
    u = rng.random()
    if u < cfg.high_view_prob:
        return float(rng.uniform(*cfg.high_elevation_deg))
    if u < cfg.high_view_prob + cfg.ground_view_prob:
        return float(rng.uniform(*cfg.ground_elevation_deg))
    return float(rng.uniform(*cfg.elevation_deg))


def _extent(camera: Camera, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    uv = camera.project(camera.to_camera(points))
    return uv.min(axis=0), uv.max(axis=0)


def sample_camera(rng: np.random.Generator, cfg: CameraConfig, points_world: np.ndarray,
                  width: int, height: int) -> tuple[Camera, dict[str, float]]:
    """Draw a camera that frames ``points_world`` (N, 3) to a sampled fraction of the image.

    Returns the camera and the drawn values (fov, azimuth, elevation, roll, distance, fraction).
    """
    fov = float(rng.uniform(*cfg.fov_deg))
    azimuth = float(rng.uniform(*cfg.azimuth_deg))
    elevation = _elevation(rng, cfg)
    roll = float(rng.normal(0.0, cfg.roll_sd_deg))
    fraction = float(rng.uniform(*cfg.subject_fraction))
    jitter = rng.uniform(-cfg.center_jitter, cfg.center_jitter, size=2)

    K = intrinsics_from_fov(fov, width, height)
    lo, hi = points_world.min(axis=0), points_world.max(axis=0)
    target = (lo + hi) / 2.0
    az, el = np.radians(azimuth), np.radians(elevation)
    direction = np.array([np.cos(el) * np.sin(az), -np.cos(el) * np.cos(az), np.sin(el)])
    radius = float(np.linalg.norm(hi - lo)) / 2.0
    closest = float(((points_world - target) @ direction).max()) + 0.1  # stay 10 cm clear of the subject

    def framed(d: float) -> tuple[Camera, float]:
        cam = Camera(K, *look_at(target + d * direction, target, roll), width, height)
        cam = _recentre(cam, points_world, jitter, fraction)
        uv_lo, uv_hi = _extent(cam, points_world)
        return cam, max((uv_hi[0] - uv_lo[0]) / width, (uv_hi[1] - uv_lo[1]) / height)

    # the projected size shrinks monotonically with distance: bisect it (in log distance)
    pinhole = 2.0 * radius * K[1, 1] / (fraction * height)  # first guess, ignores perspective
    near, far = np.log(max(closest, pinhole / 4.0)), np.log(max(closest, pinhole) * 4.0)
    for _ in range(18):
        mid = (near + far) / 2.0
        near, far = (mid, far) if framed(float(np.exp(mid)))[1] > fraction else (near, mid)
    distance = float(np.exp(far))
    camera, achieved = framed(distance)
    # a wide lens close up may not reach the fraction without entering the subject: record what was got
    drawn = {"fov_deg": fov, "azimuth_deg": azimuth, "elevation_deg": elevation, "roll_deg": roll,
             "distance": float(distance), "subject_fraction": float(achieved),
             "subject_fraction_target": fraction}
    return camera, drawn


def _recentre(camera: Camera, points_world: np.ndarray, jitter: np.ndarray, fraction: float,
              steps: int = 3) -> Camera:
    """Pan/tilt the camera about its centre so the subject's box centre lands at centre + jitter.

    Rotating (not sliding) keeps the viewpoint, so perspective and occlusions stay as drawn;
    a few fixed-point steps absorb the box's change of shape under rotation.
    """
    size = np.array([camera.width, camera.height], dtype=float)
    slack = np.clip((1.0 - fraction) / 2.0, 0.0, None)
    goal = np.append(size / 2.0 + np.clip(jitter, -slack, slack) * size - 0.5, 1.0)
    K_inv = np.linalg.inv(camera.K)
    for _ in range(steps):
        uv_lo, uv_hi = _extent(camera, points_world)
        now = K_inv @ np.append((uv_lo + uv_hi) / 2.0, 1.0)
        want = K_inv @ goal
        rotation, _ = Rotation.align_vectors((want / np.linalg.norm(want))[None], (now / np.linalg.norm(now))[None])
        Q = rotation.as_matrix()
        camera = Camera(camera.K, Q @ camera.R, Q @ camera.t, camera.width, camera.height)
    return camera
