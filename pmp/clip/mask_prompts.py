"""OVSeg's mask prompt tuning: learned tokens stand in for the patches a masked crop blanked out.

A masked crop fills everything outside its proposal with CLIP's mean colour, so most of a small
proposal's patch tokens say "grey" - a colour CLIP never saw as a whole image. OVSeg (its CLIP fork,
``third_party/CLIP/clip/model.py``, ``VisionTransformer.forward`` with a mask ``m``) replaces each
patch token no pixel of the proposal touches by a learned prompt, at the input and after each of the
first ``depth - 1`` blocks; only the prompts are trained (``train.adapt_clip``), the tower is not.

The prompts are the image tower's parameter ``visual.mask_embedding`` (depth, grid², width), OVSeg's
own name and shape, so an OVSeg CLIP state dict loads as it is (:func:`add_mask_prompts`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from torch import Tensor, nn


def add_mask_prompts(visual: nn.Module, depth: int) -> None:
    """Give an open_clip ViT image tower ``depth`` layers of mask prompts, zeros as OVSeg initialises them
    (``torch.zeros(mask_prompt_depth, grid_size ** 2, width)``): (depth, grid², width)."""
    if not isinstance(visual, VisionTransformer):
        raise ValueError(
            f"mask prompts (CLIPConfig.mask_prompt_depth > 0) need a ViT image tower, got {type(visual).__name__}"
        )
    layers = len(visual.transformer.resblocks)
    if not 1 <= depth <= layers:
        raise ValueError(f"CLIPConfig.mask_prompt_depth must lie in [1, {layers}] for this tower, got {depth}")
    grid = visual.grid_size[0] * visual.grid_size[1]
    width = visual.conv1.out_channels
    visual.register_parameter("mask_embedding", nn.Parameter(torch.zeros(depth, grid, width)))


def patches_inside(region_masks: Tensor, patch: int) -> Tensor:
    """(B, 1, S, S) crop masks -> (B, grid², 1): 1 for a patch that any pixel of the mask falls in, else 0.

    OVSeg's ``ceil(AvgPool2d(patch)(m))``: for a mask in [0, 1] the ceiling of a patch's mean is 1 exactly
    when one of its pixels is above zero.
    """
    return (F.max_pool2d(region_masks.float(), patch) > 0).flatten(1)[..., None]


def mask_prompted_image_features(visual: VisionTransformer, crops: Tensor, region_masks: Tensor) -> Tensor:
    """(B, 3, S, S) normalised crops and their (B, 1, S, S) masks -> (B, C) image embeddings, as OVSeg's
    ``VisionTransformer.forward(x, m)``: the tokens of patches outside the mask replaced by
    ``visual.mask_embedding[0]`` before the class token and positions are added, and by
    ``mask_embedding[d]`` after block d for d < depth. A mask that covers every patch gives exactly the
    tower's plain forward."""
    prompts = visual.mask_embedding  # (D, G², W)
    patch = visual.patch_size[0] if isinstance(visual.patch_size, (tuple, list)) else int(visual.patch_size)
    x = visual.conv1(crops.to(visual.conv1.weight.dtype))  # (B, W, g, g)
    x = x.flatten(2).transpose(1, 2)  # (B, G², W)
    keep = patches_inside(region_masks, patch).to(x.dtype)  # (B, G², 1)
    x = x * keep + prompts[0].to(x.dtype) * (1 - keep)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, W)
    x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype))  # (B, 1+G², W)
    batch_first = getattr(visual.transformer, "batch_first", True)
    for depth, block in enumerate(visual.transformer.resblocks, start=1):
        x = block(x if batch_first else x.transpose(0, 1))
        x = x if batch_first else x.transpose(0, 1)  # (B, 1+G², W)
        if depth < len(prompts):
            tokens = x[:, 1:] * keep + prompts[depth].to(x.dtype) * (1 - keep)
            x = torch.cat([x[:, :1], tokens], dim=1)
    pooled, _ = visual._pool(x)  # open_clip's pooling: ln_post on the class token for OpenAI's ViTs
    return pooled @ visual.proj if visual.proj is not None else pooled
