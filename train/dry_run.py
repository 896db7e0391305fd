"""A dry run of a recipe anyone can do: its exact model, augmentation, loss, prompts and optimizer for a few
steps on generated data in the real COCO-Stuff layout, with random weights where real ones are absent.

    python -m train.train_segmenter --recipe ovseg-swinb-vitl14-pmp --dry-run 2 --out runs/dry
    python -m train.train_segmenter --recipe ovseg-r101c-vitb16-pmp --dry-run 2 --out runs/dry --crop-size 128

The images and labels are written where the recipe's dataset lives under a data root of the run's own
(``coco/train2017/*.jpg`` and ``coco/stuffthingmaps_detectron2/train2017/*.png``, ids 0..170 and 255,
as OVSeg's ``prepare_coco_stuff_sem_seg.py`` leaves them), so the real loader, resizing, crop and
ColorAugSSD read them. Backbone and CLIP weights that are not on this machine are replaced by random
ones, and the report says which. The report: seconds per step (the first step apart: it warms up),
peak memory, and every logged loss.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pmp.clip.loading import resolve_pretrained_tag
from pmp.modeling.backbone import resolve_weights_file
from train.configs import SegTrainConfig
from train.datasets import REAL_DATASETS

DRY_RUN_IMAGES = 8
DRY_RUN_IMAGE_SIZE = (480, 640)  # (H, W): COCO's typical landscape image


def write_sample_dataset(
    root: Path, name: str, count: int = DRY_RUN_IMAGES, seed: int = 0, split: str = "train"
) -> Path:
    """``count`` images with blob labels in dataset ``name``'s ``split`` layout under ``root``; returns root."""
    spec = REAL_DATASETS[name]
    images, labels = (root / spec.base / folder for folder in spec.splits[split])
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    height, width = DRY_RUN_IMAGE_SIZE
    for index in range(count):
        label = np.full(
            (height, width), spec.raw_ignore_label, dtype=np.uint8 if spec.label_ext == "png" else np.uint16
        )
        image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        for _ in range(6):  # rectangles of random classes over noise, some of the image left ignored
            top, left = rng.integers(0, height - 60), rng.integers(0, width - 60)
            bottom, right = top + rng.integers(40, height // 2), left + rng.integers(40, width // 2)
            label[top:bottom, left:right] = rng.integers(0, len(spec.class_names))
            image[top:bottom, left:right] = rng.integers(0, 255, 3)
        stem = f"{index:012d}"
        Image.fromarray(image).save(images / f"{stem}.jpg", quality=90)
        Image.fromarray(label).save(labels / f"{stem}.{spec.label_ext}")
    return root


def with_available_weights(config: SegTrainConfig) -> tuple[SegTrainConfig, list[str]]:
    """``config`` with random weights in place of the backbone and CLIP weights this machine does not hold,
    and a line for each replacement."""
    notes = []
    model = config.model
    backbone = model.backbone
    if backbone.kind in ("timm", "swin") and backbone.pretrained_file:
        try:
            resolve_weights_file(backbone.pretrained_file)
        except FileNotFoundError:
            notes.append(f"backbone: random weights (the recipe's {backbone.pretrained_file!r} is not on this machine)")
            backbone = dataclasses.replace(backbone, pretrained_file=None)
    clip = model.clip
    if clip.pretrained and not Path(clip.pretrained).is_file():
        try:
            resolve_pretrained_tag(clip.model_name, clip.pretrained)
        except (FileNotFoundError, ValueError):
            notes.append(
                f"CLIP {clip.model_name}: random weights (pretrained={clip.pretrained!r} is not on this machine)"
            )
            clip = dataclasses.replace(clip, pretrained=None)
    model = dataclasses.replace(model, backbone=backbone, clip=clip)
    return dataclasses.replace(config, model=model, from_scratch=config.from_scratch or bool(notes)), notes


def dry_run(config: SegTrainConfig, steps: int, out: Path, train: Any) -> dict[str, Any]:
    """Train ``config`` for ``steps`` steps on generated data in ``out``; ``train`` is
    :func:`train.train_segmenter.train`. Returns the report (also written to ``out/dry_run.json``)."""
    if config.data == "world":
        raise ValueError("--dry-run is for real-data recipes (the world's data is generated already)")
    config, notes = with_available_weights(config)
    data_root = write_sample_dataset(out / "datasets", config.data)
    config = dataclasses.replace(
        config, data_root=str(data_root), steps=steps, checkpoint_every=steps, log_every=1, eval_every=0, eval_limit=0
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    train(config, out / "run", resume=False, command="dry run")
    seconds = time.perf_counter() - started
    rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps_logged = [row for row in rows if "loss" in row]
    step_seconds = np.diff([0.0] + [row["seconds"] for row in steps_logged]).tolist()
    report = {
        "recipe": config.model.name,
        "steps": steps,
        "crop_size": config.crop_size,
        "batch_size": config.batch_size,
        "prompts_per_image": "all training classes" if config.training_prompts == "all" else "sampled",
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "random_weights": notes,
        "seconds_first_step": step_seconds[0] if step_seconds else None,
        "seconds_per_step": float(np.median(step_seconds[1:])) if len(step_seconds) > 1 else None,
        "seconds_total": seconds,
        "peak_memory_gib": _peak_memory_gib(),
        "losses": [{key: row[key] for key in row if key.startswith("loss") or key == "step"} for row in steps_logged],
    }
    (out / "dry_run.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _peak_memory_gib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    return kib * (1 if sys.platform != "darwin" else 1 / 1024) / 2**20


def dry_run_sentence(report: dict[str, Any]) -> str:
    """docs/training.md's sentence about a dry run's report (tested against results/dry_run_*.json)."""
    losses = ", ".join(f"{row['loss']:.1f}" for row in report["losses"])
    return (
        f"Measured on this project's 2-core CPU machine (`results/dry_run_{report['recipe']}.json`), "
        f"`{report['recipe']}` at {report['crop_size']} px, batch {report['batch_size']}, every training class a "
        f"prompt, random weights: {report['seconds_per_step']:.1f} s per step after a first step of "
        f"{report['seconds_first_step']:.1f} s, peak memory {report['peak_memory_gib']:.1f} GiB, and finite "
        f"losses ({losses})."
    )
