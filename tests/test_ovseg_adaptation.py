"""OVSeg's CLIP adaptation on real-format data, end to end: COCO images and captions in COCO's layout ->
region-noun pairs (train.ovseg_pairs) -> fine-tuned image tower -> mask prompts (train.ovseg_adapt)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pmp.config import CLIPConfig
from pmp.segmenter import Segmenter
from tests.test_mask_prompts import tiny_vit
from tests.tiny import tiny_segmenter_config
from train import ovseg_adapt, ovseg_pairs
from train.ovseg_pairs import MEAN_FILL, first_captions, masked_region

REPO = Path(__file__).resolve().parent.parent
CAPTIONS = {1: ["A red square on a blue floor.", "ignored second caption"], 2: ["Two dogs near a green tree."]}


def coco_fixture(root: Path) -> Path:
    """COCO's layout: coco/train2017/<12 digits>.jpg and coco/annotations/captions_train2017.json."""
    images = root / "coco" / "train2017"
    images.mkdir(parents=True)
    (root / "coco" / "annotations").mkdir()
    rng = np.random.default_rng(0)
    entries, annotations = [], []
    for image_id, captions in CAPTIONS.items():
        pixels = np.full((64, 80, 3), (40, 60, 200), np.uint8)
        pixels[10:40, 20:50] = (220, 30, 30)
        pixels += rng.integers(0, 10, pixels.shape, dtype=np.uint8)
        name = f"{image_id:012d}.jpg"
        Image.fromarray(pixels).save(images / name, quality=95)
        entries.append({"id": image_id, "file_name": name, "height": 64, "width": 80})
        annotations += [{"id": 10 * image_id + i, "image_id": image_id, "caption": c} for i, c in enumerate(captions)]
    entries.append({"id": 3, "file_name": "000000000003.jpg", "height": 64, "width": 80})  # no caption: skipped
    data = {"images": entries, "annotations": annotations}
    (root / "coco" / "annotations" / "captions_train2017.json").write_text(json.dumps(data))
    return root


def tiny_ovseg_segmenter(folder: Path) -> Path:
    torch.manual_seed(0)
    clip = tiny_vit(0).config
    config = tiny_segmenter_config(
        "none", clip=CLIPConfig(model_cfg=clip.model_cfg, quick_gelu=True), stage2_mode="crop", crop_box="tight",
        crop_mask_threshold=0.4,
    )  # fmt: skip
    Segmenter(config).save_pretrained(folder)
    return folder


def test_first_captions_and_ovsegs_stored_crop(tmp_path: Path) -> None:
    root = coco_fixture(tmp_path)
    captions = list(first_captions(root / "coco" / "annotations" / "captions_train2017.json"))
    assert captions == [("000000000001.jpg", "A red square on a blue floor."), ("000000000002.jpg", CAPTIONS[2][0])]
    image = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3)
    mask = np.zeros((5, 6), bool)
    mask[1, 2] = mask[3, 4] = True
    crop = masked_region(image, mask)  # the tight box rows 1..3, cols 2..4
    assert crop.shape == (3, 3, 3)
    assert (crop[0, 0] == image[1, 2]).all() and (crop[2, 2] == image[3, 4]).all()
    assert (crop[1, 1] == MEAN_FILL).all() and (crop[0, 2] == MEAN_FILL).all()


