"""train.convert_ovseg: OVSeg-shaped checkpoints (tests/ovseg_reference.py) converted, every key accounted
for, and the converted stage 1 computing what OVSeg's forward, written out with torch.nn.functional, computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from demo.comparison import DemoModels, run_comparison
from pmp.segmenter import Segmenter
from tests.ovseg_reference import EMBED, deeplab_resnet, ovseg_stage1, ovseg_state_dict
from train.convert_ovseg import ConversionError, convert, main
from train.init_from import load_baseline_weights


def converted(backbone: str) -> tuple[dict, Segmenter, dict]:
    state = ovseg_state_dict(backbone)
    config, weights, unused = convert(state)
    segmenter = Segmenter(config, load_backbone_weights=False)
    segmenter.load_state_dict(weights, strict=True)  # every weight of ours comes from OVSeg's
    return state, segmenter.eval(), unused


def test_r101c_stage1_computes_ovsegs_forward() -> None:
    state, segmenter, unused = converted("resnet")
    images = torch.randn(2, 3, 64, 96)
    text = torch.randn(4, EMBED)
    with torch.no_grad():
        ours = segmenter.proposal_model(images, text, return_features=True, return_aux=False)
        features = deeplab_resnet(images, state)
        logits, masks = ovseg_stage1(features, state, text)
    for mine, theirs in zip(ours["backbone_features"], features):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours["pred_logits"], logits, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(ours["pred_masks"], masks, rtol=1e-4, atol=1e-4)
    assert set(unused) == {
        "criterion.empty_weight", "clip_adapter.pixel_mean", "clip_adapter.pixel_std",
        "clip_adapter.clip_model.logit_scale",
    }  # fmt: skip


def test_swin_stage1_computes_ovsegs_head_and_sizes_come_from_the_weights() -> None:
    state, segmenter, unused = converted("swin")
    config = segmenter.config
    assert config.backbone.kind == "swin" and config.backbone.model_kwargs == {
        "embed_dim": 16, "depths": [2, 2, 2, 2], "num_heads": [1, 2, 2, 4], "window_size": 2
    }  # fmt: skip
    assert (config.decoder.hidden_dim, config.decoder.num_queries, config.decoder.num_layers) == (32, 5, 2)
    assert (config.decoder.dim_feedforward, config.decoder.class_head_hidden_dim, config.decoder.text_mode) == (
        64,
        48,
        "none",
    )
    assert config.clip.mask_prompt_depth == 3 and config.clip.model_cfg["vision_cfg"] == {
        "image_size": 64, "layers": 3, "width": 64, "patch_size": 16
    }  # fmt: skip
    assert len(config.training_names) == 171 and config.crop_box == "tight"
    assert sum(key.endswith("relative_position_index") for key in unused) == 8
    images, text = torch.randn(1, 3, 128, 128), torch.randn(3, EMBED)
    with torch.no_grad():
        ours = segmenter.proposal_model(images, text, return_features=True, return_aux=False)
        logits, masks = ovseg_stage1(ours["backbone_features"], state, text)  # OVSeg's head on these features
    torch.testing.assert_close(ours["pred_logits"], logits, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(ours["pred_masks"], masks, rtol=1e-4, atol=1e-4)


def test_the_clip_is_ovsegs_with_its_prompts_and_fixed_temperature() -> None:
    state, segmenter, _ = converted("resnet")
    clip = segmenter.clip.open_clip
    prefix = "clip_adapter.clip_model."
    for key, value in state.items():
        if key.startswith(prefix) and not key.endswith("logit_scale"):
            torch.testing.assert_close(clip.state_dict()[key[len(prefix) :]], value)
    assert float(segmenter.clip.logit_scale) == pytest.approx(100.0)
    torch.testing.assert_close(
        segmenter.proposal_model.class_head.no_object_embed, state["clip_adapter.non_object_embedding"][0]
    )
    crops, region = torch.randn(1, 3, 64, 64), torch.zeros(1, 1, 64, 64)
    region[..., :16, :16] = 1
    with torch.no_grad():
        assert not torch.allclose(segmenter.clip.encode_crops(crops, region), segmenter.clip.encode_crops(crops))


def test_every_key_is_mapped_or_named_and_a_stranger_stops_the_conversion() -> None:
    state = ovseg_state_dict("resnet")
    state["sem_seg_head.predictor.extra.weight"] = torch.zeros(1)
    with pytest.raises(ConversionError, match="'sem_seg_head.predictor.extra.weight' is neither mapped nor known"):
        convert(state)
    state = ovseg_state_dict("swin")
    state["backbone.layers.0.blocks.0.attn.relative_position_index"] += 1
    with pytest.raises(ConversionError, match="is not Swin's relative position index"):
        convert(state)
    del state["sem_seg_head.predictor.query_embed.weight"]
    with pytest.raises(ConversionError, match="no 'sem_seg_head.predictor.query_embed.weight'"):
        convert(state)


def test_the_command_writes_a_folder_that_segments_and_starts_pmp(tmp_path: Path, capsys) -> None:
    source = tmp_path / "ovseg_R101c_vitB16_ft_mpt.pth"
    torch.save({"model": ovseg_state_dict("resnet"), "iteration": 120000}, source)
    out = tmp_path / "ovseg-r101c"
    assert main([str(source), str(out)]) == 0
    assert "tensors mapped, 4 left out" in capsys.readouterr().out
    assert "criterion.empty_weight" in (out / "README.md").read_text()
    segmenter = Segmenter.from_pretrained(out)
    segmenter.config.image_size = 128
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    result = segmenter.segment(image, ["cat", "grass"])
    assert result.semantic.shape == (96, 128) and result.p_hat.shape == (5, 2)
    pmp_config = segmenter.config.__class__.from_dict(
        {**segmenter.config.to_dict(), "decoder": {**segmenter.config.to_dict()["decoder"], "text_mode": "pmp"}}
    )
    pmp = Segmenter(pmp_config, load_backbone_weights=False)
    fresh = load_baseline_weights(pmp.proposal_model, out)
    assert fresh and all(name.startswith("decoder.text.") for name in fresh)
    models = DemoModels.load(baseline=out, pmp="pmp", device="cpu")  # what `app.py --baseline OUT` loads
    view = run_comparison(models, Image.fromarray(image), "cat, grass", output_root=tmp_path / "demo")
    assert view.labels == ["cat", "grass"] and set(view.views) == {"baseline", "pmp"}
    assert main([str(source), str(out)]) == 2  # never over an existing folder
    (tmp_path / "not.pth").write_bytes(b"nonsense")
    assert main([str(tmp_path / "not.pth"), str(tmp_path / "other")]) == 2
    assert "not a readable torch checkpoint" in capsys.readouterr().err
