"""Building blocks shared by the pixel decoders and the transformer decoders.

They follow Mask2Former's ``transformer_decoder/mask2former_transformer_decoder.py`` and
``position_encoding.py`` (the DETR lineage): post-norm residual sub-layers by default, pre-norm when
``pre_norm`` is set, dropout 0 by default (Mask2Former's setting; MaskFormer's and OVSeg's decoder uses
0.1, placed as DETR places it: on the attention weights and on each residual branch, and inside the FFN). Unlike the
original they are batch-first: every sequence here is (B, N, C).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    """Detectron2's GN with 32 groups, falling back to fewer groups for narrow (test-size) layers."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


def c2_xavier_fill(module: nn.Module) -> None:
    """Detectron2's ``c2_xavier_fill`` (Caffe2 XavierFill) used by MaskFormer for its convs."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)


class ConvNormAct(nn.Sequential):
    """Conv2d (+ GroupNorm) (+ ReLU): detectron2's ``Conv2d(norm=..., activation=...)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, norm: bool = True, relu: bool = False):
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=not norm)
        c2_xavier_fill(conv)
        layers: list[nn.Module] = [conv]
        if norm:
            layers.append(group_norm(out_channels))
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class PositionEmbeddingSine(nn.Module):
    """DETR's 2-D sine position embedding, normalised to [0, 2*pi] (Mask2Former's variant, no -0.5 offset).

    ``num_pos_feats`` is half the channel count: y and x each get ``num_pos_feats`` channels.
    """

    def __init__(self, num_pos_feats: int, temperature: int = 10000, scale: float = 2 * math.pi):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) (only its shape, device and dtype are used) -> (B, 2 * num_pos_feats, H, W)."""
        batch, _, height, width = x.shape
        ones = torch.ones(batch, height, width, device=x.device, dtype=torch.float32)
        y_embed = ones.cumsum(1, dtype=torch.float32)
        x_embed = ones.cumsum(2, dtype=torch.float32)
        eps = 1e-6
        y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
        x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_pos_feats)
        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2).to(x.dtype)


class MLP(nn.Module):
    """DETR's simple multi-layer perceptron (ReLU between layers, none after the last)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = F.relu(x)
        return x


def with_pos(x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    return x if pos is None else x + pos


class SelfAttentionLayer(nn.Module):
    """Residual self-attention among the queries: x = LN(x + MHA(x+pos, x+pos, x)) (post-norm)."""

    def __init__(self, dim: int, num_heads: int, pre_norm: bool = False, dropout: float = 0.0):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm
        xavier_init(self)

    def forward(
        self, x: torch.Tensor, pos: torch.Tensor | None, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x, pos: (B, N, C); key_padding_mask: (B, N) True = token ignored as a key."""
        if self.pre_norm:
            normed = self.norm(x)
            q = k = with_pos(normed, pos)
            attended = self.self_attn(q, k, normed, key_padding_mask=key_padding_mask, need_weights=False)[0]
            return x + self.dropout(attended)
        q = k = with_pos(x, pos)
        attended = self.self_attn(q, k, x, key_padding_mask=key_padding_mask, need_weights=False)[0]
        return self.norm(x + self.dropout(attended))


class CrossAttentionLayer(nn.Module):
    """Residual cross-attention from queries to a memory: x = LN(x + MHA(x+qpos, mem+pos, mem)).

    In Mask2Former's decoder this is Eq. 4's image attention (the attention mask M_{l-1} comes in as
    ``attn_mask``); PMP's text attention (Eq. 5's Q') is the same layer with the prompts as its memory
    (:class:`pmp.modeling.text_conditioning.TextCrossAttention`).
    """

    def __init__(self, dim: int, num_heads: int, pre_norm: bool = False, dropout: float = 0.0):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm: nn.LayerNorm | None = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm
        xavier_init(self)

    def attend(
        self,
        query: torch.Tensor,
        memory: torch.Tensor,
        pos: torch.Tensor | None,
        query_pos: torch.Tensor | None,
        attn_mask: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The attention alone, softmax((query+qpos) K^T) V with K = memory+pos, V = memory: (B, N, C)."""
        return self.multihead_attn(
            with_pos(query, query_pos),
            with_pos(memory, pos),
            memory,
            attn_mask=attn_mask,
            key_padding_mask=key_padding_mask,
            need_weights=False,
        )[0]

    def add_residual(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        attended = self.dropout(attended)
        return x + attended if self.pre_norm else self.norm(x + attended)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        pos: torch.Tensor | None,
        query_pos: torch.Tensor | None,
        attn_mask: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        query: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (B, N, C); memory, pos: (B, S, C); attn_mask: (B*heads, N, S) True = not attended.

        ``query`` (B, N, C): what attends, when it is not the residual stream ``x`` itself - PMP's Q'
        (Eq. 5: X_l = softmax(Q' K^T) V + X_{l-1}); it is used as given (no pre-norm).
        """
        if query is None:
            query = self.norm(x) if self.pre_norm else x
        return self.add_residual(x, self.attend(query, memory, pos, query_pos, attn_mask, key_padding_mask))


class FFNLayer(nn.Module):
    """Residual feed-forward block: x = LN(x + W2 relu(W1 x))."""

    def __init__(self, dim: int, dim_feedforward: int, pre_norm: bool = False, dropout: float = 0.0):
        super().__init__()
        self.linear1 = nn.Linear(dim, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, dim)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm
        xavier_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """DETR's FFN: x + dropout(W2 dropout(relu(W1 x))), then LN (post-norm) or LN first (pre-norm)."""
        inner = self.norm(x) if self.pre_norm else x
        branch = self.dropout(self.linear2(self.dropout(F.relu(self.linear1(inner)))))
        return x + branch if self.pre_norm else self.norm(x + branch)


def xavier_init(module: nn.Module) -> None:
    """Mask2Former's ``_reset_parameters``: xavier-uniform for every matrix of a sub-layer."""
    for parameter in module.parameters():
        if parameter.dim() > 1:
            nn.init.xavier_uniform_(parameter)
