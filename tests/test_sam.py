"""The SAM filter batched on the device (a tiny random-weight SAM): the same masks as the per-image
processor path, resizing on the device, its own validated batch size and dtype, out-of-memory halving."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from synthgen.recipe import FilterConfig, RecipeError, SamConfig, recipe_from_dict

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def tiny_sam(tmp_path_factory):
    from synthgen.testing.tiny_models import build_tiny_sam

    return build_tiny_sam(tmp_path_factory.mktemp("sam") / "sam")


def test_out_of_memory_in_sam_halves_its_batch_with_the_same_masks(tiny_sam, monkeypatch, caplog):
    import torch

    from synthgen.filter import SamAligner
    from synthgen.testing.tiny_models import IMAGE_SIZE

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


# SAM on the device, batched
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
            sx, sy = aligner.input_scale(*image.shape[:2])
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
    from synthgen.filter import SamAligner, keypoints_in_mask, mask_iou
    from synthgen.testing.tiny_models import IMAGE_SIZE

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
    from synthgen.filter import mask_scores

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
    ours = aligner.pixel_values([torch.from_numpy(image)])
    theirs = aligner.processor(images=[image], return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape
    # PIL's and torch's bilinear upsampling differ by a level here and there
    assert float((ours - theirs).abs().mean()) < 0.02


def test_sample_filter_uses_the_device_image_and_sam_dtype(tiny_sam):
    import torch

    from synthgen.filter import SampleFilter
    from tests.fixtures.masks import person_sample

    flt = SampleFilter(FilterConfig(sam=SamConfig(model=str(tiny_sam), min_iou=0.0, min_keypoints_in_mask=0.0)))
    assert flt.aligner.dtype == torch.float32  # auto: fp32 on CPU (fp16 on CUDA)
    samples = [person_sample(index=i) for i in range(3)]
    plain = flt.score(samples)
    for sample in samples:
        sample["image_device"] = torch.from_numpy(sample["image"].copy())
        sample["image"] = sample["image"][::-1].copy()  # cheap checks read the host copy, SAM the device one
    assert [r["sam_iou"] for r in flt.score(samples)] == [r["sam_iou"] for r in plain]
    assert flt.aligner.timing["sam"] > 0


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
    from synthgen.testing.tiny_models import IMAGE_SIZE

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
    one_by_one = torch.cat([aligner.pixel_values([image]) for image in images])
    calls = []
    interpolate = F.interpolate
    monkeypatch.setattr(F, "interpolate", lambda x, *a, **kw: calls.append(x.shape) or interpolate(x, *a, **kw))
    batched = aligner.pixel_values(images + [torch.from_numpy(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))])
    assert calls == [(4, 3, 96, 64), (1, 3, 48, 64)]  # one call per image size
    assert torch.equal(batched[:4], one_by_one)


def test_sam_returns_one_mask_for_box_and_points(tmp_path):
    from synthgen.filter import SamAligner
    from synthgen.recipe import SamConfig
    from synthgen.testing.tiny_models import build_tiny_sam

    aligner = SamAligner(SamConfig(model=str(build_tiny_sam(tmp_path / "sam"))))
    seen = []
    aligner.model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw.get("multimask_output")),
                                            with_kwargs=True)
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    masks = aligner.masks([image, image], [[5, 5, 40, 40], [10, 2, 60, 30]],
                          [np.array([[20.0, 20.0], [30.0, 25.0]]), None])
    assert [m.shape for m in masks] == [(48, 64)] * 2 and masks[0].dtype == bool
    assert seen == [False, False]
