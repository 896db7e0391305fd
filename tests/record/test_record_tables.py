"""The research record's tables (docs/results.md) and the studies that write them: each table generated from
its files in results/, each study planned as it was measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from train.configs import CLIPAdaptConfig

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINTS = ROOT / "checkpoints"
RECORD = ROOT / "docs" / "results.md"  # the full record of results; the README has the summary
SUBSET = ROOT / "results" / "subset50.json"
TOLERANCE = 0.005  # absolute, on metrics in [0, 1]: the CPU kernels are deterministic, this covers BLAS differences
MB = 1024 * 1024


@pytest.mark.parametrize(
    "results",
    [
        "main.json",
        "subset50.json",
        "ensemble_odise/main.json",
        "split_weights/main.json",
        "split_weights_odise/main.json",
    ],
)
def test_record_tables_are_the_tables_generated_from_results(results: str) -> None:
    """Table 1's seed 0, the subset table and Eq. 3's other forms in the record are what train.bundle writes
    from results/."""
    from train.table1 import markdown_table

    table = markdown_table(json.loads((ROOT / "results" / results).read_text()))
    assert table in RECORD.read_text(), f"docs/results.md is out of date with results/{results}"


def test_record_split_weight_grid_is_generated_from_results() -> None:
    from experiments.diagnose import ceilings_markdown
    from experiments.report import choose_split_weights, split_weight_table
    from train.table1 import MAIN_MODELS

    folder = ROOT / "results" / "split_weights"
    dev, test = (json.loads((folder / name).read_text()) for name in ("dev.json", "main.json"))
    one_weight = json.loads((ROOT / "results" / "main.json").read_text())
    table = split_weight_table(dev, test, {name: one_weight[name] for name in MAIN_MODELS})
    assert table == (folder / "grid.md").read_text() and table in RECORD.read_text()
    record = RECORD.read_text()
    for benchmark in ("world_voc", "world_full"):  # what is left with the chosen pair
        ceiling = json.loads((folder / f"ceilings_{benchmark}.json").read_text())
        assert ceilings_markdown(ceiling["ceilings"], ceiling["benchmark"], tuple(ceiling["clip_weights"])) in record
    seen, unseen = choose_split_weights(dev)
    assert tuple(ceiling["clip_weights"]) == (seen, unseen)
    for name in MAIN_MODELS:  # the test files' own evaluation is the pair chosen on the dev files
        for metrics in test[name].values():
            row = next(
                r
                for r in metrics["split_weight_sweep"]
                if (r["clip_weight"], r["clip_weight_unseen"]) == (seen, unseen)
            )
            assert row["miou"] == metrics["miou"]


def test_record_headline_table_is_generated_from_results() -> None:
    from experiments.report import headline_table

    table = headline_table(ROOT / "results")
    assert table in RECORD.read_text()
    assert table.count("\n") == 2 + 3 * 4 + 2  # header, three rows per benchmark, latency with one view and two


def test_record_flip_test_table_is_generated_from_results() -> None:
    from experiments.report import FLIP_TEST, FLIP_TEST_CANDIDATE, flip_test_table
    from train.table1 import BENCHMARKS, MAIN_MODELS

    assert flip_test_table(ROOT / "results") in RECORD.read_text()
    for name in MAIN_MODELS:  # every file is the bundled model with the flip test on all of its benchmark
        for benchmark in BENCHMARKS:
            measured = json.loads((ROOT / "results" / FLIP_TEST / f"{name}_{benchmark}.json").read_text())
            assert measured["options"]["flip_test"] is True and measured["options"]["limit"] is None
            assert measured["num_images"] == 500 and measured["checkpoint"] == f"checkpoints/{name}"
            with_candidate = ROOT / "results" / FLIP_TEST / FLIP_TEST_CANDIDATE / f"{name}_{benchmark}.json"
            measured = json.loads(with_candidate.read_text())
            assert measured["options"]["flip_test"] is True and measured["num_images"] == 500
            alone = ROOT / "results" / "candidate_clips" / f"{FLIP_TEST_CANDIDATE}_test" / f"{name}_{benchmark}.json"
            assert measured["options"]["adapted_clip"] == json.loads(alone.read_text())["options"]["adapted_clip"]


def test_split_weights_are_chosen_on_the_dev_mean_and_tabled_beside_one_weight() -> None:
    from experiments.report import choose_split_weights, split_weight_table

    def run(scores: dict[tuple[float, float], float], own: float) -> dict:
        rows = [{"clip_weight": w, "clip_weight_unseen": u, "miou": m} for (w, u), m in scores.items()]
        return {"miou": own, "split_weight_sweep": rows}

    # (0.5, 0.9) is best for one model only; (0.4, 0.8) has the best mean over both and both benchmarks.
    dev = {
        "a": {
            "voc": run({(0.4, 0.8): 0.50, (0.5, 0.9): 0.60}, 0.40),
            "full": run({(0.4, 0.8): 0.50, (0.5, 0.9): 0.40}, 0.4),
        },
        "b": {
            "voc": run({(0.4, 0.8): 0.50, (0.5, 0.9): 0.30}, 0.40),
            "full": run({(0.4, 0.8): 0.50, (0.5, 0.9): 0.50}, 0.4),
        },
    }
    assert choose_split_weights(dev) == (0.4, 0.8)
    for model in dev.values():  # a weight below FC-CLIP's 0.4 for training names is scored, never chosen
        for result in model.values():
            result["split_weight_sweep"].append({"clip_weight": 0.3, "clip_weight_unseen": 0.9, "miou": 0.9})
    assert choose_split_weights(dev) == (0.4, 0.8)
    test = {"a": {"voc": run({(0.4, 0.8): 0.70, (0.5, 0.9): 0.10}, 0.7)}}
    one_weight = {"a": {"voc": {"miou": 0.25}}, "b": {"voc": {"miou": 0.35}}}
    table = split_weight_table(dev, test, one_weight).splitlines()
    assert table[2] == "| 0.65 for every prompt (the paper's Eq. 3) | 40.0 | 30.0 |"
    assert table[3:] == [
        "| 0.4 / 0.8 (chosen) | 50.0 | 70.0 |",
        "| 0.5 / 0.9 | 45.0 | 10.0 |",
        "| 0.3 / 0.9 (not chosen from) | 90.0 | n/a |",
    ]
    other_form = split_weight_table(dev, test, one_weight, "odise").splitlines()
    assert other_form[2].startswith("| 0.65 for every prompt (ODISE's form) | 40.0 |")


def test_split_weights_run_in_the_form_asked_for(tmp_path: Path, monkeypatch) -> None:
    """--split-weights --ensemble-form odise: dev and test in ODISE's form, beside that form's single weight."""
    from experiments import studies as bundle
    from experiments.report import FORM_NAMES
    from pmp.config import ENSEMBLES

    assert set(FORM_NAMES) == set(ENSEMBLES)
    calls = []

    def fake_evaluate(dirs, out, limit, sweep=(), benchmarks=bundle.BENCHMARKS, config_changes=None, split_sweep=()):
        calls.append((out.name, dict(config_changes or {})))
        rows = [{"clip_weight": w, "clip_weight_unseen": u, "miou": w + u} for w, u in split_sweep]
        return {name: {b: {"miou": 0.5, "split_weight_sweep": rows} for b in benchmarks} for name in dirs}

    monkeypatch.setattr(bundle, "evaluate_models", fake_evaluate)
    monkeypatch.setattr(bundle, "markdown_table", lambda results: "table\n")
    (tmp_path / "ensemble_odise").mkdir()
    one = {name: {"world-voc": {"miou": 0.3}} for name in bundle.MAIN_MODELS}
    (tmp_path / "ensemble_odise" / "main.json").write_text(json.dumps(one))
    (tmp_path / "split_weights_odise").mkdir()
    assert bundle.main(["--split-weights", "--ensemble-form", "odise", "--results", str(tmp_path)]) == 0
    best = max((pair for pair in bundle.SPLIT_WEIGHT_GRID if pair[0] >= 0.4), key=sum)
    assert calls == [
        ("dev.json", {"ensemble": "odise"}),
        ("main.json", {"ensemble": "odise", "clip_weight": best[0], "clip_weight_unseen": best[1]}),
    ]
    grid = (tmp_path / "split_weights_odise" / "grid.md").read_text()
    assert "| 0.65 for every prompt (ODISE's form) | 50.0 | 30.0 |" in grid


def test_record_adaptation_tables_are_generated_from_results() -> None:
    from experiments.report import adaptation_table, stage2_history
    from train.bundle import ADAPTATION_PHASES

    # The bundled CLIP is what train.bundle runs: the default schedule, then its last phase (recorded here).
    first, last = ADAPTATION_PHASES[0], ADAPTATION_PHASES[-1]
    assert (first["steps"], first["lr"]) == (CLIPAdaptConfig().steps, CLIPAdaptConfig().lr)
    config = json.loads((ROOT / "results" / "tiny_clip_adapted.json").read_text())["config"]
    assert {key: config[key] for key in last} == last and config.get("proposal_segmenter") is None
    record = RECORD.read_text()
    assert adaptation_table(ROOT / "results") in record
    assert stage2_history(ROOT / "results") in record


def test_record_deeper_tower_crop_error_and_stage1_pilot_tables_are_generated_from_results() -> None:
    from experiments.adaptation import crop_error_table
    from experiments.report import head_width_table, stage1_pilot_files, stage1_pilot_table, third_cycle_table
    from train.table1 import markdown_table

    record = RECORD.read_text()
    assert third_cycle_table(ROOT / "results") in record
    deeper = json.loads((ROOT / "results" / "deeper_tower_on_proposals" / "main.json").read_text())
    assert markdown_table(deeper) in record
    assert crop_error_table(json.loads((ROOT / "results" / "crop_errors_bundled.json").read_text())) in record
    assert stage1_pilot_table(stage1_pilot_files(ROOT / "results")) in record
    pixel_decoders = stage1_pilot_table(stage1_pilot_files(ROOT / "results", "pixel_decoder_pilots"))
    assert pixel_decoders == (ROOT / "results" / "pixel_decoder_pilots.md").read_text() and pixel_decoders in record
    assert head_width_table(ROOT / "results") in record


def test_record_candidate_clip_tables_are_generated_from_results() -> None:
    from experiments.report import candidate_accuracy_table, candidate_clip_table, candidate_test_table

    record = RECORD.read_text()
    for table in (candidate_accuracy_table, candidate_clip_table, candidate_test_table):
        assert table(ROOT / "results") in record, table.__name__


def test_stage2_and_adaptation_tables_read_every_file(tmp_path: Path) -> None:
    from experiments.report import ADAPTATION_RUNS, STAGE2_HISTORY, adaptation_table, stage2_history
    from train.table1 import SEED_FILES

    for index, folder in enumerate(STAGE2_HISTORY):
        (tmp_path / folder).mkdir(exist_ok=True)
        for seed, name in enumerate(SEED_FILES):
            row = {"miou": 0.1 * index + 0.01 * seed, "miou_seen": 0.5, "miou_unseen": 0.2}
            runs = {b: row for b in ("world-voc", "world-full", "world-mixed")}
            runs["world-parts"] = {**row, "miou_seen": None}
            write = {"baseline": runs, "pmp": runs}
            (tmp_path / folder / name).write_text(json.dumps(write))
    table = stage2_history(tmp_path)
    assert table.count("\n") == 2 + 2 * len(STAGE2_HISTORY)
    assert "| 21.0 ± 1.0 (50.0 / 20.0) |" in table and "(n/a / 20.0)" in table  # the last folder, 3 seeds
    (tmp_path / "adaptation_runs").mkdir()
    for index, name in enumerate(ADAPTATION_RUNS):
        measured = {"proposal_class_top1_seen": 0.1 * index, "proposal_class_top1_seen_before": 0.05}
        (tmp_path / "adaptation_runs" / name).write_text(json.dumps(measured))
    table = adaptation_table(tmp_path)
    assert (
        "| masked crops of the baseline's matched proposals: seen things and stuff | 5.0 | 0.0 | 10.0 | 20.0 |" in table
    )
    assert table.count("\n") == 3  # header, rule, the one measured row
    from experiments.report import THIRD_CYCLE_RUNS, third_cycle_table

    for index, name in enumerate(THIRD_CYCLE_RUNS):
        (tmp_path / "adaptation_runs" / name).write_text(json.dumps({"proposal_top1": 0.5 + 0.1 * index}))
    table = third_cycle_table(tmp_path)
    assert "| masked crops of the baseline's matched proposals: all names | 50.0 | 60.0 | 70.0 | 80.0 |" in table


def test_the_sweep_and_the_ablations_keep_the_recipe_they_were_measured_with() -> None:
    """Their results are of the 64-channel head the bundled pair had then: re-running them reproduces that."""
    from experiments.studies import ABLATION_QUERIES, ablation_runs, query_sweep_runs
    from experiments.sweeps import SHORT_STEPS
    from train.recipes import get_recipe

    sweep, ablations = query_sweep_runs(1), ablation_runs()
    assert {run.recipe for run in sweep} == {"world-baseline-width64", "world-pmp-width64"}
    assert len({run.recipe for run in ablations}) == len(ablations) == 6
    for run in sweep + ablations:
        model = get_recipe(run.recipe).model
        assert model.decoder.hidden_dim == 64 and model.decoder.text_mode == run.text_mode and run.steps == SHORT_STEPS
    assert {run.name for run in ablations} >= {r.name for r in query_sweep_runs(0) if r.num_queries == ABLATION_QUERIES}


def test_query_sweep_table_and_figure_from_per_seed_files(tmp_path: Path) -> None:
    from experiments.sweeps import QUERY_BUDGETS, SWEEP_BENCHMARKS, plot_query_sweep, query_sweep_table

    files = []
    for seed, offset in enumerate((0.0, 0.02)):
        run = {
            str(q): {
                name: {
                    b: {"miou": 0.2 + offset + (0.01 if name == "pmp" else 0), "proposal_recall": 0.5}
                    for b in SWEEP_BENCHMARKS
                }
                for name in ("baseline", "pmp")
            }
            for q in QUERY_BUDGETS
        }
        files.append(tmp_path / f"query_sweep_seed{seed}.json")
        files[-1].write_text(json.dumps({**run, "train_seconds": {}}))
    table = query_sweep_table(files)
    assert "2 seed(s)" in table
    assert "| world-mixed | mIoU | 21.0 ± 1.4 / 22.0 ± 1.4 |" in table
    plot_query_sweep(files, tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").stat().st_size > 10_000


def test_record_sweep_ablation_and_diagnosis_tables_are_generated_from_results() -> None:
    from experiments.diagnose import ceilings_markdown, markdown
    from experiments.sweeps import query_sweep_table
    from train.table1 import markdown_table

    record = RECORD.read_text()
    sweeps = sorted((ROOT / "results").glob("query_sweep_seed*.json"))
    assert sweeps and query_sweep_table(sweeps) in record
    assert markdown_table(json.loads((ROOT / "results" / "ablations.json").read_text())) in record
    diagnosis = json.loads((ROOT / "results" / "diagnosis.json").read_text())
    assert markdown(diagnosis) in record and ceilings_markdown(diagnosis["ceilings"]) in record
    previous = json.loads((ROOT / "results" / "width64" / "diagnosis.json").read_text())  # the previous pair's
    assert ceilings_markdown(previous["ceilings"]) in record
    voc = json.loads((ROOT / "results" / "ceilings_world_voc.json").read_text())  # a list item's table
    indented = "".join(f"  {line}\n" for line in ceilings_markdown(voc["ceilings"], voc["benchmark"]).splitlines())
    assert voc["benchmark"] == "world-voc" and indented in record


def test_the_stage1_pilots_are_measured_from_their_training_logs(tmp_path: Path) -> None:
    from experiments.report import stage1_pilot_table
    from experiments.studies import PILOT_STEPS, stage1_pilot_results, stage1_pilot_runs

    planned = stage1_pilot_runs()
    assert [run.steps for run in planned] == [PILOT_STEPS] * len(planned)
    assert planned[0].recipe == "world-baseline" and planned[1].recipe == "world-baseline-width64"  # the control
    reseeded = stage1_pilot_runs(seed=1)
    assert all(run.name.endswith("-seed1") and "--seed" in run.command(tmp_path) for run in reseeded)

    def trained(run, recall: float) -> None:
        (tmp_path / run.name).mkdir()
        rows = [
            {"step": 10, "seconds": 60.0, "loss": 1.0},
            {"step": PILOT_STEPS, "seconds": 120.0, "loss": 0.5},
            {"step": PILOT_STEPS, "eval/world-full/miou": 0.4, "eval/world-full/miou_seen": 0.5,
             "eval/world-full/proposal_recall": recall},
        ]  # fmt: skip
        (tmp_path / run.name / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))

    for run in planned:
        trained(run, 0.6)
    trained(reseeded[1], 0.62)  # the second seed of the control only
    first = stage1_pilot_results(planned, tmp_path)
    assert list(first) == ["world-baseline", "world-baseline-width64", "world-baseline-regnetx004"]
    sizes = {recipe: result["stage1_parameters"] for recipe, result in first.items()}
    assert sizes["world-baseline"] > sizes["world-baseline-width64"] < sizes["world-baseline-regnetx004"]
    assert list(stage1_pilot_results(reseeded, tmp_path)) == ["world-baseline-width64"]  # untrained: left out
    (tmp_path / "seed0.json").write_text(json.dumps(first))
    (tmp_path / "seed1.json").write_text(json.dumps(stage1_pilot_results(reseeded, tmp_path)))
    table = stage1_pilot_table([tmp_path / "seed0.json", tmp_path / "seed1.json"])
    size = sizes["world-baseline-width64"] / 1e6
    control = f"| world-baseline-width64 | {size:.2f} M | {PILOT_STEPS} | 2 | 2.0 | 61.0 ± 1.4 |"
    assert control in table and f"| {PILOT_STEPS} | 1 | 2.0 | 60.0 | 40.0 | 50.0 |" in table


@pytest.mark.parametrize("kind", ["stage1_pilots", "pixel_decoder_pilots"])
def test_the_pilot_commands_train_only_missing_pilots_and_keep_recorded_rows(
    tmp_path: Path, monkeypatch, kind: str
) -> None:
    import experiments.studies as bundle

    runs, results = tmp_path / "runs", tmp_path / "results"
    planned = getattr(bundle, kind[:-1] + "_runs")()
    for run in planned[:-1]:  # every pilot but the last has its model folder here
        (runs / run.name / "model").mkdir(parents=True)
    recorded = {"world-baseline-regnetx004": {"steps": 3000, "curve": [{"step": 3000, "miou": 0.1}]}}
    results.mkdir()
    (results / f"{kind}.json").write_text(json.dumps(recorded))
    trained: list[list[str]] = []
    monkeypatch.setattr(bundle, "train_segmenters", lambda todo, *rest: trained.append([r.name for r in todo]))
    new_row = {"steps": 3000, "seed": 0, "stage1_parameters": 1, "train_minutes": 2.0, "curve": [{"step": 3000}]}
    monkeypatch.setattr(bundle, "stage1_pilot_results", lambda todo, folder: {planned[-1].recipe: new_row})
    monkeypatch.setattr(bundle, "stage1_pilot_table", lambda files: "table\n")
    flag = "--" + kind.replace("_", "-")
    assert bundle.main([flag, "--runs", str(runs), "--results", str(results)]) in (0, None)
    assert trained == [[planned[-1].name]]  # only the pilot without a model
    written = json.loads((results / f"{kind}.json").read_text())
    assert written == {**recorded, planned[-1].recipe: new_row}  # the recorded row survives the new one
    assert (results / f"{kind}.md").read_text() == "table\n"


def test_the_pixel_decoder_pilot_is_the_bundled_baseline_with_the_deformable_encoder() -> None:
    import dataclasses

    from experiments.studies import PILOT_STEPS, pixel_decoder_pilot_runs
    from train.recipes import get_recipe

    control, pilot = pixel_decoder_pilot_runs()
    assert control.recipe == "world-baseline" and control.name == "decoder-pilot-world-baseline"
    assert pilot.steps == control.steps == PILOT_STEPS
    bundled, deformable = get_recipe(control.recipe), get_recipe(pilot.recipe)
    assert bundled.model.pixel_decoder.kind == "fpn" and deformable.model.pixel_decoder.kind == "msdeform"
    width, decoder = bundled.model.decoder.hidden_dim, deformable.model.pixel_decoder
    assert decoder.conv_dim == decoder.mask_dim == width and decoder.dim_feedforward == 4 * width
    same = dataclasses.replace(deformable.model, pixel_decoder=bundled.model.pixel_decoder)
    assert same == bundled.model and dataclasses.replace(deformable, model=same) == bundled


def test_the_head_width_table_compares_both_pairs_and_skips_other_entries(tmp_path: Path) -> None:
    import experiments.report as report
    from train.table1 import SEED_FILES, markdown_table, plot_seed_results, seed_tables, table1_files

    def result(miou: float) -> dict:
        rows = {"miou": miou, "proposal_recall": 0.5, "miou_seen": miou, "miou_unseen": 0.2}
        return {b: {**rows, "miou_seen": None} if b == "world-parts" else rows for b in report.BENCHMARKS}

    for folder, base in ((tmp_path / report.PREVIOUS_PAIR, 0.40), (tmp_path, 0.50)):
        folder.mkdir(exist_ok=True)
        for seed, name in enumerate(SEED_FILES):
            miou = base + 0.01 * seed
            rows = {"baseline": result(miou), "pmp": result(miou + 0.02), "train_minutes": {"baseline": 90.0}}
            (folder / name).write_text(json.dumps(rows))
    table = report.head_width_table(tmp_path)
    assert table.startswith("| stage-1 head | model |") and table.count("\n") == 2 + 2 * 2  # no train_minutes row
    previous, bundled = report.HEAD_WIDTHS.values()
    assert f"| {previous} (3 seeds) | baseline | 41.0 ± 1.0 (41.0 / 20.0) |" in table
    assert f"| {bundled} (3 seeds) | pmp | 53.0 ± 1.0 (53.0 / 20.0) |" in table and "(n/a / 20.0)" in table
    assert "train_minutes" not in seed_tables([tmp_path / name for name in SEED_FILES])
    plot_seed_results(table1_files(tmp_path), tmp_path / "results.png")  # minutes are no model
    assert markdown_table(json.loads((tmp_path / "main.json").read_text())).count("\n") == 4
    (tmp_path / "main_seed2.json").unlink()  # a seed still training is left out, and the table says so
    assert report.table1_files(tmp_path) == [tmp_path / "main.json", tmp_path / "main_seed1.json"]
    assert f"| {bundled} (2 seeds) | pmp | 52.5 ± 0.7 (52.5 / 20.0) |" in report.head_width_table(tmp_path)
