"""Animals: SMAL-family files (synthetic, real shapes; see tests/fixtures/smal_fixture.py) and the embedded
quadruped."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from synthgen.cameras import sample_camera
from synthgen.errors import MissingModelError, UserError
from synthgen.recipe import SubjectConfig, recipe_from_dict
from synthgen.subjects import animal_poses as ap
from synthgen.subjects import build_subject_model
from synthgen.subjects.model_files import convert_pickle, read_npz_arrays
from synthgen.subjects.quadruped import quadruped_arrays, write_quadruped
from synthgen.subjects.animal_keypoints import geometric_keypoints
from synthgen.subjects.animal_shapes import SMAL_FAMILIES, SpeciesFamily, draw_betas
from synthgen.subjects.base import BATCH
from synthgen.subjects.smal_body import SmalBody

from tests.fixtures import smal_fixture


def animal(**overrides) -> SubjectConfig:
    return SubjectConfig.model_validate({"kind": "animal"} | overrides)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Official-style pickles of the synthetic SMAL model and cluster data, and their .npz."""
    root = tmp_path_factory.mktemp("smal")
    model_pkl = smal_fixture.write_smal_pkl(root / "smal_CVPR2017.pkl")
    data_pkl = smal_fixture.write_clusters_pkl(root / "smal_CVPR2017_data.pkl")
    npz = root / "npz"
    reports = {"model": convert_pickle(model_pkl, npz / "smal_CVPR2017.npz"),
               "data": convert_pickle(data_pkl, npz / "smal_CVPR2017_data.npz")}
    return {"model_pkl": model_pkl, "data_pkl": data_pkl, "model": npz / "smal_CVPR2017.npz",
            "data": npz / "smal_CVPR2017_data.npz", "reports": reports, "root": root}


@pytest.fixture(scope="module")
def smal(files) -> SmalBody:
    return SmalBody(animal(model="smal", model_path=str(files["model"]),
                           animal={"cluster_file": str(files["data"])}))


@pytest.fixture(scope="module")
def quadruped() -> SmalBody:
    return build_subject_model(animal())


def smal_forward(model: SmalBody, poses, betas) -> np.ndarray:
    """Model-frame vertices of a fresh smplx.lbs call on labels (batch of one)."""
    from smplx.lbs import lbs

    m = model.model
    with torch.no_grad():
        v, _ = lbs(torch.tensor(np.array([betas]), dtype=torch.float32),
               torch.tensor(np.array([poses]), dtype=torch.float32),
                   m.v_template, m.shapedirs[..., :len(betas)], m.posedirs, m.J_regressor, m.parents, m.weights)
    return v[0].numpy().astype(np.float64)


# --- the files ----------------------------------------------------------------------------------
def test_synthetic_smal_has_the_real_array_shapes():
    a = smal_fixture.synthetic_smal()
    assert a["v_template"].shape == (3889, 3) and a["f"].shape == (7774, 3)
    assert a["shapedirs"].shape == (3889, 3, 41) and a["posedirs"].shape == (3889, 3, 288)
    assert a["J_regressor"].shape == (33, 3889) and a["weights"].shape == (3889, 33)
    assert a["kintree_table"].shape == (2, 33)
    edges = np.sort(np.concatenate([a["f"][:, [0, 1]], a["f"][:, [1, 2]], a["f"][:, [2, 0]]]).astype(int), 1)
    assert (np.unique(edges, axis=0, return_counts=True)[1] == 2).all()  # closed, manifold


def test_conversion_converts_or_reports_every_entry(files):
    report = files["reports"]["model"]
    with open(files["model_pkl"], "rb") as handle, smal_fixture.fake_chumpy():
        keys = set(pickle.load(handle))
    assert set(report.converted) | set(report.dropped) == keys
    assert set(report.dropped) == {"weights_prior", "sym_verts"}
    assert "chumpy.reordering.Select" in report.dropped["weights_prior"]
    stored = read_npz_arrays(files["model"])
    assert json.loads(str(stored["_conversion_report"]))["dropped"] == report.dropped
    assert stored["J_regressor"].shape == (33, 3889)  # scipy CSC made dense
    np.testing.assert_array_equal(stored["v_template"], smal_fixture.synthetic_smal()["v_template"])
    data = files["reports"]["data"]
    assert data.converted["cluster_means"] == [5, 41] and data.converted["cluster_cov"] == [5, 41, 41]


