"""The controlnet image backend, through the production ``from_pretrained`` path.

Every model here is a tiny seeded random-weight model built by :mod:`synthgen.testing.tiny_models` and
saved to disk, then loaded by :class:`ControlNetBackend` exactly as real checkpoints would be
(local folders, and a hub id served from a Hugging Face cache). 64x64 images, 2 steps.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")

import diffusers  # noqa: E402  (imported up front so timings below exclude the import)
import torch  # noqa: E402

from synthgen.errors import MissingModelError, UserError  # noqa: E402
from synthgen.generate.controlnet import LAYER_SOURCES, ControlNetBackend, control_image  # noqa: E402
from synthgen.generate.pipelines import check_models_available  # noqa: E402
from synthgen.recipe import ControlNetConfig  # noqa: E402
from synthgen.testing.tiny_models import build_tiny_flux, build_tiny_sd15, build_tiny_sdxl  # noqa: E402
from tests.fixtures.controlnet import SIZE, config, fake_layers, max_diff, sample, unet_residuals  # noqa: E402


@pytest.fixture(scope="module")
def sd15(tmp_path_factory) -> dict:
    return build_tiny_sd15(tmp_path_factory.mktemp("tiny_sd15"), num_controlnets=2)


def relative_change(a: np.ndarray, b: np.ndarray) -> float:
    """|a - b| / |a|: float32 rounding alone moves this by ~1e-7; a change of control moves it
    by orders of magnitude more (the thresholds below sit at 1e-3 and above)."""
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30))


# --- control images ----------------------------------------------------------------------------
def test_control_image_is_rgb_uint8_for_every_layer():
    layers = fake_layers(0)
    for name, key in LAYER_SOURCES.items():
        image = control_image(layers, name)
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8, name
        if layers[key].ndim == 2:  # one-channel layers become grey RGB
            assert (image == layers[key][..., None]).all(), name
        else:
            assert (image == layers[key]).all(), name
    with pytest.raises(KeyError, match="depth_control"):
        control_image({"mask": layers["mask"]}, "depth")
    with pytest.raises(ValueError, match="uint8"):
        control_image({"mask": layers["mask"].astype(np.float32)}, "mask")


# --- (a) shapes, dtypes, determinism -----------------------------------------------------------
def test_generate_shapes_dtypes_and_seed_determinism(sd15):
    backend = ControlNetBackend(config(sd15), SIZE, SIZE)
    samples = [sample(11), sample(12)]
    first = backend.generate(samples)
    assert len(first) == 2
    for image in first:
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
        assert image.std() > 0  # not a blank image
    again = backend.generate(samples)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    # a freshly loaded backend makes the very same images (loading is deterministic too)
    reloaded = ControlNetBackend(config(sd15), SIZE, SIZE).generate(samples)
    assert all(np.array_equal(a, b) for a, b in zip(first, reloaded))
    # the seed decides the noise (a large change of the image)...
    assert max_diff(first[0], backend.generate([sample(99, layers_seed=11)])[0]) > 8
    # ...and the control image steers the denoiser (a change of what the UNet receives)
    steered = relative_change(unet_residuals(backend, [sample(11)]),
                              unet_residuals(backend, [sample(11, layers_seed=5)]))
    assert steered > 1e-2


def test_check_inputs_names_the_problem(sd15):
    backend = ControlNetBackend(config(sd15), SIZE, SIZE)
    with pytest.raises(ValueError, match="recipe image is 64x64"):
        backend.generate([{**sample(1), "layers": fake_layers(1, size=32)}])
    with pytest.raises(KeyError, match="seed"):
        backend.generate([{"layers": fake_layers(1), "prompt": "x"}])
    with pytest.raises(ValueError, match="seed"):
        backend.generate([{**sample(1), "seed": -3}])


# --- (b) batching never changes an image -------------------------------------------------------
def test_batching_does_not_change_images(sd15):
    """Batch 3 vs batch 1: every image's noise comes from its own generator, so the inputs to
    the networks are identical. The outputs agree to float rounding only: CPU convolution and
    matmul kernels (oneDNN/BLAS) block their sums differently for different batch sizes (a
    tiny VAE decode differs by ~1e-5 between batch 1 and 3, with or without oneDNN), which can
    flip the last bit of a uint8 pixel. Bit-identity is not achievable on CPU; <= 1/255 is."""
    samples = [sample(21), sample(22), sample(23)]
    batched = ControlNetBackend(config(sd15, batch_size=3), SIZE, SIZE).generate(samples)
    single = ControlNetBackend(config(sd15, batch_size=1), SIZE, SIZE).generate(samples)
    shuffled = ControlNetBackend(config(sd15, batch_size=2), SIZE, SIZE).generate(samples[::-1])[::-1]
    for a, b, c in zip(batched, single, shuffled):
        assert max_diff(a, b) <= 1 and max_diff(a, c) <= 1
        assert np.mean(a != b) < 0.01  # only a few rounding-edge pixels may differ
    # and the three seeds really are three different images
    assert max_diff(batched[0], batched[1]) > 8


# --- (c) multi-ControlNet ----------------------------------------------------------------------
def test_multi_controlnet_depth_and_edges(sd15):
    """GenZoo-style: depth at 0.65 + edges (canny) at 0.2, each net fed its own layer."""
    cfg = config(sd15, layers=("depth", "edges"), scales=(0.65, 0.2))
    backend = ControlNetBackend(cfg, SIZE, SIZE)
    assert isinstance(backend.pipe.controlnet, diffusers.MultiControlNetModel)
    assert len(backend.pipe.controlnet.nets) == 2
    samples = [sample(31), sample(32), sample(33)]
    images = backend.generate(samples)  # batch 2: a full and a partial batch
    assert [im.shape for im in images] == [(SIZE, SIZE, 3)] * 3
    # the second net matters: change only the edges layer, or only its scale
    reference = unet_residuals(backend, [sample(31)])
    edited = sample(31)
    edited["layers"]["edges"] = np.zeros_like(edited["layers"]["edges"])
    # a sparse edge map at scale 0.2 beside the depth net at 0.65: measured 0.5 % of the summed
    # residuals, so 1e-3 (10^4 times float32 rounding)
    assert relative_change(reference, unet_residuals(backend, [edited])) > 1e-3
    off = ControlNetBackend(config(sd15, layers=("depth", "edges"), scales=(0.65, 0.0)), SIZE, SIZE)
    assert relative_change(reference, unet_residuals(off, [sample(31)])) > 1e-2
    # and its scale is applied: at 0 the edges layer no longer matters at all
    assert np.array_equal(unet_residuals(off, [sample(31)]), unet_residuals(off, [edited]))


# --- (d) missing models fail fast --------------------------------------------------------------
def test_missing_models_fail_fast_with_one_message(tmp_path, monkeypatch, network_attempts):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    empty = tmp_path / "empty_controlnet"
    empty.mkdir()
    cfg = ControlNetConfig(
        base_model=str(tmp_path / "no_such_base"),
        controlnets=[{"model": "synthgen-tests/uncached-controlnet", "layer": "depth"},
                     {"model": str(empty), "layer": "edges"}])
    for attempt in (lambda: check_models_available(cfg), lambda: ControlNetBackend(cfg, 64, 64)):
        start = time.perf_counter()
        with pytest.raises(MissingModelError) as info:
            attempt()
        assert time.perf_counter() - start < 30.0 and not network_attempts  # no download, no retry loop
        message = str(info.value)
        assert "\n" not in message and message.startswith("3 model(s)")
        assert str(tmp_path / "no_such_base") in message and "no such local folder" in message
        assert "huggingface-cli download synthgen-tests/uncached-controlnet" in message
        assert f"{empty}': local folder unusable (no config.json, no weights" in message
        assert "local folder path" in message
    assert isinstance(info.value, UserError)  # the CLI prints it as one line, exit 2


def test_wrong_family_and_flux_scheduler_are_reported(sd15, tmp_path):
    xl = build_tiny_sdxl(tmp_path / "xl")
    with pytest.raises(MissingModelError, match="family: sdxl"):
        check_models_available(ControlNetConfig(family="sd15", base_model=xl["base"],
                                                controlnets=[{"model": sd15["controlnets"][0],
                                                              "layer": "depth"}]))
    with pytest.raises(UserError, match="scheduler: default"):
        check_models_available(ControlNetConfig(family="flux", base_model=xl["base"],
                                                scheduler="unipc",
                                                controlnets=[{"model": "x/y", "layer": "depth"}]))


def test_uncached_model_online_but_hub_unreachable(monkeypatch):
    """Not offline: an uncached id is looked up on the hub; a network failure is reported."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)

    calls = []

    def unreachable(self, repo_id, **kwargs):
        calls.append(repo_id)
        raise ConnectionError("no route to host")

    monkeypatch.setattr("huggingface_hub.HfApi.model_info", unreachable)
    cfg = ControlNetConfig(base_model="synthgen-tests/uncached-base",
                           controlnets=[{"model": "synthgen-tests/uncached-cn", "layer": "depth"}])
    with pytest.raises(MissingModelError, match="hub is unreachable") as info:
        check_models_available(cfg)
    assert str(info.value).startswith("2 model(s)")
    assert "huggingface-cli download synthgen-tests/uncached-base" in str(info.value)
    assert calls == ["synthgen-tests/uncached-base"]  # asked once, not once per model


