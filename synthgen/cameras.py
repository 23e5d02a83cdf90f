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
from scipy.optimize import brentq
from scipy.spatial.transform import Rotation

from synthgen.recipe import CameraConfig, draw_weighted


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
    right = _cross(forward, up)
    right /= np.linalg.norm(right)
    down = _cross(forward, right)
    R = np.stack([right, down, forward])
    if roll_deg:
        R = Rotation.from_rotvec([0.0, 0.0, np.radians(roll_deg)]).as_matrix() @ R
    return R, -R @ position


def amodal_bbox(camera: Camera, points_world: np.ndarray) -> list[float]:
    """[x, y, w, h] of the projection of the points (N, 3) in front of the camera, occluders and
    the image border ignored (it may reach outside the image: truncation); zeros if none is."""
    # coordinates as rows (3, N): reductions over contiguous rows, not strided (N, 2) columns
    cam = camera.R @ np.asarray(points_world, dtype=np.float64).T + camera.t[:, None]
    front = cam[2] > 1e-6
    if not front.all():
        cam = cam[:, front]
    if not cam.shape[1]:
        return [0.0, 0.0, 0.0, 0.0]
    p = camera.K @ cam
    u, v = p[0] / p[2], p[1] / p[2]
    x0, y0 = float(u.min()), float(v.min())
    return [x0, y0, float(u.max()) - x0, float(v.max()) - y0]


def hull_points(points: np.ndarray) -> np.ndarray:
    """(M, 3) convex-hull vertices of (N, 3) points: same projected extent from any viewpoint
    outside the hull, at a fraction of the cost (framing projects them dozens of times)."""
    from scipy.spatial import ConvexHull, QhullError

    try:
        return points[ConvexHull(points).vertices]
    except (QhullError, ValueError):  # flat or degenerate point sets
        return points


def _elevation(rng: np.random.Generator, cfg: CameraConfig, bins: dict[str, int]) -> float:
    u = rng.random()
    if u < cfg.high_view_prob:
        return float(rng.uniform(*cfg.high_elevation_deg))
    if u < cfg.high_view_prob + cfg.ground_view_prob:
        return float(rng.uniform(*cfg.ground_elevation_deg))
    return _weighted(rng, cfg, "elevation_deg", bins)


def _weighted(rng: np.random.Generator, cfg: CameraConfig, name: str, bins: dict[str, int]) -> float:
    """One draw of the weighted attribute ``camera.<name>``; its bin goes into ``bins`` when weighted."""
    value, k = draw_weighted(rng, getattr(cfg, name))
    if k is not None:
        bins[f"camera.{name}"] = k
    return value


