"""Stage-1 model: output contract, text modes (PMP + ablations), backbones, weights round trip."""

from __future__ import annotations

import open_clip
import pytest
import timm
import torch
from safetensors.torch import save_file

from pmp.config import (
    TEXT_MODES,
    BackboneConfig,
    DecoderConfig,
    PixelDecoderConfig,
    SegmenterConfig,
    tiny_clip_model_cfg,
)
from pmp.modeling import MaskProposalModel, TextCrossAttention, build_mask_proposal_model
from pmp.modeling.backbone import TimmBackbone
from pmp.modeling.text_conditioning import TextTokens

TEXT_DIM = 16
NUM_QUERIES = 8
NUM_LAYERS = 3
SIZE = 64


def tiny_config(pixel_decoder="fpn", decoder="mask2former", text_mode="pmp", backbone="timm") -> SegmenterConfig:
    return SegmenterConfig(
        backbone=BackboneConfig(kind=backbone, name="resnet10t"),
        pixel_decoder=PixelDecoderConfig(
            kind=pixel_decoder, conv_dim=32, mask_dim=32, num_layers=1, num_heads=4, num_points=2, dim_feedforward=64
        ),
        decoder=DecoderConfig(
            kind=decoder,
            hidden_dim=32,
            num_queries=NUM_QUERIES,
            num_layers=NUM_LAYERS,
            num_heads=4,
            dim_feedforward=64,
            text_mode=text_mode,
        ),
        image_size=SIZE,
    )


def tiny_model(**kwargs) -> MaskProposalModel:
    return build_mask_proposal_model(tiny_config(**kwargs), text_dim=TEXT_DIM).eval()


def unit(*shape) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(*shape), dim=-1)


def num_proposals(text_mode: str, num_prompts: int) -> int:
    """Fig. 5: (a) concat N+M, (c) text_queries M; every other mode N."""
    return {"concat": NUM_QUERIES + num_prompts, "text_queries": num_prompts}.get(text_mode, NUM_QUERIES)