def _cache_repo(cache: Path, repo_id: str, source: str) -> Path:
    """Lay ``source`` out as the HF cache does: refs/main -> snapshots/<commit>/files."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(source, repo / "snapshots" / commit)
    return repo / "snapshots" / commit


def test_hub_ids_load_from_the_local_cache(sd15, tmp_path, monkeypatch):
    """Hub ids resolve through the Hugging Face cache offline, via the same from_pretrained."""
    cache = tmp_path / "hub"
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    _cache_repo(cache, "tiny/sd15-base", sd15["base"])
    snapshot = _cache_repo(cache, "tiny/controlnet-depth", sd15["controlnets"][0])
    cfg = ControlNetConfig(base_model="tiny/sd15-base", steps=2, device="cpu",
                           controlnets=[{"model": "tiny/controlnet-depth", "layer": "depth"}])
    check_models_available(cfg)
    from_cache = ControlNetBackend(cfg, SIZE, SIZE).generate([sample(41)])[0]
    from_folder = ControlNetBackend(config(sd15), SIZE, SIZE).generate([sample(41)])[0]
    assert np.array_equal(from_cache, from_folder)
    # a partial download is reported, not half-loaded
    next(snapshot.glob("*.safetensors")).unlink()
    with pytest.raises(MissingModelError, match="cached copy is incomplete"):
        check_models_available(cfg)


# --- (e) schedulers ----------------------------------------------------------------------------
@pytest.mark.parametrize("name, cls", [("unipc", "UniPCMultistepScheduler"),
                                       ("ddim", "DDIMScheduler"),
                                       ("euler", "EulerDiscreteScheduler"),
                                       ("euler_a", "EulerAncestralDiscreteScheduler"),
                                       ("dpm", "DPMSolverMultistepScheduler"),
                                       ("default", "DDIMScheduler")])  # the tiny base's own
def test_scheduler_switch(sd15, name, cls):
    backend = ControlNetBackend(config(sd15, scheduler=name), SIZE, SIZE)
    assert type(backend.pipe.scheduler).__name__ == cls
    image = backend.generate([sample(51)])[0]
    assert image.shape == (SIZE, SIZE, 3)
    if name == "euler_a":  # an ancestral sampler draws noise every step: per-image generators
        batched = ControlNetBackend(config(sd15, scheduler=name, batch_size=2), SIZE, SIZE)
        assert max_diff(image, batched.generate([sample(51), sample(52)])[0]) <= 1


def test_schedulers_change_the_image(sd15):
    images = {name: ControlNetBackend(config(sd15, scheduler=name), SIZE, SIZE).generate([sample(61)])[0]
              for name in ("ddim", "euler_a")}
    assert max_diff(images["ddim"], images["euler_a"]) > 0


# --- other families ----------------------------------------------------------------------------
def test_sdxl_family(tmp_path):
    xl = build_tiny_sdxl(tmp_path / "xl")
    backend = ControlNetBackend(ControlNetConfig(family="sdxl", base_model=xl["base"], steps=2,
                                                 device="cpu", guidance=5.0,
                                                 controlnets=[{"model": xl["controlnets"][0],
                                                               "layer": "normal", "scale": 0.75}]),
                                SIZE, SIZE)
    assert type(backend.pipe).__name__ == "StableDiffusionXLControlNetPipeline"
    images = backend.generate([sample(71), sample(72)])
    assert [im.shape for im in images] == [(SIZE, SIZE, 3)] * 2 and images[0].dtype == np.uint8


def test_flux_family_multi_controlnet(tmp_path):
    """GenZoo's setting in miniature: FLUX, canny 0.2 + depth 0.65, guidance 3.5, bf16."""
    flux = build_tiny_flux(tmp_path / "flux", num_controlnets=2)
    cfg = ControlNetConfig(family="flux", base_model=flux["base"], scheduler="default", steps=2,
                           guidance=3.5, dtype="bf16", device="cpu", batch_size=2,
                           controlnets=[{"model": flux["controlnets"][0], "layer": "edges", "scale": 0.2},
                                        {"model": flux["controlnets"][1], "layer": "depth", "scale": 0.65}])
    backend = ControlNetBackend(cfg, SIZE, SIZE)
    assert isinstance(backend.pipe.controlnet, diffusers.FluxMultiControlNetModel)
    samples = [sample(81), sample(82), sample(83)]
    images = backend.generate(samples)
    assert [im.shape for im in images] == [(SIZE, SIZE, 3)] * 3 and images[0].dtype == np.uint8
    assert all(np.array_equal(a, b) for a, b in zip(images, backend.generate(samples)))
    # batch invariance to rounding holds in fp32; bf16's 8-bit mantissa turns the different
    # summation order of batched kernels into differences of several levels
    fp32 = ControlNetBackend(cfg.model_copy(update={"dtype": "fp32"}), SIZE, SIZE)
    batched = fp32.generate(samples)
    single = ControlNetBackend(cfg.model_copy(update={"dtype": "fp32", "batch_size": 1}),
                               SIZE, SIZE).generate(samples)
    assert all(max_diff(a, b) <= 1 for a, b in zip(batched, single))


