"""FC-CLIP as a host: its frozen ConvNeXt CLIP backbone, its in-vocabulary classifier (mask pooling on the
pixel decoder's features), its out-of-vocabulary classifier (mask pooling on the frozen CLIP's map, then the
tower's head) and its geometric ensemble, each against FC-CLIP's code written out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pmp.clip import CLIPModel
from pmp.config import (
    CLIP_MEAN,
    CLIP_STD,
    BackboneConfig,
    CLIPConfig,
    DecoderConfig,
    PixelDecoderConfig,
    SegmenterConfig,
)
from pmp.images import normalize_pixels
from pmp.modeling.heads import OpenVocabClassHead, binary_mask_pool
from pmp.segmenter import Segmenter
from pmp.stage2 import ensemble, prompt_clip_weights
from tests.tiny import tiny_convnext_cfg
from train.recipes import get_recipe


def test_binary_mask_pool_by_hand() -> None:
    """Cells whose bilinearly resized logit is above 0 are averaged; an empty mask gives zero."""
    features = torch.arange(8.0).view(1, 2, 2, 2)  # channel 0: [[0, 1], [2, 3]], channel 1: [[4, 5], [6, 7]]
    logits = torch.tensor([[[[1.0, -1.0], [1.0, -1.0]], [[-1.0, -1.0], [-1.0, 2.0]], [[-1.0] * 2] * 2]])
    pooled = binary_mask_pool(features, logits)
    torch.testing.assert_close(pooled[0], torch.tensor([[1.0, 5.0], [3.0, 7.0], [0.0, 0.0]]))


def test_in_vocabulary_classifier_is_fcclips_head() -> None:
    """fcclip_transformer_decoder.py forward_prediction_heads: class_embed(proj(maskpool(mask_features)) +
    decoder_output), proj = LayerNorm then Linear, scored as get_classification_logits does."""
    torch.manual_seed(0)
    head = OpenVocabClassHead(8, 6, layers=3, hidden=8, mask_pooling_dim=4)
    queries, text = torch.randn(1, 3, 8), torch.randn(1, 2, 6)
    mask_features, masks = torch.randn(1, 4, 5, 5), torch.randn(1, 3, 5, 5)
    logits = head(queries, text, torch.ones(1, 2, dtype=torch.bool), masks, mask_features)
    inside = (masks > 0).float()
    pooled = torch.einsum("bchw,bqhw->bqc", mask_features, inside) / (inside.sum((-1, -2))[..., None] + 1e-8)
    norm, linear = head.mask_pooling_proj
    x = linear(F.layer_norm(pooled, (4,), norm.weight, norm.bias)) + queries
    for index, layer in enumerate(head.proj.layers):
        x = layer(x) if index == 2 else F.relu(layer(x))
    classes = torch.cat([F.normalize(text[0], dim=-1), F.normalize(head.no_object_embed, dim=-1)[None]])
    expected = min(math.exp(head.logit_scale.item()), 100.0) * F.normalize(x, dim=-1) @ classes.T
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="pass masks and mask_features"):
        head(queries, text, torch.ones(1, 2, dtype=torch.bool))


def test_out_of_vocabulary_classifier_pools_before_the_head() -> None:
    """visual_prediction_forward_convnext: MaskPooling on the trunk's last stage (norm_pre), reshaped to
    (B*Q, C, 1, 1), through trunk.head and then the tower's head."""
    torch.manual_seed(0)
    clip = CLIPModel.build(CLIPConfig(model_cfg=tiny_convnext_cfg())).eval()
    images = clip.normalize(torch.rand(1, 3, 96, 64))
    mask_logits = torch.randn(4, 24, 16)  # stride 4 of the 96 x 64 image
    mask_logits[3] = -1.0  # an empty mask
    with torch.no_grad():
        trunk = clip.convnext_trunk(images)
        got = clip.fcclip_pooled(trunk, mask_logits)
        visual = clip.open_clip.visual
        dense = visual.trunk.norm_pre(visual.trunk.stages(visual.trunk.stem(images)))
        resized = F.interpolate(mask_logits[None], size=dense.shape[-2:], mode="bilinear", align_corners=False)
        inside = (resized > 0).float()
        pooled = torch.einsum("bchw,bqhw->bqc", dense, inside) / (inside.sum((-1, -2))[..., None] + 1e-8)
        expected = visual.head(visual.trunk.head(pooled.reshape(4, -1, 1, 1)))
        after_head = visual.head(visual.trunk.head(dense)).flatten()  # the head on the whole map: not the same
    assert trunk.shape == (1, 320, 3, 2)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got[0], after_head, atol=1e-3)


