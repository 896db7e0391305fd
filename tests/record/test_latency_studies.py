"""The latency side studies (experiments.latency_studies): each interleaves what it compares."""

from __future__ import annotations


def test_the_latency_reference_comparison_times_both_models_on_one_request() -> None:
    """``--reference``: both checkpoints answer the same request, in interleaved pairs, and the ratio is
    of the whole request (the figures themselves are wall-clock and not asserted)."""
    import numpy as np
    import torch

    from benchmarks.latency_setup import STAGES
    from experiments.latency_studies import reference_comparison
    from pmp.segmenter import Segmenter
    from train.recipes import world_model

    torch.manual_seed(0)
    models = [Segmenter(world_model(mode, num_queries=4, width=32)).eval() for mode in ("none", "pmp")]
    calls = []
    for model in models:
        original = model.segment
        model.segment = lambda *a, _o=original, _m=model, **k: calls.append(_m) or _o(*a, **k)
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    measured = reference_comparison(models[0], models[1], image, count=3, repeats=2)
    assert calls == [models[0], models[1]] + [models[0], models[1]] * 2  # warm-up, then interleaved pairs
    assert measured["pairs"] == 2 and measured["prompts"] == 3
    assert set(measured["bundled"]) == set(measured["reference"]) == set(STAGES) and measured["ratio"] > 0


def test_the_allocator_comparison_interleaves_the_two_settings_and_ends_retained(monkeypatch) -> None:
    import numpy as np
    import torch

    import experiments.latency_studies as latency
    from pmp.segmenter import Segmenter
    from train.recipes import world_model

    torch.manual_seed(0)
    model = Segmenter(world_model("pmp", num_queries=4, width=32)).eval()
    events = []
    monkeypatch.setattr(latency, "retain_freed_memory", lambda: events.append("retain") or True)
    monkeypatch.setattr(latency, "release_freed_memory", lambda: events.append("release") or True)
    original = model.segment
    monkeypatch.setattr(model, "segment", lambda *a, **k: events.append("request") or original(*a, **k))
    measured = latency.allocator_comparison(model, np.zeros((64, 64, 3), dtype=np.uint8), count=3, repeats=2)
    pair = ["release", "request", "request", "retain", "request", "request"]
    assert events == pair * 2 + ["retain"]
    assert measured["pairs"] == 2 and set(measured["system"]) == set(measured["retain"]) == set(latency.STAGES)
    assert set(measured["speedup"]) == {"stage2", "total"} and all(v > 0 for v in measured["speedup"].values())


def test_the_flip_test_comparison_interleaves_one_view_and_two(monkeypatch) -> None:
    import numpy as np
    import torch

    import experiments.latency_studies as latency
    from pmp.segmenter import Segmenter
    from train.recipes import world_model

    torch.manual_seed(0)
    model = Segmenter(world_model("pmp", num_queries=4, width=32)).eval()
    asked = []
    original = model.segment
    monkeypatch.setattr(model, "segment", lambda *a, **k: asked.append(k.get("flip_test", False)) or original(*a, **k))
    measured = latency.flip_test_comparison(model, np.zeros((64, 64, 3), dtype=np.uint8), 3, 2, None)
    assert asked == [False, True] * 3  # a warm-up of each, then interleaved rounds
    assert set(measured["warm_median"]) == {"one view", "flip test"} and measured["speedup_total"] > 0
    assert measured["picked_proposals_equal"]  # the picks are the unmirrored view's
