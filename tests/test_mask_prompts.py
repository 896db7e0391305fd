"""OVSeg's mask prompt tuning at inference: the forward against OVSeg's own written out by hand, the
prompts in crop stage 2, and the loader taking OVSeg's ``visual.mask_embedding``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from pmp.clip import CLIPModel
from pmp.clip.mask_prompts import mask_prompted_image_features
from pmp.config import CLIPConfig, SegmenterConfig
from pmp.stage2 import crop_classify, crops_and_regions

PATCH = 8


def tiny_vit(depth: int, layers: int = 3) -> CLIPModel:
    cfg = {
        "embed_dim": 24,
        "vision_cfg": {"image_size": 32, "layers": layers, "width": 32, "patch_size": PATCH, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    clip = CLIPModel.build(CLIPConfig(model_cfg=cfg, mask_prompt_depth=depth, quick_gelu=True))
    with torch.no_grad():
        if depth:
            clip.open_clip.visual.mask_embedding.normal_()
    return clip.eval()


def ovseg_forward(visual: torch.nn.Module, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """OVSeg's third_party/CLIP/clip/model.py VisionTransformer.forward(x, m), line by line, in its LND
    layout with its avg-pool-and-ceil, on open_clip's modules (which hold the same weights)."""
    mask_embedding = visual.mask_embedding
    depth = mask_embedding.shape[0]
    x = visual.conv1(x)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    m = torch.nn.AvgPool2d(PATCH, stride=PATCH)(m.to(torch.float).squeeze(1)).reshape(m.shape[0], -1).unsqueeze(-1)
    m = torch.ceil(m)
    x = x * m + mask_embedding[0].unsqueeze(0) * (1 - m)
    cls = visual.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1])
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding
    x = visual.ln_pre(x).permute(1, 0, 2)  # NLD -> LND
    for i, blk in enumerate(visual.transformer.resblocks):
        d = i + 1
        x = blk(x.permute(1, 0, 2)).permute(1, 0, 2)  # open_clip's blocks are batch-first
        if d < depth:
            masked_x = x[1:, :, :] * m.permute(1, 0, 2) + mask_embedding[d].unsqueeze(0).permute(1, 0, 2) * (
                1 - m.permute(1, 0, 2)
            )
            x = torch.cat([x[:1, :, :], masked_x], dim=0)
    x = x.permute(1, 0, 2)
    return visual.ln_post(x[:, 0, :]) @ visual.proj


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_forward_is_ovsegs(depth: int) -> None:
    torch.manual_seed(depth)
    clip = tiny_vit(depth)
    crops = torch.randn(3, 3, 32, 32)
    masks = torch.zeros(3, 1, 32, 32)
    masks[0, :, 3:9, 20:30] = 1  # touches patches (0..1, 2..3)
    masks[1, :, 16, 16] = 1  # one pixel: one patch
    masks[2] = 1
    with torch.no_grad():
        ours = mask_prompted_image_features(clip.open_clip.visual, crops, masks)
        expected = ovseg_forward(clip.open_clip.visual, crops, masks)
        plain = clip.open_clip.encode_image(crops)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours[2], plain[2], rtol=1e-4, atol=1e-5)  # a mask on every patch: the plain tower
    assert not torch.allclose(ours[:2], plain[:2], atol=1e-3)


def test_encode_crops_uses_the_prompts_only_with_masks_and_depth() -> None:
    torch.manual_seed(0)
    clip = tiny_vit(2)
    crops, masks = torch.randn(2, 3, 32, 32), torch.zeros(2, 1, 32, 32)
    masks[:, :, :8, :8] = 1
    with torch.no_grad():
        torch.testing.assert_close(clip.encode_crops(crops), clip.open_clip.encode_image(crops))
        prompted = clip.encode_crops(crops, masks)
        torch.testing.assert_close(prompted, mask_prompted_image_features(clip.open_clip.visual, crops, masks))
        assert not torch.allclose(prompted, clip.encode_crops(crops), atol=1e-3)


