"""Prompts: person words from the body's labels, camera words, pose descriptions from 3D joints
(hand-built skeletons and real Anny bodies), determinism, template and prompt files."""

from __future__ import annotations

import importlib.resources

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from synthgen.errors import UserError
from synthgen.pose_words import describe_pose
from synthgen.prompt import PromptBuilder, age_group, camera_words, gender_key, load_templates, person_phrase
from synthgen.recipe import PromptConfig
from synthgen.subjects.base import KEYPOINT_NAMES, PosedSubject
from tests.fixtures.recipes import ROOT, small_recipe

# --- person and camera words ---------------------------------------------------------------------
@pytest.mark.parametrize("age, gender, group, key, must", [
    (80.0, 0.95, "elderly", "female", ("woman",)),
    (70.0, 0.05, "elderly", "male", ("man",)),
    (50.0, 0.1, "middle_aged", "male", ("middle-aged man",)),
    (24.0, 0.9, "young_adult", "female", ("young woman",)),
    (16.0, 1.0, "teen", "female", ("teenage girl",)),
    (8.0, 0.0, "child", "male", ("boy",)),
    (3.0, 0.5, "toddler", "neutral", ("a toddler",)),
    (0.8, 0.2, "baby", "male", ("boy",)),
])
def test_person_words_follow_age_and_gender(age, gender, group, key, must):
    assert age_group(age) == group and gender_key(gender) == key
    people = load_templates(None).people
    seen = {person_phrase(age, gender, np.random.default_rng(s)) for s in range(30)}
    assert seen == set(people[group][key])  # every synonym is reachable, nothing else
    for phrase in seen:
        assert any(m in phrase for m in must), phrase
        assert phrase.split()[0] in ("a", "an")


def test_person_words_for_smpl_and_unknown_bodies():
    assert gender_key("female") == "female" and gender_key("neutral") == "neutral"
    assert gender_key(None) == "neutral" and age_group(None) == "adult"
    assert person_phrase(None, "male", np.random.default_rng(0)) in ("a man", "an adult man")


@pytest.mark.parametrize("camera, words, not_words", [
    ({"subject_fraction": 1.8, "elevation_deg": 5.0, "fov_deg": 50.0}, ["close-up"], ["from"]),
    ({"subject_fraction": 0.8, "elevation_deg": 10.0, "fov_deg": 50.0}, ["full-body shot"],
     ["from", "lens"]),
    ({"subject_fraction": 0.8, "elevation_deg": 50.0, "fov_deg": 70.0}, ["from above", "wide-angle lens"],
     []),
    ({"subject_fraction": 0.7, "elevation_deg": -20.0, "fov_deg": 30.0}, ["from a low angle", "telephoto"],
     []),
    ({"subject_fraction": 0.3, "elevation_deg": 65.0, "fov_deg": 50.0}, ["wide shot", "directly above"], []),
])
def test_camera_words(camera, words, not_words):
    text = camera_words(camera)
    assert all(w in text for w in words), text
    assert not any(w in text for w in not_words), text
    assert camera_words(None) == "photo"


# --- describe_pose on hand-built skeletons -------------------------------------------------------
def skeleton() -> dict[str, np.ndarray]:
    """An adult standing upright (legs 0.9 m), facing -Y, left = +X, arms hanging at the sides."""
    p = {
        "nose": (0, -0.10, 1.62), "left_eye": (0.03, -0.08, 1.66), "right_eye": (-0.03, -0.08, 1.66),
        "left_ear": (0.08, 0.0, 1.63), "right_ear": (-0.08, 0.0, 1.63),
        "left_shoulder": (0.18, 0, 1.45), "right_shoulder": (-0.18, 0, 1.45),
        "left_elbow": (0.22, 0, 1.17), "right_elbow": (-0.22, 0, 1.17),
        "left_wrist": (0.24, 0, 0.92), "right_wrist": (-0.24, 0, 0.92),
        "left_hip": (0.1, 0, 0.98), "right_hip": (-0.1, 0, 0.98),
        "left_knee": (0.11, 0, 0.53), "right_knee": (-0.11, 0, 0.53),
        "left_ankle": (0.12, 0, 0.08), "right_ankle": (-0.12, 0, 0.08),
        "left_big_toe": (0.12, -0.18, 0.02), "right_big_toe": (-0.12, -0.18, 0.02),
        "left_small_toe": (0.16, -0.15, 0.02), "right_small_toe": (-0.16, -0.15, 0.02),
        "left_heel": (0.12, 0.05, 0.02), "right_heel": (-0.12, 0.05, 0.02),
    }
    return {k: np.array(v, dtype=float) for k, v in p.items()}


def as_array(p: dict[str, np.ndarray]) -> np.ndarray:
    return np.stack([p[n] for n in KEYPOINT_NAMES])


def move(p, names, offset):
    for n in names:
        p[n] = p[n] + np.asarray(offset, dtype=float)


UPPER = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
         "left_elbow", "right_elbow", "left_wrist", "right_wrist"]
FEET = ["ankle", "big_toe", "small_toe", "heel"]


