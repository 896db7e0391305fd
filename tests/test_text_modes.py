"""The paper's text modes exactly: Eq. 5 as written, the Fig. 5 ablations' proposal counts, fair initialisation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pmp.config import TEXT_MODES
from pmp.modeling import build_mask_proposal_model
from pmp.modeling.layers import CrossAttentionLayer
from pmp.modeling.text_conditioning import QuerySequence, TextConditioning, TextTokens
from tests.test_modeling import NUM_QUERIES, SIZE, TEXT_DIM, tiny_config, tiny_model, unit

DIM = 8


def single_head_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mha: torch.nn.MultiheadAttention
) -> torch.Tensor:
    """softmax(Q W_q (K W_k)^T / sqrt(d)) V W_v W_o + biases, written out for one head."""
    w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    b_q, b_k, b_v = mha.in_proj_bias.chunk(3)
    q, k, v = query @ w_q.T + b_q, key @ w_k.T + b_k, value @ w_v.T + b_v
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return (weights @ v) @ mha.out_proj.weight.T + mha.out_proj.bias


def test_pmp_is_eq5_literally() -> None:
    """Q' = softmax(Q K_t^T) V_t, then X_l = LN(X_{l-1} + softmax(Q' K_l^T) V_l): no residual on Q'."""
    torch.manual_seed(0)
    conditioning = TextConditioning("pmp", text_dim=DIM, hidden_dim=DIM, num_heads=1, num_layers=1).eval()
    image_layer = CrossAttentionLayer(DIM, num_heads=1).eval()
    x, pos = torch.randn(1, 5, DIM), torch.randn(1, 5, DIM)
    text = TextTokens(torch.randn(1, 3, DIM), torch.zeros(1, 3, dtype=torch.bool), all_real=True)
    memory, memory_pos = torch.randn(1, 7, DIM), torch.randn(1, 7, DIM)

    stream, query = conditioning.before_cross_attention(0, QuerySequence(x, pos, None, 5), text)
    out = image_layer(stream, memory, pos=memory_pos, query_pos=pos, query=query)

    q_prime = single_head_attention(x + pos, text.tokens, text.tokens, conditioning.cross_attention[0].multihead_attn)
    attended = single_head_attention(q_prime + pos, memory + memory_pos, memory, image_layer.multihead_attn)
    expected = F.layer_norm(x + attended, (DIM,), image_layer.norm.weight, image_layer.norm.bias)
    torch.testing.assert_close(query, q_prime, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(stream, x)  # the image residual goes onto X_{l-1}
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)


def test_pmp_residual_keeps_the_earlier_placement() -> None:
    """pmp_residual: Q' = LN(Q + MHA(Q + pos, T, T)) becomes the stream the image attention updates."""
    torch.manual_seed(0)
    conditioning = TextConditioning("pmp_residual", text_dim=DIM, hidden_dim=DIM, num_heads=1, num_layers=1).eval()
    block = conditioning.cross_attention[0]
    x, pos = torch.randn(1, 5, DIM), torch.randn(1, 5, DIM)
    text = TextTokens(torch.randn(1, 3, DIM), torch.zeros(1, 3, dtype=torch.bool), all_real=True)
    stream, query = conditioning.before_cross_attention(0, QuerySequence(x, pos, None, 5), text)
    expected = F.layer_norm(
        x + single_head_attention(x + pos, text.tokens, text.tokens, block.multihead_attn),
        (DIM,),
        block.norm.weight,
        block.norm.bias,
    )
    assert query is None
    torch.testing.assert_close(stream, expected, atol=1e-6, rtol=1e-5)


