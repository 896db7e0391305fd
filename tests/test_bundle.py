"""The bundled offline models: present, small enough, reproducing the README's numbers, running every example."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pmp.segmenter import Segmenter

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINTS = ROOT / "checkpoints"
RECORD = ROOT / "docs" / "results.md"  # the full record of results; the README has the summary
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


@pytest.mark.parametrize("name", ["baseline", "pmp"])
def test_each_bundled_segmenter_is_its_bundled_recipes_model(name: str) -> None:
    """What the README says the bundle is (the world recipe, 128-channel head) is what checkpoints/ holds."""
    import dataclasses

    from pmp.config import SegmenterConfig
    from train.recipes import get_recipe

    saved = SegmenterConfig.from_dict(json.loads((CHECKPOINTS / name / "config.json").read_text()))
    recipe = get_recipe(f"world-{name}").model
    assert saved.decoder.hidden_dim == 128
    assert dataclasses.replace(saved, clip=recipe.clip) == recipe  # the CLIP is a reference to the bundled one


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


def test_bundled_outputs_match_the_reference() -> None:
    """The bundled checkpoints give the outputs recorded in tests/data when they were made
    (``record_reference_outputs``): a refactor must not change what the models compute. Equal up to
    float32 rounding, not bit for bit: CPUs with other vector units (AVX2, AVX-512) run other kernels,
    which round the same sums differently (seen here: 2.5e-7 relative in p_out); the label map is exact."""
    from train.world.demo import demo_scene

    reference = json.loads((ROOT / "tests" / "data" / "bundled_outputs.json").read_text())
    for name, expected in reference.items():
        out = Segmenter.from_pretrained(name).segment(demo_scene(2).image, REFERENCE_PROMPTS)
        np.testing.assert_allclose(out.p_out, expected["p_out"], rtol=1e-5, atol=1e-8, err_msg=name)
        assert float(out.mask_logits.double().sum()) == pytest.approx(expected["mask_logits_sum"], rel=1e-6), name
        assert out.semantic.flatten().tolist()[::7] == expected["semantic"], name


def test_flip_test_makes_the_semantic_map_mirror_symmetric() -> None:
    """With the flip test, segmenting the mirrored image gives the mirrored map: each image's class maps
    are its own plus its mirror's mirrored back, the same two terms. One view alone does not."""
    from train.world.demo import demo_scene

    model = Segmenter.from_pretrained("pmp")
    image = np.asarray(demo_scene(2).image)
    mirror = np.ascontiguousarray(image[:, ::-1])
    plain, plain_mirrored = model.segment(image, REFERENCE_PROMPTS), model.segment(mirror, REFERENCE_PROMPTS)
    assert (plain.semantic[:, ::-1] != plain_mirrored.semantic).mean() > 0.005
    both = model.segment(image, REFERENCE_PROMPTS, flip_test=True)
    both_mirrored = model.segment(mirror, REFERENCE_PROMPTS, flip_test=True)
    assert (both.semantic[:, ::-1] == both_mirrored.semantic).mean() > 0.9999  # bilinear taps may round apart
    assert not np.array_equal(both.semantic, plain.semantic)
    # Everything but the semantic map is the unmirrored view's.
    np.testing.assert_array_equal(both.p_out, plain.p_out)
    assert both.selected == plain.selected and torch.equal(both.mask_logits, plain.mask_logits)


def test_flip_test_adds_the_mirrored_class_maps_before_the_argmax() -> None:
    from pmp.postprocess import semantic_inference
    from pmp.stage2 import ensemble
    from train.world.demo import demo_scene

    model = Segmenter.from_pretrained("baseline")
    image = demo_scene(3).image
    stages = model.run_stages(image, REFERENCE_PROMPTS, flip_test=True)
    mirrored = stages.mirrored
    assert mirrored is not None and mirrored.mirrored is None and model.run_stages(image, ["sky"]).mirrored is None
    maps = semantic_inference(ensemble(stages.p, stages.p_hat, 0.65), stages.mask_logits)  # (K, h, w)
    maps = maps + semantic_inference(ensemble(mirrored.p, mirrored.p_hat, 0.65), mirrored.mask_logits).flip(-1)
    expected = F.interpolate(maps[None], size=stages.image_size, mode="bilinear", align_corners=False)[0].argmax(0)
    combined = model.combine(stages).semantic
    assert (combined == expected.numpy()).mean() > 0.9999
    assert not np.array_equal(combined, model.combine(replace(stages, mirrored=None)).semantic)