def test_conversion_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"v_template": Evil()}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        convert_pickle(path, tmp_path / "evil.npz")


def test_a_pickle_is_only_read_with_the_opt_in(files, tmp_path, monkeypatch, caplog):
    import shutil

    pkl = shutil.copy(files["model_pkl"], tmp_path / "smal_CVPR2017.pkl")
    with pytest.raises(UserError, match="convert_pickle") as err:
        SmalBody(animal(model="smal", model_path=str(pkl)))
    assert "python -m synthgen.subjects.smal_files convert" in str(err.value)
    with caplog.at_level("WARNING"):
        first = SmalBody(animal(model="smal", model_path=str(pkl), animal={"convert_pickle": True}))
    assert "unpickling once" in caplog.text and (tmp_path / "smal_CVPR2017.npz").is_file()

    def no_unpickling(*args, **kwargs):
        raise AssertionError("unpickled again")

    monkeypatch.setattr(pickle, "Unpickler", no_unpickling)
    monkeypatch.setattr("synthgen.subjects.model_files.ArraysUnpickler", no_unpickling)
    again = SmalBody(animal(model="smal", model_path=str(pkl), animal={"convert_pickle": True}))
    np.testing.assert_array_equal(again.faces, first.faces)


def test_npz_loads_never_unpickle(files, monkeypatch):
    real_load = np.load

    def strict_load(*args, **kwargs):
        assert not kwargs.get("allow_pickle"), "an .npz was opened with allow_pickle=True"
        return real_load(*args, **kwargs)

    monkeypatch.setattr(np, "load", strict_load)
    SmalBody(animal(model="smal", model_path=str(files["model"]), animal={"cluster_file": str(files["data"])}))


def test_missing_files_name_the_field_and_the_source(tmp_path):
    with pytest.raises(MissingModelError, match="smal.is.tue.mpg.de"):
        SmalBody(animal(model="smal", model_path=str(tmp_path / "nowhere.npz")))
    with pytest.raises(ValueError, match="model_path"):
        animal(model="smal")


# --- loading a SMAL file -------------------------------------------------------------------------
def test_smal_file_axes_names_and_sizes(smal):
    assert smal.model.joint_names == ap.SMAL_JOINTS[:33]
    np.testing.assert_array_equal(smal.to_world, smal_fixture.TO_WORLD)
    assert smal.faces.shape == (7774, 3) and smal.faces.dtype == np.int32
    assert smal.face_parts.shape == (7774,) and smal.face_parts.dtype == np.uint8
    assert set(np.unique(smal.face_parts)) == set(range(1, len(ap.PART_NAMES)))
    assert smal.num_betas == 41 and smal.keypoint_source == "geometric"
    assert smal.species_names == sorted(SMAL_FAMILIES)


def test_embedded_quadruped_as_a_smal_file_poses_identically(quadruped, tmp_path):
    path = write_quadruped(tmp_path / "quadruped.npz")
    as_file = SmalBody(animal(model="smal", model_path=str(path)))
    assert as_file.keypoint_source == "model" and as_file.species_names == quadruped.species_names
    np.testing.assert_array_equal(as_file.to_world, quadruped.to_world)
    draws = [quadruped.draw(3, i) for i in range(3)]
    for a, b in zip(quadruped.pose(draws), as_file.pose(draws)):
        np.testing.assert_array_equal(a.vertices, b.vertices)
        np.testing.assert_array_equal(a.keypoints_3d, b.keypoints_3d)


def test_embedded_quadruped_is_a_smal_format_model():
    a = quadruped_arrays()
    nv, nj = len(a["v_template"]), len(a["joint_names"])
    assert nj == 35 and a["shapedirs"].shape == (nv, 3, 10) and a["posedirs"].shape == (nv, 3, 9 * 34)
    np.testing.assert_allclose(a["weights"].sum(1), 1.0)
    np.testing.assert_allclose(a["J_regressor"].sum(1), 1.0)
    assert a["cluster_means"].shape == (5, 10) and a["cluster_cov"].shape == (5, 10, 10)
    assert np.all(np.linalg.eigvalsh(a["cluster_cov"]) > 0)
    edges = np.sort(np.concatenate([a["f"][:, [0, 1]], a["f"][:, [1, 2]], a["f"][:, [2, 0]]]).astype(int), 1)
    assert (np.unique(edges, axis=0, return_counts=True)[1] == 2).all()  # closed parts


