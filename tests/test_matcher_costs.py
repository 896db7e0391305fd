"""train.matcher's costs against a second implementation written pair by pair from the references (Mask2Former's
mask2former/modeling/matcher.py batch_dice_loss / batch_sigmoid_ce_loss, MaskFormer's mask_former/modeling/
matcher.py batch_sigmoid_focal_loss with alpha 0.25, gamma 2), its defaults, and its input checks' exact messages."""

from __future__ import annotations

import math

import pytest
import torch

from train.matcher import (
    HungarianMatcher,
    batch_dice_cost,
    batch_sigmoid_focal_cost,
    point_sample,
    points_for_mask_size,
    validate_outputs_and_targets,
)


def _pairwise(pred: torch.Tensor, target: torch.Tensor, cost) -> torch.Tensor:
    """(Q, P), (K, P) -> (Q, K), one pair at a time."""
    return torch.tensor([[float(cost(p, t)) for t in target] for p in pred])


def _dice(p: torch.Tensor, t: torch.Tensor) -> float:
    s = p.sigmoid()
    return 1 - (2 * (s * t).sum() + 1) / (s.sum() + t.sum() + 1)


def _bce(p: torch.Tensor, t: torch.Tensor) -> float:
    s = p.sigmoid()
    return (-(t * s.log() + (1 - t) * (1 - s).log())).mean()


def _focal(p: torch.Tensor, t: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> float:
    s = p.sigmoid()
    return (alpha * (1 - s) ** gamma * -s.log() * t + (1 - alpha) * s**gamma * -(1 - s).log() * (1 - t)).mean()


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    pred = torch.randn(3, 7, generator=generator) * 2  # Q = 3, P = 7
    target = torch.rand(2, 7, generator=generator)  # K = 2, soft targets (bilinear samples of masks)
    target[0] = (target[0] > 0.5).float()
    return pred, target


def test_dice_cost_by_hand_and_pair_by_pair() -> None:
    # sigmoid(0) = 1/2 at both points, target (1, 0): 1 - (2 * 0.5 + 1) / (1 + 1 + 1) = 1/3.
    assert batch_dice_cost(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]])).item() == pytest.approx(1 / 3)
    pred, target = _inputs()
    torch.testing.assert_close(batch_dice_cost(pred, target), _pairwise(pred, target, _dice))


def test_focal_cost_is_maskformers_with_its_defaults() -> None:
    # One point, logit 0, target 1: 0.25 * (1/2)^2 * log 2.
    assert batch_sigmoid_focal_cost(torch.zeros(1, 1), torch.ones(1, 1)).item() == pytest.approx(0.0625 * math.log(2))
    pred, target = _inputs(1)
    torch.testing.assert_close(batch_sigmoid_focal_cost(pred, target), _pairwise(pred, target, _focal))
    torch.testing.assert_close(
        batch_sigmoid_focal_cost(pred, target, alpha=0.6, gamma=1.5),
        _pairwise(pred, target, lambda p, t: _focal(p, t, 0.6, 1.5)),
    )


def test_defaults_are_mask2formers_weights() -> None:
    # Mask2Former configs/coco/.../Base-*.yaml MODEL.MASK_FORMER: CLASS_WEIGHT 2.0, MASK_WEIGHT 5.0, DICE_WEIGHT 5.0
    matcher = HungarianMatcher()
    assert (matcher.cost_class, matcher.cost_mask, matcher.cost_dice) == (2.0, 5.0, 5.0)
    assert matcher.mask_loss == "points_bce" and matcher.num_points is None


def _one_image(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    probs = torch.rand(4, 3, generator=generator).softmax(-1)  # Q = 4, M + 1 = 3
    pred_masks = torch.randn(4, 3, 5, generator=generator) * 3  # (Q, h, w)
    labels = torch.tensor([1, 0])
    target_masks = (torch.rand(2, 6, 10, generator=generator) > 0.5).float()  # (K, 2h, 2w)
    return probs, pred_masks, labels, target_masks


def test_full_focal_cost_is_maskformers_on_every_pixel_with_nearest_targets() -> None:
    probs, pred_masks, labels, target_masks = _one_image()
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=20.0, cost_dice=1.0, mask_loss="full_focal")  # OVSeg's
    cost = matcher._cost(probs, pred_masks, labels, target_masks, num_points=999)
    pred, target = pred_masks.flatten(1), target_masks[:, ::2, ::2].flatten(1)  # nearest at 1/2: every other pixel
    expected = -2.0 * probs[:, labels] + 20.0 * _pairwise(pred, target, _focal) + _pairwise(pred, target, _dice)
    torch.testing.assert_close(cost, expected)


