"""Subject labels that need the camera: GenZoo/Animal3D fields for animals, PASCAL3D+ for objects.

A subject model may define ``camera_labels(subject, camera, keypoints_2d, keypoints_3d) -> dict``;
the pipeline merges the dict into ``labels["subject"]`` after the render stage (keypoints_2d:
(K, 3) pixels + COCO visibility; keypoints_3d: (K, 3) camera frame). Models without it are
unaffected.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from synthgen.viewpoint import camera_to_viewpoint, viewpoint_center


def vertical_fov_deg(K: np.ndarray, height: int) -> float:
    """Vertical field of view (degrees) of intrinsics K for an image ``height`` pixels tall."""
    return float(np.degrees(2.0 * np.arctan((height / 2.0) / K[1, 1])))


def animal_camera_labels(subject, camera, keypoints_2d: np.ndarray, keypoints_3d: np.ndarray,
                         to_world: np.ndarray) -> dict[str, Any]:
    """GenZoo / Animal3D camera-dependent fields of a SMAL-family subject.

    - ``fov``: vertical field of view, degrees (the perspective camera is ``cam_int``/``cam_ext``);
    - ``global_orient_cam`` (3,), ``transl_cam`` (3,): root rotation and translation that put
      ``SMAL(poses with this root, betas) + transl_cam`` straight into the camera frame;
    - ``root_cam`` (3,): the root joint in the camera frame;
    - weak perspective about the root r = root_cam, with S = ``weak_perspective_size`` =
      max(width, height): ``scale = 2 f / (S r_z)``, ``txs, tys`` = the root's image position in
      normalised units ((u - px) / (S/2), (v - py) / (S/2)), so a camera-frame point X lands at
      about ``px + S/2 (txs + scale (X_x - r_x))``, likewise y; HMR-style ``cam_t = root_cam``;
    - ``keypoint_2d`` (26, 3) and ``keypoint_3d`` (26, 3): Animal3D's names for the pipeline's
      ``keypoints_2d`` / ``keypoints_3d`` (same values).
    """
    K, R, t = (np.asarray(x, dtype=np.float64) for x in (camera.K, camera.R, camera.t))
    poses = np.asarray(subject.arrays["poses"], dtype=np.float64)
    root = np.asarray(subject.params["root_joint"], dtype=np.float64)
    transl = np.asarray(subject.arrays["transl"], dtype=np.float64)
    cam_from_model = R @ to_world
    root_cam = cam_from_model @ (root + transl) + t
    orient = Rotation.from_matrix(cam_from_model @ Rotation.from_rotvec(poses[:3]).as_matrix())
    size = max(camera.width, camera.height)
    uvw = K @ root_cam
    return {
        "fov": vertical_fov_deg(K, camera.height),
        "global_orient_cam": np.float32(orient.as_rotvec()).tolist(),
        "transl_cam": np.float32(root_cam - root).tolist(),
        "root_cam": np.float32(root_cam).tolist(),
        "scale": float(2.0 * K[0, 0] / (size * root_cam[2])),
        "txs": float((uvw[0] / uvw[2] - K[0, 2]) / (size / 2.0)),
        "tys": float((uvw[1] / uvw[2] - K[1, 2]) / (size / 2.0)),
        "weak_perspective_size": int(size),
        "keypoint_2d": np.asarray(keypoints_2d).tolist(),
        "keypoint_3d": np.asarray(keypoints_3d).tolist(),
    }


def object_camera_labels(subject, camera) -> dict[str, Any]:
    """PASCAL3D+ viewpoint of the camera about the object's box centre (see viewpoint.py).

    Exact functions of ``cam_int``/``cam_ext`` and ``viewpoint_center``; degrees and pixels.
    """
    center = viewpoint_center(subject.vertices)
    out = camera_to_viewpoint(camera.K, camera.cam_ext, center)
    out["viewpoint_center"] = center.tolist()
    return out