def _extent(camera: Camera, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    uv = camera.project(camera.to_camera(points))
    return uv.min(axis=0), uv.max(axis=0)


def sample_camera(rng: np.random.Generator, cfg: CameraConfig, points_world: np.ndarray,
                  width: int, height: int, min_height: float | None = None) -> tuple[Camera, dict[str, float]]:
    """Draw a camera that frames ``points_world`` (N, 3) to a sampled fraction of the image.

    min_height: with a ground drawn in the image, the camera stays this high above z = 0 (a low
    view whose camera would sink below the ground is raised: its elevation grows, the draws stay).
    Returns the camera and the drawn values (fov, azimuth, elevation, roll, distance, fraction;
    ``bins``: attribute -> bin index of the weighted ones, see :func:`synthgen.recipe.draw_weighted`).
    """
    bins: dict[str, int] = {}
    fov = _weighted(rng, cfg, "fov_deg", bins)
    azimuth = _weighted(rng, cfg, "azimuth_deg", bins)
    elevation = _elevation(rng, cfg, bins)
    roll = float(rng.normal(0.0, cfg.roll_sd_deg))
    fraction = _weighted(rng, cfg, "subject_fraction", bins)
    jitter = rng.uniform(-cfg.center_jitter, cfg.center_jitter, size=2)

    K = intrinsics_from_fov(fov, width, height)
    points_world = hull_points(points_world)
    lo, hi = points_world.min(axis=0), points_world.max(axis=0)
    target = (lo + hi) / 2.0
    az, el = np.radians(azimuth), np.radians(elevation)
    direction = np.array([np.cos(el) * np.sin(az), -np.cos(el) * np.cos(az), np.sin(el)])
    radius = float(np.linalg.norm(hi - lo)) / 2.0
    closest = float(((points_world - target) @ direction).max()) + 0.1  # stay 10 cm clear of the subject

    def framed(d: float, steps: int = 1) -> tuple[Camera, float]:
        cam = Camera(K, *look_at(target + d * direction, target, roll), width, height)
        cam = _recentre(cam, points_world, jitter, fraction, steps)
        uv_lo, uv_hi = _extent(cam, points_world)
        return cam, max((uv_hi[0] - uv_lo[0]) / width, (uv_hi[1] - uv_lo[1]) / height)

    pinhole = 2.0 * radius * K[1, 1] / (fraction * height)  # first guess, ignores perspective
    limits = (np.log(max(closest, pinhole / 4.0)), np.log(max(closest, pinhole) * 4.0))
    distance = float(np.exp(_solve_log_distance(lambda x: np.log(framed(float(np.exp(x)))[1] / fraction),
                                                np.log(max(closest, pinhole)), limits)))
    camera, achieved = framed(distance, steps=3)
    for _ in range(4 if min_height is not None else 0):  # raise a camera that sank below the ground
        if camera.position[2] >= min_height - 1e-6:
            break
        el = np.arcsin(np.clip((min_height - target[2]) / distance, -1.0, 1.0)) + np.radians(0.5)
        elevation = float(np.degrees(el))
        direction = np.array([np.cos(el) * np.sin(az), -np.cos(el) * np.cos(az), np.sin(el)])
        closest = float(((points_world - target) @ direction).max()) + 0.1
        limits = (np.log(max(closest, pinhole / 4.0)), np.log(max(closest, pinhole) * 4.0))
        distance = float(np.exp(_solve_log_distance(lambda x: np.log(framed(float(np.exp(x)))[1] / fraction),
                                                    np.log(max(closest, distance)), limits)))
        camera, achieved = framed(distance, steps=3)
    # a wide lens close up may not reach the fraction without entering the subject: record what was got
    drawn = {"fov_deg": fov, "azimuth_deg": azimuth, "elevation_deg": elevation, "roll_deg": roll,
             "distance": float(distance), "subject_fraction": float(achieved),
             "subject_fraction_target": fraction}
    if bins:  # the bins of weighted attributes (labels["bins"])
        drawn["bins"] = bins
    return camera, drawn


def _solve_log_distance(excess, start: float, limits: tuple[float, float], xtol: float = 1e-4) -> float:
    """The log distance x in ``limits`` where ``excess(x)`` (log of projected size over the
    wanted size, decreasing in x) is 0, or the limit it stays beyond.

    A subject far from the lens shrinks as 1 / distance (excess has slope -1 in x), so the
    step ``x + excess(x)`` from ``start`` usually brackets the root at once; Brent's method
    (scipy) then needs a few more projections where bisection needed fourteen.
    """
    lo, hi = limits
    seen: dict[float, float] = {}

    def g(x: float) -> float:
        if x not in seen:
            seen[x] = float(excess(x))
        return seen[x]

    a = float(np.clip(start, lo, hi))
    step = g(a) if np.isfinite(g(a)) else hi - a
    while True:  # walk (doubling) until the sign changes or a limit is reached
        b = float(np.clip(a + step, lo, hi))
        if b == a or np.sign(g(b)) != np.sign(g(a)):
            break
        a, step = b, 2.0 * step
    if b == a:  # the wanted size lies beyond a limit
        return a
    return float(brentq(g, min(a, b), max(a, b), xtol=xtol))


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cross product of two 3-vectors (np.cross's generality costs ~30 us a call)."""
    return np.array([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]])


def rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(3, 3) smallest rotation taking direction ``a`` to direction ``b`` (Rodrigues)."""
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    axis, cos = _cross(a, b), float(a @ b)
    if cos < -1.0 + 1e-12:  # opposite: any perpendicular axis
        perp = np.cross(a, [1.0, 0.0, 0.0] if abs(a[0]) < 0.9 else [0.0, 1.0, 0.0])
        return Rotation.from_rotvec(np.pi * perp / np.linalg.norm(perp)).as_matrix()
    skew = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + skew + skew @ skew / (1.0 + cos)


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
        Q = rotation_between(now, want)
        camera = Camera(camera.K, Q @ camera.R, Q @ camera.t, camera.width, camera.height)
    return camera


def _truncated_normal(rng: np.random.Generator, mean: float, sd: float, low: float, high: float) -> float:
    """One draw of N(mean, sd) restricted to [low, high] (rejection; the clipped mean when sd = 0)."""
    if sd <= 0.0:
        return float(np.clip(mean, low, high))
    for _ in range(1000):
        x = float(rng.normal(mean, sd))
        if low <= x <= high:
            return x
    return float(rng.uniform(low, high))  # the window is far in a tail: fall back to uniform


def sample_viewpoint_camera(rng: np.random.Generator, cfg: CameraConfig, points_world: np.ndarray,
                            width: int, height: int) -> tuple[Camera, dict[str, float]]:
    """A 3D-DST / PASCAL3D+ viewpoint camera looking at the box centre of ``points_world`` (N, 3).

    Draws (``cfg.viewpoint``): azimuth uniform (or over the front arc), polar angle from a
    truncated normal (elevation = 90 - polar), distance from a truncated normal (or fixed; in
    units of the box diagonal when ``distance_relative``), in-plane theta uniform, focal length
    from ``focal_mm`` / ``sensor_mm`` (or a vertical fov from ``cfg.fov_deg``), and the principal
    point (where the centre projects) within ``principal_jitter`` of the image centre. The
    extrinsics are :func:`synthgen.viewpoint.viewpoint_to_extrinsics` of the drawn
    values, so :func:`synthgen.viewpoint.camera_to_viewpoint` gives them back exactly.
    Pass every vertex: the centre is the box centre of the points given.
    """
    from synthgen.viewpoint import viewpoint_center, viewpoint_to_extrinsics

    vp = cfg.viewpoint
    if vp.azimuth == "front":
        azimuth = float(rng.uniform(-vp.front_arc_deg / 2.0, vp.front_arc_deg / 2.0)) % 360.0
    else:
        azimuth = float(rng.uniform(*vp.azimuth_deg)) % 360.0
    polar = _truncated_normal(rng, vp.polar_mean_deg, vp.polar_sd_deg, *vp.polar_range_deg)
    unit = 1.0
    center = viewpoint_center(points_world)
    if vp.distance_relative:
        pts = np.asarray(points_world, dtype=np.float64)
        unit = float(np.linalg.norm(pts.max(axis=0) - pts.min(axis=0))) or 1.0
    if vp.distance == "fixed":
        distance = vp.distance_mean * unit
    else:
        distance = _truncated_normal(rng, vp.distance_mean, vp.distance_sd, *vp.distance_range) * unit
    theta = float(rng.uniform(*vp.theta_deg))
    if vp.focal_mm is not None:
        focal = vp.focal_mm / vp.sensor_mm * max(width, height)  # sensor fit "auto": the larger side
    else:
        focal = (height / 2.0) / np.tan(np.radians(draw_weighted(rng, cfg.fov_deg)[0]) / 2.0)
    jitter = rng.uniform(-vp.principal_jitter, vp.principal_jitter, size=2) * np.array([width, height])
    px, py = (width - 1) / 2.0 + jitter[0], (height - 1) / 2.0 + jitter[1]
    K = np.array([[focal, 0.0, px], [0.0, focal, py], [0.0, 0.0, 1.0]])
    R, t = viewpoint_to_extrinsics(azimuth, 90.0 - polar, theta, distance, center)
    camera = Camera(K, R, t, width, height)
    uv_lo, uv_hi = _extent(camera, np.asarray(points_world, dtype=np.float64))
    drawn = {"azimuth_deg": azimuth, "elevation_deg": 90.0 - polar, "polar_deg": polar, "theta_deg": theta,
             "distance": float(distance), "focal": float(focal), "px": float(px), "py": float(py),
             "fov_deg": float(np.degrees(2.0 * np.arctan((height / 2.0) / focal))),
             "subject_fraction": float(max((uv_hi[0] - uv_lo[0]) / width, (uv_hi[1] - uv_lo[1]) / height))}
    return camera, drawn
