"""Pixel decoders: backbone features (strides 4-32) -> per-pixel mask features + a 3-scale pyramid.

Both return ``(mask_features, multi_scale_features)``:
    mask_features: (B, mask_dim, H/4, W/4), dotted with the mask embeddings to give mask logits;
    multi_scale_features: [f32, f16, f8], each (B, conv_dim, H/s, W/s), coarsest first (the order in which
        Mask2Former's decoder visits them; MaskFormer's decoder uses only f32).

* :class:`FPNPixelDecoder` - MaskFormer's ``BasePixelDecoder`` (used by OVSeg).
* :class:`MSDeformAttnPixelDecoder` - Mask2Former's deformable-attention encoder (used by FC-CLIP),
  in pure PyTorch through :func:`pmp.modeling.ms_deform_attn.ms_deform_attn` (training) or its equal, faster gather form
  :func:`pmp.modeling.ms_deform_attn.ms_deform_attn_gather` (whenever no gradient is needed).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pmp.config import PixelDecoderConfig
from pmp.modeling.layers import ConvNormAct, PositionEmbeddingSine, c2_xavier_fill, group_norm
from pmp.modeling.ms_deform_attn import ms_deform_attn, ms_deform_attn_gather


def build_pixel_decoder(config: PixelDecoderConfig, in_channels: list[int]) -> nn.Module:
    """``in_channels``: the backbone's channels at strides 4, 8, 16, 32."""
    if config.kind == "fpn":
        return FPNPixelDecoder(in_channels, config.conv_dim, config.mask_dim)
    if config.kind == "msdeform":
        return MSDeformAttnPixelDecoder(
            in_channels,
            conv_dim=config.conv_dim,
            mask_dim=config.mask_dim,
            num_layers=config.num_layers,
            num_heads=config.num_heads,
            num_points=config.num_points,
            dim_feedforward=config.dim_feedforward,
        )
    raise ValueError(f"config field pixel_decoder.kind={config.kind!r} is not supported; accepted: fpn, msdeform")


class FPNPixelDecoder(nn.Module):
    """MaskFormer's BasePixelDecoder: a top-down FPN whose finest output gives the mask features.

    Per level (coarse to fine): the stride-32 map gets a 3x3 conv; every finer map a 1x1 lateral conv,
    plus the nearest-upsampled coarser output, then a 3x3 conv. GroupNorm everywhere; the 3x3 convs
    are followed by ReLU. A final 3x3 conv maps the stride-4 output to ``mask_dim``.
    """

    def __init__(self, in_channels: list[int], conv_dim: int, mask_dim: int):
        super().__init__()
        coarse_to_fine = list(reversed(in_channels))  # strides 32, 16, 8, 4
        self.lateral_convs = nn.ModuleList()
        self.output_convs = nn.ModuleList()
        for index, channels in enumerate(coarse_to_fine):
            if index == 0:
                self.lateral_convs.append(nn.Identity())  # MaskFormer has no lateral conv at the top level
                self.output_convs.append(ConvNormAct(channels, conv_dim, 3, relu=True))
            else:
                self.lateral_convs.append(ConvNormAct(channels, conv_dim, 1))
                self.output_convs.append(ConvNormAct(conv_dim, conv_dim, 3, relu=True))
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, 3, padding=1)
        c2_xavier_fill(self.mask_features)

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        multi_scale: list[torch.Tensor] = []
        y: torch.Tensor | None = None
        for index, x in enumerate(reversed(features)):
            if y is None:
                y = self.output_convs[index](x)
            else:
                lateral = self.lateral_convs[index](x)
                y = self.output_convs[index](lateral + F.interpolate(y, size=lateral.shape[-2:], mode="nearest"))
            if len(multi_scale) < 3:
                multi_scale.append(y)
        return self.mask_features(y), multi_scale


class MSDeformAttn(nn.Module):
    """Deformable DETR's multi-scale deformable attention (value/offset/weight projections + the op)."""

    def __init__(self, dim: int, num_levels: int, num_heads: int, num_points: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"deformable attention dim {dim} must be divisible by num_heads {num_heads}")
        self.num_levels, self.num_heads, self.num_points = num_levels, num_heads, num_points
        self.sampling_offsets = nn.Linear(dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's init: offsets start on rays around the reference point, one per head."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.num_heads, 1, 1, 2)
        grid = grid.repeat(1, self.num_levels, self.num_points, 1)
        for point in range(self.num_points):
            grid[:, :, point, :] *= point + 1
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        for linear in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.constant_(linear.bias, 0.0)

    def forward(
        self, query: torch.Tensor, reference_points: torch.Tensor, value: torch.Tensor, spatial_shapes: torch.Tensor
    ) -> torch.Tensor:
        """query: (B, Lq, C); reference_points: (B, Lq, L, 2) in [0, 1]; value: (B, S, C) -> (B, Lq, C)."""
        batch, num_queries, _ = query.shape
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        value = self.value_proj(value).view(batch, value.shape[1], heads, -1)
        offsets = self.sampling_offsets(query).view(batch, num_queries, heads, levels, points, 2)
        weights = self.attention_weights(query).view(batch, num_queries, heads, levels * points)
        weights = weights.softmax(-1).view(batch, num_queries, heads, levels, points)
        normaliser = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1).to(
            query.dtype
        )  # (L, 2) as (W, H)
        locations = reference_points[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :, None, :]
        if torch.is_grad_enabled() and (value.requires_grad or locations.requires_grad or weights.requires_grad):
            sampled = ms_deform_attn(value, spatial_shapes, locations, weights)  # the reference, for training
        else:
            shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
            sampled = ms_deform_attn_gather(value, shapes, locations, weights)  # same values, ~10x faster on CPU
        return self.output_proj(sampled)


