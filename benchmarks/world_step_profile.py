"""Where the time of one world training step goes, phase by phase, on one core.

    python -m benchmarks.world_step_profile [--recipe world-pmp] [--steps 12] [--json out.json]

Runs the training step of :mod:`train.train_segmenter` as it is, with its phases timed separately:
rendering the scenes, sampling prompts and building the targets, the forward pass, Hungarian matching
plus the losses (aux layers included), the backward pass and the AdamW step. The first step is not
timed. Use it before buying more steps: a phase that dominates is where a faster recipe starts.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from train.batches import TrainingData, build_batch
from train.losses import SetCriterion
from train.matcher import HungarianMatcher
from train.optimizer import parameter_groups
from train.recipes import get_recipe
from train.train_segmenter import build_segmenter

PHASES = ("render", "prompts+targets", "forward", "match+losses", "backward", "optimizer")


def profile(recipe: str, steps: int, batch_size: int | None) -> dict[str, object]:
    config = get_recipe(recipe)
    if batch_size:
        config.batch_size = batch_size
    segmenter = build_segmenter(config)
    data = TrainingData(config)
    with torch.no_grad():
        class_embeddings = segmenter.clip.encode_text(data.class_names)
    model = segmenter.proposal_model.train()
    optimizer = torch.optim.AdamW(parameter_groups(model, config), lr=config.lr, weight_decay=config.weight_decay)
    criterion = SetCriterion(HungarianMatcher())
    times: dict[str, list[float]] = {phase: [] for phase in PHASES}
    for step in range(steps + 1):
        marks = [time.perf_counter()]
        samples = [data.sample(step * config.batch_size + i) for i in range(config.batch_size)]
        marks.append(time.perf_counter())
        images, text, text_mask, targets = build_batch(samples, step, class_embeddings, config, torch.device("cpu"))
        marks.append(time.perf_counter())
        outputs = model(images, text, text_mask)
        marks.append(time.perf_counter())
        loss = criterion.total_loss(criterion(outputs, targets))
        marks.append(time.perf_counter())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        marks.append(time.perf_counter())
        optimizer.step()
        marks.append(time.perf_counter())
        if step:  # the first step warms up allocators and caches
            for phase, start, end in zip(PHASES, marks, marks[1:]):
                times[phase].append(end - start)
    medians = {phase: statistics.median(values) for phase, values in times.items()}
    total = sum(medians.values())
    return {
        "recipe": recipe,
        "batch": config.batch_size,
        "crop": config.crop_size,
        "steps_timed": steps,
        "seconds_per_step": total,
        "phases_s": medians,
        "phases_share": {phase: value / total for phase, value in medians.items()},
        "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), "
        f"torch {torch.__version__}",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="world-pmp")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (training runs one process per core)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = profile(args.recipe, args.steps, args.batch_size)
    print(
        f"{result['recipe']}: {result['seconds_per_step']:.3f} s per step "
        f"(batch {result['batch']}, {result['crop']} px)"
    )
    for phase in PHASES:
        print(f"  {phase:>16}: {1000 * result['phases_s'][phase]:7.1f} ms  {100 * result['phases_share'][phase]:5.1f}%")
    print(f"  hardware: {result['hardware']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
