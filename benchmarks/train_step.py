"""Seconds per training iteration of the paper-scale models on this machine's CPU (random weights).

    python -m benchmarks.train_step [--recipes ovseg-r101c-vitb16-pmp,m2f-r50-vitb16-pmp] [--batch 1] [--iters 2]
        [--json out.json]

One iteration = forward + Hungarian matching + losses (with aux losses on every layer) + backward +
AdamW step, at the recipe's crop size (640 px) with 171 prompts (COCO-Stuff's vocabulary) and a
synthetic-world image upscaled to 640 px as data. The CLIP (ViT-B/16) is only used for text embeddings
in training and is frozen, so random text embeddings stand in for it here. The README's GPU-hour
estimate is derived from these numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from pmp.modeling import build_mask_proposal_model
from train import world
from train.losses import SetCriterion
from train.matcher import HungarianMatcher
from train.recipes import get_recipe


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def make_targets(batch: int, size: int, num_prompts: int, rng: np.random.Generator) -> list[dict[str, torch.Tensor]]:

    targets = []
    for b in range(batch):
        scene = world.render_training_scene(int(rng.integers(1 << 30)), 128)
        label = torch.from_numpy(world.training_target(scene).astype(np.int64))
        label = F.interpolate(label[None, None].float(), size=(size, size), mode="nearest")[0, 0].long()
        present = [int(c) for c in label.unique() if c != 255]
        targets.append(
            {
                "labels": torch.tensor([c % num_prompts for c in present]),
                "masks": torch.stack([label == c for c in present]),
            }
        )
    return targets


def time_recipe(name: str, batch: int, iters: int, num_prompts: int) -> dict[str, float | str]:
    config = get_recipe(name)
    model_config = dataclasses.replace(config.model, clip=dataclasses.replace(config.model.clip, pretrained=None))
    text_dim = 512 if "B-16" in model_config.clip.model_name or "B-32" in model_config.clip.model_name else 768
    model = build_mask_proposal_model(model_config, text_dim=text_dim, load_backbone_weights=False).train()
    criterion = SetCriterion(HungarianMatcher(mask_loss=config.mask_loss), mask_loss=config.mask_loss)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    size = config.crop_size
    rng = np.random.default_rng(0)
    images = torch.randn(batch, 3, size, size)
    text = F.normalize(torch.randn(num_prompts, text_dim), dim=-1)
    targets = make_targets(batch, size, num_prompts, rng)
    seconds = []
    flops = 0
    for i in range(iters + 1):  # the first iteration warms up allocators and counts FLOPs; it is not timed
        counter = FlopCounterMode(display=False) if i == 0 else contextlib.nullcontext()
        start = time.perf_counter()
        with counter:
            outputs = model(images, text)
            loss = criterion.total_loss(criterion(outputs, targets))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - start)
        if i == 0:
            flops = counter.get_total_flops()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return {
        "recipe": name,
        "seconds_per_iter": statistics.median(seconds[1:]),
        "batch": batch,
        "crop": size,
        "prompts": num_prompts,
        "params_m": round(params, 1),
        "tflops_per_iter": round(flops / 1e12, 3),
    }


A100_BF16_PEAK_TFLOPS = 312.0  # NVIDIA's A100 datasheet: dense bf16 tensor-core peak
PAPER_IMAGE_ITERATIONS = 120_000 * 32  # OVSeg's SOLVER.MAX_ITER x IMS_PER_BATCH
UTILISATIONS = (0.30, 0.10, 0.03)  # the share of the peak a run reaches: unmeasured here (no GPU was lent)


def cost_table(results: dict) -> str:
    """docs/training.md's cost table from a ``--json`` file: measured FLOPs per image-iteration, and the
    A100-hours of the paper's schedule (120k x 32 image-iterations) at three shares of the bf16 peak."""
    shares = " | ".join(f"A100-hours at {share:.0%} of peak" for share in UTILISATIONS)
    lines = [
        f"| recipe | params | TFLOP per image-iteration (fwd + bwd) | {shares} |",
        "|---" * (3 + len(UTILISATIONS)) + "|",
    ]
    for row in results["rows"]:
        flop = row["tflops_per_iter"] / row["batch"] * 1e12 * PAPER_IMAGE_ITERATIONS
        hours = " | ".join(f"{flop / (A100_BF16_PEAK_TFLOPS * 1e12 * share) / 3600:.0f}" for share in UTILISATIONS)
        lines.append(
            f"| `{row['recipe']}` ({row['crop']} px) | {row['params_m']} M | {row['tflops_per_iter']:.3f} | {hours} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--recipes",
        default="ovseg-r101c-vitb16-baseline,ovseg-r101c-vitb16-pmp,m2f-r50-vitb16-baseline,m2f-r50-vitb16-pmp",
    )
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=171)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    hardware = f"{cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    print(f"hardware: {hardware}")
    rows = []
    for name in args.recipes.split(","):
        row = time_recipe(name.strip(), args.batch, args.iters, args.prompts)
        rows.append(row)
        print(
            f"{row['recipe']:>32}: {row['seconds_per_iter']:.2f} s/iter (batch {row['batch']}, {row['crop']} px, "
            f"{row['prompts']} prompts, {row['params_m']} M params, {row['tflops_per_iter']} TFLOP per iteration "
            "forward + backward)",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps({"hardware": hardware, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
