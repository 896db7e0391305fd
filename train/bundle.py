"""Reproduce the bundled offline models from scratch: tiny CLIP, then baseline and PMP, then the tables.

    python -m train.bundle                      # tiny CLIP + baseline + PMP -> checkpoints/, results/
    python -m train.bundle --ablations          # Eq. 5 literal and the Fig. 5 ablations at the same budget
    python -m train.bundle --evaluate-only      # re-run only the evaluation tables

The baseline and PMP are the same recipe (``train.recipes.world_recipe``) with one field changed,
``decoder.text_mode``: same data indices, seeds, schedule and prompt scheme. On a 2-core machine the two
segmenters train side by side, one core each. Checkpoints are re-saved in float16 so that every file
stays under 10 MB and the bundle under 40 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ("world-voc", "world-full", "world-parts", "world-mixed")
INVESTIGATED = ("world-voc", "world-full", "world-parts")  # the stage-2 investigation's benchmarks
# The bundled PMP was trained with the residual variant of Eq. 5 (see pmp.modeling.text_conditioning).
MAIN_MODELS = {"baseline": "none", "pmp": "pmp_residual"}
ABLATIONS = {"pmp_literal": "pmp", "concat": "concat", "concat_drop": "concat_drop", "text_queries": "text_queries"}
CLIP_WEIGHT_SWEEP = (0.0, 0.2, 0.35, 0.5, 0.65, 0.8, 1.0)  # Eq. 3's exponent of p_hat; 0 = stage 1 alone


def run_parallel(commands: list[list[str]], logs: list[Path], threads_each: int) -> None:
    """Run commands side by side with ``threads_each`` torch threads each; fail if any fails."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads_each),
        "MKL_NUM_THREADS": str(threads_each),
        "PYTHONPATH": str(ROOT),
    }
    processes = []
    for command, log in zip(commands, logs):
        log.parent.mkdir(parents=True, exist_ok=True)
        handle = log.open("a")
        processes.append(
            (
                subprocess.Popen(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT),
                handle,
                command,
                log,
            )
        )
    failed = []
    for process, handle, command, log in processes:
        if process.wait() != 0:
            failed.append(f"{' '.join(command)} (see {log})")
        handle.close()
    if failed:
        raise RuntimeError("training failed: " + "; ".join(failed))


def train_clip(runs: Path, checkpoints: Path, steps: int | None) -> None:
    """DDP over one process per core (gloo): small convolutions use one core far better than two threads."""
    processes = max(1, min(2, os.cpu_count() or 1))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(processes),
        "-m",
        "train.train_clip",
        "--out",
        str(runs / "clip"),
        "--batch-size",
        str(64 // processes),
    ]
    if steps:
        command += ["--steps", str(steps)]
    run_parallel([command], [runs / "clip.log"], threads_each=1)
    install_clip(runs / "clip" / "model", checkpoints / "tiny-clip")


def install_clip(source: Path, target: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)


