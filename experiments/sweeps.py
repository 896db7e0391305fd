"""The query-budget sweep's table and figure (``docs/query_sweep.png``) and the learning curves of training runs
(``docs/learning_curve.png``), from the files in ``results/`` and the runs' logs."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

from train.table1 import MAIN_MODELS, METRIC_TITLES, mean_and_std

# The query-budget sweep and the Fig. 5 ablations: the previous bundled recipe (its 64-channel head,
# train.recipes.previous_recipe), shorter (the same for every run).
SHORT_STEPS = 1500


QUERY_BUDGETS = (4, 8, 16, 32)


SWEEP_BENCHMARKS = ("world-mixed", "world-full")


def query_sweep_table(files: list[Path]) -> str:
    """The sweep as a table: per benchmark, metric and budget, baseline and PMP (mean ± std over seeds)."""
    points = query_sweep_points(files)
    header = "| benchmark | metric | " + " | ".join(f"{q} queries (baseline / PMP)" for q in QUERY_BUDGETS) + " |"
    lines = [
        f"{len(files)} seed(s); mean ± std in % where more than one.",
        "",
        header,
        "|---|---|" + "---|" * len(QUERY_BUDGETS),
    ]
    for benchmark, metrics in points.items():
        for metric, models in metrics.items():
            cells = []
            for index in range(len(QUERY_BUDGETS)):
                pair = [models[name][index] if index < len(models[name]) else None for name in MAIN_MODELS]
                cells.append(
                    " / ".join(
                        "n/a" if p is None else (f"{p[1]:.1f} ± {p[2]:.1f}" if len(files) > 1 else f"{p[1]:.1f}")
                        for p in pair
                    )
                )
            lines.append(f"| {benchmark} | {METRIC_TITLES[metric]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def query_sweep_points(files: list[Path]) -> dict[str, dict[str, dict[str, list[tuple[int, float, float]]]]]:
    """{benchmark: {metric: {model: [(queries, mean %, std %), ...]}}} over the per-seed sweep files."""

    runs = [json.loads(Path(f).read_text()) for f in files]
    points: dict = {}
    for benchmark in SWEEP_BENCHMARKS:
        for metric in ("miou", "proposal_recall"):
            for name in MAIN_MODELS:
                row = []
                for q in QUERY_BUDGETS:
                    values = [100 * run[str(q)][name][benchmark][metric] for run in runs if str(q) in run]
                    if values:
                        row.append((q, *mean_and_std(values)))
                points.setdefault(benchmark, {}).setdefault(metric, {})[name] = row
    return points


def plot_query_sweep(files: list[Path], out_png: Path) -> None:
    """mIoU and proposal recall against the number of queries, baseline vs PMP, error bars = seed std."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # here: pyplot is slow to import and only the figures need it

    points = query_sweep_points(files)
    fig, axes = plt.subplots(1, 2 * len(SWEEP_BENCHMARKS), figsize=(3.3 * 2 * len(SWEEP_BENCHMARKS), 3.2))
    panels = [(benchmark, metric) for benchmark in SWEEP_BENCHMARKS for metric in ("miou", "proposal_recall")]
    for axis, (benchmark, metric) in zip(axes, panels):
        for index, (name, row) in enumerate(points[benchmark][metric].items()):
            axis.errorbar(
                [p[0] for p in row], [p[1] for p in row], yerr=[p[2] for p in row], marker="o", capsize=3,
                color=f"C{index}", label=name,
            )  # fmt: skip
        axis.set_xscale("log", base=2)
        axis.set_xticks(list(QUERY_BUDGETS), [str(q) for q in QUERY_BUDGETS])
        axis.set_title(f"{benchmark}: {'mIoU' if metric == 'miou' else 'proposal recall'}")
        axis.set_xlabel("queries")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("%")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"query budget, {SHORT_STEPS} steps per run, {len(files)} seed(s)", fontsize=9)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def learning_curve(run: Path, benchmark: str = "world-full") -> list[dict[str, float]]:
    """The evaluation rows of one training log: step, training minutes so far, mIoU seen / all, recall."""
    points, minutes = [], 0.0
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "seconds" in row:
            minutes = row["seconds"] / 60
        if f"eval/{benchmark}/miou" in row:
            points.append(
                {
                    "step": row["step"],
                    "minutes": round(minutes, 2),
                    **{key: row[f"eval/{benchmark}/{key}"] for key in ("miou", "miou_seen", "proposal_recall")},
                }
            )
    return points


def plot_learning_curves(curves: dict[str, list[dict[str, float]]], out_png: Path) -> None:
    """world-full seen mIoU and proposal recall against training minutes on one core, one line per run."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # here: pyplot is slow to import and only the figures need it

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for index, (label, points) in enumerate(curves.items()):
        for axis, key in zip(axes, ("miou_seen", "proposal_recall")):
            axis.plot(
                [p["minutes"] for p in points], [100 * p[key] for p in points], "o-", color=f"C{index}", label=label
            )
    for axis, title in zip(axes, ("world-full seen mIoU (100 images)", "world-full proposal recall")):
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("training minutes, one core")
        axis.grid(alpha=0.3)
    axes[0].axhline(70, color="grey", linewidth=0.8, linestyle="--")
    axes[0].set_ylabel("%")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
