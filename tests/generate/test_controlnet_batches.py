"""The ControlNet backend's batches: fixed batch shapes (padding, shard_size validation) and CUDA
out-of-memory halving, checked on the CPU with tiny models. Speed itself is measured by
``benchmarks/diffusion.py``, not asserted here."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest

from synthgen.recipe import RecipeError, recipe_from_dict
from tests.fixtures.recipes import ROOT

pytest.importorskip("diffusers")

from tests.fixtures.controlnet import SIZE, make_backend, make_samples  # noqa: E402



@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    from synthgen.testing.tiny_models import build_tiny_sd15

    return build_tiny_sd15(tmp_path_factory.mktemp("models") / "sd15", num_controlnets=1)


# fixed batch shapes
def test_shard_size_must_be_a_multiple_of_the_diffusion_batch():
    backend = {"kind": "controlnet", "controlnet": {"batch_size": 4}}
    with pytest.raises(RecipeError) as err:
        recipe_from_dict({"backend": backend, "output": {"shard_size": 6}})
    message = str(err.value)
    assert "\n" not in message
    assert "output.shard_size=6" in message and "backend.controlnet.batch_size=4" in message
    assert "set output.shard_size to 4 or 8" in message
    recipe_from_dict({"backend": backend, "output": {"shard_size": 8}})
    recipe_from_dict({"output": {"shard_size": 6}})  # weight-free backends have no diffusion batch


def test_cli_refuses_the_shard_size_with_exit_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "synthgen", "validate", str(ROOT / "recipes" / "humanwild.yaml"),
                             "output.shard_size=6"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert "output.shard_size=6" in result.stderr and "multiple of backend.controlnet.batch_size=4" in result.stderr


def test_padding_keeps_a_sample_identical_whatever_fills_its_batch(sd15):
    """Every pipeline call has batch_size images (short ones padded with copies), each sample in
    slot index % batch_size: a sample comes out bit-identical alone, in a full batch, or listed
    in another order."""
    def indexed(*seeds):
        return [s | {"index": seed} for s, seed in zip(make_samples(*seeds), seeds)]

    backend = make_backend(sd15, batch_size=3)
    full = backend.generate(indexed(30, 31, 32))
    alone = backend.generate(indexed(31))
    moved = backend.generate(indexed(32, 31))
    assert np.array_equal(full[1], alone[0]) and np.array_equal(full[1], moved[1])
    assert np.array_equal(full[2], moved[0])
    assert alone[0].dtype == np.uint8 and alone[0].shape == (SIZE, SIZE, 3)
    assert backend.batch_slots(indexed(33, 36, 34)) == [0, 1, 2]  # 36 % 3 is taken: the first free slot


def test_failures_do_not_change_the_batch_shape(sd15, monkeypatch):
    from diffusers import StableDiffusionControlNetPipeline

    sizes = []
    call = StableDiffusionControlNetPipeline.__call__

    def spy(self, *args, **kwargs):
        sizes.append(len(kwargs["prompt"]))
        return call(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionControlNetPipeline, "__call__", spy)
    backend = make_backend(sd15, batch_size=4)
    backend.generate(make_samples(1, 2, 3, 4, 5))  # a full batch, then one of 1 padded to 4
    backend.generate(make_samples(6))
    assert sizes == [4, 4, 4]


# out of memory halves the batch
def test_cuda_out_of_memory_halves_the_batch_and_retries(sd15, monkeypatch, caplog):
    import torch
    from diffusers import StableDiffusionControlNetPipeline

    sizes = []
    call = StableDiffusionControlNetPipeline.__call__

    def small_device(self, *args, **kwargs):  # a device that holds at most 2 images at a time
        sizes.append(len(kwargs["prompt"]))
        if len(kwargs["prompt"]) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return call(self, *args, **kwargs)

    reference = make_backend(sd15, batch_size=2).generate(make_samples(1, 2, 3))
    monkeypatch.setattr(StableDiffusionControlNetPipeline, "__call__", small_device)
    backend = make_backend(sd15, batch_size=4)
    with caplog.at_level(logging.WARNING, logger="synthgen"):
        images = backend.generate(make_samples(1, 2, 3))
    assert backend.batch_size == 2 and sizes == [4, 2, 2]
    assert all(np.array_equal(a, b) for a, b in zip(images, reference))  # the same shapes as batch 2
    assert any("out of memory at batch 4" in r.message and "halved to 2" in r.message for r in caplog.records)
    backend.generate(make_samples(4))
    assert sizes[-1] == 2  # for the rest of the run

    off = make_backend(sd15, batch_size=4, speed={"oom_halving": False})
    with pytest.raises(torch.cuda.OutOfMemoryError):
        off.generate(make_samples(1))


def _small_device(monkeypatch, fits, sizes):
    """The pipeline call raises CUDA out-of-memory when ``fits(prompts)`` is False (a device too
    small for that batch), recording each call's batch size in ``sizes``. Test-only."""
    import torch
    from diffusers import StableDiffusionControlNetPipeline

    call = StableDiffusionControlNetPipeline.__call__

    def small(self, *args, **kwargs):
        sizes.append(len(kwargs["prompt"]))
        if not fits(kwargs["prompt"]):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return call(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionControlNetPipeline, "__call__", small)


