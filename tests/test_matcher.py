"""Hungarian matcher and point helpers: known permutations recovered, empty and padded cases, sampling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from train.matcher import HungarianMatcher, batch_dice_cost, batch_sigmoid_ce_cost, point_sample, points_for_mask_size

NEG_INF = float("-inf")


def disc_masks(count: int, size: int) -> torch.Tensor:
    """(count, size, size) bool discs at random places: distinct, overlapping shapes like real objects."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centres = torch.randint(size // 4, 3 * size // 4, (count, 2))
    radii = torch.randint(size // 8, size // 3, (count,))
    discs = [((xx - cx) ** 2 + (yy - cy) ** 2) < r * r for (cx, cy), r in zip(centres.tolist(), radii.tolist())]
    return torch.stack(discs)


def upsample(masks: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest upsampling: the targets at image resolution, ``factor`` x the prediction's."""
    return F.interpolate(masks[None].float(), scale_factor=factor, mode="nearest")[0].bool()


def outputs_matching(
    targets: list[dict], perms: list[torch.Tensor], num_queries: int, num_prompts: list[int], size: int
) -> dict:
    """Predictions where query perms[b][k] equals target k of image b; other queries predict no-object."""
    batch, m_max = len(targets), max(num_prompts)
    logits = torch.full((batch, num_queries, m_max + 1), -5.0)
    logits[:, :, -1] = 5.0  # no-object by default
    masks = torch.full((batch, num_queries, size, size), -10.0)
    for b, (target, perm) in enumerate(zip(targets, perms)):
        logits[b, :, num_prompts[b] : m_max] = NEG_INF  # padded prompt columns
        for k, query in enumerate(perm.tolist()):
            logits[b, query, -1] = -5.0
            logits[b, query, target["labels"][k]] = 5.0
            low_res = F.interpolate(target["masks"][k][None, None].float(), size=(size, size), mode="area")[0, 0]
            masks[b, query] = 20.0 * (2.0 * low_res - 1.0)
    return {"pred_logits": logits, "pred_masks": masks}


def test_points_for_mask_size_follows_mask2former_density_with_cap_and_floor() -> None:
    assert points_for_mask_size(128, 128) == 112 * 112  # Mask2Former's setting at 512-px crops
    assert points_for_mask_size(256, 256) == 112 * 112  # capped
    assert points_for_mask_size(32, 32) == 784
    assert points_for_mask_size(2, 2) == 64  # floored
    assert points_for_mask_size(32, 48) > points_for_mask_size(32, 32)
    with pytest.raises(ValueError, match="positive"):
        points_for_mask_size(0, 32)


def test_point_sample_at_pixel_centres_returns_the_pixels() -> None:
    image = torch.randn(2, 3, 6, 10)  # non-square, so an x/y swap fails
    ys, xs = torch.meshgrid(torch.arange(6), torch.arange(10), indexing="ij")
    coords = torch.stack([(xs + 0.5) / 10, (ys + 0.5) / 6], dim=-1).reshape(1, -1, 2).expand(2, -1, -1)
    torch.testing.assert_close(point_sample(image, coords), image.reshape(2, 3, -1))


def test_point_sample_matches_bilinear_interpolate_at_output_pixel_centres() -> None:
    image = torch.randn(1, 2, 8, 12)
    resized = F.interpolate(image, size=(4, 6), mode="bilinear", align_corners=False)
    ys, xs = torch.meshgrid(torch.arange(4), torch.arange(6), indexing="ij")
    coords = torch.stack([(xs + 0.5) / 6, (ys + 0.5) / 4], dim=-1).reshape(1, -1, 2)
    torch.testing.assert_close(point_sample(image, coords), resized.reshape(1, 2, -1))


def test_batch_costs_match_pairwise_definitions() -> None:
    preds, targets = torch.randn(4, 50), (torch.rand(3, 50) > 0.5).float()
    bce, dice = batch_sigmoid_ce_cost(preds, targets), batch_dice_cost(preds, targets)
    for q in range(4):
        for k in range(3):
            expected_bce = F.binary_cross_entropy_with_logits(preds[q], targets[k])
            p = preds[q].sigmoid()
            expected_dice = 1 - (2 * (p * targets[k]).sum() + 1) / (p.sum() + targets[k].sum() + 1)
            torch.testing.assert_close(bce[q, k], expected_bce)
            torch.testing.assert_close(dice[q, k], expected_dice)


def test_matcher_recovers_known_permutation_with_padded_prompts_and_repeated_labels() -> None:
    num_prompts = [2, 4]  # image 0 has two padded prompt columns
    # Repeated labels: only the mask costs can tell those targets apart.
    targets = [
        {"labels": torch.tensor([1, 1, 0]), "masks": upsample(disc_masks(3, 16), 4)},
        {"labels": torch.tensor([3, 0, 2, 3]), "masks": upsample(disc_masks(4, 16), 4)},
    ]
    perms = [torch.tensor([5, 0, 3]), torch.tensor([2, 7, 4, 1])]
    outputs = outputs_matching(targets, perms, num_queries=8, num_prompts=num_prompts, size=16)
    indices = HungarianMatcher(num_points=300)(outputs, targets)
    assert len(indices) == 2
    for (pred_idx, tgt_idx), perm in zip(indices, perms):
        assert pred_idx.dtype == tgt_idx.dtype == torch.int64
        assert perm[tgt_idx].tolist() == pred_idx.tolist()
        assert sorted(tgt_idx.tolist()) == list(range(len(perm)))


def test_matcher_uses_mask_costs_not_only_class() -> None:
    """Two targets with the same prompt: swapping their predicted masks swaps the assignment."""
    masks = upsample(disc_masks(2, 16), 4)
    targets = [{"labels": torch.tensor([0, 0]), "masks": masks}]
    matcher = HungarianMatcher(num_points=300)
    straight = matcher(outputs_matching(targets, [torch.tensor([0, 1])], 3, [1], 16), targets)[0]
    swapped = matcher(outputs_matching(targets, [torch.tensor([1, 0])], 3, [1], 16), targets)[0]
    assert dict(zip(straight[1].tolist(), straight[0].tolist())) == {0: 0, 1: 1}
    assert dict(zip(swapped[1].tolist(), swapped[0].tolist())) == {0: 1, 1: 0}


def test_matcher_handles_images_without_targets() -> None:
    targets = [
        {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 64, 64, dtype=torch.bool)},
        {"labels": torch.tensor([1, 0]), "masks": upsample(disc_masks(2, 16), 4)},
    ]
    outputs = outputs_matching(targets, [torch.tensor([], dtype=torch.int64), torch.tensor([3, 1])], 4, [2, 2], 16)
    (empty_pred, empty_tgt), (pred_idx, tgt_idx) = HungarianMatcher(num_points=200)(outputs, targets)
    assert empty_pred.shape == empty_tgt.shape == (0,) and empty_pred.dtype == torch.int64
    assert dict(zip(tgt_idx.tolist(), pred_idx.tolist())) == {0: 3, 1: 1}


def test_matcher_rejects_labels_in_padded_or_missing_columns() -> None:
    masks = upsample(disc_masks(1, 8), 4)
    one_target = {"labels": torch.tensor([0]), "masks": masks}
    outputs = outputs_matching([one_target] * 2, [torch.tensor([0])] * 2, 2, [1, 3], 8)
    matcher = HungarianMatcher(num_points=64)
    with pytest.raises(ValueError, match="padded prompt columns"):  # image 0 has 1 prompt of M_max = 3
        matcher(outputs, [{"labels": torch.tensor([2]), "masks": masks}, {"labels": torch.tensor([0]), "masks": masks}])
    with pytest.raises(ValueError, match="must index its prompts"):  # column 3 is no-object, not a prompt
        matcher(outputs, [{"labels": torch.tensor([0]), "masks": masks}, {"labels": torch.tensor([3]), "masks": masks}])
    with pytest.raises(ValueError, match="1 targets for a batch of 2"):
        matcher(outputs, [{"labels": torch.tensor([0]), "masks": masks}])
    with pytest.raises(ValueError, match="K = 1 labels"):
        matcher(outputs, [{"labels": torch.tensor([0]), "masks": masks.repeat(2, 1, 1)}] * 2)


def test_matcher_is_float32_under_autocast() -> None:
    targets = [{"labels": torch.tensor([0, 1, 1]), "masks": upsample(disc_masks(3, 16), 4)}]
    perm = torch.tensor([2, 0, 4])
    outputs = outputs_matching(targets, [perm], 6, [2], 16)
    low_precision = {key: value.bfloat16() for key, value in outputs.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pred_idx, tgt_idx = HungarianMatcher(num_points=300)(low_precision, targets)[0]
    assert perm[tgt_idx].tolist() == pred_idx.tolist()


@pytest.mark.parametrize("mask_loss", ["points_bce", "full_focal"])
def test_the_class_cost_alone_decides_between_queries_with_the_same_mask(mask_loss: str) -> None:
    """Two queries with one mask: the target goes to the query that gives its class the higher probability
    (cost -p), whatever the mask costs, which are equal for both."""
    masks = torch.zeros(1, 2, 16, 16)
    masks[:, :, 4:12, 4:12] = 3.0  # the same mask logits for both queries
    logits = torch.tensor([[[0.0, 4.0, 0.0], [4.0, 0.0, 0.0]]])  # query 0 says class 1, query 1 says class 0
    target = [{"labels": torch.tensor([1]), "masks": torch.zeros(1, 16, 16, dtype=torch.bool)}]
    target[0]["masks"][0, 4:12, 4:12] = True
    matcher = HungarianMatcher(mask_loss=mask_loss)
    [(queries, targets)] = matcher({"pred_logits": logits, "pred_masks": masks}, target)
    assert queries.tolist() == [0] and targets.tolist() == [0]
    target[0]["labels"] = torch.tensor([0])
    [(queries, _)] = matcher({"pred_logits": logits, "pred_masks": masks}, target)
    assert queries.tolist() == [1]
