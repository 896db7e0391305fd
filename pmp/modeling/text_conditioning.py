"""How the prompts reach the mask-proposal decoder: PMP (Eq. 5) and the Fig. 5 ablations, in one place.

The decoders (:mod:`pmp.modeling.transformer_decoder`) are the unchanged Mask2Former / MaskFormer
decoders; they call the three hooks of :class:`TextConditioning` at fixed points, and every hook is the
identity in the baseline. ``config.decoder.text_mode`` picks the behaviour:

``"none"`` - baseline (OVSeg / FC-CLIP style). The decoder never sees the prompts; the proposals
    (``pred_masks``) are the same whatever the prompts are. No text parameters are created, so the
    baseline's module tree, state dict and arithmetic are exactly Mask2Former's / MaskFormer's.

``"pmp"`` - the paper's method, Eq. 5. Before *each* image cross-attention, the queries first
    cross-attend to the text tokens; the text-aware queries Q' then drive the image cross-attention:
        Q' = softmax(Q K_t^T) V_t,    X_l = softmax(Q' K_l^T) V_l + X_{l-1}.
    See :class:`TextCrossAttention` for where the residuals and norms go.

``"concat"`` (Fig. 5, "concatenation at the input") - the M text tokens are appended to the query
    sequence before the first layer and travel through every layer with the queries (self-attention,
    image cross-attention, FFN), so queries and text tokens update each other. Only the Q query
    outputs make predictions; in Mask2Former's masked attention the text tokens, having no mask of
    their own, attend to every pixel.

``"concat_drop"`` (Fig. 5, "concatenate then drop") - before each layer's self-attention the fixed
    projected text tokens are appended to the queries and dropped right after it: the queries read the
    text only through self-attention, and the text tokens are never updated.

``"text_queries"`` (Fig. 5, "text as queries") - the projected text tokens become M extra queries
    (content = text token, position = one learnable embedding shared by all text queries) beside the Q
    learnable ones, giving Q + M proposals: ``pred_logits`` is (B, Q+M, M+1), ``pred_masks`` (B, Q+M, h, w);
    the learnable queries come first. Padded prompts give padded text queries: their content is zeroed,
    no other query attends to them, and the model reports them in ``proposal_mask`` (False = padding).

Text tokens: the prompts' CLIP text embeddings (B, M, C), projected to the decoder width by
Linear + LayerNorm (:class:`TextProjection`). Padded prompts (``text_mask`` False) are excluded as keys
everywhere, so adding a padded prompt changes none of the real outputs. In the concat modes the text
tokens get one shared learnable position embedding (the prompts are an unordered set).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pmp.config import TEXT_MODES
from pmp.modeling.layers import SelfAttentionLayer, xavier_init, with_pos


@dataclass
class TextTokens:
    """Projected prompts. ``padding_mask`` uses nn.MultiheadAttention's convention: True = ignore."""

    tokens: torch.Tensor  # (B, M, hidden_dim)
    padding_mask: torch.Tensor  # (B, M) bool
    all_real: bool = False  # True when no prompt is padding: attention can skip the masks (same result, faster)


@dataclass
class QuerySequence:
    """The token sequence a decoder updates layer by layer.

    The first ``num_proposals`` tokens make predictions; any further tokens (the text tokens of
    ``"concat"``) only carry information. ``key_padding_mask`` (B, N), True = not attended to as a key
    in self-attention, or None when every token is real.
    """

    x: torch.Tensor  # (B, N, hidden_dim)
    pos: torch.Tensor  # (B, N, hidden_dim)
    key_padding_mask: torch.Tensor | None
    num_proposals: int
    proposal_mask: torch.Tensor | None = None  # (B, num_proposals) True = real proposal; None = all real


class TextProjection(nn.Module):
    """CLIP text embedding (C = text_dim) -> decoder token (hidden_dim): Linear then LayerNorm.

    The LayerNorm puts text tokens on the same scale as the post-norm query stream they are mixed with.
    """

    def __init__(self, text_dim: int, hidden_dim: int):
        super().__init__()
        self.linear = nn.Linear(text_dim, hidden_dim)
        self.norm = nn.LayerNorm(hidden_dim)

    def forward(self, text_embeds: torch.Tensor) -> torch.Tensor:
        return self.norm(self.linear(text_embeds))