@pytest.mark.parametrize("beta,what", [(1, "leg_length"), (2, "body_length"), (4, "head_size")])
def test_quadruped_shape_directions_do_what_they_say(quadruped, beta, what):
    names = quadruped.model.joint_names
    draw = quadruped.draw(0, 0) | {"rotations": np.tile(np.eye(3), (len(names), 1, 1))}
    base = quadruped.pose([draw | {"betas": np.zeros(10)}])[0]
    more = np.zeros(10)
    more[beta] = 3.0
    bigger = quadruped.pose([draw | {"betas": more}])[0]
    kp = {n: i for i, n in enumerate(ap.KEYPOINT_NAMES)}

    def measure(s) -> float:
        k = s.keypoints_3d
        if what == "leg_length":
            return float(k[kp["left_shoulder"], 2] - k[kp["left_front_paw"], 2])
        if what == "body_length":
            return float(np.linalg.norm(k[kp["neck"]] - k[kp["tail_base"]]))
        return float(np.linalg.norm(k[kp["left_ear"]] - k[kp["mouth_mid"]]))

    assert measure(bigger) > 1.05 * measure(base)


# --- draws and posing ----------------------------------------------------------------------------
def test_draws_are_deterministic_and_species_shapes_follow_the_clusters(smal, files):
    a, b = smal.draw(7, 3), smal.draw(7, 3)
    assert a["species"] == b["species"] and np.array_equal(a["betas"], b["betas"])
    assert np.array_equal(a["rotations"], b["rotations"]) and a["pose_name"] == b["pose_name"]
    horse = SmalBody(animal(model="smal", model_path=str(files["model"]),
                            animal={"cluster_file": str(files["data"]), "species": {"horse": 1.0}}))
    betas = np.stack([horse.draw(0, i)["betas"] for i in range(400)])
    mean = smal_fixture.synthetic_clusters()["cluster_means"][SMAL_FAMILIES.index("horse")]
    assert np.abs(betas.mean(0) - mean).max() < 0.2
    assert np.all(np.abs(betas) <= 10.0)


def test_plausibility_bound_redraws_then_clips():

    wide = SpeciesFamily("wide", np.zeros(5), np.eye(5) * 4.0, "test")
    rng = np.random.default_rng(0)
    draws = [draw_betas(rng, wide, 3.0) for _ in range(50)]
    assert all(np.all(np.abs(b) <= 3.0) for b, _ in draws) and max(n for _, n in draws) > 0
    hopeless = SpeciesFamily("far", np.full(5, 50.0), np.eye(5), "test")
    betas, tries = draw_betas(rng, hopeless, 10.0)
    assert tries == 100 and np.all(betas == 10.0)


def test_recipe_gaussians_and_unknown_species(quadruped):
    body = build_subject_model(animal(animal={"species": {"wolf": 1.0},
                                              "species_shapes": {"wolf": {"mean": 2.0, "sd": 0.1}}}))
    betas = np.stack([body.draw(0, i)["betas"] for i in range(50)])
    assert body.species_names == ["wolf"] and abs(betas.mean() - 2.0) < 0.05
    with pytest.raises(UserError, match="known families"):
        build_subject_model(animal(animal={"species": {"dragon": 1.0}}))


def test_library_poses_stay_within_joint_limits(quadruped):
    names = quadruped.model.joint_names
    limits = ap.limits_array(names)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(100):
        name, angles = ap.sample_library_angles(rng, {n: 1.0 for n in ap.BASE_POSES}, 20.0, names)
        seen.add(name)
        assert np.all(angles[1:] >= limits[1:, :, 0] - 1e-9) and np.all(angles[1:] <= limits[1:, :, 1] + 1e-9)
    assert seen == set(ap.BASE_POSES)
    for pose in filter(None, ap.BASE_POSES.values()):  # the library itself respects the limits
        angles = np.array(list(pose.values()))
        joints = [names.index(j) for j in pose]
        assert np.all(angles >= limits[joints, :, 0]) and np.all(angles <= limits[joints, :, 1])


