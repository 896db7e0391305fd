"""Which views of each proposal stage 2 should read: OVSeg's masked crop, its box with the image kept, or both.

    python -m experiments.crop_views [--limit 100] [--out results/crop_views.json]
    python -m experiments.crop_views --dev --limit 200 --out results/crop_views_dev.json   # held-out scenes

Why: half of the bundled baseline's matched proposals fit their region with IoU under 0.7, and masked
crops of those are misread most of the time (``python -m train.adapt_clip --measure-only --crop-errors``).
A proposal that covers only part of its object (or one part of a thing whose whole was prompted) shows
CLIP a fragment in a field of mean colour; the box view shows the same square with the image kept, so
the object around the fragment is visible. Each bundled model is evaluated (:func:`train.evaluate.evaluate`)
with each of :data:`ROWS` as its ``crop_views`` and ``crop_top_k`` and everything else as bundled; stage 1
is the same in every row, so the rows differ only in p_hat (Eq. 2).

``--dev`` measures the same rows on each benchmark's held-out scenes (``world-voc-dev`` and so on,
:data:`train.world.vocabulary.DEV_BENCHMARKS`): the first run chose the views on the first 100 images of
the benchmarks themselves, which Table 1 also reports.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from pmp.segmenter import Segmenter
from train.bundle import ROOT, write_json
from train.evaluate import evaluate, load_benchmark
from train.table1 import BENCHMARKS, MAIN_MODELS
from train.world.vocabulary import DEV_IMAGES, DEV_SUFFIX, get_benchmark

# (crop_views, crop_top_k or None = every proposal): OVSeg's crop, the box alone, both; both for fewer
# proposals (the rest keep p_hat = p), because each view costs one image-tower forward per proposal.
ROWS: tuple[tuple[tuple[str, ...], int | None], ...] = (
    (("masked",), None),
    (("box",), None),
    (("masked", "box"), None),
    (("masked", "box"), 16),
    (("masked", "box"), 12),
)
METRICS = ("miou", "miou_seen", "miou_unseen")


def row_name(views: tuple[str, ...], top_k: int | None) -> str:
    """A row's key: "masked+box" (every proposal cropped) or "masked+box@16" (the top 16)."""
    return "+".join(views) + ("" if top_k is None else f"@{top_k}")


def compare_crop_views(
    model_dirs: dict[str, Path], limit: int, benchmarks: tuple[str, ...] = BENCHMARKS
) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """{model: {row_name: {benchmark: {miou, miou_seen, miou_unseen}}}} on each benchmark's first ``limit`` images."""

    results: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for name, folder in model_dirs.items():
        segmenter = Segmenter.from_pretrained(folder)
        bundled = segmenter.config
        if bundled.stage2_mode != "crop":
            raise ValueError(f"{folder} classifies proposals by {bundled.stage2_mode!r}; crop views need 'crop'")
        every = bundled.decoder.num_queries
        for views, top_k in ROWS:
            segmenter.config = dataclasses.replace(bundled, crop_views=views, crop_top_k=top_k or every)
            key = row_name(views, top_k)
            for benchmark in benchmarks:
                metrics = evaluate(
                    segmenter, load_benchmark(benchmark), limit, proposal_recall=False, show_progress=False
                )
                row = {metric: metrics[metric] for metric in METRICS}
                results.setdefault(name, {}).setdefault(key, {})[benchmark] = row
                print(f"{name:>8} {key:>14} {benchmark:>12}: mIoU {row['miou']:.3f}", flush=True)
        segmenter.config = bundled
    return results


def crop_views_table(results: dict[str, dict[str, dict[str, dict[str, float]]]]) -> str:
    """Markdown: per model and view set, mIoU (seen / unseen) per benchmark; n/a where a benchmark has no seen class."""

    def cell(row: dict[str, float]) -> str:
        seen, unseen = (
            "n/a" if row[k] is None or row[k] != row[k] else f"{100 * row[k]:.1f}" for k in METRICS[1:]
        )  # NaN, or null once in JSON: a benchmark without seen (or unseen) classes
        return f"{100 * row['miou']:.1f} ({seen} / {unseen})"

    benchmarks = list(next(iter(next(iter(results.values())).values())))
    lines = [
        "| model | views | " + " | ".join(f"{b} mIoU (seen / unseen)" for b in benchmarks) + " |",
        "|---|---|" + "---|" * len(benchmarks),
    ]
    for name, per_views in results.items():
        for key, rows in per_views.items():
            views, _, top_k = key.partition("@")
            shown = views.replace("+", " + ") + (f", top {top_k} proposals" if top_k else "")
            lines.append(f"| {name} | {shown} | " + " | ".join(cell(rows[b]) for b in benchmarks) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.crop_views",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints")
    parser.add_argument("--limit", type=int, default=100, help="images per benchmark (its first N)")
    parser.add_argument(
        "--dev", action="store_true", help=f"each benchmark's held-out scenes ({DEV_IMAGES} each: world-voc-dev, ...)"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here and the table beside it (.md)")
    args = parser.parse_args(argv)
    benchmarks = tuple(b + DEV_SUFFIX for b in BENCHMARKS) if args.dev else BENCHMARKS
    most = min(get_benchmark(b).num_images for b in benchmarks)
    if not 1 <= args.limit <= most:
        parser.error(f"--limit must be in [1, {most}], got {args.limit}")
    models = {name: args.checkpoints / name for name in MAIN_MODELS}
    results: dict[str, Any] = compare_crop_views(models, args.limit, benchmarks)
    table = crop_views_table(results)
    print(table, end="")
    if args.out:
        write_json(args.out, {"limit": args.limit, "benchmarks": list(benchmarks), "results": results})
        args.out.with_suffix(".md").write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
