"""The dry run CI runs: a paper-scale recipe's exact training path, reduced in size, on generated COCO-Stuff data."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


def test_a_reduced_dry_run_trains_the_recipe_on_the_real_layout(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    done = subprocess.run(
        [sys.executable, "-m", "train.train_segmenter", "--recipe", "ovseg-r101c-vitb16-pmp", "--dry-run", "2",
         "--crop-size", "128", "--batch-size", "2", "--out", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "dry_run.json").read_text())
    assert report["recipe"] == "ovseg-r101c-vitb16-pmp" and report["prompts_per_image"] == "all training classes"
    assert len(report["losses"]) == 2 and all(math.isfinite(row["loss"]) for row in report["losses"])
    assert report["seconds_per_step"] > 0 and report["peak_memory_gib"] > 0
    assert any("random weights" in note for note in report["random_weights"])  # no weights here: said so
    labels = sorted((tmp_path / "datasets" / "coco" / "stuffthingmaps_detectron2" / "train2017").glob("*.png"))
    images = sorted((tmp_path / "datasets" / "coco" / "train2017").glob("*.jpg"))
    assert len(labels) == len(images) == 8
    ids = np.unique(np.asarray(Image.open(labels[0])))
    assert ids.dtype == np.uint8 and set(ids.tolist()) <= set(range(171)) | {255}
    config = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert config["mask_loss"] == "full_focal" and config["color_aug_ssd"] and config["crop_size"] == 128
