"""Calibrated stacking (experiments.calibration): the calibration, the sweep on stand-in stage outputs, the shares."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from experiments.calibration import calibrate, calibration_sweep, format_table, pixel_shares
from pmp.stage2 import prompt_clip_weights, seen_prompts

HEIGHT, WIDTH = 4, 8


class CatDogScene:
    """Two images of 4 x 8 pixels: a cat on the left half, a dog on the right (prompts: dog seen, cat not)."""

    name = "cat-dog"
    class_names = ["dog", "cat"]
    seen = np.array([True, False])
    ignore_label = -1

    def __len__(self) -> int:
        return 2

    def image_prompts(self, index: int) -> None:
        return None

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        label = np.zeros((HEIGHT, WIDTH), dtype=np.int64)
        label[:, : WIDTH // 2] = 1
        return np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8), label


class StubSegmenter:
    """Proposal 0 covers the left half and scores dog a little above cat (the bias calibration undoes);
    proposal 1 covers the right half and is clearly a dog."""

    config = SimpleNamespace(training_names=("dog",), ensemble="ovseg")

    def run_stages(self, image: np.ndarray, labels: list[str]) -> SimpleNamespace:
        assert labels == ["dog", "cat"]
        mask_logits = torch.full((2, HEIGHT, WIDTH), -10.0)
        mask_logits[0, :, : WIDTH // 2] = 10.0
        mask_logits[1, :, WIDTH // 2 :] = 10.0
        p = torch.tensor([[0.5, 0.3], [0.9, 0.05]])
        return SimpleNamespace(p=p, p_hat=p.clone(), mask_logits=mask_logits, image_size=(HEIGHT, WIDTH))


def test_seen_prompts_match_training_names_by_any_synonym_and_drive_the_two_weights() -> None:
    seen = seen_prompts(["Dog, hound", "cat", "hound"], ["dog"])
    assert seen.tolist() == [True, False, False]
    assert prompt_clip_weights(["Dog, hound", "cat"], 0.4, 0.9, ["dog"]).tolist() == pytest.approx([0.4, 0.9])


def test_calibrate_divides_only_the_seen_columns_by_exp_gamma() -> None:
    scores = torch.tensor([[0.5, 0.3], [0.2, 0.1]])
    out = calibrate(scores, torch.tensor([True, False]), 1.0)
    assert torch.allclose(out[:, 0], scores[:, 0] / np.e) and torch.equal(out[:, 1], scores[:, 1])
    assert torch.equal(calibrate(scores, torch.tensor([True, False]), 0.0), scores)


def test_a_calibrated_sweep_rescues_the_unseen_cat_and_reports_where_its_pixels_went() -> None:
    result = calibration_sweep(StubSegmenter(), CatDogScene(), [1.0], clip_weight=0.4, clip_weight_unseen=0.9)
    by_gamma = {row["gamma"]: row for row in result["gammas"]}
    assert sorted(by_gamma) == [0.0, 1.0]  # gamma 0, the model as evaluated, is always measured
    assert by_gamma[0.0]["miou_unseen"] == 0.0 and by_gamma[0.0]["miou_seen"] == pytest.approx(0.5)
    assert by_gamma[1.0]["miou"] == pytest.approx(1.0)
    shares = result["pixel_shares"]
    assert shares["cat"] == {"pixels": 32, "to": pytest.approx({"dog": 1.0, "cat": 0.0, "nothing": 0.0})}
    table = format_table(result)
    assert "| 1 | 100.0 / 100.0 / 100.0 |" in table and "| cat (unseen) | dog 100%" in table


def test_an_undefined_miou_reads_n_a_in_the_tables() -> None:
    row = {"gamma": 0.0, "miou": 0.25, "miou_seen": float("nan"), "miou_unseen": 0.25}
    result = {"benchmark": "parts", "num_images": 1, "clip_weight": 0.4, "clip_weight_unseen": 0.9}
    result |= {"seen_classes": [], "gammas": [row], "pixel_shares": {}}
    assert "| 0 | 25.0 / n/a / 25.0 |" in format_table(result)


def test_pixel_shares_list_the_largest_destinations_and_skip_classes_without_pixels() -> None:
    confusion = np.array([[6, 0, 0], [3, 0, 0], [0, 0, 0], [1, 0, 0]])  # (K + 1, K): prediction, truth
    shares = pixel_shares(confusion, ["a", "b", "c"], top=2)
    assert shares == {"a": {"pixels": 10, "to": pytest.approx({"a": 0.6, "b": 0.3})}}


def test_calibration_needs_the_training_names() -> None:
    stub = StubSegmenter()
    stub.config = SimpleNamespace(training_names=(), ensemble="ovseg")
    with pytest.raises(ValueError, match="names stage 1 was trained on"):
        calibration_sweep(stub, CatDogScene(), [0.5], clip_weight=0.4, clip_weight_unseen=0.9)


def test_record_calibration_table_is_generated_from_results() -> None:
    from pathlib import Path

    from experiments.calibration import summary_table

    root = Path(__file__).resolve().parents[2]
    assert summary_table(root / "results" / "calibration") in (root / "docs" / "results.md").read_text()