def sitting():
    """Thighs forward (-Y) and level, shins hanging, feet on the floor: a chair pose."""
    p = skeleton()
    for s, x in (("left", 1), ("right", -1)):
        p[f"{s}_hip"] = np.array([0.1 * x, 0, 0.53])
        p[f"{s}_knee"] = np.array([0.11 * x, -0.45, 0.53])
        move(p, [f"{s}_{f}" for f in FEET], (0, -0.45, 0))
    move(p, UPPER, (0, 0, -0.45))
    p["left_wrist"], p["right_wrist"] = np.array([0.2, -0.25, 0.6]), np.array([-0.2, -0.25, 0.6])
    return p


def crouching():
    p = skeleton()
    for s, x in (("left", 1), ("right", -1)):
        p[f"{s}_hip"] = np.array([0.1 * x, 0.05, 0.35])
        p[f"{s}_knee"] = np.array([0.14 * x, -0.35, 0.55])
    move(p, UPPER, (0, -0.25, -0.7))
    return p


def t_pose():
    p = skeleton()
    for s, x in (("left", 1), ("right", -1)):
        p[f"{s}_elbow"] = np.array([0.46 * x, 0, 1.45])
        p[f"{s}_wrist"] = np.array([0.72 * x, 0, 1.45])
    return p


def arms_up():
    p = skeleton()
    for s, x in (("left", 1), ("right", -1)):
        p[f"{s}_elbow"] = np.array([0.2 * x, 0, 1.73])
        p[f"{s}_wrist"] = np.array([0.21 * x, 0, 1.98])
    return p


def leaning(angle_deg):
    """Upper body rotated forward about the hip line."""
    p = skeleton()
    rot = Rotation.from_euler("x", angle_deg, degrees=True)  # +x tilts +Z toward -Y (forward)
    pivot = (p["left_hip"] + p["right_hip"]) / 2
    for n in UPPER:
        p[n] = pivot + rot.apply(p[n] - pivot)
    return p


def lying_on_back():
    """The standing skeleton tipped over backwards, face up, 10 cm above the floor."""
    p = skeleton()
    rot = Rotation.from_euler("x", -90, degrees=True)  # +Z -> +Y: head away, face (-Y) -> up
    for n in p:
        p[n] = rot.apply(p[n]) + np.array([0, 0, 0.12])
    return p


def one_foot_raised(height=0.15):
    p = skeleton()
    move(p, ["left_knee"], (0, -0.1, 0.05))
    move(p, [f"left_{f}" for f in FEET], (0, 0, height))
    return p


def right_arm_up():
    p = skeleton()
    p["right_elbow"], p["right_wrist"] = np.array([-0.2, 0, 1.73]), np.array([-0.21, 0, 1.98])
    return p


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


# --- PromptBuilder -------------------------------------------------------------------------------
def fake_sample(points=None, age=72.0, gender=0.9, camera=None):
    subject = PosedSubject(vertices=np.zeros((1, 3), np.float32),
                           keypoints_3d=as_array(points or sitting()).astype(np.float32),
                           params={"phenotype": {"gender": gender}, "age_years": age})
    camera = camera or {"fov_deg": 50.0, "elevation_deg": 50.0, "distance": 3.0, "subject_fraction": 0.8}
    return {"index": 0, "subject": subject, "labels": {"camera": camera}}


def test_prompt_has_person_pose_and_camera_words_and_is_deterministic():
    builder = PromptBuilder(PromptConfig())
    sample = fake_sample()
    prompts = [builder.build(sample, np.random.default_rng(s)) for s in range(40)]
    for prompt, negative in prompts:
        assert negative == PromptConfig().negative
        assert any(w in prompt for w in ("elderly woman", "old woman", "senior woman")), prompt
        assert "sitting" in prompt and "full-body shot from above" in prompt, prompt
        assert ", ," not in prompt and "  " not in prompt and not prompt.endswith(","), prompt
    assert len({p for p, _ in prompts}) > 20  # templates and slots vary with the rng
    again = [builder.build(sample, np.random.default_rng(s)) for s in range(40)]
    assert again == prompts


def test_prompts_fit_clip_context():
    builder = PromptBuilder(PromptConfig())
    for s in range(200):
        rng = np.random.default_rng(s)
        pts = [sitting, crouching, arms_up, one_foot_raised, right_arm_up][s % 5]()
        prompt, _ = builder.build(fake_sample(pts, age=float(rng.uniform(1, 90)),
                                              gender=float(rng.uniform())), rng)
        # CLIP (SD1.5) reads 77 tokens; a word or a comma is about one token
        assert len(prompt.replace(",", " ,").split()) <= 70, prompt


def test_children_get_children_clothing():
    builder = PromptBuilder(PromptConfig())
    clothing = load_templates(None).slots["clothing"]
    for s in range(20):
        prompt, _ = builder.build(fake_sample(age=1.0, gender=0.5), np.random.default_rng(s))
        assert any(c in prompt for c in clothing["baby"]), prompt
        assert not any(c in prompt for c in clothing["default"]), prompt


def test_describe_pose_off_leaves_no_pose_words():
    builder = PromptBuilder(PromptConfig(describe_pose=False))
    for s in range(10):
        prompt, _ = builder.build(fake_sample(), np.random.default_rng(s))
        assert "sitting" not in prompt and ", ," not in prompt


