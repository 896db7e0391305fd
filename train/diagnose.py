"""Where prompt guidance does and does not act: the granularity of each model's proposals under two prompt
sets, and how far the proposals move between them.

    python -m train.diagnose [--baseline checkpoints/baseline] [--pmp checkpoints/pmp] [--limit 200]
                             [--out results/diagnosis.json]

Also: where the pixels of each seen thing of world-full go, with stage 1 alone and with Eq. 3's
ensemble (:func:`confusions`): what limits seen-class mIoU.

Each world-mixed scene is prompted twice: WHOLES (its stuff and its things) and PARTS (its stuff and the
parts of its things). Every proposal is assigned to the ground-truth segment it matches best (stuff,
thing or part, over the scene's own maps, whatever was prompted) when that IoU reaches 0.5, else to
none. A prompt-agnostic generator (the baseline) makes the same proposals under both sets by
construction; if PMP's prompts steer its proposals, PARTS should give it more part-shaped proposals
and a higher part recall than WHOLES. The proposal shift (:func:`pmp.demo.proposal_shift`) says how far
its masks moved at all.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pmp.demo import mask_iou_matrix, proposal_shift
from train.world.benchmarks import benchmark_scene
from train.world.hierarchy import names_present
from train.world.scene import Scene
from train.world.vocabulary import CLASS_ID, PART_ID, STUFF_CLASSES

LEVELS = ("stuff", "thing", "part")
PROMPT_SETS = ("wholes", "parts")
MATCH_IOU = 0.5


def scene_segments(scene: Scene) -> tuple[np.ndarray, list[str]]:
    """Every segment of the scene's maps at its own granularity: (S, H, W) bool and each one's level."""
    present = names_present(scene.semantic, scene.parts)
    masks, levels = [], []
    for name in present["stuff"] + present["thing"]:
        masks.append(scene.semantic == CLASS_ID[name])
        levels.append("stuff" if name in STUFF_CLASSES else "thing")
    things = np.isin(scene.semantic, [CLASS_ID[name] for name in present["thing"]])
    for name in present["part"]:
        masks.append(things & (scene.parts == PART_ID[name]))
        levels.append("part")
    return np.stack(masks), levels


def prompt_sets(scene: Scene) -> dict[str, list[str]]:
    present = names_present(scene.semantic, scene.parts)
    stuff = list(present["stuff"])
    return {"wholes": stuff + list(present["thing"]), "parts": stuff + list(present["part"])}


def proposal_levels(proposals: np.ndarray, segments: np.ndarray, levels: list[str]) -> tuple[list[str], np.ndarray]:
    """Each proposal's matched level (or "none"), and each segment's best IoU over the proposals."""
    iou = mask_iou_matrix(proposals >= 0.5, segments)  # (N, S); segments are never empty
    best = iou.argmax(1)
    matched = [levels[int(j)] if iou[n, j] >= MATCH_IOU else "none" for n, j in enumerate(best)]
    return matched, iou.max(0)


def diagnose(models: dict[str, Any], limit: int) -> dict[str, Any]:
    """Per model and prompt set: the share of proposals at each level, the recall (mean best IoU) of each
    level's segments; per model: the mean proposal shift between the two sets."""
    tallies: dict[str, dict[str, dict[str, list[float]]]] = {
        name: {kind: {} for kind in PROMPT_SETS} for name in models
    }
    shifts: dict[str, list[float]] = {name: [] for name in models}
    for index in range(limit):
        scene, _ = benchmark_scene("world-mixed", index)
        segments, levels = scene_segments(scene)
        sets = prompt_sets(scene)
        picture = Image.fromarray(scene.image)
        for name, model in models.items():
            logits = {}
            for kind, prompts in sets.items():
                with torch.inference_mode():
                    result = model.segment(picture, prompts)
                logits[kind] = result.mask_logits.float().sigmoid().numpy()
                matched, best = proposal_levels(np.asarray(result.proposals), segments, levels)
                tally = tallies[name][kind]
                for level in (*LEVELS, "none"):
                    tally.setdefault(f"share_{level}", []).append(matched.count(level) / len(matched))
                for level in LEVELS:
                    chosen = [b for b, lv in zip(best, levels) if lv == level]
                    if chosen:
                        tally.setdefault(f"recall_{level}", []).extend(chosen)
            shifts[name].append(proposal_shift(logits["wholes"], logits["parts"]).shift)
    return {
        "images": limit,
        "match_iou": MATCH_IOU,
        "models": {
            name: {
                "shift": statistics.fmean(shifts[name]),
                **{kind: {key: statistics.fmean(v) for key, v in tallies[name][kind].items()} for kind in PROMPT_SETS},
            }
            for name in models
        },
    }


