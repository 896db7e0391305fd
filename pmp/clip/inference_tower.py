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
import torch.nn.functional as F
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
    the mean token's attention over all tokens, as in OpenAI's CLIP."""

    def __init__(self, pool: AttentionPool2d) -> None:
        super().__init__()
        self.positional_embedding = pool.positional_embedding
        self.q_proj, self.k_proj, self.v_proj, self.c_proj = pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj
        self.num_heads = pool.num_heads

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(2).permute(2, 0, 1)  # (N, C, H, W) -> (HW, N, C)
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)  # (HW + 1, N, C)
        x = x + self.positional_embedding[:, None, :].to(x.dtype)
        pooled, _ = F.multi_head_attention_forward(
            query=x[:1],  # (1, N, C): the mean token alone
            key=x,
            value=x,
            embed_dim_to_check=x.shape[-1],
            num_heads=self.num_heads,
            q_proj_weight=self.q_proj.weight,
            k_proj_weight=self.k_proj.weight,
            v_proj_weight=self.v_proj.weight,
            in_proj_weight=None,
            in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
            bias_k=None,
            bias_v=None,
            add_zero_attn=False,
            dropout_p=0.0,
            out_proj_weight=self.c_proj.weight,
            out_proj_bias=self.c_proj.bias,
            use_separate_proj_weight=True,
            training=False,
            need_weights=False,
        )
        return pooled[0]  # (N, output_dim)


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
