"""``python -m train.evaluate`` on a real layout holding files it cannot use: each named once, then
skipped and counted (the default) or, with --strict, one line and exit status 2; never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_evaluate import StubSegmenter
from train.evaluate import main

STEMS = ("2007_000001", "2007_000002", "2007_000003", "2007_000004", "2007_000005")


@pytest.fixture()
def voc_root(tmp_path: Path) -> Path:
    """VOC 2012 as OVSeg prepares it: one good sample, then four bad labels."""
    images = tmp_path / "VOCdevkit/VOC2012/JPEGImages"
    labels = tmp_path / "VOCdevkit/VOC2012/annotations_detectron2/val"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for stem in STEMS:
        Image.fromarray(np.full((6, 8, 3), 200, dtype=np.uint8)).save(images / f"{stem}.jpg")
    good = np.array([[14] * 8] * 5 + [[255] * 8], dtype=np.uint8)
    Image.fromarray(good).save(labels / f"{STEMS[0]}.png")
    Image.fromarray(good[:4]).save(labels / f"{STEMS[1]}.png")  # wrong size
    Image.fromarray(np.where(good == 14, 77, good).astype(np.uint8)).save(labels / f"{STEMS[2]}.png")  # id 77 of 20
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(labels / f"{STEMS[3]}.png")  # an RGB picture
    Image.new("1", (14_000, 14_000)).save(labels / f"{STEMS[4]}.png")  # 196 M pixels: a decompression bomb
    return tmp_path


def _argv(root: Path, *extra: str) -> list[str]:
    return ["--benchmark", "voc20", "--data-root", str(root), "--json", *extra]


def test_bad_files_are_named_once_skipped_and_counted(voc_root, capsys):
    assert main(_argv(voc_root), segmenter_factory=lambda *_: StubSegmenter()) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["num_images"] == 1 and result["num_skipped"] == 4
    assert [entry["index"] for entry in result["skipped"]] == [1, 2, 3, 4]
    lines = captured.err.strip().splitlines()
    assert len(lines) == 4 and "Traceback" not in captured.err
    for line, stem, problem in zip(
        lines,
        STEMS[1:],
        ["is 4x8 but image", "holds ids [77] outside 0..19", "is uint8 with shape (6, 8, 3)", "cannot read label"],
    ):
        assert line.startswith("skipped voc20[") and f"{stem}.png" in line and problem in line, line
    assert "decompression bomb" in lines[3].lower() or "exceeds limit" in lines[3]


def test_strict_stops_at_the_first_bad_file_with_one_line(voc_root, capsys):
    assert main(_argv(voc_root, "--strict"), segmenter_factory=lambda *_: StubSegmenter()) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.strip().splitlines()
    assert line.startswith("error: voc20: label ") and f"{STEMS[1]}.png is 4x8" in line