def test_joining_only_the_cross_attention_would_leave_the_queries_unchanged() -> None:
    """Why concat_drop keeps the text tokens for the whole layer: cross-attention is per query token, so
    tokens appended for it alone (and dropped after it) change no query's output, masked or not."""
    torch.manual_seed(0)
    layer = CrossAttentionLayer(DIM, num_heads=2).eval()
    queries, pos = torch.randn(2, 5, DIM), torch.randn(2, 5, DIM)
    text, text_pos = torch.randn(2, 3, DIM), torch.randn(2, 3, DIM)
    memory = torch.randn(2, 11, DIM)
    mask = torch.rand(2 * 2, 5, 11) < 0.5
    mask[..., 0] = False  # every query sees at least one pixel
    text_rows = torch.zeros(2 * 2, 3, 11, dtype=torch.bool)
    alone = layer(queries, memory, pos=None, query_pos=pos, attn_mask=mask)
    joined = layer(
        torch.cat([queries, text], 1),
        memory,
        pos=None,
        query_pos=torch.cat([pos, text_pos], 1),
        attn_mask=torch.cat([mask, text_rows], 1),
    )
    torch.testing.assert_close(joined[:, :5], alone, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("decoder", ["mask2former", "maskformer"])
def test_concat_drop_reads_the_prompts_and_outputs_n_embeddings(decoder) -> None:
    model = tiny_model(decoder=decoder, text_mode="concat_drop")
    images = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        first, second = (model(images, unit(2, TEXT_DIM))["pred_masks"] for _ in range(2))
    assert first.shape[1] == NUM_QUERIES
    assert (first - second).abs().max() > 1e-4


def test_proposal_counts_per_mode() -> None:
    """N+M for Fig. 5a, M for Fig. 5c, N for the baseline, Eq. 5, its variant and Fig. 5b."""
    expected = {"none": 8, "pmp": 8, "pmp_residual": 8, "concat": 8 + 3, "concat_drop": 8, "text_queries": 3}
    assert set(expected) == set(TEXT_MODES)
    images = torch.randn(1, 3, SIZE, SIZE)
    for mode, count in expected.items():
        with torch.no_grad():
            out = tiny_model(text_mode=mode)(images, unit(3, TEXT_DIM))
        assert out["pred_masks"].shape[1] == count, mode


def test_text_queries_has_no_learnable_queries() -> None:
    keys = set(tiny_model(text_mode="text_queries").state_dict())
    assert not any("query_feat" in key or "query_embed" in key for key in keys)


@pytest.mark.parametrize("decoder", ["mask2former", "maskformer"])
def test_every_shared_parameter_starts_equal_across_text_modes(decoder) -> None:
    """For one seed, whatever the text mode, the parameters two modes share have the same initial values."""
    states = {}
    for mode in TEXT_MODES:
        torch.manual_seed(123)
        states[mode] = build_mask_proposal_model(
            tiny_config(decoder=decoder, text_mode=mode), text_dim=TEXT_DIM
        ).state_dict()
    baseline = states["none"]
    for mode, state in states.items():
        shared = set(state) & set(baseline)
        assert len(shared) > 0.8 * len(baseline), mode  # text_queries lacks only the learnable queries
        for key in shared:
            assert torch.equal(state[key], baseline[key]), (mode, key)


def test_two_models_built_after_one_seed_get_different_text_weights() -> None:
    torch.manual_seed(0)
    first = tiny_model(text_mode="pmp").state_dict()
    second = tiny_model(text_mode="pmp").state_dict()
    key = "decoder.text.cross_attention.0.multihead_attn.in_proj_weight"
    assert not torch.equal(first[key], second[key])


def test_ovseg_recipes_run_ovsegs_own_second_stage_and_the_demo_says_which_ran() -> None:
    from demo.handlers import column_title
    from train.recipes import get_recipe, recipe_names

    for name in recipe_names():
        model = get_recipe(name).model
        if name.startswith("ovseg-"):
            assert model.stage2_mode == "crop" and model.crop_top_k >= model.decoder.num_queries, name
        if name.endswith("-pmp"):
            assert model.decoder.text_mode == "pmp", name  # the paper-scale PMP recipes are Eq. 5 as written
    assert "crop" in column_title("baseline", "crop") and "OVSeg's masked crops" in column_title("pmp", "crop")
    assert "pool" in column_title("pmp", "pool")
    both = column_title("pmp", "crop", crop_views=("masked", "box"))
    assert "OVSeg's masked crops and their boxes" in both
    assert "boxes" not in column_title("pmp", "pool", crop_views=("masked", "box"))  # pooling reads no crops


def test_the_previous_recipes_and_the_stage1_pilots_change_only_stage_ones_size() -> None:
    import dataclasses

    from pmp.config import TEXT_MODES
    from train.recipes import STAGE1_PILOTS, get_recipe, previous_recipe, world_name

    bundled = dataclasses.asdict(get_recipe("world-baseline"))
    assert bundled["model"]["decoder"]["hidden_dim"] == bundled["model"]["pixel_decoder"]["mask_dim"] == 128
    previous = dataclasses.asdict(get_recipe(previous_recipe("none")))
    assert previous["model"]["decoder"]["hidden_dim"] == previous["model"]["pixel_decoder"]["mask_dim"] == 64
    for name in [previous_recipe("none"), *STAGE1_PILOTS]:
        pilot = dataclasses.asdict(get_recipe(name))
        differs = {
            f"{part}.{key}"
            for part in pilot["model"]
            if isinstance(pilot["model"][part], dict)
            for key in pilot["model"][part]
            if pilot["model"][part][key] != bundled["model"][part][key]
        }
        assert differs and differs <= {
            "backbone.name", "pixel_decoder.conv_dim", "pixel_decoder.mask_dim", "decoder.hidden_dim",
            "decoder.num_heads", "decoder.dim_feedforward",
        }, name  # fmt: skip
        assert {k: v for k, v in pilot.items() if k != "model"} == {k: v for k, v in bundled.items() if k != "model"}
    for mode in TEXT_MODES:  # every text mode keeps its 64-channel recipe, which the ablations ran with
        narrow, wide = get_recipe(previous_recipe(mode)).model, get_recipe(world_name(mode)).model
        assert narrow.decoder.text_mode == wide.decoder.text_mode == mode and narrow.name == wide.name
        assert dataclasses.replace(narrow, decoder=wide.decoder, pixel_decoder=wide.pixel_decoder) == wide
