"""Reproduce the bundled offline models from scratch: tiny CLIP, then baseline and PMP, then the tables.

    python -m train.bundle                      # tiny CLIP (mask-adapted) + baseline + PMP -> checkpoints/, results/
    python -m train.bundle --skip-clip          # the two segmenters only, on the bundled tiny CLIP
    python -m train.bundle --seed 1             # another seed of the pair -> results/main_seed1.json
    python -m train.bundle --query-sweep --seed 0   # 4-32 queries, short recipe -> docs/query_sweep.png
    python -m train.bundle --ablations          # every text mode (Eq. 5 variants, Fig. 5), short recipe
    python -m train.bundle --evaluate-only      # re-run only the evaluation tables
    python -m train.bundle --install-adapted-clip runs/bundle/clip-adapted/model   # a new stage-2 CLIP
    python -m train.bundle --seed-table results/main.json,results/main_seed1.json   # Table 1, mean ± std
    python -m train.bundle --split-weights      # Eq. 3 with FC-CLIP's two weights, chosen on the dev scenes

The baseline and PMP are the same recipe (``train.recipes.world_recipe``) with one field changed,
``decoder.text_mode``: same data indices, seeds, schedule and prompt scheme. On a 2-core machine the two
segmenters train side by side, one core each, and the wall time of each part (CLIP, each segmenter, the
evaluation) is written to ``results/bundle_times.json``. The tiny CLIP is stored once, in float16 (as it
was trained), and both segmenters reference it instead of carrying a copy; weights are split into shards
so that every file stays under 10 MB and the bundle under 60 MB.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from pmp.config import ENSEMBLES
from train.recipes import previous_recipe, world_name
from train.world.vocabulary import DEV_SUFFIX

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ("world-voc", "world-full", "world-parts", "world-mixed")
INVESTIGATED = ("world-voc", "world-full", "world-parts")  # the stage-2 investigation's benchmarks
MAIN_MODELS = {"baseline": "none", "pmp": "pmp"}  # the bundled PMP is Eq. 5 as written
ABLATIONS = {
    "pmp_residual": "pmp_residual",
    "concat": "concat",
    "concat_drop": "concat_drop",
    "text_queries": "text_queries",
}
CLIP_WEIGHT_SWEEP = (0.0, 0.2, 0.35, 0.5, 0.65, 0.8, 1.0)  # Eq. 3's exponent of p_hat; 0 = stage 1 alone
# Eq. 3 with FC-CLIP's two weights (prompts among stage 1's training names / the others; FC-CLIP's own
# are 0.4 / 0.8): every pair is scored on the held-out dev scenes, and the pair with the best mean mIoU
# over both models and the four dev benchmarks is then evaluated on the test benchmarks.
SPLIT_WEIGHT_GRID = tuple((seen, unseen) for seen in (0.4, 0.5, 0.65) for unseen in (0.8, 0.85, 0.9, 0.95, 1.0))
DEV_LIMIT = 200  # every held-out scene of each dev benchmark
FORM_NAMES = {"ovseg": "OVSeg", "odise": "ODISE"}  # Eq. 3's forms (pmp.config.ENSEMBLES) as the papers write them
# The query-budget sweep and the Fig. 5 ablations: the previous bundled recipe (its 64-channel head,
# train.recipes.previous_recipe), shorter (the same for every run).
SHORT_STEPS = 1500
PILOT_STEPS = 3000  # the stage-1 capacity pilots and their control, each the bundled schedule this long
QUERY_BUDGETS = (4, 8, 16, 32)
SWEEP_BENCHMARKS = ("world-mixed", "world-full")
ABLATION_QUERIES = 16


@dataclass(frozen=True)
class Run:
    """One segmenter training: the bundled recipe with at most these fields changed."""

    name: str  # its folder under --runs
    text_mode: str
    steps: int | None = None  # None: the recipe's
    num_queries: int | None = None
    seed: int | None = None
    recipe: str | None = None  # None: the bundled recipe of text_mode (world-baseline, world-pmp, ...)

    def command(self, runs: Path) -> list[str]:
        command = [
            sys.executable,
            "-m",
            "train.train_segmenter",
            "--recipe",
            self.recipe or world_name(self.text_mode),
            "--out",
            os.path.relpath(runs / self.name, ROOT),
            "--init-clip",
            "checkpoints/tiny-clip",
        ]
        for flag, value in (("--steps", self.steps), ("--num-queries", self.num_queries), ("--seed", self.seed)):
            if value is not None:
                command += [flag, str(value)]
        return command


def run_parallel(commands: list[list[str]], logs: list[Path], threads_each: int) -> list[float]:
    """Run commands side by side with ``threads_each`` torch threads each; fail if any fails.

    Returns each command's wall time in seconds.
    """
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads_each),
        "MKL_NUM_THREADS": str(threads_each),
        "PYTHONPATH": str(ROOT),
    }
    processes = []
    started = time.perf_counter()
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
    failed, seconds = [], []
    for process, handle, command, log in processes:
        if process.wait() != 0:
            failed.append(f"{' '.join(command)} (see {log})")
        seconds.append(time.perf_counter() - started)
        handle.close()
    if failed:
        raise RuntimeError("training failed: " + "; ".join(failed))
    return seconds


def train_clip(runs: Path, checkpoints: Path, steps: int | None) -> float:
    """DDP over one process per core (gloo): small convolutions use one core far better than two threads.

    Returns the wall time in seconds."""
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
    (seconds,) = run_parallel([command], [runs / "clip.log"], threads_each=1)
    install_clip(runs / "clip" / "model", checkpoints / "tiny-clip")
    return seconds


def install_clip(source: Path, target: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)


def train_segmenters(
    planned: list[Run], runs: Path, checkpoints: Path | None = None, results: Path | None = None
) -> dict[str, float]:
    """Train the planned runs two at a time, one core each; install finished models in ``checkpoints/<name>``
    (referencing the bundled CLIP, checked: :func:`install_segmenter`) when given. Returns each run's wall
    time in seconds."""

    threads = max(1, (os.cpu_count() or 2) // 2)
    seconds: dict[str, float] = {}
    for start in range(0, len(planned), 2):
        group = planned[start : start + 2]
        times = run_parallel(
            [run.command(runs) for run in group], [runs / f"{run.name}.log" for run in group], threads_each=threads
        )
        seconds.update({run.name: time for run, time in zip(group, times)})
        if checkpoints is not None:
            for run in group:
                install_segmenter(runs / run.name / "model", checkpoints / run.name, results or ROOT / "results")
    return seconds


# The bundled adaptation (train.adapt_clip): a cosine schedule, then a warm restart at half the learning
# rate on fresh scenes (seed 1). Measured on held-out crops, the second cycle raised every group of names;
# learning from the baseline's proposals as well (--proposals-from) traded seen things for parts instead,
# and so did a third cycle with a deeper tower (--vision-layers 2,2,2,2) on the benchmarks (docs/results.md).
ADAPTATION_PHASES = ({"steps": 2400, "lr": 5e-4, "seed": 0}, {"steps": 2400, "lr": 2.5e-4, "seed": 1})


def _flag(key: str) -> str:
    """A config field's command-line flag: ``vision_layers`` -> ``--vision-layers``."""
    return "--" + key.replace("_", "-")


