"""The tables and figures of ``docs/results.md`` (the research record), generated from the files in ``results/``.

Nothing here trains or evaluates: every function reads what the studies (:mod:`experiments.studies`),
:mod:`train.evaluate`, :mod:`train.adapt_clip` and the benchmarks wrote, and returns Markdown or draws a PNG,
so a table can be regenerated, and checked by a test against the text that shows it, without running anything
again. Table 1 itself is :mod:`train.table1`'s.

    python -m experiments.studies --headline    # the record's at-a-glance table
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from train.adapt_clip import accuracy_table, measured_before
from train.table1 import (
    BENCHMARKS,
    MAIN_MODELS,
    METRIC_TITLES,
    mean_and_std,
    model_names,
    pct,
    seed_stats,
    table1_files,
)

FORM_NAMES = {"ovseg": "OVSeg", "odise": "ODISE"}  # Eq. 3's forms (pmp.config.ENSEMBLES) as the papers write them


def split_weight_means(results: dict[str, dict[str, dict]]) -> dict[tuple[float, float], float]:
    """Each (clip weight, clip weight for other names) pair of the split sweeps -> its mean mIoU over every
    model and benchmark of ``results``."""
    scores: dict[tuple[float, float], list[float]] = {}
    for per_benchmark in results.values():
        for metrics in per_benchmark.values():
            for row in metrics["split_weight_sweep"]:
                scores.setdefault((row["clip_weight"], row["clip_weight_unseen"]), []).append(row["miou"])
    return {pair: sum(values) / len(values) for pair, values in scores.items()}


# FC-CLIP's CLIP weight for its in-vocabulary classes (GEOMETRIC_ENSEMBLE_ALPHA). The pair of Eq. 3's two
# weights is chosen among this weight for training names and above; lower ones were scored beside them
# after the choice (which side of 0.4 the best lies) and are not chosen from.
FCCLIP_SEEN_WEIGHT = 0.4


def choose_split_weights(dev_results: dict[str, dict[str, dict]]) -> tuple[float, float]:
    """The pair with the best mean mIoU on the dev scenes (the first of equals, in grid order) among those
    whose weight for training names is :data:`FCCLIP_SEEN_WEIGHT` or more."""
    means = split_weight_means(dev_results)
    return max((pair for pair in means if pair[0] >= FCCLIP_SEEN_WEIGHT), key=lambda pair: means[pair])


def split_weight_table(
    dev_results: dict[str, dict[str, dict]],
    test_results: dict[str, dict[str, dict]],
    one_weight_test: dict[str, dict[str, dict]],
    form: str | None = None,
) -> str:
    """Markdown: every pair's mean mIoU over both models and the four benchmarks, on the dev scenes and the
    test benchmarks (pairs below :data:`FCCLIP_SEEN_WEIGHT` marked as not chosen from), below the models'
    own Eq. 3 (one weight, 0.65, for every prompt) in ``form`` (None: the checkpoints' own, the paper's):
    the dev files' own evaluation and ``one_weight_test`` (Table 1's, or that form's evaluation)."""
    one_weight_title = (
        "0.65 for every prompt (the paper's Eq. 3)"
        if form is None
        else f"0.65 for every prompt ({FORM_NAMES[form]}'s form)"
    )

    def mean_miou(results: dict[str, dict[str, dict]]) -> float:
        values = [metrics["miou"] for per_benchmark in results.values() for metrics in per_benchmark.values()]
        return sum(values) / len(values)

    dev, test = split_weight_means(dev_results), split_weight_means(test_results)
    chosen = choose_split_weights(dev_results)
    lines = [
        "| clip weight: training names / other names | mean mIoU, dev scenes | mean mIoU, test benchmarks |",
        "|---|---|---|",
        f"| {one_weight_title} | {pct(mean_miou(dev_results))} | {pct(mean_miou(one_weight_test))} |",
    ]
    for pair in dev:
        mark = " (chosen)" if pair == chosen else " (not chosen from)" if pair[0] < FCCLIP_SEEN_WEIGHT else ""
        lines.append(f"| {pair[0]} / {pair[1]}{mark} | {pct(dev[pair])} | {pct(test.get(pair))} |")
    return "\n".join(lines) + "\n"


FLIP_TEST = "flip_test"  # results/<this>/<model>_<benchmark>.json: python -m train.evaluate --flip-test, all images