@pytest.mark.parametrize("text_mode", TEXT_MODES)
@pytest.mark.parametrize("decoder", ["mask2former", "maskformer"])
@pytest.mark.parametrize("pixel_decoder", ["fpn", "msdeform"])
def test_output_contract(pixel_decoder, decoder, text_mode):
    model = tiny_model(pixel_decoder=pixel_decoder, decoder=decoder, text_mode=text_mode)
    images = torch.randn(2, 3, SIZE, 2 * SIZE)  # non-square on purpose
    text = unit(2, 3, TEXT_DIM)
    text_mask = torch.tensor([[True, True, False], [True, False, False]])
    with torch.no_grad():
        batched = model(images, text, text_mask)
        shared = model(images, unit(3, TEXT_DIM))  # (M, C) text, no mask

    proposals = num_proposals(text_mode, 3)
    expected_aux = NUM_LAYERS if decoder == "mask2former" else NUM_LAYERS - 1
    for out in (batched, shared):
        assert out["pred_logits"].shape == (2, proposals, 3 + 1)
        assert out["pred_masks"].shape == (2, proposals, SIZE // 4, 2 * SIZE // 4)
        assert len(out["aux_outputs"]) == expected_aux
        for aux in out["aux_outputs"]:
            assert aux["pred_logits"].shape == out["pred_logits"].shape
            assert aux["pred_masks"].shape == out["pred_masks"].shape
        assert torch.isfinite(out["pred_masks"]).all()
        assert ("proposal_mask" in out) == (text_mode in ("concat", "text_queries"))
    with torch.no_grad():  # inference leaves the earlier layers' predictions out, the last one unchanged
        final = model(images, text, text_mask, return_aux=False)
    assert "aux_outputs" not in final
    for key in ("pred_logits", "pred_masks"):
        torch.testing.assert_close(final[key], batched[key])

    logits = batched["pred_logits"]
    assert torch.isinf(logits[0, :, 2]).all() and (logits[0, :, 2] < 0).all()
    assert torch.isinf(logits[1, :, 1:3]).all()
    assert torch.isfinite(logits[0, :, [0, 1, 3]]).all() and torch.isfinite(logits[1, :, [0, 3]]).all()
    assert torch.isfinite(shared["pred_logits"]).all()
    if text_mode in ("concat", "text_queries"):
        learnable = NUM_QUERIES if text_mode == "concat" else 0
        expected = torch.tensor([[True] * learnable + [True, True, False], [True] * learnable + [True, False, False]])
        assert torch.equal(batched["proposal_mask"], expected)
        assert shared["proposal_mask"].all()


@pytest.mark.parametrize("text_mode", TEXT_MODES)
@pytest.mark.parametrize("decoder", ["mask2former", "maskformer"])
def test_only_text_modes_make_proposals_depend_on_prompts(decoder, text_mode):
    model = tiny_model(decoder=decoder, text_mode=text_mode)
    images = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        first = model(images, unit(2, TEXT_DIM))["pred_masks"][:, :NUM_QUERIES]
        second = model(images, unit(2, TEXT_DIM))["pred_masks"][:, :NUM_QUERIES]
    if text_mode == "none":
        assert torch.equal(first, second)
    else:
        assert (first - second).abs().max() > 1e-4


@pytest.mark.parametrize("text_mode", TEXT_MODES)
def test_padded_prompts_change_nothing(text_mode):
    """Appending a padded prompt with a garbage embedding leaves every real output unchanged."""
    model = tiny_model(pixel_decoder="msdeform", text_mode=text_mode)
    images = torch.randn(2, 3, SIZE, SIZE)
    text = unit(2, 2, TEXT_DIM)
    garbage = 100 * torch.randn(2, 1, TEXT_DIM)
    with torch.no_grad():
        plain = model(images, text)
        padded = model(images, torch.cat([text, garbage], 1), torch.tensor([[True, True, False]] * 2))
    real = num_proposals(text_mode, 2)
    torch.testing.assert_close(padded["pred_masks"][:, :real], plain["pred_masks"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded["pred_logits"][:, :real, [0, 1, 3]], plain["pred_logits"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("residual", [False, True])
def test_pmp_text_block_ignores_padding_and_survives_all_padding(residual):
    block = TextCrossAttention(dim=32, num_heads=4, residual=residual).eval()
    queries, pos = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    tokens = torch.randn(2, 3, 32)
    padding = torch.tensor([[False, False, True], [True, True, True]])  # row 1: no real prompt at all
    out = block(queries, pos, TextTokens(tokens, padding))
    changed = tokens.clone()
    changed[0, 2] = 1e3 * torch.randn(32)  # the padded token of row 0
    out_changed = block(queries, pos, TextTokens(changed, padding))
    torch.testing.assert_close(out, out_changed)
    assert torch.isfinite(out).all()
    # no real prompt: no text update (literal Eq. 5: Q' = 0; residual variant: the post-norm of the residual)
    expected = block.norm(queries[1]) if residual else torch.zeros_like(queries[1])
    torch.testing.assert_close(out[1], expected)


def test_baseline_has_no_text_parameters_and_pmp_has_one_block_per_layer():
    baseline = tiny_model(text_mode="none").state_dict()
    pmp = tiny_model(text_mode="pmp").state_dict()
    assert not [k for k in baseline if k.startswith("decoder.text.")]
    pmp_text = {k.split(".")[3] for k in pmp if k.startswith("decoder.text.cross_attention.")}
    assert pmp_text == {str(i) for i in range(NUM_LAYERS)}
    assert set(baseline) < set(pmp)


def test_gradients_reach_the_text_projection_in_pmp_mode():
    model = tiny_model(text_mode="pmp").train()
    out = model(torch.randn(1, 3, SIZE, SIZE), unit(2, TEXT_DIM))
    out["pred_masks"].square().mean().backward()  # masks depend on the prompts only through the decoder
    for parameter in (
        model.decoder.text.project.linear.weight,
        model.decoder.text.cross_attention[0].multihead_attn.in_proj_weight,
    ):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0


def test_state_dict_round_trip_gives_identical_outputs():
    source = tiny_model(pixel_decoder="msdeform", text_mode="pmp")
    torch.manual_seed(1)
    copy = tiny_model(pixel_decoder="msdeform", text_mode="pmp")
    images, text = torch.randn(1, 3, SIZE, SIZE), unit(3, TEXT_DIM)
    with torch.no_grad():
        assert not torch.equal(source(images, text)["pred_masks"], copy(images, text)["pred_masks"])
        copy.load_state_dict(source.state_dict())
        expected, actual = source(images, text), copy(images, text)
    assert torch.equal(expected["pred_masks"], actual["pred_masks"])
    assert torch.equal(expected["pred_logits"], actual["pred_logits"])


def test_class_head_temperature_and_no_object_column():
    model = tiny_model(text_mode="none")
    head = model.class_head
    assert head.logit_scale.exp().item() == pytest.approx(1 / 0.07)
    with torch.no_grad():
        head.logit_scale.fill_(10.0)  # above the clamp
        logits = model(torch.randn(1, 3, SIZE, SIZE), unit(2, TEXT_DIM))["pred_logits"]
    assert logits.abs().max() <= 100.0 + 1e-4  # cosine times at most exp(log 100)
    assert logits.abs().max() > 1.0


def _tiny_clip(vision_cfg: dict | None = None) -> open_clip.model.CLIP:
    cfg = tiny_clip_model_cfg()
    if vision_cfg is not None:
        cfg["vision_cfg"] = vision_cfg
    cfg["text_cfg"] = dict(cfg["text_cfg"], vocab_size=1000, layers=1)  # the text tower is not used here
    return open_clip.model.CLIP(**cfg)


@pytest.mark.parametrize(
    "vision_cfg",
    [None, {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32}],
    ids=["modified_resnet", "vit"],
)
def test_clip_backbone_is_frozen_and_outside_the_state_dict(vision_cfg):
    clip = _tiny_clip(vision_cfg)
    clip_params = {id(p) for p in clip.visual.parameters()}
    clip_before = {k: v.clone() for k, v in clip.visual.state_dict().items()}
    model = build_mask_proposal_model(
        tiny_config(backbone="clip"), text_dim=clip.text_projection.shape[1], clip_visual=clip.visual
    )
    model.train()
    assert not clip.visual.training  # the tower stays in eval mode (frozen BatchNorm)
    assert not clip_params & {id(p) for p in model.parameters()}
    assert not any(k.startswith("backbone.") and "neck" not in k for k in model.state_dict())

    images = torch.randn(2, 3, SIZE, SIZE)
    features = model.backbone(images)
    assert [f.shape[1] for f in features] == model.backbone.out_channels
    assert [f.shape[-1] for f in features] == [SIZE // s for s in (4, 8, 16, 32)]
    out = model(images, unit(3, clip.text_projection.shape[1]))
    assert out["pred_masks"].shape == (2, NUM_QUERIES, SIZE // 4, SIZE // 4)
    out["pred_masks"].mean().backward()
    assert all(p.grad is None for p in clip.visual.parameters())
    assert model.pixel_decoder.mask_features.weight.grad is not None
    assert all(torch.equal(v, clip_before[k]) for k, v in clip.visual.state_dict().items())


def test_clip_backbone_needs_the_tower():
    with pytest.raises(ValueError, match="clip_visual"):
        build_mask_proposal_model(tiny_config(backbone="clip"), text_dim=TEXT_DIM)


@pytest.mark.parametrize("name", ["convnext_atto", "swin_tiny_patch4_window7_224"])
def test_timm_backbones_give_nchw_strides_4_to_32(name):
    backbone = TimmBackbone(name, image_size=SIZE).eval()
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, SIZE, 2 * SIZE))
    assert [tuple(f.shape) for f in features] == [
        (1, c, SIZE // s, 2 * SIZE // s) for c, s in zip(backbone.out_channels, (4, 8, 16, 32))
    ]


def test_timm_backbone_loads_a_local_weights_file_and_freezes(tmp_path):
    reference = timm.create_model("resnet10t", pretrained=False)
    path = tmp_path / "resnet10t.safetensors"
    save_file(reference.state_dict(), str(path))
    backbone = TimmBackbone("resnet10t", pretrained_file=str(path), freeze=True)
    assert torch.equal(backbone.body.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)
    backbone.train()
    assert not backbone.body.training
    assert not any(p.requires_grad for p in backbone.parameters())


def test_backbone_weights_that_are_not_available_give_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        TimmBackbone("resnet10t", pretrained_file=str(tmp_path / "missing.safetensors"))
    with pytest.raises(FileNotFoundError, match="Hugging Face cache"):
        TimmBackbone("resnet10t", pretrained_file="nobody-owns-this/no-such-weights-pmp-test")
    with pytest.raises(ValueError, match="no model named"):
        TimmBackbone("not_a_timm_model")


def test_bad_inputs_are_rejected():
    model = tiny_model()
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.randn(1, 3, SIZE + 8, SIZE), unit(2, TEXT_DIM))
    with pytest.raises(ValueError, match="text_embeds"):
        model(torch.randn(1, 3, SIZE, SIZE), unit(2, TEXT_DIM + 1))
    with pytest.raises(ValueError, match="text_mask"):
        model(torch.randn(1, 3, SIZE, SIZE), unit(2, TEXT_DIM), torch.ones(1, 3, dtype=torch.bool))


def test_masked_attention_unmasks_queries_whose_mask_is_empty():
    """Mask2Former's fix: a query whose predicted mask is empty attends to every pixel (not to none)."""
    model = tiny_model(text_mode="pmp")
    last = model.decoder.mask_head.mask_embed.layers[-1]
    text, text_mask = unit(1, 2, TEXT_DIM), torch.ones(1, 2, dtype=torch.bool)
    mask_features = torch.ones(1, 32, SIZE // 4, SIZE // 4)
    finals = []
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(-1.0)  # every mask logit is -32: every query's mask is empty at every layer
        for _ in range(2):
            features = [torch.randn(1, 32, SIZE // s, SIZE // s) for s in (32, 16, 8)]
            out = model.decoder(features, mask_features, text, text_mask)
            assert (out.predictions[-1].masks < 0).all()
            finals.append(out.predictions[-1].queries)
    # if the queries attended to nothing, the image features could not change them
    assert (finals[0] - finals[1]).abs().max() > 1e-4


@pytest.mark.parametrize("text_mode", ["pmp", "concat_drop"])
def test_pre_norm_variant_respects_padding(text_mode):
    config = tiny_config(text_mode=text_mode)
    config.decoder.pre_norm = True
    model = build_mask_proposal_model(config, text_dim=TEXT_DIM).eval()
    images, text = torch.randn(1, 3, SIZE, SIZE), unit(1, 2, TEXT_DIM)
    with torch.no_grad():
        plain = model(images, text)["pred_masks"]
        padded = model(images, torch.cat([text, unit(1, 1, TEXT_DIM)], 1), torch.tensor([[True, True, False]]))[
            "pred_masks"
        ]
        other = model(images, unit(1, 2, TEXT_DIM))["pred_masks"]
    torch.testing.assert_close(padded, plain, atol=1e-5, rtol=1e-5)
    assert (other - plain).abs().max() > 1e-4
