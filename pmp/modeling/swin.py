"""Swin Transformer as OVSeg, MaskFormer and Mask2Former build it (``BackboneConfig.kind = "swin"``).

Adapted from OVSeg's ``open_vocab_seg/modeling/backbone/swin.py`` (``D2SwinTransformer``; MIT, Microsoft's
Swin-Transformer-Semantic-Segmentation as modified by Bowen Cheng), with its parameter names, so OVSeg's
released backbones and the official Swin checkpoints load key for key.

Why not timm's Swin: the two differ exactly where a segmentation input is not a multiple of the window
(640 px with window 12 is, at every stage): detectron2's pads the map first and then shifts it, timm's
shifts first and pads after, so the windows see different tokens and a converted OVSeg model would not
compute OVSeg's features. This one also keeps OVSeg's per-stage output LayerNorms (``norm0``..``norm3``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import nn


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C), H and W multiples of ``window`` -> (B * windows, window², C)."""
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window, window, width // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, channels)


def window_reverse(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """(B * windows, window², C) -> (B, H, W, C)."""
    channels = windows.shape[-1]
    x = windows.view(-1, height // window, width // window, window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


def relative_position_index(window: int) -> torch.Tensor:
    """(window², window²) index into the (2 window - 1)² relative position bias table (Swin's)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)  # (w², w², 2)
    return relative[..., 0] * (2 * window - 1) + relative[..., 1]


def shift_attention_mask(height: int, width: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    """(windows, window², window²): 0 within a region, -100 across the regions a cyclic shift brings
    together, on the map padded to multiples of ``window`` (OVSeg's ``BasicLayer.forward``)."""
    padded_h, padded_w = -(-height // window) * window, -(-width // window) * window
    regions = torch.zeros((1, padded_h, padded_w, 1), device=device)
    count = 0
    for rows in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for cols in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            regions[:, rows, cols, :] = count
            count += 1
    windows = window_partition(regions, window)[..., 0]  # (windows, w²)
    mask = windows[:, None, :] - windows[:, :, None]
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


class WindowAttention(nn.Module):
    """Multi-head self-attention within a window, with Swin's learned relative position bias."""

    def __init__(self, dim: int, window: int, num_heads: int):
        super().__init__()
        self.window, self.num_heads = window, num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        # Recomputed, not stored: OVSeg's checkpoints hold it, the converter checks it is this.
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x (B * windows, window², C), mask (windows, window², window²) or None -> (B * windows, window², C)."""
        batch_windows, tokens, channels = x.shape
        q, k, v = self.qkv(x).reshape(batch_windows, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        bias = self.relative_position_bias_table[self.relative_position_index.flatten()]
        bias = bias.view(tokens, tokens, -1).permute(2, 0, 1)  # (heads, w², w²)
        if mask is not None:
            windows = mask.shape[0]
            bias = (bias[None] + mask[:, None]).repeat(batch_windows // windows, 1, 1, 1)  # (B*windows, heads, ., .)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))  # (B*windows, heads, w², d)
        return self.proj(out.transpose(1, 2).reshape(batch_windows, tokens, channels))


class SwinBlock(nn.Module):
    """One Swin block: (shifted) window attention and an MLP, each pre-normed with a residual."""

    def __init__(self, dim: int, num_heads: int, window: int, shift: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, height: int, width: int, mask: torch.Tensor) -> torch.Tensor:
        """x (B, H*W, C) -> (B, H*W, C): the map padded to the window first, then shifted (detectron2's order)."""
        batch, _, channels = x.shape
        pad = (0, 0, 0, -width % self.window, 0, -height % self.window)
        y = F.pad(self.norm1(x).view(batch, height, width, channels), pad)  # (B, Hp, Wp, C)
        padded_h, padded_w = y.shape[1:3]
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(window_partition(y, self.window), mask if self.shift else None)
        y = window_reverse(y, self.window, padded_h, padded_w)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + self.drop_path(y[:, :height, :width].reshape(batch, height * width, channels))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbouring tokens concatenated (odd sizes padded), normalised and projected to twice the width."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch, _, channels = x.shape
        x = F.pad(x.view(batch, height, width, channels), (0, 0, 0, width % 2, 0, height % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.reshape(batch, -1, 4 * channels)))


class SwinStage(nn.Module):
    """``depth`` blocks alternating plain and shifted windows, then (but for the last stage) a patch merging."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: int, mlp_ratio: float, drop_paths: list[float],
                 downsample: bool):  # fmt: skip
        super().__init__()
        self.window, self.shift = window, window // 2
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window, 0 if index % 2 == 0 else window // 2, mlp_ratio, drop_paths[index])
            for index in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None


class SwinTransformer(nn.Module):
    """Features at strides 4, 8, 16, 32 (B, C * 2^i, H/s, W/s), each through its stage's output LayerNorm.

    Defaults: Swin-B as OVSeg's configs/ovseg_swinB_vitL_bs32_120k.yaml MODEL.SWIN sets it (EMBED_DIM 128,
    DEPTHS [2, 2, 18, 2], NUM_HEADS [4, 8, 16, 32], WINDOW_SIZE 12; APE False, PATCH_NORM True).
    """

    def __init__(
        self,
        embed_dim: int = 128,
        depths: tuple[int, ...] = (2, 2, 18, 2),
        num_heads: tuple[int, ...] = (4, 8, 16, 32),
        window_size: int = 12,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        patch_size: int = 4,
    ):
        super().__init__()
        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError(f"a Swin backbone has 4 stages: got depths {list(depths)} and num_heads {list(num_heads)}")
        self.patch_size = patch_size
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, embed_dim, patch_size, stride=patch_size)
        self.patch_embed.norm = nn.LayerNorm(embed_dim)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()  # stochastic depth decay rule
        self.out_channels = [embed_dim * 2**index for index in range(4)]
        self.layers = nn.ModuleList()
        for index, (depth, heads) in enumerate(zip(depths, num_heads)):
            start = sum(depths[:index])
            self.layers.append(
                SwinStage(
                    self.out_channels[index],
                    depth,
                    heads,
                    window_size,
                    mlp_ratio,
                    rates[start : start + depth],
                    downsample=index < 3,
                )  # fmt: skip
            )
        for index, channels in enumerate(self.out_channels):
            self.add_module(f"norm{index}", nn.LayerNorm(channels))
        self.apply(_init_weights)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> [f4, f8, f16, f32], each (B, C_i, H_i, W_i)."""
        pad = (0, -images.shape[-1] % self.patch_size, 0, -images.shape[-2] % self.patch_size)
        x = self.patch_embed.proj(F.pad(images, pad))  # (B, C, h, w)
        height, width = x.shape[-2:]
        x = self.patch_embed.norm(x.flatten(2).transpose(1, 2))  # (B, h*w, C)
        features = []
        for index, stage in enumerate(self.layers):
            mask = shift_attention_mask(height, width, stage.window, stage.shift, x.device)
            for block in stage.blocks:
                x = block(x, height, width, mask)
            out = getattr(self, f"norm{index}")(x)
            features.append(out.view(-1, height, width, self.out_channels[index]).permute(0, 3, 1, 2).contiguous())
            if stage.downsample is not None:
                x = stage.downsample(x, height, width)
                height, width = (height + 1) // 2, (width + 1) // 2
        return features


def _init_weights(module: nn.Module) -> None:
    """Swin's initialisation (truncated normal linears, unit LayerNorms), before any weights are loaded."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def swin_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Swin checkpoint in any of the layouts it is published in -> this module's keys.

    Official Swin, detectron2 and OVSeg files hold each stage's patch merging at the end of that stage
    (``layers.i.downsample``), as here; timm's move it to the start of the next (``layers.{i+1}.downsample``),
    which is undone. A ``backbone.`` prefix (a whole OVSeg/Mask2Former model) is stripped. Left out: the
    classifier (``head.*``) and its final ``norm.*``, which a backbone has no use for (OVSeg starts its
    ``norm0``..``norm3`` fresh), and the relative position indices and attention masks, recomputed here.
    """
    if state and all(key.startswith("backbone.") for key in state):
        state = {key[len("backbone.") :]: value for key, value in state.items()}
    timm_layout = any(key.startswith("layers.3.downsample.") for key in state)
    out = {}
    for key, value in state.items():
        if key.startswith(("head.", "norm.")) or key.endswith(("relative_position_index", "attn_mask")):
            continue
        if timm_layout and key.startswith("layers.") and ".downsample." in key:
            stage, rest = key[len("layers.") :].split(".", 1)
            key = f"layers.{int(stage) - 1}.{rest}"
        out[key] = value
    return out
