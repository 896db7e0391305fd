"""How the prompts reach the mask-proposal decoder: PMP (Eq. 5) and the Fig. 5 ablations, in one place.

The decoders (:mod:`pmp.modeling.transformer_decoder`) are the unchanged Mask2Former / MaskFormer
decoders; they call the hooks of :class:`TextConditioning` at fixed points, and every hook is the
identity in the baseline. ``config.decoder.text_mode`` picks the behaviour (N learnable queries,
M prompts; P = the number of proposals the decoder outputs):

``"none"`` (P = N) - baseline (OVSeg / FC-CLIP style). The decoder never sees the prompts; the
    proposals are the same whatever the prompts are. No text parameters are created, so the
    baseline's module tree, state dict and arithmetic are exactly Mask2Former's / MaskFormer's.

``"pmp"`` (P = N) - the paper's method, Eq. 5, taken literally. Before *each* image cross-attention
    the queries cross-attend to the text tokens, and the text-aware queries Q' drive the image
    cross-attention, whose residual goes onto the decoder's running queries X_{l-1}:
        Q'_l = softmax(Q_l K_t^T) V_t,    X_l = softmax(Q'_l K_l^T) V_l + X_{l-1}.
    See :class:`TextCrossAttention`.

``"pmp_residual"`` (P = N) - a variant of Eq. 5 that is not the paper's formula: Q' = LN(Q + MHA(Q, T, T))
    (a residual and a norm around the text attention), and the image cross-attention's residual goes
    onto Q' instead of X_{l-1}, so the text also enters the query stream directly. The bundled PMP
    checkpoint was trained in this mode; both are kept so that both can be measured.

The three Fig. 5 ablations, as Sec. 4.4 of the paper describes them:

``"concat"`` (Fig. 5a, P = N + M) - "directly concatenate the M text tokens with the N learnable query
    embeddings. This will form M+N query tokens ... to produce the M+N mask embeddings at the end."
    The projected text tokens join the query sequence before the first layer, go through every
    sub-layer, and every one of the N + M outputs is a proposal (the learnable queries first).

``"concat_drop"`` (Fig. 5b, P = N) - "before each transformer decoding (cross-attention in Eq. 4), we
    concatenate the text tokens with the query tokens ... drop the text tokens after the decoding."
    Our reading: at the start of each decoder layer the fixed projected text tokens are appended to
    the N queries, the extended sequence goes through the whole layer (image cross-attention,
    self-attention, FFN), and the M text outputs are dropped at the layer's end, so every layer
    outputs N embeddings. Why the whole layer: if the text tokens joined only the cross-attention and
    were dropped right after it, the queries would be provably unchanged - cross-attention is
    computed per query token, so extra query tokens change nobody else's output (a test shows it).
    The information can only flow through the self-attention, so "the decoding" must be the layer.
    In Mask2Former's masked attention the text tokens, having no mask, attend to every pixel.

``"text_queries"`` (Fig. 5c, P = M) - "we solely use the M text tokens as the query tokens ... it will
    generate M mask embeddings at the end": no learnable queries at all (none are built), one proposal
    per prompt.

Text tokens: the prompts' CLIP text embeddings (B, M, C), projected to the decoder width by Linear +
LayerNorm (:class:`TextProjection`). Padded prompts (``text_mask`` False) are excluded as keys
everywhere, so adding a padded prompt changes none of the real outputs. Where text tokens become part
of the query sequence (the ablations) they get one shared learnable position embedding (prompts are an
unordered set), and padded ones get zero content; in ``concat`` and ``text_queries`` the proposals made
from padded prompts are reported in ``proposal_mask`` (False = padding) and never enter the loss.

Fair comparison: the text parameters are initialised from a side stream of the random generator
(:func:`side_stream`) that leaves the global stream untouched, so for a given seed every parameter two
modes share starts from the same values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from pmp.config import TEXT_MODES
from pmp.modeling.layers import CrossAttentionLayer, SelfAttentionLayer


@contextmanager
def side_stream(tag: str) -> Iterator[None]:
    """Run the block on a random stream of its own, leaving torch's global CPU stream where it was.

    The side stream's seed is a hash of the global generator's current state and ``tag``: it is
    reproducible for a given seed, differs between tags and between successive models, and consumes
    nothing, so modules built before and after the block get the values they would get without it.
    """
    state = torch.random.get_rng_state()
    digest = hashlib.blake2b(state.numpy().tobytes() + tag.encode(), digest_size=8).digest()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int.from_bytes(digest, "little") >> 1)
        yield


@dataclass
class TextTokens:
    """Projected prompts. ``padding_mask`` uses nn.MultiheadAttention's convention: True = ignore."""

    tokens: torch.Tensor  # (B, M, hidden_dim)
    padding_mask: torch.Tensor  # (B, M) bool
    all_real: bool = False  # True when no prompt is padding: attention can skip the masks (same result, faster)


