"""Where prompt guidance does and does not act: the granularity of each model's proposals under two prompt
sets, and how far the proposals move between them.

    python -m experiments.diagnose [--baseline checkpoints/baseline] [--pmp checkpoints/pmp] [--limit 200]
                             [--out results/diagnosis.json]
    python -m experiments.diagnose --ceilings-only world-voc --limit 100 --out results/ceilings_world_voc.json

Also, on world-full, what limits seen-class mIoU: where the pixels of each seen thing go, with stage 1
alone and with Eq. 3's ensemble (:func:`confusions`), and how far a perfect stage 2 or perfect masks at
the models' mask resolution could take it (:func:`ceilings`).

Each world-mixed scene is prompted twice: WHOLES (its stuff and its things) and PARTS (its stuff and the
parts of its things). Every proposal is assigned to the ground-truth segment it matches best (stuff,
thing or part, over the scene's own maps, whatever was prompted) when that IoU reaches 0.5, else to
none. A prompt-agnostic generator (the baseline) makes the same proposals under both sets by
construction; if PMP's prompts steer its proposals, PARTS should give it more part-shaped proposals
and a higher part recall than WHOLES. The proposal shift (:func:`demo.comparison.proposal_shift`) says how far
its masks moved at all.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from demo.comparison import mask_iou_matrix, proposal_shift
from pmp.metrics import SemSegMetric
from pmp.postprocess import semantic_map, upsample
from pmp.segmenter import Segmenter
from pmp.stage2 import classify_proposals
from train.evaluate import load_benchmark
from train.train_clip import load_clip_for_evaluation
from train.world.benchmarks import benchmark_scene
from train.world.demo import prompt_sets
from train.world.hierarchy import names_present
from train.world.scene import Scene
from train.world.vocabulary import CLASS_ID, PART_ID, SEEN_THINGS, STUFF_CLASSES

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


@dataclass
class BenchmarkPass:
    """Both stages, once, on each of the first images of a benchmark (world-full unless said), with their
    labels: what :func:`confusions` and :func:`ceilings` score, so neither runs the models again."""

    dataset: Any  # the benchmark (class names, seen flags, ignore label)
    outputs: list[tuple[np.ndarray, Any]]  # per image: (label (H, W), the Segmenter's StageOutputs)
    images: list[np.ndarray]  # per image: (H, W, 3) uint8, for stage-2 variants on the same proposals


def benchmark_pass(model: Any, limit: int, benchmark: str = "world-full") -> BenchmarkPass:
    """Run both stages on the first ``limit`` images of ``benchmark``, prompted with every class name
    (benchmarks with per-image prompt sets, world-mixed, are not taken)."""

    if benchmark == "world-mixed":
        raise ValueError("benchmark_pass prompts every class name; world-mixed gives each image its own prompts")
    dataset = load_benchmark(benchmark)
    names = list(dataset.class_names)
    outputs, images = [], []
    for index in range(limit):
        image, label = dataset[index]
        outputs.append((label, model.run_stages(image, names)))
        images.append(image)
    return BenchmarkPass(dataset, outputs, images)


def stage1_alone(model: Any, stages: Any) -> Any:
    """``model.combine`` with stage 1's p as the scores: clip weight 0 for every prompt, the names outside
    the model's training vocabulary included when its Eq. 3 weighs them apart (``clip_weight_unseen``)."""
    weight, unseen = model.config.uniform_clip_weights(0.0)
    return model.combine(stages, clip_weight=weight, clip_weight_unseen=unseen)


def confusions(
    model: Any, world_full: BenchmarkPass, clip_weights: tuple[float, ...] = (0.0, 0.65), top: int = 3
) -> dict[str, dict[str, list[tuple[str, float]]]]:
    """Where the pixels of each seen world-full thing go: per clip weight (0 = stage 1 alone), per class
    the ``top`` predicted names with their share of its pixels ("none" = no label). Every weight is
    combined from the same outputs of both stages."""

    dataset = world_full.dataset
    names = list(dataset.class_names)
    metrics = {weight: SemSegMetric(len(names), dataset.ignore_label) for weight in clip_weights}
    for label, stages in world_full.outputs:
        for weight, metric in metrics.items():
            combined = stage1_alone(model, stages) if weight == 0 else model.combine(stages, clip_weight=weight)
            metric.update(combined.semantic, label)
    result: dict[str, dict[str, list[tuple[str, float]]]] = {}
    for weight, metric in metrics.items():
        per_class = {}
        for name in SEEN_THINGS:
            column = metric.confusion[:, names.index(name)]  # predictions for its pixels; last row: none
            if column.sum():
                order = np.argsort(column)[::-1][:top]
                per_class[name] = [((names + ["none"])[int(i)], float(column[i] / column.sum())) for i in order]
        result[str(weight)] = per_class
    return result


