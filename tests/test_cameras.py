"""Cameras frame the subject as drawn; the shaded backend varies looks and reads user backgrounds."""

import cv2
import numpy as np
import pytest

from synthgen.cameras import look_at, sample_camera
from synthgen.errors import UserError
from synthgen.generate.shaded import render_shaded
from synthgen.recipe import CameraConfig, ShadedConfig


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


def _layers(size=64):
    yy, xx = np.mgrid[:size, :size]
    mask = (xx - size / 2) ** 2 + (yy - size / 2) ** 2 < (size / 3) ** 2
    normal = np.zeros((size, size, 3), np.float32)
    normal[mask] = [0, 0, -1]
    parts = np.where(mask, 2, 0).astype(np.uint8)
    return {"mask": mask.astype(np.uint8) * 255, "normal": normal, "parts": parts}


def test_shaded_images_are_deterministic_and_varied():
    names = ["background", "head", "torso"]
    a = [render_shaded(_layers(), names, np.random.default_rng(i), np.random.default_rng(100 + i),
                       ShadedConfig())[0] for i in range(4)]
    b = render_shaded(_layers(), names, np.random.default_rng(0), np.random.default_rng(100), ShadedConfig())[0]
    assert np.array_equal(a[0], b)
    assert a[0].shape == (64, 64, 3) and a[0].dtype == np.uint8
    centres = [img[32, 32].astype(int) for img in a]
    assert max(np.abs(c - centres[0]).sum() for c in centres) > 30


def test_folder_backgrounds_and_their_errors(tmp_path):
    cv2.imwrite(str(tmp_path / "red.png"), np.full((80, 100, 3), (0, 0, 255), np.uint8))
    image, _ = render_shaded(_layers(), ["background", "head", "torso"], np.random.default_rng(0),
                             np.random.default_rng(0), ShadedConfig(background="folder", background_dir=str(tmp_path)))
    corner = image[:5, :5].reshape(-1, 3).mean(0)
    assert corner[0] > 150 and corner[1] < 80 and corner[2] < 80
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="holds no images"):
        render_shaded(_layers(), ["background", "head", "torso"], np.random.default_rng(0), np.random.default_rng(0),
                      ShadedConfig(background="folder", background_dir=str(empty)))
