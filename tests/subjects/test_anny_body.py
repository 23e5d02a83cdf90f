"""Anny subjects: shapes across ages, library and file poses within joint limits, ground placement."""

import numpy as np
import pytest

from synthgen.errors import UserError
from synthgen.subjects.poses import (BASE_POSES, JOINT_LIMITS_DEG, SMPL_JOINTS, PoseFileBank,
                                     sample_library_angles, sample_library_pose)
from tests.fixtures.recipes import small_recipe


def test_library_poses_are_perturbed_within_joint_limits():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(100):
        name, angles = sample_library_angles(rng, {n: 1.0 for n in BASE_POSES}, noise_deg=20)
        seen.add(name)
        assert np.all(angles >= JOINT_LIMITS_DEG[..., 0] - 1e-6)
        assert np.all(angles <= JOINT_LIMITS_DEG[..., 1] + 1e-6)
    assert seen == set(BASE_POSES)
    name, rotations = sample_library_pose(np.random.default_rng(5), {"sitting": 1.0}, 0.0)
    assert name == "sitting" and np.allclose(rotations @ rotations.transpose(0, 2, 1), np.eye(3))


def test_pose_file_bank_reads_amass_and_bedlam_layouts(tmp_path):
    rng = np.random.default_rng(1)
    amass = rng.normal(0, 0.3, (5, 156))
    np.savez(tmp_path / "amass.npz", poses=amass, trans=np.zeros((5, 3)), mocap_framerate=120.0)
    np.savez(tmp_path / "bedlam.npz", body_pose=rng.normal(0, 0.3, (3, 63)))
    bank = PoseFileBank([str(tmp_path / "amass.npz"), str(tmp_path / "bedlam.npz")])
    assert bank.poses.shape == (8, 24, 3)
    assert np.allclose(bank.poses[0, 1:22], amass[0, 3:66].reshape(21, 3))
    assert np.all(bank.poses[:, 0] == 0)  # global orientation comes from the placement draw
    np.savez(tmp_path / "bad.npz", joints=np.zeros((2, 3)))
    with pytest.raises(UserError, match="expected 'poses'"):
        PoseFileBank([str(tmp_path / "bad.npz")])
    with pytest.raises(UserError, match="does not exist"):
        PoseFileBank([str(tmp_path / "missing.npz")])


@pytest.fixture(scope="module")
def anny_model():
    from synthgen.subjects import build_subject_model

    return build_subject_model(small_recipe().subject)


def test_anny_shapes_span_infants_to_elders(anny_model):
    draws = [anny_model.draw(3, i) for i in range(40)]
    posed = anny_model.pose([d | {"smpl_rotations": np.tile(np.eye(3), (24, 1, 1))} for d in draws])
    heights = np.array([p.vertices[:, 2].max() for p in posed])
    ages = np.array([d["age_years"] for d in draws])
    assert ages.min() < 15 and ages.max() > 60
    assert heights[ages < 5].max() < 1.2 < heights[ages > 20].min()
    assert np.corrcoef(np.minimum(ages, 18), heights)[0, 1] > 0.8


def test_subjects_stand_on_the_ground_and_are_split_independent(anny_model):
    draws = [anny_model.draw(0, i) for i in range(20)]
    posed = anny_model.pose(draws)
    again = anny_model.pose(draws[5:7])
    assert np.array_equal(again[0].vertices, posed[5].vertices)
    for p in posed:
        assert p.vertices[:, 2].min() == pytest.approx(0.0, abs=1e-5)
        assert p.vertices.dtype == np.float32 and p.keypoints_3d.shape == (29, 3)  # COCO-23 + pelvis, spine, thorax, neck, head, head_top


def test_pose_files_drive_anny(tmp_path):
    from synthgen.subjects import build_subject_model

    poses = np.zeros((1, 72))
    poses[0, 3 * SMPL_JOINTS.index("left_knee")] = np.radians(90)  # knee flexion
    np.savez(tmp_path / "k.npz", poses=poses)
    model = build_subject_model(small_recipe(subject={"pose": {"files": [str(tmp_path / "k.npz")],
                                                               "file_fraction": 1.0}}).subject)
    draw = model.draw(0, 0)
    assert draw["pose_name"] == "file:0"
    subject = model.pose([draw | {"yaw_deg": 0.0}])[0]
    names = model.keypoint_names
    knee, ankle = (subject.keypoints_3d[names.index(n)] for n in ("left_knee", "left_ankle"))
    # a 90-degree knee puts the left ankle behind the knee (+Y is behind: bodies face -Y) at knee height
    assert ankle[1] - knee[1] > 0.25 and abs(ankle[2] - knee[2]) < 0.15


def test_phenotype_priors_are_anny_own_distributions(anny_model):
    """The Beta parameters drawn per sample are those of Anny's age-conditional priors
    (``get_distribution_params``), across ages from below to above its anchors."""
    import torch

    from synthgen.subjects.anny_body import beta_params

    prior = anny_model.shape_prior
    for group in ("boys", "girls"):
        for key in ("height", "weight", "muscle", "proportions"):
            dist = getattr(prior, f"{group}_conditional_{key}_distribution")
            for age in np.linspace(-0.5, 1.5, 41, dtype=np.float32):
                alpha, beta = dist.get_distribution_params(torch.tensor([age]))
                mine = beta_params(dist, float(age))
                assert mine == pytest.approx((float(alpha[0]), float(beta[0])), rel=1e-6)
