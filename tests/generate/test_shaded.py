"""The shaded backend varies looks and reads user backgrounds."""

import cv2
import numpy as np
import pytest

from synthgen.errors import UserError
from synthgen.generate.shaded import render_shaded
from synthgen.recipe import ShadedConfig


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