@dataclass
class QuerySequence:
    """The token sequence a decoder updates layer by layer.

    The first ``num_proposals`` tokens make predictions; any further tokens (``concat_drop``'s text
    tokens inside a layer) only carry information. ``key_padding_mask`` (B, S), True = not attended
    to as a key in self-attention, or None when every token is real.
    """

    x: torch.Tensor  # (B, S, hidden_dim)
    pos: torch.Tensor  # (B, S, hidden_dim)
    key_padding_mask: torch.Tensor | None
    num_proposals: int
    proposal_mask: torch.Tensor | None = None  # (B, num_proposals) True = real proposal; None = all real

    @property
    def num_extra(self) -> int:
        """Tokens after the proposals (text tokens that make no prediction)."""
        return self.x.shape[1] - self.num_proposals


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


class TextCrossAttention(CrossAttentionLayer):
    """PMP's text cross-attention, the Q' of Eq. 5: the decoder's own cross-attention layer with the
    prompts as its memory, placed right before an image cross-attention.

    ``residual=False`` (``text_mode="pmp"``, Eq. 5 literally):
        Q' = MHA(Q + pos, T, T)                      (no residual, no norm: Q' = softmax(Q K_t^T) V_t)
        X_l = LN(X_{l-1} + MHA(Q' + pos, K_l, V_l))  (the decoder's own image layer, residual onto X_{l-1})
    ``residual=True`` (``text_mode="pmp_residual"``, not the paper's formula):
        Q' = LN(Q + MHA(Q + pos, T, T))              (pre-norm: Q' = Q + MHA(LN(Q) + pos, T, T))
        X_l = LN(Q' + MHA(Q' + pos, K_l, V_l))       (the image residual goes onto Q')
    With ``pre_norm`` the literal form normalises only the attention's input: Q' = MHA(LN(Q) + pos, T, T).

    MHA includes the usual input and output projections (Q = X W_q, K_t = T W_k, V_t = T W_v). The query
    position embedding is added before every attention, as in every Mask2Former attention; in the
    literal form it is also what keeps the queries apart when there is a single prompt (the softmax
    over one key is 1, so Q' is the same vector for every query). Text keys carry no position: prompts
    are an unordered set.

    Padded prompts are excluded with ``key_padding_mask``; a batch element whose prompts are all padding
    gets a zero text update (instead of the NaN of an attention over no keys).
    """

    def __init__(self, dim: int, num_heads: int, pre_norm: bool = False, residual: bool = False):
        super().__init__(dim, num_heads, pre_norm)
        self.residual = residual
        if not (residual or pre_norm):
            self.norm = None  # the literal Q' has no norm

    def forward(self, x: torch.Tensor, query_pos: torch.Tensor | None, text: TextTokens) -> torch.Tensor:  # type: ignore[override]
        """x, query_pos: (B, N, C) -> Q' (B, N, C)."""
        query = self.norm(x) if self.pre_norm else x
        if text.all_real:  # the common case at inference: no masks to build or apply
            attended = self.attend(query, text.tokens, pos=None, query_pos=query_pos)
        else:
            has_text = ~text.padding_mask.all(dim=1)  # (B,)
            padding = text.padding_mask & has_text[:, None]  # all-padding rows: attend to anything, zeroed below
            attended = self.attend(query, text.tokens, pos=None, query_pos=query_pos, key_padding_mask=padding)
            attended = attended * has_text[:, None, None].to(attended.dtype)
        return self.add_residual(x, attended) if self.residual else attended