@pytest.fixture(scope="module")
def mined(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("ovseg")
    root = coco_fixture(tmp / "datasets")
    segmenter = tiny_ovseg_segmenter(tmp / "segmenter")
    assert ovseg_pairs.main(["--segmenter", str(segmenter), "--data-root", str(root), "--out", str(tmp / "pairs")]) == 0
    return segmenter, tmp / "pairs"


def test_mining_pairs_each_caption_noun_with_a_proposal(mined: tuple[Path, Path]) -> None:
    _, pairs = mined
    with open(pairs / "pairs.tsv", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    assert rows[0] == ["filepath", "title"]
    assert [row[1] for row in rows[1:]] == ["red square", "blue floor", "dogs", "green tree"]  # first captions only
    for path, _ in rows[1:]:
        region = np.asarray(Image.open(pairs / path))
        inside = ~(region == MEAN_FILL).all(axis=2)
        assert inside.any() and inside[0].any() and inside[:, 0].any()  # a tight box: its edges touch the mask


def test_finetuning_then_prompt_tuning_change_what_ovseg_trains(mined: tuple[Path, Path], tmp_path: Path) -> None:
    segmenter_dir, mined_pairs = mined
    pairs = tmp_path / "pairs"
    shutil.copytree(mined_pairs, pairs)
    # The random segmenter's proposals touch every patch, which leaves nothing for a prompt to stand in for;
    # a pair in OVSeg's format written by hand has a small region (a 12 px square in a 64 px crop).
    region = np.full((64, 64, 3), MEAN_FILL, np.uint8)
    region[4:16, 4:16] = (200, 30, 30)
    Image.fromarray(region).save(pairs / "regions" / "hand.png")
    with open(pairs / "pairs.tsv", "a", newline="") as handle:
        csv.writer(handle, delimiter="\t").writerows([("regions/hand.png", "red square")] * 3)
    before = Segmenter.from_pretrained(segmenter_dir).clip.open_clip.state_dict()
    args = ["--segmenter", str(segmenter_dir), "--pairs", str(pairs), "--max-steps", "2", "--batch-size", "7"]
    assert ovseg_adapt.main(["finetune", *args[:2], *args[2:], "--out", str(tmp_path / "ft")]) == 0
    tuned = Segmenter.from_pretrained(tmp_path / "ft" / "model")
    after = tuned.clip.open_clip.state_dict()
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert changed and all(key.startswith("visual.") for key in changed)  # the text tower is locked
    assert "logit_scale" not in changed and tuned.config.clip.mask_prompt_depth == 0
    assert len((tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()) == 2

    prompt_args = ["--segmenter", str(tmp_path / "ft" / "model"), *args[2:], "--out", str(tmp_path / "mpt")]
    assert ovseg_adapt.main(["prompts", *prompt_args]) == 0
    prompted = Segmenter.from_pretrained(tmp_path / "mpt" / "model")
    assert prompted.config.clip.mask_prompt_depth == ovseg_adapt.PROMPT_DEPTH
    final = prompted.clip.open_clip.state_dict()
    assert {key for key in after if not torch.equal(after[key], final[key])} == set()  # only the prompts moved
    assert final["visual.mask_embedding"].abs().sum() > 0  # from OVSeg's zeros
    image = np.asarray(Image.open(next((mined[0].parent / "datasets" / "coco" / "train2017").glob("*.jpg"))))
    assert prompted.segment(image, ["red square", "blue floor"]).semantic.shape == image.shape[:2]


def test_prompt_tuning_needs_ovsegs_crops(mined: tuple[Path, Path], tmp_path: Path) -> None:
    segmenter = Segmenter.from_pretrained(mined[0])
    segmenter.config.stage2_mode = "pool"
    with pytest.raises(ValueError, match="read by OVSeg's crops"):
        ovseg_adapt.with_prompts(segmenter)


@pytest.mark.slow
def test_two_ranks_adapt_the_same_clip(mined: tuple[Path, Path], tmp_path: Path) -> None:
    """torchrun with two gloo ranks, as the segmenter runs multi-GPU: ClipLoss over the global batch,
    DDP-averaged gradients, rank 0's model written."""
    segmenter_dir, pairs = mined
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "train.ovseg_adapt", "finetune", "--segmenter", str(segmenter_dir), "--pairs", str(pairs),
               "--out", str(tmp_path / "ft"), "--max-steps", "2", "--batch-size", "2"]  # fmt: skip
    completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    before = Segmenter.from_pretrained(segmenter_dir).clip.open_clip.visual.conv1.weight
    after = Segmenter.from_pretrained(tmp_path / "ft" / "model").clip.open_clip.visual.conv1.weight
    assert not torch.equal(before, after)
    assert len((tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()) == 2  # rank 0 logs, once per step