def confusions(
    model: Any, limit: int, clip_weights: tuple[float, ...] = (0.0, 0.65), top: int = 3
) -> dict[str, dict[str, list[tuple[str, float]]]]:
    """Where the pixels of each seen world-full thing go: per clip weight (0 = stage 1 alone), per class
    the ``top`` predicted names with their share of its pixels ("none" = no label). Both stages run once
    per image; every weight is combined from the same outputs."""
    from train.evaluate import load_benchmark
    from train.world.vocabulary import SEEN_THINGS

    dataset = load_benchmark("world-full")
    names = list(dataset.class_names)
    count = len(names)
    matrices = {weight: np.zeros((count + 1, count), np.int64) for weight in clip_weights}
    for index in range(limit):
        image, label = dataset[index]
        stages = model.run_stages(image, names)
        valid = label != dataset.ignore_label
        for weight, matrix in matrices.items():
            predicted = np.asarray(model.combine(stages, clip_weight=weight).semantic)[valid]
            np.add.at(matrix, (np.where(predicted < 0, count, predicted), label[valid].astype(np.int64)), 1)
    result: dict[str, dict[str, list[tuple[str, float]]]] = {}
    for weight, matrix in matrices.items():
        per_class = {}
        for name in SEEN_THINGS:
            column = matrix[:, names.index(name)]
            if column.sum():
                order = np.argsort(column)[::-1][:top]
                per_class[name] = [((names + ["none"])[int(i)], float(column[i] / column.sum())) for i in order]
        result[str(weight)] = per_class
    return result


def confusions_markdown(result: dict[str, dict[str, list[tuple[str, float]]]]) -> str:
    weights = list(result)
    header = "| seen thing | " + " | ".join(f"its pixels at clip weight {w}" for w in weights) + " |"
    lines = [header, "|---|" + "---|" * len(weights)]
    for name in result[weights[0]]:
        cells = [", ".join(f"{label} {100 * share:.0f}%" for label, share in result[w][name]) for w in weights]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown(result: dict[str, Any]) -> str:
    header = (
        "| model | prompts | proposals at stuff / thing / part / none (%) | recall stuff / thing / part | "
        "shift between the sets |"
    )
    lines = [header, "|---|---|---|---|---|"]
    for name, entry in result["models"].items():
        for kind in PROMPT_SETS:
            row = entry[kind]
            shares = " / ".join(f"{100 * row[f'share_{level}']:.1f}" for level in (*LEVELS, "none"))
            recall = " / ".join(f"{100 * row.get(f'recall_{level}', float('nan')):.1f}" for level in LEVELS)
            shift = f"{100 * entry['shift']:.1f}%" if kind == "wholes" else ""
            lines.append(f"| {name} | {kind} | {shares} | {recall} | {shift} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.diagnose", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", default="checkpoints/baseline")
    parser.add_argument("--pmp", default="checkpoints/pmp")
    parser.add_argument("--limit", type=int, default=200, help="world-mixed scenes (at most 500)")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here and the table beside it (.md)")
    args = parser.parse_args(argv)
    if not 1 <= args.limit <= 500:
        parser.error(f"--limit must be in [1, 500], got {args.limit}")
    from pmp.segmenter import Segmenter

    models = {name: Segmenter.from_pretrained(path) for name, path in (("baseline", args.baseline), ("pmp", args.pmp))}
    result = diagnose(models, args.limit)
    result["confusions"] = {name: confusions(model, min(args.limit, 100)) for name, model in models.items()}
    table = markdown(result) + "".join(
        f"\n{name}, world-full (first {min(args.limit, 100)} images):\n\n" + confusions_markdown(entry)
        for name, entry in result["confusions"].items()
    )
    print(table, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
