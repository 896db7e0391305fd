"""Reproduce the bundled offline models from scratch: tiny CLIP, then baseline and PMP, then Table 1.

    python -m train.bundle                      # tiny CLIP (mask-adapted) + baseline + PMP -> checkpoints/, results/
    python -m train.bundle --skip-clip          # the two segmenters only, on the bundled tiny CLIP
    python -m train.bundle --seed 1             # another seed of the pair -> results/main_seed1.json
    python -m train.bundle --evaluate-only      # re-run only the evaluation tables
    python -m train.bundle --install-adapted-clip runs/bundle/clip-adapted/model   # a new stage-2 CLIP
    python -m train.bundle --seed-table results/main.json,results/main_seed1.json   # Table 1, mean ± std

Table 1's tables and figures are :mod:`train.table1`'s; the studies behind ``docs/results.md`` are
``python -m experiments.studies``. The baseline and PMP are the same recipe (``recipes/world.json``) with
one field changed, ``decoder.text_mode``: same data indices, seeds, schedule and prompt scheme. On a 2-core
machine the two segmenters train side by side, one core each, and the wall time of each part (CLIP, each
segmenter, the evaluation) is written to ``results/bundle_times.json``. The tiny CLIP is stored once, in
float16 (as it was trained), and both segmenters reference it instead of carrying a copy; weights are split
into shards so that every file stays under 10 MB and the bundle under 60 MB.
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

from pmp.checkpoint import BUNDLED_DIR
from pmp.segmenter import Segmenter
from train.adapt_clip import with_adapted_clip
from train.evaluate import evaluate, load_benchmark, to_json
from train.recipes import world_name
from train.table1 import (
    BENCHMARKS,
    MAIN_MODELS,
    granularity_table,
    markdown_table,
    model_names,
    plot_clip_weight_sweep,
    plot_seed_results,
    seed_tables,
)
from train.world.benchmarks import benchmark_sample

ROOT = Path(__file__).resolve().parent.parent
CLIP_WEIGHT_SWEEP = (0.0, 0.2, 0.35, 0.5, 0.65, 0.8, 1.0)  # Eq. 3's exponent of p_hat; 0 = stage 1 alone


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


def give_adapted_clip(folder: Path, clip_folder: Path) -> None:
    """Rewrite the trained segmenter in ``folder`` (as saved, float32) with :func:`with_adapted_clip`."""

    segmenter = with_adapted_clip(Segmenter.from_pretrained(folder), clip_folder)
    staging = folder.with_name(folder.name + ".adapted")
    shutil.rmtree(staging, ignore_errors=True)
    segmenter.save_pretrained(staging, model_card=(folder / "README.md").read_text())
    shutil.rmtree(folder)
    staging.rename(folder)


def clip_reference(folder: Path) -> str:
    """How an installed segmenter names the CLIP folder it references: its bundled name for
    ``checkpoints/<name>`` (so the bundle loads wherever the repository is), else the path as given."""

    return folder.name if folder.resolve().parent == BUNDLED_DIR.resolve() else str(folder)


def install_segmenter(
    source: Path, target: Path, results: Path, images: int = 20, clip: Path | None = None
) -> dict[str, float]:
    """Save a trained model into ``target``, referencing the bundled CLIP beside it (``clip``, by default
    ``target``'s sibling ``tiny-clip``; :meth:`pmp.segmenter.Segmenter.reference_clip`) instead of carrying
    a copy, with the mask-adapted ``clip``'s image tower first (:func:`with_adapted_clip`) when given; and
    measure what the saved copy changes on ``images`` world-full scenes: the share of pixels labelled the
    same and the largest change of any p_out (written to ``results/half_precision_<name>.json``)."""

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


def write_json(path: Path, data: dict) -> None:

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_json(data) + "\n")


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.bundle", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bundle")
    parser.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints")
    parser.add_argument("--results", type=Path, default=ROOT / "results")
    parser.add_argument("--evaluate-only", action="store_true")
    parser.add_argument(
        "--seed-table",
        default=None,
        metavar="A.json,B.json",
        help="print the mean ± std table of these per-seed results files and exit",
    )
    parser.add_argument("--figure", type=Path, default=None, help="with --seed-table: also draw the bar chart here")
    parser.add_argument("--seed", type=int, default=None, help="another seed of the bundled pair (results only)")
    parser.add_argument(
        "--install-adapted-clip",
        type=Path,
        default=None,
        metavar="FOLDER",
        help="give the trained pair (runs/<name>/model -> checkpoints/<name>) and every trained seed of it "
        "this mask-adapted tiny CLIP (python -m train.adapt_clip) and the recipe's stage 2; install the CLIP "
        "as checkpoints/tiny-clip",
    )
    parser.add_argument("--skip-clip", action="store_true", help="reuse checkpoints/tiny-clip")
    parser.add_argument("--clip-steps", type=int, default=None)
    parser.add_argument("--seg-steps", type=int, default=None)
    parser.add_argument("--eval-limit", type=int, default=None, help="images per benchmark (default: all 500)")
    args = parser.parse_args(argv)
    if args.seed_table:
        files = [Path(f) for f in args.seed_table.split(",")]
        print(seed_tables(files), end="")
        if args.figure:
            plot_seed_results(files, args.figure)
        return 0
    started = time.perf_counter()
    if args.install_adapted_clip:
        install_adapted_clip(args.install_adapted_clip, args.runs, args.checkpoints, args.results)
    elif args.seed:  # another seed of the bundled pair: results only, the bundle keeps seed 0
        planned = [Run(f"{name}-seed{args.seed}", mode, seed=args.seed) for name, mode in MAIN_MODELS.items()]
        if not args.evaluate_only:  # each run's minutes come from its log (with_train_minutes)
            train_segmenters(planned, args.runs, None)
        dirs = {name: args.runs / f"{name}-seed{args.seed}" / "model" for name in MAIN_MODELS}
        out = args.results / f"main_seed{args.seed}.json"
        write_json(out, with_train_minutes(evaluate_models(dirs, out, args.eval_limit), args.runs, f"-seed{args.seed}"))
    else:
        reproduce(args)
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min")
    return 0


def reproduce(args: argparse.Namespace) -> None:
    """The bundle: tiny CLIP and its adaptation, the two segmenters, installed; then Table 1's seed 0."""
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


if __name__ == "__main__":
    raise SystemExit(main())
