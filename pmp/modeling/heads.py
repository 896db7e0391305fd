"""Prediction heads applied to every decoder layer's (LayerNorm-ed) query embeddings.

* :class:`OpenVocabClassHead` - Eq. 1: cosine similarity between a query's embedding and the prompts'
  CLIP text embeddings, divided by a learnable temperature, plus a learnable no-object class.
* :class:`MaskHead` - Mask2Former's mask branch: an MLP per query, dotted with the per-pixel features.

The LayerNorm of Eq. 1 is the decoder's ``decoder_norm``, shared by both heads as in Mask2Former: the
decoders hand the heads already-normalised queries.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pmp.modeling.layers import MLP

INITIAL_LOGIT_SCALE = math.log(1 / 0.07)  # CLIP's initial temperature 0.07
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's clamp: logits are at most 100 * cosine


class OpenVocabClassHead(nn.Module):
    """p(class m | query q) logits = cos(e_q, t_m) * scale, with t_{M} = the no-object embedding.

    e_q = normalise(proj(LN(x_q))) in the CLIP joint space (text_dim); ``proj`` is one linear layer, or with
    ``layers`` > 1 OVSeg's MLP (``class_embed``: ``EMBED_LAYERS`` layers through ``hidden`` channels). The
    scale is exp(logit_scale), learned from CLIP's 1/0.07 and clamped at 100, or with ``fixed_scale`` that
    number (OVSeg's ``get_sim_logits`` temperature 100). The no-object embedding is a learnable text_dim
    vector, L2-normalised like a text embedding and appended as the last column. Padded prompts
    (``text_mask`` False) get -inf, so they take no probability mass in a softmax.
    """

    def __init__(
        self,
        hidden_dim: int,
        text_dim: int,
        layers: int = 1,
        hidden: int = 1024,
        fixed_scale: float | None = None,
        mask_pooling_dim: int | None = None,
    ):
        super().__init__()
        self.text_dim = text_dim
        self.proj = nn.Linear(hidden_dim, text_dim) if layers == 1 else MLP(hidden_dim, hidden, text_dim, layers)
        if mask_pooling_dim is not None:  # FC-CLIP's _mask_pooling_proj
            self.mask_pooling_proj = nn.Sequential(
                nn.LayerNorm(mask_pooling_dim), nn.Linear(mask_pooling_dim, hidden_dim)
            )
        self.no_object_embed = nn.Parameter(torch.randn(text_dim) * text_dim**-0.5)
        self.fixed_scale = fixed_scale
        if fixed_scale is None:
            self.logit_scale = nn.Parameter(torch.tensor(INITIAL_LOGIT_SCALE))

    def forward(
        self,
        queries: torch.Tensor,
        text_embeds: torch.Tensor,
        text_mask: torch.Tensor,
        masks: torch.Tensor | None = None,
        mask_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """queries (B, P, hidden), text_embeds (B, M, text_dim), text_mask (B, M) -> logits (B, P, M+1).

        With mask pooling (FC-CLIP, ``fcclip_transformer_decoder.py`` ``forward_prediction_heads``), the
        queries' (B, P, h, w) mask logits and the (B, mask_dim, h, w) pixel-decoder features add each query's
        mask-pooled feature to it before the projection."""
        if hasattr(self, "mask_pooling_proj"):
            if masks is None or mask_features is None:
                raise ValueError("this class head pools the mask features: pass masks and mask_features")
            queries = queries + self.mask_pooling_proj(binary_mask_pool(mask_features, masks))
        query_embeds = F.normalize(self.proj(queries), dim=-1)
        batch = text_embeds.shape[0]
        no_object = F.normalize(self.no_object_embed, dim=-1).expand(batch, 1, -1)
        classes = torch.cat([F.normalize(text_embeds, dim=-1), no_object.to(text_embeds.dtype)], dim=1)  # (B, M+1, C)
        scale = self.fixed_scale if self.fixed_scale is not None else self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
        logits = scale * torch.einsum("bpc,bmc->bpm", query_embeds, classes)
        padded = torch.cat(
            [~text_mask, torch.zeros_like(text_mask[:, :1])], dim=1
        )  # (B, M+1); no-object is never padded
        return logits.masked_fill(padded[:, None, :], float("-inf"))


def binary_mask_pool(features: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """FC-CLIP's ``MaskPooling`` (after ODISE): (B, C, h, w) features, (B, P, H, W) mask logits -> (B, P, C),
    each mask's mean feature over the cells where its logit, bilinearly resized to (h, w), is above 0. The
    masks are binarised without gradient; an empty mask pools to zero."""
    if mask_logits.shape[-2:] != features.shape[-2:]:
        mask_logits = F.interpolate(mask_logits, size=features.shape[-2:], mode="bilinear", align_corners=False)
    with torch.no_grad():
        inside = (mask_logits.detach() > 0).to(features.dtype)
        count = inside.sum(dim=(-1, -2))[..., None] + 1e-8  # (B, P, 1)
    return torch.einsum("bchw,bphw->bpc", features, inside) / count


class MaskHead(nn.Module):
    """Mask logits = MLP(query) . mask_features (a 3-layer MLP to mask_dim, then a per-pixel dot product)."""

    def __init__(self, hidden_dim: int, mask_dim: int):
        super().__init__()
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def forward(self, queries: torch.Tensor, mask_features: torch.Tensor) -> torch.Tensor:
        """queries (B, P, hidden), mask_features (B, mask_dim, h, w) -> (B, P, h, w)."""
        return torch.einsum("bqc,bchw->bqhw", self.mask_embed(queries), mask_features)
