"""The inference fast paths give what the plain computations give.

Each test puts a fast path next to the straightforward computation it replaces: the text cache, the
length-truncated text tower and the token check of cached prompts; OVSeg crops of the top-k proposals
only; the CLIP-ResNet trunk reused from stage 1 instead of a second dense pass; the ViT dense-pass
resolution; the gather form of deformable attention; the boundary-only upsampled argmax of the post
step; bfloat16 autocast.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tiny import tiny_segmenter_config
from torchvision.ops import roi_align

import pmp.clip.text as clip_text_module
import pmp.postprocess as postprocess_module
from pmp.clip import CLIPModel
from pmp.clip.inference_tower import PooledTokenAttention, inference_tower
from pmp.config import CLIP_MEAN, CLIP_STD, BackboneConfig, CLIPConfig, SegmenterConfig, tiny_clip_model_cfg
from pmp.images import normalize_pixels
from pmp.modeling.ms_deform_attn import ms_deform_attn, ms_deform_attn_gather
from pmp.modeling.pixel_decoder import MSDeformAttn
from pmp.postprocess import argmax_over_classes, semantic_inference, upsample, upsampled_argmax
from pmp.segmenter import Segmenter
from pmp.stage2 import (
    classify_proposals,
    dense_input,
    pool_classify,
    soft_masks_on_grid,
    square_box_samples,
    square_boxes,
)
from train.world import benchmark_sample

LABELS = ["sky", "road", "car", "tree", "house", "person"]


def tiny_config(**overrides) -> SegmenterConfig:
    return tiny_segmenter_config(
        num_queries=12, num_layers=2, templates=("a photo of a {}.", "a {} in the scene."), crop_top_k=6, **overrides
    )


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    torch.manual_seed(0)
    return Segmenter(tiny_config())


@pytest.fixture(scope="module")
def world_images() -> list[np.ndarray]:
    return [benchmark_sample("world-full", index, 64)[0] for index in range(3)]


# ------------------------------------------------------------------------------------------- text
def test_cached_embeddings_equal_freshly_encoded_ones(segmenter: Segmenter) -> None:
    clip = segmenter.clip
    clip.clear_cache()
    with torch.inference_mode():
        encoded = clip.encode_text(LABELS)
        served = clip.encode_text(LABELS[::-1])
    assert clip.cache_info()["hits"] == len(LABELS)
    torch.testing.assert_close(served, encoded.flip(0), rtol=0, atol=0)
    uncached = Segmenter(
        dataclasses.replace(segmenter.config, clip=dataclasses.replace(segmenter.config.clip, text_cache_size=0)),
        clip=None,
    ).clip
    uncached.load_state_dict(clip.state_dict())
    with torch.inference_mode():
        torch.testing.assert_close(uncached.encode_text(LABELS), encoded, rtol=1e-6, atol=1e-6)
    assert uncached.cache_info()["size"] == 0


def test_batched_truncated_text_equals_one_padded_prompt_at_a_time(
    segmenter: Segmenter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prompts of very different lengths, in chunks of 3 strings: each chunk runs only up to its own longest
    # prompt, after sorting by length; the scatter back must restore the prompt order.
    monkeypatch.setattr(clip_text_module, "TEXT_BATCH", 3)
    clip = segmenter.clip
    labels = ["a very long and detailed name of a red double decker bus", "sky", "wow! dog", "tree", "big old house"]
    with torch.inference_mode():
        batched = clip._embed_labels(labels)
        expected = []
        for label in labels:
            tokens = clip.tokenizer([t.replace("{}", label) for t in clip.config.templates])  # padded to the context
            per_template = F.normalize(clip.open_clip.encode_text(tokens), dim=-1)
            expected.append(F.normalize(per_template.mean(0), dim=0))
    torch.testing.assert_close(batched, torch.stack(expected), rtol=1e-5, atol=1e-5)


def test_token_check_skips_only_prompts_the_cache_already_encoded(
    segmenter: Segmenter, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pmp.prompts import PromptError

    clip = segmenter.clip
    clip.clear_cache()
    with torch.inference_mode():
        clip.encode_text(LABELS[:4])
    counted: list[str] = []
    real_count = clip.count_tokens
    monkeypatch.setattr(clip, "count_tokens", lambda text: counted.append(text) or real_count(text))
    segmenter.check_token_limit(LABELS)
    templates = segmenter.config.clip.templates
    assert sorted(counted) == sorted(t.replace("{}", label) for label in LABELS[4:] for t in templates)
    with pytest.raises(PromptError, match="too long"):
        segmenter.check_token_limit(LABELS[:4] + [" ".join(["word"] * 40)])


# ---------------------------------------------------------------------------------------- stage 2
def stage1(segmenter: Segmenter, image: np.ndarray, labels: list[str]) -> tuple:
    """What segment() hands to stage 2: pixels, valid size, mask logits without padding, text, p."""
    pixels, valid_hw = segmenter.preprocess(Image.fromarray(image), segmenter.config.image_size)
    with torch.inference_mode():
        text = segmenter.clip.encode_text(labels)
        out = segmenter.proposal_model(normalize_pixels(pixels, CLIP_MEAN, CLIP_STD), text[None], return_features=True)
    p = out["pred_logits"][0].softmax(-1)[:, :-1]
    mask_h = round(out["pred_masks"].shape[-2] * valid_hw[0] / pixels.shape[-2])
    mask_w = round(out["pred_masks"].shape[-1] * valid_hw[1] / pixels.shape[-1])
    return pixels, valid_hw, out["pred_masks"][0, :, :mask_h, :mask_w], text, p, out["backbone_features"]


def test_top_k_crops_equal_all_crops_within_the_top_k(segmenter: Segmenter, world_images: list[np.ndarray]) -> None:
    top_k = segmenter.config.crop_top_k
    num = segmenter.config.decoder.num_queries
    everything = dataclasses.replace(segmenter.config, crop_top_k=num)
    for image in world_images:
        some = segmenter.segment(image, LABELS, stage2_mode="crop")
        segmenter.config = everything
        try:
            full = segmenter.segment(image, LABELS, stage2_mode="crop")
        finally:
            segmenter.config = dataclasses.replace(everything, crop_top_k=top_k)
        top = np.argsort(-some.p.max(1), kind="stable")[:top_k]
        rest = np.setdiff1d(np.arange(num), top)
        # the cropped proposals get exactly the CLIP scores they get when every proposal is cropped ...
        np.testing.assert_allclose(some.p_hat[top], full.p_hat[top], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(some.p_hat[rest], some.p[rest])  # ... the others keep p
        # so among the cropped proposals both runs rank every label the same way
        np.testing.assert_allclose(some.p_out[top], full.p_out[top], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(some.p_out[top].argmax(0), full.p_out[top].argmax(0))


def test_square_box_samples_are_roi_aligns_samples() -> None:
    """grid_sample takes the samples torchvision's aligned, adaptive roi_align takes, one per bin for boxes
    up to the output size and n x n averaged for larger ones, on a zero-bordered image."""
    generator = torch.Generator().manual_seed(0)
    images = F.pad(torch.rand(5, 3, 40, 56, generator=generator), (1, 1, 1, 1))
    masks = torch.rand(5, 40, 56, generator=generator) > 0.7
    boxes = square_boxes(masks) + 1.0  # squares about each mask, some reaching past the image
    boxes[3] = torch.tensor([-20.0, -20.0, 60.0, 60.0])  # larger than the image: 6 samples per bin at 16
    assert torch.all((boxes[:, 2] - boxes[:, 0]) == (boxes[:, 3] - boxes[:, 1]))
    for size in (16, 32):
        index = torch.arange(5, dtype=boxes.dtype)[:, None]
        expected = roi_align(images, torch.cat([index, boxes], 1), size, 1.0, -1, True)
        torch.testing.assert_close(square_box_samples(images, boxes, size), expected, rtol=0, atol=2e-5)
        one = roi_align(images[:1], torch.cat([torch.zeros_like(index), boxes], 1), size, 1.0, -1, True)
        torch.testing.assert_close(square_box_samples(images[:1], boxes, size), one, rtol=0, atol=2e-5)
    with pytest.raises(ValueError, match="boxes"):
        square_box_samples(images, boxes[:2], 16)


def test_square_boxes_keep_the_longer_side_about_the_centre() -> None:
    mask = torch.zeros(1, 20, 30, dtype=torch.bool)
    mask[0, 2:6, 10:20] = True  # rows 2-5, columns 10-19: a 10 x 4 box centred at (15, 4)
    assert square_boxes(mask).tolist() == [[10.0, -1.0, 20.0, 9.0]]


@pytest.fixture()
def trained_looking_clip() -> CLIPModel:
    """A tiny CLIP whose BatchNorms hold non-trivial statistics, as a trained tower's do."""
    torch.manual_seed(3)
    clip = CLIPModel.build(CLIPConfig(model_cfg=tiny_clip_model_cfg()))
    for module in clip.open_clip.visual.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.uniform_(module.bias, -0.2, 0.2)
    return clip.eval()


