"""The set criterion's parts with hand-computed values or MaskFormer's formulas written out again
(train/losses.py): the focal loss, the full-mask (MaskFormer) losses, target points across images, the
settings' limits and Mask2Former's defaults, the messages."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.messages import raises_exactly
from train import losses
from train.losses import SetCriterion, sigmoid_focal_loss

LN2 = math.log(2.0)


def _fixed_matcher(indices):
    return lambda outputs, targets: indices


def _pair(pred: list[int], tgt: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(pred, dtype=torch.int64), torch.tensor(tgt, dtype=torch.int64)


def test_focal_loss_by_hand() -> None:
    # logit 0: p = 1/2, CE = ln 2, (1 - p_t)^2 = 1/4; alpha 1/4 for a positive, 3/4 for a negative label.
    logits = torch.zeros(2, 2)
    labels = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    per_mask = [LN2 / 16, (3 * LN2 / 16 + LN2 / 16) / 2]  # mean over each mask's two points
    expected = (per_mask[0] + per_mask[1]) / 4.0  # summed over masks, divided by num_masks = 4
    assert sigmoid_focal_loss(logits, labels, 4.0).item() == pytest.approx(expected, rel=1e-6)


def _maskformer_focal(inputs, targets, num_masks, alpha=0.25, gamma=2.0):
    """MaskFormer's mask_former/modeling/criterion.py sigmoid_focal_loss, line for line."""
    prob = inputs.sigmoid()
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (alpha_t * loss).mean(1).sum() / num_masks


def test_focal_loss_is_maskformers_for_any_gamma_and_alpha() -> None:
    # gamma = 2 squares away the sign of (1 - p_t): an odd gamma checks p_t itself
    logits = torch.randn(3, 5, generator=torch.Generator().manual_seed(2))
    labels = (torch.rand(3, 5, generator=torch.Generator().manual_seed(3)) > 0.5).float()
    for alpha, gamma in ((0.25, 2.0), (0.5, 1.0), (0.75, 3.0)):
        torch.testing.assert_close(
            sigmoid_focal_loss(logits, labels, 2.0, alpha=alpha, gamma=gamma),
            _maskformer_focal(logits, labels, 2.0, alpha=alpha, gamma=gamma),
        )


def _maskformer_dice(inputs, targets, num_masks):
    inputs = inputs.sigmoid()
    numerator = 2 * (inputs * targets).sum(-1)
    denominator = inputs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def test_full_mask_losses_follow_maskformer_across_images_of_different_sizes() -> None:
    torch.manual_seed(0)
    pred_masks = torch.randn(4, 4, 4, 4)  # (B, Q, h, w)
    targets = [
        {"labels": torch.tensor([0]), "masks": torch.rand(1, 8, 8) > 0.5},
        {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 8, 8, dtype=torch.bool)},
        {"labels": torch.tensor([1, 0]), "masks": torch.rand(2, 12, 16) > 0.5},
        {"labels": torch.tensor([0]), "masks": torch.rand(1, 4, 4) > 0.5},
    ]
    indices = [_pair([2], [0]), _pair([], []), _pair([3, 0], [1, 0]), _pair([1], [0])]
    criterion = SetCriterion(_fixed_matcher(indices), mask_loss="full_focal")
    got = criterion.loss_masks(pred_masks, targets, indices, num_masks=3.0)
    focal = dice = 0.0
    for b, (pred, tgt) in ((0, indices[0]), (2, indices[2]), (3, indices[3])):
        logits = F.interpolate(pred_masks[b, pred][:, None], size=targets[b]["masks"].shape[-2:], mode="bilinear",
                               align_corners=False)[:, 0].flatten(1)  # fmt: skip
        target = targets[b]["masks"][tgt].float().flatten(1)
        focal += _maskformer_focal(logits, target, 3.0)
        dice += _maskformer_dice(logits, target, 3.0)
    torch.testing.assert_close(got["loss_mask"], focal)
    torch.testing.assert_close(got["loss_dice"], dice)


