"""``python -m pmp segment`` as a subprocess, on inputs it cannot handle: one clear line each, the other
inputs still processed, an exit status that says so, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pmp.segmenter import Segmenter
from tests.tiny import tiny_segmenter_config

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return Segmenter(tiny_segmenter_config()).save_pretrained(tmp_path_factory.mktemp("cli") / "ckpt")


def _segment(*arguments: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pmp", "segment", *arguments, "--prompts", "sky, car"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _picture(path: Path) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(path)


def test_a_file_whose_outputs_cannot_be_named_is_skipped_and_the_rest_processed(checkpoint, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    long_name = images / ("x" * 246 + ".png")  # 250 characters: its outputs' names would pass 255
    _picture(long_name)
    _picture(images / "short.png")
    done = _segment(str(images), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out"))
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    [line] = [line for line in done.stderr.splitlines() if "x" * 246 in line]
    assert line.endswith(f"its results could not be written to {tmp_path / 'out'}: File name too long")
    assert (tmp_path / "out" / "short.json").is_file()
    assert "wrote results for 1 of 2 image(s)" in done.stdout


@pytest.mark.parametrize("kind", ["a file", "under a file", "unwritable"])
def test_an_out_that_cannot_hold_results_is_one_line_before_any_work(checkpoint, tmp_path, kind):
    _picture(tmp_path / "one.png")
    (tmp_path / "taken").write_text("a file")
    out, expected = {
        "a file": (tmp_path / "taken", "exists and is not a folder"),
        "under a file": (tmp_path / "taken" / "sub", "cannot write there (Not a directory)"),
        "unwritable": (Path("/proc/pmp-results"), "cannot write there"),
    }[kind]
    done = _segment(str(tmp_path / "one.png"), "--checkpoint", str(checkpoint), "--out", str(out))
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"error: --out {out}: {expected}"), done.stderr
