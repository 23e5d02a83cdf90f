"""Prompts: person words from the body's labels, camera words, pose words in prompts, determinism,
template and prompt files (pose descriptions themselves: tests/test_pose_words.py)."""

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
from tests.fixtures.recipes import ROOT
from tests.fixtures.skeletons import as_array, sitting, crouching, arms_up, one_foot_raised, right_arm_up

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
