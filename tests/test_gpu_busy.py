"""Issue 12, the parts a CPU can check: fixed batch shapes (padding, shard_size validation),
CUDA out-of-memory halving, speed options, uint8 images, SAM batched on the device, the writer
thread, and the polled end of a multi-rank run. Speed itself is measured by
``benchmarks/diffusion.py``, not asserted here."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from synthgen.errors import ErrorBudgetExceeded
from synthgen.recipe import FilterConfig, RecipeError, SamConfig, recipe_from_dict
from tests.conftest import ROOT, small_recipe

pytest.importorskip("diffusers")

SIZE = 64


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    from tests.tiny_diffusion import build_tiny_sd15

    return build_tiny_sd15(tmp_path_factory.mktemp("models") / "sd15", num_controlnets=1)


@pytest.fixture(scope="module")
def tiny_sam(tmp_path_factory):
    from tests.tiny_sam import build_tiny_sam

    return build_tiny_sam(tmp_path_factory.mktemp("sam") / "sam")


def _backend(models, **kw):
    from synthgen.generate.controlnet import ControlNetBackend
    from tests.test_controlnet import config

    return ControlNetBackend(config(models, **kw), SIZE, SIZE)


def _samples(*seeds):
    from tests.test_controlnet import sample

    return [sample(seed) for seed in seeds]


# --- 3. fixed batch shapes -----------------------------------------------------------------------
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
        return [s | {"index": seed} for s, seed in zip(_samples(*seeds), seeds)]

    backend = _backend(sd15, batch_size=3)
    full = backend.generate(indexed(30, 31, 32))
    alone = backend.generate(indexed(31))
    moved = backend.generate(indexed(32, 31))
    assert np.array_equal(full[1], alone[0]) and np.array_equal(full[1], moved[1])
    assert np.array_equal(full[2], moved[0])
    assert alone[0].dtype == np.uint8 and alone[0].shape == (SIZE, SIZE, 3)
    assert backend._slots(indexed(33, 36, 34)) == [0, 1, 2]  # 36 % 3 is taken: the first free slot


def test_failures_do_not_change_the_batch_shape(sd15, monkeypatch):
    from diffusers import StableDiffusionControlNetPipeline

    sizes = []
    call = StableDiffusionControlNetPipeline.__call__

    def spy(self, *args, **kwargs):
        sizes.append(len(kwargs["prompt"]))
        return call(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionControlNetPipeline, "__call__", spy)
    backend = _backend(sd15, batch_size=4)
    backend.generate(_samples(1, 2, 3, 4, 5))  # a full batch, then one of 1 padded to 4
    backend.generate(_samples(6))
    assert sizes == [4, 4, 4]


# --- 5. out of memory halves the batch -----------------------------------------------------------
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

    reference = _backend(sd15, batch_size=2).generate(_samples(1, 2, 3))
    monkeypatch.setattr(StableDiffusionControlNetPipeline, "__call__", small_device)
    backend = _backend(sd15, batch_size=4)
    with caplog.at_level(logging.WARNING, logger="synthgen"):
        images = backend.generate(_samples(1, 2, 3))
    assert backend.batch_size == 2 and sizes == [4, 2, 2]
    assert all(np.array_equal(a, b) for a, b in zip(images, reference))  # the same shapes as batch 2
    assert any("out of memory at batch 4" in r.message and "halved to 2" in r.message for r in caplog.records)
    backend.generate(_samples(4))
    assert sizes[-1] == 2  # for the rest of the run

    off = _backend(sd15, batch_size=4, speed={"oom_halving": False})
    with pytest.raises(torch.cuda.OutOfMemoryError):
        off.generate(_samples(1))


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
    reference = _backend(sd15, batch_size=2).generate(_samples(1, 2, 3))
    _no_compile(monkeypatch)
    sizes: list[int] = []
    _small_device(monkeypatch, lambda prompts: len(prompts) <= 2, sizes)
    with caplog.at_level(logging.WARNING, logger="synthgen"):
        backend = _backend(sd15, batch_size=4, speed={"compile": True, "compile_cache": None})
    assert backend.batch_size == 2 and sizes == [4, 2]  # warm-up at 4 fails, at 2 it runs
    assert any("at batch 4 during warm-up" in r.message and "halved to 2" in r.message for r in caplog.records)
    images = backend.generate(_samples(1, 2, 3))
    assert sizes[2:] == [2, 2]
    assert all(np.array_equal(a, b) for a, b in zip(images, reference))


def test_out_of_memory_in_a_compiled_run_warms_the_new_shape_up_once(sd15, monkeypatch, caplog):
    """The blank warm-up fits, real prompts at batch 4 do not: the batch halves, the new shape
    is warmed up once (logged), then the samples run at 2, identical to a batch-2 run."""
    reference = _backend(sd15, batch_size=2).generate(_samples(1, 2, 3))
    _no_compile(monkeypatch)
    sizes: list[int] = []
    _small_device(monkeypatch, lambda prompts: len(prompts) <= 2 or not any(prompts), sizes)
    backend = _backend(sd15, batch_size=4, speed={"compile": True, "compile_cache": None})
    with caplog.at_level(logging.INFO, logger="synthgen"):
        images = backend.generate(_samples(1, 2, 3))
    assert sizes == [4, 4, 2, 2, 2]  # warm-up 4, OOM at 4, warm-up 2, two batches of 2
    warmups = [r.message for r in caplog.records if r.message.startswith("warm-up")]
    assert len(warmups) == 1 and "batch 2" in warmups[0]
    assert any("during diffusion" in r.message for r in caplog.records)
    assert all(np.array_equal(a, b) for a, b in zip(images, reference))
    backend.generate(_samples(4))
    assert sizes[-1] == 2 and len(sizes) == 6  # no further warm-up


def test_out_of_memory_in_sam_halves_its_batch_with_the_same_masks(tiny_sam, monkeypatch, caplog):
    import torch

    from synthgen.filter import SamAligner
    from tests.tiny_sam import IMAGE_SIZE

    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8) for _ in range(5)]
    boxes = [[20.0 + 5 * k, 30.0, 200.0, 220.0 - 9 * k] for k in range(5)]
    points = [rng.uniform(30, 200, (3, 2)) for _ in range(5)]
    reference = SamAligner(SamConfig(model=str(tiny_sam)), batch_size=2).masks(images, boxes, points)

    sizes: list[int] = []

    def small_device(aligner):  # test-only: the image encoder of a device that holds 2 images
        forward = aligner.model.vision_encoder.forward

        def small(pixel_values, *args, **kwargs):
            sizes.append(len(pixel_values))
            if len(pixel_values) > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
            return forward(pixel_values, *args, **kwargs)

        monkeypatch.setattr(aligner.model.vision_encoder, "forward", small)
        return aligner

    aligner = small_device(SamAligner(SamConfig(model=str(tiny_sam)), batch_size=4))
    with caplog.at_level(logging.WARNING, logger="synthgen"):
        masks = aligner.masks(images, boxes, points)
    assert aligner.batch_size == 2 and sizes == [4, 2, 2, 1]
    assert any("SAM batch 4" in r.message and "halved to 2" in r.message for r in caplog.records)
    assert all(np.array_equal(a, b) for a, b in zip(masks, reference))
    off = small_device(SamAligner(SamConfig(model=str(tiny_sam)), batch_size=4, oom_halving=False))
    with pytest.raises(torch.cuda.OutOfMemoryError):
        off.masks(images, boxes, points)


# --- 4. speed options, uint8 on the device ------------------------------------------------------
def test_fused_qkv_and_channels_last_keep_the_images(sd15):
    plain = _backend(sd15, batch_size=2)
    fast = _backend(sd15, batch_size=2, speed={"fuse_qkv": True, "channels_last": True})
    assert fast.speed["fuse_qkv"] and fast.speed["channels_last"] and not plain.speed["fuse_qkv"]
    assert any(getattr(m, "fused_projections", False) for m in fast.pipe.unet.modules())
    samples = _samples(5, 6)
    for a, b in zip(plain.generate(samples), fast.generate(samples)):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # float rounding of fused kernels


def test_fuse_qkv_fuses_every_attention_module_of_unet_each_controlnet_and_vae(tmp_path):
    """diffusers' ``ControlNetModel.fuse_qkv_projections`` leaves its (older-class) attention
    unfused; ``speed.fuse_qkv`` fuses every attention module of every model it names, and the
    UNet's residuals and the images stay those of the unfused models up to float rounding."""
    from diffusers.models.attention_processor import FusedAttnProcessor2_0

    from synthgen.generate.speed import attention_modules, denoisers
    from tests.test_controlnet import unet_residuals
    from tests.tiny_diffusion import build_tiny_sd15

    models = build_tiny_sd15(tmp_path / "sd15", num_controlnets=2)
    two = {"layers": ("depth", "edges"), "scales": (0.8, 0.6), "batch_size": 2}
    plain = _backend(models, **two)
    fused = _backend(models, speed={"fuse_qkv": True}, **two)
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
    samples = _samples(5, 6)
    a, b = unet_residuals(plain, samples), unet_residuals(fused, samples)
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()
    for x, y in zip(plain.generate(samples), fused.generate(samples)):
        assert np.abs(x.astype(int) - y.astype(int)).max() <= 1


