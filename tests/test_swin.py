"""pmp.modeling.swin: OVSeg's Swin. Equal to timm's where the two agree (every map a multiple of the window),
OVSeg's pad-then-shift where they do not (checked against windows attended one by one), and loadable from
timm's and the official layouts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from pmp.config import BackboneConfig
from pmp.modeling.backbone import build_swin
from pmp.modeling.swin import SwinBlock, SwinTransformer, swin_state_dict

SIZES = {"embed_dim": 16, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 2, 4), "window_size": 2}


def timm_swin(**kwargs) -> torch.nn.Module:
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=128, **SIZES, **kwargs).eval()


def test_equals_timms_swin_where_no_map_needs_padding() -> None:
    """128 px, window 2: maps of 32, 16, 8, 4 tokens, all multiples of the window, where the two agree."""
    torch.manual_seed(0)
    reference = timm_swin(features_only=True)
    state = {key.replace("layers_", "layers."): value for key, value in reference.state_dict().items()}
    ours = SwinTransformer(**SIZES).eval()
    result = ours.load_state_dict(swin_state_dict(state), strict=False)
    assert sorted(result.missing_keys) == [f"norm{i}.{p}" for i in range(4) for p in ("bias", "weight")]
    assert not result.unexpected_keys
    for index in range(4):  # OVSeg's output norms, made non-trivial
        torch.nn.init.normal_(getattr(ours, f"norm{index}").weight)
    images = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        expected = [feature.permute(0, 3, 1, 2) for feature in reference(images)]  # timm's Swin is channels-last
        got = ours(images)
    for index, (feature, mine) in enumerate(zip(expected, got)):
        norm = getattr(ours, f"norm{index}")
        torch.testing.assert_close(mine, norm(feature.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), rtol=1e-4, atol=1e-4)
        assert mine.shape == (2, 16 * 2**index, 32 // 2**index, 32 // 2**index)


def window_by_window(block: SwinBlock, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A shifted block the slow way, as OVSeg's BasicLayer/SwinTransformerBlock define it: zero-pad the map on
    the bottom and right to multiples of the window, roll it up-left by the shift, and in each window let
    a token attend only to tokens of its own region (the 3x3 regions the roll brings together); then undo."""
    window, shift = block.window, block.shift
    channels = x.shape[-1]
    y = block.norm1(x)[0].view(height, width, channels)
    padded_h, padded_w = math.ceil(height / window) * window, math.ceil(width / window) * window
    grid = torch.zeros(padded_h, padded_w, channels)
    grid[:height, :width] = y
    region = torch.zeros(padded_h, padded_w, dtype=torch.long)
    edges_h = (0, padded_h - window, padded_h - shift, padded_h)
    edges_w = (0, padded_w - window, padded_w - shift, padded_w)
    for a in range(3):
        for b in range(3):
            region[edges_h[a] : edges_h[a + 1], edges_w[b] : edges_w[b + 1]] = 3 * a + b
    grid = torch.roll(grid, (-shift, -shift), (0, 1))
    out = torch.zeros_like(grid)
    attn = block.attn
    heads = attn.num_heads
    table = attn.relative_position_bias_table
    for top in range(0, padded_h, window):
        for left in range(0, padded_w, window):
            tokens = grid[top : top + window, left : left + window].reshape(-1, channels)
            labels = region[top : top + window, left : left + window].reshape(-1)
            q, k, v = attn.qkv(tokens).view(-1, 3, heads, channels // heads).permute(1, 2, 0, 3)
            rows = torch.arange(window).repeat_interleave(window)
            cols = torch.arange(window).repeat(window)
            rel = (rows[:, None] - rows[None] + window - 1) * (2 * window - 1) + (
                cols[:, None] - cols[None] + window - 1
            )
            logits = q @ k.transpose(-1, -2) / math.sqrt(channels // heads) + table[rel].permute(2, 0, 1)
            logits = logits.masked_fill(labels[:, None] != labels[None], float("-inf"))
            mixed = (logits.softmax(-1) @ v).permute(1, 0, 2).reshape(-1, channels)
            out[top : top + window, left : left + window] = attn.proj(mixed).view(window, window, channels)
    out = torch.roll(out, (shift, shift), (0, 1))[:height, :width].reshape(1, -1, channels)
    x = x + out
    return x + block.mlp(block.norm2(x))


def test_a_shifted_block_pads_before_it_shifts_as_ovseg() -> None:
    """A 5 x 7 map with window 4: padded to 8 x 8 on the bottom and right, then rolled (timm rolls the
    unpadded map first, so its windows hold other tokens)."""
    torch.manual_seed(0)
    swin = SwinTransformer(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(2, 2, 2, 2), window_size=4).eval()
    block = swin.layers[0].blocks[1]
    assert block.shift == 2
    torch.nn.init.normal_(block.attn.relative_position_bias_table)
    from pmp.modeling.swin import shift_attention_mask

    x = torch.randn(1, 5 * 7, 8)
    with torch.no_grad():
        got = block(x, 5, 7, shift_attention_mask(5, 7, 4, 2, x.device))
        expected = window_by_window(block, x, 5, 7)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_timms_and_the_official_layouts_load_into_the_backbone(tmp_path: Path) -> None:
    torch.manual_seed(0)
    classifier = timm_swin()  # timm's layout: patch merging at the start of the next stage, a head, a final norm
    path = tmp_path / "swin_timm.safetensors"
    save_file({key: value.contiguous() for key, value in classifier.state_dict().items()}, str(path))
    backbone = build_swin(BackboneConfig(kind="swin", pretrained_file=str(path), model_kwargs=dict(SIZES)), str(path))
    torch.testing.assert_close(
        backbone.layers[0].downsample.reduction.weight, classifier.layers[1].downsample.reduction.weight
    )
    torch.testing.assert_close(
        backbone.layers[2].blocks[1].attn.qkv.weight, classifier.layers[2].blocks[1].attn.qkv.weight
    )
    official = {f"backbone.{key}": value for key, value in backbone.state_dict().items()}  # OVSeg's: no remapping
    official["backbone.layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(4, 4, dtype=torch.long)
    assert set(swin_state_dict(official)) == set(backbone.state_dict())
    wrong = BackboneConfig(kind="swin", model_kwargs={**SIZES, "embed_dim": 32})
    with pytest.raises(ValueError, match="do not fit this Swin"):
        build_swin(wrong, str(path))
    with pytest.raises(ValueError, match="do not fit pmp.modeling.swin's Swin"):
        build_swin(BackboneConfig(kind="swin", model_kwargs={"heads": 3}), None)