def train_segmenters(models: dict[str, str], runs: Path, checkpoints: Path | None, steps: int | None) -> None:
    """Train the given {name: text_mode} two at a time, one core each; copy finished models to checkpoints/."""
    from pmp.segmenter import Segmenter

    names = list(models)
    threads = max(1, (os.cpu_count() or 2) // 2)
    for start in range(0, len(names), 2):
        group = names[start : start + 2]
        commands = []
        for name in group:
            command = [
                sys.executable,
                "-m",
                "train.train_segmenter",
                "--recipe",
                f"world-{'baseline' if models[name] == 'none' else models[name]}",
                "--out",
                os.path.relpath(runs / name, ROOT),
                "--init-clip",
                "checkpoints/tiny-clip",
            ]
            if steps:
                command += ["--steps", str(steps)]
            commands.append(command)
        run_parallel(commands, [runs / f"{name}.log" for name in group], threads_each=threads)
        if checkpoints is not None:
            for name in group:
                card = (runs / name / "model" / "README.md").read_text()
                Segmenter.from_pretrained(runs / name / "model").save_pretrained(
                    checkpoints / name, model_card=card, half_precision=True
                )


def evaluate_models(
    model_dirs: dict[str, Path], out_json: Path, limit: int | None, sweep: tuple[float, ...] = ()
) -> dict[str, dict[str, dict]]:
    from pmp.segmenter import Segmenter
    from train.evaluate import evaluate, load_benchmark, to_json

    results: dict[str, dict[str, dict]] = {}
    for name, folder in model_dirs.items():
        segmenter = Segmenter.from_pretrained(folder)
        results[name] = {}
        for benchmark in BENCHMARKS:
            started = time.perf_counter()
            metrics = evaluate(
                segmenter, load_benchmark(benchmark), limit=limit, clip_weight_sweep=sweep, show_progress=False
            )
            metrics["seconds"] = round(time.perf_counter() - started, 1)
            results[name][benchmark] = metrics
            print(
                f"{name:>14} {benchmark:>12}: mIoU {metrics['miou']:.3f} seen {metrics['miou_seen']:.3f} "
                f"unseen {metrics['miou_unseen']:.3f} recall {metrics['proposal_recall']:.3f}",
                flush=True,
            )
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(to_json(results) + "\n")
    return results


STAGE2_VARIANTS = {  # name: (stage2_mode, clip_weight); clip_weight is Eq. 3's exponent of CLIP's p_hat
    "pool, clip weight 0.65 (default)": ("pool", 0.65),
    "crop (OVSeg), clip weight 0.65": ("crop", 0.65),
    "stage 1 only (clip weight 0)": ("pool", 0.0),
    "CLIP only, pool (clip weight 1)": ("pool", 1.0),
}


def investigate_stage2(model_dirs: dict[str, Path], out_json: Path, limit: int) -> str:
    """mIoU (all / unseen) of each model under each stage-2 variant; the proposals are the same in all."""
    from pmp.segmenter import Segmenter
    from train.evaluate import evaluate, load_benchmark, to_json

    results: dict[str, dict[str, dict[str, float]]] = {}
    lines = [
        "| model | stage 2 | " + " | ".join(f"{b} mIoU (all / unseen)" for b in INVESTIGATED) + " |",
        "|---|---|" + "---|" * len(INVESTIGATED),
    ]
    for name, folder in model_dirs.items():
        segmenter = Segmenter.from_pretrained(folder)
        for variant, (mode, weight) in STAGE2_VARIANTS.items():
            cells = []
            for benchmark in INVESTIGATED:
                m = evaluate(
                    segmenter,
                    load_benchmark(benchmark),
                    limit=limit,
                    clip_weight=weight,
                    stage2_mode=mode,
                    proposal_recall=False,
                    show_progress=False,
                )
                results.setdefault(name, {}).setdefault(variant, {})[benchmark] = {
                    "miou": m["miou"],
                    "miou_unseen": m["miou_unseen"],
                }
                cells.append(f"{100 * m['miou']:.1f} / {_pct(m['miou_unseen'])}")
            lines.append(f"| {name} | {variant} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(to_json(results) + "\n")
    return "\n".join(lines) + "\n"


def markdown_table(results: dict[str, dict[str, dict]]) -> str:
    """One row per model, mIoU all / seen / unseen and proposal recall per benchmark (in %)."""
    header = "| model | " + " | ".join(f"{b} mIoU (all / seen / unseen) | {b} recall" for b in BENCHMARKS) + " |"
    lines = [header, "|---|" + "---|---|" * len(BENCHMARKS)]
    for name, per_benchmark in results.items():
        cells = []
        for benchmark in BENCHMARKS:
            m = per_benchmark[benchmark]
            cells.append(f"{100 * m['miou']:.1f} / {_pct(m['miou_seen'])} / {_pct(m['miou_unseen'])}")
            cells.append(f"{100 * m['proposal_recall']:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def granularity_table(results: dict[str, dict[str, dict]], benchmark: str = "world-mixed") -> str:
    """world-mixed per granularity: mIoU and proposal recall over the names of each granularity (in %)."""
    from train.world.vocabulary import GRANULARITIES, GRANULARITY

    header = "| model | " + " | ".join(f"{g} mIoU / recall" for g in GRANULARITIES) + " |"
    lines = [header, "|---|" + "---|" * len(GRANULARITIES)]
    for name, per_benchmark in results.items():
        m = per_benchmark[benchmark]
        cells = []
        for level in GRANULARITIES:

            def mean(values: dict, level: str = level) -> float | None:
                kept = [v for k, v in values.items() if GRANULARITY[k] == level and v is not None and v == v]
                return sum(kept) / len(kept) if kept else None

            cells.append(f"{_pct(mean(m['per_class']))} / {_pct(mean(m.get('per_class_recall', {})))}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def seed_table(result_files: list[Path]) -> str:
    """mIoU and proposal recall per model and benchmark as mean ± sample std over runs with different seeds
    (one results JSON per seed, as :func:`evaluate_models` writes them), in %."""
    import math

    runs = [json.loads(Path(f).read_text()) for f in result_files]
    header = (
        f"| model ({len(runs)} seeds: mean ± std) | " + " | ".join(f"{b} mIoU | {b} recall" for b in BENCHMARKS) + " |"
    )
    lines = [header, "|---|" + "---|---|" * len(BENCHMARKS)]
    for name in runs[0]:
        cells = []
        for benchmark in BENCHMARKS:
            for key in ("miou", "proposal_recall"):
                values = [100 * run[name][benchmark][key] for run in runs]
                mean = sum(values) / len(values)
                std = math.sqrt(sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1))
                cells.append(f"{mean:.1f} ± {std:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_clip_weight_sweep(results: dict[str, dict[str, dict]], out_png: Path) -> None:
    """mIoU (all / seen / unseen) against Eq. 3's clip weight, one panel per benchmark, both models."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(BENCHMARKS), figsize=(3.6 * len(BENCHMARKS), 3.4), sharey=True)
    styles = {"miou": "-", "miou_seen": "--", "miou_unseen": ":"}
    for axis, benchmark in zip(axes, BENCHMARKS):
        for index, (name, per_benchmark) in enumerate(results.items()):
            rows = per_benchmark[benchmark].get("clip_weight_sweep", [])
            weights = [row["clip_weight"] for row in rows]
            for key, style in styles.items():
                values = [100 * row[key] if row[key] is not None else float("nan") for row in rows]
                axis.plot(
                    weights,
                    values,
                    style,
                    color=f"C{index}",
                    marker="o",
                    markersize=3,
                    label=f"{name} {key.replace('miou', 'mIoU').replace('_', ' ')}",
                )
        axis.axvline(0.65, color="grey", linewidth=0.8)
        axis.set_title(benchmark)
        axis.set_xlabel("clip weight w (Eq. 3's lambda = 1 - w)")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("mIoU (%)")
    axes[-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def _pct(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{100 * value:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.bundle", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bundle")
    parser.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints")
    parser.add_argument("--results", type=Path, default=ROOT / "results")
    parser.add_argument("--ablations", action="store_true", help="train and evaluate concat, concat_drop, text_queries")
    parser.add_argument("--evaluate-only", action="store_true")
    parser.add_argument(
        "--seed-table",
        default=None,
        metavar="A.json,B.json",
        help="print the mean ± std table of these per-seed results files and exit",
    )
    parser.add_argument(
        "--investigate", action="store_true", help="stage-2 mode and lambda variants of the bundled models"
    )
    parser.add_argument("--skip-clip", action="store_true", help="reuse checkpoints/tiny-clip")
    parser.add_argument("--clip-steps", type=int, default=None)
    parser.add_argument("--seg-steps", type=int, default=None)
    parser.add_argument("--eval-limit", type=int, default=None, help="images per benchmark (default: all 500)")
    args = parser.parse_args(argv)
    if args.seed_table:
        print(seed_table([Path(f) for f in args.seed_table.split(",")]), end="")
        return 0
    started = time.perf_counter()
    if args.investigate:
        dirs = {name: args.checkpoints / name for name in MAIN_MODELS}
        table = investigate_stage2(dirs, args.results / "stage2.json", args.eval_limit or 100)
        (args.results / "stage2.md").write_text(table)
    elif args.ablations:
        if not args.evaluate_only:
            train_segmenters(ABLATIONS, args.runs, None, args.seg_steps)
        dirs = {
            "baseline": args.checkpoints / "baseline",
            "pmp": args.checkpoints / "pmp",
            **{name: args.runs / name / "model" for name in ABLATIONS},
        }
        results = evaluate_models(dirs, args.results / "ablations.json", args.eval_limit)
        (args.results / "ablations.md").write_text(markdown_table(results))
    else:
        if not args.evaluate_only:
            if not args.skip_clip:
                train_clip(args.runs, args.checkpoints, args.clip_steps)
            train_segmenters(MAIN_MODELS, args.runs, args.checkpoints, args.seg_steps)
        dirs = {name: args.checkpoints / name for name in MAIN_MODELS}
        results = evaluate_models(dirs, args.results / "main.json", args.eval_limit, CLIP_WEIGHT_SWEEP)
        (args.results / "main.md").write_text(markdown_table(results))
        (args.results / "mixed_granularity.md").write_text(granularity_table(results))
        plot_clip_weight_sweep(results, ROOT / "docs" / "clip_weight.png")
        # The fixed 50-image subset that tests/test_bundle.py re-evaluates against these numbers.
        subset = evaluate_models(dirs, args.results / "subset50.json", 50)
        (args.results / "subset50.md").write_text(markdown_table(subset))
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
