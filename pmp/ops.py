"""Multi-scale deformable attention (Deformable DETR, Zhu et al. 2021) in plain PyTorch.

Mask2Former's pixel decoder runs this op through a CUDA kernel; the kernel's reference semantics are
``ms_deform_attn_core_pytorch`` in Deformable-DETR, which this function reproduces with
``F.grid_sample`` so that the model runs anywhere (CPU included) without a compiled extension.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Attention-weighted sum of bilinearly sampled values from several feature levels.

    Args:
        value: (B, S, heads, head_dim), the flattened levels concatenated along S (S = sum H_l * W_l).
        spatial_shapes: (L, 2) int64, (H_l, W_l) of each level in the order they appear in ``value``.
        sampling_locations: (B, Lq, heads, L, points, 2), normalised (x, y) in [0, 1]; (0, 0) is the
            top-left corner of the top-left pixel, so pixel i has its centre at (i + 0.5) / W.
        attention_weights: (B, Lq, heads, L, points), already normalised over (L, points).

    Returns:
        (B, Lq, heads * head_dim). Locations outside the map sample zeros (``padding_mode="zeros"``).
    """
    batch, _, heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    if len(shapes) != num_levels:
        raise ValueError(f"spatial_shapes has {len(shapes)} levels but sampling_locations has {num_levels}")
    if sum(h * w for h, w in shapes) != value.shape[1]:
        raise ValueError(f"value has {value.shape[1]} positions but spatial_shapes sum to {sum(h * w for h, w in shapes)}")

    value_per_level = value.split([h * w for h, w in shapes], dim=1)
    sampling_grids = 2 * sampling_locations - 1  # grid_sample wants [-1, 1]; align_corners=False keeps pixel centres
    sampled_per_level = []
    for level, (height, width) in enumerate(shapes):
        # (B, H*W, heads, D) -> (B*heads, D, H, W)
        level_value = value_per_level[level].flatten(2).transpose(1, 2).reshape(batch * heads, head_dim, height, width)
        # (B, Lq, heads, points, 2) -> (B*heads, Lq, points, 2)
        level_grid = sampling_grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled = F.grid_sample(level_value, level_grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        sampled_per_level.append(sampled)  # (B*heads, D, Lq, points)
    # (B, Lq, heads, L, P) -> (B*heads, 1, Lq, L*P)
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, num_queries, num_levels * num_points)
    output = (torch.stack(sampled_per_level, dim=-2).flatten(-2) * weights).sum(-1)  # (B*heads, D, Lq)
    return output.view(batch, heads * head_dim, num_queries).transpose(1, 2).contiguous()