def _argument(value: Any) -> str:
    """A config value as the command line takes it: sequences comma-separated (``2,2,2,2``)."""
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def adapt_clip(runs: Path, source: Path) -> float:
    """OVSeg's mask-adapted CLIP (:mod:`train.adapt_clip`) of the trained tiny CLIP ``source``, in the
    :data:`ADAPTATION_PHASES`, on both cores' threads, into ``runs/clip-adapted``. Returns the wall time
    in seconds."""
    seconds, clip = 0.0, source
    threads = max(1, min(2, os.cpu_count() or 1))
    for index, phase in enumerate(ADAPTATION_PHASES):
        last = index == len(ADAPTATION_PHASES) - 1
        out = runs / ("clip-adapted" if last else f"clip-adapted-{index + 1}")
        command = [sys.executable, "-m", "train.adapt_clip", "--clip", str(clip), "--out", str(out)]
        command += [item for key, value in phase.items() for item in (_flag(key), _argument(value))]
        if last:
            command += ["--results", str(ROOT / "results" / "tiny_clip_adapted.json")]
        (phase_seconds,) = run_parallel([command], [out.with_suffix(".log")], threads_each=threads)
        seconds, clip = seconds + phase_seconds, out / "model"
    return seconds


def install_adapted_clip(folder: Path, runs: Path, checkpoints: Path, results: Path) -> None:
    """Install the mask-adapted CLIP in ``folder`` as ``checkpoints/tiny-clip`` and give it to the trained
    pair (``runs/<name>/model`` -> ``checkpoints/<name>``, :func:`install_segmenter`) and to every trained
    seed of it (:func:`give_adapted_clip`)."""
    clip = checkpoints / "tiny-clip"
    if folder.resolve() != clip.resolve():
        install_clip(folder, clip)
    for name in MAIN_MODELS:
        install_segmenter(runs / name / "model", checkpoints / name, results, clip=clip)
        for seed_folder in sorted(runs.glob(f"{name}-seed*/model")):
            give_adapted_clip(seed_folder, clip)