CEILINGS = {
    "eq3": "Eq. 3 (clip weight 0.65), as reported",
    "stage1": "stage 1 alone (clip weight 0)",
    "pool_unadapted": "Eq. 3, mask pooling, the tiny CLIP before mask adaptation",
    "crop_unadapted": "Eq. 3, masked crops of every proposal, the tiny CLIP before mask adaptation",
    "oracle_classes": "the models' masks, each proposal given its true class",
    "grid": "perfect masks at the mask resolution",
}


def one_hot_labels(label: np.ndarray, num_classes: int, ignore_label: int) -> torch.Tensor:
    """(H, W) class ids -> (K, H, W) float one-hot; ignored pixels are all zero."""
    valid = torch.from_numpy(label != ignore_label)
    ids = torch.from_numpy(np.where(label != ignore_label, label, 0).astype(np.int64))
    return F.one_hot(ids, num_classes).permute(2, 0, 1).float() * valid  # (K, H, W)


def oracle_class_scores(masks: torch.Tensor, one_hot: torch.Tensor, no_object: torch.Tensor) -> torch.Tensor:
    """A perfect stage 2 for these proposals: (N, K) scores that give each proposal's whole class mass
    (1 - its no-object probability, what stage 1's p sums to) to the ground-truth class covering most of
    its pixels. A proposal that covers no labelled pixel scores 0 everywhere.

    ``masks`` (N, H, W) bool binarised proposals, ``one_hot`` (K, H, W) from :func:`one_hot_labels`."""
    counts = torch.einsum("nhw,khw->nk", masks.float(), one_hot)  # (N, K) labelled pixels per class
    covers = (counts.sum(1, keepdim=True) > 0).float()  # (N, 1)
    return F.one_hot(counts.argmax(1), one_hot.shape[0]).float() * covers * (1 - no_object)[:, None]


def grid_labels(one_hot: torch.Tensor, grid: tuple[int, int]) -> np.ndarray:
    """The best the models' maps can draw at ``grid`` resolution, approximately: the ground truth
    area-averaged to the grid, upsampled bilinearly as Mask2Former's class maps are, argmax. (H, W) ids."""
    coarse = F.adaptive_avg_pool2d(one_hot[None], grid)  # (1, K, h, w)
    return upsample(coarse, tuple(one_hot.shape[-2:]))[0].argmax(0).numpy()


def ceilings(model: Any, passed: BenchmarkPass, unadapted_clip: Any = None) -> dict[str, dict[str, float]]:
    """mIoU (all / seen / unseen) of the :data:`CEILINGS` rows on the images of ``passed`` (world-full's, say):
    how much of the gap to a perfect score is stage 2's and how much the masks'. Every row is scored with
    the evaluator's metric. The two ``_unadapted`` rows re-run stage 2 on the same proposals with
    ``unadapted_clip`` (a :class:`pmp.clip.CLIPModel`: the tiny CLIP before :mod:`train.adapt_clip`) and
    are left out without it."""

    dataset = passed.dataset
    num_classes = len(dataset.class_names)
    variants = {"pool_unadapted": "pool", "crop_unadapted": "crop"}  # row: stage2_mode with unadapted_clip
    rows = [row for row in CEILINGS if row not in variants or unadapted_clip is not None]
    metrics = {row: SemSegMetric(num_classes, dataset.ignore_label, dataset.seen) for row in rows}
    for (label, stages), image in zip(passed.outputs, passed.images):
        one_hot = one_hot_labels(label, num_classes, dataset.ignore_label)
        masks = upsample(stages.mask_logits[None], stages.image_size)[0].sigmoid() >= model.config.mask_threshold
        oracle = oracle_class_scores(masks, one_hot, stages.no_object)
        predictions = {
            "eq3": model.combine(stages).semantic,
            "stage1": stage1_alone(model, stages).semantic,
            "oracle_classes": semantic_map(oracle, stages.mask_logits, stages.image_size),
            "grid": grid_labels(one_hot, tuple(stages.mask_logits.shape[-2:])),
        }
        for row, mode in variants.items():
            if row in metrics:
                p_hat = stage2_p_hat(model, unadapted_clip, image, stages, mode)
                predictions[row] = model.combine(replace(stages, p_hat=p_hat)).semantic
        for row, predicted in predictions.items():
            metrics[row].update(np.asarray(predicted), label)
    result = {}
    for row, metric in metrics.items():
        scores = metric.compute()
        result[row] = {"miou": scores.miou, "miou_seen": scores.miou_seen, "miou_unseen": scores.miou_unseen}
    return result


def stage2_p_hat(model: Any, clip: Any, image: np.ndarray, stages: Any, stage2_mode: str) -> torch.Tensor:
    """(N, K) p_hat (Eq. 2) of ``clip`` for every proposal in ``stages`` (crops of all of them), on the
    pixels ``model`` computed them from (``image`` (H, W, 3) uint8, preprocessed as the model does)."""
    pixels, valid_hw = model.preprocess(Image.fromarray(image), model.config.image_size)  # (1, 3, Hp, Wp)
    text = clip.encode_text(stages.labels)
    n = stages.mask_logits.shape[0]
    return classify_proposals(
        clip, pixels, valid_hw, stages.mask_logits, text, stages.p, stage2_mode, crop_top_k=n
    ).float()


