"""Mask-proposal transformer decoders, each with the text hooks of :mod:`pmp.modeling.text_conditioning`.

* :class:`MultiScaleMaskedTransformerDecoder` (``decoder.kind="mask2former"``): Mask2Former's decoder.
  Layer l: masked image cross-attention over scale l % 3 (stride 32, 16, 8, 32, ...), where each query
  sees only the pixels its previous mask prediction (sigmoid >= 0.5 at that scale's resolution) covers,
  then self-attention, then FFN. A prediction is made from the learnable queries before layer 1 and
  after every layer (num_layers + 1 predictions).
* :class:`StandardTransformerDecoder` (``decoder.kind="maskformer"``): MaskFormer's (OVSeg's) DETR decoder
  over the stride-32 features. Layer l: self-attention, cross-attention to all pixels, FFN (post-norm);
  queries start at zero, so a prediction is made after every layer only (num_layers predictions).

Where the text enters (``decoder.text_mode``), in layer order:
    start of the decoder  -> ``concat`` appends the text tokens to the queries, ``text_queries`` replaces them;
    start of each layer   -> ``concat_drop`` appends the text tokens for that layer only (dropped at its end);
    each image cross-attn -> ``pmp`` / ``pmp_residual`` first compute Q' (Eq. 5), which drives the image
                             cross-attention.
With ``text_mode="none"`` every hook returns its input untouched, which is the original decoder: the
Mask2Former decoder layer is Eq. 4, X_l = softmax(M_{l-1} + Q_l K_l^T) V_l + X_{l-1}, then
self-attention and FFN.

Both decoders return a :class:`DecoderOutput`: per prediction, the LayerNorm-ed proposal embeddings
(for the class head of Eq. 1) and their mask logits at stride 4.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pmp.config import DecoderConfig
from pmp.modeling.heads import MaskHead
from pmp.modeling.layers import CrossAttentionLayer, FFNLayer, PositionEmbeddingSine, SelfAttentionLayer, c2_xavier_fill
from pmp.modeling.text_conditioning import QuerySequence, TextConditioning, self_attend, side_stream


@dataclass
class LayerPrediction:
    queries: torch.Tensor  # (B, P, hidden_dim) after decoder_norm: the input of the class head
    masks: torch.Tensor  # (B, P, H/4, W/4) mask logits


@dataclass
class DecoderOutput:
    predictions: list[LayerPrediction]  # first to last; the last is the final prediction
    proposal_mask: torch.Tensor | None  # (B, P) True = real proposal ("concat"/"text_queries" with padding), else None


def build_transformer_decoder(config: DecoderConfig, in_channels: int, mask_dim: int, text_dim: int) -> nn.Module:
    """``in_channels``: channels of the maps the decoder attends to (the pixel decoder's conv_dim; for
    "maskformer" the backbone's stride-32 channels)."""
    if config.kind == "mask2former":
        return MultiScaleMaskedTransformerDecoder(config, in_channels, mask_dim, text_dim)
    if config.kind == "maskformer":
        return StandardTransformerDecoder(config, in_channels, mask_dim, text_dim)
    raise ValueError(f"config field decoder.kind={config.kind!r} is not supported; accepted: mask2former, maskformer")


def _input_projection(in_channels: int, hidden_dim: int) -> nn.Module:
    """Mask2Former: a 1x1 conv only when the pixel decoder's width differs from the decoder's."""
    if in_channels == hidden_dim:
        return nn.Identity()
    conv = nn.Conv2d(in_channels, hidden_dim, 1)
    c2_xavier_fill(conv)
    return conv


def _flatten(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, HW, C)


class MultiScaleMaskedTransformerDecoder(nn.Module):
    """Mask2Former's MultiScaleMaskedTransformerDecoder (batch-first), plus the text hooks."""

    num_feature_levels = 3

    def __init__(self, config: DecoderConfig, in_channels: int, mask_dim: int, text_dim: int):
        super().__init__()
        hidden_dim, num_heads, pre_norm = config.hidden_dim, config.num_heads, config.pre_norm
        num_layers, text_mode = config.num_layers, config.text_mode
        self.num_heads = num_heads
        self.num_layers = num_layers
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2)
        dropout = config.dropout
        self.self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, num_heads, pre_norm, dropout) for _ in range(num_layers)
        )
        self.cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, num_heads, pre_norm, dropout) for _ in range(num_layers)
        )
        self.ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, config.dim_feedforward, pre_norm, dropout) for _ in range(num_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        if text_mode != "text_queries":  # Fig. 5c has no learnable queries; the side stream keeps other inits equal
            with side_stream("learnable_queries"):
                self.query_feat = nn.Embedding(config.num_queries, hidden_dim)  # learnable query content
                self.query_embed = nn.Embedding(config.num_queries, hidden_dim)  # learnable query position
        self.level_embed = nn.Embedding(self.num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList(
            _input_projection(in_channels, hidden_dim) for _ in range(self.num_feature_levels)
        )
        self.mask_head = MaskHead(hidden_dim, mask_dim)
        self.text = TextConditioning(text_mode, text_dim, hidden_dim, num_heads, num_layers, pre_norm)

    def forward(
        self,
        multi_scale_features: list[torch.Tensor],
        mask_features: torch.Tensor,
        text_embeds: torch.Tensor,
        text_mask: torch.Tensor,
    ) -> DecoderOutput:
        """multi_scale_features: [f32, f16, f8] (B, C, h, w); text_embeds (B, M, C_text); text_mask (B, M)."""
        if len(multi_scale_features) != self.num_feature_levels:
            raise ValueError(f"expected {self.num_feature_levels} feature levels, got {len(multi_scale_features)}")
        sources, positions, sizes = [], [], []
        for level, feature in enumerate(multi_scale_features):
            sizes.append(feature.shape[-2:])
            positions.append(_flatten(self.pe_layer(feature)))
            sources.append(_flatten(self.input_proj[level](feature)) + self.level_embed.weight[level])
        batch = mask_features.shape[0]
        queries = query_pos = None
        if hasattr(self, "query_feat"):
            queries = self.query_feat.weight.unsqueeze(0).expand(batch, -1, -1)
            query_pos = self.query_embed.weight.unsqueeze(0).expand(batch, -1, -1)

        text = self.text.encode(text_embeds, text_mask)
        seq = self.text.start(queries, query_pos, text)
        prediction, attn_mask = self._predict(seq, mask_features, sizes[0])
        predictions = [prediction]
        for layer in range(self.num_layers):
            level = layer % self.num_feature_levels
            inside = self.text.enter_layer(seq, text)  # concat_drop: + M text tokens for this layer
            stream, query = self.text.before_cross_attention(layer, inside, text)
            inside.x = self.cross_attention_layers[layer](
                stream,
                sources[level],
                pos=positions[level],
                query_pos=inside.pos,
                attn_mask=_per_head(attn_mask, inside.num_extra, self.num_heads),
                query=query,
            )
            inside.x = self_attend(self.self_attention_layers[layer], inside)
            inside.x = self.ffn_layers[layer](inside.x)
            seq = self.text.leave_layer(seq, inside)
            last = layer == self.num_layers - 1  # the final prediction needs no attention mask
            target_size = None if last else sizes[(layer + 1) % self.num_feature_levels]
            prediction, attn_mask = self._predict(seq, mask_features, target_size)
            predictions.append(prediction)
        return DecoderOutput(predictions, seq.proposal_mask)

    def _predict(
        self, seq: QuerySequence, mask_features: torch.Tensor, target_size: torch.Size | None
    ) -> tuple[LayerPrediction, torch.Tensor | None]:
        """Masks of the proposals, and the next layer's attention mask (B, P, h*w), True = blocked
        (None when ``target_size`` is None: after the last layer)."""
        queries = self.decoder_norm(seq.x[:, : seq.num_proposals])
        masks = self.mask_head(queries, mask_features)
        if target_size is None:
            return LayerPrediction(queries, masks), None
        attn_mask = F.interpolate(masks, size=target_size, mode="bilinear", align_corners=False)
        attn_mask = attn_mask.sigmoid().flatten(2) < 0.5  # (B, P, h*w)
        # Mask2Former's fix: a query whose mask covers no pixel at this scale attends to every pixel
        # (applied before the per-head copies below: the same result on 1/heads of the elements)
        attn_mask = attn_mask & ~attn_mask.all(dim=-1, keepdim=True)
        return LayerPrediction(queries, masks), attn_mask.detach()


def _per_head(attn_mask: torch.Tensor, extra_tokens: int, num_heads: int) -> torch.Tensor:
    """(B, P, S) mask -> (B*heads, P+extra, S) for nn.MultiheadAttention; extra tokens (``concat_drop``'s
    text tokens, which have no mask of their own) attend to every pixel."""
    if extra_tokens:
        attn_mask = torch.cat([attn_mask, attn_mask.new_zeros(attn_mask.shape[0], extra_tokens, attn_mask.shape[2])], 1)
    return attn_mask.unsqueeze(1).repeat(1, num_heads, 1, 1).flatten(0, 1)  # (B*heads, P+extra, S)


class DetrDecoderLayer(nn.Module):
    """DETR's decoder layer as used by MaskFormer: self-attention, cross-attention, FFN."""

    def __init__(
        self, hidden_dim: int, num_heads: int, dim_feedforward: int, pre_norm: bool = False, dropout: float = 0.0
    ):
        super().__init__()
        self.self_attn = SelfAttentionLayer(hidden_dim, num_heads, pre_norm, dropout)
        self.cross_attn = CrossAttentionLayer(hidden_dim, num_heads, pre_norm, dropout)
        self.ffn = FFNLayer(hidden_dim, dim_feedforward, pre_norm, dropout)


class StandardTransformerDecoder(nn.Module):
    """MaskFormer's transformer predictor (OVSeg's stage 1): a DETR decoder over the stride-32 map.

    The memory (``multi_scale_features[0]``) is the backbone's stride-32 map, as MaskFormer's
    ``TRANSFORMER_IN_FEATURE: "res5"`` in OVSeg's configs gives it (:class:`MaskProposalModel` passes it),
    through a 1x1 projection to ``hidden_dim`` (``input_proj``) and with a sine position embedding. No
    encoder layers (MaskFormer's default ``ENC_LAYERS=0``); dropout as ``config.dropout`` says
    (MaskFormer's and OVSeg's ``MODEL.MASK_FORMER.DROPOUT: 0.1``).
    """

    def __init__(self, config: DecoderConfig, in_channels: int, mask_dim: int, text_dim: int):
        super().__init__()
        hidden_dim, num_heads, pre_norm = config.hidden_dim, config.num_heads, config.pre_norm
        num_layers, text_mode = config.num_layers, config.text_mode
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2)
        self.input_proj = _input_projection(in_channels, hidden_dim)
        if text_mode != "text_queries":  # Fig. 5c has no learnable queries; the side stream keeps other inits equal
            with side_stream("learnable_queries"):
                self.query_embed = nn.Embedding(config.num_queries, hidden_dim)
        self.layers = nn.ModuleList(
            DetrDecoderLayer(hidden_dim, num_heads, config.dim_feedforward, pre_norm, config.dropout)
            for _ in range(num_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.mask_head = MaskHead(hidden_dim, mask_dim)
        self.text = TextConditioning(text_mode, text_dim, hidden_dim, num_heads, num_layers, pre_norm)

    def forward(
        self,
        multi_scale_features: list[torch.Tensor],
        mask_features: torch.Tensor,
        text_embeds: torch.Tensor,
        text_mask: torch.Tensor,
    ) -> DecoderOutput:
        """Same arguments as :meth:`MultiScaleMaskedTransformerDecoder.forward`; only the stride-32 map is used."""
        feature = multi_scale_features[0]
        memory = _flatten(self.input_proj(feature))  # (B, HW, C)
        pos = _flatten(self.pe_layer(feature))
        batch = mask_features.shape[0]
        queries = query_pos = None
        if hasattr(self, "query_embed"):
            query_pos = self.query_embed.weight.unsqueeze(0).expand(batch, -1, -1)
            queries = torch.zeros_like(query_pos)  # DETR: query content starts at zero

        text = self.text.encode(text_embeds, text_mask)
        seq = self.text.start(queries, query_pos, text)
        predictions = []
        for index, layer in enumerate(self.layers):
            inside = self.text.enter_layer(seq, text)  # concat_drop: + M text tokens for this layer
            inside.x = self_attend(layer.self_attn, inside)
            stream, query = self.text.before_cross_attention(index, inside, text)
            inside.x = layer.cross_attn(stream, memory, pos=pos, query_pos=inside.pos, query=query)
            inside.x = layer.ffn(inside.x)
            seq = self.text.leave_layer(seq, inside)
            proposals = self.decoder_norm(seq.x[:, : seq.num_proposals])
            predictions.append(LayerPrediction(proposals, self.mask_head(proposals, mask_features)))
        return DecoderOutput(predictions, seq.proposal_mask)
