"""SMPL-family subjects on synthetic model files (no licensed data; see tests/fixtures/smpl_fixture.py)."""

from __future__ import annotations

import json
import pickle
import sys
import types

import numpy as np
import pytest
import torch

from synthgen.errors import MissingModelError, UserError
from synthgen.recipe import SubjectConfig
from synthgen.subjects.base import KEYPOINT_NAMES, KEYPOINT_PARTS, PART_NAMES, SMPL_TO_WORLD
from synthgen.subjects.smpl_body import (BATCH, SmplBody, convert_to_npz, joint_part_ids,
                                         keypoint_gather_index)

from tests.fixtures import smpl_fixture

STEM = {"smpl": "SMPL", "smplh": "SMPLH", "smplx": "SMPLX"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{kind: {"pkl": path, "npz": path, "root": folder with KIND/STEM_NEUTRAL.pkl}}."""
    root = tmp_path_factory.mktemp("smpl_models")
    out = {}
    for kind in STEM:
        arrays = smpl_fixture.synthetic_model(kind)
        name = f"{STEM[kind]}_NEUTRAL"
        out[kind] = {
            "pkl": smpl_fixture.write_model(root / "pkl" / kind / f"{name}.pkl", kind, arrays=arrays),
            "npz": smpl_fixture.write_model(root / "npz" / f"{name}.npz", kind, arrays=arrays),
            "root": root / "pkl", "arrays": arrays,
        }
    return out


def make_body(path, model="smpl", **overrides) -> SmplBody:
    return SmplBody(SubjectConfig.model_validate({"model": model, "model_path": str(path)} | overrides))


@pytest.fixture(scope="module")
def smpl(models) -> SmplBody:
    return make_body(models["smpl"]["root"])


def smplx_forward(kind: str, path, subject) -> np.ndarray:
    """World-frame vertices of a fresh smplx model run on the stored labels (batch of one)."""
    import smplx

    p = subject.params
    model = {"smpl": smplx.SMPL, "smplh": smplx.SMPLH, "smplx": smplx.SMPLX}[kind]
    extra = {} if kind == "smpl" else {"ext": "pkl"}
    body = model(model_path=str(path), num_betas=len(p["betas"]), **extra)
    args = {k: torch.tensor([p[k]], dtype=torch.float32)
            for k in ("betas", "global_orient", "body_pose", "transl")}
    with torch.no_grad():
        v = body(**args).vertices[0].numpy().astype(np.float64)
    return v @ SMPL_TO_WORLD.T


# --- the synthetic model itself ----------------------------------------------------------------
def test_synthetic_model_has_smpl_shapes(models):
    a = models["smpl"]["arrays"]
    assert a["v_template"].shape == (6890, 3) and a["f"].shape == (13776, 3)
    assert a["shapedirs"].shape == (6890, 3, 10) and a["posedirs"].shape == (6890, 3, 207)
    assert a["J_regressor"].shape == (24, 6890) and a["weights"].shape == (6890, 24)
    assert a["kintree_table"].shape == (2, 24)
    np.testing.assert_allclose(a["J_regressor"].sum(1), 1.0)
    np.testing.assert_allclose(a["weights"].sum(1), 1.0)
    edges = np.sort(np.concatenate([a["f"][:, [0, 1]], a["f"][:, [1, 2]], a["f"][:, [2, 0]]]), 1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert (counts == 2).all()  # closed, manifold
    height = np.ptp(a["v_template"][:, 1])
    assert 1.5 < height < 2.0


# --- loading -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(STEM))
def test_pkl_and_npz_load_identically(models, kind):
    by_pkl, by_npz = make_body(models[kind]["pkl"], kind), make_body(models[kind]["npz"], kind)
    assert np.array_equal(by_pkl.faces, by_npz.faces) and by_pkl.faces.dtype == np.int32
    assert np.array_equal(by_pkl.face_parts, by_npz.face_parts)
    draws = [by_pkl.draw(3, i) for i in range(3)]
    for a, b in zip(by_pkl.pose(draws), by_npz.pose(draws)):
        assert np.array_equal(a.vertices, b.vertices)
        assert np.array_equal(a.keypoints_3d, b.keypoints_3d)


def test_folder_layouts_resolve(models):
    assert make_body(models["smpl"]["root"]).path == models["smpl"]["pkl"]  # FOLDER/smpl/SMPL_NEUTRAL.pkl
    assert make_body(models["smpl"]["npz"].parent).path == models["smpl"]["npz"]  # FOLDER/SMPL_NEUTRAL.npz


def test_npz_is_never_unpickled(models, monkeypatch):
    real_load = np.load

    def strict_load(*args, **kwargs):
        assert not kwargs.get("allow_pickle"), "an .npz was opened with allow_pickle=True"
        return real_load(*args, **kwargs)

    monkeypatch.setattr(np, "load", strict_load)
    for kind in STEM:
        make_body(models[kind]["npz"], kind)


@pytest.mark.parametrize("kind,url", [("smpl", "https://smpl.is.tue.mpg.de"),
                                      ("smplh", "https://mano.is.tue.mpg.de"),
                                      ("smplx", "https://smpl-x.is.tue.mpg.de")])
def test_missing_model_names_path_and_url(tmp_path, kind, url):
    with pytest.raises(MissingModelError) as err:
        make_body(tmp_path / "nowhere", kind)
    message = str(err.value)
    assert url in message and str(tmp_path / "nowhere") in message and "\n" not in message
    assert ".npz" in message and "chumpy" in message
    assert isinstance(err.value, UserError) and isinstance(err.value, FileNotFoundError)


def test_too_many_betas_is_a_user_error(models):
    with pytest.raises(UserError, match="num_betas"):
        make_body(models["smpl"]["npz"], shape={"num_betas": 16})


def test_more_betas_with_a_300_component_model(tmp_path):
    path = smpl_fixture.write_model(tmp_path / "SMPL_NEUTRAL.npz", num_betas=300)
    body = make_body(path, shape={"num_betas": 16})
    subject = body.pose([body.draw(0, 0)])[0]
    assert len(subject.params["betas"]) == 16 and subject.params["body_model"]["num_betas"] == 16


class _FakeCh:
    """Pickles like a terminal ``chumpy.ch.Ch`` (its array in ``x``)."""

    def __init__(self, x):
        self.x = x


_FakeCh.__module__, _FakeCh.__qualname__ = "chumpy.ch", "Ch"


@pytest.mark.parametrize("protocol", [0, 2])  # Python 2 era files: protocol 0-2
def test_chumpy_pkl_asks_for_conversion_and_converts(models, tmp_path, monkeypatch, protocol):
    arrays = models["smpl"]["arrays"]
    chumpy, chumpy_ch = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")
    chumpy_ch.Ch = _FakeCh
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "chumpy", chumpy)
        m.setitem(sys.modules, "chumpy.ch", chumpy_ch)
        data = dict(arrays, shapedirs=_FakeCh(arrays["shapedirs"]), v_template=_FakeCh(arrays["v_template"]))
        official = smpl_fixture.write_model(tmp_path / "SMPL_NEUTRAL.pkl", arrays=data, protocol=protocol)
    with pytest.raises(UserError, match="synthgen.subjects.smpl_body"):
        make_body(official)
    converted = convert_to_npz(official, tmp_path / "SMPL_NEUTRAL.npz")
    body, reference = make_body(converted), make_body(models["smpl"]["npz"])
    draws = [reference.draw(0, 0)]
    assert np.array_equal(body.pose(draws)[0].vertices, reference.pose(draws)[0].vertices)


def test_conversion_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"v_template": types.SimpleNamespace(a=1)}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        convert_to_npz(path, tmp_path / "evil.npz")


# --- draws and posing --------------------------------------------------------------------------
def test_draws_are_deterministic_per_seed_and_index(smpl):
    a, b, c = smpl.draw(7, 3), smpl.draw(7, 3), smpl.draw(7, 4)
    assert a["betas"].shape == (10,)
    assert np.array_equal(a["betas"], b["betas"]) and np.array_equal(a["smpl_rotations"], b["smpl_rotations"])
    assert a["yaw_deg"] == b["yaw_deg"] and a["pose_name"] == b["pose_name"]
    assert not np.array_equal(a["betas"], c["betas"])


def test_betas_follow_the_configured_normal(models):
    body = make_body(models["smpl"]["npz"], shape={"betas_mean": 1.0, "betas_sd": 0.5})
    betas = np.stack([body.draw(0, i)["betas"] for i in range(200)])
    assert abs(betas.mean() - 1.0) < 0.05 and abs(betas.std() - 0.5) < 0.05


def test_pose_is_independent_of_the_batch_split(smpl):
    draws = [smpl.draw(11, i) for i in range(BATCH + 4)]
    whole = smpl.pose(draws)
    for k in (3, BATCH + 2):
        alone = smpl.pose([draws[k]])[0]
        assert np.array_equal(whole[k].vertices, alone.vertices)
        assert np.array_equal(whole[k].keypoints_3d, alone.keypoints_3d)
        assert whole[k].params == alone.params


def test_labels_have_hmr2_names_and_shapes(smpl):
    subject = smpl.pose([smpl.draw(0, 5)])[0]
    p = subject.params
    assert p["body_model"] == {"name": "smpl", "version": smpl.version, "gender": "neutral", "num_betas": 10}
    assert len(p["betas"]) == 10 and len(p["global_orient"]) == 3
    assert len(p["body_pose"]) == 69 and len(p["transl"]) == 3
    assert p["has_body_pose"] is True and p["has_betas"] is True and isinstance(p["pose_name"], str)
    json.dumps(p)
    for key in ("betas", "body_pose", "global_orient", "transl"):
        assert subject.arrays[key].dtype == np.float32
        assert subject.arrays[key].tolist() == p[key]


@pytest.mark.parametrize("kind", list(STEM))
def test_labels_reproduce_the_vertices(models, kind):
    body = make_body(models[kind]["npz"], kind)
    for subject in body.pose([body.draw(2, i) for i in range(3)]):
        assert len(subject.params["body_pose"]) == (69 if kind == "smpl" else 63)
        again = smplx_forward(kind, models[kind]["pkl"], subject)
        assert np.abs(again - subject.vertices).max() < 1e-4


def test_subject_stands_on_the_ground(smpl):
    for subject in smpl.pose([smpl.draw(4, i) for i in range(6)]):
        v = subject.vertices
        assert v.dtype == np.float32 and v.shape == (6890, 3)
        assert v[:, 2].min() == 0.0
        np.testing.assert_allclose((v[:, :2].min(0) + v[:, :2].max(0)) / 2, 0.0, atol=1e-6)
        assert subject.keypoints_3d.shape == (len(smpl.keypoint_names), 3) == (29, 3) and subject.keypoints_3d[:, 2].min() >= -1e-6


@pytest.mark.parametrize("yaw,left_axis", [(0.0, np.array([1.0, 0.0])), (90.0, np.array([0.0, 1.0]))])
def test_heading_is_yaw_about_the_vertical(models, yaw, left_axis):
    body = make_body(models["smpl"]["npz"], pose={"library": {"t_pose": 1.0}, "noise_deg": 0.0,
                                                  "yaw_deg": [yaw, yaw]})
    subject = body.pose([body.draw(0, 0)])[0]
    kp = dict(zip(KEYPOINT_NAMES, subject.keypoints_3d))
    across = kp["left_wrist"][:2] - kp["right_wrist"][:2]
    assert np.dot(across / np.linalg.norm(across), left_axis) > 0.99
    np.testing.assert_allclose(subject.params["global_orient"], [0.0, np.radians(yaw), 0.0], atol=1e-6)


def test_interface_attributes(smpl):
    assert smpl.name == "smpl" and smpl.part_names == PART_NAMES
    assert smpl.keypoint_names[:23] == KEYPOINT_NAMES and smpl.keypoint_parts[:23] == KEYPOINT_PARTS
    assert smpl.keypoint_names[23:] == ["pelvis", "spine", "thorax", "neck", "head", "head_top"]
    assert smpl.faces.shape == (13776, 3) and smpl.face_parts.shape == (13776,)
    assert smpl.face_parts.dtype == np.uint8
    assert set(np.unique(smpl.face_parts)) == set(range(1, len(PART_NAMES)))


def test_joint_parts_and_keypoint_sources():
    names = ["pelvis", "spine3", "left_collar", "neck", "head", "left_shoulder", "right_elbow",
             "left_wrist", "right_hand", "left_index2", "jaw", "right_eye_smplhf", "left_hip",
             "right_knee", "left_ankle", "right_foot"]
    parts = [PART_NAMES[i] for i in joint_part_ids(names)]
    assert parts == ["torso", "torso", "torso", "head", "head", "left_upper_arm", "right_forearm",
                     "left_hand", "right_hand", "left_hand", "head", "head", "left_thigh",
                     "right_shin", "left_foot", "right_foot"]
    names, index = keypoint_gather_index("smpl", head_top_vertex=411)
    assert index[KEYPOINT_NAMES.index("nose")] == 22 + 332
    assert index[KEYPOINT_NAMES.index("left_shoulder")] == 16
    joints = dict(zip(names[23:], index[23:]))  # the model's own joints, not midpoints of keypoints
    assert joints == {"pelvis": 0, "spine": 6, "thorax": 9, "neck": 12, "head": 15, "head_top": 22 + 411}
    names, index = keypoint_gather_index("smplx", head_top_vertex=9000)
    assert index[KEYPOINT_NAMES.index("nose")] == 23 + 9120  # SMPL-X gathers its jaw (joint 22) too
    assert dict(zip(names[23:], index[23:]))["jaw"] == 22 and names[-1] == "head_top"


# --- end to end --------------------------------------------------------------------------------
def test_pipeline_writes_smpl_shards(models, tmp_path):
    import webdataset as wds

    from synthgen.run import generate
    from synthgen.recipe import recipe_from_dict

    recipe = recipe_from_dict({"num_samples": 4, "image": {"width": 128, "height": 128},
                               "subject": {"model": "smpl", "model_path": str(models["smpl"]["root"])},
                               "render": {"backend": "torch"}, "output": {"shard_size": 2}})
    generate(recipe, tmp_path / "out", progress=False)
    shards = sorted((tmp_path / "out" / "shards").glob("*.tar"))
    assert len(shards) == 2
    samples = list(wds.WebDataset(str(shards[0]), shardshuffle=False))
    assert len(samples) == 2
    [instance] = json.loads(samples[0]["json"])["instances"]
    assert len(instance["params"]["betas"]) == 10 and len(instance["params"]["body_pose"]) == 69
    assert instance["model"] == "smpl"
    assert np.asarray(instance["keypoints_2d"]).shape == (29, 3)  # COCO-23 + 6 SMPL body joints