def test_evaluate_models_can_replace_combine_settings(tmp_path: Path, monkeypatch) -> None:
    import train.bundle
    from pmp.config import SegmenterConfig
    from train.bundle import evaluate_models

    seen = []
    monkeypatch.setattr(
        Segmenter, "from_pretrained", classmethod(lambda cls, folder: SimpleNamespace(config=SegmenterConfig()))
    )
    monkeypatch.setattr(train.bundle, "load_benchmark", lambda name: name)
    monkeypatch.setattr(
        train.bundle,
        "evaluate",
        lambda segmenter, dataset, **k: (
            seen.append((segmenter.config.ensemble, dataset))
            or {"miou": 0.5, "miou_seen": 0.5, "miou_unseen": 0.5, "proposal_recall": 0.5}
        ),
    )
    changes = {"ensemble": "odise"}
    results = evaluate_models(
        {"m": tmp_path}, tmp_path / "out.json", None, benchmarks=("world-voc",), config_changes=changes
    )
    assert seen == [("odise", "world-voc")] and results["m"]["world-voc"]["miou"] == 0.5
    evaluate_models({"m": tmp_path}, tmp_path / "out.json", None, benchmarks=("world-voc",))
    assert seen[-1] == ("ovseg", "world-voc")  # the checkpoint's own form when not replaced


def test_seed_table_gives_mean_and_sample_std_per_model_and_calls_ties(tmp_path: Path) -> None:
    from train.table1 import BENCHMARKS, seed_table, seed_tables

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
    from train.table1 import plot_seed_results

    plot_seed_results(files, tmp_path / "results.png")
    assert (tmp_path / "results.png").stat().st_size > 10_000


def test_readme_seed_table_is_generated_from_results() -> None:
    from train.table1 import seed_tables, table1_files

    readme = (ROOT / "README.md").read_text()
    assert seed_tables([ROOT / "results" / f"hierarchy_seed{seed}.json" for seed in range(3)]) in RECORD.read_text()
    main = table1_files(ROOT / "results")
    assert len(main) >= 2 and seed_tables(main) in readme  # Table 1: the bundled recipe, seeds 0 (the bundle), 1, 2
    assert len(table1_files(ROOT / "results" / "width64")) == 3  # and the previous pair's three


def test_a_planned_run_is_the_recipe_with_only_its_fields_changed() -> None:
    from train.bundle import Run

    command = Run("q8-pmp-seed1", "pmp", steps=1500, num_queries=8, seed=1).command(ROOT / "runs" / "bundle")
    assert command[command.index("--recipe") + 1] == "world-pmp"
    assert command[command.index("--out") + 1] == str(Path("runs") / "bundle" / "q8-pmp-seed1")
    assert [command[command.index(flag) + 1] for flag in ("--steps", "--num-queries", "--seed")] == ["1500", "8", "1"]
    plain = Run("baseline", "none").command(ROOT / "runs")
    assert "world-baseline" in plain and "--steps" not in plain and "--seed" not in plain


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


def test_a_resumed_runs_minutes_add_each_process_time(tmp_path: Path) -> None:
    from train.bundle import train_minutes

    rows = [{"step": 1, "seconds": 60.0}, {"step": 2, "seconds": 600.0}, {"step": 2, "miou": 0.3}]
    rows += [{"step": 3, "seconds": 30.0}, {"step": 4, "seconds": 120.0}]  # resumed: the clock starts again
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert train_minutes(tmp_path / "metrics.jsonl") == 12.0
