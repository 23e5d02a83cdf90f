"""PASCAL3D+ / 3D-DST viewpoints <-> pinhole cameras, both ways, exactly.

World frame as everywhere in synthgen: Z up, a subject's front facing -Y, its own left at +X.
A viewpoint is seen from a reference point ``center`` (the subject's box centre,
:func:`viewpoint_center`):

- camera centre ``C = center + distance * (cos e sin a, -cos e cos a, sin e)``;
- ``azimuth`` a in [0, 360) degrees: 0 = in front (on the -Y side), 90 = on the subject's left
  (+X), increasing counter-clockwise seen from above;
- ``elevation`` e in [-90, 90] degrees, above the centre's horizontal plane (polar = 90 - e);
- ``theta`` in (-180, 180] degrees: in-plane rotation; the image turns counter-clockwise by theta
  about the principal point;
- ``distance``: |C - center| in metres;
- ``focal``: K[0, 0] in pixels (PASCAL3D+ stores focal 1 with a 3000-pixel viewport: 3000 px);
- ``px``, ``py``: the principal point in pixels, where ``center`` projects.

The camera (OpenCV axes, ``cam_ext`` = world -> camera) is ``R = Rz(-theta) @ R_lookat`` with
``R_lookat`` rows (right, down, forward) for a camera at C looking at ``center``, world up +Z
(+Y when looking straight up or down), and ``t = -R @ C``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["camera_to_viewpoint", "extrinsics_to_viewpoint", "viewpoint_center",
           "viewpoint_to_camera", "viewpoint_to_extrinsics"]

_UP = np.array([0.0, 0.0, 1.0])


def viewpoint_center(vertices: np.ndarray) -> np.ndarray:
    """(3,) float64 centre of the axis-aligned box of (N, 3) world-frame points."""
    v = np.asarray(vertices, dtype=np.float64)
    return (v.min(axis=0) + v.max(axis=0)) / 2.0


def _look_at_rows(position: np.ndarray, target: np.ndarray) -> np.ndarray:
    forward = target - position
    forward = forward / np.linalg.norm(forward)
    up = _UP if abs(forward @ _UP) <= 0.999 else np.array([0.0, 1.0, 0.0])
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    return np.stack([right, np.cross(forward, right), forward])


def _rz(angle_rad: float) -> np.ndarray:
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def direction(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """(3,) unit vector from the centre towards the camera."""
    a, e = np.radians(azimuth_deg), np.radians(elevation_deg)
    return np.array([np.cos(e) * np.sin(a), -np.cos(e) * np.cos(a), np.sin(e)])


def viewpoint_to_extrinsics(azimuth_deg: float, elevation_deg: float, theta_deg: float, distance: float,
                            center: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World -> camera (R (3, 3), t (3,)) of a viewpoint around ``center`` (3,)."""
    center = np.asarray(center, dtype=np.float64)
    position = center + float(distance) * direction(azimuth_deg, elevation_deg)
    R = _rz(-np.radians(theta_deg)) @ _look_at_rows(position, center)
    return R, -R @ position


def extrinsics_to_viewpoint(R: np.ndarray, t: np.ndarray, center: np.ndarray) -> dict[str, float]:
    """Inverse of :func:`viewpoint_to_extrinsics`.

    Returns azimuth, elevation, theta (degrees), distance, and ``off_axis_deg``: the angle between
    the optical axis and the ray to ``center`` (0 for viewpoint cameras; for other cameras theta is
    then the roll of the nearest look-at camera).
    """
    R, t, center = (np.asarray(x, dtype=np.float64) for x in (R, t, center))
    position = -R.T @ t
    offset = position - center
    distance = float(np.linalg.norm(offset))
    d = offset / distance
    elevation = float(np.degrees(np.arcsin(np.clip(d[2], -1.0, 1.0))))
    horizontal = np.hypot(d[0], d[1])
    azimuth = float(np.degrees(np.arctan2(d[0], -d[1]))) % 360.0 if horizontal > 1e-12 else 0.0
    Q = R @ _look_at_rows(position, center).T
    theta = float(np.degrees(np.arctan2(Q[0, 1], Q[0, 0])))
    off_axis = float(np.degrees(np.arctan2(np.linalg.norm(np.cross(R[2], -d)), R[2] @ -d)))
    return {"azimuth": azimuth, "elevation": elevation, "theta": theta, "distance": distance,
            "off_axis_deg": off_axis}


def camera_to_viewpoint(K: np.ndarray, cam_ext: np.ndarray, center: np.ndarray) -> dict[str, float]:
    """PASCAL3D+ fields (azimuth, elevation, theta, distance, focal, px, py) of a camera."""
    K, cam_ext = np.asarray(K, dtype=np.float64), np.asarray(cam_ext, dtype=np.float64)
    out = extrinsics_to_viewpoint(cam_ext[:3, :3], cam_ext[:3, 3], center)
    out.update(focal=float(K[0, 0]), px=float(K[0, 2]), py=float(K[1, 2]))
    return out


def viewpoint_to_camera(viewpoint: dict[str, float], center: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K (3, 3), cam_ext (4, 4)) from PASCAL3D+ fields (square pixels, no skew)."""
    R, t = viewpoint_to_extrinsics(viewpoint["azimuth"], viewpoint["elevation"], viewpoint["theta"],
                                   viewpoint["distance"], center)
    f = float(viewpoint["focal"])
    K = np.array([[f, 0.0, viewpoint["px"]], [0.0, f, viewpoint["py"]], [0.0, 0.0, 1.0]])
    ext = np.eye(4)
    ext[:3, :3], ext[:3, 3] = R, t
    return K, ext