def test_pose_files_drive_the_joints(quadruped, tmp_path):
    rng = np.random.default_rng(2)
    poses = rng.normal(0, 0.2, (4, 33 * 3))  # a 33-joint SMAL pose set on the 35-joint model
    np.savez(tmp_path / "dog_poses.npz", poses=poses)
    body = build_subject_model(animal(animal={"pose_files": [str(tmp_path / "dog_poses.npz")],
                                              "pose_file_fraction": 1.0}))
    draw = body.draw(0, 0)
    k = int(draw["pose_name"].split(":")[1])
    local = Rotation.from_matrix(draw["rotations"][1:33]).as_rotvec()
    np.testing.assert_allclose(local, poses[k].reshape(33, 3)[1:], atol=1e-9)
    np.testing.assert_allclose(draw["rotations"][33:], np.tile(np.eye(3), (2, 1, 1)))
    np.savez(tmp_path / "bad.npz", joints=np.zeros((2, 3)))
    with pytest.raises(UserError, match="expected 'poses'"):
        build_subject_model(animal(animal={"pose_files": [str(tmp_path / "bad.npz")]}))


@pytest.mark.parametrize("which", ["smal", "quadruped"])
def test_labels_reproduce_the_vertices(which, smal, quadruped):
    model = smal if which == "smal" else quadruped
    for subject in model.pose([model.draw(2, i) for i in range(3)]):
        p = subject.params
        again = (smal_forward(model, p["poses"], p["betas"]) + p["transl"]) @ np.array(
            p["body_model"]["model_to_world"]).T
        assert np.abs(again - subject.vertices).max() < 1e-5
        assert len(p["poses"]) == 3 * len(model.model.joint_names) and len(p["betas"]) == model.num_betas
        assert p["species"] in model.species_names and p["has_betas"] is True
        json.dumps(p)
        for key in ("poses", "betas", "transl"):
            assert subject.arrays[key].dtype == np.float32 and subject.arrays[key].tolist() == p[key]


def test_pose_is_independent_of_the_batch_split(quadruped):
    draws = [quadruped.draw(11, i) for i in range(BATCH + 3)]
    whole = quadruped.pose(draws)
    for k in (2, BATCH + 1):
        alone = quadruped.pose([draws[k]])[0]
        assert np.array_equal(whole[k].vertices, alone.vertices)
        assert np.array_equal(whole[k].keypoints_3d, alone.keypoints_3d) and whole[k].params == alone.params


def test_animals_stand_on_the_ground_facing_their_heading(quadruped):
    body = build_subject_model(animal(animal={"library": {"standing": 1.0}, "noise_deg": 0.0,
                                              "yaw_deg": [90.0, 90.0]}))
    for subject in body.pose([body.draw(4, i) for i in range(4)]):
        v = subject.vertices
        assert v.dtype == np.float32 and v[:, 2].min() == 0.0
        np.testing.assert_allclose((v[:, :2].min(0) + v[:, :2].max(0)) / 2, 0.0, atol=1e-6)
        kp = dict(zip(ap.KEYPOINT_NAMES, subject.keypoints_3d))
        heading = kp["nose"][:2] - kp["tail_base"][:2]
        assert heading[0] > 0.9 * np.linalg.norm(heading)  # yaw 90: facing -Y turned to +X
        assert kp["left_front_paw"][1] > kp["right_front_paw"][1]  # its left is then +Y


def test_geometric_keypoints_land_near_the_exact_ones(quadruped):
    wv, wj = geometric_keypoints(quadruped.model, quadruped.to_world)
    rest_v = quadruped.model.arrays["v_template"]
    rest_j = quadruped.model.rest_joints()
    exact = quadruped.kp_vertex.double().numpy() @ rest_v + quadruped.kp_joint.double().numpy() @ rest_j
    guess = wv @ rest_v + wj @ rest_j
    error = np.linalg.norm(exact - guess, axis=1)
    assert error.max() < 0.07, dict(zip(ap.KEYPOINT_NAMES, np.round(error, 3)))
    assert np.all(error[[ap.KEYPOINT_NAMES.index(n) for n in ap.KEYPOINT_JOINTS]] == 0)


def test_interface_and_keypoint_parts(quadruped):
    assert quadruped.part_names == ap.PART_NAMES and quadruped.keypoint_names == ap.KEYPOINT_NAMES
    assert len(ap.KEYPOINT_NAMES) == 26 and len(quadruped.keypoint_parts) == 26
    assert all(p and all(0 < i < len(ap.PART_NAMES) for i in p) for p in quadruped.keypoint_parts)
    assert set(np.unique(quadruped.face_parts)) == set(range(1, len(ap.PART_NAMES)))
    from synthgen.render.layers import draw_skeleton

    sk = draw_skeleton(np.array([[40.0, 40.0, 2.0]] * 26), quadruped.keypoint_names, 96, 96,
                       quadruped.skeleton_edges)
    assert sk.shape == (96, 96, 3) and sk.dtype == np.uint8 and sk.any()


