"""The Segmenter API: Eq. 1-3, outputs, checkpoints (local, Hub cache, broken), and the CLI."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pmp.config import CLIP_MEAN, CLIP_STD, SegmenterConfig
from pmp.images import normalize_pixels
from pmp.postprocess import semantic_inference
from pmp.segmenter import Segmenter, StageOutputs
from pmp.stage2 import ensemble, prompt_clip_weights
from tests.segmenter_fixtures import tiny_config
from tests.tiny import tiny_segmenter_config


def test_ensemble_weights_the_clip_term_as_ovseg_and_odise_do() -> None:
    """p_out = p^(1 - w) * p_hat^w with w = 0.65 (OVSeg: pow(mask_cls, 1 - w) * pow(clip_cls, w))."""
    p = torch.tensor([[0.8, 0.2], [0.5, 0.5]])
    p_hat = torch.tensor([[0.1, 0.9], [0.25, 0.75]])
    out = ensemble(p, p_hat, 0.65)
    expected = torch.tensor(
        [[0.8**0.35 * 0.1**0.65, 0.2**0.35 * 0.9**0.65], [0.5**0.35 * 0.25**0.65, 0.5**0.35 * 0.75**0.65]]
    )
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(ensemble(p, p_hat, 0.0), p) and torch.allclose(ensemble(p, p_hat, 1.0), p_hat)
    assert SegmenterConfig().clip_weight == 0.65


def test_odise_ensemble_keeps_no_object_out_and_equals_fc_clips_formula() -> None:
    """ODISE / FC-CLIP: softmax_K((1 - w) log p_in + w log p_hat) * (1 - p_void), p_in = p / (1 - p_void)."""
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 0.5, 4.0]])  # (N, K + 1), the last is no-object
    full = logits.softmax(-1)
    p, void = full[:, :-1], full[:, -1:]
    p_hat = torch.tensor([[0.1, 0.9], [0.6, 0.4]])
    w = 0.65
    in_vocab = logits[:, :-1].softmax(-1)  # FC-CLIP's in-vocabulary probabilities
    expected = ((in_vocab ** (1 - w) * p_hat**w).log().softmax(-1)) * (1 - void)
    out = ensemble(p, p_hat, w, "odise")
    torch.testing.assert_close(out, expected)
    # Row 0 by hand: p_in = (0.8808, 0.1192); 0.8808^0.35 0.1^0.65 : 0.1192^0.35 0.9^0.65 -> (0.3256, 0.6744);
    # times 1 - p_void = 1 - e / (e^2 + 1 + e) = 0.7553.
    torch.testing.assert_close(out[0], torch.tensor([0.2459, 0.5094]), atol=1e-4, rtol=0)
    assert torch.allclose(out.sum(1), 1 - void[:, 0])  # a mostly-void proposal keeps its small mass ...
    assert ensemble(p, p_hat, w)[1].sum() > 3 * out[1].sum()  # ... which OVSeg's form inflates
    with pytest.raises(ValueError, match="ensemble form must be one of ovseg, odise"):
        ensemble(p, p_hat, w, "mean")
    with pytest.raises(ValueError, match="ensemble='mean' is not supported"):
        dataclasses.replace(SegmenterConfig(), ensemble="mean").validate()


def test_the_configs_ensemble_form_reaches_the_semantic_map(image: np.ndarray) -> None:
    torch.manual_seed(0)
    segmenter = Segmenter(tiny_segmenter_config())
    stages = segmenter.run_stages(image, ["sky", "road", "car"])
    ovseg = segmenter.combine(stages)
    segmenter.config = dataclasses.replace(segmenter.config, ensemble="odise")
    odise = segmenter.combine(stages)
    np.testing.assert_allclose(odise.p_out, ensemble(stages.p, stages.p_hat, 0.65, "odise").numpy(), atol=1e-6)
    assert not np.allclose(odise.p_out, ovseg.p_out)


def test_prompt_clip_weights_split_names_as_fc_clip_does() -> None:
    """A prompt is a training name when any comma-separated synonym is one, case-insensitively."""
    training = ("car", "person", "tv, monitor")
    labels = ["Car", "bus", "human, person", "monitor", "bicycle"]
    weights = prompt_clip_weights(labels, 0.4, 0.8, training)
    torch.testing.assert_close(weights, torch.tensor([0.4, 0.8, 0.4, 0.4, 0.8]))
    torch.testing.assert_close(prompt_clip_weights(labels, 0.65, None, training), torch.full((5,), 0.65))


def test_ensemble_takes_one_weight_per_prompt() -> None:
    p = torch.tensor([[0.6, 0.1, 0.2], [0.05, 0.3, 0.4]])
    p_hat = torch.tensor([[0.2, 0.7, 0.1], [0.1, 0.1, 0.8]])
    weights = torch.tensor([0.4, 0.8, 1.0])
    for form in ("ovseg", "odise"):
        out = ensemble(p, p_hat, weights, form)
        if form == "ovseg":  # column k is the one-weight ensemble with that prompt's weight
            for k, w in enumerate(weights.tolist()):
                torch.testing.assert_close(out[:, k], ensemble(p, p_hat, w)[:, k])
        else:  # FC-CLIP: softmax over seen and unseen log-terms together, times 1 - p(no-object)
            mixed = (1 - weights) * (p / p.sum(1, keepdim=True)).log() + weights * p_hat.log()
            torch.testing.assert_close(out, mixed.softmax(1) * p.sum(1, keepdim=True))


def test_clip_weight_unseen_reaches_the_semantic_map_and_needs_training_names(image: np.ndarray) -> None:
    torch.manual_seed(0)
    segmenter = Segmenter(tiny_segmenter_config())
    labels = ["sky", "road", "car"]
    stages = segmenter.run_stages(image, labels)
    with pytest.raises(ValueError, match="clip_weight_unseen needs the names stage 1 was trained on"):
        segmenter.combine(stages, clip_weight_unseen=0.9)
    with pytest.raises(ValueError, match="clip_weight_unseen needs training_names"):
        dataclasses.replace(segmenter.config, clip_weight_unseen=0.9).validate()
    segmenter.config = dataclasses.replace(segmenter.config, training_names=("sky", "road"))
    assert np.array_equal(segmenter.combine(stages).p_out, segmenter.combine(stages, clip_weight_unseen=0.65).p_out)
    split = segmenter.combine(stages, clip_weight_unseen=1.0)
    expected = ensemble(stages.p, stages.p_hat, torch.tensor([0.65, 0.65, 1.0]))
    np.testing.assert_allclose(split.p_out, expected.numpy(), atol=1e-6)
    np.testing.assert_allclose(split.p_out[:, 2], stages.p_hat[:, 2].numpy(), atol=1e-6)  # "car": CLIP alone
    assert split.clip_weight_unseen == 1.0 and split.to_json()["clip_weight_unseen"] == 1.0
    segmenter.config = dataclasses.replace(segmenter.config, clip_weight_unseen=1.0)
    np.testing.assert_array_equal(segmenter.combine(stages).p_out, split.p_out)  # the config's default
    with pytest.raises(ValueError, match="clip_weight_unseen must be in"):
        segmenter.combine(stages, clip_weight_unseen=1.5)
    data = json.loads(json.dumps(segmenter.config.to_dict()))  # config.json stores the names as a list
    assert SegmenterConfig.from_dict(data) == segmenter.config


def test_old_ensemble_key_is_refused_with_the_mapping() -> None:
    data = SegmenterConfig().to_dict()
    data["ensemble_lambda"] = data.pop("clip_weight")
    with pytest.raises(ValueError, match="clip_weight.*1 - ensemble_lambda"):
        SegmenterConfig.from_dict(data)


def test_crop_views_survive_json_and_bad_views_are_refused() -> None:
    config = dataclasses.replace(SegmenterConfig(), stage2_mode="crop", crop_views=("masked", "box"))
    data = json.loads(json.dumps(config.to_dict()))  # as config.json stores it: a list
    assert SegmenterConfig.from_dict(data) == config
    for views in ([], ["box", "box"], ["mean"]):
        with pytest.raises(ValueError, match="crop_views must name one or more distinct views of masked, box"):
            SegmenterConfig.from_dict({**data, "crop_views": views})


def test_crop_views_reach_stage_two(segmenter: Segmenter, image: np.ndarray) -> None:
    labels = ["sky", "car", "tree"]
    masked = segmenter.run_stages(image, labels, stage2_mode="crop")
    segmenter.config = dataclasses.replace(segmenter.config, crop_views=("masked", "box"))
    try:
        both = segmenter.run_stages(image, labels, stage2_mode="crop")
    finally:
        segmenter.config = dataclasses.replace(segmenter.config, crop_views=("masked",))
    assert torch.equal(masked.p, both.p) and torch.equal(masked.mask_logits, both.mask_logits)
    assert not torch.allclose(masked.p_hat, both.p_hat)


def test_every_pixel_takes_the_argmax_even_where_no_mask_is_confident(segmenter: Segmenter) -> None:
    """Mask2Former / OVSeg inference: no 'unclaimed' threshold unless asked for (the old rule gave -1 here)."""
    mask_logits = torch.full((2, 4, 4), -3.0)  # every proposal below 0.5 everywhere
    mask_logits[0, :, :2] = -1.0  # proposal 0 a little stronger on the left
    mask_logits[1, :, 2:] = -1.0
    p = torch.tensor([[0.9, 0.05], [0.05, 0.9]])
    stages = StageOutputs(["left", "right"], p, p.clone(), torch.zeros(2), mask_logits, (4, 4), "pool", {"text": 0.0})
    semantic = segmenter.combine(stages).semantic
    assert (semantic[:, :2] == 0).all() and (semantic[:, 2:] == 1).all()
    marked = segmenter.combine(stages, unclaimed_threshold=0.5).semantic
    assert (marked == -1).all()
    with pytest.raises(ValueError, match="unclaimed_threshold"):
        segmenter.combine(stages, unclaimed_threshold=1.0)


def test_one_stage_pass_serves_every_clip_weight(segmenter: Segmenter, image: np.ndarray) -> None:
    stages = segmenter.run_stages(image, ["a", "b", "c"])
    for weight in (0.0, 0.65, 1.0):
        direct = segmenter.segment(image, ["a", "b", "c"], clip_weight=weight)
        combined = segmenter.combine(stages, clip_weight=weight)
        assert np.array_equal(direct.semantic, combined.semantic) and np.allclose(direct.p_out, combined.p_out)


def test_semantic_inference_is_mask2former_sum() -> None:
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.7]])
    masks = torch.tensor([[[10.0, -10.0]], [[-10.0, 10.0]]])  # (2 proposals, 1 x 2 pixels)
    maps = semantic_inference(scores, masks)
    sig = torch.sigmoid(torch.tensor(10.0))
    assert maps.shape == (2, 1, 2)
    assert math.isclose(float(maps[0, 0, 0]), 0.9 * sig + 0.2 * (1 - sig), rel_tol=1e-5)
    assert maps.argmax(0).tolist() == [[0, 1]]


def test_eq1_stage1_scores_are_softmax_of_model_logits(segmenter: Segmenter, image: np.ndarray) -> None:
    out = segmenter.segment(image, ["sky", "car"])
    text = segmenter.clip.encode_text(["sky", "car"])
    pixels, _ = segmenter.preprocess(Image.fromarray(image), segmenter.config.image_size)
    with torch.inference_mode():
        logits = segmenter.proposal_model(normalize_pixels(pixels, CLIP_MEAN, CLIP_STD), text[None])["pred_logits"][0]
    probs = logits.softmax(-1)
    assert np.allclose(out.p, probs[:, :-1].numpy(), atol=1e-6)
    assert np.allclose(out.no_object, probs[:, -1].numpy(), atol=1e-6)
    assert np.allclose(
        out.p_out, ensemble(torch.from_numpy(out.p), torch.from_numpy(out.p_hat), 0.65).numpy(), atol=1e-6
    )


def test_result_fields_and_shapes(segmenter: Segmenter, image: np.ndarray) -> None:
    out = segmenter(image, "sky, house, red car")
    n = segmenter.config.decoder.num_queries
    assert out.labels == ["sky", "house", "red car"]
    assert out.semantic.shape == (48, 80) and out.semantic.dtype == np.int64
    assert out.semantic.min() >= -1 and out.semantic.max() < 3
    assert out.proposals.shape == (n, 48, 80) and 0 <= out.proposals.min() and out.proposals.max() <= 1
    for scores in (out.p, out.p_hat, out.p_out):
        assert scores.shape == (n, 3)
    assert np.allclose(out.p_hat.sum(1), 1, atol=1e-5)
    assert [i for i, _ in out.selected] == out.p_out.argmax(0).tolist()
    assert set(out.timings) >= {"text", "stage1", "stage2", "post"}
    assert json.loads(json.dumps(out.to_json()))["labels"] == out.labels
    assert out.picked_mask(0).shape == (48, 80)


def test_crop_mode_keeps_stage1_scores_outside_the_top_k(segmenter: Segmenter, image: np.ndarray) -> None:
    out = segmenter.segment(image, ["sky", "car", "tree"], stage2_mode="crop")
    top = set(np.argsort(-out.p.max(1))[: segmenter.config.crop_top_k].tolist())
    rest = [i for i in range(out.p_out.shape[0]) if i not in top]
    assert np.allclose(out.p_hat[rest], out.p[rest])
    assert not np.allclose(out.p_hat[list(top)], out.p[list(top)])


def test_bad_options_are_clear_errors(segmenter: Segmenter, image: np.ndarray) -> None:
    with pytest.raises(ValueError, match="clip_weight"):
        segmenter.segment(image, ["a"], clip_weight=1.5)
    with pytest.raises(ValueError, match="stage2_mode"):
        segmenter.segment(image, ["a"], stage2_mode="fast")
    with pytest.raises(ValueError, match="no labels"):
        segmenter.segment(image, [])


def test_baseline_proposals_ignore_prompts_and_pmp_proposals_follow_them(image: np.ndarray) -> None:
    torch.manual_seed(1)
    baseline, pmp = Segmenter(tiny_config("none")), Segmenter(tiny_config("pmp"))
    for model, should_change in ((baseline, False), (pmp, True)):
        a = model.segment(image, ["sky", "car"]).mask_logits
        b = model.segment(image, ["water", "boat", "tree"]).mask_logits
        assert (not torch.allclose(a, b)) == should_change


def test_cli_writes_outputs(segmenter: Segmenter, image: np.ndarray, tmp_path: Path) -> None:
    from pmp.cli import main

    folder = segmenter.save_pretrained(tmp_path / "ckpt", max_shard_size="1GB")
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(image).save(images / "one.png")
    Image.fromarray(image[:, ::-1].copy()).save(images / "two.jpg")
    assert (
        main(
            [
                "segment",
                str(images),
                "--prompts",
                "sky, car",
                "--checkpoint",
                str(folder),
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    written = {p.name for p in (tmp_path / "out").rglob("*") if p.is_file()}
    for stem in ("one", "two"):
        assert any(name.startswith(stem) and name.endswith(".json") for name in written), written
        assert (
            sum(name.startswith(stem) and name.endswith(".png") for name in written) >= 4
        )  # overlay, label map, 2 masks
    assert (
        main(
            [
                "segment",
                str(tmp_path / "missing.png"),
                "--prompts",
                "sky",
                "--checkpoint",
                str(folder),
                "--out",
                str(tmp_path / "o2"),
            ]
        )
        == 2
    )


def test_cli_flip_test_reaches_the_segmenter(
    segmenter: Segmenter, image: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pmp.cli import main

    folder = segmenter.save_pretrained(tmp_path / "ckpt", max_shard_size="1GB")
    Image.fromarray(image).save(tmp_path / "one.png")
    asked = []
    segment = Segmenter.segment

    def recording(self: Segmenter, *args, **options):
        asked.append(options["flip_test"])
        return segment(self, *args, **options)

    monkeypatch.setattr(Segmenter, "segment", recording)
    argv = ["segment", str(tmp_path / "one.png"), "--prompts", "sky, car", "--checkpoint", str(folder)]
    assert main([*argv, "--out", str(tmp_path / "a"), "--flip-test"]) == 0
    assert main([*argv, "--out", str(tmp_path / "b")]) == 0
    assert asked == [True, False]


def test_cli_gives_inputs_with_one_stem_their_own_outputs(
    segmenter: Segmenter, image: np.ndarray, tmp_path: Path, capsys
) -> None:
    from pmp.cli import main

    folder = segmenter.save_pretrained(tmp_path / "ckpt", max_shard_size="1GB")
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(image).save(images / "a.png")
    Image.fromarray(image[::-1].copy()).save(images / "a.jpg")
    Image.fromarray(image).save(images / "b.png")
    assert (
        main(
            [
                "segment",
                str(images),
                "--prompts",
                "sky, car",
                "--checkpoint",
                str(folder),
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    jsons = sorted(p.name for p in (tmp_path / "out").glob("*.json"))
    assert jsons == ["a_jpg.json", "a_png.json", "b.json"]
    summaries = {name: json.loads((tmp_path / "out" / name).read_text()) for name in jsons}
    assert summaries["a_jpg.json"]["files"]["overlay"] == "a_jpg_overlay.png"
    assert "wrote results for 3 of 3 image(s)" in capsys.readouterr().out