def test_prompt_from_labels_alone_uses_world_joints():
    """A sample read back from shards (no subject): camera-frame joints go back to the world."""
    points = as_array(arms_up())
    R = Rotation.from_euler("xyz", [100, 20, 30], degrees=True).as_matrix()
    t = np.array([0.1, -0.3, 4.0])
    ext = np.eye(4)
    ext[:3, :3], ext[:3, 3] = R, t
    instance = {"keypoints_3d": (points @ R.T + t).tolist(), "keypoint_names": KEYPOINT_NAMES,
                "params": {"age_years": 30.0, "phenotype": {"gender": 0.0}}}
    labels = {"cam_ext": ext.tolist(), "camera": {"subject_fraction": 0.8}, "instances": [instance]}
    prompt, _ = PromptBuilder(PromptConfig()).build({"labels": labels}, np.random.default_rng(0))
    assert "both arms raised above the head" in prompt and "man" in prompt


def test_prompt_for_a_real_pipeline_sample(anny_factory):
    subject = anny_factory.pose_subjects([0])[0]
    sample = anny_factory.prepare(0, subject)
    prompt, _ = PromptBuilder(PromptConfig()).build(sample, np.random.default_rng(0))
    phrases = describe_pose(sample["subject"].keypoints_3d, anny_factory.subject_model.keypoint_names)
    assert phrases and phrases[0] in prompt
    assert len(prompt) > 40


# --- prompt and template files -------------------------------------------------------------------
def test_prompts_file_lines_are_drawn_with_the_rng(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# my prompts\n\na person in a park\n   \na dancer on a stage\n# end\n")
    builder = PromptBuilder(PromptConfig(prompts_file=str(path), negative="blurry"))
    drawn = [builder.build(fake_sample(), np.random.default_rng(s)) for s in range(30)]
    assert {p for p, _ in drawn} == {"a person in a park", "a dancer on a stage"}
    assert {n for _, n in drawn} == {"blurry"}
    assert drawn == [builder.build(fake_sample(), np.random.default_rng(s)) for s in range(30)]


def test_missing_or_empty_prompts_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="prompt.prompts_file"):
        PromptBuilder(PromptConfig(prompts_file=str(tmp_path / "nope.txt")))
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(UserError, match="prompt.prompts_file.*no prompts"):
        PromptBuilder(PromptConfig(prompts_file=str(tmp_path / "empty.txt")))


def test_custom_templates_file(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("templates:\n  - '{person} {pose}, {place}, {{braces}}'\nmax_pose_phrases: 1\n"
                    "slots:\n  place:\n    child: [in a playground]\n    default: [in an office]\n")
    builder = PromptBuilder(PromptConfig(templates=str(path)))
    adult, _ = builder.build(fake_sample(age=40.0, gender=0.0), np.random.default_rng(0))
    assert adult in ("a man sitting, in an office, {braces}", "an adult man sitting, in an office, {braces}")
    child, _ = builder.build(fake_sample(age=8.0, gender=1.0), np.random.default_rng(0))
    assert child.endswith("sitting, in a playground, {braces}") and "girl" in child


@pytest.mark.parametrize("text, match", [
    ("templates: [unclosed\n", "not valid YAML"),
    ("templates:\n  - '{person} in {place}'\n", r"slot \{place\}"),
    ("templates:\n  - '{person}, {weather}'\nslots:\n  place: [x]\n", r"slot \{weather\}"),
    ("templates: ['{person}']\nslots:\n  pose: [x]\n", "filled by synthgen"),
    ("templates: ['{person}, {c}']\nslots:\n  c:\n    child: [x]\n", "no list for baby"),
    ("templates: ['{person}, {c}']\nslots:\n  c:\n    kids: [x]\n", "unknown keys"),
    ("templates: ['{person!r}']\n", "plain"),
    ("templates: []\n", "non-empty list"),
    ("slots: {}\n", "missing the 'templates'"),
    ("templats: ['{person}']\n", "unknown keys"),
    ("templates: ['{person}']\npeople:\n  teen: {male: [a lad]}\n", "people.teen"),
])
def test_bad_templates_file_names_the_file_and_the_problem(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=match) as err:
        PromptBuilder(PromptConfig(templates=str(path)))
    assert str(path) in str(err.value)


def test_missing_templates_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="prompt.templates"):
        PromptBuilder(PromptConfig(templates=str(tmp_path / "missing.yaml")))


def test_embedded_templates_ship_in_the_package_and_match_the_repo_copy():
    packaged = importlib.resources.files("synthgen").joinpath("assets/prompts/human.yaml")
    assert packaged.is_file()
    assert (ROOT / "assets" / "prompts" / "human.yaml").read_text() == packaged.read_text()
    ts = load_templates(None)
    assert len(ts.templates) >= 3 and {"clothing", "scene", "lighting"} <= set(ts.slots)
    # the repo path also works as an explicit recipe value
    assert PromptBuilder(PromptConfig(templates=str(ROOT / "assets/prompts/human.yaml"))).templates