def with_adapted_clip(segmenter: Any, clip_folder: Path) -> Any:
    """A trained world segmenter with the bundled stage 2: the image tower of the mask-adapted CLIP in
    ``clip_folder`` and the recipe's stage 2 (:func:`train.recipes.world_model`'s ``stage2_mode``,
    ``crop_top_k`` and ``crop_views``).

    Stage 1 never runs the CLIP's image tower (its backbone is its own CNN) and adaptation leaves the
    text tower as it was, so stage 1's outputs are unchanged: only p_hat (Eq. 2) changes. Both are
    checked: a segmenter whose backbone is the CLIP tower, or a CLIP with another text tower, is refused.
    The image tower may have another architecture (:func:`train.adapt_clip.deepen_image_tower`): the
    segmenter's CLIP is then rebuilt from the adapted folder's config, which its saved config records.
    """
    from pmp.clip import CLIPModel
    from train.recipes import world_model
    from train.train_clip import load_clip_for_evaluation

    config = segmenter.config
    if config.backbone.kind == "clip":
        raise ValueError("this segmenter's stage 1 runs the CLIP image tower; a new tower would change its proposals")
    own = segmenter.clip.open_clip.state_dict()
    adapted_clip = load_clip_for_evaluation(str(clip_folder))
    adapted = adapted_clip.open_clip.state_dict()
    text_keys = [k for k in own if not k.startswith("visual.")]
    if text_keys != [k for k in adapted if not k.startswith("visual.")]:
        raise ValueError(f"{clip_folder} is not this segmenter's CLIP architecture")
    text_changed = [
        k for k in text_keys if own[k].shape != adapted[k].shape or not torch.equal(own[k], adapted[k].to(own[k]))
    ]
    if text_changed:
        raise ValueError(
            f"{clip_folder} has another text tower than the segmenter ({', '.join(text_changed[:3])}, ...)"
        )
    # The new weights are a copy, not the CLIP the segmenter may have referenced (install_segmenter
    # references the installed one again).
    clip_config = dataclasses.replace(
        config.clip, model_cfg=adapted_clip.config.model_cfg, checkpoint=None, checkpoint_sha256=None
    )
    if clip_config.model_cfg != config.clip.model_cfg:  # another image-tower architecture: rebuild the CLIP
        clip = CLIPModel.build(dataclasses.replace(clip_config, pretrained=None)).to(segmenter.device)
        segmenter.clip = clip.requires_grad_(False).train(segmenter.training)
    segmenter.clip.open_clip.load_state_dict(adapted)
    segmenter.clip.clear_cache()
    recipe = world_model(config.decoder.text_mode, config.decoder.num_queries)
    segmenter.config = dataclasses.replace(
        config,
        clip=clip_config,
        stage2_mode=recipe.stage2_mode,
        crop_top_k=recipe.crop_top_k,
        crop_views=recipe.crop_views,
    )
    segmenter.config.validate()
    return segmenter


def give_adapted_clip(folder: Path, clip_folder: Path) -> None:
    """Rewrite the trained segmenter in ``folder`` (as saved, float32) with :func:`with_adapted_clip`."""
    from pmp.segmenter import Segmenter

    segmenter = with_adapted_clip(Segmenter.from_pretrained(folder), clip_folder)
    staging = folder.with_name(folder.name + ".adapted")
    shutil.rmtree(staging, ignore_errors=True)
    segmenter.save_pretrained(staging, model_card=(folder / "README.md").read_text())
    shutil.rmtree(folder)
    staging.rename(folder)


def clip_reference(folder: Path) -> str:
    """How an installed segmenter names the CLIP folder it references: its bundled name for
    ``checkpoints/<name>`` (so the bundle loads wherever the repository is), else the path as given."""
    from pmp.checkpoint import BUNDLED_DIR

    return folder.name if folder.resolve().parent == BUNDLED_DIR.resolve() else str(folder)


def install_segmenter(
    source: Path, target: Path, results: Path, images: int = 20, clip: Path | None = None
) -> dict[str, float]:
    """Save a trained model into ``target``, referencing the bundled CLIP beside it (``clip``, by default
    ``target``'s sibling ``tiny-clip``; :meth:`pmp.segmenter.Segmenter.reference_clip`) instead of carrying
    a copy, with the mask-adapted ``clip``'s image tower first (:func:`with_adapted_clip`) when given; and
    measure what the saved copy changes on ``images`` world-full scenes: the share of pixels labelled the
    same and the largest change of any p_out (written to ``results/half_precision_<name>.json``)."""
    from pmp.segmenter import Segmenter
    from train.world.benchmarks import benchmark_sample

    full = Segmenter.from_pretrained(source)
    if clip is not None:
        full = with_adapted_clip(full, clip)
    # The segmenter's frozen CLIP is exactly the bundled one (reference_clip refuses it otherwise), and
    # stage 1 stays float32: masked crops binarise the masks, so float16 stage-1 weights changed up to 0.4
    # of a p_out.
    full.reference_clip(clip_reference(clip or target.parent / "tiny-clip"))
    full.save_pretrained(target, model_card=(source / "README.md").read_text())
    half = Segmenter.from_pretrained(target)
    same = total = 0
    largest = 0.0
    labels = ["sky", "grass", "road", "house", "car", "tree", "person", "dog", "wheel", "window"]
    for index in range(images):
        image, _ = benchmark_sample("world-full", index)
        a, b = full.segment(image, labels), half.segment(image, labels)
        same += int((a.semantic == b.semantic).sum())
        total += a.semantic.size
        largest = max(largest, float(abs(a.p_out - b.p_out).max()))
    check = {"pixels_same": same / total, "max_abs_p_out_change": largest, "images": images}
    write_json(results / f"half_precision_{target.name}.json", check)
    return check