# --- real render layers ------------------------------------------------------------------------
def test_real_render_layers_normal_and_skeleton(anny_factory, tmp_path):
    """HumanWild-SD1.5-like: normal + OpenPose skeleton from a real Anny render (256x256)."""
    models = build_tiny_sd15(tmp_path / "sd15", num_controlnets=2)
    factory = anny_factory
    made = factory.prepare(0, factory.pose_subjects([0])[0])
    width, height = factory.recipe.image.width, factory.recipe.image.height
    backend = ControlNetBackend(config(models, layers=("normal", "skeleton"), scales=(1.0, 0.8)),
                                width, height)
    record = {"layers": made["layers"], "prompt": "a person", "negative_prompt": "",
              "seed": made["seed"]}
    image = backend.generate([record])[0]
    assert image.shape == (height, width, 3) and image.dtype == np.uint8


def test_recipe_through_the_pipeline(tmp_path):
    """A controlnet recipe run by the image factory: prompts, batching and images end to end."""
    from tests.fixtures.recipes import small_recipe
    from synthgen.engine import finished_samples
    from synthgen.images import ImageFactory

    models = build_tiny_sd15(tmp_path / "sd15", num_controlnets=2)
    units = [{"model": models["controlnets"][0], "layer": "depth", "scale": 0.65},
             {"model": models["controlnets"][1], "layer": "edges", "scale": 0.2}]
    recipe = small_recipe(backend={"kind": "controlnet",
                                   "controlnet": {"base_model": models["base"], "controlnets": units,
                                                  "steps": 2, "batch_size": 2, "device": "cpu"}})
    samples = list(finished_samples(ImageFactory(recipe), [0, 1, 2]))
    assert [s["index"] for s in samples] == [0, 1, 2]
    for s in samples:
        assert s["image"].shape == (128, 128, 3) and s["image"].dtype == np.uint8
        assert isinstance(s["prompt"], str) and s["prompt"]