def test_points_cost_weighs_class_bce_and_dice_on_shared_points() -> None:
    probs, pred_masks, labels, target_masks = _one_image(2)
    torch.manual_seed(7)
    cost = HungarianMatcher(cost_class=2.0, cost_mask=3.0, cost_dice=0.5)._cost(
        probs, pred_masks, labels, target_masks, num_points=11
    )
    torch.manual_seed(7)
    coords = torch.rand(1, 11, 2)  # the same points the matcher drew
    grid = 2 * coords[:, :, None] - 1  # (1, P, 1, 2): detectron2's point_sample, align_corners=False
    pred = torch.nn.functional.grid_sample(pred_masks[None], grid, align_corners=False)[0, :, :, 0]
    target = torch.nn.functional.grid_sample(target_masks[None], grid, align_corners=False)[0, :, :, 0]
    expected = -2.0 * probs[:, labels] + 3.0 * _pairwise(pred, target, _bce) + 0.5 * _pairwise(pred, target, _dice)
    torch.testing.assert_close(cost, expected)


def test_forward_uses_the_num_points_it_was_given(monkeypatch) -> None:
    seen: list[int] = []
    original = HungarianMatcher._cost

    def spy(self, probs, pred_masks, labels, target_masks, num_points):
        seen.append(num_points)
        return original(self, probs, pred_masks, labels, target_masks, num_points)

    monkeypatch.setattr(HungarianMatcher, "_cost", spy)
    outputs = {"pred_logits": torch.randn(1, 4, 3), "pred_masks": torch.randn(1, 4, 8, 8)}
    targets = [{"labels": torch.tensor([0]), "masks": torch.ones(1, 8, 8)}]
    HungarianMatcher(num_points=5)(outputs, targets)
    HungarianMatcher()(outputs, targets)
    assert seen == [5, 64]  # 8 x 8 masks: 0.77 * 64 = 49 points, floored at 64


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"cost_class": 0, "cost_mask": 0, "cost_dice": 0},
         "at least one of cost_class, cost_mask, cost_dice must be non-zero"),
        ({"num_points": 0}, "num_points must be positive or None (scaled to the mask size), got 0"),
        ({"mask_loss": "dice"}, "mask_loss must be one of points_bce, full_focal, got 'dice'"),
    ],
)  # fmt: skip
def test_bad_matcher_settings_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as error:
        HungarianMatcher(**kwargs)
    assert str(error.value) == message


@pytest.mark.parametrize("costs", [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)])
def test_any_single_non_zero_weight_and_one_point_are_accepted(costs: tuple[float, float, float]) -> None:
    matcher = HungarianMatcher(*costs, num_points=1)
    assert (matcher.cost_class, matcher.cost_mask, matcher.cost_dice, matcher.num_points) == (*costs, 1)


def test_mask_sizes_of_one_pixel_are_valid_and_zero_is_named() -> None:
    assert points_for_mask_size(1, 1) == 64
    for height, width in ((0, 4), (4, 0)):
        with pytest.raises(ValueError) as error:
            points_for_mask_size(height, width)
        assert str(error.value) == f"mask size must be positive, got {height} x {width}"


@pytest.mark.parametrize(
    "inputs, coords",
    [((1, 1, 4, 4), (1, 3, 3)), ((1, 1, 4, 4), (1, 3)), ((1, 4, 4), (1, 3, 2))],
)
def test_point_sample_names_each_bad_shape(inputs: tuple, coords: tuple) -> None:
    with pytest.raises(ValueError) as error:
        point_sample(torch.zeros(inputs), torch.zeros(coords))
    assert str(error.value) == (
        f"point_sample expects inputs (N, C, H, W) and point_coords (N, P, 2); got {inputs} and {coords}"
    )


