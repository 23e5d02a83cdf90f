"""Motions: embedded procedural ones, AMASS/Anny files, resampling, retargeting onto Anny."""

from __future__ import annotations

import numpy as np
import pytest

from synthgen.errors import UserError
from synthgen.sequences.motion import (
    PROCEDURAL,
    MotionFileBank,
    draw_motion,
    heading_of,
    load_motion_file,
    procedural_motion,
    slerp_matrices,
    yaw_matrix,
)
from synthgen.recipe import MotionConfig
from synthgen.subjects.poses import SMPL_JOINTS
from tests.fixtures.motion_files import amass_file


def _angle(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(..., 3, 3) x2 -> (...) geodesic angle, radians."""
    rel = np.einsum("...ji,...jk->...ik", a, b)
    return np.arccos(np.clip((np.trace(rel, axis1=-2, axis2=-1) - 1) / 2, -1, 1))


@pytest.mark.parametrize("name", sorted(PROCEDURAL))
def test_procedural_motions_are_smooth_deterministic_and_grounded(name):
    a = procedural_motion(name, np.random.default_rng(5), duration=2.0, speed=1.0, style_noise_deg=3.0)
    b = procedural_motion(name, np.random.default_rng(5), duration=2.0, speed=1.0, style_noise_deg=3.0)
    assert np.array_equal(a.rotations, b.rotations) and np.array_equal(a.root_position, b.root_position)
    assert a.duration >= 2.0 and np.isfinite(a.rotations).all()
    frames = a.sample(np.arange(61) / 30.0)
    step = _angle(frames.rotations[:-1], frames.rotations[1:])  # per-frame joint rotation
    assert step.max() < np.radians(25)                          # no jumps at 30 fps
    accel = np.diff(step, axis=0)                                # no kinks either
    assert np.abs(accel).max() < np.radians(8)
    assert np.allclose(frames.root_position[0], 0.0) and frames.root_position[:, 2].max() == 0.0
    moved = np.linalg.norm(frames.root_position[-1, :2])
    if name in ("walk", "turn"):
        assert 1.2 < moved < 3.5  # about 1 m/s for 2 s
        turned = np.degrees(abs(heading_of(frames.root_rotation[-1])))
        assert (turned > 30) if name == "turn" else (turned < 12)  # the pelvis swings a few degrees
    else:
        assert moved < 1e-9


def test_resampling_is_exact_at_samples_and_slerps_between():
    m = procedural_motion("wave", np.random.default_rng(0), duration=1.0)
    assert np.allclose(m.sample(np.arange(m.num_samples) / m.fps).rotations, m.rotations, atol=1e-12)
    mid = m.sample(np.array([2.5 / m.fps])).rotations[0]
    a, b = m.rotations[2], m.rotations[3]
    assert np.allclose(_angle(a, mid), _angle(mid, b), atol=1e-9)       # halfway along the arc
    assert np.allclose(_angle(a, mid) * 2, _angle(a, b), atol=1e-9)
    assert np.allclose(slerp_matrices(a[None], b[None], np.array([1.0]))[0], b, atol=1e-12)
    late = m.sample(np.array([100.0]))  # held at the end
    assert np.allclose(late.rotations[0], m.rotations[-1])


def test_amass_file_loads_into_world_terms(tmp_path):
    motion = load_motion_file(amass_file(tmp_path / "clip.npz", heading_deg=30.0))
    assert motion.source == "amass" and motion.fps == 60.0 and motion.num_samples == 121
    # standing upright, turned by the file's heading; displacement from the first frame
    assert np.degrees(heading_of(motion.root_rotation[0])) == pytest.approx(30.0, abs=1e-9)
    assert np.allclose(motion.root_rotation[0] @ [0, 0, 1], [0, 0, 1])
    assert np.allclose(motion.root_position[0], 0.0)
    assert np.linalg.norm(motion.root_position[-1]) == pytest.approx(2.0)
    knee = SMPL_JOINTS.index("left_knee")
    assert np.degrees(_angle(np.eye(3), motion.rotations[0, knee])) == pytest.approx(90.0)
    # the window drawn for a sequence, aligned to face -Y then turned by the recipe's yaw (0 here)
    config = MotionConfig(files=[str(tmp_path / "clip.npz")], file_fraction=1.0, yaw_deg=(0.0, 0.0))
    window = draw_motion(config, MotionFileBank(config.files), 0, 0, duration=1.0)
    assert window.info["source"] == "amass" and window.num_samples == 61
    assert abs(heading_of(window.root_rotation[0])) < 1e-9
    assert np.allclose(window.root_position[-1], [0.0, -1.0, 0.0], atol=1e-9)  # forward = -Y
    frames = window.sample(np.arange(31) / 30.0)  # resampled 60 -> 30 fps: every other sample
    assert np.allclose(frames.root_position, window.root_position[::2], atol=1e-12)


def test_bad_motion_files_are_user_errors(tmp_path):
    np.savez(tmp_path / "bad.npz", poses=np.zeros((4, 72)))
    with pytest.raises(UserError, match="frame rate"):
        load_motion_file(tmp_path / "bad.npz")
    with pytest.raises(UserError, match="does not exist"):
        load_motion_file(tmp_path / "missing.npz")


def test_amass_motion_drives_anny_through_the_retarget(tmp_path):
    from synthgen.recipe import SubjectConfig
    from synthgen.sequences.bodies import AnnyFrames
    from synthgen.subjects.anny_body import AnnyBody
    from synthgen.subjects.base import KEYPOINT_NAMES

    body = AnnyFrames(AnnyBody(SubjectConfig()), ["head", "left_knee"])
    config = MotionConfig(files=[str(amass_file(tmp_path / "clip.npz", knee_deg=90.0))], file_fraction=1.0,
                          yaw_deg=(0.0, 0.0))
    motion = draw_motion(config, MotionFileBank(config.files), 0, 0, duration=0.2).sample(np.array([0.0, 0.1]))
    draw = body.model.draw(0, 0)
    posed = body.pose(draw, motion)
    kp = posed.keypoints[0].astype(np.float64)

    def bend(side):
        hip, knee, ankle = (kp[KEYPOINT_NAMES.index(f"{side}_{j}")] for j in ("hip", "knee", "ankle"))
        a, b = knee - hip, ankle - knee
        return np.degrees(np.arccos(a @ b / np.linalg.norm(a) / np.linalg.norm(b)))

    assert bend("left") == pytest.approx(90.0, abs=12.0)  # the file's knee, on Anny's leg
    assert bend("right") < 15.0
    nose, head = kp[KEYPOINT_NAMES.index("nose")], posed.socket_position[0, 0]
    assert nose[1] < head[1] and head[2] > 0.4  # upright, facing -Y
    # the rest T-pose sockets carry the body axes (SMPL_TO_WORLD)
    assert posed.rest_vertices.shape == posed.vertices[0].shape


def test_anny_native_file_round_trip(tmp_path):
    n, bones = 5, 104
    pp = np.tile(np.eye(4), (n, bones, 1, 1))
    pp[:, 0, :3, :3] = yaw_matrix(np.linspace(0, 0.5, n))
    pp[:, 0, :3, 3] = np.outer(np.arange(n), [0.1, 0.0, 0.0]) + [5.0, 5.0, 1.0]
    np.savez(tmp_path / "anny.npz", anny_pose_parameters=pp, fps=np.array(10.0))
    motion = load_motion_file(tmp_path / "anny.npz")
    assert motion.source == "anny" and motion.anny_local.shape == (n, bones, 3, 3)
    assert np.allclose(motion.root_position[-1], [0.4, 0.0, 0.0])
    assert heading_of(motion.root_rotation[-1]) == pytest.approx(0.5)
