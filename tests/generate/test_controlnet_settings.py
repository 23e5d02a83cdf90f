"""The flagship settings on tiny real components: VAE override, DDIM eta, long prompts (compel),
CPU noise generators, verdicts in shard sidecars."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("diffusers")

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from synthgen.errors import MissingModelError, UserError  # noqa: E402
from synthgen.generate.controlnet import ControlNetBackend  # noqa: E402
from synthgen.recipe import ControlNetConfig  # noqa: E402
from tests.fixtures.controlnet import SIZE, fake_layers, max_diff  # noqa: E402
from synthgen.testing.tiny_models import build_tiny_sd15, build_tiny_sdxl, build_tiny_vae  # noqa: E402

LONG = ("a photo of a tall woman with curly red hair in a green raincoat walking her dog along a rainy "
        "harbour at dusk, boats and gulls behind her, ")  # > 77 tokens for the tiny character tokenizer


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    return build_tiny_sd15(tmp_path_factory.mktemp("sd15"), num_controlnets=1)


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdxl")
    return build_tiny_sdxl(root, num_controlnets=1) | {"vae": build_tiny_vae(root / "vae", "sdxl", seed=5)}


def _config(models, family="sd15", **kw) -> ControlNetConfig:
    return ControlNetConfig(**{"family": family, "base_model": models["base"], "steps": 2, "device": "cpu",
                               "batch_size": 2, "controlnets": [{"model": models["controlnets"][0],
                                                                 "layer": "normal"}]} | kw)


def _sample(seed: int, prompt: str = "a person", negative: str = "blurry") -> dict:
    return {"layers": fake_layers(seed), "prompt": prompt, "negative_prompt": negative, "seed": seed}


def _text_states(backend: ControlNetBackend, samples: list[dict]) -> list[torch.Tensor]:
    """The encoder_hidden_states the UNet received, per call."""
    seen = []

    def grab(_module, args, kwargs):
        seen.append((kwargs.get("encoder_hidden_states") if "encoder_hidden_states" in kwargs else args[2]).detach())

    handle = backend.pipe.unet.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        backend.generate(samples)
    finally:
        handle.remove()
    return seen


def test_vae_override_is_loaded_and_used(sdxl):
    plain = ControlNetBackend(_config(sdxl, "sdxl", guidance=5.0), SIZE, SIZE)
    fixed = ControlNetBackend(_config(sdxl, "sdxl", guidance=5.0, vae=sdxl["vae"]), SIZE, SIZE)
    saved = load_file(f"{sdxl['vae']}/diffusion_pytorch_model.safetensors")
    loaded = fixed.pipe.vae.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())
    assert not torch.equal(plain.pipe.vae.state_dict()["decoder.conv_out.weight"], saved["decoder.conv_out.weight"])
    assert max_diff(plain.generate([_sample(1)])[0], fixed.generate([_sample(1)])[0]) > 8


def test_missing_vae_fails_before_loading(sdxl, tmp_path):
    with pytest.raises(MissingModelError, match=r"backend.controlnet.vae=.*no such local folder"):
        ControlNetBackend(_config(sdxl, "sdxl", vae=str(tmp_path / "nope")), SIZE, SIZE)


def test_ddim_eta_is_stochastic_seeded_and_batch_invariant(sd15):
    eta1 = ControlNetBackend(_config(sd15, scheduler="ddim", eta=1.0), SIZE, SIZE)
    eta0 = ControlNetBackend(_config(sd15, scheduler="ddim"), SIZE, SIZE)
    samples = [_sample(3), _sample(4)]
    first, again = eta1.generate(samples), eta1.generate(samples)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))  # seeded: repeatable
    assert max_diff(first[0], eta0.generate(samples[:1])[0]) > 8  # eta adds noise at every step
    single = ControlNetBackend(_config(sd15, scheduler="ddim", eta=1.0, batch_size=1), SIZE, SIZE)
    assert all(max_diff(a, b) <= 1 for a, b in zip(first, single.generate(samples)))


@pytest.mark.parametrize("scheduler,eta", [("ddim", 1.0), ("euler_a", None), ("unipc", None)])
def test_noise_drawn_up_front_gives_the_images_of_diffusers_own_drawing(sd15, monkeypatch, scheduler, eta):
    """The initial latents are drawn before the call (then moved once) and the per-step noise
    (DDIM eta 1, Euler ancestral) comes from the same per-image generators: the pipeline's
    output is bit for bit what diffusers gives when it draws everything itself (the old path)."""
    backend = ControlNetBackend(_config(sd15, scheduler=scheduler, eta=eta, batch_size=3), SIZE, SIZE)
    calls, outputs = [], []
    pipe = backend.pipe

    def call(**kw):
        calls.append(dict(kw))
        out = pipe(**kw)
        outputs.append(out.images.clone())
        return out

    monkeypatch.setattr(backend, "pipe", call)
    backend.generate([_sample(11), _sample(12), _sample(13)])
    kw = calls[0]
    assert kw["latents"].shape == (3, 4, SIZE // 8, SIZE // 8) and kw["latents"].device.type == "cpu"
    old = {k: v for k, v in kw.items() if k != "latents"}
    old["generator"] = [torch.Generator("cpu").manual_seed(seed) for seed in (11, 12, 13)]
    assert torch.equal(pipe(**old).images, outputs[0])
    # the per-step noise is really used: a different step-noise stream changes the image
    if scheduler != "unipc":
        other = dict(kw, latents=kw["latents"].clone(),
                     generator=[torch.Generator("cpu").manual_seed(seed + 1) for seed in (11, 12, 13)])
        assert not torch.equal(pipe(**other).images, outputs[0])


def test_generators_are_made_on_the_cpu(sd15, monkeypatch):
    backend = ControlNetBackend(_config(sd15), SIZE, SIZE)
    calls = []
    pipe = backend.pipe
    monkeypatch.setattr(backend, "pipe", lambda **kw: calls.append(kw) or pipe(**kw))
    backend.generate([_sample(5)])
    # one generator per image of the padded call (batch_size of them), all on the CPU
    assert [g.device.type for g in calls[0]["generator"]] == ["cpu"] * backend.batch_size


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_long_prompts_are_encoded_whole(family, sd15, sdxl):
    models = sd15 if family == "sd15" else sdxl
    backend = ControlNetBackend(_config(models, family), SIZE, SIZE)
    states = _text_states(backend, [_sample(6, LONG)])
    assert states[0].shape[1] > 77  # compel's 77-token chunks, not one truncated window
    tail = _text_states(backend, [_sample(6, LONG[:-30] + "the sun setting over the sea")])
    assert not torch.equal(states[0], tail[0])  # words past token 77 reach the UNet
    # a short prompt keeps the pipeline's own encoding, and its image does not depend on a long
    # prompt sharing its batch (long prompts run in their own group)
    alone = backend.generate([_sample(7)])[0]
    mixed = backend.generate([_sample(7), _sample(6, LONG)])
    assert max_diff(alone, mixed[0]) <= 1 and mixed[1].shape == (SIZE, SIZE, 3)
    strict = ControlNetBackend(_config(models, family, long_prompts="error"), SIZE, SIZE)
    with pytest.raises(UserError, match="longer than the text encoder's 77"):
        strict.generate([_sample(6, LONG)])


def test_long_prompt_embeddings_come_in_few_lengths(sd15):
    """Prompts that compel encodes in 2, 3, 4, 6 and 8 text-encoder windows reach the UNet (and
    the ControlNet) padded to 2, 4 or 8 windows: three shapes where the unpadded lengths would
    be five (each a recompile of a compiled denoiser)."""
    backend = ControlNetBackend(_config(sd15), SIZE, SIZE)
    seen: dict[str, set] = {"unet": set(), "controlnet": set()}

    def spy(name):
        def grab(_module, args, kwargs):
            states = kwargs["encoder_hidden_states"] if "encoder_hidden_states" in kwargs else args[2]
            seen[name].add(tuple(states.shape[1:]))
        return grab

    hooks = [backend.pipe.unet.register_forward_pre_hook(spy("unet"), with_kwargs=True),
             backend.pipe.controlnet.register_forward_pre_hook(spy("controlnet"), with_kwargs=True)]
    prompts = [(LONG * 5)[:n] for n in (100, 200, 300, 380, 550)]
    unpadded = {backend.long_prompts.encode_text(p, "")["prompt_embeds"].shape[1] for p in prompts}
    assert unpadded == {77 * w for w in (2, 3, 4, 6, 8)}
    try:
        for k, prompt in enumerate(prompts):
            backend.generate([_sample(20 + k, prompt)])
    finally:
        for hook in hooks:
            hook.remove()
    lengths_seen = {shape[0] for shape in seen["unet"]}
    assert lengths_seen == {154, 308, 616} and len(seen["unet"]) == 3
    assert seen["controlnet"] == seen["unet"]
    # padding is with the empty prompt's windows: a prompt's image does not depend on its batch
    alone = backend.generate([_sample(30, prompts[1])])[0]
    mixed = backend.generate([_sample(31, prompts[3]), _sample(30, prompts[1])])[1]
    assert max_diff(alone, mixed) <= 1
    with pytest.raises(UserError, match="text-encoder windows"):
        backend.generate([_sample(32, LONG * 9)])


def test_verdicts_and_scores_in_shard_sidecars(tmp_path, sd15):
    from synthgen.run import generate
    from tests.fixtures.recipes import small_recipe
    from synthgen.testing.tiny_models import build_tiny_sam

    sam = build_tiny_sam(tmp_path / "sam")
    recipe = small_recipe(num_samples=2, image={"width": 64, "height": 64}, output={"shard_size": 2},
                          backend={"kind": "controlnet", "controlnet": {
                              "base_model": sd15["base"], "steps": 2, "device": "cpu", "dtype": "fp32",
                              "controlnets": [{"model": sd15["controlnets"][0], "layer": "normal"}]}},
                          filter={"sam": {"model": str(sam), "min_iou": 0.0, "min_keypoints_in_mask": 0.0}})
    generate(recipe, tmp_path / "run", workers=1, progress=False)
    sidecar = json.loads((tmp_path / "run" / "shards" / "shard-000000.json").read_text())
    assert [v["index"] for v in sidecar["filter"]] == [0, 1]
    assert all(v["accepted"] and 0.0 <= v["sam_iou"] <= 1.0 for v in sidecar["filter"])