def test_fuse_qkv_fuses_every_attention_module_of_flux_and_its_controlnet(tmp_path):
    import diffusers

    from synthgen.generate.speed import attention_modules, fuse_qkv
    from tests.tiny_diffusion import build_tiny_flux

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

    backend = _backend(sd15)
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
    backend = _backend(sd15, batch_size=2, speed={"compile": True, "compile_cache": None})
    assert modes == [("default", False)] * 3  # UNet, ControlNet, VAE decode: fixed shapes
    assert backend.timing["compile"] > 0
    image = backend.generate(_samples(7))[0]
    assert image.shape == (SIZE, SIZE, 3)


# --- 1. SAM on the device, batched --------------------------------------------------------------
def _reference_masks(aligner, images, boxes, points):
    """What the filter did before: SamProcessor (PIL) per batch, the decoder per image, the
    processor's post-processing, all masks back to NumPy."""
    import torch

    from synthgen.filter import select_points

    out = []
    for image, box, pts in zip(images, boxes, points):
        encoded = aligner.processor(images=[image], return_tensors="pt")
        with torch.inference_mode():
            embedding = aligner.model.get_image_embeddings(encoded["pixel_values"])
            sx, sy = aligner._scale(*image.shape[:2])
            kwargs = {"input_boxes": torch.tensor([[[box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]]])}
            if pts is not None:
                chosen = select_points(pts, aligner.max_points) * np.array([sx, sy])
                kwargs["input_points"] = torch.tensor(chosen[None, None], dtype=torch.float32)
                kwargs["input_labels"] = torch.ones((1, 1, len(chosen)), dtype=torch.long)
            low = aligner.model(image_embeddings=embedding, multimask_output=False, **kwargs).pred_masks[:, :1, :1]
        mask = aligner.processor.post_process_masks(low, encoded["original_sizes"], encoded["reshaped_input_sizes"])
        out.append(mask[0][0, 0].numpy())
    return out