class TextConditioning(nn.Module):
    """The text path of the decoder for one ``text_mode``; every hook is the identity for ``"none"``.

    Hooks, in the order a decoder meets them:
        :meth:`start` - build the initial token sequence from the learnable queries and/or the text;
        :meth:`enter_layer` / :meth:`leave_layer` - ``concat_drop`` appends the text tokens for one layer;
        :meth:`before_cross_attention` - PMP's Q' right before the image cross-attention.
    """

    def __init__(
        self, mode: str, text_dim: int, hidden_dim: int, num_heads: int, num_layers: int, pre_norm: bool = False
    ):
        super().__init__()
        if mode not in TEXT_MODES:
            raise ValueError(
                f"config field decoder.text_mode={mode!r} is not supported; accepted: {', '.join(TEXT_MODES)}"
            )
        self.mode = mode
        if mode == "none":
            return  # the baseline: no text parameters at all
        with side_stream("text_conditioning"):
            self.project = TextProjection(text_dim, hidden_dim)
            if mode in ("pmp", "pmp_residual"):
                residual = mode == "pmp_residual"
                self.cross_attention = nn.ModuleList(
                    TextCrossAttention(hidden_dim, num_heads, pre_norm, residual) for _ in range(num_layers)
                )
            else:
                self.text_pos = nn.Embedding(1, hidden_dim)  # shared position embedding of all text tokens

    def encode(self, text_embeds: torch.Tensor, text_mask: torch.Tensor) -> TextTokens | None:
        """text_embeds (B, M, C), text_mask (B, M) True = real prompt -> projected tokens (None for the baseline)."""
        if self.mode == "none":
            return None
        return TextTokens(self.project(text_embeds), ~text_mask, all_real=bool(text_mask.all()))

    def _as_queries(self, text: TextTokens) -> tuple[torch.Tensor, torch.Tensor]:
        """Text tokens as query-sequence members: padded ones get zero content; one shared position."""
        content = text.tokens if text.all_real else text.tokens.masked_fill(text.padding_mask[..., None], 0.0)
        pos = self.text_pos.weight.expand(text.tokens.shape[0], text.tokens.shape[1], -1)
        return content, pos  # (B, M, C) each

    def start(
        self, queries: torch.Tensor | None, query_pos: torch.Tensor | None, text: TextTokens | None
    ) -> QuerySequence:
        """queries, query_pos: (B, N, C) learnable queries (None for ``text_queries``) -> the initial sequence."""
        if self.mode == "text_queries":
            assert text is not None
            content, pos = self._as_queries(text)
            padding = None if text.all_real else text.padding_mask
            return QuerySequence(
                content, pos, padding, num_proposals=content.shape[1], proposal_mask=~text.padding_mask
            )
        assert queries is not None and query_pos is not None
        if self.mode == "concat":
            assert text is not None
            content, pos = self._as_queries(text)
            x = torch.cat([queries, content], dim=1)  # (B, N+M, C)
            padding = _append_padding(None, queries.shape[1], text.padding_mask)  # (B, N+M)
            return QuerySequence(
                x,
                torch.cat([query_pos, pos], dim=1),
                None if text.all_real else padding,
                x.shape[1],
                proposal_mask=~padding,
            )
        return QuerySequence(queries, query_pos, None, num_proposals=queries.shape[1])

    def enter_layer(self, seq: QuerySequence, text: TextTokens | None) -> QuerySequence:
        """``concat_drop``: the sequence with the fixed text tokens appended (B, N+M, C); else ``seq``."""
        if self.mode != "concat_drop":
            return seq
        assert text is not None
        content, pos = self._as_queries(text)
        padding = None if text.all_real else _append_padding(seq.key_padding_mask, seq.x.shape[1], text.padding_mask)
        return QuerySequence(
            torch.cat([seq.x, content], dim=1),
            torch.cat([seq.pos, pos], dim=1),
            padding,
            seq.num_proposals,
            seq.proposal_mask,
        )

    def leave_layer(self, seq: QuerySequence, entered: QuerySequence) -> QuerySequence:
        """Undo :meth:`enter_layer`: keep the first tokens of ``entered`` (its updated x), drop the text."""
        if entered is seq:
            return seq
        seq.x = entered.x[:, : seq.x.shape[1]]
        return seq

    def before_cross_attention(
        self, layer_index: int, seq: QuerySequence, text: TextTokens | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> (the residual stream the image cross-attention updates, its attention query or None = the stream).

        ``pmp``: (X_{l-1}, Q'); ``pmp_residual``: (Q', None); every other mode: (X_{l-1}, None).
        Only the first ``num_proposals`` tokens are text-conditioned (in PMP modes that is all of them).
        """
        if self.mode not in ("pmp", "pmp_residual"):
            return seq.x, None
        assert text is not None
        conditioned = self.cross_attention[layer_index](seq.x, seq.pos, text)
        return (conditioned, None) if self.mode == "pmp_residual" else (seq.x, conditioned)


def _append_padding(own: torch.Tensor | None, num_own: int, text_padding: torch.Tensor) -> torch.Tensor:
    """Key padding of a sequence extended by text tokens: (B, S) or None (all real), (B, M) -> (B, S+M)."""
    if own is None:
        own = torch.zeros_like(text_padding[:, :1]).expand(-1, num_own)
    return torch.cat([own, text_padding], dim=1)


def self_attend(layer: SelfAttentionLayer, seq: QuerySequence) -> torch.Tensor:
    """One self-attention layer over the whole sequence, padded tokens excluded as keys."""
    return layer(seq.x, seq.pos, key_padding_mask=seq.key_padding_mask)