def _outputs(batch: int = 2, queries: int = 3, prompts: int = 2) -> dict[str, torch.Tensor]:
    return {"pred_logits": torch.zeros(batch, queries, prompts + 1), "pred_masks": torch.zeros(batch, queries, 4, 4)}


def _target(labels: list[int]) -> dict[str, torch.Tensor]:
    return {"labels": torch.tensor(labels, dtype=torch.int64), "masks": torch.zeros(len(labels), 4, 4)}


@pytest.mark.parametrize(
    "outputs, targets, message",
    [
        ({"pred_logits": torch.zeros(2, 3), "pred_masks": torch.zeros(2, 3, 4, 4)}, [_target([0])] * 2,
         "pred_logits must be (B, Q, M + 1) with the no-object column last; got (2, 3)"),
        ({"pred_logits": torch.zeros(2, 3, 0), "pred_masks": torch.zeros(2, 3, 4, 4)}, [_target([0])] * 2,
         "pred_logits must be (B, Q, M + 1) with the no-object column last; got (2, 3, 0)"),
        ({"pred_logits": torch.zeros(2, 3, 3), "pred_masks": torch.zeros(2, 4, 4, 4)}, [_target([0])] * 2,
         "pred_masks must be (B, Q, h, w) with the B, Q of pred_logits (2, 3, 3); got (2, 4, 4, 4)"),
        (_outputs(batch=2, queries=5), [_target([0])] * 3, "got 3 targets for a batch of 2 predictions"),
        (_outputs(), [_target([0]), {"labels": torch.tensor([0])}],
         "target 1 needs the keys 'labels' and 'masks'; got ['labels']"),
        (_outputs(), [_target([0]), {"masks": torch.zeros(1, 4, 4)}],
         "target 1 needs the keys 'labels' and 'masks'; got ['masks']"),
        (_outputs(), [_target([0]), {"labels": torch.tensor([0.0]), "masks": torch.zeros(1, 4, 4)}],
         "target 1 labels must be a 1-D integer tensor; got torch.float32 (1,)"),
        (_outputs(), [_target([0]), {"labels": torch.tensor([True]), "masks": torch.zeros(1, 4, 4)}],
         "target 1 labels must be a 1-D integer tensor; got torch.bool (1,)"),
        (_outputs(), [_target([]), _target([0, 2])], "target 1 labels must index its prompts, 0..1; got [0, 2]"),
    ],
)  # fmt: skip
def test_bad_outputs_and_targets_get_their_exact_messages(outputs: dict, targets: list, message: str) -> None:
    with pytest.raises(ValueError) as error:
        validate_outputs_and_targets(outputs, targets)
    assert str(error.value) == message


def test_a_label_on_a_padded_column_is_found_among_valid_ones() -> None:
    outputs = _outputs(batch=1, queries=3, prompts=3)
    outputs["pred_logits"][0, :, 2] = float("-inf")  # image 0 has two prompts, padded to three
    outputs["pred_logits"][0, 0, 1] = float("-inf")  # one query's -inf does not make a column padded
    with pytest.raises(ValueError) as error:
        validate_outputs_and_targets(outputs, [_target([0, 1, 2])])
    assert str(error.value) == (
        "target 0 labels [2] point at padded prompt columns (-inf for every query); labels must be < that image's "
        "number of prompts"
    )
    validate_outputs_and_targets(outputs, [_target([0, 1])])


def test_point_sample_keeps_the_inputs_dtype() -> None:
    image = torch.arange(4, dtype=torch.float64).reshape(1, 1, 2, 2)
    sampled = point_sample(image, torch.tensor([[[0.25, 0.75]]]))  # float32 points, pixel (0, 1)'s centre
    assert sampled.dtype == torch.float64 and sampled.item() == 2.0


def test_an_image_without_prompts_is_a_valid_batch_of_no_object_only() -> None:
    outputs = {"pred_logits": torch.zeros(1, 3, 1), "pred_masks": torch.zeros(1, 3, 4, 4)}  # M = 0
    validate_outputs_and_targets(outputs, [_target([])])