def test_batched_sam_on_the_device_matches_the_per_image_processor_path(tiny_sam):
    from synthgen.filter import SamAligner, keypoints_in_mask, mask_iou, mask_scores
    from tests.tiny_sam import IMAGE_SIZE

    aligner = SamAligner(SamConfig(model=str(tiny_sam)), device="cpu", batch_size=3)
    rng = np.random.default_rng(3)
    size = IMAGE_SIZE  # the model's input size: no resize, so both paths see the same pixels
    images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(5)]
    boxes = [[20.0, 30.0, 200.0, 220.0], [0.0, 0.0, 255.0, 255.0], [50.0, 40.0, 120.0, 250.0],
             [10.0, 10.0, 100.0, 100.0], [60.0, 20.0, 230.0, 140.0]]
    points = [rng.uniform(30, 200, (n, 2)) for n in (12, 3, 3, 1)] + [None]  # groups of 8, 3, 1, 0 points
    ours = aligner.masks(images, boxes, points)
    reference = _reference_masks(aligner, images, boxes, points)
    for a, b in zip(ours, reference):
        assert a.dtype == np.bool_ and a.shape == b.shape
        assert np.mean(a != b) < 1e-3  # float rounding of normalisation/batched kernels only
    # and the verdict inputs computed on the device equal the NumPy functions on those masks

    people = [{"pixels": m.copy(), "keypoints_2d": np.c_[pts if pts is not None else np.zeros((0, 2)),
                                                          np.full(0 if pts is None else len(pts), 2.0)]}
              for m, pts in zip(reference, points)]
    import torch

    scores = mask_scores([torch.from_numpy(m) for m in ours], people)
    for (iou, inside), mask, person in zip(scores, ours, people):
        assert iou == mask_iou(mask, person["pixels"])
        assert inside == keypoints_in_mask(person["keypoints_2d"], mask)


