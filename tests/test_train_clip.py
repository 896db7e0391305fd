"""Tiny-CLIP pre-training: learns, and writes a folder that open_clip and pmp both load."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import open_clip
import torch

from pmp.clip import CLIPModel
from pmp.config import CLIPConfig
from train.configs import CLIPTrainConfig
from train.train_clip import train


def test_clip_training_lowers_the_loss_and_saves_an_open_clip_folder(tmp_path: Path) -> None:
    config = dataclasses.replace(
        CLIPTrainConfig(),
        batch_size=16,
        steps=12,
        warmup_steps=2,
        log_every=1,
        checkpoint_every=12,
        eval_crops_per_class=1,
        lr=2e-3,
    )
    metrics = train(config, tmp_path)
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert set(metrics) >= {"zero_shot_top1", "zero_shot_top1_seen", "zero_shot_top1_unseen"}

    folder = tmp_path / "model"
    reference = open_clip.create_model(f"local-dir:{folder}")  # open_clip's own loader reads it
    ours = CLIPModel.build(
        CLIPConfig(
            model_cfg=json.loads((folder / "open_clip_config.json").read_text())["model_cfg"],
            pretrained=str(folder / "open_clip_model.safetensors"),
        )
    )
    tokens = ours.tokenizer(["a red car"])
    with torch.no_grad():
        assert torch.allclose(reference.encode_text(tokens), ours.open_clip.encode_text(tokens), atol=1e-5)
