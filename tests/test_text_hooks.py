"""The hooks through which the prompts reach the decoder (pmp/modeling/text_conditioning.py), one at a time:
what sequence each Fig. 5 mode builds, which settings reach PMP's text layers, the modes' error message."""

import pytest
import torch

from pmp.config import TEXT_MODES
from pmp.modeling.layers import SelfAttentionLayer
from pmp.modeling.text_conditioning import QuerySequence, TextConditioning, TextCrossAttention, TextTokens, self_attend
from tests.messages import raises_exactly

B, N, M, C = 2, 3, 2, 8
TEXT_MASK = torch.tensor([[True, False], [True, True]])  # the first image's second prompt is padding


def _hooks(mode: str, pre_norm: bool = False) -> TextConditioning:
    torch.manual_seed(0)
    return TextConditioning(mode, text_dim=4, hidden_dim=C, num_heads=2, num_layers=2, pre_norm=pre_norm)


def _queries() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(B, N, C), torch.randn(B, N, C)


def test_an_unknown_mode_names_the_field_and_the_accepted_modes() -> None:
    message = f"config field decoder.text_mode='fuse' is not supported; accepted: {', '.join(TEXT_MODES)}"
    with raises_exactly(message):
        _hooks("fuse")


@pytest.mark.parametrize("mode, residual", [("pmp", False), ("pmp_residual", True)])
@pytest.mark.parametrize("pre_norm", [False, True])
def test_pre_norm_and_the_residual_reach_every_text_layer(mode: str, residual: bool, pre_norm: bool) -> None:
    for layer in _hooks(mode, pre_norm=pre_norm).cross_attention:
        assert (layer.pre_norm, layer.residual) == (pre_norm, residual)
        assert (layer.norm is None) == (not (residual or pre_norm))  # the literal Q' has no norm
    default = TextCrossAttention(C, 2)
    assert (default.pre_norm, default.residual, default.norm) == (False, False, None)


def test_concat_appends_the_prompts_as_queries_with_the_shared_text_position() -> None:
    hooks = _hooks("concat")
    queries, query_pos = _queries()
    text = hooks.encode(torch.randn(B, M, 4), TEXT_MASK)
    seq = hooks.start(queries, query_pos, text)
    text_pos = hooks.text_pos.weight[0]
    assert torch.equal(seq.x[:, :N], queries) and torch.equal(seq.x[:, N:], text.tokens * TEXT_MASK[..., None])
    assert torch.equal(seq.pos[:, :N], query_pos) and torch.equal(seq.pos[:, N:], text_pos.expand(B, M, C))
    assert seq.x[0, N + 1].abs().sum() == 0  # a padded prompt joins with zero content
    assert seq.proposal_mask.tolist() == [[True] * N + [True, False], [True] * (N + M)]


def test_text_queries_are_the_prompts_with_the_shared_text_position() -> None:
    hooks = _hooks("text_queries")
    text = hooks.encode(torch.randn(B, M, 4), TEXT_MASK)
    seq = hooks.start(None, None, text)
    assert torch.equal(seq.x, text.tokens * TEXT_MASK[..., None])
    assert torch.equal(seq.pos, hooks.text_pos.weight[0].expand(B, M, C))
    assert seq.key_padding_mask.tolist() == [[False, True], [False, False]]


def test_concat_drop_extends_each_layer_with_the_text_and_its_position() -> None:
    hooks = _hooks("concat_drop")
    queries, query_pos = _queries()
    text = hooks.encode(torch.randn(B, M, 4), TEXT_MASK)
    seq = hooks.start(queries, query_pos, text)
    entered = hooks.enter_layer(seq, text)
    assert torch.equal(entered.x, torch.cat([queries, text.tokens * TEXT_MASK[..., None]], dim=1))
    assert torch.equal(entered.pos, torch.cat([query_pos, hooks.text_pos.weight[0].expand(B, M, C)], dim=1))
    assert entered.key_padding_mask.tolist() == [[False] * N + [False, True], [False] * (N + M)]
    assert hooks.leave_layer(seq, entered).x.shape == (B, N, C)


def test_self_attention_sees_the_positions() -> None:
    torch.manual_seed(0)
    layer = SelfAttentionLayer(C, 2)
    x, pos = _queries()
    seq = QuerySequence(x, pos, None, num_proposals=N)
    assert torch.equal(self_attend(layer, seq), layer(x, pos))
    assert not torch.allclose(self_attend(layer, seq), layer(x, None))


def test_pre_norm_text_attention_reads_the_normalised_queries() -> None:
    # Q' = MHA(LN(Q) + pos, T, T): the literal form with pre_norm normalises only the attention's input
    torch.manual_seed(0)
    layer = TextCrossAttention(C, 2, pre_norm=True).eval()
    x, pos = _queries()
    tokens = torch.randn(B, M, C)
    text = TextTokens(tokens, torch.zeros(B, M, dtype=torch.bool), all_real=True)
    attn = layer.multihead_attn
    query = torch.nn.functional.layer_norm(x, (C,), layer.norm.weight, layer.norm.bias) + pos
    expected = attn(query, tokens, tokens, need_weights=False)[0]
    torch.testing.assert_close(layer(x, pos, text), expected)
