"""Is what remains of the error a bias toward the names stage 1 was trained on? Calibrated stacking, measured.

    python -m experiments.calibration --checkpoint checkpoints/baseline --benchmark world-voc-dev --limit 200 \\
        --gammas -0.3,0,0.5,1,2 --out results/calibration/baseline_world-voc-dev.json

A segmenter trained on seen names tends to give an unseen thing the seen name it resembles (a cat read as
the dog stage 1 was taught). Generalized zero-shot learning's usual remedy is calibrated stacking (Chao et
al., "An empirical study and analysis of generalized zero-shot learning for object recognition in the
wild", ECCV 2016): subtract a constant gamma from every seen class's score before the argmax. Here the
score is Eq. 3's p_out with FC-CLIP's two CLIP weights, so gamma divides each seen prompt's p_out by
exp(gamma) (:func:`calibrate`); gamma 0 is the model as evaluated, a negative gamma favours seen names.

Stage 1 and stage 2 run once per image; every gamma is scored on the same outputs. The result also holds
the confusion at gamma 0: where each class's pixels go (:func:`pixel_shares`). If the confusions run
both ways between a seen and an unseen name (dog to cat as much as cat to dog), the error is not a bias
that a constant can undo, and every gamma above 0 costs seen pixels for few unseen ones.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from pmp.metrics import SemSegMetric
from pmp.postprocess import semantic_map
from pmp.segmenter import Segmenter
from pmp.stage2 import ensemble, prompt_clip_weights, seen_prompts
from train.evaluate import BenchmarkDataset, as_benchmark_classes, load_benchmark, to_json
from train.table1 import pct

TOP_SHARES = 4  # destinations listed per class
DEV = ("world-voc-dev", "world-full-dev")  # the scenes for choices about the model


def _miou_cell(row: dict[str, Any]) -> str:
    return f"{pct(row['miou'])} / {pct(row['miou_seen'])} / {pct(row['miou_unseen'])}"


def calibrate(scores: Tensor, seen: Tensor, gamma: float) -> Tensor:
    """(N, K) positive scores, (K,) bool seen prompts -> the scores with every seen column divided by
    exp(gamma): calibrated stacking's log-score minus gamma, on a product-form score."""
    return scores * torch.exp(-float(gamma) * seen.to(scores))


def pixel_shares(confusion: np.ndarray, class_names: Sequence[str], top: int = TOP_SHARES) -> dict[str, Any]:
    """A :class:`pmp.metrics.SemSegMetric` confusion ((K + 1, K): prediction, ground truth; row K =
    nothing predicted) -> per class with pixels, its pixel count and the ``top`` predictions taking the
    largest shares of them, largest first ("nothing" for row K)."""
    destinations = list(class_names) + ["nothing"]
    shares: dict[str, Any] = {}
    for column, name in enumerate(class_names):
        pixels = int(confusion[:, column].sum())
        if pixels == 0:
            continue
        order = np.argsort(-confusion[:, column], kind="stable")[:top]
        shares[name] = {
            "pixels": pixels,
            "to": {destinations[row]: float(confusion[row, column] / pixels) for row in order},
        }
    return shares


def calibration_sweep(
    segmenter: Any,
    dataset: BenchmarkDataset,
    gammas: Sequence[float],
    *,
    clip_weight: float,
    clip_weight_unseen: float,
    limit: int | None = None,
) -> dict[str, Any]:
    """mIoU (all / seen / unseen) at every gamma, and the confusion at gamma 0, over the first ``limit``
    images; ``segmenter`` is a :class:`pmp.segmenter.Segmenter` (``run_stages``, ``config.training_names``)."""
    if 0.0 not in gammas:
        gammas = [0.0, *gammas]
    class_names = list(dataset.class_names)
    class_index = {name: i for i, name in enumerate(class_names)}
    seen_classes = np.asarray(dataset.seen, dtype=bool)
    training_names = segmenter.config.training_names
    if not training_names:
        raise ValueError("calibration needs the names stage 1 was trained on, and this model's config has none")
    metrics = {float(g): SemSegMetric(len(class_names), dataset.ignore_label, seen_classes) for g in gammas}
    count = len(dataset) if limit is None else min(int(limit), len(dataset))
    with torch.no_grad():
        for index in range(count):
            image, label = dataset[index]
            labels = dataset.image_prompts(index) or class_names
            stages = segmenter.run_stages(image, labels)
            weights = prompt_clip_weights(labels, clip_weight, clip_weight_unseen, training_names)  # (K,)
            scores = ensemble(stages.p, stages.p_hat, weights, segmenter.config.ensemble)  # (N, K)
            seen = seen_prompts(labels, training_names)  # (K,)
            for gamma, metric in metrics.items():
                semantic = semantic_map(calibrate(scores, seen, gamma), stages.mask_logits, stages.image_size)
                metric.update(as_benchmark_classes(semantic.cpu().numpy(), labels, class_index), label)
    rows = []
    for gamma, metric in sorted(metrics.items()):
        at = metric.compute()
        rows.append({"gamma": gamma, "miou": at.miou, "miou_seen": at.miou_seen, "miou_unseen": at.miou_unseen})
    return {
        "benchmark": dataset.name,
        "num_images": count,
        "clip_weight": clip_weight,
        "clip_weight_unseen": clip_weight_unseen,
        "seen_classes": [name for name, flag in zip(class_names, seen_classes) if flag],
        "gammas": rows,
        "pixel_shares": pixel_shares(metrics[0.0].confusion, class_names),
    }


