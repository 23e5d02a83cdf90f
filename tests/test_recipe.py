import subprocess
import sys

import pytest

from synthgen.recipe import RecipeError, load_recipe, recipe_from_dict, recipe_hash
from tests.fixtures.recipes import ROOT


def test_quickstart_recipe_validates():
    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    assert recipe.subject.model == "anny"
    assert recipe.num_samples >= 200
    assert recipe.backend.kind == "shaded"


def test_overrides_apply_with_yaml_values():
    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml",
                         ["camera.fov_deg=[40,60]", "seed=3", "output.layers=[mask,depth]"])
    assert recipe.camera.fov_deg == (40.0, 60.0)
    assert recipe.seed == 3
    assert recipe.output.layers == ["mask", "depth"]


@pytest.mark.parametrize("override, words", [
    ("camera.fov_deg=[80,20]", ["camera", "fov_deg", "80"]),
    ("camra.fov_deg=[1,2]", ["camra", "unknown key"]),
    ("output.layers=[normal,colour]", ["output.layers", "colour", "normal"]),
    ("image.width=500", ["image", "multiple of 8", "500"]),
    ("subject.model=smplx", ["model_path", "smpl-x.is.tue.mpg.de"]),
    ("num_samples=0", ["num_samples", "greater than or equal to 1"]),
    ("nonsense", ["dotted.key=value"]),
])
def test_bad_values_name_key_value_and_fix(override, words):
    with pytest.raises(RecipeError) as info:
        recipe_from_dict({}, [override])
    message = str(info.value)
    for word in words:
        assert word in message, message


def test_hash_ignores_num_samples_but_not_content():
    a = recipe_from_dict({"num_samples": 10})
    assert recipe_hash(a) == recipe_hash(recipe_from_dict({"num_samples": 99}))
    assert recipe_hash(a) != recipe_hash(recipe_from_dict({"seed": 1}))


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "synthgen", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_validate_prints_resolved_recipe():
    result = _cli("validate", "recipes/quickstart.yaml", "seed=5")
    assert result.returncode == 0, result.stderr
    assert "seed: 5" in result.stdout and "recipe hash" in result.stdout


@pytest.mark.parametrize("args", [
    ("validate", "recipes/quickstart.yaml", "camera.roll_sd_deg=-1"),
    ("validate", "does/not/exist.yaml"),
    ("generate", "recipes/quickstart.yaml", "--out", "/tmp/never", "subject.model=smpl"),
])
def test_cli_user_mistakes_exit_2_with_one_line(args):
    result = _cli(*args)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("synthgen: error:"), result.stderr
    assert "Traceback" not in result.stderr