def evaluate_models(
    model_dirs: dict[str, Path],
    out_json: Path,
    limit: int | None,
    sweep: tuple[float, ...] = (),
    benchmarks: tuple[str, ...] = BENCHMARKS,
    config_changes: dict[str, Any] | None = None,
    split_sweep: tuple[tuple[float, float], ...] = (),
) -> dict[str, dict[str, dict]]:
    """Every model on every benchmark, written to ``out_json``. ``config_changes`` replaces fields of the
    models' combine settings (e.g. ``ensemble``, Eq. 3's form, :data:`pmp.config.ENSEMBLES`); ``sweep`` and
    ``split_sweep`` are :func:`train.evaluate.evaluate`'s weight sweeps."""
    from pmp.segmenter import Segmenter
    from train.evaluate import evaluate, load_benchmark, to_json

    results: dict[str, dict[str, dict]] = {}
    for name, folder in model_dirs.items():
        segmenter = Segmenter.from_pretrained(folder)
        if config_changes:
            segmenter.config = dataclasses.replace(segmenter.config, **config_changes)
            segmenter.config.validate()
        results[name] = {}
        for benchmark in benchmarks:
            started = time.perf_counter()
            metrics = evaluate(
                segmenter,
                load_benchmark(benchmark),
                limit=limit,
                clip_weight_sweep=sweep,
                split_weight_sweep=split_sweep,
                show_progress=False,
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
    "crop (OVSeg), clip weight 0.65 (bundled)": ("crop", 0.65),
    "pool, clip weight 0.65": ("pool", 0.65),
    "stage 1 only (clip weight 0)": ("pool", 0.0),  # p_out = p: the cheaper mode, the same result
    "CLIP only, crop (clip weight 1)": ("crop", 1.0),
    "CLIP only, pool (clip weight 1)": ("pool", 1.0),
}


def split_weight_means(results: dict[str, dict[str, dict]]) -> dict[tuple[float, float], float]:
    """Each (clip weight, clip weight for other names) pair of the split sweeps -> its mean mIoU over every
    model and benchmark of ``results``."""
    scores: dict[tuple[float, float], list[float]] = {}
    for per_benchmark in results.values():
        for metrics in per_benchmark.values():
            for row in metrics["split_weight_sweep"]:
                scores.setdefault((row["clip_weight"], row["clip_weight_unseen"]), []).append(row["miou"])
    return {pair: sum(values) / len(values) for pair, values in scores.items()}


def choose_split_weights(dev_results: dict[str, dict[str, dict]]) -> tuple[float, float]:
    """The pair with the best mean mIoU on the dev scenes (the first of equals, in grid order)."""
    means = split_weight_means(dev_results)
    return max(means, key=lambda pair: means[pair])