class MSDeformEncoderLayer(nn.Module):
    """Post-norm encoder layer: deformable self-attention over all levels, then FFN (ReLU)."""

    def __init__(self, dim: int, dim_feedforward: int, num_levels: int, num_heads: int, num_points: int):
        super().__init__()
        self.self_attn = MSDeformAttn(dim, num_levels, num_heads, num_points)
        self.norm1 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(
        self, src: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor, spatial_shapes: torch.Tensor
    ) -> torch.Tensor:
        src = self.norm1(src + self.self_attn(src + pos, reference_points, src, spatial_shapes))
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class MSDeformAttnPixelDecoder(nn.Module):
    """Mask2Former's MSDeformAttnPixelDecoder.

    Strides 32, 16, 8 are projected to ``conv_dim`` (1x1 conv + GN), given sine position + learnable
    level embeddings, flattened together and refined by ``num_layers`` deformable encoder layers (each
    pixel samples ``num_points`` points per head per level around its own location). The stride-4 map
    is then fused FPN-style (1x1 lateral + bilinear-upsampled stride-8 output, 3x3 conv), and a 1x1 conv
    gives the mask features. No padding masks: every pixel is valid (valid ratios 1).
    """

    def __init__(
        self,
        in_channels: list[int],
        conv_dim: int,
        mask_dim: int,
        num_layers: int,
        num_heads: int,
        num_points: int,
        dim_feedforward: int,
    ):
        super().__init__()
        self.num_levels = 3
        encoder_channels = list(reversed(in_channels[1:]))  # strides 32, 16, 8
        self.input_proj = nn.ModuleList()
        for channels in encoder_channels:
            conv = nn.Conv2d(channels, conv_dim, 1)
            nn.init.xavier_uniform_(conv.weight, gain=1)
            nn.init.constant_(conv.bias, 0)
            self.input_proj.append(nn.Sequential(conv, group_norm(conv_dim)))
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2)
        self.level_embed = nn.Parameter(torch.empty(self.num_levels, conv_dim))
        self.layers = nn.ModuleList(
            MSDeformEncoderLayer(conv_dim, dim_feedforward, self.num_levels, num_heads, num_points)
            for _ in range(num_layers)
        )
        self.lateral_conv = ConvNormAct(in_channels[0], conv_dim, 1)
        self.output_conv = ConvNormAct(conv_dim, conv_dim, 3, relu=True)
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, 1)
        c2_xavier_fill(self.mask_features)
        self._reset_encoder_parameters()

    def _reset_encoder_parameters(self) -> None:
        """MSDeformAttnTransformerEncoderOnly's init: xavier everywhere, then each MSDeformAttn's own."""
        for parameter in self.layers.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)
        for module in self.layers.modules():
            if isinstance(module, MSDeformAttn):
                module.reset_parameters()
        nn.init.normal_(self.level_embed)

    @staticmethod
    def reference_points(spatial_shapes: list[tuple[int, int]], batch: int, device: torch.device) -> torch.Tensor:
        """Pixel centres of every level, normalised to [0, 1] as (x, y): (B, S, L, 2)."""
        points = []
        for height, width in spatial_shapes:
            ref_y, ref_x = torch.meshgrid(
                torch.linspace(0.5, height - 0.5, height, dtype=torch.float32, device=device),
                torch.linspace(0.5, width - 0.5, width, dtype=torch.float32, device=device),
                indexing="ij",
            )
            points.append(torch.stack((ref_x.reshape(-1) / width, ref_y.reshape(-1) / height), -1))
        reference = torch.cat(points, 0)  # (S, 2)
        return reference[None, :, None, :].expand(batch, -1, len(spatial_shapes), -1)

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        encoder_inputs = list(reversed(features[1:]))  # strides 32, 16, 8
        srcs, positions, shapes = [], [], []
        for level, x in enumerate(encoder_inputs):
            src = self.input_proj[level](x)
            shapes.append((src.shape[2], src.shape[3]))
            positions.append(self.pe_layer(src).flatten(2).transpose(1, 2) + self.level_embed[level])  # (B, HW, C)
            srcs.append(src.flatten(2).transpose(1, 2))  # (B, C, H, W) -> (B, HW, C)
        src = torch.cat(srcs, 1)
        pos = torch.cat(positions, 1)
        batch = src.shape[0]
        spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=src.device)
        reference = self.reference_points(shapes, batch, src.device).to(src.dtype)
        for layer in self.layers:
            src = layer(src, pos, reference, spatial_shapes)
        multi_scale = [
            level_src.transpose(1, 2).reshape(batch, -1, height, width)  # (B, HW, C) -> (B, C, H, W)
            for level_src, (height, width) in zip(src.split([h * w for h, w in shapes], dim=1), shapes)
        ]
        lateral = self.lateral_conv(features[0])
        y = lateral + F.interpolate(multi_scale[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
        y = self.output_conv(y)
        return self.mask_features(y), multi_scale