def test_target_points_follow_each_image_in_turn() -> None:
    half = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2)  # (2, 4): the right half is 1
    targets = [{"masks": half[None]}, {"masks": torch.zeros(0, 2, 4)}, {"masks": half[None]}, {"masks": half[None]}]
    indices = [_pair([0], [0]), _pair([], []), _pair([1], [0]), _pair([0], [0])]
    coords = torch.tensor([[[0.25, 0.5]], [[0.25, 0.5]], [[0.75, 0.5]]])  # (N=3, P=1, (x, y))
    points = SetCriterion._target_points(targets, indices, coords)
    assert points.tolist() == [[0.0], [0.0], [1.0]]


def test_mask2formers_defaults_and_the_settings_limits() -> None:
    criterion = SetCriterion(_fixed_matcher([]))
    assert criterion.weight_dict == {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
    assert (criterion.no_object_weight, criterion.oversample_ratio, criterion.importance_sample_ratio) == (
        0.1, 3.0, 0.75)  # fmt: skip
    assert (criterion.num_points, criterion.mask_loss) == (None, "points_bce")
    for accepted in ({"num_points": 1}, {"oversample_ratio": 1.0}, {"importance_sample_ratio": 0.0},
                     {"importance_sample_ratio": 1.0}):  # fmt: skip
        SetCriterion(_fixed_matcher([]), **accepted)
    for setting, message in (
        ({"mask_loss": "l1"}, "mask_loss must be one of points_bce, full_focal, got 'l1'"),
        ({"num_points": 0}, "num_points must be positive or None (scaled to the mask size), got 0"),
        ({"oversample_ratio": 0.5}, "oversample_ratio must be >= 1, got 0.5"),
    ):
        with raises_exactly(message):
            SetCriterion(_fixed_matcher([]), **setting)


def test_the_number_of_points_set_is_the_number_sampled(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = []
    sample = losses.uncertain_point_coords

    def spy(logits, num_points, *args):
        asked.append(num_points)
        return sample(logits, num_points, *args)

    monkeypatch.setattr(losses, "uncertain_point_coords", spy)
    indices = [_pair([0], [0])]
    targets = [{"labels": torch.tensor([0]), "masks": torch.ones(1, 8, 8, dtype=torch.bool)}]
    SetCriterion(_fixed_matcher(indices), num_points=7).loss_masks(torch.randn(1, 2, 8, 8), targets, indices, 1.0)
    assert asked == [7]


def test_losses_are_float32_inside_an_autocast_region() -> None:
    # bfloat16 predictions, as a model run under autocast gives them: the terms are float32 all the same
    indices = [_pair([0], [0])]
    targets = [{"labels": torch.tensor([0]), "masks": torch.rand(1, 16, 16) > 0.5}]
    outputs = {"pred_logits": torch.randn(1, 3, 2).bfloat16(), "pred_masks": torch.randn(1, 3, 16, 16).bfloat16()}
    criterion = SetCriterion(_fixed_matcher(indices), num_points=64)
    torch.manual_seed(1)
    plain = criterion(outputs, targets)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = criterion(outputs, targets)
    for key, value in plain.items():
        assert inside[key].dtype == torch.float32
        torch.testing.assert_close(inside[key], value, rtol=0, atol=0)


def test_criterion_messages() -> None:
    criterion = SetCriterion(_fixed_matcher([]))
    with pytest.raises(ValueError, match="^total_loss needs at least one loss term$"):
        criterion.total_loss({})
    targets = [{"labels": torch.tensor([0]), "masks": torch.ones(1, 4, 4, dtype=torch.bool)}]
    outputs = {"pred_logits": torch.randn(1, 2, 2), "pred_masks": torch.randn(1, 2, 4, 4)}
    with pytest.raises(ValueError, match="^the matcher returned 0 index pairs for 1 targets$"):
        criterion(outputs, targets)
