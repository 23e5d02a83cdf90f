"""Cameras frame the subject as drawn."""

import numpy as np
import pytest

from synthgen.cameras import look_at, sample_camera
from synthgen.recipe import CameraConfig


def test_look_at_is_opencv_and_orthonormal():
    R, t = look_at(np.array([0.0, -3.0, 1.0]), np.array([0.0, 0.0, 1.0]))
    assert np.allclose(R @ R.T, np.eye(3)) and np.isclose(np.linalg.det(R), 1)
    assert np.allclose(R @ np.array([0.0, 0.0, 1.0]) + t, [0, 0, 3])  # target straight ahead
    assert (R @ np.array([0.0, 0.0, 2.0]) + t)[1] < 0  # world up is image up (y down)


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.9])
def test_camera_frames_subject_to_the_drawn_fraction(fraction):
    rng = np.random.default_rng(0)
    points = rng.uniform([-0.3, -0.2, 0.0], [0.3, 0.2, 1.7], (500, 3))
    cfg = CameraConfig(subject_fraction=(fraction, fraction), fov_deg=(20, 90), roll_sd_deg=0)
    for _ in range(5):
        camera, drawn = sample_camera(rng, cfg, points, 256, 192)
        uv = camera.project(camera.to_camera(points))
        size = max(np.ptp(uv[:, 0]) / 256, np.ptp(uv[:, 1]) / 192)
        assert size == pytest.approx(drawn["subject_fraction"], rel=1e-6)
        closest = camera.to_camera(points)[:, 2].min() < 0.2  # a wide lens at its closest allowed distance
        assert size == pytest.approx(fraction, rel=0.01) or (closest and size < fraction)
        assert (camera.to_camera(points)[:, 2] > 0).all()
        assert uv.min() > -1 and uv[:, 0].max() < 256 and uv[:, 1].max() < 192