def test_sam_resizes_on_the_device_like_the_processor(tiny_sam):
    import torch

    from synthgen.filter import SamAligner

    aligner = SamAligner(SamConfig(model=str(tiny_sam)), device="cpu")
    image = np.random.default_rng(1).integers(0, 256, (96, 64, 3), dtype=np.uint8)
    ours = aligner._pixel_values([torch.from_numpy(image)])
    theirs = aligner.processor(images=[image], return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape
    # PIL's and torch's bilinear upsampling differ by a level here and there
    assert float((ours - theirs).abs().mean()) < 0.02


def test_sample_filter_uses_the_device_image_and_sam_dtype(tiny_sam):
    import torch

    from synthgen.filter import SampleFilter
    from tests.test_filter import person_sample

    flt = SampleFilter(FilterConfig(sam=SamConfig(model=str(tiny_sam), min_iou=0.0, min_keypoints_in_mask=0.0)))
    assert flt.aligner.dtype == torch.float32  # auto: fp32 on CPU (fp16 on CUDA)
    samples = [person_sample(index=i) for i in range(3)]
    plain = flt.score(samples)
    for sample in samples:
        sample["image_device"] = torch.from_numpy(sample["image"].copy())
        sample["image"] = sample["image"][::-1].copy()  # cheap checks read the host copy, SAM the device one
    assert [r["sam_iou"] for r in flt.score(samples)] == [r["sam_iou"] for r in plain]
    assert flt.aligner.timing["sam"] > 0


# --- 2. the writer thread ----------------------------------------------------------------------
def test_writer_thread_writes_the_same_bytes_as_the_sequential_path(tmp_path):
    from synthgen.engine.run_folder import RunFolder, plan_shards
    from synthgen.engine.shards import write_shards
    from synthgen.images import ImageFactory

    recipe = small_recipe(num_samples=6, image={"width": 64, "height": 64}, output={"shard_size": 2})
    factory = ImageFactory(recipe)
    tasks = plan_shards(recipe.num_samples, recipe.output.shard_size)
    sequential = write_shards(factory, RunFolder(tmp_path / "a"), tasks, ahead=0)
    overlapped = write_shards(factory, RunFolder(tmp_path / "b"), tasks, ahead=2)
    for task, x, y in zip(tasks, sequential, overlapped):
        assert (tmp_path / "a" / "shards" / f"{task.name}.tar").read_bytes() == \
            (tmp_path / "b" / "shards" / f"{task.name}.tar").read_bytes()
        assert x["samples"] == y["samples"] == 2 and y["writer_encode_seconds"] >= 0


def test_a_failing_writer_stops_the_run_and_leaves_no_shard(tmp_path, monkeypatch):
    from synthgen.engine.run_folder import RunFolder, plan_shards
    from synthgen.engine.shards import write_shards
    from synthgen.images import ImageFactory

    recipe = small_recipe(num_samples=4, image={"width": 64, "height": 64}, output={"shard_size": 2})
    factory = ImageFactory(recipe)
    encode = factory.encode

    def full_disk(sample):
        if sample["index"] == 3:
            raise OSError(28, "No space left on device")
        return encode(sample)

    monkeypatch.setattr(factory, "encode", full_disk)
    tasks = plan_shards(recipe.num_samples, recipe.output.shard_size)
    with pytest.raises(OSError, match="No space left"):
        write_shards(factory, RunFolder(tmp_path), tasks, ahead=2)
    shards = tmp_path / "shards"
    assert RunFolder(tmp_path).is_complete(tasks[0]) and not RunFolder(tmp_path).is_complete(tasks[1])
    assert not list(shards.glob("*.partial-*"))


def test_a_shard_is_counted_once_against_the_error_budget_when_its_writer_is_ahead(tmp_path, monkeypatch):
    """The worst timing: each shard's writer has put its sidecar on disk before the next shard
    starts (a fast disk, a slow device). Its failures must count once, not from disk and again
    from the writer list: 3 failures under ``max_errors=3`` finish the run."""
    from synthgen.engine.run_folder import RunFolder, plan_shards
    from synthgen.engine.launch import _errors_elsewhere
    from synthgen.engine.shards import write_shards
    from synthgen.images import ImageFactory

    recipe = small_recipe(num_samples=6, image={"width": 64, "height": 64},
                          output={"shard_size": 2, "max_errors": 3})
    factory = ImageFactory(recipe)
    prepared = factory.prepared

    def failing_evens(indices, attempt=0):
        for sample in prepared(indices, attempt):
            yield {"index": sample["index"], "error": "RuntimeError: injected"} if sample["index"] % 2 == 0 else sample

    monkeypatch.setattr(factory, "prepared", failing_evens)
    tasks = plan_shards(recipe.num_samples, recipe.output.shard_size)
    calls = []

    def after_earlier_writers(out):
        def count():
            earlier = tasks[:len(calls)]
            calls.append(out)
            deadline = time.monotonic() + 60
            while not all(RunFolder(out).is_complete(t) for t in earlier) and time.monotonic() < deadline:
                time.sleep(0.01)
            return _errors_elsewhere(RunFolder(out), tasks, tasks)
        return count

    infos = write_shards(factory, RunFolder(tmp_path), tasks, errors_before=after_earlier_writers(tmp_path), ahead=2)
    assert len(calls) == 3 and [len(i["errors"]) for i in infos] == [1, 1, 1]
    assert [i["samples"] for i in infos] == [1, 1, 1]
    # the budget still stops a run that goes over it, with the same timing
    calls.clear()
    factory.recipe = small_recipe(num_samples=6, image={"width": 64, "height": 64},
                                  output={"shard_size": 2, "max_errors": 2})
    with pytest.raises(ErrorBudgetExceeded, match="3 samples failed"):
        write_shards(factory, RunFolder(tmp_path / "over"), tasks, errors_before=after_earlier_writers(tmp_path / "over"),
                     ahead=2)


# --- 5. the end of a multi-rank run is polled on disk --------------------------------------------
def test_rank_zero_polls_the_markers_of_every_rank(tmp_path):
    from synthgen.engine.launch import clear_rank_markers, mark_rank_done, wait_for_ranks
    from synthgen.engine.run_folder import RunFolder

    folder = RunFolder(tmp_path)
    mark_rank_done(folder, 1, {"old": True})  # an earlier run's marker
    clear_rank_markers(folder)
    mark_rank_done(folder, 0, {"samples": 4})
    polls = []
    late = threading.Thread(target=lambda: (time.sleep(0.3), mark_rank_done(folder, 1, {"samples": 2},
                                                                           "ErrorBudgetExceeded: 3 failed")))
    late.start()
    infos = wait_for_ranks(folder, 2, poll_s=0.02, on_poll=lambda: polls.append(1))
    late.join()
    assert sorted(infos) == [0, 1] and infos[1]["stats"] == {"samples": 2}
    assert infos[1]["failure"].startswith("ErrorBudgetExceeded") and polls  # it waited, by polling
    assert json.loads((tmp_path / "logs" / "rank-0.done").read_text())["rank"] == 0


# --- 6. the benchmark's smoke run ---------------------------------------------------------------
@pytest.mark.slow
def test_diffusion_benchmark_smoke_prints_its_json_line(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "diffusion.py"), "--smoke",
                             "--configs", "sd15_1cn", "--out", str(tmp_path)],
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    line = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("reference_img_s", "end_to_end_img_s", "ratio", "gpu_busy", "sam_ms_per_img", "write_ms_per_img"):
        assert key in line
    assert line["end_to_end_img_s"] > 0 and 0 < line["gpu_busy"] <= 1


