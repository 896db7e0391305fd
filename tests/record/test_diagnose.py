"""experiments.diagnose: proposals assigned to the granularity they match, under two prompt sets."""

from __future__ import annotations

import numpy as np
import torch

from experiments.diagnose import diagnose, markdown, prompt_sets, proposal_levels, scene_segments
from tests.demo_fixtures import FakeSegmenter
from train.world.benchmarks import benchmark_scene
from train.world.vocabulary import GRANULARITY


def test_segments_cover_each_level_and_prompt_sets_differ_in_granularity():
    scene, _ = benchmark_scene("world-mixed", 0)
    segments, levels = scene_segments(scene)
    assert segments.shape[1:] == scene.semantic.shape and len(levels) == len(segments)
    assert {"stuff", "thing", "part"} <= set(levels)
    sets = prompt_sets(scene)
    assert {GRANULARITY[name] for name in sets["wholes"]} == {"stuff", "thing"}
    assert {GRANULARITY[name] for name in sets["parts"]} == {"stuff", "part"}


def test_proposals_are_assigned_to_the_level_they_match():
    segments = np.zeros((3, 8, 8), bool)
    segments[0, :4], segments[1, 4:, :4], segments[2, 4:, 4:] = True, True, True
    levels = ["stuff", "thing", "part"]
    proposals = np.stack([segments[2], segments[0], np.eye(8, dtype=bool)]).astype(np.float32)
    matched, best = proposal_levels(proposals, segments, levels)
    assert matched == ["part", "stuff", "none"]
    assert best[0] == 1.0 and best[2] == 1.0 and best[1] < 0.5


def test_a_prompt_agnostic_generator_does_not_move_and_one_that_follows_prompts_does():
    models = {"baseline": FakeSegmenter(), "pmp": FakeSegmenter(follows_prompts=True)}
    result = diagnose(models, limit=2)
    assert result["models"]["baseline"]["shift"] == 0.0
    assert result["models"]["pmp"]["shift"] > 0.0
    baseline = result["models"]["baseline"]
    assert baseline["wholes"] == baseline["parts"]  # same masks, same shares and recalls
    shares = sum(baseline["wholes"][f"share_{level}"] for level in ("stuff", "thing", "part", "none"))
    assert abs(shares - 1.0) < 1e-9
    table = markdown(result)
    assert table.count("| baseline |") == 2 and "| pmp | wholes |" in table


def test_confusions_say_where_each_seen_things_pixels_go():
    from experiments.diagnose import benchmark_pass, confusions, confusions_markdown
    from pmp.segmenter import Segmenter
    from tests.tiny import tiny_segmenter_config

    model = Segmenter(tiny_segmenter_config("none")).eval()
    result = confusions(model, benchmark_pass(model, limit=2), clip_weights=(0.0, 1.0), top=2)
    assert list(result) == ["0.0", "1.0"]
    for per_class in result.values():
        for shares in per_class.values():
            assert len(shares) <= 2 and all(0.0 <= share <= 1.0 for _, share in shares)
            assert shares == sorted(shares, key=lambda item: -item[1])
    assert "| seen thing |" in confusions_markdown(result)


def test_oracle_classes_give_each_proposal_the_class_under_most_of_its_pixels():

    from experiments.diagnose import one_hot_labels, oracle_class_scores

    label = np.full((4, 4), -1)
    label[:2], label[2:, :3] = 0, 2  # class 1 absent; pixels (2..3, 3) ignored
    one_hot = one_hot_labels(label, num_classes=3, ignore_label=-1)
    assert one_hot.shape == (3, 4, 4) and one_hot[:, 2:, 3].sum() == 0
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[0, :3] = True  # 8 pixels of class 0, 3 of class 2
    masks[1, 2:, 2:] = True  # 2 of class 2, the rest ignored
    masks[2, 2:, 3] = True  # ignored pixels only
    scores = oracle_class_scores(masks, one_hot, no_object=torch.tensor([0.25, 0.5, 0.0]))
    assert torch.equal(scores, torch.tensor([[0.75, 0, 0], [0, 0, 0.5], [0, 0, 0]]))