class TextCrossAttention(nn.Module):
    """PMP's text cross-attention (the Q' of Eq. 5), placed right before an image cross-attention.

    Placement of residual and norm (the paper writes only Q' = softmax(Q K_t^T) V_t):
        post-norm (default, like every other decoder sub-layer):  Q' = LN(Q + MHA(Q + pos, T, T))
        pre-norm (``decoder.pre_norm``):                           Q' = Q + MHA(LN(Q) + pos, T, T)
    and the following image cross-attention is the decoder's own unchanged layer with Q' as its input:
        X_l = LN(Q' + MHA(Q' + pos, K_l + pos_l, V_l)),
    i.e. its residual goes onto Q', which is what stacking a Mask2Former ``CrossAttentionLayer`` for the
    text in front of the image one does.

    Why a residual: without one, Q' is a convex combination of the text values and loses the query's
    identity - with a single prompt (M = 1) the softmax is 1 and every query would become the same
    vector V_t, so all queries would attend to the same pixels. With the residual each query keeps its
    own content and adds what the prompts say. Why the image residual goes onto Q' rather than X_{l-1}
    (Eq. 5 taken literally): then the text information also reaches the query stream directly, not only
    through which pixels are attended, and the block is a plain drop-in layer (as in the authors'
    Mask2Former-based code base). Keys carry no position embedding: prompts are an unordered set.
    The query position embedding is added to the query, as in every Mask2Former attention.

    Padded prompts are excluded with ``key_padding_mask``; a batch element whose prompts are all padding
    gets a zero text update (instead of the NaN of an attention over no keys).
    """

    def __init__(self, dim: int, num_heads: int, pre_norm: bool = False):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.pre_norm = pre_norm
        xavier_init(self)

    def forward(self, x: torch.Tensor, query_pos: torch.Tensor | None, text: TextTokens) -> torch.Tensor:
        """x, query_pos: (B, N, C) -> Q' (B, N, C)."""
        query = self.norm(x) if self.pre_norm else x
        if text.all_real:  # the common case at inference: no masks to build or apply
            attended = self.attn(with_pos(query, query_pos), text.tokens, text.tokens, need_weights=False)[0]
            return x + attended if self.pre_norm else self.norm(x + attended)
        padding = text.padding_mask
        has_text = ~padding.all(dim=1)  # (B,)
        padding = padding & has_text[:, None]  # all-padding rows: attend to anything, zeroed below
        attended = self.attn(
            with_pos(query, query_pos), text.tokens, text.tokens, key_padding_mask=padding, need_weights=False
        )[0]
        attended = attended * has_text[:, None, None].to(attended.dtype)
        return x + attended if self.pre_norm else self.norm(x + attended)


class TextConditioning(nn.Module):
    """The text path of the decoder for one ``text_mode``; every hook is the identity for ``"none"``.

    Hooks, in the order a decoder layer meets them:
        :meth:`start` - build the initial token sequence from the learnable queries (and the text);
        :meth:`self_attend` - run the layer's self-attention (``concat_drop`` appends the text here);
        :meth:`before_cross_attention` - ``pmp``'s Q' step right before the image cross-attention.
    """

    def __init__(self, mode: str, text_dim: int, hidden_dim: int, num_heads: int, num_layers: int, pre_norm: bool = False):
        super().__init__()
        if mode not in TEXT_MODES:
            raise ValueError(f"config field decoder.text_mode={mode!r} is not supported; accepted: {', '.join(TEXT_MODES)}")
        self.mode = mode
        if mode == "none":
            return  # the baseline: no text parameters at all
        self.project = TextProjection(text_dim, hidden_dim)
        if mode == "pmp":
            self.cross_attention = nn.ModuleList(
                TextCrossAttention(hidden_dim, num_heads, pre_norm) for _ in range(num_layers)
            )
        else:
            self.text_pos = nn.Embedding(1, hidden_dim)  # shared position embedding of all text tokens

    def encode(self, text_embeds: torch.Tensor, text_mask: torch.Tensor) -> TextTokens | None:
        """text_embeds (B, M, C), text_mask (B, M) True = real prompt -> projected tokens (None for the baseline)."""
        if self.mode == "none":
            return None
        return TextTokens(self.project(text_embeds), ~text_mask, all_real=bool(text_mask.all()))

    def _text_pos(self, text: TextTokens) -> torch.Tensor:
        return self.text_pos.weight.expand(text.tokens.shape[0], text.tokens.shape[1], -1)

    def start(self, queries: torch.Tensor, query_pos: torch.Tensor, text: TextTokens | None) -> QuerySequence:
        """queries, query_pos: (B, Q, C) -> the sequence the decoder layers will update."""
        num_queries = queries.shape[1]
        if self.mode in ("concat", "text_queries"):
            assert text is not None
            tokens = text.tokens
            if self.mode == "text_queries":
                tokens = tokens.masked_fill(text.padding_mask[..., None], 0.0)  # padded text queries: empty content
            x = torch.cat([queries, tokens], dim=1)  # (B, Q+M, C)
            pos = torch.cat([query_pos, self._text_pos(text)], dim=1)
            query_padding = torch.zeros_like(text.padding_mask[:, :1]).expand(-1, num_queries)
            key_padding = torch.cat([query_padding, text.padding_mask], dim=1)  # (B, Q+M)
            if self.mode == "concat":
                return QuerySequence(x, pos, key_padding, num_proposals=num_queries)
            return QuerySequence(x, pos, key_padding, num_proposals=x.shape[1], proposal_mask=~key_padding)
        return QuerySequence(queries, query_pos, None, num_proposals=num_queries)

    def self_attend(self, layer: SelfAttentionLayer, seq: QuerySequence, text: TextTokens | None) -> torch.Tensor:
        """One self-attention layer over the sequence; ``concat_drop`` appends the fixed text tokens first."""
        if self.mode != "concat_drop":
            return layer(seq.x, seq.pos, key_padding_mask=seq.key_padding_mask)
        assert text is not None
        num_tokens = seq.x.shape[1]
        x = torch.cat([seq.x, text.tokens], dim=1)  # (B, N+M, C)
        pos = torch.cat([seq.pos, self._text_pos(text)], dim=1)
        own_padding = seq.key_padding_mask
        if own_padding is None:
            own_padding = torch.zeros_like(text.padding_mask[:, :1]).expand(-1, num_tokens)
        padding = torch.cat([own_padding, text.padding_mask], dim=1)
        return layer(x, pos, key_padding_mask=padding)[:, :num_tokens]  # drop the text tokens again

    def before_cross_attention(self, layer_index: int, seq: QuerySequence, text: TextTokens | None) -> torch.Tensor:
        """``pmp``: Q' of Eq. 5 for decoder layer ``layer_index``; the identity for every other mode."""
        if self.mode != "pmp":
            return seq.x
        assert text is not None
        return self.cross_attention[layer_index](seq.x, seq.pos, text)
