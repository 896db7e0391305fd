"""The studies behind ``docs/results.md``, run on the bundled world (each writes its files in ``results/``).

    python -m experiments.studies --query-sweep --seed 0   # 4-32 queries, short recipe -> docs/query_sweep.png
    python -m experiments.studies --ablations          # every text mode (Eq. 5 variants, Fig. 5), short recipe
    python -m experiments.studies --split-weights      # Eq. 3 with FC-CLIP's two weights, chosen on the dev scenes
    python -m experiments.studies --ensemble-form odise   # the bundled pair under ODISE's Eq. 3
    python -m experiments.studies --investigate        # stage-2 mode and weight variants of the bundled pair
    python -m experiments.studies --stage1-pilots      # stage-1 capacity pilots against the bundled recipe
    python -m experiments.studies --pixel-decoder-pilots   # OVSeg's FPN against Mask2Former's deformable encoder
    python -m experiments.studies --learning-curve LABEL=RUN,...   # evaluation rows of training runs
    python -m experiments.studies --headline           # the record's at-a-glance table

Each trains and evaluates with :mod:`train.bundle`'s helpers (the bundled recipe with a few fields changed,
two runs side by side, one core each); the tables and figures are :mod:`experiments.report`'s.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from experiments.report import (
    choose_split_weights,
    headline_table,
    split_weight_table,
    stage1_pilot_files,
    stage1_pilot_table,
)
from experiments.sweeps import (
    QUERY_BUDGETS,
    SHORT_STEPS,
    SWEEP_BENCHMARKS,
    learning_curve,
    plot_learning_curves,
    plot_query_sweep,
    query_sweep_table,
)
from pmp.config import ENSEMBLES
from pmp.segmenter import Segmenter
from train.bundle import ROOT, Run, evaluate_models, train_minutes, train_segmenters, write_json
from train.evaluate import evaluate, load_benchmark, to_json
from train.recipes import PIXEL_DECODER_PILOTS, STAGE1_PILOTS, get_recipe, previous_recipe, world_name
from train.table1 import BENCHMARKS, MAIN_MODELS, markdown_table, pct
from train.world.vocabulary import DEV_SUFFIX

CLIP_WEIGHT_SWEEP = (0.0, 0.2, 0.35, 0.5, 0.65, 0.8, 1.0)  # as train.bundle's Table 1 evaluation

INVESTIGATED = ("world-voc", "world-full", "world-parts")  # the stage-2 investigation's benchmarks


ABLATIONS = {
    "pmp_residual": "pmp_residual",
    "concat": "concat",
    "concat_drop": "concat_drop",
    "text_queries": "text_queries",
}


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


STAGE2_VARIANTS = {  # name: (stage2_mode, clip_weight); clip_weight is Eq. 3's exponent of CLIP's p_hat
    "crop (OVSeg), clip weight 0.65 (bundled)": ("crop", 0.65),
    "pool, clip weight 0.65": ("pool", 0.65),
    "stage 1 only (clip weight 0)": ("pool", 0.0),  # p_out = p: the cheaper mode, the same result
    "CLIP only, crop (clip weight 1)": ("crop", 1.0),
    "CLIP only, pool (clip weight 1)": ("pool", 1.0),
}


def investigate_stage2(model_dirs: dict[str, Path], out_json: Path, limit: int) -> str:
    """mIoU (all / unseen) of each model under each stage-2 variant; the proposals are the same in all."""

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
    return pilot_runs((world_name("none"), previous_recipe("none"), *STAGE1_PILOTS), seed)


def pixel_decoder_pilot_runs(seed: int = 0) -> list[Run]:
    """The bundled baseline's recipe with OVSeg's FPN (the bundled one, the control) and with
    :data:`train.recipes.PIXEL_DECODER_PILOTS` (Mask2Former's deformable encoder), side by side: trained and
    evaluated in one run, so that both read the proposals with the same stage 2."""
    return pilot_runs((world_name("none"), *PIXEL_DECODER_PILOTS), seed, prefix="decoder-pilot")


def stage1_pilot_results(planned: list[Run], runs: Path) -> dict[str, dict]:
    """Per pilot run that has trained: its recipe, stage 1's parameter count, training minutes and its
    evaluation rows (:func:`train.report.learning_curve`: world-full, the recipe's first ``eval_limit`` images)."""

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
        prog="python -m experiments.studies", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
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
        "--headline", action="store_true", help="print the README's at-a-glance table from results/ and exit"
    )
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
        help="the seed of --query-sweep, --stage1-pilots or --pixel-decoder-pilots",
    )
    parser.add_argument(
        "--learning-curve",
        default=None,
        metavar="LABEL=RUN,...",
        help="collect the evaluation rows of these training runs -> results/learning_curve.json, docs/",
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
    parser.add_argument("--eval-limit", type=int, default=None, help="images per benchmark (default: all 500)")
    args = parser.parse_args(argv)
    if args.headline:
        print(headline_table(args.results), end="")
        return 0
    started = time.perf_counter()
    if args.learning_curve:
        curves = {}
        for item in args.learning_curve.split(","):
            label, _, folder = item.partition("=")
            curves[label] = learning_curve(ROOT / folder)
        write_json(args.results / "learning_curve.json", curves)
        plot_learning_curves(curves, ROOT / "docs" / "learning_curve.png")
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
    else:
        parser.error("name a study: --query-sweep, --ablations, --split-weights, --ensemble-form, --investigate, "
                     "--stage1-pilots, --pixel-decoder-pilots, --learning-curve or --headline")  # fmt: skip
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