# A later run of benchmarks.latency than latency_bundled.json's, which times each model's request with one
# view and with the flip test side by side (benchmarks.latency.flip_test_comparison).
FLIP_TEST_LATENCY = "latency_flip_test.json"
# The candidate stage-2 CLIP (a CANDIDATE_CLIPS key) also measured with the flip test, in results/<FLIP_TEST>/<it>/.
FLIP_TEST_CANDIDATE = "kinds_2400"

# The README's headline rows: (benchmark, metric, target in %); the targets the project set itself.
HEADLINE = (
    ("world-voc", "miou", 65.0),
    ("world-full", "miou_seen", 70.0),
    ("world-parts", "miou", None),
    ("world-mixed", "miou", None),
)


def headline_table(results: Path) -> str:
    """Markdown: the bundled pair at a glance. Per benchmark, mIoU with the paper's Eq. 3 over the seeds of
    Table 1 (mean ± std), with FC-CLIP's two weights (seed 0, ``results/split_weights``) and with those and
    the flip test (seed 0, :data:`FLIP_TEST`), and the warm latency of ``results/latency_bundled.json``
    and with the flip test (:data:`FLIP_TEST_LATENCY`); each beside its target."""
    runs = [json.loads(path.read_text()) for path in table1_files(results)]
    split = json.loads((results / "split_weights" / "main.json").read_text())
    flipped = _candidate_results(results / FLIP_TEST, BENCHMARKS)
    chosen = chosen_split_pair(results)
    lines = ["| measured (mIoU in %, 500 images per benchmark) | baseline | PMP | target |", "|---|---|---|---|"]
    for benchmark, key, target in HEADLINE:
        title = f"{benchmark} {METRIC_TITLES[key]}"
        cells = []
        for name in MAIN_MODELS:
            mean, std = seed_stats(runs, name, benchmark, key)
            cells.append(f"{mean:.1f} ± {std:.1f}")
        goal = "-" if target is None else f">= {target:g}"
        lines.append(f"| {title}, the paper's Eq. 3 ({len(runs)} seeds) | " + " | ".join(cells) + f" | {goal} |")
        cells = [f"{100 * split[name][benchmark][key]:.1f}" for name in MAIN_MODELS]
        lines.append(f"| {title}, FC-CLIP's two weights (seed 0) | " + " | ".join(cells) + f" | {goal} |")
        cells = [f"{100 * split_row(flipped[name][benchmark], chosen)[key]:.1f}" for name in MAIN_MODELS]
        lines.append(f"| {title}, two weights and the flip test (seed 0) | " + " | ".join(cells) + f" | {goal} |")
    latency = json.loads((results / "latency_bundled.json").read_text())["models"]["bundled"]
    side = latency["image_side"]
    cells = [f"{latency['results']['10'][name]['warm_median']['total']:.3f} s" for name in MAIN_MODELS]
    title = f"warm request, {side} px, 10 prompts, 2 CPU cores, float32"
    lines.append(f"| {title} | " + " | ".join(cells) + " | <= 0.1 s |")
    flip = json.loads((results / FLIP_TEST_LATENCY).read_text())["models"]["bundled"]["flip_test"]
    medians = [flip[name]["warm_median"] for name in MAIN_MODELS]
    # With the same run's one view beside it: another day, another machine speed.
    cells = [f"{m['flip test']['total']:.3f} s (one view {m['one view']['total']:.3f} s)" for m in medians]
    lines.append(f"| {title}, the flip test (a later run) | " + " | ".join(cells) + " | <= 0.1 s |")
    return "\n".join(lines) + "\n"


