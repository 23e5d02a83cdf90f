"""Pose descriptions from 3D joints: hand-built skeletons and real Anny bodies in library poses."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from synthgen.pose_words import describe_pose
from synthgen.subjects.base import KEYPOINT_NAMES
from tests.fixtures.recipes import small_recipe
from tests.fixtures.skeletons import skeleton, as_array, sitting, crouching, t_pose, arms_up, leaning, lying_on_back, one_foot_raised, right_arm_up


@pytest.mark.parametrize("make, expected, absent", [
    (skeleton, ["standing", "arms at the sides"], ["sitting", "raised", "leaning"]),
    (arms_up, ["standing", "both arms raised above the head"], ["sitting"]),
    (t_pose, ["standing", "arms stretched out to the sides"], ["raised"]),
    (sitting, ["sitting"], ["standing", "crouching", "kneeling"]),
    (crouching, ["crouching", "leaning forward"], ["sitting", "standing"]),
    (lambda: leaning(30), ["leaning forward"], ["bending", "sitting"]),
    (lambda: leaning(70), ["bending forward"], ["sitting", "standing"]),
    (lambda: leaning(-30), ["leaning back"], ["forward"]),
    (lying_on_back, ["lying on the back"], ["standing", "sitting"]),
    (one_foot_raised, ["standing", "left foot raised"], ["right foot", "sitting"]),
    (lambda: one_foot_raised(0.45), ["standing on the right leg"], ["left leg", "sitting"]),
    (right_arm_up, ["right arm raised above the head", "left arm at the side"],
     ["both arms", "left arm raised"]),
])
def test_describe_pose_on_hand_built_skeletons(make, expected, absent):
    phrases = describe_pose(as_array(make()), KEYPOINT_NAMES)
    text = " | ".join(phrases)
    for e in expected:
        assert e in phrases, text
    for a in absent:
        assert a not in text, text


@pytest.mark.parametrize("make", [skeleton, sitting, crouching, t_pose, arms_up, one_foot_raised,
                                  right_arm_up])
def test_describe_pose_ignores_heading_and_position(make):
    points = as_array(make())
    rotated = Rotation.from_euler("z", 137, degrees=True).apply(points) + np.array([3.0, -2.0, 0.0])
    assert describe_pose(rotated) == describe_pose(points)


def test_describe_pose_accepts_any_keypoint_order_and_scales_with_body_size():
    points, names = as_array(sitting()), list(KEYPOINT_NAMES)
    order = np.random.default_rng(0).permutation(len(names))
    assert describe_pose(points[order], [names[i] for i in order]) == describe_pose(points, names)
    child = points * 0.55  # a child is smaller: thresholds are in leg lengths
    assert describe_pose(child) == describe_pose(points)


def test_describe_pose_rejects_bad_input():
    with pytest.raises(ValueError, match="23, 3"):
        describe_pose(np.zeros((17, 3)))
    with pytest.raises(ValueError, match="required"):
        describe_pose(np.zeros((2, 3)), ["nose", "left_eye"])
    bad = as_array(skeleton())
    bad[3, 1] = np.nan
    assert describe_pose(bad) == []
    assert describe_pose(np.zeros((23, 3))) == []


# --- describe_pose on real Anny bodies -----------------------------------------------------------
@pytest.fixture(scope="module")
def anny():
    from synthgen.subjects import build_subject_model

    return build_subject_model(small_recipe().subject)


def pose_library(model, name, indices, noise_deg=0.0, seed=0):
    """Anny bodies of several ages in library pose ``name`` (exact, or perturbed like a run)."""
    from synthgen.subjects.poses import base_pose_angles, euler_to_matrix, sample_library_pose

    rng = np.random.default_rng(seed)
    draws = []
    for i in indices:
        d = model.draw(0, i)
        if noise_deg:
            d["smpl_rotations"] = sample_library_pose(rng, {name: 1.0}, noise_deg)[1]
        else:
            d["smpl_rotations"] = euler_to_matrix(base_pose_angles(name))
        draws.append(d)
    return draws, model.pose(draws)


@pytest.mark.parametrize("pose, expected, absent", [
    ("sitting", "sitting", ["standing", "crouching"]),
    ("arms_raised", "both arms raised above the head", ["sitting"]),
    ("crouching", "crouching", ["sitting", "standing"]),
    ("kneeling", "kneeling", ["sitting", "standing"]),
    ("t_pose", "arms stretched out to the sides", ["sitting", "raised"]),
    ("standing", "standing", ["sitting", "raised"]),
    ("walking", "mid-stride with the left leg forward", ["sitting", "crouching", "kneeling"]),
    ("running", "right foot raised", ["sitting", "kneeling"]),
    ("bending", "bending forward", ["sitting"]),
    ("reaching", "left arm stretched forward", ["sitting"]),
])
def test_describe_pose_on_anny_library_poses(anny, pose, expected, absent):
    draws, subjects = pose_library(anny, pose, range(6))
    ages = [d["age_years"] for d in draws]
    assert min(ages) < 12 < max(ages)  # children and adults
    for d, subject in zip(draws, subjects):
        phrases = describe_pose(subject.keypoints_3d, anny.keypoint_names)
        text = " | ".join(phrases)
        assert expected in phrases, (d["age_years"], text)
        for a in absent:
            assert a not in text, (d["age_years"], text)


@pytest.mark.parametrize("pose, word, at_least", [
    ("sitting", "sitting", 0.9), ("crouching", "crouching", 0.85), ("kneeling", "kneeling", 0.8),
    ("arms_raised", "raised above the head", 0.9),
])
def test_describe_pose_survives_the_recipes_pose_noise(anny, pose, word, at_least):
    noise = small_recipe().subject.pose.noise_deg
    _, subjects = pose_library(anny, pose, range(20), noise_deg=noise, seed=1)
    hits = [any(word in p for p in describe_pose(s.keypoints_3d, anny.keypoint_names)) for s in subjects]
    assert np.mean(hits) >= at_least, hits
    walking = pose_library(anny, "walking", range(20), noise_deg=noise, seed=2)[1]
    assert not any("sitting" in " ".join(describe_pose(s.keypoints_3d, anny.keypoint_names)) for s in walking)
