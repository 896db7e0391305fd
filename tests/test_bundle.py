"""The bundled offline models: present, small enough, reproducing the README's numbers, running every example."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pmp.segmenter import Segmenter
from train.configs import CLIPAdaptConfig

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINTS = ROOT / "checkpoints"
SUBSET = ROOT / "results" / "subset50.json"
TOLERANCE = 0.005  # absolute, on metrics in [0, 1]: the CPU kernels are deterministic, this covers BLAS differences
MB = 1024 * 1024


def test_bundle_files_are_within_the_size_limits() -> None:
    files = [p for p in CHECKPOINTS.rglob("*") if p.is_file()]
    assert {"baseline", "pmp", "tiny-clip"} <= {p.parent.name for p in files}
    for path in files:
        assert path.stat().st_size < 10 * MB, f"{path} is {path.stat().st_size / MB:.1f} MB"
    assert sum(p.stat().st_size for p in files) < 60 * MB


@pytest.mark.parametrize("name", ["baseline", "pmp"])
def test_bundled_models_load_by_name_and_differ_only_in_text_mode(name: str) -> None:
    segmenter = Segmenter.from_pretrained(name)
    other = Segmenter.from_pretrained("pmp" if name == "baseline" else "baseline")
    assert segmenter.config.decoder.text_mode == ("none" if name == "baseline" else "pmp")  # Eq. 5 as written
    mine, theirs = segmenter.config.to_dict(), other.config.to_dict()
    for config in (mine, theirs):
        config["decoder"].pop("text_mode")
        config.pop("name")
    assert mine == theirs


def test_the_bundled_segmenters_share_the_bundled_clip_instead_of_a_copy() -> None:
    from pmp.checkpoint import file_sha256, weight_files

    clip_weights = CHECKPOINTS / "tiny-clip" / "open_clip_model.safetensors"
    for name in ("baseline", "pmp"):
        config = json.loads((CHECKPOINTS / name / "config.json").read_text())["clip"]
        assert config["checkpoint"] == "tiny-clip"  # a bundled name, not a path of the machine that saved it
        assert config["checkpoint_sha256"] == file_sha256(clip_weights)
        index = json.loads((CHECKPOINTS / name / "model.safetensors.index.json").read_text())["weight_map"]
        assert index and not any(key.startswith("clip.") for key in index)
        assert len(weight_files(CHECKPOINTS / name)) == len(set(index.values()))


def test_default_checkpoint_is_the_bundled_pmp() -> None:
    assert Segmenter.from_pretrained().config.decoder.text_mode == "pmp"


@pytest.mark.slow
def test_subset_evaluation_reproduces_the_readme_numbers() -> None:
    from train.evaluate import evaluate, load_benchmark

    expected = json.loads(SUBSET.read_text())
    for name, per_benchmark in expected.items():
        segmenter = Segmenter.from_pretrained(CHECKPOINTS / name)
        for benchmark, metrics in per_benchmark.items():
            measured = evaluate(segmenter, load_benchmark(benchmark), limit=50, show_progress=False)
            for key in ("miou", "miou_unseen", "proposal_recall"):
                if metrics[key] is None or (isinstance(metrics[key], float) and math.isnan(metrics[key])):
                    continue
                assert abs(measured[key] - metrics[key]) <= TOLERANCE, (
                    name,
                    benchmark,
                    key,
                    measured[key],
                    metrics[key],
                )


@pytest.mark.parametrize("results", ["main.json", "subset50.json"])
def test_readme_tables_are_the_tables_generated_from_results(results: str) -> None:
    """Table 1 and the subset table in the README are exactly what train.bundle writes from results/."""
    from train.bundle import markdown_table

    table = markdown_table(json.loads((ROOT / "results" / results).read_text()))
    assert table in (ROOT / "README.md").read_text(), f"README is out of date with results/{results}"


def test_every_example_runs_through_both_models() -> None:
    from train.world.demo import demo_scene

    examples = json.loads((ROOT / "examples" / "examples.json").read_text())
    scenes = [e for e in examples if "seed" in e]
    photos = [e for e in examples if "image" in e]
    assert len(scenes) >= 5 and len(photos) >= 2
    assert all(e.get("licence") for e in examples) and all(e.get("caption") for e in scenes)
    models = [Segmenter.from_pretrained("baseline"), Segmenter.from_pretrained("pmp")]
    for example in examples:
        image = demo_scene(example["seed"]).image if "seed" in example else ROOT / "examples" / example["image"]
        for prompts in (example["prompts"], example.get("second_prompts") or example["prompts"]):
            for model in models:
                out = model(image, prompts)
                assert out.labels and out.semantic.shape == out.proposals.shape[1:]


REFERENCE_PROMPTS = ["sky", "house", "car", "road", "tree", "wheel", "vehicle"]


def record_reference_outputs() -> dict:
    """What tests/data/bundled_outputs.json holds, recorded when the bundled checkpoints were made, with
    one torch thread as the tests run (tests/conftest.py): the crop path's convolutions round differently
    with two."""
    from train.world.demo import demo_scene

    reference = {}
    for name in ("baseline", "pmp"):
        out = Segmenter.from_pretrained(name).segment(demo_scene(2).image, REFERENCE_PROMPTS)
        reference[name] = {
            "p_out": out.p_out.tolist(),
            "mask_logits_sum": float(out.mask_logits.double().sum()),
            "semantic": out.semantic.flatten().tolist()[::7],
        }
    return reference


def test_bundled_outputs_are_bit_identical_to_the_reference() -> None:
    """The bundled checkpoints give exactly the outputs recorded in tests/data when they were made
    (``record_reference_outputs``): a refactor must not change what the models compute."""
    from train.world.demo import demo_scene

    reference = json.loads((ROOT / "tests" / "data" / "bundled_outputs.json").read_text())
    for name, expected in reference.items():
        out = Segmenter.from_pretrained(name).segment(demo_scene(2).image, REFERENCE_PROMPTS)
        assert out.p_out.tolist() == expected["p_out"], name
        assert float(out.mask_logits.double().sum()) == expected["mask_logits_sum"], name
        assert out.semantic.flatten().tolist()[::7] == expected["semantic"], name


def test_seed_table_gives_mean_and_sample_std_per_model_and_calls_ties(tmp_path: Path) -> None:
    from train.bundle import BENCHMARKS, seed_table, seed_tables

    files = []
    for seed, value in enumerate((0.30, 0.34)):
        scores = {"miou": value, "proposal_recall": 0.5, "miou_seen": None, "miou_unseen": value}
        better = {**scores, "miou": value + 0.01, "proposal_recall": 0.6}
        run = {"base": {b: scores for b in BENCHMARKS}, "new": {b: better for b in BENCHMARKS}}
        files.append(tmp_path / f"seed{seed}.json")
        files[-1].write_text(json.dumps(run))
    table = seed_table(files)
    assert "| base | 32.0 ± 2.8 | 50.0 ± 0.0 |" in table and "2 seeds" in table
    # +1.0 mIoU is inside the 2.8 spread; +10 recall is outside a spread of 0
    assert "| new − base | +1.0 (tie) | +10.0 (new ahead) |" in table
    assert "| base | n/a |" in seed_table(files, ("miou_seen",))
    assert seed_table(files[:1]).count("\n") == 4  # one seed: no spread, so no verdict row
    assert seed_tables(files).count("| new − base |") == 2
    from train.bundle import plot_seed_results

    plot_seed_results(files, tmp_path / "results.png")
    assert (tmp_path / "results.png").stat().st_size > 10_000


def test_readme_seed_table_is_generated_from_results() -> None:
    from train.bundle import SEED_FILES, seed_tables

    readme = (ROOT / "README.md").read_text()
    assert seed_tables([ROOT / "results" / f"hierarchy_seed{seed}.json" for seed in range(3)]) in readme
    main = [ROOT / "results" / name for name in SEED_FILES]
    assert seed_tables(main) in readme  # Table 1: the bundled recipe, seeds 0 (the bundle), 1 and 2


def test_readme_adaptation_tables_are_generated_from_results() -> None:
    from train.bundle import ADAPTATION_PHASES, adaptation_table, stage2_history

    # The bundled CLIP is what train.bundle runs: the default schedule, then its last phase (recorded here).
    first, last = ADAPTATION_PHASES[0], ADAPTATION_PHASES[-1]
    assert (first["steps"], first["lr"]) == (CLIPAdaptConfig().steps, CLIPAdaptConfig().lr)
    config = json.loads((ROOT / "results" / "tiny_clip_adapted.json").read_text())["config"]
    assert {key: config[key] for key in last} == last and config.get("proposal_segmenter") is None
    readme = (ROOT / "README.md").read_text()
    assert adaptation_table(ROOT / "results") in readme
    assert stage2_history(ROOT / "results") in readme


def test_readme_deeper_tower_crop_error_and_stage1_pilot_tables_are_generated_from_results() -> None:
    from train.adapt_clip import crop_error_table
    from train.bundle import (
        markdown_table,
        stage1_pilot_files,
        stage1_pilot_table,
        third_cycle_table,
        wider_head_table,
    )

    readme = (ROOT / "README.md").read_text()
    assert third_cycle_table(ROOT / "results") in readme
    deeper = json.loads((ROOT / "results" / "deeper_tower_on_proposals" / "main.json").read_text())
    assert markdown_table(deeper) in readme
    assert crop_error_table(json.loads((ROOT / "results" / "crop_errors_bundled.json").read_text())) in readme
    assert stage1_pilot_table(stage1_pilot_files(ROOT / "results")) in readme
    assert wider_head_table(ROOT / "results") in readme


def test_stage2_and_adaptation_tables_read_every_file(tmp_path: Path) -> None:
    from train.bundle import ADAPTATION_RUNS, SEED_FILES, STAGE2_HISTORY, adaptation_table, stage2_history

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
    from train.bundle import THIRD_CYCLE_RUNS, third_cycle_table

    for index, name in enumerate(THIRD_CYCLE_RUNS):
        (tmp_path / "adaptation_runs" / name).write_text(json.dumps({"proposal_top1": 0.5 + 0.1 * index}))
    table = third_cycle_table(tmp_path)
    assert "| masked crops of the baseline's matched proposals: all names | 50.0 | 60.0 | 70.0 | 80.0 |" in table


def test_a_planned_run_is_the_recipe_with_only_its_fields_changed() -> None:
    from train.bundle import Run

    command = Run("q8-pmp-seed1", "pmp", steps=1500, num_queries=8, seed=1).command(ROOT / "runs" / "bundle")
    assert command[command.index("--recipe") + 1] == "world-pmp"
    assert command[command.index("--out") + 1] == str(Path("runs") / "bundle" / "q8-pmp-seed1")
    assert [command[command.index(flag) + 1] for flag in ("--steps", "--num-queries", "--seed")] == ["1500", "8", "1"]
    plain = Run("baseline", "none").command(ROOT / "runs")
    assert "world-baseline" in plain and "--steps" not in plain and "--seed" not in plain


def test_query_sweep_table_and_figure_from_per_seed_files(tmp_path: Path) -> None:
    from train.bundle import QUERY_BUDGETS, SWEEP_BENCHMARKS, plot_query_sweep, query_sweep_table

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


def test_readme_sweep_ablation_and_diagnosis_tables_are_generated_from_results() -> None:
    from train.bundle import markdown_table, query_sweep_table
    from train.diagnose import ceilings_markdown, markdown

    readme = (ROOT / "README.md").read_text()
    sweeps = sorted((ROOT / "results").glob("query_sweep_seed*.json"))
    assert sweeps and query_sweep_table(sweeps) in readme
    assert markdown_table(json.loads((ROOT / "results" / "ablations.json").read_text())) in readme
    diagnosis = json.loads((ROOT / "results" / "diagnosis.json").read_text())
    assert markdown(diagnosis) in readme and ceilings_markdown(diagnosis["ceilings"]) in readme


def test_the_adaptation_phases_run_in_a_chain_with_their_settings_as_flags(monkeypatch, tmp_path: Path) -> None:
    from train import bundle

    phases = ({"steps": 3, "lr": 5e-4, "seed": 0}, {"steps": 2, "lr": 1e-4, "seed": 2, "vision_layers": (2, 2, 2, 2)})
    monkeypatch.setattr(bundle, "ADAPTATION_PHASES", phases)
    commands: list[list[str]] = []
    monkeypatch.setattr(bundle, "run_parallel", lambda batch, logs, threads_each: commands.extend(batch) or [1.5])
    assert bundle.adapt_clip(tmp_path, tmp_path / "clip" / "model") == 3.0
    first, last = commands
    assert first[first.index("--clip") + 1] == str(tmp_path / "clip" / "model")
    assert last[last.index("--clip") + 1] == str(tmp_path / "clip-adapted-1" / "model")  # the chain
    assert last[last.index("--vision-layers") + 1] == "2,2,2,2" and last[last.index("--lr") + 1] == "0.0001"
    assert last[last.index("--out") + 1] == str(tmp_path / "clip-adapted") and "--results" in last


def test_the_stage1_pilots_are_measured_from_their_training_logs(tmp_path: Path) -> None:
    from train.bundle import PILOT_STEPS, stage1_pilot_results, stage1_pilot_runs, stage1_pilot_table

    planned = stage1_pilot_runs()
    assert [run.steps for run in planned] == [PILOT_STEPS] * len(planned)
    assert planned[1].recipe is None and "world-baseline" in planned[1].command(tmp_path)  # the control
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
    assert list(first) == ["world-baseline-width128", "world-baseline", "world-baseline-regnetx004"]
    sizes = {recipe: result["stage1_parameters"] for recipe, result in first.items()}
    assert sizes["world-baseline-width128"] > sizes["world-baseline"] < sizes["world-baseline-regnetx004"]
    assert list(stage1_pilot_results(reseeded, tmp_path)) == ["world-baseline"]  # untrained runs are left out
    (tmp_path / "seed0.json").write_text(json.dumps(first))
    (tmp_path / "seed1.json").write_text(json.dumps(stage1_pilot_results(reseeded, tmp_path)))
    table = stage1_pilot_table([tmp_path / "seed0.json", tmp_path / "seed1.json"])
    control = f"| world-baseline | {sizes['world-baseline'] / 1e6:.2f} M | {PILOT_STEPS} | 2 | 2.0 | 61.0 ± 1.4 |"
    assert control in table and f"| {PILOT_STEPS} | 1 | 2.0 | 60.0 | 40.0 | 50.0 |" in table


def test_the_wider_head_pair_differs_only_in_text_mode_and_reports_finished_runs(tmp_path: Path, monkeypatch) -> None:
    import dataclasses

    import train.bundle as bundle
    from train.recipes import get_recipe

    planned = bundle.wider_head_runs()
    baseline, pmp = (get_recipe(run.recipe).model for run in planned)
    assert baseline.decoder.hidden_dim == pmp.decoder.hidden_dim == 128 and pmp.decoder.text_mode == "pmp"
    assert dataclasses.replace(pmp, decoder=baseline.decoder, name=baseline.name) == baseline
    (tmp_path / "width128-baseline" / "model").mkdir(parents=True)
    for name in ("config.json", "checksums.json"):
        (tmp_path / "width128-baseline" / "model" / name).write_text("{}")
    rows = [{"step": 10, "seconds": 30.0}, {"step": 20, "seconds": 90.0}]
    (tmp_path / "width128-baseline" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    given, evaluated = [], []
    monkeypatch.setattr(bundle, "give_adapted_clip", lambda folder, clip: given.append((folder, clip)))

    def evaluate(dirs, out_json, limit):
        evaluated.append((dirs, limit))
        return {name: {"world-full": {"miou": 0.5}} for name in dirs}

    monkeypatch.setattr(bundle, "evaluate_models", evaluate)
    results = bundle.wider_head_results(planned, tmp_path, tmp_path / "clip", tmp_path / "wider_head.json")
    folder = tmp_path / "width128-baseline" / "model"
    assert given == [(folder, tmp_path / "clip")] and evaluated == [({"baseline": folder}, None)]
    assert list(results) == ["baseline"]  # PMP is still training: left out
    written = json.loads((tmp_path / "wider_head.json").read_text())
    assert written["train_minutes"] == {"baseline": 1.5} and written["baseline"] == results["baseline"]
    # Run again once PMP has finished: only PMP is evaluated, the baseline keeps its rows.
    for name in ("config.json", "checksums.json"):
        (tmp_path / "width128-pmp" / "model").mkdir(parents=True, exist_ok=True)
        (tmp_path / "width128-pmp" / "model" / name).write_text('{"pmp": 1}')
    (tmp_path / "width128-pmp" / "metrics.jsonl").write_text(json.dumps({"step": 1, "seconds": 6.0}) + "\n")
    evaluated.clear()
    again = bundle.wider_head_results(planned, tmp_path, tmp_path / "clip", tmp_path / "wider_head.json")
    assert [list(dirs) for dirs, _ in evaluated] == [["pmp"]] and list(again) == ["baseline", "pmp"]
    (folder / "config.json").write_text('{"changed": true}')  # another baseline: measured again
    evaluated.clear()
    bundle.wider_head_results(planned, tmp_path, tmp_path / "clip", tmp_path / "wider_head.json")
    assert [list(dirs) for dirs, _ in evaluated] == [["baseline"]]


def test_other_seeds_of_the_wider_pair_are_named_and_tabled_as_the_bundled_pairs(tmp_path: Path) -> None:
    import train.bundle as bundle

    assert [(r.name, r.seed) for r in bundle.wider_head_runs()] == [("width128-baseline", None), ("width128-pmp", None)]
    seeded = bundle.wider_head_runs(1)
    assert [(r.name, r.seed) for r in seeded] == [("width128-baseline-seed1", 1), ("width128-pmp-seed1", 1)]
    assert seeded[0].command(tmp_path)[-2:] == ["--seed", "1"]
    assert bundle.wider_head_file(tmp_path, 0).name == "wider_head.json"
    assert bundle.wider_head_file(tmp_path, 2).name == "wider_head_seed2.json"

    def result(miou: float) -> dict:
        rows = {"miou": miou, "proposal_recall": 0.5, "miou_seen": miou, "miou_unseen": None}
        return {b: rows for b in bundle.BENCHMARKS}

    first = {"baseline": result(0.40), "pmp": result(0.44), "train_minutes": {"baseline": 90.0, "pmp": 95.0}}
    bundle.write_json(bundle.wider_head_file(tmp_path, 0), first)
    bundle.write_json(bundle.wider_head_file(tmp_path, 1), {"baseline": result(0.42), "train_minutes": {}})
    alone = bundle.wider_head_table(tmp_path)
    assert alone == bundle.markdown_table({"baseline": first["baseline"], "pmp": first["pmp"]})  # seed 1 lacks PMP
    second = {"baseline": result(0.42), "pmp": result(0.48), "train_minutes": {"baseline": 91.0, "pmp": 96.0}}
    bundle.write_json(bundle.wider_head_file(tmp_path, 1), second)
    table = bundle.wider_head_table(tmp_path)
    assert table.startswith(alone) and "2 seeds: mean ± std" in table and "train_minutes" not in table
    assert "| baseline | 41.0 ± 1.4 | 50.0 ± 0.0 |" in table and "| pmp − baseline | +5.0 (pmp ahead) |" in table


def test_a_resumed_runs_minutes_add_each_process_time(tmp_path: Path) -> None:
    from train.bundle import train_minutes

    rows = [{"step": 1, "seconds": 60.0}, {"step": 2, "seconds": 600.0}, {"step": 2, "miou": 0.3}]
    rows += [{"step": 3, "seconds": 30.0}, {"step": 4, "seconds": 120.0}]  # resumed: the clock starts again
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert train_minutes(tmp_path / "metrics.jsonl") == 12.0
