"""Rigid objects: PASCAL3D+ viewpoints both ways, 3D-DST viewpoint cameras, meshes through trimesh."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import trimesh
from scipy.spatial import cKDTree

from synthgen.cameras import sample_viewpoint_camera
from synthgen.errors import UserError
from synthgen.recipe import SubjectConfig, recipe_from_dict
from synthgen.subjects import build_subject_model, object_shapes
from synthgen.subjects.objects import (KEYPOINT_NAMES, SKELETON, ObjectModel, alignment, axes_to_world,
                                       build_catalogue)
from synthgen.viewpoint import (camera_to_viewpoint, direction, extrinsics_to_viewpoint,
                                         viewpoint_center, viewpoint_to_camera, viewpoint_to_extrinsics)

WORLD_TO_SHAPENET = np.array([[-1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])  # ShapeNet: +Y up, front -Z


def objects(**overrides) -> SubjectConfig:
    return SubjectConfig.model_validate({"kind": "object"} | overrides)


def angle_diff(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


@pytest.fixture(scope="module")
def builtin() -> ObjectModel:
    return build_subject_model(objects())


def same_surface(a: np.ndarray, b: np.ndarray, tol: float = 1e-5) -> bool:
    """Every vertex of a has one of b within tol, and the other way round."""
    return cKDTree(b).query(a)[0].max() < tol and cKDTree(a).query(b)[0].max() < tol


# --- viewpoints <-> cameras ----------------------------------------------------------------------
def test_viewpoint_conversion_round_trips_exactly():
    rng = np.random.default_rng(0)
    for _ in range(300):
        a, e, th = rng.uniform(0, 360), rng.uniform(-85, 85), rng.uniform(-179.9, 180)
        d, c = rng.uniform(0.3, 8.0), rng.normal(0, 1, 3)
        R, t = viewpoint_to_extrinsics(a, e, th, d, c)
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        assert abs(np.linalg.det(R) - 1) < 1e-12
        back = extrinsics_to_viewpoint(R, t, c)
        assert angle_diff(back["azimuth"], a) < 1e-9 and abs(back["elevation"] - e) < 1e-9
        assert angle_diff(back["theta"], th) < 1e-9 and abs(back["distance"] - d) < 1e-9
        assert back["off_axis_deg"] < 1e-6 and 0 <= back["azimuth"] < 360


def test_viewpoint_convention():
    c = np.array([0.0, 0.0, 0.5])
    R, t = viewpoint_to_extrinsics(0.0, 0.0, 0.0, 2.0, c)  # in front, level
    np.testing.assert_allclose(-R.T @ t, [0.0, -2.0, 0.5], atol=1e-12)
    np.testing.assert_allclose(R @ [1.0, 0, 0], [1.0, 0, 0], atol=1e-12)  # object's left on image right
    np.testing.assert_allclose(R @ [0, 0, 1.0], [0, -1.0, 0], atol=1e-12)  # up is image up
    R, t = viewpoint_to_extrinsics(90.0, 30.0, 0.0, 2.0, c)  # on the object's left (+X), above
    pos = -R.T @ t
    assert pos[0] > 1.7 and abs(pos[1]) < 1e-9 and pos[2] > c[2]
    K = np.array([[100.0, 0, 50], [0, 100.0, 50], [0, 0, 1]])
    R0, t0 = viewpoint_to_extrinsics(0.0, 0.0, 0.0, 2.0, c)
    R1, t1 = viewpoint_to_extrinsics(0.0, 0.0, 30.0, 2.0, c)
    point = c + [0.3, 0.0, 0.0]  # right of the centre in the image
    p0, p1 = K @ (R0 @ point + t0), K @ (R1 @ point + t1)
    u0, u1 = p0[:2] / p0[2] - 50, p1[:2] / p1[2] - 50
    assert u0[0] > 0 and abs(u0[1]) < 1e-9 and u1[1] < 0  # theta > 0: turns counter-clockwise
    assert abs(np.degrees(np.arctan2(-u1[1], u1[0])) - 30.0) < 1e-9


def test_full_camera_round_trip_with_principal_point():
    c = np.array([0.1, -0.2, 0.4])
    vp = {"azimuth": 123.0, "elevation": 17.0, "theta": -12.0, "distance": 2.5, "focal": 480.0,
          "px": 250.0, "py": 270.0}
    K, ext = viewpoint_to_camera(vp, c)
    back = camera_to_viewpoint(K, ext, c)
    for key, value in vp.items():
        assert abs(back[key] - value) < 1e-9, key
    p = K @ (ext[:3, :3] @ c + ext[:3, 3])
    np.testing.assert_allclose(p[:2] / p[2], [250.0, 270.0], atol=1e-9)  # the centre projects to (px, py)


def test_off_axis_cameras_are_reported():
    c = np.zeros(3)
    R, t = viewpoint_to_extrinsics(40.0, 10.0, 0.0, 3.0, c)
    tilt = np.array([[1.0, 0, 0], [0, np.cos(0.1), -np.sin(0.1)], [0, np.sin(0.1), np.cos(0.1)]])
    out = extrinsics_to_viewpoint(tilt @ R, tilt @ t, c)
    assert abs(out["off_axis_deg"] - np.degrees(0.1)) < 1e-9
    assert angle_diff(out["azimuth"], 40.0) < 1e-9  # the position is unchanged


# --- 3D-DST viewpoint sampling ------------------------------------------------------------------
def camera_config(**viewpoint):
    return recipe_from_dict({"camera": {"mode": "viewpoint", "viewpoint": viewpoint}}).camera


def test_sampled_viewpoint_is_recomputable_from_the_extrinsics(builtin):
    subject = builtin.pose([builtin.draw(0, 3)])[0]
    cfg = camera_config(theta_deg=[-20, 20], principal_jitter=0.1)
    center = viewpoint_center(subject.vertices)
    for seed in range(20):
        camera, drawn = sample_viewpoint_camera(np.random.default_rng(seed), cfg, subject.vertices, 128, 96)
        back = camera_to_viewpoint(camera.K, camera.cam_ext, center)
        assert angle_diff(back["azimuth"], drawn["azimuth_deg"]) < 1e-9
        assert abs(back["elevation"] - drawn["elevation_deg"]) < 1e-9
        assert angle_diff(back["theta"], drawn["theta_deg"]) < 1e-9
        assert abs(back["distance"] - drawn["distance"]) < 1e-9 and back["off_axis_deg"] < 1e-6
        assert (back["focal"], back["px"], back["py"]) == (drawn["focal"], drawn["px"], drawn["py"])
        assert abs(drawn["focal"] - 35.0 / 36.0 * 128) < 1e-9
        labels = builtin.camera_labels(subject, camera, None, None)
        assert labels["azimuth"] == back["azimuth"] and labels["viewpoint_center"] == center.tolist()


def test_viewpoint_distributions():
    points = np.array([[-0.3, -0.4, 0.0], [0.3, 0.4, 1.0]])  # box diagonal sqrt(2)
    draws = [sample_viewpoint_camera(np.random.default_rng(s), camera_config(), points, 64, 64)[1]
             for s in range(1500)]
    polar = np.array([d["polar_deg"] for d in draws])
    assert polar.min() >= 5.0 and polar.max() <= 175.0 and abs(polar.mean() - 90.0) < 2.0
    assert 20.0 < polar.std() < 30.0  # truncated N(90, 30)
    distance = np.array([d["distance"] for d in draws]) / np.sqrt(2.0)
    assert distance.min() >= 1.2 - 1e-9 and distance.max() <= 4.0 + 1e-9 and abs(distance.mean() - 2.0) < 0.05
    azimuth = np.array([d["azimuth_deg"] for d in draws])
    assert azimuth.min() >= 0 and azimuth.max() < 360 and np.histogram(azimuth, 4, (0, 360))[0].min() > 300
    front = [sample_viewpoint_camera(np.random.default_rng(s), camera_config(azimuth="front", front_arc_deg=60),
                                     points, 64, 64)[1]["azimuth_deg"] for s in range(200)]
    assert all(angle_diff(a, 0.0) <= 30.0 for a in front)
    fixed = sample_viewpoint_camera(np.random.default_rng(0), camera_config(distance="fixed", distance_mean=3.0,
                                                                            distance_relative=False),
                                    points, 64, 64)[1]
    assert fixed["distance"] == 3.0


# --- meshes and the catalogue -------------------------------------------------------------------
def test_builtin_objects_are_unit_normalised_on_the_ground(builtin):
    assert builtin.classes == ["car", "chair", "diningtable", "mug"] and len(builtin.catalogue) == 8
    for index, entry in enumerate(builtin.catalogue):
        s = builtin.pose([{"class": entry.cls, "entry": index}])[0]
        v = s.vertices
        assert v.dtype == np.float32 and s.faces.dtype == np.int32 and len(s.face_parts) == len(s.faces)
        assert abs(np.linalg.norm(v.max(0) - v.min(0)) - 1.0) < 1e-5 and v[:, 2].min() == 0.0
        np.testing.assert_allclose((v[:, :2].min(0) + v[:, :2].max(0)) / 2, 0.0, atol=1e-6)
        np.testing.assert_allclose(s.keypoints_3d.min(0), v.min(0))
        np.testing.assert_allclose(s.keypoints_3d.max(0), v.max(0))
        assert s.params["class"] == entry.cls and s.params["cad_index"] in (1, 2)
        names = {builtin.part_names[i] for i in np.unique(s.face_parts)}
        expected = {"car": {"body", "cabin", "wheel"}, "chair": {"seat", "back", "leg"},
                    "diningtable": {"top", "leg"}, "mug": {"body", "handle"}}[entry.cls]
        assert expected <= names
    assert len(SKELETON) == 12 and len(KEYPOINT_NAMES) == 8


def test_draws_follow_class_weights_and_objects_carry_their_own_mesh(builtin):
    only_mugs = build_subject_model(objects(object={"classes": {"mug": 1.0}}))
    assert {only_mugs.draw(0, i)["class"] for i in range(20)} == {"mug"}
    assert builtin.draw(5, 9) == builtin.draw(5, 9)
    assert {builtin.draw(1, i)["class"] for i in range(60)} == set(builtin.classes)
    with pytest.raises(AttributeError, match="their own faces"):
        builtin.faces  # noqa: B018
    single = build_subject_model(objects(object={"parts": "single"}))
    s = single.pose([single.draw(0, 0)])[0]
    assert single.part_names == ["background", "object"] and set(np.unique(s.face_parts)) == {1}
    with pytest.raises(UserError, match="not found"):
        build_subject_model(objects(object={"classes": {"aeroplane": 1.0}}))


def test_axis_conventions():
    shapenet = axes_to_world("+y", "-z")
    np.testing.assert_allclose(shapenet, WORLD_TO_SHAPENET.T)
    np.testing.assert_allclose(axes_to_world("+y", "+z") @ [0, 0, 1.0], [0, -1.0, 0])  # glTF front
    np.testing.assert_allclose(axes_to_world("+z", "-y"), np.eye(3))
    for a, e in ((90.0, 0.0), (30.0, 20.0), (250.0, -10.0)):
        np.testing.assert_allclose(alignment(a, e) @ direction(a, e), direction(0.0, 0.0), atol=1e-12)
    with pytest.raises(UserError, match="perpendicular"):
        axes_to_world("+y", "-y")


def _write_scene(path, parts, world_to_file: np.ndarray) -> None:
    scene = trimesh.Scene()
    T = np.eye(4)
    T[:3, :3] = world_to_file
    for k, (name, mesh) in enumerate(parts):
        scene.add_geometry(mesh.copy().apply_transform(T), node_name=f"{name}_{k}", geom_name=f"{name}_{k}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(scene.export(file_type=path.suffix[1:]))


def test_exported_assets_load_like_the_builtin_meshes(builtin, tmp_path):
    index = object_shapes.export_builtin(tmp_path / "objects")
    files = ObjectModel(objects(model="mesh", object={"index_csv": str(index)}))
    assert [(e.cls, e.model_id) for e in files.catalogue] == [(e.cls, e.model_id) for e in builtin.catalogue]
    for i, entry in enumerate(files.catalogue):
        a = files.pose([{"class": entry.cls, "entry": i}])[0]
        b = builtin.pose([{"class": entry.cls, "entry": i}])[0]
        assert same_surface(a.vertices, b.vertices)
        assert a.params["part_names"][1:] == sorted(a.params["part_names"][1:])  # scene nodes, in order
        assert a.params["source"].endswith(".glb")


def test_repository_assets_match_the_builtin_meshes(builtin):
    from pathlib import Path

    index = Path(__file__).resolve().parents[2] / "assets" / "objects" / "index.csv"
    files = ObjectModel(objects(model="mesh", object={"index_csv": str(index)}))
    for i, entry in enumerate(files.catalogue):
        a, b = files.pose([{"class": entry.cls, "entry": i}])[0], builtin.pose([{"class": entry.cls, "entry": i}])[0]
        assert same_surface(a.vertices, b.vertices)


def test_shapenet_and_objaverse_layouts(builtin, tmp_path):
    chair = dict(object_shapes.BUILTIN["chair"])["chair_plain"]()
    mesh = trimesh.util.concatenate([m for _, m in chair])
    obj = tmp_path / "ShapeNetCore.v2" / "03001627" / "1a2b3c" / "models" / "model_normalized.obj"
    obj.parent.mkdir(parents=True)
    to_file = np.eye(4)
    to_file[:3, :3] = WORLD_TO_SHAPENET
    mesh.copy().apply_transform(to_file).export(obj)
    mug = dict(object_shapes.BUILTIN["mug"])["mug_tall"]()
    _write_scene(tmp_path / "objaverse" / "mug" / "0f9e.glb", mug, np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]))
    for root in (tmp_path / "ShapeNetCore.v2", tmp_path / "ShapeNetCore.v2" / "03001627"):
        model = ObjectModel(objects(model="mesh", object={"paths": [str(root), str(tmp_path / "objaverse")]}))
        assert [(e.cls, e.model_id) for e in model.catalogue] == [("chair", "1a2b3c"), ("mug", "0f9e")]
    ref = {e.model_id: i for i, e in enumerate(builtin.catalogue)}
    for i, entry in enumerate(model.catalogue):
        mine = model.pose([{"class": entry.cls, "entry": i}])[0]
        want = builtin.pose([{"entry": ref["chair_plain" if entry.cls == "chair" else "mug_tall"]}])[0]
        assert same_surface(mine.vertices, want.vertices), entry
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no meshes"):
        ObjectModel(objects(model="mesh", object={"paths": [str(tmp_path / "empty")]}))


def test_csv_alignment_turns_each_model_to_face_azimuth_zero(builtin, tmp_path):
    car = dict(object_shapes.BUILTIN["car"])["car_sedan"]()
    a, e = 30.0, 20.0
    turned = np.linalg.inv(alignment(a, e))  # the file's car shows its front from (a, e)
    _write_scene(tmp_path / "car.glb", car, np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]) @ turned)
    with open(tmp_path / "models.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["class", "path", "azimuth", "elevation", "model_id"],
                                      ["car", "car.glb", a, e, "sedan"]])
    model = ObjectModel(objects(model="mesh", object={"index_csv": str(tmp_path / "models.csv")}))
    mine = model.pose([model.draw(0, 0)])[0]
    want = builtin.pose([{"entry": [e.model_id for e in builtin.catalogue].index("car_sedan")}])[0]
    assert same_surface(mine.vertices, want.vertices, 1e-4)
    assert mine.params["align_azimuth"] == a and mine.params["model_id"] == "sedan"
    (tmp_path / "bad.csv").write_text("car\n")
    with pytest.raises(UserError, match="row 1"):
        build_catalogue(objects(model="mesh", object={"index_csv": str(tmp_path / "bad.csv")}))


def test_recipe_checks_for_objects():
    with pytest.raises(ValueError, match="subject.object.paths"):
        objects(model="mesh")
    with pytest.raises(ValueError, match="does not make"):
        SubjectConfig.model_validate({"kind": "object", "model": "anny"})
    assert objects().model == "builtin" and SubjectConfig.model_validate({"model": "mesh", "object": {
        "paths": ["x"]}}).kind == "object"


# --- end to end ----------------------------------------------------------------------------------
def _generate(tmp_path, name, subject, camera=None):
    from synthgen.run import generate

    recipe = recipe_from_dict({"name": name, "seed": 5, "num_samples": 4, "image": {"width": 96, "height": 96},
                               "subject": subject, "camera": camera or {}, "render": {"backend": "torch"},
                               "output": {"shard_size": 2}})
    generate(recipe, tmp_path / name, progress=False)
    return tmp_path / name


def test_object_shards_carry_exact_viewpoint_labels(tmp_path):
    from synthgen.data import load_shards

    out = _generate(tmp_path, "objects", {"kind": "object"}, {"mode": "viewpoint"})
    samples = list(load_shards(out, flat=True))
    assert len(samples) == 4
    for s in samples:
        [instance] = s["labels"]["instances"]
        params, view = instance["params"], instance["camera_labels"]
        assert instance["kind"] == "object" and params["class"] in ("car", "chair", "diningtable", "mug")
        for key in ("cad_index", "model_id"):
            assert key in params, f"instances[0].params.{key} missing"
        for key in ("azimuth", "elevation", "theta", "distance", "focal", "px", "py"):
            assert key in view, f"instances[0].camera_labels.{key} missing"
        back = camera_to_viewpoint(np.array(s["labels"]["cam_int"]), np.array(s["labels"]["cam_ext"]),
                                   np.array(view["viewpoint_center"]))
        for key in ("azimuth", "elevation", "theta", "distance", "focal", "px", "py"):
            assert abs(back[key] - view[key]) < 1e-6, key
        drawn = s["labels"]["camera"]
        assert angle_diff(drawn["azimuth_deg"], view["azimuth"]) < 1e-3
        assert s["keypoints_2d"].shape == (8, 3) and instance["keypoint_names"] == KEYPOINT_NAMES
        assert s["mask"].any() and s["image"].shape == (96, 96, 3)


def test_all_subject_kinds_read_back_through_the_same_loader(tmp_path, generated):
    from synthgen.data import load_shards

    humans, _ = generated
    datasets = {"human": humans, "animal": _generate(tmp_path, "animals", {"kind": "animal"}),
                "object": _generate(tmp_path, "objects", {"kind": "object"})}
    for kind, folder in datasets.items():
        samples = list(load_shards(folder, flat=True))
        assert samples, kind
        for s in samples:
            assert s["labels"]["instances"][0]["kind"] == kind
            for key in ("image", "mask", "depth", "normal", "parts", "keypoints_2d", "keypoints_3d",
                        "cam_int", "cam_ext", "bbox"):
                assert key in s, (kind, key)
            k3 = s["keypoints_3d"].astype(np.float64) @ s["cam_int"].astype(np.float64).T
            np.testing.assert_allclose(k3[:, :2] / k3[:, 2:], s["keypoints_2d"][:, :2], atol=1e-2)
            assert s["parts"].max() < len(s["labels"]["part_names"])


# --- prompts for class-labelled subjects ---------------------------------------------------------
def test_class_prompt_files_fill_class_view_activity_and_captions(tmp_path):
    from synthgen.class_prompts import ClassPrompts, default_template_path

    objects_yaml, animals_yaml = default_template_path("object"), default_template_path("animal")
    cp = ClassPrompts.load(objects_yaml)
    chair = {"labels": {"instances": [{"params": {"class": "chair"},
                                       "camera_labels": {"azimuth": 90.0, "elevation": 10.0}}], "camera": {}}}
    prompts = [cp.build(chair, np.random.default_rng(s)) for s in range(60)]
    assert all(any(w in p for w in cp.classes["chair"]) for p in prompts)
    assert any("side view" in p for p in prompts) and any("An image of" in p for p in prompts)
    assert any(c in p for p in prompts for c in cp.captions["chair"])
    assert all(",," not in p and not p.endswith(",") for p in prompts)
    assert cp.build(chair, np.random.default_rng(3)) == cp.build(chair, np.random.default_rng(3))
    zoo = ClassPrompts.load(animals_yaml)
    dog = {"labels": {"instances": [{"params": {"species": "dog", "pose_name": "sitting", "yaw_deg": 90.0}}],
                      "camera": {"azimuth_deg": 270.0, "elevation_deg": 5.0}}}
    prompts = [zoo.build(dog, np.random.default_rng(s)) for s in range(40)]
    assert all(any(w in p for w in zoo.classes["dog"]) for p in prompts)
    assert any("sitting" in p for p in prompts)  # the pose name through `activities`
    assert any("rear view" in p for p in prompts)  # camera 180 degrees from the heading
    bad = tmp_path / "bad.yaml"
    bad.write_text("templates: ['An image of {class}, {weather}']\nclasses: {car: [a car]}\n")
    with pytest.raises(UserError, match="weather"):
        ClassPrompts.load(bad)


def test_prompt_builder_uses_class_templates_for_animals_and_objects():
    """PromptBuilder(config, subject_kind=...) picks the class templates of animals and objects."""
    from synthgen.prompt import PromptBuilder
    from synthgen.recipe import PromptConfig
    from synthgen.class_prompts import default_template_path

    sample = {"labels": {"instances": [{"params": {"class": "mug"},
                                        "camera_labels": {"azimuth": 0.0, "elevation": 0.0}}], "camera": {}}}
    by_kind = PromptBuilder(PromptConfig(), subject_kind="object")
    by_file = PromptBuilder(PromptConfig(templates=str(default_template_path("object"))))
    for builder in (by_kind, by_file):
        prompt, negative = builder.build(sample, np.random.default_rng(0))
        assert "mug" in prompt and negative


def test_part_names_without_building_the_model():
    from synthgen.subjects import subject_part_names

    for config in (objects(), objects(object={"parts": "single"}), SubjectConfig.model_validate({"kind": "animal"})):
        assert subject_part_names(config) == build_subject_model(config).part_names
