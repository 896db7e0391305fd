"""Mask-adapted CLIP: the regions it learns from, the proposal-like masks, and a short run that changes
the image tower only."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from pmp.clip import CLIPModel
from pmp.config import CLIPConfig, SegmenterConfig, tiny_clip_model_cfg
from train import world
from train.adapt_clip import adapt
from train.adapt_regions import REGION_NAMES, proposal_like, scene_regions
from train.configs import CLIPAdaptConfig
from train.train_clip import load_clip_for_evaluation
from train.world.vocabulary import CLASS_NAMES, PART_NAMES


def test_scene_regions_are_wholes_parts_and_stuff_of_the_scene() -> None:
    scene = world.render_scene(3, 128)
    regions = scene_regions(scene, min_pixels=12)
    names = [name for _, name in regions]
    assert set(names) <= set(REGION_NAMES)
    for obj in scene.objects:
        whole = scene.instances == obj.instance_id
        if whole.sum() >= 12:
            assert any(np.array_equal(mask, whole) and name == obj.class_name for mask, name in regions)
    for mask, name in regions:
        assert mask.sum() >= 12
        if name in PART_NAMES:  # a part lies inside one thing and carries its part id
            owners = np.unique(scene.instances[mask])
            assert len(owners) == 1 and owners[0] > 0
            assert (scene.parts[mask] == PART_NAMES.index(name)).all()
        else:
            assert (np.asarray(CLASS_NAMES)[scene.semantic[mask]] == name).all()
    assert any(name in PART_NAMES for name in names)


def test_proposal_like_masks_keep_a_large_region_and_lose_detail() -> None:
    masks = torch.zeros(3, 64, 64, dtype=torch.bool)
    masks[:, 16:48, 16:48] = True
    masks[:, 5, :] = True  # a 1-px line: below a quarter-resolution cell
    soft = proposal_like(masks, 4, np.random.default_rng(0))
    assert soft.shape == (3, 64, 64) and soft.min() >= 0 and soft.max() <= 1
    binary = soft > 0.5
    square = masks.clone()
    square[:, 5, :] = False
    iou = (binary & square).sum((1, 2)).float() / (binary | square).sum((1, 2)).float()
    assert (iou > 0.5).all()  # one cell of dilation or erosion at most
    assert not binary[:, 5, 20:44].any()  # the line is gone, as a 16 x 16 proposal would lose it


def _short_adaptation(**changes) -> CLIPAdaptConfig:
    """A few steps on a few scenes: enough to run every part of :func:`adapt`."""
    small = dict(scenes_per_step=2, regions_per_scene=2, pair_batch=4, warmup_steps=1, eval_scenes=2)
    return dataclasses.replace(CLIPAdaptConfig(), eval_crops_per_class=1, **small, **changes)


@pytest.mark.parametrize("views", [("masked",), ("masked", "box")])
def test_adaptation_fine_tunes_the_image_tower_only(tmp_path: Path, views: tuple[str, ...]) -> None:
    torch.manual_seed(0)
    clip = CLIPModel.build(CLIPConfig(model_cfg=tiny_clip_model_cfg(), templates=("a photo of a {}.",)))
    before = {k: v.clone() for k, v in clip.open_clip.state_dict().items()}
    text_before = clip.encode_text(["car", "wheel"]).clone()
    metrics = adapt(clip, _short_adaptation(steps=3, log_every=1, crop_views=views), tmp_path)
    after = clip.open_clip.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("visual.") for k in changed)
    # The segmenters' class embeddings and text tokens are unchanged (up to the kernels' rounding).
    assert torch.allclose(clip.encode_text(["car", "wheel"]), text_before, atol=1e-6)
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged] == [1, 2, 3] and all(np.isfinite(row["loss"]) for row in logged)
    assert {"region_top1", "region_top1_before", "zero_shot_top1", "zero_shot_top1_before"} <= set(metrics)
    reloaded = load_clip_for_evaluation(str(tmp_path / "model"))
    for key in changed:  # saved in float16
        assert torch.allclose(reloaded.open_clip.state_dict()[key].float(), after[key].float(), atol=1e-2, rtol=1e-2)


def _timm_segmenter():
    from pmp.config import BackboneConfig
    from pmp.segmenter import Segmenter
    from tests.tiny import tiny_segmenter_config

    torch.manual_seed(0)
    segmenter = Segmenter(tiny_segmenter_config("pmp", backbone=BackboneConfig(kind="timm", name="regnetx_002"))).eval()
    segmenter.clip.open_clip.half().float()  # as loaded from the bundled float16 CLIP
    return segmenter


def _adapted_folder(segmenter, tmp_path: Path, *, touch_text: bool = False) -> Path:
    from train.configs import CLIPTrainConfig
    from train.train_clip import save_open_clip_folder

    clip = CLIPModel.build(segmenter.config.clip)
    clip.open_clip.load_state_dict(segmenter.clip.open_clip.state_dict())
    with torch.no_grad():
        clip.open_clip.visual.attnpool.c_proj.weight.mul_(-1.0)  # a different image tower
        if touch_text:
            clip.open_clip.text_projection.mul_(2.0)
    save_open_clip_folder(clip, CLIPTrainConfig(image_size=segmenter.config.clip.model_cfg["vision_cfg"]["image_size"]),
                          tmp_path / "adapted", {}, "test")  # fmt: skip
    return tmp_path / "adapted"


def test_an_adapted_clip_changes_stage_two_only(tmp_path: Path) -> None:
    from train.bundle import with_adapted_clip
    from train.recipes import world_model

    segmenter = _timm_segmenter()
    image = world.render_scene(5, 64).image
    labels = ["sky", "grass", "car", "tree"]
    before = segmenter.run_stages(image, labels, stage2_mode="crop")
    folder = _adapted_folder(segmenter, tmp_path)
    adapted = with_adapted_clip(segmenter, folder)
    after = adapted.run_stages(image, labels, stage2_mode="crop")
    assert torch.equal(before.p, after.p) and torch.equal(before.mask_logits, after.mask_logits)  # stage 1
    assert not torch.allclose(before.p_hat, after.p_hat)  # stage 2 reads the new tower
    recipe = world_model("pmp", segmenter.config.decoder.num_queries)
    stage2 = ("stage2_mode", "crop_top_k", "crop_views")
    assert [getattr(adapted.config, key) for key in stage2] == [getattr(recipe, key) for key in stage2]
    assert adapted.config.crop_views == ("masked", "box") != SegmenterConfig().crop_views  # the default: OVSeg


def test_clip_pixels_are_resized_to_the_tower_only_when_asked() -> None:
    from train.train_clip import to_clip_pixels

    images = [np.full((64, 64, 3), 200, dtype=np.uint8), np.zeros((64, 64, 3), dtype=np.uint8)]
    same = to_clip_pixels(images)
    small = to_clip_pixels(images, 32)
    assert same.shape == (2, 3, 64, 64) and small.shape == (2, 3, 32, 32)
    assert torch.allclose(small, same[:, :, :32, :32])  # flat images stay flat: only the size changes
    assert to_clip_pixels(images, 64).equal(same)


def test_an_adapted_clip_with_another_text_tower_or_a_clip_backbone_is_refused(tmp_path: Path) -> None:
    import pytest

    from pmp.segmenter import Segmenter
    from tests.tiny import tiny_segmenter_config
    from train.bundle import with_adapted_clip

    segmenter = _timm_segmenter()
    with pytest.raises(ValueError, match="another text tower"):
        with_adapted_clip(segmenter, _adapted_folder(segmenter, tmp_path, touch_text=True))
    with pytest.raises(ValueError, match="stage 1 runs the CLIP image tower"):
        with_adapted_clip(Segmenter(tiny_segmenter_config("pmp")), tmp_path / "adapted")


class _DrawnProposals(torch.nn.Module):
    """A stage 1 that proposes what it is told: the (N, h, w) logits ``drawn``, for every image."""

    def __init__(self, drawn: torch.Tensor) -> None:
        super().__init__()
        self.drawn = torch.nn.Parameter(drawn, requires_grad=False)
        self.prompts: list[int] = []

    def forward(self, pixels: torch.Tensor, text: torch.Tensor, return_aux: bool = True) -> dict[str, torch.Tensor]:
        self.prompts.append(text.shape[1])
        return {"pred_masks": self.drawn[None].expand(len(pixels), -1, -1, -1)}


def _segmenter_proposing(scene, regions) -> tuple[object, str]:
    """A tiny segmenter whose proposals are: the scene's largest region at a quarter of the resolution,
    an empty mask, and a mask of one corner pixel; and the name of that largest region."""
    from pmp.segmenter import Segmenter
    from tests.tiny import tiny_segmenter_config

    largest = max(range(len(regions)), key=lambda i: regions[i][0].sum())
    quarter = torch.nn.functional.avg_pool2d(torch.from_numpy(regions[largest][0]).float()[None], 4)[0]  # (h, w)
    corner = torch.full_like(quarter, -20.0)
    corner[0, 0] = 20.0
    drawn = torch.stack([(quarter - 0.5) * 40.0, torch.full_like(quarter, -20.0), corner])  # (3, h, w)
    segmenter = Segmenter(tiny_segmenter_config("none")).eval()
    segmenter.proposal_model = _DrawnProposals(drawn)
    return segmenter, regions[largest][1]


def test_matched_proposals_are_named_after_the_region_they_cover() -> None:
    from train.adapt_regions import matched_proposals

    scene = world.render_scene(3, 64)
    regions = scene_regions(scene, min_pixels=12)
    segmenter, name = _segmenter_proposing(scene, regions)
    image = torch.from_numpy(scene.image).permute(2, 0, 1).float() / 255.0
    [(masks, names)] = matched_proposals(segmenter, [(image, regions)], min_iou=0.5)
    assert names == [name]  # the empty and the one-pixel proposal match nothing
    assert masks.shape == (1, 64, 64) and 0.0 <= masks.min() and masks.max() <= 1.0  # soft, at the image's size
    assert segmenter.proposal_model.prompts == [len({n for _, n in regions})]  # prompted with the scene's names


def test_region_batches_mix_matched_proposals_and_world_regions() -> None:
    from train.adapt_regions import region_accuracy, region_batch

    scene = world.render_scene(3, 128)
    regions = scene_regions(scene, min_pixels=500)  # a person, the wall and the floor
    segmenter, name = _segmenter_proposing(scene, regions)
    clip = segmenter.clip
    config = dataclasses.replace(
        CLIPAdaptConfig(), image_size=128, regions_per_scene=3, proposal_regions=2, min_region_pixels=500
    )
    crops, names = region_batch(clip, [3], config, np.random.default_rng(0), segmenter)
    assert len(regions) == 3 and crops.shape == (3, 3, clip.image_size, clip.image_size)
    assert names[0] == name and set(names[1:]) <= {n for _, n in regions}  # one matched proposal, then the world
    _, alone = region_batch(clip, [3], config, np.random.default_rng(0))
    assert {"wall", "floor"} <= set(alone) <= {n for _, n in regions}  # a thin person may erode away
    measured = region_accuracy(clip, dataclasses.replace(config, eval_scenes=2), segmenter)
    assert set(measured) == {"proposal_top1", "proposal_class_top1_seen", "proposal_class_top1_unseen",
                             "proposal_part_top1_seen", "proposal_part_top1_unseen", "proposal_chance"}  # fmt: skip


def test_crop_views_flag_is_checked_before_anything_loads(capsys) -> None:
    from train.adapt_clip import main

    for argv, message in (
        (["--out", "x", "--crop-views", "masked,masked"], "crop_views must"),
        (["--measure-only", "--proposals-from", "x", "--crop-views", "box,mean"], "crop_views must"),
    ):
        with pytest.raises(SystemExit):
            main(["--clip", "no/such/clip", *argv])
        assert message in capsys.readouterr().err


def test_the_region_loss_with_several_views_scores_what_stage_two_reads() -> None:
    from train.adapt_regions import region_view_loss

    torch.manual_seed(0)
    logits = torch.randn(2 * 3, 5)  # two views of three regions, view-major
    targets = torch.tensor([0, 4, 2])
    masked, box = logits[:3].log_softmax(-1), logits[3:].log_softmax(-1)
    stage_two = ((masked + box) / 2).softmax(-1)  # pmp.stage2.crop_classify's p_hat of the two views
    assert torch.allclose(region_view_loss(logits, targets), -stage_two[torch.arange(3), targets].log().mean())
    assert torch.allclose(region_view_loss(logits[:3], targets), torch.nn.functional.cross_entropy(logits[:3], targets))


def test_region_batches_in_two_views_are_each_regions_masked_crop_then_its_box() -> None:
    from train.adapt_regions import region_batch

    scene = world.render_scene(3, 128)
    regions = scene_regions(scene, min_pixels=500)
    segmenter, _ = _segmenter_proposing(scene, regions)
    clip = segmenter.clip
    config = dataclasses.replace(CLIPAdaptConfig(), image_size=128, regions_per_scene=3, min_region_pixels=500)
    masked, names = region_batch(clip, [3, 3], config, np.random.default_rng(0))
    both, same_names = region_batch(
        clip, [3, 3], dataclasses.replace(config, crop_views=("masked", "box")), np.random.default_rng(0)
    )
    count = len(names)
    assert same_names == names and both.shape == (2 * count, *masked.shape[1:])
    torch.testing.assert_close(both[:count], masked)  # every masked crop first, in the regions' order
    boxes = both[count:]
    assert not torch.equal(boxes, masked)  # the boxes keep the image around each region
    # A masked crop is its box times the mask's share of each pixel (0 outside, 1 inside, between at edges).
    assert (masked.abs() <= boxes.abs() + 1e-5).all()
    inside = masked.abs().sum(1) > 0  # (B, S, S)
    same = (masked - boxes).abs().amax(1) < 1e-5
    assert same[inside].float().mean() > 0.9


def test_evaluate_measures_a_candidate_clip_without_installing_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from train.evaluate import main

    segmenter = _timm_segmenter()
    folder = _adapted_folder(segmenter, tmp_path)
    candidate = load_clip_for_evaluation(str(folder)).open_clip.state_dict()
    argv = ["--benchmark", "world-voc", "--size", "64", "--limit", "1", "--json", "--no-recall"]
    assert main([*argv, "--adapted-clip", str(folder)], segmenter_factory=lambda *_: segmenter) == 0
    assert json.loads(capsys.readouterr().out)["options"]["adapted_clip"] == str(folder)
    evaluated = segmenter.clip.open_clip.state_dict()  # the segmenter that was scored reads the candidate
    assert all(torch.equal(evaluated[key], candidate[key].to(evaluated[key])) for key in candidate)
    assert segmenter.config.crop_views == ("masked", "box")  # and the world recipe's stage 2

    refused = _adapted_folder(_timm_segmenter(), tmp_path / "other", touch_text=True)
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--adapted-clip", str(refused)], segmenter_factory=lambda *_: _timm_segmenter())
    assert exit_info.value.code == 2 and "another text tower" in capsys.readouterr().err


def test_kind_weights_share_each_kinds_weight_among_its_regions() -> None:
    from train.adapt_regions import kind_probabilities, region_kind

    mask = np.zeros((4, 4), dtype=bool)
    regions = [(mask, "sky"), (mask, "car"), (mask, "wheel"), (mask, "window"), (mask, "door")]
    assert [region_kind(name) for _, name in regions] == [0, 1, 2, 2, 2]
    assert kind_probabilities(regions, None) is None  # every region equally likely, as before
    chance = kind_probabilities(regions, (1.0, 1.0, 1.0))
    np.testing.assert_allclose(chance, [1 / 3, 1 / 3, 1 / 9, 1 / 9, 1 / 9])
    chance = kind_probabilities(regions[1:], (1.0, 2.0, 1.0))  # no stuff here: the weights of those present
    np.testing.assert_allclose(chance, [2 / 3, 1 / 9, 1 / 9, 1 / 9])
    with pytest.raises(ValueError, match="above 0"):
        kind_probabilities(regions, (0.0, 1.0, 1.0))


def test_kind_weights_flag_is_parsed_and_checked(capsys: pytest.CaptureFixture[str]) -> None:
    from train.adapt_clip import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--clip", "unused", "--out", "unused", "--kind-weights", "1,0,1"])
    assert exit_info.value.code == 2 and "three weights above 0" in capsys.readouterr().err


def test_training_masks_draw_regions_by_kind_weights() -> None:
    from train.adapt_regions import _training_masks

    mask = np.zeros((8, 8), dtype=bool)
    mask[2:6, 2:6] = True
    regions = [(mask, "sky"), (mask, "car"), (mask, "wheel"), (mask, "window"), (mask, "door")]
    rng = np.random.default_rng(0)

    def drawn(kind_weights: tuple[float, float, float] | None) -> Counter:
        config = CLIPAdaptConfig(regions_per_scene=1, proposal_regions=0, mask_stride=2, kind_weights=kind_weights)
        return Counter(_training_masks(regions, None, [], config, rng)[1][0] for _ in range(200))

    assert drawn((0.01, 1.0, 0.01))["car"] > 190  # nearly always the thing
    assert 20 < drawn(None)["car"] < 70  # one region in five


def test_held_out_crops_do_not_depend_on_how_training_regions_are_drawn(monkeypatch) -> None:
    import train.adapt_regions as adapt_clip

    read = []

    def guesses(clip, crops, text, num_views=1):  # the held-out crops, as region_accuracy reads them
        read.append(crops)
        return ["sky"] * (len(crops) // num_views)

    monkeypatch.setattr(adapt_clip, "_guesses", guesses)
    clip = CLIPModel.build(CLIPConfig(model_name="tiny-clip", model_cfg=tiny_clip_model_cfg())).eval()
    config = dataclasses.replace(CLIPAdaptConfig(), image_size=64, eval_scenes=2)
    adapt_clip.region_accuracy(clip, config)
    adapt_clip.region_accuracy(clip, dataclasses.replace(config, kind_weights=(1.0, 5.0, 0.5)))
    assert len(read) == 2 and torch.equal(read[0], read[1])
