"""Body-worn camera sequences end to end: rigs on real Anny bodies, labels, IMU, shards, resume."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest
import torch
import webdataset as wds
from scipy.spatial.transform import Rotation

from synthgen.data import load_shards
from synthgen.engine import finished_samples
from synthgen.recipe import recipe_from_dict
from synthgen.sequences import SequenceFactory
from synthgen.engine.run_folder import RunFolder, plan_shards


def shard_path(out, task):
    return out / RunFolder.shard_rel(task)

SIZE = 64


def sequence_recipe(**sequence):
    """A small sequence recipe: 64x64 images, the torch renderer, the default six-camera rig."""
    data = {"name": "ego-test", "seed": 11, "num_samples": 8, "image": {"width": SIZE, "height": SIZE},
            "render": {"backend": "torch"}, "output": {"shard_size": 3}, "backend": {"kind": "shaded"},
            "sequence": {"frames": 4, "fps": 30} | sequence}
    return recipe_from_dict(data)


@pytest.fixture(scope="module")
def factory():
    return SequenceFactory(sequence_recipe())


@pytest.fixture(scope="module")
def frames(factory):
    return list(finished_samples(factory, list(range(4))))


def test_keypoints_project_with_each_cameras_stored_parameters(frames):
    for sample in frames:
        labels = sample["labels"]
        world = np.asarray(labels["body"]["keypoints_3d_world"], dtype=np.float64)
        for key, cam in labels["views"].items():
            K, ext, c2w = (np.asarray(cam[k]) for k in ("cam_int", "cam_ext", "cam_to_world"))
            assert np.allclose(ext @ c2w, np.eye(4), atol=1e-9)
            [body] = cam["instances"]
            assert body["id"] == 1 and body["kind"] == "human"
            kp3d, kp2d = np.asarray(body["keypoints_3d"]), np.asarray(body["keypoints_2d"])
            assert np.allclose(kp3d, world @ ext[:3, :3].T + ext[:3, 3], atol=1e-5)
            front = kp3d[:, 2] > 0.01
            if cam["distortion"]["model"] == "fisheye" and cam["distortion"]["applied"]:
                uv, _ = cv2.fisheye.projectPoints(kp3d[front, None], np.zeros(3), np.zeros(3), K,
                                                  np.asarray(cam["distortion"]["k"]))
                uv = uv[:, 0]
            else:
                p = kp3d[front] @ K.T
                uv = p[:, :2] / p[:, 2:]
            assert np.abs(uv - kp2d[front, :2]).max() < 1e-6, key
            assert set(np.unique(kp2d[:, 2])) <= {0.0, 1.0, 2.0}
            assert np.all(kp2d[~front, 2] == 0)  # behind the camera: not labelled


def test_visible_keypoints_sit_on_the_rendered_body(frames):
    checked = 0
    for sample in frames:
        for m, view in enumerate(sample["views"]):
            layers, kp2d, kp3d = view["layers"], view["keypoints_2d"], view["keypoints_3d"]
            for (u, v, vis), z in zip(kp2d, kp3d[:, 2]):
                if vis == 2:
                    r, c = int(round(v)), int(round(u))
                    assert layers["instance"][r, c] == 1 and abs(layers["depth"][r, c] - z) < 0.25
                    checked += 1
    assert checked > 0


def test_body_and_scene_share_the_layers(frames):
    part_names = frames[0]["labels"]["part_names"]
    first_scene_part = part_names.index("ground")
    for sample in frames:
        for view in sample["views"]:
            layers = view["layers"]
            inst, parts = layers["instance"], layers["parts"]
            assert np.array_equal(layers["mask"] > 0, inst == 1)  # mask = body only
            assert np.all(parts[inst >= 2] >= first_scene_part)
            assert np.all((parts[inst == 1] >= 1) & (parts[inst == 1] < first_scene_part))
            assert np.all(layers["depth"][inst > 0] > 0) and np.all(layers["depth"][inst == 0] == 0)
    instances = frames[0]["labels"]["sequence"]["scene"]["instances"]
    assert instances[:2] == ["none", "body"] and len(instances) > 2
    seen = set(np.unique(np.concatenate([v["layers"]["instance"].ravel() for s in frames for v in s["views"]])))
    assert 1 in seen and any(i >= 2 for i in seen)


def test_rigid_mount_stays_fixed_to_its_bone():
    factory = SequenceFactory(sequence_recipe(frames=5, rig={"spring": {"enabled": False}}))
    frames = list(finished_samples(factory, list(range(5))))
    model = factory.subject_model
    phenotype = frames[0]["labels"]["sequence"]["body"]["phenotype"]
    rest = factory.body.local_transforms(factory.sequence(0).motion.sample(np.zeros(1)))[-1]  # T-pose parameters
    relative = {}
    for sample in frames:
        labels = sample["labels"]
        body = labels["views"]["cam0"]["instances"][0]["params"]
        # re-pose Anny from the stored labels alone (independent of the sequence code's arrays)
        root = np.asarray(body["root_transform"], dtype=np.float64)
        pose = np.tile(np.eye(4), (2, len(model.bone_labels), 1, 1))
        pose[0, 0, :3, :3] = root[:3, :3]
        pose[0, 1:, :3, :3] = Rotation.from_rotvec(np.asarray(body["bone_rotvec"])).as_matrix()
        pose[1] = rest
        with torch.no_grad():
            out = model.model(pose_parameters=torch.from_numpy(pose.astype(np.float32)),
                              phenotype_kwargs={k: torch.full((2,), v) for k, v in phenotype.items()})
        bones = out["bone_poses"].numpy().astype(np.float64)
        for key, cam in labels["views"].items():
            rig = next(r for r in labels["sequence"]["rig"] if r["key"] == key)
            b = model.bone_labels.index(rig["bone"])
            socket = np.asarray(cam["socket_to_world"])
            assert np.allclose(socket[:3, 3], bones[0, b, :3, 3] + root[:3, 3], atol=2e-4)
            from synthgen.sequences.rigs import socket_rotation

            assert np.allclose(socket[:3, :3], socket_rotation(bones[0, b, :3, :3], bones[1, b, :3, :3]), atol=2e-4)
            rel = np.linalg.inv(socket) @ np.asarray(cam["cam_to_world"])
            relative.setdefault(key, []).append(rel)
    for key, rels in relative.items():
        rels = np.stack(rels)
        assert np.abs(rels - rels[0]).max() < 1e-9, key
        assert np.allclose(rels[0], np.asarray(next(r for r in frames[0]["labels"]["sequence"]["rig"]
                                                    if r["key"] == key)["cam_in_socket"]), atol=1e-9)


def test_spring_mount_moves_relative_to_its_bone(frames):
    rels = []
    for sample in frames:
        cam = sample["labels"]["views"]["cam2"]  # a wrist: swings while walking or waving
        rels.append(np.linalg.inv(np.asarray(cam["socket_to_world"])) @ np.asarray(cam["cam_to_world"]))
    rels = np.stack(rels)
    assert np.allclose(rels[0], np.asarray(frames[0]["labels"]["sequence"]["rig"][2]["cam_in_socket"]), atol=1e-9)
    assert np.abs(rels[1:] - rels[0]).max() > 1e-4  # the strap gives


def test_imu_windows_tile_the_track_and_agree_with_the_camera_poses():
    rate, fps = 300, 30  # IMU samples fall on the frame times
    factory = SequenceFactory(sequence_recipe(frames=6, rig={"spring": {"enabled": False}}, imu={"rate_hz": rate}))
    frames = list(finished_samples(factory, list(range(6))))
    for key in frames[0]["labels"]["views"]:
        t = np.concatenate([s["labels"]["views"][key]["imu"]["t"] for s in frames])
        assert np.allclose(t, np.arange(len(t)) / rate)  # no gap, no repeat
        assert t[-1] == pytest.approx(5 / fps) and len(t) == 5 * rate // fps + 1
        assert len(frames[0]["labels"]["views"][key]["imu"]["t"]) == 1
        for a, b in itertools.pairwise(frames):
            ra, rb = (np.asarray(s["labels"]["views"][key]["cam_to_world"])[:3, :3] for s in (a, b))
            imu = b["labels"]["views"][key]["imu"]
            # gyro integrated over (t_a, t_b] (midpoint rule, the first sample shared with frame a)
            gyro = np.concatenate([a["labels"]["views"][key]["imu"]["gyro_true"][-1:], imu["gyro_true"]])
            R = np.eye(3)
            for w0, w1 in itertools.pairwise(gyro):
                R = R @ Rotation.from_rotvec((np.asarray(w0) + np.asarray(w1)) / 2 / rate).as_matrix()
            err = Rotation.from_matrix((ra.T @ rb) @ R.T).magnitude()
            assert err < 5e-4, (key, err)
            # the accelerometer sees gravity plus the mount's motion: |f| stays near g when walking
            assert 2.0 < np.linalg.norm(np.asarray(imu["accel_true"]), axis=1).mean() < 25.0


def test_sequences_are_deterministic_and_resumable(tmp_path, caplog):
    import logging

    from synthgen.run import generate

    recipe = sequence_recipe()  # 8 frames = 2 sequences of 4; shards of 3 start mid-sequence
    out = tmp_path / "run"
    generate(recipe, out, workers=1, progress=False)
    tasks = plan_shards(8, 3)
    before = {t.index: shard_path(out, t).read_bytes() for t in tasks}
    shard_path(out, tasks[1]).unlink()  # frames 3..5: the end of sequence 0, the start of 1
    manifest = generate(recipe, out, workers=1, progress=False)
    assert manifest["complete"] and manifest["num_samples_written"] == 8
    assert shard_path(out, tasks[1]).read_bytes() == before[1]
    # another process, frames in another order
    fresh = SequenceFactory(recipe)
    records = {s["__key__"]: s for t in tasks for s in wds.WebDataset(str(shard_path(out, t)), shardshuffle=False)}
    for sample in finished_samples(fresh, [5, 2, 7]):
        encoded = fresh.encode(sample)
        stored = records[encoded["__key__"]]
        assert encoded["json"] == stored["json"]
        assert encoded["cam0.jpg"] == stored["cam0.jpg"] and encoded["cam3.depth.png"] == stored["cam3.depth.png"]
    two = tmp_path / "two"
    generate(recipe, two, workers=2, progress=False)
    assert all(shard_path(two, t).read_bytes() == before[t.index] for t in tasks)
    # the CPU stages in two spawned loader workers (whole sequences each), frames in order
    loaders = tmp_path / "loaders"
    with caplog.at_level(logging.INFO, logger="synthgen.engine"):
        generate(recipe, loaders, workers=1, loader_workers=2, progress=False)
    assert "in 2 loader workers, chunks of 4" in caplog.text
    assert all(shard_path(loaders, t).read_bytes() == before[t.index] for t in tasks)


def test_shards_read_back_per_camera(tmp_path):
    from synthgen.run import generate

    recipe = sequence_recipe(frames=2)
    out = tmp_path / "run"
    generate(recipe.model_copy(update={"num_samples": 2}), out, workers=1, progress=False)
    frames = list(load_shards(out, flat=True))
    assert len(frames) == 2
    cams = frames[1]["views"]
    assert sorted(cams) == [f"cam{k}" for k in range(6)]
    cam = cams["cam0"]
    assert cam["image"].shape == (SIZE, SIZE, 3) and cam["depth"].dtype == np.float32
    assert cam["mask"].dtype == bool and cam["instance"].dtype == np.uint8
    assert cam["keypoints_2d"].shape == (29, 3) and cam["keypoints_2d"].dtype == np.float32
    assert np.array_equal(cam["keypoints_2d"], cam["instances"][0]["keypoints_2d"])
    assert ((cam["instance"] == 1) == cam["mask"]).all()
    labels = frames[1]["labels"]
    assert labels["views"]["cam0"]["name"] == "head"
    assert labels["frame"] == 1 and labels["sequence"]["id"] == 0
    assert labels["sequence"]["motion"]["source"] == "procedural"
    assert len(labels["sequence"]["rig"]) == 6


def test_motion_blur_blurs_images_not_labels():
    sharp = SequenceFactory(sequence_recipe(frames=3))
    blurred = SequenceFactory(sequence_recipe(frames=3, motion_blur={"subframes": 3, "shutter": 1.0}))
    a, b = next(finished_samples(sharp, [2])), next(finished_samples(blurred, [2]))
    assert a["labels"]["views"] == b["labels"]["views"]
    diff = [np.abs(va["image"].astype(int) - vb["image"].astype(int)).mean() for va, vb in zip(a["views"], b["views"])]
    assert max(diff) > 0.5


def test_smpl_family_bodies_ride_amass_motions(tmp_path):
    from tests.fixtures import smpl_fixture
    from tests.fixtures.motion_files import amass_file

    model = smpl_fixture.write_model(tmp_path / "SMPL_NEUTRAL.npz", "smpl", arrays=smpl_fixture.synthetic_model("smpl"))
    clip = amass_file(tmp_path / "clip.npz", knee_deg=40.0)
    recipe = sequence_recipe(frames=3, motion={"files": [str(clip)], "file_fraction": 1.0})
    recipe = recipe.model_copy(update={"subject": recipe.subject.model_copy(update={"model": "smpl",
                                                                                    "model_path": str(model)})})
    factory = SequenceFactory(recipe)
    sample = next(finished_samples(factory, [2]))
    labels = sample["labels"]
    assert labels["sequence"]["body"]["body_model"]["name"] == "smpl"
    assert labels["sequence"]["motion"]["source"] == "amass"
    params = labels["views"]["cam0"]["instances"][0]["params"]
    assert len(params["body_pose"]) == 69 and len(params["transl"]) == 3
    assert labels["sequence"]["rig"][0]["bone"] == "head"
    head = np.asarray(labels["views"]["cam0"]["socket_to_world"])[:3, 3]
    assert head[2] > np.asarray(labels["body"]["pelvis_world"])[2] + 0.2  # upright


def test_controlnet_images_keep_one_prompt_per_sequence_and_one_seed_per_camera(tmp_path):
    pytest.importorskip("diffusers")
    try:
        from synthgen.testing.tiny_models import build_tiny_sd15
    except ImportError:  # pragma: no cover
        from synthgen.testing.tiny_models import build_tiny_sd15

    sd = build_tiny_sd15(tmp_path / "sd15", num_controlnets=1)
    backend = {"kind": "controlnet", "controlnet": {
        "family": "sd15", "base_model": str(sd["base"]), "steps": 2, "guidance": 5.0, "dtype": "fp32",
        "batch_size": 4, "device": "cpu", "local_files_only": True,
        "controlnets": [{"model": str(sd["controlnets"][0]), "layer": "normal", "scale": 1.0}]}}
    mounts = [{"name": "head", "socket": "head", "offset_m": [0, 0.09, 0.13], "look_deg": [0, -35, 0]},
              {"name": "pelvis", "socket": "pelvis", "offset_m": [0, 0, 0.25], "look_deg": [0, -10, 0]}]
    recipe = sequence_recipe(frames=3, rig={"mounts": mounts})
    recipe = recipe.model_copy(update={"backend": recipe.backend.model_validate(backend)})
    factory = SequenceFactory(recipe)
    frames = list(finished_samples(factory, [0, 1, 2]))
    prompts = {f["labels"]["sequence"]["prompt"]["prompt"] for f in frames}
    seeds = {tuple(f["labels"]["sequence"]["prompt"]["seeds"]) for f in frames}
    assert len(prompts) == 1 and len(seeds) == 1 and len(next(iter(seeds))) == 2
    for f in frames:
        assert [v["image"].shape for v in f["views"]] == [(SIZE, SIZE, 3)] * 2
        assert all(v["image"].std() > 0 for v in f["views"])
    again = next(finished_samples(SequenceFactory(recipe), [1]))
    assert all(np.array_equal(a["image"], b["image"]) for a, b in zip(frames[1]["views"], again["views"]))


def test_sequence_views_use_the_image_paths_materials_light_and_shadows():
    """The sequence factory shades with the single-image path's scene module: its sun (elevation
    25-70 deg) and materials, recorded per sequence; ground pixels in the geometric shadow of the
    scene's objects and the body are darker than the same ground elsewhere, in every kind of view."""
    from synthgen.generate.materials import MATERIALS
    from synthgen.scene import shadow_casters
    from tests.fixtures.shadows import shadow_footprint

    factory = SequenceFactory(recipe_from_dict({
        "name": "ego-shadows", "seed": 3, "num_samples": 10, "image": {"width": 128, "height": 128},
        "render": {"backend": "torch"}, "backend": {"kind": "shaded"}, "sequence": {"frames": 2}}))
    ratios = []
    for sample in finished_samples(factory, [0, 2, 4, 6, 8]):  # frame 0 of five sequences
        appearance = sample["labels"]["sequence"]["appearance"]
        sun = np.asarray(appearance["light_dir_world"], dtype=np.float64)
        assert 25.0 - 0.1 <= np.degrees(np.arcsin(sun[2])) <= 70.0 + 0.1
        seq = factory.sequence(sample["sequence"])
        scene = seq.scene
        assert set(appearance["scene_materials"]) == set(scene.instance_names[2:])
        assert set(appearance["scene_materials"].values()) <= set(MATERIALS)
        floor = next(i for i, n in enumerate(scene.instance_names) if n in ("ground", "floor"))
        casters = shadow_casters(scene)
        for view, lens in zip(sample["views"], factory.lenses):
            if lens.remaps:  # fisheye: the footprint below is a pinhole projection
                continue
            shape = view["image"].shape[:2]
            R, t = view["R"], view["t"]
            objects = shadow_footprint(scene.vertices, scene.faces[casters], sun, R, t, lens.K, shape)
            body = shadow_footprint(sample["world_vertices"], factory.subject_model.faces, sun, R, t, lens.K, shape)
            ground = view["layers"]["instance"] == floor
            kernel = np.ones((3, 3), np.uint8)
            inside = ground & (cv2.erode((objects | body).astype(np.uint8), kernel) > 0)
            away = ground & (cv2.dilate((objects | body).astype(np.uint8), np.ones((9, 9), np.uint8)) == 0)
            if inside.sum() < 30 or away.sum() < 100:
                continue
            luminance = view["image"].astype(np.float64).mean(axis=2)
            ratios.append(luminance[inside].mean() / luminance[away].mean())
    assert len(ratios) >= 3, ratios
    assert np.median(ratios) < 0.8, ratios