def test_the_grid_ceiling_is_exact_on_grid_aligned_labels_and_loses_finer_detail():
    from experiments.diagnose import grid_labels, one_hot_labels

    label = np.zeros((16, 16), np.int64)
    label[:, 8:] = 1
    assert np.array_equal(grid_labels(one_hot_labels(label, 2, -1), (4, 4)), label)
    thin = np.zeros((16, 16), np.int64)
    thin[:, 7] = 1  # one pixel wide: a 4 x 4 grid cannot draw it
    assert (grid_labels(one_hot_labels(thin, 2, -1), (4, 4)) == 1).sum() == 0


def test_ceilings_score_every_row_on_the_same_images():
    from experiments.diagnose import CEILINGS, benchmark_pass, ceilings, ceilings_markdown, stage2_p_hat
    from pmp.segmenter import Segmenter
    from tests.tiny import tiny_segmenter_config

    model = Segmenter(tiny_segmenter_config("none")).eval()
    world_full = benchmark_pass(model, limit=2)
    result = ceilings(model, world_full)
    assert list(result) == [row for row in CEILINGS if "unadapted" not in row]  # no unadapted CLIP given
    assert all(0.0 <= row["miou"] <= 1.0 for row in result.values())
    assert result["grid"]["miou"] > result["eq3"]["miou"]  # an untrained model is far from perfect masks
    assert ceilings_markdown({"tiny": result}).count("\n") == 2 + len(result)

    own = ceilings(model, world_full, unadapted_clip=model.clip)  # the model's own CLIP as "unadapted"
    assert list(own) == list(CEILINGS)
    assert all(0.0 <= row["miou"] <= 1.0 for row in own.values())
    _, stages = world_full.outputs[0]  # the tiny model pools: the pooled row re-runs its own stage 2
    pooled = stage2_p_hat(model, model.clip, world_full.images[0], stages, "pool")
    assert torch.allclose(pooled, stages.p_hat, atol=1e-5)
    assert ceilings_markdown({"tiny": own}).count("\n") == 2 + len(CEILINGS)


def test_ceilings_on_another_benchmark_use_its_classes_and_refuse_per_image_prompts():
    import pytest

    from experiments.diagnose import benchmark_pass, ceilings, ceilings_markdown
    from pmp.segmenter import Segmenter
    from tests.tiny import tiny_segmenter_config

    model = Segmenter(tiny_segmenter_config("none")).eval()
    voc = benchmark_pass(model, limit=2, benchmark="world-voc")
    assert voc.dataset.name == "world-voc" and voc.outputs[0][1].labels == list(voc.dataset.class_names)
    table = ceilings_markdown({"tiny": ceilings(model, voc)}, "world-voc")
    assert table.startswith("| world-voc mIoU (all / seen / unseen) | tiny |")
    with pytest.raises(ValueError, match="world-mixed gives each image its own prompts"):
        benchmark_pass(model, limit=1, benchmark="world-mixed")


def test_stage1_alone_gives_every_prompt_weight_zero_whatever_the_models_eq3():
    import dataclasses

    from experiments.diagnose import benchmark_pass, stage1_alone
    from pmp.segmenter import Segmenter
    from tests.tiny import tiny_segmenter_config

    model = Segmenter(tiny_segmenter_config("none")).eval()
    _, stages = benchmark_pass(model, limit=1, benchmark="world-voc").outputs[0]
    model.config = dataclasses.replace(model.config, training_names=("sky",), clip_weight_unseen=0.9)
    np.testing.assert_allclose(stage1_alone(model, stages).p_out, stages.p.numpy(), atol=1e-6)
    assert not np.allclose(model.combine(stages, clip_weight=0.0).p_out, stages.p.numpy(), atol=1e-6)


def test_the_eq3_row_is_named_after_the_models_weights():
    from experiments.diagnose import CEILINGS, ceilings_markdown, eq3_title

    assert eq3_title((0.65, None)) == CEILINGS["eq3"] and eq3_title((0.8, None)).startswith("Eq. 3 (clip weight 0.8)")
    assert eq3_title((0.4, 0.9)) == "Eq. 3 (clip weights 0.4 / 0.9: training names / other names), as reported"
    row = {"miou": 0.5, "miou_seen": 0.6, "miou_unseen": 0.4}
    assert "| Eq. 3 (clip weights 0.4 / 0.9" in ceilings_markdown({"m": {"eq3": row}}, clip_weights=(0.4, 0.9))
