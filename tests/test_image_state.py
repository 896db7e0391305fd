"""The image's half of both stages once per image (Segmenter.set_image, SAM's split): the same outputs as the
image itself on the bundled models, and the image-only parts run once however many prompt sets follow."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pmp.segmenter
from pmp.segmenter import ImageState, Segmenter
from train.world.demo import demo_scene

WHOLES, PARTS = ["sky", "grass", "car", "house"], ["sky", "grass", "wheel", "window", "roof"]


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return demo_scene(54).image


@pytest.mark.parametrize("name", ["baseline", "pmp"])
@pytest.mark.parametrize("stage2_mode", ["crop", "pool"])
def test_a_prepared_image_gives_the_images_own_outputs(image: np.ndarray, name: str, stage2_mode: str) -> None:
    segmenter = Segmenter.from_pretrained(name)
    state = segmenter.set_image(image)
    assert isinstance(state, ImageState)
    for labels in (WHOLES, PARTS):  # two prompt sets on one state, each against the image's own path
        direct = segmenter.segment(image, labels, stage2_mode=stage2_mode)
        prepared = segmenter.segment(state, labels, stage2_mode=stage2_mode)
        np.testing.assert_array_equal(prepared.semantic, direct.semantic)
        np.testing.assert_allclose(prepared.p, direct.p, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(prepared.p_hat, direct.p_hat, rtol=1e-5, atol=1e-6)
        assert prepared.selected == direct.selected
        torch.testing.assert_close(prepared.mask_logits, direct.mask_logits)


def test_the_image_only_parts_run_once_per_image(image: np.ndarray, monkeypatch) -> None:
    segmenter = Segmenter.from_pretrained("pmp")
    encoded, dense = [], []
    encode, dense_map = segmenter.proposal_model.encode_image, pmp.segmenter.dense_map
    monkeypatch.setattr(segmenter.proposal_model, "encode_image", lambda x: encoded.append(1) or encode(x))
    monkeypatch.setattr(pmp.segmenter, "dense_map", lambda *a: dense.append(1) or dense_map(*a))
    state = segmenter.set_image(image)
    for labels in (WHOLES, PARTS, ["road"]):
        segmenter.segment(state, labels, stage2_mode="pool")
    assert (len(encoded), len(dense)) == (1, 1)
    segmenter.segment(image, WHOLES, stage2_mode="pool")  # a plain image: its own pass, as before
    assert (len(encoded), len(dense)) == (2, 2)


def test_the_flip_test_on_a_prepared_image_mirrors_it_once(image: np.ndarray) -> None:
    segmenter = Segmenter.from_pretrained("baseline")
    state = segmenter.set_image(image)
    direct = segmenter.segment(image, WHOLES, flip_test=True)
    prepared = segmenter.segment(state, WHOLES, flip_test=True)
    np.testing.assert_array_equal(prepared.semantic, direct.semantic)
    assert state.mirrored(segmenter) is state.mirrored(segmenter)


@pytest.mark.parametrize("name, expected", [("baseline", 1), ("pmp", 2)])
def test_the_crops_are_encoded_again_only_when_the_proposals_move(
    image: np.ndarray, monkeypatch, name: str, expected: int
) -> None:
    """The baseline's proposals never see the prompts, so its crops are encoded once for both sets; PMP's move."""
    import pmp.stage2

    segmenter = Segmenter.from_pretrained(name)
    calls, encode = [], pmp.stage2.crop_embeddings
    monkeypatch.setattr(pmp.stage2, "crop_embeddings", lambda *a: calls.append(1) or encode(*a))
    state = segmenter.set_image(image)
    first = segmenter.segment(state, WHOLES, stage2_mode="crop")
    segmenter.segment(state, PARTS, stage2_mode="crop")
    assert len(calls) == expected
    again = segmenter.segment(image, WHOLES, stage2_mode="crop")  # cached crops give the same scores
    np.testing.assert_allclose(first.p_hat, again.p_hat, rtol=1e-5, atol=1e-6)


def test_the_docs_speed_up_figure_is_the_results_file() -> None:
    import json
    from pathlib import Path

    from benchmarks.prompt_change import sentence

    root = Path(__file__).resolve().parent.parent
    report = json.loads((root / "results" / "prompt_change.json").read_text())
    assert report["speedup"] == pytest.approx(
        report["median_s"]["from the image"] / report["median_s"]["prepared once"]
    )
    assert sentence(report) in (root / "docs" / "demo.md").read_text()