def test_control_images_travel_as_uint8_and_equal_diffusers_preprocessing(sd15):
    """The control images reach the device as uint8 and become floats there; the tensor equals
    what the pipeline's own ``prepare_image`` (its ``VaeImageProcessor``) makes of the same RGB
    images given as PIL images, within 1/255 (in fact exactly)."""
    from PIL import Image

    backend = ControlNetBackend(config(sd15, layers=("depth", "edges"), scales=(1.0, 0.5)), SIZE, SIZE)
    batch = [sample(1), sample(2), sample(3)]
    raw = backend.control_uint8(batch)
    assert [t.dtype for t in raw] == [torch.uint8, torch.uint8]
    assert [t.shape for t in raw] == [(3, SIZE, SIZE, 3)] * 2
    ours = backend.control_tensors(batch)
    for index, unit in enumerate(backend.config.controlnets):
        pil = [Image.fromarray(control_image(s["layers"], unit.layer, index)) for s in batch]
        theirs = backend.pipe.prepare_image(pil, SIZE, SIZE, len(batch), 1, backend.device, torch.float32)
        assert ours[index].device.type == backend.device and ours[index].dtype == torch.float32
        assert ours[index].shape == theirs.shape == (3, 3, SIZE, SIZE)
        assert float((ours[index] - theirs).abs().max()) <= 1 / 255
        assert torch.equal(ours[index], theirs)