def eq3_title(clip_weights: tuple[float, float | None]) -> str:
    """The ceilings' "eq3" row title for the models' Eq. 3 weights (training names, other names or None)."""
    seen, unseen = clip_weights
    if unseen is None:
        return CEILINGS["eq3"].replace("0.65", f"{seen:g}")
    return f"Eq. 3 (clip weights {seen:g} / {unseen:g}: training names / other names), as reported"


def ceilings_markdown(
    results: dict[str, dict[str, dict[str, float]]],
    benchmark: str = "world-full",
    clip_weights: tuple[float, float | None] = (0.65, None),
) -> str:
    """One row per :data:`CEILINGS` entry, one column per model; ``clip_weights`` names the "eq3" row."""
    models = list(results)
    lines = [f"| {benchmark} mIoU (all / seen / unseen) | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for row, title in CEILINGS.items():
        if any(row not in results[m] for m in models):
            continue
        cells = [
            " / ".join(f"{100 * results[m][row][k]:.1f}" for k in ("miou", "miou_seen", "miou_unseen")) for m in models
        ]
        lines.append(f"| {eq3_title(clip_weights) if row == 'eq3' else title} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def confusions_markdown(
    result: dict[str, dict[str, list[tuple[str, float]]]], clip_weight_unseen: float | None = None
) -> str:
    """One row per seen thing, one column per clip weight of :func:`confusions`; with ``clip_weight_unseen``
    (the models' weight for names outside their training names) the columns of a weight above 0 say it."""
    weights = list(result)

    def title(weight: str) -> str:
        other = "" if clip_weight_unseen is None or float(weight) == 0 else f" ({clip_weight_unseen:g} for other names)"
        return f"its pixels at clip weight {weight}{other}"

    header = "| seen thing | " + " | ".join(title(w) for w in weights) + " |"
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
        prog="python -m experiments.diagnose", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", default="checkpoints/baseline")
    parser.add_argument("--pmp", default="checkpoints/pmp")
    parser.add_argument("--limit", type=int, default=200, help="world-mixed scenes (at most 500)")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here and the table beside it (.md)")
    parser.add_argument(
        "--unadapted-clip",
        default=None,
        metavar="FOLDER",
        help="the tiny CLIP before mask adaptation (python -m train.adapt_clip) for the ceilings' stage-2 rows",
    )
    parser.add_argument(
        "--ceilings-only",
        default=None,
        metavar="BENCHMARK",
        choices=("world-voc", "world-full", "world-parts"),
        help="only the ceilings table, on the first min(--limit, 100) images of this benchmark",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.limit <= 500:
        parser.error(f"--limit must be in [1, 500], got {args.limit}")

    models = {name: Segmenter.from_pretrained(path) for name, path in (("baseline", args.baseline), ("pmp", args.pmp))}
    weights = {(model.config.clip_weight, model.config.clip_weight_unseen) for model in models.values()}
    if len(weights) != 1:
        raise SystemExit(f"the two models weigh Eq. 3 differently ({sorted(weights, key=str)}): one table cannot")
    clip_weights = weights.pop()  # (training names, other names or None): what "as reported" means
    if args.ceilings_only:
        count, benchmark = min(args.limit, 100), args.ceilings_only
        passes = {name: benchmark_pass(model, count, benchmark) for name, model in models.items()}
        result = {
            "benchmark": benchmark,
            "images": count,
            "clip_weights": list(clip_weights),
            "ceilings": {name: ceilings(model, passes[name]) for name, model in models.items()},
        }
        table = f"What limits {benchmark} mIoU (first {count} images):\n\n" + ceilings_markdown(
            result["ceilings"], benchmark, clip_weights
        )
        return _report(result, table, args.out)
    result = diagnose(models, args.limit)
    result["clip_weights"] = list(clip_weights)
    world_full = min(args.limit, 100)
    passes = {name: benchmark_pass(model, world_full) for name, model in models.items()}
    result["confusions"] = {
        name: confusions(model, passes[name], (0.0, model.config.clip_weight)) for name, model in models.items()
    }
    unadapted = None
    if args.unadapted_clip:
        unadapted = load_clip_for_evaluation(args.unadapted_clip)
    result["ceilings"] = {name: ceilings(model, passes[name], unadapted) for name, model in models.items()}
    table = (
        markdown(result)
        + "".join(
            f"\n{name}, world-full (first {world_full} images):\n\n" + confusions_markdown(entry, clip_weights[1])
            for name, entry in result["confusions"].items()
        )
        + f"\nWhat limits world-full mIoU (first {world_full} images):\n\n"
        + ceilings_markdown(result["ceilings"], clip_weights=clip_weights)
    )
    return _report(result, table, args.out)


def _report(result: dict[str, Any], table: str, out: Path | None) -> int:
    print(table, end="")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        out.with_suffix(".md").write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