# --- labels that need the camera -----------------------------------------------------------------
def test_camera_labels_agree_with_the_camera(quadruped):
    cfg = recipe_from_dict({}).camera
    subject = quadruped.pose([quadruped.draw(5, 0)])[0]
    camera, drawn = sample_camera(np.random.default_rng(0), cfg, subject.vertices[::7], 128, 128)
    kp3d = camera.to_camera(subject.keypoints_3d.astype(np.float64))
    uv = camera.project(kp3d)
    kp2d = np.concatenate([uv, np.full((26, 1), 2.0)], 1)
    labels = quadruped.camera_labels(subject, camera, kp2d, kp3d)
    # Animal3D names: keypoint_3d projects to keypoint_2d with cam_int, exactly
    k3, k2 = np.array(labels["keypoint_3d"]), np.array(labels["keypoint_2d"])
    p = k3 @ camera.K.T
    np.testing.assert_allclose(p[:, :2] / p[:, 2:], k2[:, :2], atol=1e-9)
    assert abs(labels["fov"] - drawn["fov_deg"]) < 1e-9
    # SMAL straight into the camera frame
    poses = np.array(subject.params["poses"])
    poses[:3] = labels["global_orient_cam"]
    cam_vertices = smal_forward(quadruped, poses, subject.params["betas"]) + labels["transl_cam"]
    assert np.abs(cam_vertices - camera.to_camera(subject.vertices.astype(np.float64))).max() < 1e-4
    # weak perspective about the root
    root = np.array(labels["root_cam"])
    S = labels["weak_perspective_size"]
    u = camera.K[0, 2] + S / 2 * labels["txs"]
    np.testing.assert_allclose(u, (camera.K @ root)[0] / root[2], atol=1e-3)
    assert abs(labels["scale"] - 2 * camera.K[0, 0] / (S * root[2])) < 1e-6
    points = camera.to_camera(subject.vertices.astype(np.float64))
    near = points[np.linalg.norm(points - root, axis=1) < 0.1]  # first order about the root
    weak = camera.K[0, 2] + S / 2 * (labels["txs"] + labels["scale"] * (near[:, 0] - root[0]))
    assert len(near) and np.abs(weak - camera.project(near)[:, 0]).max() < 0.05 * 128


# --- end to end ----------------------------------------------------------------------------------
def test_animal_shards_read_back(tmp_path):
    from synthgen.data import load_shards
    from synthgen.run import generate

    recipe = recipe_from_dict({"name": "animals", "seed": 3, "num_samples": 4,
                               "image": {"width": 96, "height": 96}, "subject": {"kind": "animal"},
                               "render": {"backend": "torch"}, "output": {"shard_size": 2, "vertices": True}})
    generate(recipe, tmp_path / "out", progress=False)
    samples = list(load_shards(tmp_path / "out", flat=True))
    assert len(samples) == 4
    for s in samples:
        [instance] = s["labels"]["instances"]
        params, genzoo = instance["params"], instance["camera_labels"]
        assert instance["kind"] == "animal" and instance["model"] == "quadruped"
        assert s["poses"].shape == (105,) and s["betas"].shape == (10,) and s["transl"].shape == (3,)
        assert params["species"] in SMAL_FAMILIES
        assert s["keypoints_2d"].shape == (26, 3) and s["image"].shape == (96, 96, 3)
        assert instance["keypoint_names"] == ap.KEYPOINT_NAMES
        for key in ("fov", "scale", "txs", "tys", "keypoint_2d", "keypoint_3d", "transl_cam"):
            assert key in genzoo, f"instances[0].camera_labels.{key} missing"
        np.testing.assert_allclose(np.array(genzoo["keypoint_2d"])[:, :2], s["keypoints_2d"][:, :2], atol=1e-3)
        k3 = s["keypoints_3d"].astype(np.float64) @ s["cam_int"].astype(np.float64).T
        np.testing.assert_allclose(k3[:, :2] / k3[:, 2:], s["keypoints_2d"][:, :2], atol=1e-2)
        assert s["npz.vertices"].shape == (3926, 3)
