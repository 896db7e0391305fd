"""demo.comparison: the comparison handler on good and bad input (a clear gr.Error, never a crash).

Most tests use a small fake segmenter with the Segmenter's interface (fast, deterministic masks);
one test runs the real code path with tiny random-weight Segmenters.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import zipfile
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

from demo.comparison import (
    DIFF_HEADERS,
    TABLE_HEADERS,
    DemoInputError,
    DemoLimits,
    DemoModels,
    mask_iou,
    proposal_shift,
    run_comparison,
    run_prompt_change,
)
from demo.handlers import UI_OUTPUTS, pick_grids, write_prompt_change_pictures
from demo.outputs import prune_outputs
from tests.demo_fixtures import (
    FakeSegmenter,
    _compare,
    _error_message,
)

# ---------------------------------------------------------------- a good request


def test_comparison_builds_every_view(models, tmp_path):
    image = Image.new("RGB", (90, 60), (120, 130, 140))
    view = run_comparison(models, image, "sky, house, red car", 0.3, "crop", 0.4, output_root=tmp_path)
    assert view.labels == ["sky", "house", "red car"]
    assert models.baseline.calls[0] == {"size": (90, 60), "labels": view.labels, "clip_weight": 0.3, "mode": "crop"}
    for name in ("baseline", "pmp"):
        column = view.views[name]
        assert column.overlay.width >= 90 and column.overlay.height > 60  # legend below
        assert len(column.masks) == 3 and column.masks[0][1].startswith("sky · #")
        assert "p_hat=" in column.masks[0][1] and "p_out=" in column.masks[0][1]
        assert [row[0] for row in column.table] == view.labels and len(column.table[0]) == len(TABLE_HEADERS)
        assert column.grid_by_score.size == column.grid_by_index.size
        assert "stage 1 20 ms" in column.timings_markdown()
    ious = [row[1] for row in view.differences]
    assert ious == sorted(ious) and len(view.differences[0]) == len(DIFF_HEADERS)
    assert 0.0 <= view.agreement <= 1.0
    assert "label" in view.differences_markdown() and "`sky`" in view.prompts_markdown()


def test_downloads_hold_label_maps_masks_and_scores(models, tmp_path):
    view = run_comparison(models, Image.new("RGB", (40, 30)), "sky, house", output_root=tmp_path)
    names = sorted(path.name for path in view.downloads)
    assert names == ["baseline_labels.png", "masks.zip", "pmp_labels.png", "scores.json"]
    folder = view.downloads[0].parent
    assert folder.parent == tmp_path and folder.name.startswith("request-")
    label_map = np.asarray(Image.open(folder / "pmp_labels.png"))
    assert label_map.shape == (30, 40) and set(np.unique(label_map)) <= {0, 1, 255}
    with zipfile.ZipFile(folder / "masks.zip") as archive:
        assert sorted(archive.namelist()) == sorted(
            f"{m}/{kind}_{k:02d}_{name}.png"
            for m in ("baseline", "pmp")
            for kind in ("picked", "region")
            for k, name in enumerate(["sky", "house"])
        )
    scores = json.loads((folder / "scores.json").read_text())
    assert scores["prompts"] == ["sky", "house"] and scores["settings"]["stage2_mode"] == "pool"
    assert np.asarray(scores["pmp"]["scores"]["p_out"]).shape == (6, 2)
    assert scores["baseline"]["selected"][0]["label"] == "sky"


def test_ui_values_follow_ui_outputs_order(models, tmp_path):
    values = _compare(models, Image.new("RGB", (40, 30)), "sky, house", tmp_path)
    assert len(values) == len(UI_OUTPUTS)
    named = dict(zip(UI_OUTPUTS, values))
    assert named["prompts"].startswith("**2 prompt(s):**")
    folder = Path(named["downloads"][0]).parent
    # Pictures are PNG files in the request's own folder (not PIL images: see compare_for_ui).
    assert named["baseline_overlay"] == str(folder / "baseline_overlay.png")
    assert Image.open(named["baseline_overlay"]).height > 30  # image + legend
    assert [Path(path).name for path, _ in named["pmp_masks"]] == ["pmp_picked_00.png", "pmp_picked_01.png"]
    assert named["pmp_masks"][1][1].startswith("house · #")
    assert named["pmp_table"]["headers"] == TABLE_HEADERS and len(named["pmp_table"]["data"]) == 2
    assert named["differences_table"]["headers"] == DIFF_HEADERS
    assert len(named["downloads"]) == 4
    by_score, by_index = named["grids_state"]["pmp"]
    assert named["pmp_grid"] == by_score and Path(by_index).name == "pmp_proposals_by_index.png"
    assert pick_grids(named["grids_state"], False) == (named["grids_state"]["baseline"][1], by_index)
    assert pick_grids(named["grids_state"], True) == (named["grids_state"]["baseline"][0], by_score)


def test_sort_toggle_without_a_run_or_after_pruning_keeps_the_grids(tmp_path):
    skip = gr.skip()
    assert pick_grids(None, True) == (skip, skip)
    gone = {"baseline": (str(tmp_path / "a.png"),) * 2, "pmp": (str(tmp_path / "b.png"),) * 2}
    assert pick_grids(gone, False) == (skip, skip)


def test_identical_models_agree_everywhere(tmp_path):
    same = DemoModels(baseline=FakeSegmenter(shift=1), pmp=FakeSegmenter(shift=1))
    view = run_comparison(same, Image.new("RGB", (40, 30)), "sky, house", output_root=tmp_path)
    assert view.agreement == 1.0 and all(row[1] == 1.0 for row in view.differences)
    assert "IoU >= 0.5" in view.differences_markdown()


def test_mask_iou():
    a = np.array([[True, True, False, False]])
    b = np.array([[False, True, True, False]])
    assert mask_iou(a, b) == pytest.approx(1 / 3)
    assert mask_iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 1.0


# ---------------------------------------------------------------- images


# ---------------------------------------------------------------- prompts and settings


def test_unexpected_failure_is_logged_and_reported_generically(tmp_path, caplog):
    models = DemoModels(baseline=FakeSegmenter(), pmp=FakeSegmenter(fail=True))
    with caplog.at_level(logging.ERROR, logger="demo.comparison"):
        message = _error_message(models, Image.new("RGB", (8, 8)), "sky", tmp_path)
    assert message.startswith("Something went wrong while segmenting (error id ")
    assert "CUDA" not in message and "Traceback" not in message
    error_id = message.split("error id ")[1][:8]
    assert any(error_id in record.getMessage() and record.exc_info for record in caplog.records)


def test_segmenter_value_errors_become_user_errors(models, tmp_path):
    def refuse(*args, **kwargs):
        raise ValueError("no labels given: pass at least one class name")

    models.baseline.segment = refuse
    assert (
        _error_message(models, Image.new("RGB", (8, 8)), "sky", tmp_path)
        == "no labels given: pass at least one class name"
    )


# ---------------------------------------------------------------- no shared state between requests


def test_concurrent_requests_get_their_own_outputs(models, tmp_path):
    results: dict[int, tuple] = {}

    def request(i: int) -> None:
        results[i] = _compare(models, Image.new("RGB", (20 + i, 20)), f"thing {i}", tmp_path)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    folders = {Path(values[UI_OUTPUTS.index("downloads")][0]).parent for values in results.values()}
    assert len(folders) == 4
    for i, values in results.items():
        assert f"`thing {i}`" in values[0]


def test_old_request_folders_are_pruned(tmp_path):
    old, fresh = tmp_path / "request-old", tmp_path / "request-new"
    old.mkdir()
    fresh.mkdir()
    long_ago = time.time() - 7200
    os.utime(old, (long_ago, long_ago))
    prune_outputs(tmp_path, max_age_s=3600)
    assert not old.exists() and fresh.exists()


def test_demo_limits_defaults():
    limits = DemoModels(baseline=FakeSegmenter(), pmp=FakeSegmenter()).effective_limits()
    assert limits == DemoLimits()
    assert issubclass(DemoInputError, ValueError)


# ---------------------------------------------------------------- the real Segmenter, tiny random weights


@pytest.fixture(scope="module")
def tiny_models() -> DemoModels:
    from pmp.config import (
        BackboneConfig,
        CLIPConfig,
        DecoderConfig,
        PixelDecoderConfig,
        SegmenterConfig,
        tiny_clip_model_cfg,
    )
    from pmp.segmenter import Segmenter

    def build(text_mode: str) -> Segmenter:
        config = SegmenterConfig(
            clip=CLIPConfig(model_cfg=tiny_clip_model_cfg()),
            backbone=BackboneConfig(kind="clip"),
            pixel_decoder=PixelDecoderConfig(conv_dim=32, mask_dim=32),
            decoder=DecoderConfig(
                hidden_dim=32, num_queries=10, num_layers=3, num_heads=4, dim_feedforward=64, text_mode=text_mode
            ),
            image_size=128,
        )
        return Segmenter(config)

    return DemoModels(baseline=build("none"), pmp=build("pmp"))


@pytest.mark.parametrize("mode", ["pool", "crop"])
def test_real_tiny_segmenters(tiny_models, tmp_path, mode):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 100, 3), dtype=np.uint8))
    view = run_comparison(tiny_models, image, "sky, house, red car", 0.65, mode, 0.5, output_root=tmp_path)
    for name in ("baseline", "pmp"):
        column = view.views[name]
        assert [row[0] for row in column.table] == ["sky", "house", "red car"]
        assert all(0.0 <= value <= 1.0 for row in column.table for value in row[2:5])
        assert column.picked[0].shape == (70, 100) and column.picked[0].dtype == bool
        assert column.grid_by_score.size == (5 * 100, 2 * (96 + 12 + 6 + 4))  # 10 proposals: 2 rows of 5
        assert set(column.timings) >= {"text", "stage1", "stage2", "post", "total"}
    scores = json.loads((view.folder / "scores.json").read_text())
    assert np.asarray(scores["baseline"]["scores"]["p_hat"]).shape == (10, 3)


def test_real_clip_token_limit(tiny_models, tmp_path):
    too_many_tokens = "x1y2z3" * 13  # 78 characters (within the 80-character limit) but ~80 BPE tokens
    message = _error_message(tiny_models, Image.new("RGB", (8, 8)), f"sky, {too_many_tokens}", tmp_path)
    assert "too long for CLIP" in message and "at most 32 fit" in message
    assert _compare(tiny_models, Image.new("RGB", (8, 8)), "sky, red car", tmp_path)[0].startswith("**2 prompt(s)")


# ---------------------------------------------------------------- the prompt-change view


def test_proposal_shift_measures_how_far_masks_moved():
    masks = np.zeros((3, 4, 4), np.float32)
    masks[0, :2], masks[1, 2:], masks[2, :, :2] = 1, 1, 1
    same = proposal_shift(masks, masks.copy())
    assert same.shift == 0.0 and same.moved == 0 and same.total == 3
    assert "did **not move**" in same.markdown()
    moved = masks.copy()
    moved[2] = 0
    moved[2, :, 3] = 1  # the third mask jumps to a column none of the first set covers
    shifted = proposal_shift(masks, moved)
    assert shifted.moved == 1 and 0 < shifted.shift < 1
    # best IoUs, both ways: 1, 1, 1/3 (the old third mask vs either half) and 1, 1, 1/5 (the new column vs
    # the half it crosses): mean 0.756, a shift of 0.244
    assert shifted.shift == pytest.approx(1 - (1 + 1 + 1 / 3 + 1 + 1 + 1 / 5) / 6)
    assert shifted.markdown() == (
        "proposals **moved** with the prompts: **1 of 3** masks changed (overlap with their closest match under "
        "the other set below 0.5 IoU); on average a mask overlaps its closest match by 76%"
    )
    assert shifted.sentence("PMP") == "PMP changed 1 of its 3 masks"
    assert same.sentence("Baseline") == "Baseline proposed the same 3 masks under both sets"
    # the order of the proposals does not matter, and the count may change (text proposals of Fig. 5)
    assert proposal_shift(masks, masks[::-1]).shift == 0.0
    assert proposal_shift(masks, np.concatenate([masks, masks[:1]])).shift == 0.0
    with pytest.raises(ValueError, match="mask size"):
        proposal_shift(masks, np.zeros((3, 5, 5)))


def test_prompt_change_view_shows_both_sets_and_the_shift(tmp_path):
    models = DemoModels(baseline=FakeSegmenter(), pmp=FakeSegmenter(shift=1, follows_prompts=True))
    image = Image.new("RGB", (60, 60), (100, 120, 90))
    view = run_prompt_change(models, image, "car", "car, wheel, window", 0.65, "pool", 0.5, output_root=tmp_path)
    assert view.prompt_sets == (["car"], ["car", "wheel", "window"])
    assert view.shifts["baseline"].shift == 0.0 and view.shifts["pmp"].shift > 0.0
    assert view.shifts["pmp"].moved > 0
    assert [row[0] for row in view.views["pmp"][1].table] == ["car", "wheel", "window"]
    summary = view.summary_markdown()
    assert "`wheel`" in summary and "not move" not in summary  # each model's measure is in its own title
    pmp = view.shifts["pmp"]
    assert summary.startswith(
        "**What to look at:** only the prompts changed. Baseline (OVSeg-style) proposed the same "
        f"{view.shifts['baseline'].total} masks under both sets; PMP changed {pmp.moved} of its {pmp.total} masks."
    )
    pictures = write_prompt_change_pictures(view)
    assert all(Path(pictures[name][k]["overlay"]).is_file() for name in ("baseline", "pmp") for k in (0, 1))
    assert len(pictures["pmp"][1]["masks"]) == 3


def test_prompt_change_view_checks_both_prompt_sets(models, tmp_path):
    image = Image.new("RGB", (40, 40))
    with pytest.raises(DemoInputError, match="no prompts"):
        run_prompt_change(models, image, "car", "  ", output_root=tmp_path)
    with pytest.raises(DemoInputError, match="CLIP weight"):
        run_prompt_change(models, image, "car", "wheel", clip_weight=3, output_root=tmp_path)


def test_real_baseline_proposals_do_not_move_and_pmp_proposals_do(tiny_models, tmp_path):
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    view = run_prompt_change(tiny_models, image, "car", "car, wheel, window", output_root=tmp_path)
    assert view.shifts["baseline"].shift == 0.0 and view.shifts["baseline"].moved == 0
    first, second = view.results["pmp"]
    assert not torch.equal(first.mask_logits, second.mask_logits)  # Eq. 5: the prompts reach the masks


def test_the_demo_opens_with_the_models_own_stage_two(tmp_path) -> None:
    image = Image.new("RGB", (40, 30), "white")
    crop = DemoModels(baseline=FakeSegmenter(stage2_mode="crop"), pmp=FakeSegmenter(shift=2, stage2_mode="crop"))
    assert crop.stage2_mode() == "crop"
    view = run_comparison(crop, image, "sky, house", output_root=tmp_path)  # no mode given: the models'
    assert view.settings["stage2_mode"] == "crop" and crop.pmp.calls[-1]["mode"] == "crop"
    chosen = run_comparison(crop, image, "sky", stage2_mode="pool", output_root=tmp_path)
    assert chosen.settings["stage2_mode"] == "pool"
    mixed = DemoModels(baseline=FakeSegmenter(stage2_mode="crop"), pmp=FakeSegmenter())
    assert mixed.stage2_mode() == "pool"  # the models disagree: the cheap default


def test_demo_models_load_with_autocast_sets_both_models_and_refuses_unknown_names():
    from app import parse_args

    assert parse_args(["--autocast", "bfloat16"]).autocast == "bfloat16" and parse_args([]).autocast == "none"
    models = DemoModels.load(device="cpu", autocast="bfloat16")
    assert [model.autocast_dtype for _, model in models.items()] == [torch.bfloat16, torch.bfloat16]
    assert [model.autocast_dtype for _, model in DemoModels.load(device="cpu").items()] == [None, None]
    with pytest.raises(ValueError, match="autocast must be one of"):
        DemoModels.load(device="cpu", autocast="int8")


def test_demo_models_load_with_two_clip_weights_sets_both_configs_and_the_opening_slider(
    capsys: pytest.CaptureFixture[str],
):
    from app import parse_args
    from demo.handlers import SCORING, scoring_text

    assert parse_args(["--clip-weights", "0.4:0.9"]).clip_weights == (0.4, 0.9) and parse_args([]).clip_weights is None
    for bad in ("0.4", "0.4:1.5", "a:b"):
        with pytest.raises(SystemExit):
            parse_args(["--clip-weights", bad])
        assert "expected W:U, two numbers in [0, 1]" in capsys.readouterr().err
    models = DemoModels.load(device="cpu", clip_weights=(0.4, 0.9))
    assert [(m.config.clip_weight, m.config.clip_weight_unseen) for _, m in models.items()] == [(0.4, 0.9)] * 2
    assert models.clip_weights() == (0.4, 0.9) and DemoModels.load(device="cpu").clip_weights() == (0.65, None)
    assert scoring_text(None) == SCORING
    assert "their own CLIP weight, 0.9" in scoring_text(0.9)
    # A bundled prompt the models were trained on keeps the slider's weight, another gets 0.9.
    result = models.pmp.segment(np.zeros((32, 32, 3), dtype=np.uint8), ["car", "bicycle"])
    assert result.clip_weight == 0.4 and result.clip_weight_unseen == 0.9