def test_inference_tower_gives_the_towers_embeddings(trained_looking_clip: CLIPModel) -> None:
    visual = trained_looking_clip.open_clip.visual
    tower = inference_tower(visual)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in tower.modules())
    assert isinstance(tower.attnpool, PooledTokenAttention)
    crops = torch.randn(6, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = visual(crops)
        torch.testing.assert_close(tower(crops), expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(trained_looking_clip.encode_crops(crops), expected, rtol=1e-4, atol=1e-5)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in visual.modules())  # the tower itself is untouched


def test_pooled_token_attention_equals_open_clips_attention_pool() -> None:
    """Keys and values projected off the tokens (the key bias dropped by the softmax) give the same output."""
    from open_clip.modified_resnet import AttentionPool2d

    torch.manual_seed(0)
    pool = AttentionPool2d(spacial_dim=4, embed_dim=64, num_heads=4, output_dim=32).eval()
    for linear in (pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj):
        torch.nn.init.uniform_(linear.bias, -1.0, 1.0)  # biases far from zero, the key bias included
    features = torch.randn(5, 64, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(PooledTokenAttention(pool)(features), pool(features), rtol=1e-4, atol=1e-5)


def test_encode_crops_follows_weight_changes_and_training(trained_looking_clip: CLIPModel) -> None:
    clip = trained_looking_clip
    visual = clip.open_clip.visual
    crops = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = clip.encode_crops(crops)
        visual.layer1[0].bn2.running_mean.add_(0.3)  # an in-place write, as a BatchNorm update or copy_ does
        changed = clip.encode_crops(crops)
        torch.testing.assert_close(changed, visual(crops), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(changed, before)
    visual.train()
    try:
        trained = clip.encode_crops(crops)  # batch statistics, with gradients: the tower itself
        assert trained.requires_grad
    finally:
        visual.eval()


def test_reused_clip_trunk_gives_the_separate_dense_pass(segmenter: Segmenter, world_images: list[np.ndarray]) -> None:
    pixels, valid_hw, mask_logits, text, p, features = stage1(segmenter, world_images[0], LABELS)
    assert segmenter.can_reuse_trunk(pixels, valid_hw)  # square 64 px: no padding, CLIP normalisation
    with torch.inference_mode():
        reused = classify_proposals(
            segmenter.clip, pixels, valid_hw, mask_logits, text, p, "pool", crop_top_k=4, trunk=features[-1]
        )
        separate = classify_proposals(segmenter.clip, pixels, valid_hw, mask_logits, text, p, "pool", crop_top_k=4)
        image = normalize_pixels(pixels, CLIP_MEAN, CLIP_STD)
        torch.testing.assert_close(
            segmenter.clip.dense_features_from_trunk(features[-1]),
            segmenter.clip.dense_features(image),
            rtol=1e-5,
            atol=1e-6,
        )
    torch.testing.assert_close(reused, separate, rtol=1e-5, atol=1e-6)
    padded, padded_hw = segmenter.preprocess(Image.fromarray(world_images[0][:40]), 64)  # 64 x 40 -> padded to 64 x 64
    assert not segmenter.can_reuse_trunk(padded, padded_hw)
    other_norm = Segmenter(dataclasses.replace(segmenter.config, pixel_mean=(0.5, 0.5, 0.5)), clip=segmenter.clip)
    assert not other_norm.can_reuse_trunk(pixels, valid_hw)


def test_pooled_soft_masks_equal_pooling_full_size_masks(segmenter: Segmenter, world_images: list[np.ndarray]) -> None:
    pixels, valid_hw, mask_logits, text, p, _ = stage1(segmenter, world_images[1], LABELS)
    with torch.inference_mode():
        dense = segmenter.clip.dense_features(
            normalize_pixels(pixels[..., : valid_hw[0], : valid_hw[1]], CLIP_MEAN, CLIP_STD)
        )
        full_masks = upsample(mask_logits[None], valid_hw)[0].sigmoid()  # (N, H, W): what pool_classify used to get
        expected = pool_classify(segmenter.clip, dense, full_masks[None], text)[0]
        grid = soft_masks_on_grid(mask_logits, valid_hw, tuple(dense.shape[-2:]))
        assert grid.shape == (mask_logits.shape[0], *dense.shape[-2:])
        torch.testing.assert_close(
            classify_proposals(segmenter.clip, pixels, valid_hw, mask_logits, text, p, "pool", crop_top_k=4),
            expected,
            rtol=0,
            atol=1e-7,
        )


def test_vit_dense_input_is_scaled_to_patch_multiples() -> None:
    config = tiny_config(
        clip=CLIPConfig(
            model_name="tiny-vit",
            model_cfg={
                "embed_dim": 32,
                "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
                "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
            },
        ),
        backbone=BackboneConfig(kind="timm", name="resnet18"),
        image_size=128,
    )
    segmenter = Segmenter(config)
    image = torch.rand(1, 3, 128, 96)
    clip = segmenter.clip
    assert dense_input(clip, image).shape[-2:] == (64, 48)  # half the size, multiples of 16
    assert dense_input(clip, torch.rand(1, 3, 48, 32)).shape[-2:] == (32, 16)  # the longer side never below 32 px
    small = torch.rand(1, 3, 32, 16)
    assert dense_input(clip, small) is small  # already at the native size
    assert dense_input(clip, image, vit_dense_scale=1.0) is image
    segmenter.vit_dense_scale = 1.0
    with torch.inference_mode():
        out = segmenter.segment((np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8), ["sky", "car"])
    assert out.p_hat.shape == (config.decoder.num_queries, 2)


# ---------------------------------------------------------------------------------------- stage 1
def test_gather_deformable_attention_equals_the_grid_sample_reference() -> None:
    torch.manual_seed(0)
    shapes = [(3, 5), (6, 10), (12, 20)]
    total = sum(h * w for h, w in shapes)
    batch, queries, heads, depth, points = 2, 7, 4, 8, 3
    value = torch.randn(batch, total, heads, depth)
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2) * 1.6 - 0.3  # a third fall outside
    weights = torch.rand(batch, queries, heads, len(shapes), points).softmax(-1)
    expected = ms_deform_attn(value, torch.tensor(shapes), locations, weights)
    torch.testing.assert_close(ms_deform_attn_gather(value, shapes, locations, weights), expected, rtol=1e-5, atol=1e-5)
    edges = (
        torch.tensor([0.0, 1.0, 0.5 / 20, 1 - 0.5 / 20])
        .view(1, 1, 1, 1, 4, 1)
        .expand(batch, queries, heads, len(shapes), 4, 2)
    )
    edge_weights = torch.rand(batch, queries, heads, len(shapes), 4)
    torch.testing.assert_close(
        ms_deform_attn_gather(value, shapes, edges.contiguous(), edge_weights),
        ms_deform_attn(value, torch.tensor(shapes), edges.contiguous(), edge_weights),
        rtol=1e-5,
        atol=1e-5,
    )


def test_deformable_attention_module_uses_the_same_values_with_and_without_grad() -> None:
    torch.manual_seed(0)
    module = MSDeformAttn(dim=16, num_levels=2, num_heads=2, num_points=2)
    torch.nn.init.normal_(module.sampling_offsets.weight, std=0.5)  # offsets that depend on the query
    shapes = torch.tensor([[4, 4], [8, 8]])
    query = torch.randn(1, 80, 16, requires_grad=True)
    reference_points = torch.rand(1, 80, 2, 2)
    trained = module(query, reference_points, query, shapes)  # grad needed: the grid_sample reference
    with torch.no_grad():
        fast = module(query, reference_points, query, shapes)  # no grad: the gather path
    torch.testing.assert_close(fast, trained.detach(), rtol=1e-5, atol=1e-5)
    trained.sum().backward()
    assert query.grad is not None


# ------------------------------------------------------------------------------------------- post
@pytest.mark.parametrize(
    "classes,low,size",
    [
        (3, (8, 8), (64, 64)),
        (12, (16, 20), (61, 83)),
        (40, (10, 10), (40, 40)),
        (100, (16, 16), (160, 144)),
        (5, (12, 12), (7, 9)),
    ],
)
def test_upsampled_argmax_equals_full_upsample_then_argmax(
    classes: int, low: tuple[int, int], size: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    plain_calls = []
    monkeypatch.setattr(postprocess_module, "upsample", lambda *args: plain_calls.append(1) or upsample(*args))
    torch.manual_seed(classes)
    smooth = F.interpolate(torch.randn(1, classes, 3, 3), size=low, mode="bicubic", align_corners=False)[0]
    for maps in (smooth, torch.rand(classes, *low)):  # few boundaries and noise
        expected = F.interpolate(maps[None], size=size, mode="bilinear", align_corners=False)[0].argmax(0)
        assert torch.equal(upsampled_argmax(maps, size), expected)  # whichever path the defaults choose
        with monkeypatch.context() as forced:  # the boundary path, whatever it costs
            forced.setattr(postprocess_module, "_PLAIN_MAX_CLASSES", 1)
            forced.setattr(postprocess_module, "_NOISY_SHARE", 1.0)
            forced.setattr(postprocess_module, "_PLAIN_UPSAMPLE_SHARE", float("inf"))
            plain_calls.clear()
            assert torch.equal(upsampled_argmax(maps, size), expected)
            assert not plain_calls


def test_argmax_over_classes_keeps_the_first_maximum() -> None:
    for classes in (5, 50):  # max(0) and the running maximum
        scores = torch.randint(0, 3, (classes, 40, 30)).float()  # many ties
        assert torch.equal(argmax_over_classes(scores), scores.argmax(0))


def test_semantic_map_equals_the_full_size_computation(segmenter: Segmenter, world_images: list[np.ndarray]) -> None:
    image = np.ascontiguousarray(np.concatenate([world_images[1]] * 3, axis=1))  # 64 x 192: padded, upsampled 6x
    out = segmenter.segment(image, LABELS, image_size=128)
    maps = semantic_inference(torch.from_numpy(out.p_out), out.mask_logits)
    expected = upsample(maps[None], out.image_size)[0].argmax(0)
    claimed = upsample(out.mask_logits.amax(0)[None, None], out.image_size)[0, 0].sigmoid() >= out.mask_threshold
    np.testing.assert_array_equal(out.semantic, torch.where(claimed, expected, -1).numpy())


def test_bfloat16_autocast_stays_close_and_keeps_text_float32(
    segmenter: Segmenter, world_images: list[np.ndarray]
) -> None:
    reference = segmenter.segment(world_images[2], LABELS)
    segmenter.autocast_dtype = torch.bfloat16
    try:
        fast = segmenter.segment(world_images[2], LABELS)
    finally:
        segmenter.autocast_dtype = None
    assert fast.p_out.dtype == np.float32 and segmenter.clip.encode_text(LABELS[:1]).dtype == torch.float32
    np.testing.assert_allclose(fast.p_out, reference.p_out, atol=0.05)
    assert (fast.semantic == reference.semantic).mean() > 0.9