def test_sam_batch_size_is_its_own_validated_recipe_field(tiny_sam):
    from synthgen.filter import SampleFilter

    for bad in (0, -2, "many"):
        with pytest.raises(RecipeError) as err:
            recipe_from_dict({"filter": {"sam": {"batch_size": bad}}})
        assert "filter.sam.batch_size" in str(err.value) and "\n" not in str(err.value)
    assert recipe_from_dict({"filter": {"sam": {"batch_size": 6}}}).filter.sam.batch_size == 6
    own = SampleFilter(FilterConfig(sam=SamConfig(model=str(tiny_sam), batch_size=3)), "cpu", batch_size=8)
    backend_s = SampleFilter(FilterConfig(sam=SamConfig(model=str(tiny_sam))), "cpu", batch_size=8)
    assert own.aligner.batch_size == 3 and backend_s.aligner.batch_size == 8


def test_sam_runs_its_image_encoder_in_its_dtype_and_prompts_and_decoder_in_fp32(tiny_sam):
    """fp16 on CUDA is the ViT's only; bf16 stands in for it on this CPU: the vision encoder
    holds bf16 weights, the prompt encoder and mask decoder fp32, and the masks stay close to the
    all-fp32 ones (random weights: a check on plumbing, not quality)."""
    import torch

    from synthgen.filter import SamAligner
    from tests.tiny_sam import IMAGE_SIZE

    half = SamAligner(SamConfig(model=str(tiny_sam), dtype="bf16"))
    full = SamAligner(SamConfig(model=str(tiny_sam)))
    assert {p.dtype for p in half.model.vision_encoder.parameters()} == {torch.bfloat16}
    for part in (half.model.prompt_encoder, half.model.mask_decoder, half.model.shared_image_embedding):
        assert {p.dtype for p in part.parameters()} == {torch.float32}
    decoder_inputs = []
    half.model.mask_decoder.register_forward_pre_hook(
        lambda m, a, kw: decoder_inputs.append(kw.get("image_embeddings", a[0] if a else None).dtype),
        with_kwargs=True)
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8) for _ in range(3)]
    boxes = [[20.0, 30.0, 200.0, 220.0]] * 3
    a, b = half.masks(images, boxes), full.masks(images, boxes)
    assert decoder_inputs == [torch.float32]
    assert all(x.dtype == np.bool_ and np.mean(x != y) < 0.05 for x, y in zip(a, b))


def test_sam_resizes_a_batch_in_one_interpolation(tiny_sam, monkeypatch):
    import torch
    import torch.nn.functional as F

    from synthgen.filter import SamAligner

    aligner = SamAligner(SamConfig(model=str(tiny_sam)), device="cpu")
    rng = np.random.default_rng(1)
    images = [torch.from_numpy(rng.integers(0, 256, (96, 64, 3), dtype=np.uint8)) for _ in range(4)]
    one_by_one = torch.cat([aligner._pixel_values([image]) for image in images])
    calls = []
    interpolate = F.interpolate
    monkeypatch.setattr(F, "interpolate", lambda x, *a, **kw: calls.append(x.shape) or interpolate(x, *a, **kw))
    batched = aligner._pixel_values(images + [torch.from_numpy(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))])
    assert calls == [(4, 3, 96, 64), (1, 3, 48, 64)]  # one call per image size
    assert torch.equal(batched[:4], one_by_one)