def _no_compile(monkeypatch):
    """torch.compile takes minutes on this CPU: replaced by the identity (the warm-up is real)."""
    import torch

    monkeypatch.setattr(torch, "compile", lambda model=None, **kwargs: model)


def test_out_of_memory_in_the_warm_up_halves_the_batch_before_any_sample(sd15, monkeypatch, caplog):
    reference = make_backend(sd15, batch_size=2).generate(make_samples(1, 2, 3))
    _no_compile(monkeypatch)
    sizes: list[int] = []
    _small_device(monkeypatch, lambda prompts: len(prompts) <= 2, sizes)
    with caplog.at_level(logging.WARNING, logger="synthgen"):
        backend = make_backend(sd15, batch_size=4, speed={"compile": True, "compile_cache": None})
    assert backend.batch_size == 2 and sizes == [4, 2]  # warm-up at 4 fails, at 2 it runs
    assert any("at batch 4 during warm-up" in r.message and "halved to 2" in r.message for r in caplog.records)
    images = backend.generate(make_samples(1, 2, 3))
    assert sizes[2:] == [2, 2]
    assert all(np.array_equal(a, b) for a, b in zip(images, reference))


def test_out_of_memory_in_a_compiled_run_warms_the_new_shape_up_once(sd15, monkeypatch, caplog):
    """The blank warm-up fits, real prompts at batch 4 do not: the batch halves, the new shape
    is warmed up once (logged), then the samples run at 2, identical to a batch-2 run."""
    reference = make_backend(sd15, batch_size=2).generate(make_samples(1, 2, 3))
    _no_compile(monkeypatch)
    sizes: list[int] = []
    _small_device(monkeypatch, lambda prompts: len(prompts) <= 2 or not any(prompts), sizes)
    backend = make_backend(sd15, batch_size=4, speed={"compile": True, "compile_cache": None})
    with caplog.at_level(logging.INFO, logger="synthgen"):
        images = backend.generate(make_samples(1, 2, 3))
    assert sizes == [4, 4, 2, 2, 2]  # warm-up 4, OOM at 4, warm-up 2, two batches of 2
    warmups = [r.message for r in caplog.records if r.message.startswith("warm-up")]
    assert len(warmups) == 1 and "batch 2" in warmups[0]
    assert any("during diffusion" in r.message for r in caplog.records)
    assert all(np.array_equal(a, b) for a, b in zip(images, reference))
    backend.generate(make_samples(4))
    assert sizes[-1] == 2 and len(sizes) == 6  # no further warm-up