def fcclip_ensemble(in_logits: torch.Tensor, clip_probs: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """fcclip.py lines 366-402 as written: (Q, K+1) stage-1 logits with void last, (Q, K) CLIP probabilities,
    (K,) seen mask -> (Q, K) class probabilities (the void column dropped, as semantic_inference does)."""
    in_vocab = in_logits[..., :-1].softmax(-1)
    seen = seen.float()
    seen_logits = (in_vocab**0.6 * clip_probs**0.4).log() * seen
    unseen_logits = (in_vocab**0.2 * clip_probs**0.8).log() * (1 - seen)
    void = in_logits.softmax(-1)[..., -1:]
    probs = torch.cat([(seen_logits + unseen_logits).softmax(-1) * (1 - void), void], -1)
    return F.softmax(torch.log(probs + 1e-8), -1)[..., :-1]


def test_the_recipes_ensemble_is_fcclips_geometric_ensemble() -> None:
    model = get_recipe("fcclip-convnextl-pmp").model
    assert (model.ensemble, model.clip_weight, model.clip_weight_unseen) == ("odise", 0.4, 0.8)
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.3], [0.1, 0.2, 0.3, 3.0]])  # 3 prompts + void
    clip_probs = torch.tensor([[0.2, 0.7, 0.1], [0.5, 0.25, 0.25]])
    names = ["person,child", "sofa", "zebra"]
    weights = prompt_clip_weights(names, model.clip_weight, model.clip_weight_unseen, ["person", "couch, sofa"])
    assert weights.tolist() == pytest.approx([0.4, 0.4, 0.8])
    probs = logits.softmax(-1)
    ours = ensemble(probs[:, :-1], clip_probs, weights, form=model.ensemble)
    expected = fcclip_ensemble(logits, clip_probs, torch.tensor([1, 1, 0]))
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6)
    # by hand for the first proposal's first class: p_in = softmax([2, .5, -1]), mixed, renormalised, * (1 - void)
    p_in = np.exp([2.0, 0.5, -1.0]) / np.exp([2.0, 0.5, -1.0]).sum()
    mixed = np.array([p_in[0] ** 0.6 * 0.2**0.4, p_in[1] ** 0.6 * 0.7**0.4, p_in[2] ** 0.2 * 0.1**0.8])
    void = np.exp(0.3) / np.exp([2.0, 0.5, -1.0, 0.3]).sum()
    assert float(ours[0, 0]) == pytest.approx(mixed[0] / mixed.sum() * (1 - void), rel=1e-5)


def tiny_fcclip(text_mode: str = "pmp") -> SegmenterConfig:
    return SegmenterConfig(
        clip=CLIPConfig(model_cfg=tiny_convnext_cfg()),
        backbone=BackboneConfig(kind="clip"),
        pixel_decoder=PixelDecoderConfig(
            kind="msdeform", conv_dim=32, mask_dim=32, num_layers=1, num_heads=4, dim_feedforward=64
        ),  # fmt: skip
        decoder=DecoderConfig(
            hidden_dim=32,
            num_queries=6,
            num_layers=2,
            num_heads=4,
            dim_feedforward=64,
            text_mode=text_mode,
            class_head_layers=3,
            class_head_hidden_dim=32,
            class_head_mask_pooling=True,
        ),  # fmt: skip
        image_size=64,
        stage2_mode="pool",
        pool_form="fcclip",
        ensemble="odise",
        clip_weight=0.4,
        clip_weight_unseen=0.8,
        training_names=("cat",),
        pixel_mean=CLIP_MEAN,  # FC-CLIP's PIXEL_MEAN / PIXEL_STD are CLIP's (x 255)
        pixel_std=CLIP_STD,
    )


def test_a_tiny_fcclip_segments_and_its_backbones_map_is_the_one_stage_2_pools() -> None:
    torch.manual_seed(0)
    segmenter = Segmenter(tiny_fcclip())
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    result = segmenter.segment(image, ["cat", "dog"])
    assert result.semantic.shape == (64, 64) and result.p_out.shape == (6, 2)
    assert np.allclose(result.p_hat.sum(1), 1.0, atol=1e-5)
    pixels, valid = segmenter.preprocess(Image.fromarray(image), 64)
    assert segmenter.can_reuse_trunk(pixels, valid)  # so stage 2 took stage 1's map instead of its own pass
    cfg = segmenter.config
    with torch.no_grad():
        backbone = segmenter.proposal_model.backbone(normalize_pixels(pixels, cfg.pixel_mean, cfg.pixel_std))
        torch.testing.assert_close(backbone[-1], segmenter.clip.convnext_trunk(segmenter.clip.normalize(pixels)))
    assert [f.shape[1] for f in backbone] == [40, 80, 160, 320]