def format_table(result: dict[str, Any]) -> str:
    """Markdown: mIoU against gamma, then where each class's pixels go at gamma 0."""
    seen = set(result["seen_classes"])
    lines = [
        f"{result['benchmark']}, first {result['num_images']} images, CLIP weights "
        f"{result['clip_weight']:g} / {result['clip_weight_unseen']:g}:",
        "",
        "| gamma | mIoU (all / seen / unseen) |",
        "|---|---|",
    ]
    for row in result["gammas"]:
        lines.append(f"| {row['gamma']:g} | {_miou_cell(row)} |")
    lines += ["", "| class | its pixels at gamma 0 |", "|---|---|"]
    for name, entry in result["pixel_shares"].items():
        kind = "seen" if name in seen else "unseen"
        shares = ", ".join(f"{target} {100 * share:.0f}%" for target, share in entry["to"].items())
        lines.append(f"| {name} ({kind}) | {shares} |")
    return "\n".join(lines) + "\n"


def summary_table(folder: Path, models: Sequence[str] = ("baseline", "pmp"), benchmarks: Sequence[str] = DEV) -> str:
    """Markdown from ``folder``'s ``<model>_<benchmark>.json`` (what ``--out`` writes): one row per model and
    gamma, mIoU (all / seen / unseen) per benchmark; the table in docs/results.md."""
    results = {
        (model, benchmark): json.loads((folder / f"{model}_{benchmark}.json").read_text())
        for model in models
        for benchmark in benchmarks
    }
    lines = [
        "| model | gamma | " + " | ".join(f"{b} mIoU (all / seen / unseen)" for b in benchmarks) + " |",
        "|---|---|" + "---|" * len(benchmarks),
    ]
    for model in models:
        for index, row in enumerate(results[model, benchmarks[0]]["gammas"]):
            cells = [_miou_cell(results[model, benchmark]["gammas"][index]) for benchmark in benchmarks]
            lines.append(f"| {model} | {row['gamma']:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.calibration", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a segmenter folder or Hub repo")
    parser.add_argument("--benchmark", default="world-voc-dev")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--gammas", default="-0.3,0,0.5,1,2", help="comma-separated calibration constants")
    parser.add_argument("--clip-weight", type=float, default=0.4, help="Eq. 3's CLIP weight for trained names")
    parser.add_argument("--clip-weight-unseen", type=float, default=0.9, help="... and for the others")
    parser.add_argument("--out", type=Path, help="write the JSON here and the table beside it (.md)")
    return parser


def main(argv: list[str] | None = None) -> int:

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        gammas = [float(value) for value in args.gammas.split(",")]
        dataset = load_benchmark(args.benchmark)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    torch.set_num_threads(1)
    segmenter = Segmenter.from_pretrained(args.checkpoint, device=torch.device("cpu"))
    result = calibration_sweep(
        segmenter,
        dataset,
        gammas,
        clip_weight=args.clip_weight,
        clip_weight_unseen=args.clip_weight_unseen,
        limit=args.limit,
    )
    result["checkpoint"] = args.checkpoint
    table = format_table(result)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(to_json(result) + "\n")  # strict JSON: an undefined mIoU is null
        args.out.with_suffix(".md").write_text(table)
    sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