def test_crop_stage2_hands_ovsegs_region_masks_to_the_prompts() -> None:
    """Tight box rows 2..5, cols 4..13 of a 16x16 image, stretched to 32x32: the region mask is the box's
    mask resized by nearest neighbour (OVSeg's F.interpolate(..., mode="nearest")); the "box" view's is all
    ones; crop_classify's probabilities are the softmax of the prompted embeddings."""
    torch.manual_seed(0)
    clip = tiny_vit(3)
    image = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    mask = np.zeros((1, 16, 16), np.float32)
    mask[0, 2:6, 4:14] = 0.9
    mask[0, 2:4, 4:9] = 0.0  # the box's top-left is outside the mask
    crops, regions, kept = crops_and_regions(clip, image, mask, ("masked", "box"), ("tight", 0.4))
    inside = torch.ones(4, 10)
    inside[:2, :5] = 0
    rows = (torch.arange(32) * 4 / 32).floor().long()  # nearest: source row floor(i * h / S)
    cols = (torch.arange(32) * 10 / 32).floor().long()
    torch.testing.assert_close(regions[0, 0], inside[rows][:, cols])
    assert regions[1].min() == 1 and kept.tolist() == [0]
    text = F.normalize(torch.randn(4, 24), dim=-1)
    with torch.no_grad():
        probs = crop_classify(clip, image, mask, text, geometry=("tight", 0.4))
        feats = F.normalize(mask_prompted_image_features(clip.open_clip.visual, crops[:1], regions[:1]), dim=-1)
    torch.testing.assert_close(probs, (clip.logit_scale * feats @ text.T).softmax(-1), rtol=1e-4, atol=1e-6)


def test_loader_takes_ovsegs_mask_embedding(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = tiny_vit(3)
    state = {key: value.contiguous() for key, value in source.open_clip.state_dict().items()}  # OVSeg's keys
    assert tuple(state["visual.mask_embedding"].shape) == (3, (32 // PATCH) ** 2, 32)  # OVSeg: (depth, grid², width)
    path = tmp_path / "ovseg_clip.safetensors"
    save_file(state, str(path))
    cfg = source.config
    loaded = CLIPModel.build(CLIPConfig(model_cfg=cfg.model_cfg, pretrained=str(path), mask_prompt_depth=3))
    torch.testing.assert_close(loaded.open_clip.visual.mask_embedding, source.open_clip.visual.mask_embedding)
    with pytest.raises(ValueError, match=r"mask prompts \(visual.mask_embedding, depth 3\).*mask_prompt_depth to 3"):
        CLIPModel.build(CLIPConfig(model_cfg=cfg.model_cfg, pretrained=str(path)))
    del state["visual.mask_embedding"]
    save_file(state, str(path))
    fresh = CLIPModel.build(CLIPConfig(model_cfg=cfg.model_cfg, pretrained=str(path), mask_prompt_depth=2))
    assert fresh.open_clip.visual.mask_embedding.abs().sum() == 0  # OVSeg starts its prompts at zeros


def test_mask_prompts_need_a_vit_and_ovsegs_crops() -> None:
    with pytest.raises(ValueError, match="need a ViT image tower"):
        resnet = {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 16}
        CLIPModel.build(
            CLIPConfig(model_cfg={**tiny_vit(0).config.model_cfg, "vision_cfg": resnet}, mask_prompt_depth=1)
        )
    with pytest.raises(ValueError, match=r"mask_prompt_depth must lie in \[1, 3\]"):
        tiny_vit(4)
    with pytest.raises(ValueError, match="needs OVSeg's crops"):
        SegmenterConfig(clip=CLIPConfig(mask_prompt_depth=3), stage2_mode="pool").validate()
    SegmenterConfig(clip=CLIPConfig(mask_prompt_depth=3), stage2_mode="crop", crop_box="tight").validate()
