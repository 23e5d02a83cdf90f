"""The speed options (synthgen.generate.speed) on the ControlNet backend with tiny models: fused QKV,
channels-last, VAE slicing/tiling, uint8 images leaving the device, torch.compile warmed up once."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("diffusers")

from tests.fixtures.controlnet import SIZE, make_backend, make_samples  # noqa: E402



@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    from synthgen.testing.tiny_models import build_tiny_sd15

    return build_tiny_sd15(tmp_path_factory.mktemp("models") / "sd15", num_controlnets=1)


def test_fused_qkv_and_channels_last_keep_the_images(sd15):
    plain = make_backend(sd15, batch_size=2)
    fast = make_backend(sd15, batch_size=2, speed={"fuse_qkv": True, "channels_last": True})
    assert fast.speed["fuse_qkv"] and fast.speed["channels_last"] and not plain.speed["fuse_qkv"]
    assert any(getattr(m, "fused_projections", False) for m in fast.pipe.unet.modules())
    samples = make_samples(5, 6)
    for a, b in zip(plain.generate(samples), fast.generate(samples)):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # float rounding of fused kernels


def test_fuse_qkv_fuses_every_attention_module_of_unet_each_controlnet_and_vae(tmp_path):
    """diffusers' ``ControlNetModel.fuse_qkv_projections`` leaves its (older-class) attention
    unfused; ``speed.fuse_qkv`` fuses every attention module of every model it names, and the
    UNet's residuals and the images stay those of the unfused models up to float rounding."""
    from diffusers.models.attention_processor import FusedAttnProcessor2_0

    from synthgen.generate.speed import attention_modules, denoisers
    from tests.fixtures.controlnet import unet_residuals
    from synthgen.testing.tiny_models import build_tiny_sd15

    models = build_tiny_sd15(tmp_path / "sd15", num_controlnets=2)
    two = {"layers": ("depth", "edges"), "scales": (0.8, 0.6), "batch_size": 2}
    plain = make_backend(models, **two)
    fused = make_backend(models, speed={"fuse_qkv": True}, **two)
    models_fused = [*denoisers(fused.pipe), fused.pipe.vae]
    assert [type(m).__name__ for m in models_fused] == ["UNet2DConditionModel", "ControlNetModel",
                                                        "ControlNetModel", "AutoencoderKL"]
    for model in models_fused:
        modules = attention_modules(model)
        assert modules, type(model).__name__
        for name, module in modules.items():
            assert module.fused_projections, f"{type(model).__name__}.{name} is not fused"
            assert isinstance(module.processor, FusedAttnProcessor2_0), (name, type(module.processor))
            assert hasattr(module, "to_kv" if module.is_cross_attention else "to_qkv")
    for model in denoisers(plain.pipe):  # the unfused path is really unfused
        assert not any(m.fused_projections for m in attention_modules(model).values())
    samples = make_samples(5, 6)
    a, b = unet_residuals(plain, samples), unet_residuals(fused, samples)
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()
    for x, y in zip(plain.generate(samples), fused.generate(samples)):
        assert np.abs(x.astype(int) - y.astype(int)).max() <= 1


def test_fuse_qkv_fuses_every_attention_module_of_flux_and_its_controlnet(tmp_path):
    import diffusers

    from synthgen.generate.speed import attention_modules, fuse_qkv
    from synthgen.testing.tiny_models import build_tiny_flux

    models = build_tiny_flux(tmp_path / "flux", num_controlnets=1)
    for cls, folder in [(diffusers.FluxTransformer2DModel, f"{models['base']}/transformer"),
                        (diffusers.FluxControlNetModel, models["controlnets"][0])]:
        model = cls.from_pretrained(folder)
        modules = attention_modules(model)
        assert modules and not any(m.fused_projections for m in modules.values())
        assert fuse_qkv(model) == len(modules)
        assert all(m.fused_projections and hasattr(m, "to_qkv") for m in modules.values())


def test_vae_options_turn_on_at_1024(sd15):
    from synthgen.generate.speed import apply_speed
    from synthgen.recipe import SpeedConfig

    backend = make_backend(sd15)
    assert apply_speed(backend.pipe, SpeedConfig(), "cpu", 512 * 512)["vae_slicing"] is False
    done = apply_speed(backend.pipe, SpeedConfig(), "cpu", 1024 * 1024)
    assert done["vae_slicing"] and done["vae_tiling"] and backend.pipe.vae.use_slicing and backend.pipe.vae.use_tiling


def test_uint8_conversion_matches_the_numpy_rounding():
    import torch

    from synthgen.generate.speed import to_host, to_uint8

    rng = np.random.default_rng(0)
    floats = rng.random((2, 3, 8, 8), dtype=np.float32)
    floats[0, 0, 0, :3] = [0.0, 1.0, 0.5 / 255]
    expected = np.clip(floats.transpose(0, 2, 3, 1) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    assert np.array_equal(to_host(to_uint8(torch.from_numpy(floats))), expected)
    floats[1, 0, 0, 0] = np.nan
    assert to_host(to_uint8(torch.from_numpy(floats)))[1, 0, 0, 0] == 0


def test_compile_option_warms_up_once(sd15, monkeypatch):
    """``speed.compile`` compiles the nets and the VAE decoder and runs one warm-up batch at
    load. torch.compile itself takes minutes on CPU (measured: 140 s for the tiny UNet), so
    here it is replaced by a recorder of its calls: the calls and the warm-up are the product's."""
    import torch

    modes = []

    def traced(model=None, **kwargs):  # nn.Module.compile calls torch.compile too
        modes.append((kwargs.get("mode"), kwargs.get("dynamic")))
        return model

    monkeypatch.setattr(torch, "compile", traced)
    backend = make_backend(sd15, batch_size=2, speed={"compile": True, "compile_cache": None})
    assert modes == [("default", False)] * 3  # UNet, ControlNet, VAE decode: fixed shapes
    assert backend.timing["compile"] > 0
    image = backend.generate(make_samples(7))[0]
    assert image.shape == (SIZE, SIZE, 3)
