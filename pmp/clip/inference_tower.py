"""The image tower as stage 2 runs it: an eval-only copy of a ModifiedResNet that computes the same
embeddings with less work.

Why: OVSeg's stage 2 runs CLIP's image tower on a crop of every proposal (48 crops per request for the
bundled models), so the tower is most of a request. Two changes, neither of which moves an embedding by
more than float rounding:

* **BatchNorms folded into the convolutions before them.** In eval mode a BatchNorm is a per-channel
  affine map, which ``torch.nn.utils.fusion.fuse_conv_bn_eval`` folds into the weights and bias of its
  convolution: one pass over every feature map saved per convolution.
* **Attention pooling for the pooled token only.** open_clip's ``AttentionPool2d`` projects and attends
  with all HW + 1 tokens as queries and returns the first; OpenAI's CLIP, where the layer comes from,
  queries with that token alone (``query=x[:1]``), which gives the same output.

Measured side by side by ``python -m benchmarks.latency`` (the crop fast paths line). ViT towers are
used as they are. :meth:`pmp.clip.CLIPModel.encode_crops` keeps one copy and rebuilds it when the
weights change; training never sees it (a BatchNorm in training mode normalises with batch statistics,
which no folding can express).
"""

from __future__ import annotations

import copy

import torch
from open_clip.modified_resnet import AttentionPool2d, Bottleneck, ModifiedResNet
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

# The (conv, bn) pairs of open_clip's stem and Bottleneck whose forward is bn(conv(x)), by attribute
# name; a Bottleneck's downsample is Sequential(-1: AvgPool2d, 0: Conv2d, 1: BatchNorm2d).
CONV_NORM_PAIRS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))
DOWNSAMPLE_PAIR = ("0", "1")


def can_speed_up(visual: nn.Module) -> bool:
    """True for the image towers :func:`inference_tower` knows the layout of (open_clip's ModifiedResNet)."""
    return isinstance(visual, ModifiedResNet)


def inference_tower(visual: nn.Module) -> nn.Module:
    """An eval-mode, gradient-free copy of the ModifiedResNet ``visual``: BatchNorms folded into their
    convolutions (each becomes ``nn.Identity``) and the attention pool querying with its pooled token only.

    Its state-dict keys differ from the tower's (no BatchNorm entries), so it is never saved.
    """
    if not can_speed_up(visual):
        raise ValueError(f"inference_tower takes open_clip's ModifiedResNet, got {type(visual).__name__}")
    tower = copy.deepcopy(visual).eval()
    _fold_pairs(tower, CONV_NORM_PAIRS)
    for block in tower.modules():
        if isinstance(block, Bottleneck):
            _fold_pairs(block, CONV_NORM_PAIRS)
            if block.downsample is not None:
                _fold_pairs(block.downsample, (DOWNSAMPLE_PAIR,))
    left = [name for name, module in tower.named_modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    if left:
        raise ValueError(f"inference_tower does not know where these BatchNorms are applied: {', '.join(left)}")
    if isinstance(tower.attnpool, AttentionPool2d):
        tower.attnpool = PooledTokenAttention(tower.attnpool)
    return tower.requires_grad_(False)


class PooledTokenAttention(nn.Module):
    """open_clip's ``AttentionPool2d`` (whose parameters it takes over) computing only the output it returns:
    the mean token's attention over all L = HW + 1 tokens, as in OpenAI's CLIP, with the key and value
    projections moved off the tokens.

    For head h with query q_h, the logit of token t is q_h . (W_h t + b_h) = (W_h^T q_h) . t + q_h . b_h,
    and the last term is the same for every token, so the softmax drops it: one (C x C) product per crop
    instead of projecting all L tokens. The values are projected after mixing, W_v (sum_t a_t t) + b_v,
    which equals sum_t a_t (W_v t + b_v) because the attention weights sum to 1. With 17 tokens per crop
    this is about a tenth of the multiply-adds of the projections it replaces.
    """

    def __init__(self, pool: AttentionPool2d) -> None:
        super().__init__()
        self.positional_embedding = pool.positional_embedding
        self.q_proj, self.c_proj = pool.q_proj, pool.c_proj
        self.num_heads = heads = pool.num_heads
        width = pool.k_proj.in_features
        self.head_dim = pool.k_proj.out_features // heads
        # (heads, head_dim, C): each head's rows of the key and value projections. The key bias is the
        # constant the softmax drops.
        self.key_rows = nn.Parameter(pool.k_proj.weight.detach().reshape(heads, self.head_dim, width).clone())
        self.value_rows = nn.Parameter(pool.v_proj.weight.detach().reshape(heads, self.head_dim, width).clone())
        self.value_bias = nn.Parameter(pool.v_proj.bias.detach().reshape(heads, self.head_dim).clone())

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        x = x.flatten(2).transpose(1, 2)  # (N, C, H, W) -> (N, HW, C)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)  # (N, L, C), the mean token first
        x = x + self.positional_embedding[None].to(x.dtype)
        query = self.q_proj(x[:, 0]) * self.head_dim**-0.5  # (N, C): the mean token's, scaled as in attention
        probe = torch.einsum("nhd,hdc->nhc", query.view(n, self.num_heads, self.head_dim), self.key_rows.to(x.dtype))
        attention = torch.bmm(probe, x.transpose(1, 2)).softmax(dim=-1)  # (N, heads, L)
        mixed = torch.bmm(attention, x)  # (N, heads, C): each head's attention-weighted token
        values = torch.einsum("nhc,hdc->nhd", mixed, self.value_rows.to(x.dtype)) + self.value_bias.to(x.dtype)
        return self.c_proj(values.reshape(n, -1))  # (N, output_dim)


def _fold_pairs(parent: nn.Module, pairs: tuple[tuple[str, str], ...]) -> None:
    for conv_name, norm_name in pairs:
        conv, norm = getattr(parent, conv_name), getattr(parent, norm_name)
        if not isinstance(conv, nn.Conv2d) or not isinstance(norm, nn.BatchNorm2d):
            raise ValueError(
                f"expected Conv2d {conv_name!r} then BatchNorm2d {norm_name!r} in {type(parent).__name__}, got "
                f"{type(conv).__name__} and {type(norm).__name__}"
            )
        setattr(parent, conv_name, fuse_conv_bn_eval(conv, norm))
        setattr(parent, norm_name, nn.Identity())
