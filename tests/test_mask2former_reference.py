"""Mask2Former's decoder (Eq. 4) and PMP's text attention (Eq. 5) written out with torch.nn.functional on our
decoder's weights, against pmp.modeling.transformer_decoder.

The reference follows Mask2Former's ``mask2former_transformer_decoder.py`` (``MultiScaleMaskedTransformerDecoder
.forward`` and ``forward_prediction_heads``, post-norm layers, sequence-first), with its variable names: the
attention mask from the previous prediction (sigmoid < 0.5 blocked, a query blocked everywhere unblocked), the
level embedding added to the projected features, the sine position on the keys, the query position on the
queries. PMP's Q' is Eq. 5 taken literally: Q' = softmax(Q K_t^T) V_t over the projected prompts (padded
prompts excluded), then the image cross-attention runs on Q' and its residual goes onto X_{l-1}.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pmp.config import DecoderConfig
from pmp.modeling.transformer_decoder import DetrDecoderLayer, build_transformer_decoder
from tests.messages import raises_exactly
from tests.ovseg_reference import _sine

HIDDEN, HEADS, QUERIES, LAYERS, TEXT_DIM, IN_CHANNELS = 16, 2, 4, 4, 12, 8


def _mha(q, k, v, sd, name, attn_mask=None, key_padding_mask=None):
    return F.multi_head_attention_forward(
        q, k, v, HIDDEN, HEADS, sd[f"{name}.in_proj_weight"], sd[f"{name}.in_proj_bias"], None, None, False, 0.0,
        sd[f"{name}.out_proj.weight"], sd[f"{name}.out_proj.bias"], training=False, need_weights=False,
        attn_mask=attn_mask, key_padding_mask=key_padding_mask,
    )[0]  # fmt: skip


def _ln(x, sd, name):
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"])


def _prediction_heads(output, mask_features, size, sd):
    decoder_output = _ln(output, sd, "decoder_norm").transpose(0, 1)  # (B, Q, C)
    mask_embed = decoder_output
    for index in range(3):
        layer = f"mask_head.mask_embed.layers.{index}"
        mask_embed = F.linear(mask_embed, sd[f"{layer}.weight"], sd[f"{layer}.bias"])
        mask_embed = F.relu(mask_embed) if index < 2 else mask_embed
    outputs_mask = torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)
    attn_mask = F.interpolate(outputs_mask, size=size, mode="bilinear", align_corners=False)
    attn_mask = attn_mask.sigmoid().flatten(2).unsqueeze(1).repeat(1, HEADS, 1, 1).flatten(0, 1) < 0.5
    return decoder_output, outputs_mask, attn_mask


def mask2former_forward(x, mask_features, sd, text=None, text_padding=None):
    """Mask2Former's decoder on [f32, f16, f8]; with ``text`` (B, M, C_text), PMP's Eq. 5 before each
    cross-attention. -> per prediction (queries after decoder_norm (B, Q, C), mask logits (B, Q, H, W))."""
    src, pos, size_list = [], [], []
    for i, feature in enumerate(x):
        size_list.append(feature.shape[-2:])
        pos.append(_sine(feature, HIDDEN // 2).flatten(2).permute(2, 0, 1))
        projected = F.conv2d(feature, sd[f"input_proj.{i}.weight"], sd[f"input_proj.{i}.bias"])
        src.append((projected.flatten(2) + sd["level_embed.weight"][i][None, :, None]).permute(2, 0, 1))
    bs = mask_features.shape[0]
    query_embed = sd["query_embed.weight"].unsqueeze(1).repeat(1, bs, 1)
    output = sd["query_feat.weight"].unsqueeze(1).repeat(1, bs, 1)
    if text is not None:
        tokens = _ln(F.linear(text, sd["text.project.linear.weight"], sd["text.project.linear.bias"]), sd,
                     "text.project.norm").transpose(0, 1)  # fmt: skip
    decoder_output, outputs_mask, attn_mask = _prediction_heads(output, mask_features, size_list[0], sd)
    predictions = [(decoder_output, outputs_mask)]
    for i in range(LAYERS):
        level_index = i % 3
        attn_mask[torch.where(attn_mask.sum(-1) == attn_mask.shape[-1])] = False
        query = output
        if text is not None:  # Eq. 5: Q' = softmax(Q K_t^T) V_t, no residual, no norm
            name = f"text.cross_attention.{i}.multihead_attn"
            query = _mha(output + query_embed, tokens, tokens, sd, name, key_padding_mask=text_padding)
        name = f"cross_attention_layers.{i}"
        attended = _mha(query + query_embed, src[level_index] + pos[level_index], src[level_index], sd,
                        f"{name}.multihead_attn", attn_mask=attn_mask)  # fmt: skip
        output = _ln(output + attended, sd, f"{name}.norm")
        name = f"self_attention_layers.{i}"
        q = k = output + query_embed
        output = _ln(output + _mha(q, k, output, sd, f"{name}.self_attn"), sd, f"{name}.norm")
        name = f"ffn_layers.{i}"
        inner = F.relu(F.linear(output, sd[f"{name}.linear1.weight"], sd[f"{name}.linear1.bias"]))
        ffn = F.linear(inner, sd[f"{name}.linear2.weight"], sd[f"{name}.linear2.bias"])
        output = _ln(output + ffn, sd, f"{name}.norm")
        size = size_list[(i + 1) % 3]
        decoder_output, outputs_mask, attn_mask = _prediction_heads(output, mask_features, size, sd)
        predictions.append((decoder_output, outputs_mask))
    return predictions


@pytest.mark.parametrize("text_mode", ["none", "pmp"])
def test_the_decoder_computes_mask2formers_forward(text_mode: str) -> None:
    torch.manual_seed(0)
    config = DecoderConfig(hidden_dim=HIDDEN, num_queries=QUERIES, num_layers=LAYERS, num_heads=HEADS,
                           dim_feedforward=32, text_mode=text_mode)  # fmt: skip
    decoder = build_transformer_decoder(config, IN_CHANNELS, HIDDEN, TEXT_DIM).eval()
    features = [torch.randn(2, IN_CHANNELS, 2 * s, 3 * s) for s in (1, 2, 4)]  # strides 32, 16, 8
    mask_features = torch.randn(2, HIDDEN, 16, 24)
    text = torch.randn(2, 3, TEXT_DIM)
    text_mask = torch.tensor([[True, True, False], [True, True, True]])  # one padded prompt
    sd = decoder.state_dict()
    with torch.no_grad():
        ours = decoder(features, mask_features, text, text_mask).predictions
        theirs = mask2former_forward(features, mask_features, sd, *((text, ~text_mask) if text_mode == "pmp" else ()))
    assert len(ours) == len(theirs) == LAYERS + 1
    for mine, (queries, masks) in zip(ours, theirs):
        torch.testing.assert_close(mine.queries, queries, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(mine.masks, masks, rtol=1e-4, atol=1e-4)


def test_the_attention_mask_at_its_edges_is_mask2formers() -> None:
    """Every query predicts one mask (the mask embedding's last layer reduced to its bias b): in image 0 it
    is empty (Mask2Former then lets the query attend everywhere, image by image); in image 1 its logit is
    exactly 0 on the left half (sigmoid 0.5: not blocked) and negative on the right."""
    torch.manual_seed(0)
    config = DecoderConfig(hidden_dim=HIDDEN, num_queries=QUERIES, num_layers=LAYERS, num_heads=HEADS,
                           dim_feedforward=32)  # fmt: skip
    decoder = build_transformer_decoder(config, IN_CHANNELS, HIDDEN, TEXT_DIM).eval()
    last = decoder.mask_head.mask_embed.layers[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.rand(HIDDEN) + 0.1)
    depth = torch.ones(2, 1, 16, 24)  # logit = -depth * |b|^2
    depth[1, :, :, :12] = 0.0
    mask_features = -depth * last.bias.detach()[None, :, None, None]
    features = [torch.randn(2, IN_CHANNELS, 2 * s, 3 * s) for s in (1, 2, 4)]
    text, text_mask = torch.randn(2, 1, TEXT_DIM), torch.ones(2, 1, dtype=torch.bool)
    with torch.no_grad():
        ours = decoder(features, mask_features, text, text_mask).predictions
        theirs = mask2former_forward(features, mask_features, decoder.state_dict())
    assert (ours[0].masks[1, :, :, :12] == 0).all() and (ours[0].masks[0] < 0).all()
    for mine, (queries, masks) in zip(ours, theirs):
        assert torch.isfinite(mine.queries).all()
        torch.testing.assert_close(mine.queries, queries, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["mask2former", "maskformer"])
def test_pre_norm_and_dropout_reach_every_layer(kind: str) -> None:
    config = DecoderConfig(kind=kind, hidden_dim=HIDDEN, num_queries=QUERIES, num_layers=2, num_heads=HEADS,
                           dim_feedforward=32, text_mode="pmp", pre_norm=True, dropout=0.25)  # fmt: skip
    decoder = build_transformer_decoder(config, IN_CHANNELS, HIDDEN, TEXT_DIM)
    if kind == "maskformer":
        layers = [part for layer in decoder.layers for part in (layer.self_attn, layer.cross_attn, layer.ffn)]
    else:
        layers = [*decoder.self_attention_layers, *decoder.cross_attention_layers, *decoder.ffn_layers]
    assert len(layers) == 6
    for layer in layers:
        assert (layer.pre_norm, layer.dropout.p) == (True, 0.25)
    assert all(layer.pre_norm for layer in decoder.text.cross_attention)


def test_an_unknown_decoder_kind_names_the_field_and_the_accepted_kinds() -> None:
    message = "config field decoder.kind='detr' is not supported; accepted: mask2former, maskformer"
    with raises_exactly(message):
        build_transformer_decoder(DecoderConfig(kind="detr"), IN_CHANNELS, HIDDEN, TEXT_DIM)


@pytest.mark.parametrize("kind", ["mask2former", "maskformer"])
def test_text_queries_build_no_learnable_queries(kind: str) -> None:
    config = DecoderConfig(kind=kind, hidden_dim=HIDDEN, num_queries=QUERIES, num_layers=2, num_heads=HEADS,
                           dim_feedforward=32, text_mode="text_queries")  # fmt: skip
    names = build_transformer_decoder(config, IN_CHANNELS, HIDDEN, TEXT_DIM).state_dict()
    assert not [name for name in names if name.startswith(("query_feat", "query_embed"))]


def test_detr_layers_default_to_post_norm_without_dropout_and_mask2former_wants_three_levels() -> None:
    layer = DetrDecoderLayer(HIDDEN, HEADS, 32)
    assert {(part.pre_norm, part.dropout.p) for part in (layer.self_attn, layer.cross_attn, layer.ffn)} == {(False, 0)}
    decoder = build_transformer_decoder(DecoderConfig(hidden_dim=HIDDEN, num_heads=HEADS), IN_CHANNELS, HIDDEN, 4)
    with pytest.raises(ValueError, match="^expected 3 feature levels, got 2$"):
        decoder([torch.zeros(1, IN_CHANNELS, 2, 2)] * 2, torch.zeros(1, HIDDEN, 8, 8), torch.zeros(1, 1, 4),
                torch.ones(1, 1, dtype=torch.bool))  # fmt: skip