def split_weight_table(
    dev_results: dict[str, dict[str, dict]],
    test_results: dict[str, dict[str, dict]],
    one_weight_test: dict[str, dict[str, dict]],
    form: str | None = None,
) -> str:
    """Markdown: every pair's mean mIoU over both models and the four benchmarks, on the dev scenes and the
    test benchmarks, below the models' own Eq. 3 (one weight, 0.65, for every prompt) in ``form`` (None:
    the checkpoints' own, the paper's): the dev files' own evaluation and ``one_weight_test`` (Table 1's,
    or that form's evaluation)."""
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
        f"| {one_weight_title} | {_pct(mean_miou(dev_results))} | {_pct(mean_miou(one_weight_test))} |",
    ]
    for pair in dev:
        mark = " (chosen)" if pair == chosen else ""
        lines.append(f"| {pair[0]} / {pair[1]}{mark} | {_pct(dev[pair])} | {_pct(test.get(pair))} |")
    return "\n".join(lines) + "\n"


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
    for name in model_names(results):
        cells = []
        for benchmark in BENCHMARKS:
            m = results[name][benchmark]
            cells.append(f"{100 * m['miou']:.1f} / {_pct(m['miou_seen'])} / {_pct(m['miou_unseen'])}")
            cells.append(f"{100 * m['proposal_recall']:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def granularity_table(results: dict[str, dict[str, dict]], benchmark: str = "world-mixed") -> str:
    """world-mixed per granularity: mIoU and proposal recall over the names of each granularity (in %)."""
    from train.world.vocabulary import GRANULARITIES, GRANULARITY

    header = "| model | " + " | ".join(f"{g} mIoU / recall" for g in GRANULARITIES) + " |"
    lines = [header, "|---|" + "---|" * len(GRANULARITIES)]
    for name in model_names(results):
        m = results[name][benchmark]
        cells = []
        for level in GRANULARITIES:

            def mean(values: dict, level: str = level) -> float | None:
                kept = [v for k, v in values.items() if GRANULARITY[k] == level and v is not None and v == v]
                return sum(kept) / len(kept) if kept else None

            cells.append(f"{_pct(mean(m['per_class']))} / {_pct(mean(m.get('per_class_recall', {})))}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def mean_and_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds (0 for a single seed)."""
    import statistics

    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


METRIC_TITLES = {"miou": "mIoU", "proposal_recall": "recall", "miou_seen": "seen mIoU", "miou_unseen": "unseen mIoU"}
SEED_TABLES = (("miou", "proposal_recall"), ("miou_seen", "miou_unseen"))  # Table 1's two halves


def seed_stats(runs: list[dict], name: str, benchmark: str, key: str) -> tuple[float, float] | None:
    """Mean and std in % of one model's metric on one benchmark over per-seed results; None where a
    benchmark has no such classes (the metric is null)."""
    values = [run[name][benchmark][key] for run in runs]
    return None if None in values else mean_and_std([100 * v for v in values])


FLIP_TEST = "flip_test"  # results/<this>/<model>_<benchmark>.json: python -m train.evaluate --flip-test, all images
# A later run of benchmarks.latency than latency_bundled.json's, which times each model's request with one
# view and with the flip test side by side (benchmarks.latency.flip_test_comparison).
FLIP_TEST_LATENCY = "latency_flip_test.json"
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
        cells = [f"{100 * chosen_split_row(results, flipped[name][benchmark])[key]:.1f}" for name in MAIN_MODELS]
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


def model_names(results: dict) -> list[str]:
    """The models of a results file, in order: not its other entries, such as training minutes."""
    return [name for name, rows in results.items() if isinstance(rows, dict) and set(rows) & set(BENCHMARKS)]


def seed_table(result_files: list[Path], metrics: tuple[str, ...] = SEED_TABLES[0]) -> str:
    """Per model, benchmark and metric the mean ± sample std over runs with different seeds (one results
    JSON per seed, as :func:`evaluate_models` writes them), in %; "n/a" where a benchmark has no such classes.

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


SEED_FILES = ("main.json", "main_seed1.json", "main_seed2.json")  # Table 1's seeds 0 (the bundle), 1 and 2
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


def table1_files(folder: Path) -> list[Path]:
    """The per-seed Table 1 files (:data:`SEED_FILES`) that ``folder`` holds, seed 0 first: a seed still
    training is left out, and the tables say how many seeds they average."""
    return [folder / name for name in SEED_FILES if (folder / name).is_file()]


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
    from train.adapt_clip import accuracy_table, measured_before

    runs = _adaptation_runs(results, ADAPTATION_RUNS)
    return accuracy_table(
        {"the tiny CLIP as trained": measured_before(runs[ADAPTATION_RUNS["proposals_2400.json"]]), **runs}
    )


def third_cycle_table(results: Path) -> str:
    """:func:`train.adapt_clip.accuracy_table` of the :data:`THIRD_CYCLE_RUNS`: does a deeper image tower
    hold what the tiny one traded away?"""
    from train.adapt_clip import accuracy_table

    return accuracy_table(_adaptation_runs(results, THIRD_CYCLE_RUNS))


CANDIDATE_CLIPS = {  # results/candidate_clips/<folder> -> its row: the bundled CLIP continued in both views
    "bundled": "bundled (masked crops, 2,400 + 2,400 steps)",
    "two_views_2400": "+ 2,400 steps in both views, lr 2.5e-4",
    "kinds_600": "+ 600 steps in both views, kinds balanced, lr 2.5e-4",
}
CANDIDATE_RUNS = {  # results/adaptation_runs/<file> -> its column: held-out top-1, each file measured in both views
    "pilot_two_views_400steps.json": "+ 400 steps in both views",
    "two_views_2400.json": "+ 2,400 steps in both views",
    "two_views_kinds_600.json": "+ 600 steps in both views, kinds balanced",
}
CANDIDATE_BENCHMARKS = ("world-voc-dev", "world-full-dev")
CANDIDATE_ON_TEST = {  # results/candidate_clips/<folder> on the full benchmarks -> its row
    "two_views_2400_test": CANDIDATE_CLIPS["two_views_2400"],
    "kinds_600_test": CANDIDATE_CLIPS["kinds_600"],
}


def candidate_accuracy_table(results: Path) -> str:
    """:func:`train.adapt_clip.accuracy_table` of the bundled CLIP (read in both views, as the pilot
    measured it before adapting) and each :data:`CANDIDATE_RUNS` file, all on the same held-out crops."""
    from train.adapt_clip import accuracy_table, measured_before

    runs = _adaptation_runs(results, CANDIDATE_RUNS)
    bundled = measured_before(runs[CANDIDATE_RUNS["pilot_two_views_400steps.json"]])
    return accuracy_table({"bundled, read in both views": bundled, **runs})


def chosen_split_row(results: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """The row of a ``train.evaluate`` result's split-weight sweep with FC-CLIP's two weights as chosen on
    the dev scenes (:func:`choose_split_weights` of ``results/split_weights/dev.json``)."""
    chosen = choose_split_weights(json.loads((results / "split_weights" / "dev.json").read_text()))
    return next(r for r in metrics["split_weight_sweep"] if (r["clip_weight"], r["clip_weight_unseen"]) == chosen)


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
                cells.append(f"{_pct(row['miou'])} ({_pct(row['miou_seen'])} / {_pct(row['miou_unseen'])})")
            lines.append(f"| {title} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _two_weight_table(
    results: Path,
    rows: dict[str, dict[str, dict[str, Any]]],
    benchmarks: tuple[str, ...],
    first_column: str = "stage-2 CLIP",
) -> str:
    """:func:`_miou_table` with FC-CLIP's two weights as chosen on the dev scenes (:func:`chosen_split_row`)."""
    return _miou_table(rows, benchmarks, first_column, lambda metrics: chosen_split_row(results, metrics))


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
    two weights (one view: ``results/split_weights/main.json``)."""
    flipped = _candidate_results(results / FLIP_TEST, BENCHMARKS)
    one_view = {
        form: json.loads((results / folder / "main.json").read_text())
        for form, folder in (("eq3", "."), ("two", "split_weights"))
    }
    eq3 = {
        "one view (Table 1, seed 0)": {name: one_view["eq3"][name] for name in MAIN_MODELS},
        "the image and its mirror (the flip test)": flipped,
    }
    two = {
        "one view": {name: one_view["two"][name] for name in MAIN_MODELS},
        "the image and its mirror (the flip test)": flipped,
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


def plot_seed_results(result_files: list[Path], out_png: Path, title: str = "") -> None:
    """mIoU and proposal recall per benchmark, one bar per model, error bars = sample std over the seeds."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
        axis.set_xlabel("clip weight w (Eq. 3's lambda = 1 - w)")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("mIoU (%)")
    axes[-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def write_json(path: Path, data: dict) -> None:
    from train.evaluate import to_json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_json(data) + "\n")


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


def query_sweep_runs(seed: int) -> list[Run]:
    """Baseline and PMP at each of :data:`QUERY_BUDGETS`, :data:`SHORT_STEPS` each, on the previous recipe."""
    return [
        Run(f"q{q}-{name}-seed{seed}", mode, SHORT_STEPS, q, seed, previous_recipe(mode))
        for q in QUERY_BUDGETS
        for name, mode in MAIN_MODELS.items()
    ]


def ablation_runs() -> list[Run]:
    """Every text mode at :data:`ABLATION_QUERIES` queries, seed 0: the baseline and PMP are the query
    sweep's runs of that budget, so the sweep's folders are reused when it ran first."""
    models = {**MAIN_MODELS, **ABLATIONS}.items()
    return [
        Run(f"q{ABLATION_QUERIES}-{name}-seed0", mode, SHORT_STEPS, ABLATION_QUERIES, 0, previous_recipe(mode))
        for name, mode in models
    ]


def stage1_pilot_runs(seed: int = 0) -> list[Run]:
    """The stage-1 capacity pilots, each :data:`PILOT_STEPS` long: the 128-channel head (today's bundled
    recipe), its control (the 64-channel recipe the pair had then) and :data:`train.recipes.STAGE1_PILOTS`;
    the first pilot trains beside the control (it is the slowest)."""
    from train.recipes import STAGE1_PILOTS

    suffix = f"-seed{seed}" if seed else ""
    recipes = (world_name("none"), previous_recipe("none"), *STAGE1_PILOTS)
    return [Run(f"pilot-{recipe}{suffix}", "none", PILOT_STEPS, seed=seed, recipe=recipe) for recipe in recipes]


def with_train_minutes(results: dict[str, dict], runs: Path, suffix: str = "") -> dict:
    """``results`` and, as ``train_minutes``, each model's training time from ``runs/<name><suffix>``'s log
    (:func:`train_minutes`), for the models trained on this machine."""
    logs = {name: runs / f"{name}{suffix}" / "metrics.jsonl" for name in model_names(results)}
    return {**results, "train_minutes": {name: train_minutes(log) for name, log in logs.items() if log.is_file()}}


def train_minutes(log: Path) -> float:
    """A run's wall time in minutes (one decimal) from its ``metrics.jsonl``: each process logs the seconds
    since it started, so a resumed run's time is the sum of each process's largest ``seconds``."""
    total, segment, previous = 0.0, 0.0, -1.0
    for row in map(json.loads, log.read_text().splitlines()):
        if "seconds" not in row:
            continue
        if row["seconds"] < previous:  # a resumption: a new process began counting from zero
            total, segment = total + segment, 0.0
        segment = max(segment, row["seconds"])
        previous = row["seconds"]
    return round((total + segment) / 60, 1)


def stage1_pilot_results(planned: list[Run], runs: Path) -> dict[str, dict]:
    """Per pilot run that has trained: its recipe, stage 1's parameter count, training minutes and its
    evaluation rows (:func:`learning_curve`: world-full, the recipe's first ``eval_limit`` images)."""
    from pmp.segmenter import Segmenter
    from train.recipes import get_recipe

    results = {}
    for run in planned:
        log = runs / run.name / "metrics.jsonl"
        if not log.is_file():
            print(f"stage-1 pilot {run.name} has not been trained ({log} is missing); left out")
            continue
        recipe = run.recipe or world_name(run.text_mode)
        stage1 = Segmenter(get_recipe(recipe).model, load_backbone_weights=False).proposal_model
        results[recipe] = {
            "steps": run.steps,
            "seed": run.seed,
            "stage1_parameters": sum(p.numel() for p in stage1.parameters()),
            "train_minutes": train_minutes(log),
            "curve": learning_curve(runs / run.name),
        }
    return results


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


def stage1_pilot_files(results: Path) -> list[Path]:
    """The per-seed pilot files: ``stage1_pilots.json`` (seed 0), then ``stage1_pilots_seed<k>.json``."""
    return [results / "stage1_pilots.json", *sorted(results.glob("stage1_pilots_seed*.json"))]


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


def plot_query_sweep(files: list[Path], out_png: Path) -> None:
    """mIoU and proposal recall against the number of queries, baseline vs PMP, error bars = seed std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def _pct(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{100 * value:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.bundle", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bundle")
    parser.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints")
    parser.add_argument("--results", type=Path, default=ROOT / "results")
    parser.add_argument(
        "--ablations",
        action="store_true",
        help=f"every text mode (Eq. 5 variants, Fig. 5) at {ABLATION_QUERIES} queries, {SHORT_STEPS} steps",
    )
    parser.add_argument("--evaluate-only", action="store_true")
    parser.add_argument(
        "--ensemble-form",
        choices=ENSEMBLES,
        default=None,
        help="evaluate the bundled pair with this Eq. 3 form instead (results/ensemble_<form>/main.json)",
    )
    parser.add_argument(
        "--split-weights",
        action="store_true",
        help="Eq. 3 with FC-CLIP's two clip weights (training names / others), the pair chosen on the dev scenes "
        "(results/split_weights/; with --ensemble-form F, in that form: results/split_weights_F/)",
    )
    parser.add_argument(
        "--seed-table",
        default=None,
        metavar="A.json,B.json",
        help="print the mean ± std table of these per-seed results files and exit",
    )
    parser.add_argument(
        "--headline", action="store_true", help="print the README's at-a-glance table from results/ and exit"
    )
    parser.add_argument("--figure", type=Path, default=None, help="with --seed-table: also draw the bar chart here")
    parser.add_argument(
        "--investigate", action="store_true", help="stage-2 mode and lambda variants of the bundled models"
    )
    parser.add_argument(
        "--query-sweep",
        action="store_true",
        help=f"baseline and PMP at {', '.join(map(str, QUERY_BUDGETS))} queries, {SHORT_STEPS} steps each",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="with --query-sweep or --stage1-pilots: its seed; alone: another seed of the bundled pair",
    )
    parser.add_argument(
        "--learning-curve",
        default=None,
        metavar="LABEL=RUN,...",
        help="collect the evaluation rows of these training runs -> results/learning_curve.json, docs/",
    )
    parser.add_argument(
        "--install-adapted-clip",
        type=Path,
        default=None,
        metavar="FOLDER",
        help="give the trained pair (runs/<name>/model -> checkpoints/<name>) and every trained seed of it "
        "this mask-adapted tiny CLIP (python -m train.adapt_clip) and the recipe's stage 2; install the CLIP "
        "as checkpoints/tiny-clip",
    )
    parser.add_argument(
        "--stage1-pilots",
        action="store_true",
        help=f"stage-1 capacity pilots: the bundled baseline, the 64-channel one and train.recipes.STAGE1_PILOTS, "
        f"{PILOT_STEPS} steps each -> results/stage1_pilots.json (with --seed K: _seedK.json) and the table of "
        "all seeds, .md",
    )
    parser.add_argument("--skip-clip", action="store_true", help="reuse checkpoints/tiny-clip")
    parser.add_argument("--clip-steps", type=int, default=None)
    parser.add_argument("--seg-steps", type=int, default=None)
    parser.add_argument("--eval-limit", type=int, default=None, help="images per benchmark (default: all 500)")
    args = parser.parse_args(argv)
    if args.headline:
        print(headline_table(args.results), end="")
        return 0
    if args.seed_table:
        files = [Path(f) for f in args.seed_table.split(",")]
        print(seed_tables(files), end="")
        if args.figure:
            plot_seed_results(files, args.figure)
        return 0
    started = time.perf_counter()
    if args.learning_curve:
        curves = {}
        for item in args.learning_curve.split(","):
            label, _, folder = item.partition("=")
            curves[label] = learning_curve(ROOT / folder)
        write_json(args.results / "learning_curve.json", curves)
        plot_learning_curves(curves, ROOT / "docs" / "learning_curve.png")
    elif args.install_adapted_clip:
        install_adapted_clip(args.install_adapted_clip, args.runs, args.checkpoints, args.results)
    elif args.investigate:
        dirs = {name: args.checkpoints / name for name in MAIN_MODELS}
        table = investigate_stage2(dirs, args.results / "stage2.json", args.eval_limit or 100)
        (args.results / "stage2.md").write_text(table)
    elif args.stage1_pilots:
        planned = stage1_pilot_runs(args.seed or 0)
        if not args.evaluate_only:
            train_segmenters(planned, args.runs, None)
        name = f"stage1_pilots_seed{args.seed}.json" if args.seed else "stage1_pilots.json"
        write_json(args.results / name, stage1_pilot_results(planned, args.runs))
        (args.results / "stage1_pilots.md").write_text(stage1_pilot_table(stage1_pilot_files(args.results)))
    elif args.query_sweep:
        seed = args.seed or 0
        planned = query_sweep_runs(seed)
        times = {} if args.evaluate_only else train_segmenters(planned, args.runs, None)
        results: dict = {}
        for q in QUERY_BUDGETS:
            dirs = {name: args.runs / f"q{q}-{name}-seed{seed}" / "model" for name in MAIN_MODELS}
            out = args.runs / f"q{q}-seed{seed}.json"
            results[str(q)] = evaluate_models(dirs, out, args.eval_limit, benchmarks=SWEEP_BENCHMARKS)
        results["train_seconds"] = times
        write_json(args.results / f"query_sweep_seed{seed}.json", results)
        files = sorted(args.results.glob("query_sweep_seed*.json"))
        plot_query_sweep(files, ROOT / "docs" / "query_sweep.png")
        (args.results / "query_sweep.md").write_text(query_sweep_table(files))
    elif args.split_weights:  # the bundled pair, the same stage outputs, Eq. 3 with two weights
        dirs = {name: args.checkpoints / name for name in MAIN_MODELS}
        form = args.ensemble_form  # None: the checkpoints' own (OVSeg's)
        folder = args.results / ("split_weights" if form is None else f"split_weights_{form}")
        form_change = {} if form is None else {"ensemble": form}
        dev_benchmarks = tuple(name + DEV_SUFFIX for name in BENCHMARKS)
        dev = evaluate_models(
            dirs,
            folder / "dev.json",
            DEV_LIMIT,
            benchmarks=dev_benchmarks,
            config_changes=form_change,
            split_sweep=SPLIT_WEIGHT_GRID,
        )
        seen, unseen = choose_split_weights(dev)
        print(f"chosen on the dev scenes: clip weight {seen} (training names) / {unseen} (other names)", flush=True)
        changes = {**form_change, "clip_weight": seen, "clip_weight_unseen": unseen}
        results = evaluate_models(
            dirs, folder / "main.json", args.eval_limit, config_changes=changes, split_sweep=SPLIT_WEIGHT_GRID
        )
        (folder / "main.md").write_text(markdown_table(results))
        # The same models with one weight and the same form: Table 1, or the form's own evaluation.
        one_weight_file = args.results / ("main.json" if form is None else f"ensemble_{form}/main.json")
        one_weight = json.loads(one_weight_file.read_text())
        one_weight = {name: one_weight[name] for name in MAIN_MODELS}
        (folder / "grid.md").write_text(split_weight_table(dev, results, one_weight, form))
    elif args.ensemble_form:  # the bundled pair, the same stage outputs, another Eq. 3 form
        dirs = {name: args.checkpoints / name for name in MAIN_MODELS}
        folder = args.results / f"ensemble_{args.ensemble_form}"
        results = evaluate_models(
            dirs,
            folder / "main.json",
            args.eval_limit,
            CLIP_WEIGHT_SWEEP,
            config_changes={"ensemble": args.ensemble_form},
        )
        (folder / "main.md").write_text(markdown_table(results))
    elif args.ablations:
        planned = ablation_runs()
        if not args.evaluate_only:  # the baseline and PMP runs are the query sweep's, when it ran first
            missing = [run for run in planned if not (args.runs / run.name / "model").is_dir()]
            train_segmenters(missing, args.runs, None)
        dirs = {name: args.runs / run.name / "model" for name, run in zip({**MAIN_MODELS, **ABLATIONS}, planned)}
        results = evaluate_models(dirs, args.results / "ablations.json", args.eval_limit)
        (args.results / "ablations.md").write_text(markdown_table(results))
    elif args.seed:  # another seed of the bundled pair: results only, the bundle keeps seed 0
        planned = [Run(f"{name}-seed{args.seed}", mode, seed=args.seed) for name, mode in MAIN_MODELS.items()]
        if not args.evaluate_only:  # each run's minutes come from its log (with_train_minutes)
            train_segmenters(planned, args.runs, None)
        dirs = {name: args.runs / f"{name}-seed{args.seed}" / "model" for name in MAIN_MODELS}
        out = args.results / f"main_seed{args.seed}.json"
        write_json(out, with_train_minutes(evaluate_models(dirs, out, args.eval_limit), args.runs, f"-seed{args.seed}"))
    else:
        times: dict[str, float] = {}
        if not args.evaluate_only:
            if not args.skip_clip:
                times["tiny-clip"] = train_clip(args.runs, args.checkpoints, args.clip_steps)
                times["tiny-clip-adapted"] = adapt_clip(args.runs, args.runs / "clip" / "model")
                install_clip(args.runs / "clip-adapted" / "model", args.checkpoints / "tiny-clip")
            planned = [Run(name, mode, steps=args.seg_steps) for name, mode in MAIN_MODELS.items()]
            times.update(train_segmenters(planned, args.runs, args.checkpoints, args.results))
        dirs = {name: args.checkpoints / name for name in MAIN_MODELS}
        evaluation_started = time.perf_counter()
        results = evaluate_models(dirs, args.results / "main.json", args.eval_limit, CLIP_WEIGHT_SWEEP)
        write_json(args.results / "main.json", with_train_minutes(results, args.runs))
        (args.results / "main.md").write_text(markdown_table(results))
        (args.results / "mixed_granularity.md").write_text(granularity_table(results))
        plot_clip_weight_sweep(results, ROOT / "docs" / "clip_weight.png")
        # The fixed 50-image subset that tests/test_bundle.py re-evaluates against these numbers.
        subset = evaluate_models(dirs, args.results / "subset50.json", 50)
        (args.results / "subset50.md").write_text(markdown_table(subset))
        times["evaluation"] = time.perf_counter() - evaluation_started
        if not args.evaluate_only:
            write_json(args.results / "bundle_times.json", {"seconds": times})
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
