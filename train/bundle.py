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
    python -m train.bundle --pixel-decoder-pilots   # OVSeg's FPN against Mask2Former's deformable encoder

The tables and figures it writes from the results are :mod:`train.report`'s. The baseline and PMP are
the same recipe (``recipes/world.json``) with one field changed, ``decoder.text_mode``: same
data indices, seeds, schedule and prompt scheme. On a 2-core machine the two segmenters train side by
side, one core each, and the wall time of each part (CLIP, each segmenter, the evaluation) is written to
``results/bundle_times.json``. The tiny CLIP is stored once, in float16 (as it was trained), and both
segmenters reference it instead of carrying a copy; weights are split into shards so that every file
stays under 10 MB and the bundle under 60 MB.
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
from typing import Any

import torch

from pmp.config import ENSEMBLES
from train.recipes import previous_recipe, world_name
from train.report import (
    BENCHMARKS,
    MAIN_MODELS,
    QUERY_BUDGETS,
    SHORT_STEPS,
    SWEEP_BENCHMARKS,
    choose_split_weights,
    granularity_table,
    headline_table,
    learning_curve,
    markdown_table,
    model_names,
    pct,
    plot_clip_weight_sweep,
    plot_learning_curves,
    plot_query_sweep,
    plot_seed_results,
    query_sweep_table,
    seed_tables,
    split_weight_table,
    stage1_pilot_files,
    stage1_pilot_table,
)
from train.world.vocabulary import DEV_SUFFIX

ROOT = Path(__file__).resolve().parent.parent
INVESTIGATED = ("world-voc", "world-full", "world-parts")  # the stage-2 investigation's benchmarks
ABLATIONS = {
    "pmp_residual": "pmp_residual",
    "concat": "concat",
    "concat_drop": "concat_drop",
    "text_queries": "text_queries",
}
CLIP_WEIGHT_SWEEP = (0.0, 0.2, 0.35, 0.5, 0.65, 0.8, 1.0)  # Eq. 3's exponent of p_hat; 0 = stage 1 alone
# Eq. 3 with FC-CLIP's two weights (prompts among stage 1's training names / the others; FC-CLIP's own
# are 0.4 / 0.8): every pair is scored on the held-out dev scenes, and the pair with the best mean mIoU
# over both models and the four dev benchmarks (among FC-CLIP's 0.4 for training names and above,
# train.report.choose_split_weights) is then evaluated on the test benchmarks. The weights below 0.4 are
# scored beside them to show which side of FC-CLIP's the best pair lies.
SPLIT_WEIGHT_GRID = tuple(
    (seen, unseen) for seen in (0.2, 0.3, 0.4, 0.5, 0.65) for unseen in (0.8, 0.85, 0.9, 0.95, 1.0)
)
DEV_LIMIT = 200  # every held-out scene of each dev benchmark
PILOT_STEPS = 3000  # the stage-1 capacity pilots and their control, each the bundled schedule this long
ABLATION_QUERIES = 16  # the Fig. 5 ablations' budget; they run SHORT_STEPS on the previous recipe, as the sweep


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
                cells.append(f"{100 * m['miou']:.1f} / {pct(m['miou_unseen'])}")
            lines.append(f"| {name} | {variant} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(to_json(results) + "\n")
    return "\n".join(lines) + "\n"


def write_json(path: Path, data: dict) -> None:
    from train.evaluate import to_json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_json(data) + "\n")


def query_sweep_runs(seed: int) -> list[Run]:
    """Baseline and PMP at each of :data:`train.report.QUERY_BUDGETS`, :data:`train.report.SHORT_STEPS`
    each, on the previous recipe."""
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


def pilot_runs(recipes: tuple[str, ...], seed: int = 0, prefix: str = "pilot") -> list[Run]:
    """Each recipe for :data:`PILOT_STEPS`, in ``runs/<prefix>-<recipe>[-seed<k>]``."""
    suffix = f"-seed{seed}" if seed else ""
    return [Run(f"{prefix}-{recipe}{suffix}", "none", PILOT_STEPS, seed=seed, recipe=recipe) for recipe in recipes]


def stage1_pilot_runs(seed: int = 0) -> list[Run]:
    """The stage-1 capacity pilots: the 128-channel head (today's bundled recipe), its control (the
    64-channel recipe the pair had then) and :data:`train.recipes.STAGE1_PILOTS`; the first pilot trains
    beside the control (it is the slowest)."""
    from train.recipes import STAGE1_PILOTS

    return pilot_runs((world_name("none"), previous_recipe("none"), *STAGE1_PILOTS), seed)


def pixel_decoder_pilot_runs(seed: int = 0) -> list[Run]:
    """The bundled baseline's recipe with OVSeg's FPN (the bundled one, the control) and with
    :data:`train.recipes.PIXEL_DECODER_PILOTS` (Mask2Former's deformable encoder), side by side: trained and
    evaluated in one run, so that both read the proposals with the same stage 2."""
    from train.recipes import PIXEL_DECODER_PILOTS

    return pilot_runs((world_name("none"), *PIXEL_DECODER_PILOTS), seed, prefix="decoder-pilot")


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
    evaluation rows (:func:`train.report.learning_curve`: world-full, the recipe's first ``eval_limit`` images)."""
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
    parser.add_argument(
        "--pixel-decoder-pilots",
        action="store_true",
        help=f"the bundled baseline's recipe with the FPN and with Mask2Former's deformable pixel decoder, "
        f"{PILOT_STEPS} steps each -> results/pixel_decoder_pilots.json (with --seed K: _seedK.json) and .md",
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
    elif args.stage1_pilots or args.pixel_decoder_pilots:
        kind = "stage1_pilots" if args.stage1_pilots else "pixel_decoder_pilots"
        planned = (stage1_pilot_runs if args.stage1_pilots else pixel_decoder_pilot_runs)(args.seed or 0)
        if not args.evaluate_only:  # the pilots already trained in --runs are not trained again
            train_segmenters([run for run in planned if not (args.runs / run.name / "model").is_dir()], args.runs)
        path = args.results / (f"{kind}_seed{args.seed}.json" if args.seed else f"{kind}.json")
        # A pilot trained on another machine keeps its recorded row; one trained here replaces it.
        recorded = json.loads(path.read_text()) if path.is_file() else {}
        write_json(path, {**recorded, **stage1_pilot_results(planned, args.runs)})
        (args.results / f"{kind}.md").write_text(stage1_pilot_table(stage1_pilot_files(args.results, kind)))
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
