"""Table 1 of the paper on the bundled world, from the files in ``results/``: the tables and figures that
:mod:`train.bundle` writes and the README shows.

Nothing here trains or evaluates: every function reads what :mod:`train.bundle` and :mod:`train.evaluate`
wrote and returns Markdown or draws a PNG, so a table can be regenerated, and checked by a test against the
text that shows it, without running anything again.

    python -m train.bundle --seed-table results/main.json,results/main_seed1.json,results/main_seed2.json
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import matplotlib

from train.world.vocabulary import GRANULARITIES, GRANULARITY

BENCHMARKS = ("world-voc", "world-full", "world-parts", "world-mixed")


MAIN_MODELS = {"baseline": "none", "pmp": "pmp"}  # the bundled PMP is Eq. 5 as written


def markdown_table(results: dict[str, dict[str, dict]]) -> str:
    """One row per model, mIoU all / seen / unseen and proposal recall per benchmark (in %)."""
    header = "| model | " + " | ".join(f"{b} mIoU (all / seen / unseen) | {b} recall" for b in BENCHMARKS) + " |"
    lines = [header, "|---|" + "---|---|" * len(BENCHMARKS)]
    for name in model_names(results):
        cells = []
        for benchmark in BENCHMARKS:
            m = results[name][benchmark]
            cells.append(f"{100 * m['miou']:.1f} / {pct(m['miou_seen'])} / {pct(m['miou_unseen'])}")
            cells.append(f"{100 * m['proposal_recall']:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def granularity_table(results: dict[str, dict[str, dict]], benchmark: str = "world-mixed") -> str:
    """world-mixed per granularity: mIoU and proposal recall over the names of each granularity (in %)."""
    header = "| model | " + " | ".join(f"{g} mIoU / recall" for g in GRANULARITIES) + " |"
    lines = [header, "|---|" + "---|" * len(GRANULARITIES)]
    for name in model_names(results):
        m = results[name][benchmark]
        cells = []
        for level in GRANULARITIES:

            def mean(values: dict, level: str = level) -> float | None:
                kept = [v for k, v in values.items() if GRANULARITY[k] == level and v is not None and v == v]
                return sum(kept) / len(kept) if kept else None

            cells.append(f"{pct(mean(m['per_class']))} / {pct(mean(m.get('per_class_recall', {})))}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def mean_and_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds (0 for a single seed)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


METRIC_TITLES = {"miou": "mIoU", "proposal_recall": "recall", "miou_seen": "seen mIoU", "miou_unseen": "unseen mIoU"}


SEED_TABLES = (("miou", "proposal_recall"), ("miou_seen", "miou_unseen"))  # Table 1's two halves


def seed_stats(runs: list[dict], name: str, benchmark: str, key: str) -> tuple[float, float] | None:
    """Mean and std in % of one model's metric on one benchmark over per-seed results; None where a
    benchmark has no such classes (the metric is null)."""
    values = [run[name][benchmark][key] for run in runs]
    return None if None in values else mean_and_std([100 * v for v in values])


def model_names(results: dict) -> list[str]:
    """The models of a results file, in order: not its other entries, such as training minutes."""
    return [name for name, rows in results.items() if isinstance(rows, dict) and set(rows) & set(BENCHMARKS)]


def seed_table(result_files: list[Path], metrics: tuple[str, ...] = SEED_TABLES[0]) -> str:
    """Per model, benchmark and metric the mean ± sample std over runs with different seeds (one results
    JSON per seed, as :func:`train.bundle.evaluate_models` writes them), in %; "n/a" where a benchmark has
    no such classes.

    With two or more seeds a last row compares the second model with the first: the difference of the
    means, called a tie when it is no larger than the larger of the two spreads, else named after the
    model ahead."""
    runs = [json.loads(Path(f).read_text()) for f in result_files]
    columns = [(b, key) for b in BENCHMARKS for key in metrics]
    header = f"| model ({len(runs)} seeds: mean ± std) | " + " | ".join(f"{b} {METRIC_TITLES[k]}" for b, k in columns)
    lines = [header + " |", "|---|" + "---|" * len(columns)]
    stats: dict[str, list[tuple[float, float] | None]] = {}
    for name in model_names(runs[0]):
        stats[name] = [seed_stats(runs, name, b, key) for b, key in columns]
        cells = ["n/a" if cell is None else f"{cell[0]:.1f} ± {cell[1]:.1f}" for cell in stats[name]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if len(runs) > 1 and len(stats) > 1:
        (reference, first), (other, second) = list(stats.items())[:2]
        cells = []
        for a, b in zip(first, second):
            if a is None or b is None:
                cells.append("n/a")
                continue
            difference = b[0] - a[0]
            verdict = "tie" if abs(difference) <= max(a[1], b[1]) else f"{other if difference > 0 else reference} ahead"
            cells.append(f"{difference:+.1f} ({verdict})")
        lines.append(f"| {other} − {reference} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def seed_tables(result_files: list[Path]) -> str:
    """Both halves of Table 1 (:data:`SEED_TABLES`), one after the other."""
    return "\n".join(seed_table(result_files, metrics) for metrics in SEED_TABLES)


SEED_FILES = ("main.json", "main_seed1.json", "main_seed2.json")  # Table 1's seeds 0 (the bundle), 1 and 2


def table1_files(folder: Path) -> list[Path]:
    """The per-seed Table 1 files (:data:`SEED_FILES`) that ``folder`` holds, seed 0 first: a seed still
    training is left out, and the tables say how many seeds they average."""
    return [folder / name for name in SEED_FILES if (folder / name).is_file()]


def plot_seed_results(result_files: list[Path], out_png: Path, title: str = "") -> None:
    """mIoU and proposal recall per benchmark, one bar per model, error bars = sample std over the seeds."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # here: pyplot is slow to import and only the figures need it

    runs = [json.loads(Path(f).read_text()) for f in result_files]
    names = model_names(runs[0])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    width = 0.8 / len(names)
    for axis, key in zip(axes, ("miou", "proposal_recall")):
        for index, name in enumerate(names):
            values = [[100 * run[name][b][key] for run in runs] for b in BENCHMARKS]
            means, spreads = zip(*(mean_and_std(v) for v in values))
            positions = [b + (index - (len(names) - 1) / 2) * width for b in range(len(BENCHMARKS))]
            axis.bar(positions, means, width, yerr=spreads, capsize=3, color=f"C{index}", label=name)
        axis.set_xticks(range(len(BENCHMARKS)), BENCHMARKS, fontsize=8)
        axis.set_title("mIoU" if key == "miou" else "proposal recall (mean best IoU)", fontsize=9)
        axis.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("%")
    axes[0].legend(fontsize=8)
    fig.suptitle(title or f"{len(runs)} seed(s): mean, error bars = std over seeds", fontsize=9)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def plot_clip_weight_sweep(results: dict[str, dict[str, dict]], out_png: Path) -> None:
    """mIoU (all / seen / unseen) against Eq. 3's clip weight, one panel per benchmark, both models."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # here: pyplot is slow to import and only the figures need it

    fig, axes = plt.subplots(1, len(BENCHMARKS), figsize=(3.6 * len(BENCHMARKS), 3.4), sharey=True)
    styles = {"miou": "-", "miou_seen": "--", "miou_unseen": ":"}
    for axis, benchmark in zip(axes, BENCHMARKS):
        for index, name in enumerate(model_names(results)):
            rows = results[name][benchmark].get("clip_weight_sweep", [])
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
        axis.set_xlabel("clip weight w (CLIP's exponent in Eq. 3)")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("mIoU (%)")
    axes[-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def pct(value: float | None) -> str:
    """A metric in %, "n/a" where it is undefined (None in the JSON, NaN before it)."""
    return "n/a" if value is None or value != value else f"{100 * value:.1f}"
