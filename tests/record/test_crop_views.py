"""Stage 2's crop views compared on the same stage 1: each row is the bundled model with only its crop views changed."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from tiny import tiny_segmenter_config

from experiments import crop_views
from pmp.segmenter import Segmenter
from train.evaluate import evaluate, load_benchmark

ROOT = Path(__file__).resolve().parents[2]


def _saved(tmp_path: Path, stage2_mode: str = "crop") -> Path:
    torch.manual_seed(0)
    segmenter = Segmenter(tiny_segmenter_config("none", stage2_mode=stage2_mode, crop_top_k=8))
    return segmenter.save_pretrained(tmp_path / "baseline", max_shard_size="1GB")


def test_each_view_set_is_the_model_with_only_its_views_changed(tmp_path: Path, monkeypatch) -> None:
    folder = _saved(tmp_path)
    bundled = Segmenter.from_pretrained(folder).config
    seen = []

    def recording(segmenter, dataset, limit, **options):
        seen.append(segmenter.config)
        return evaluate(segmenter, dataset, limit, **options)

    monkeypatch.setattr("experiments.crop_views.evaluate", recording)
    results = crop_views.compare_crop_views({"baseline": folder}, 2, ("world-full",))
    every = bundled.decoder.num_queries
    assert [(c.crop_views, c.crop_top_k) for c in seen] == [(v, k or every) for v, k in crop_views.ROWS]
    changed = ("crop_views", "crop_top_k")
    assert all(c == dataclasses.replace(bundled, **{f: getattr(c, f) for f in changed}) for c in seen)
    assert list(results["baseline"]) == ["masked", "box", "masked+box", "masked+box@16", "masked+box@12"]
    direct = evaluate(Segmenter.from_pretrained(folder), load_benchmark("world-full"), 2, show_progress=False)
    assert math.isclose(results["baseline"]["masked"]["world-full"]["miou"], direct["miou"])
    table = crop_views.crop_views_table(json.loads(json.dumps(results).replace("NaN", "null")))
    assert table.count("\n") == 2 + len(crop_views.ROWS) and "| baseline | masked + box |" in table
    assert "| baseline | masked + box, top 16 proposals |" in table


def test_a_pooling_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="crop views need 'crop'"):
        crop_views.compare_crop_views({"baseline": _saved(tmp_path, "pool")}, 1, ("world-full",))


@pytest.mark.parametrize("name", ["crop_views.json", "crop_views_dev.json"])
def test_record_crop_views_table_is_generated_from_results(name: str) -> None:
    measured = json.loads((ROOT / "results" / name).read_text())
    assert crop_views.crop_views_table(measured["results"]) in (ROOT / "docs" / "results.md").read_text()


def test_dev_runs_the_rows_on_each_benchmarks_held_out_scenes(tmp_path: Path, monkeypatch, capsys) -> None:
    asked = []

    def recording(models, limit, benchmarks):
        asked.append((limit, benchmarks))
        row = {"miou": 0.5, "miou_seen": 0.6, "miou_unseen": 0.4}
        return {name: {"masked": {b: row for b in benchmarks}} for name in models}

    monkeypatch.setattr(crop_views, "compare_crop_views", recording)
    out = tmp_path / "crop_views_dev.json"
    assert crop_views.main(["--dev", "--limit", "3", "--out", str(out)]) == 0
    dev = ("world-voc-dev", "world-full-dev", "world-parts-dev", "world-mixed-dev")
    assert asked == [(3, dev)] and json.loads(out.read_text())["benchmarks"] == list(dev)
    assert "world-mixed-dev mIoU" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit):
        crop_views.main(["--dev", "--limit", "201"])  # 200 held-out scenes per benchmark
    assert "--limit must be in [1, 200], got 201" in capsys.readouterr().err