def variants_table(variants: dict[str, list[Path]], varied: str = "stage 2") -> str:
    """Segmenters that differ in one part (``varied``: the stage-2 CLIP of the same seeds, or stage 1's
    head): per variant (a title and its per-seed results files) and model, each benchmark's mIoU as
    mean ± std over the seeds (seen / unseen means)."""

    def cell(runs: list[dict], name: str, benchmark: str) -> str:
        (mean, std), seen, unseen = (seed_stats(runs, name, benchmark, k) for k in ("miou", "miou_seen", "miou_unseen"))
        return f"{mean:.1f} ± {std:.1f} ({'n/a' if seen is None else f'{seen[0]:.1f}'} / {unseen[0]:.1f})"

    header = f"| {varied} | model | " + " | ".join(f"{b} mIoU (seen / unseen)" for b in BENCHMARKS) + " |"
    lines = [header, "|---|---|" + "---|" * len(BENCHMARKS)]
    for title, files in variants.items():
        runs = [json.loads(Path(f).read_text()) for f in files]
        for name in model_names(runs[0]):
            cells = [cell(runs, name, benchmark) for benchmark in BENCHMARKS]
            lines.append(f"| {title} ({len(runs)} seeds) | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


PREVIOUS_PAIR = "width64"  # results/width64/: Table 1 of the previous bundled pair (64-channel head), 3 seeds

STAGE2_HISTORY = {  # results folder -> the stage 2 its Table 1 files were measured with (same stage-1 runs)
    "before_adaptation": "mask pooling, the tiny CLIP as trained",
    "adapted_on_regions": "masked crops, CLIP adapted on world regions, 2,400 steps",
    "adapted_on_proposals": "masked crops, CLIP adapted on regions and proposals, 2,400 steps",
    "masked_crops_only": "masked crops, CLIP adapted on world regions, 2,400 + 2,400 steps",
    PREVIOUS_PAIR: "masked crops and their boxes (crop_views), the same CLIP, bundled",
}

HEAD_WIDTHS = {  # results folder -> stage 1's head: the previous bundled pair and today's, the same stage 2
    PREVIOUS_PAIR: "64 channels, 3.1 M parameters, the previous bundled pair",
    ".": "128 channels, 5.0 M parameters, bundled",
}


def _seed_files(results: Path, folders: dict[str, str]) -> dict[str, list[Path]]:
    """Each folder's :func:`table1_files` under its title."""
    return {title: table1_files(results / folder) for folder, title in folders.items()}


def stage2_history(results: Path) -> str:
    """:func:`variants_table` of the :data:`STAGE2_HISTORY` folders under ``results``: the previous pair's
    three seeds' stage 1 with each stage 2."""
    return variants_table(_seed_files(results, STAGE2_HISTORY))


def head_width_table(results: Path) -> str:
    """:func:`variants_table` of the :data:`HEAD_WIDTHS`: the bundled stage 2 on both heads, three seeds each."""
    return variants_table(_seed_files(results, HEAD_WIDTHS), varied="stage-1 head")


ADAPTATION_RUNS = {  # results/adaptation_runs/<file> -> its column, all measured on the same held-out crops
    "regions_2400.json": "world regions, 2,400 steps",
    "proposals_2400.json": "regions and proposals, 2,400 steps",
    "regions_4800.json": "world regions, 2,400 + 2,400 steps (bundled)",
}

THIRD_CYCLE_RUNS = {  # the bundled two-cycle CLIP continued for 2,400 steps (seed 2): the tiny tower or a deeper one
    "regions_4800.json": "two cycles, tiny tower (the start)",
    "pilot_bundled_plus_proposals.json": "tiny tower, + regions and proposals, lr 1.25e-4",
    "deeper_regions.json": "deeper tower, + world regions, lr 2.5e-4",
    "deeper_plus_proposals.json": "deeper tower, + regions and proposals, lr 5e-4",
}


def _adaptation_runs(results: Path, runs: dict[str, str]) -> dict[str, dict[str, float]]:
    """Each ``results/adaptation_runs/<file>``'s metrics under its title."""
    return {title: json.loads((results / "adaptation_runs" / name).read_text()) for name, title in runs.items()}


def adaptation_table(results: Path) -> str:
    """The mask-adapted CLIPs' top-1 (:func:`train.adapt_clip.accuracy_table`): the tiny CLIP as trained
    (what the proposals run started from) and each :data:`ADAPTATION_RUNS` file."""

    runs = _adaptation_runs(results, ADAPTATION_RUNS)
    return accuracy_table(
        {"the tiny CLIP as trained": measured_before(runs[ADAPTATION_RUNS["proposals_2400.json"]]), **runs}
    )


def third_cycle_table(results: Path) -> str:
    """:func:`train.adapt_clip.accuracy_table` of the :data:`THIRD_CYCLE_RUNS`: does a deeper image tower
    hold what the tiny one traded away?"""

    return accuracy_table(_adaptation_runs(results, THIRD_CYCLE_RUNS))


CANDIDATE_CLIPS = {  # results/candidate_clips/<folder> -> its row: the bundled CLIP continued in both views
    "bundled": "bundled (masked crops, 2,400 + 2,400 steps)",
    "two_views_2400": "+ 2,400 steps in both views, lr 2.5e-4",
    "kinds_600": "+ 600 steps in both views, kinds balanced, lr 2.5e-4",
    "kinds_2400": "+ 2,400 steps in both views, kinds balanced, lr 2.5e-4",
    "fresh_w32s64": "a new tower 32 wide at 64 px: 3,600 steps in both views, kinds balanced, lr 1e-3",
    "fresh_w24s96": "a new tower 24 wide at 96 px: 3,600 steps in both views, kinds balanced, lr 1e-3",
    "fresh_w24s96_more": "that 96 px tower + 2,000 steps in both views, kinds balanced, lr 2.5e-4",
}

CANDIDATE_RUNS = {  # results/adaptation_runs/<file> -> its column: held-out top-1, each file measured in both views
    "pilot_two_views_400steps.json": "+ 400 steps in both views",
    "two_views_2400.json": "+ 2,400 steps in both views",
    "two_views_kinds_600.json": "+ 600 steps in both views, kinds balanced",
    "two_views_kinds_2400.json": "+ 2,400 steps in both views, kinds balanced",
    "fresh_tower_w32s64.json": "a new tower 32 wide at 64 px, 3,600 steps from scratch",
    "fresh_tower_w24s96.json": "a new tower 24 wide at 96 px, 3,600 steps from scratch",
    "fresh_tower_w24s96_more.json": "that 96 px tower + 2,000 steps",
}

CANDIDATE_BENCHMARKS = ("world-voc-dev", "world-full-dev")

CANDIDATE_ON_TEST = {  # results/candidate_clips/<folder> on the full benchmarks -> its row
    "two_views_2400_test": CANDIDATE_CLIPS["two_views_2400"],
    "kinds_600_test": CANDIDATE_CLIPS["kinds_600"],
    "kinds_2400_test": CANDIDATE_CLIPS["kinds_2400"],
    "fresh_w24s96_test": CANDIDATE_CLIPS["fresh_w24s96"],
    "fresh_w24s96_more_test": CANDIDATE_CLIPS["fresh_w24s96_more"],
}


def candidate_accuracy_table(results: Path) -> str:
    """:func:`train.adapt_clip.accuracy_table` of the bundled CLIP (read in both views, as the pilot
    measured it before adapting) and each :data:`CANDIDATE_RUNS` file, all on the same held-out crops."""

    runs = _adaptation_runs(results, CANDIDATE_RUNS)
    bundled = measured_before(runs[CANDIDATE_RUNS["pilot_two_views_400steps.json"]])
    return accuracy_table({"bundled, read in both views": bundled, **runs})


def chosen_split_pair(results: Path) -> tuple[float, float]:
    """FC-CLIP's two weights as chosen on the dev scenes (:func:`choose_split_weights` of
    ``results/split_weights/dev.json``)."""
    return choose_split_weights(json.loads((results / "split_weights" / "dev.json").read_text()))


def split_row(metrics: dict[str, Any], pair: tuple[float, float]) -> dict[str, Any]:
    """The row of a ``train.evaluate`` result's split-weight sweep with the weights ``pair``."""
    return next(r for r in metrics["split_weight_sweep"] if (r["clip_weight"], r["clip_weight_unseen"]) == pair)


def _miou_table(
    rows: dict[str, dict[str, dict[str, Any]]],
    benchmarks: tuple[str, ...],
    first_column: str,
    scores: Callable[[dict[str, Any]], dict[str, Any]],
) -> str:
    """Markdown: mIoU (seen / unseen) per benchmark, one row per variant (``first_column``) and model;
    ``rows`` is {title: {model: {benchmark: train.evaluate result}}} and ``scores`` picks the mIoU of a
    result that the table reports (the result itself, or one row of its sweep)."""
    lines = [
        f"| {first_column} | model | " + " | ".join(f"{b} mIoU (seen / unseen)" for b in benchmarks) + " |",
        "|---|---|" + "---|" * len(benchmarks),
    ]
    for title, per_model in rows.items():
        for name, per_benchmark in per_model.items():
            cells = []
            for benchmark in benchmarks:
                row = scores(per_benchmark[benchmark])
                cells.append(f"{pct(row['miou'])} ({pct(row['miou_seen'])} / {pct(row['miou_unseen'])})")
            lines.append(f"| {title} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _two_weight_table(
    results: Path,
    rows: dict[str, dict[str, dict[str, Any]]],
    benchmarks: tuple[str, ...],
    first_column: str = "stage-2 CLIP",
) -> str:
    """:func:`_miou_table` with FC-CLIP's two weights as chosen on the dev scenes (:func:`chosen_split_pair`)."""
    chosen = chosen_split_pair(results)
    return _miou_table(rows, benchmarks, first_column, lambda metrics: split_row(metrics, chosen))


def _candidate_results(folder: Path, benchmarks: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """{model: {benchmark: result}} from ``folder/<model>_<benchmark>.json`` (``train.evaluate --json``)."""
    return {
        name: {b: json.loads((folder / f"{name}_{b}.json").read_text()) for b in benchmarks} for name in MAIN_MODELS
    }


def candidate_clip_table(results: Path) -> str:
    """Each model with each :data:`CANDIDATE_CLIPS` stage 2 on the first 100 dev scenes of
    :data:`CANDIDATE_BENCHMARKS` (``python -m train.evaluate --adapted-clip``; stage 1 is the bundled one)."""
    rows = {
        title: _candidate_results(results / "candidate_clips" / folder, CANDIDATE_BENCHMARKS)
        for folder, title in CANDIDATE_CLIPS.items()
    }
    return _two_weight_table(results, rows, CANDIDATE_BENCHMARKS)


def flip_test_table(results: Path) -> str:
    """The bundled pair with one view and with the flip test (:data:`FLIP_TEST`) on all 500 images of every
    benchmark: with the paper's Eq. 3 (one view: Table 1's seed 0, ``results/main.json``), then with the
    two weights (one view: ``results/split_weights/main.json``), where the flip test is also shown with
    the :data:`FLIP_TEST_CANDIDATE` stage-2 CLIP."""
    flipped = _candidate_results(results / FLIP_TEST, BENCHMARKS)
    one_weight = json.loads((results / "main.json").read_text())
    two_weights = json.loads((results / "split_weights" / "main.json").read_text())
    eq3 = {
        "one view (Table 1, seed 0)": {name: one_weight[name] for name in MAIN_MODELS},
        "the image and its mirror (the flip test)": flipped,
    }
    two = {
        "one view": {name: two_weights[name] for name in MAIN_MODELS},
        "the image and its mirror (the flip test)": flipped,
        "the flip test and the 2,400-step kinds-balanced CLIP (a candidate, not bundled)": _candidate_results(
            results / FLIP_TEST / FLIP_TEST_CANDIDATE, BENCHMARKS
        ),
    }
    return (
        _miou_table(eq3, BENCHMARKS, "inference, the paper's Eq. 3", lambda metrics: metrics)
        + "\n"
        + _two_weight_table(results, two, BENCHMARKS, first_column="inference, FC-CLIP's two weights")
    )


def candidate_test_table(results: Path) -> str:
    """The bundled stage 2 (``results/split_weights/main.json``) and :data:`CANDIDATE_ON_TEST` on all 500
    images of every benchmark, with the two weights: the dev scenes' choice against the targets, and what
    it trades on world-parts and world-mixed."""
    bundled = json.loads((results / "split_weights" / "main.json").read_text())
    rows = {CANDIDATE_CLIPS["bundled"]: {name: bundled[name] for name in MAIN_MODELS}}
    for folder, title in CANDIDATE_ON_TEST.items():
        rows[title] = _candidate_results(results / "candidate_clips" / folder, BENCHMARKS)
    return _two_weight_table(results, rows, BENCHMARKS)


def stage1_pilot_table(results_files: list[Path]) -> str:
    """Markdown: each pilot's size and time, and its last evaluation (world-full recall, mIoU all and
    seen) over the seeds of ``results_files`` (one :func:`stage1_pilot_results` file per seed)."""
    seeds = [json.loads(f.read_text()) for f in results_files]
    lines = [
        "| recipe | stage-1 parameters | steps | seeds | minutes (1 core) | world-full recall | world-full mIoU "
        "| world-full seen mIoU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for recipe, first in seeds[0].items():
        pilots = [seed[recipe] for seed in seeds if recipe in seed]
        cells = []
        for key in ("proposal_recall", "miou", "miou_seen"):
            mean, std = mean_and_std([100 * pilot["curve"][-1][key] for pilot in pilots])
            cells.append(f"{mean:.1f} ± {std:.1f}" if len(pilots) > 1 else f"{mean:.1f}")
        minutes = mean_and_std([pilot["train_minutes"] for pilot in pilots])[0]
        lines.append(
            f"| {recipe} | {first['stage1_parameters'] / 1e6:.2f} M | {first['curve'][-1]['step']} | {len(pilots)} "
            f"| {minutes:.1f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


def stage1_pilot_files(results: Path, kind: str = "stage1_pilots") -> list[Path]:
    """The per-seed pilot files: ``<kind>.json`` (seed 0), then ``<kind>_seed<k>.json``; ``kind`` is
    ``stage1_pilots`` or ``pixel_decoder_pilots``."""
    return [results / f"{kind}.json", *sorted(results.glob(f"{kind}_seed*.json"))]
