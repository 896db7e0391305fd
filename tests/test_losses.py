"""SetCriterion: hand-checked CE with padded prompts, mask losses, aux keys, gradients, optimisation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from train.losses import (
    SetCriterion,
    classification_targets,
    count_target_masks,
    dice_loss,
    sigmoid_ce_loss,
    uncertain_point_coords,
)
from train.matcher import HungarianMatcher

NEG_INF = float("-inf")


class FixedMatcher:
    """A matcher returning given indices, so that a loss can be checked by hand."""

    def __init__(self, indices: list[tuple[list[int], list[int]]]) -> None:
        self.indices = [(torch.tensor(p, dtype=torch.int64), torch.tensor(t, dtype=torch.int64)) for p, t in indices]

    def __call__(self, outputs: dict, targets: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return self.indices


def square_masks(count: int, size: int) -> torch.Tensor:
    """(count, size, size) bool masks: distinct axis-aligned rectangles covering a quarter to a half."""
    masks = torch.zeros(count, size, size, dtype=torch.bool)
    for k in range(count):
        top, left = torch.randint(0, size // 2, (2,)).tolist()
        masks[k, top : top + size // 2, left : left + size // 2] = True
    return masks


def upsample(masks: torch.Tensor, factor: int) -> torch.Tensor:
    return F.interpolate(masks[None].float(), scale_factor=factor, mode="nearest")[0].bool()


def empty_target(size: int = 32) -> dict:
    return {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, size, size, dtype=torch.bool)}


def test_ce_equals_hand_computed_value_with_padded_prompts_and_no_object_weight() -> None:
    # B=2, Q=3, M_max=2; image 1 has one prompt, so its column 1 is padding; column 2 is no-object.
    logits = torch.tensor(
        [
            [[2.0, 0.5, 0.1], [0.3, -1.0, 1.5], [-0.5, 1.2, 0.0]],
            [[0.2, NEG_INF, 1.0], [1.7, NEG_INF, -0.3], [-1.0, NEG_INF, 0.4]],
        ]
    )
    targets = [
        {"labels": torch.tensor([1, 0]), "masks": torch.ones(2, 8, 8)},
        {"labels": torch.tensor([0]), "masks": torch.ones(1, 8, 8)},
    ]
    matcher = FixedMatcher([([2, 0], [0, 1]), ([1], [0])])  # img 0: q2 -> prompt 1, q0 -> prompt 0; img 1: q1 -> 0
    outputs = {"pred_logits": logits, "pred_masks": torch.zeros(2, 3, 4, 4)}
    losses = SetCriterion(matcher, num_points=16)(outputs, targets)

    wanted = [[0, 2, 1], [2, 0, 2]]  # no-object = 2 for both images, although image 1 has only one prompt
    numerator = denominator = 0.0
    for b in range(2):
        for q in range(3):
            row = [v for v in logits[b, q].tolist() if v != NEG_INF]
            column = wanted[b][q]
            log_prob = logits[b, q, column].item() - math.log(sum(math.exp(v) for v in row))
            weight = 0.1 if column == 2 else 1.0
            numerator -= weight * log_prob
            denominator += weight
    assert losses["loss_ce"].item() == pytest.approx(numerator / denominator, rel=1e-6)


def test_proposals_made_from_padded_prompts_never_enter_the_loss() -> None:
    """text_queries with padding: image 1 has one real prompt of two, so its proposal 1 is padding."""
    torch.manual_seed(0)
    from tests.test_modeling import TEXT_DIM, tiny_model, unit

    model = tiny_model(text_mode="text_queries").train()
    images = torch.randn(2, 3, 64, 64)
    outputs = model(images, unit(2, 2, TEXT_DIM), torch.tensor([[True, True], [True, False]]))
    assert outputs["proposal_mask"].tolist() == [[True, True], [True, False]]
    targets = [
        {"labels": torch.tensor([0]), "masks": torch.ones(1, 64, 64)},
        {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 64, 64)},
    ]
    criterion = SetCriterion(HungarianMatcher(num_points=16), num_points=16)
    layer = {
        "pred_logits": outputs["pred_logits"],
        "pred_masks": outputs["pred_masks"],
        "proposal_mask": outputs["proposal_mask"],
    }
    base = criterion(layer, targets)["loss_ce"]
    garbage = dict(layer, pred_logits=layer["pred_logits"].clone())
    garbage["pred_logits"][1, 1] = torch.tensor([50.0, float("-inf"), -50.0])  # the padded proposal: far from no-object
    assert criterion(garbage, targets)["loss_ce"].item() == pytest.approx(base.item(), rel=1e-6)
    grads = torch.autograd.grad(base, outputs["pred_logits"])[0]
    assert torch.all(grads[1, 1] == 0) and grads[1, 0].abs().sum() > 0


def test_classification_targets_put_no_object_in_the_last_padded_column_for_every_image() -> None:
    none = torch.tensor([], dtype=torch.int64)
    indices = [(torch.tensor([1]), torch.tensor([0])), (none, none), (torch.tensor([0, 2]), torch.tensor([1, 0]))]
    targets = [{"labels": torch.tensor([0])}, {"labels": none}, {"labels": torch.tensor([3, 1])}]
    classes = classification_targets(indices, targets, num_queries=3, num_columns=5, device=torch.device("cpu"))
    assert classes.tolist() == [[4, 0, 4], [4, 4, 4], [1, 4, 3]]


def test_mask_losses_near_zero_for_perfect_masks_and_large_for_inverted_ones() -> None:
    low_res = square_masks(2, 32)
    targets = [{"labels": torch.tensor([0, 1]), "masks": upsample(low_res, 4)}]  # image resolution: 4x
    logits = torch.tensor([[[9.0, -9.0, -9.0], [-9.0, 9.0, -9.0]]])
    criterion = SetCriterion(FixedMatcher([([0, 1], [0, 1])]))
    perfect = criterion({"pred_logits": logits, "pred_masks": 20.0 * (2.0 * low_res[None].float() - 1.0)}, targets)
    inverted = criterion({"pred_logits": logits, "pred_masks": -20.0 * (2.0 * low_res[None].float() - 1.0)}, targets)
    # Not exactly 0: bilinearly sampled targets are soft in a one-pixel band at the boundaries, where
    # importance sampling puts most points (Mask2Former has the same floor).
    assert perfect["loss_mask"] < 0.2 and perfect["loss_dice"] < 0.05
    assert inverted["loss_mask"] > 8.0 and inverted["loss_dice"] > 0.9
    assert perfect["loss_ce"] < 1e-3


def test_mask_loss_functions_normalise_by_the_number_of_masks() -> None:
    logits, labels = torch.tensor([[2.0, -1.0], [0.0, 3.0]]), torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    per_mask_bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(1)
    assert sigmoid_ce_loss(logits, labels, 4.0).item() == pytest.approx(per_mask_bce.sum().item() / 4.0)
    probs = logits.sigmoid()
    per_mask_dice = 1 - (2 * (probs * labels).sum(1) + 1) / (probs.sum(1) + labels.sum(1) + 1)
    assert dice_loss(logits, labels, 2.0).item() == pytest.approx(per_mask_dice.sum().item() / 2.0)
    cpu = torch.device("cpu")
    assert count_target_masks([{"labels": torch.tensor([0, 1])}, {"labels": torch.tensor([2])}], cpu) == 3.0
    assert count_target_masks([{"labels": torch.zeros(0, dtype=torch.int64)}], torch.device("cpu")) == 1.0  # clamped


def test_importance_sampling_concentrates_points_where_logits_are_uncertain() -> None:
    xs = torch.linspace(-1.0, 1.0, 64)
    ramp = (10.0 * xs).expand(64, 64)[None, None].repeat(3, 1, 1, 1)  # (3, 1, 64, 64), boundary at x = 0.5
    uncertain = uncertain_point_coords(ramp, 400, oversample_ratio=3.0, importance_sample_ratio=0.75)
    uniform = uncertain_point_coords(ramp, 400, oversample_ratio=3.0, importance_sample_ratio=0.0)
    assert uncertain.shape == uniform.shape == (3, 400, 2)
    assert 0.0 <= uncertain.min() and uncertain.max() <= 1.0
    near_boundary = (uncertain[:, :300, 0] - 0.5).abs()  # the 75 % chosen by uncertainty come first
    assert near_boundary.max() < 0.3  # 900 candidates, 300 kept: the central third
    assert (uniform[..., 0] - 0.5).abs().mean() > 0.2  # uniform: mean |x - 0.5| is 0.25


def test_aux_losses_have_suffixed_keys_and_total_is_the_weighted_sum() -> None:
    def layer() -> dict:
        return {"pred_logits": torch.randn(1, 4, 3), "pred_masks": torch.randn(1, 4, 8, 8)}

    outputs = {**layer(), "aux_outputs": [layer(), layer()]}
    targets = [{"labels": torch.tensor([1, 0]), "masks": upsample(square_masks(2, 8), 4)}]
    criterion = SetCriterion(HungarianMatcher(num_points=64), weight_ce=2.0, weight_mask=5.0, weight_dice=3.0)
    losses = criterion(outputs, targets)
    assert set(losses) == {f"loss_{name}{suffix}" for name in ("ce", "mask", "dice") for suffix in ("", "_0", "_1")}
    assert all(value.dtype == torch.float32 and value.dim() == 0 for value in losses.values())
    expected = sum({"ce": 2.0, "mask": 5.0, "dice": 3.0}[key.split("_")[1]] * value for key, value in losses.items())
    torch.testing.assert_close(criterion.total_loss(losses), expected)
    assert criterion.weight("loss_dice_1") == 3.0
    with pytest.raises(ValueError, match="unknown loss key"):
        criterion.weight("loss_box")


def test_gradients_are_finite_with_padded_columns_and_empty_images() -> None:
    logits = torch.randn(3, 5, 4, requires_grad=True)
    masks = torch.randn(3, 5, 8, 8, requires_grad=True)
    padding = torch.tensor([[False, False, False, False], [False, True, True, False], [False, False, True, False]])
    padded_logits = logits.masked_fill(padding[:, None, :], NEG_INF)  # (B, Q, M + 1), as the model does
    targets = [
        {"labels": torch.tensor([2, 0, 1]), "masks": upsample(square_masks(3, 8), 4)},
        {"labels": torch.tensor([0]), "masks": upsample(square_masks(1, 8), 4)},
        empty_target(),
    ]
    criterion = SetCriterion(HungarianMatcher(num_points=64))
    losses = criterion({"pred_logits": padded_logits, "pred_masks": masks}, targets)
    criterion.total_loss(losses).backward()
    assert all(torch.isfinite(value) for value in losses.values())
    assert torch.isfinite(logits.grad).all() and torch.isfinite(masks.grad).all()
    assert (logits.grad[padding[:, None, :].expand_as(logits)] == 0).all()
    assert masks.grad[2].abs().sum() == 0  # no target in image 2: its masks get no gradient


def test_batch_without_any_target_gives_no_object_ce_and_zero_mask_losses() -> None:
    logits = torch.randn(2, 3, 3, requires_grad=True)
    masks = torch.randn(2, 3, 8, 8, requires_grad=True)
    criterion = SetCriterion(HungarianMatcher(num_points=64))
    losses = criterion({"pred_logits": logits, "pred_masks": masks}, [empty_target()] * 2)
    expected_ce = -F.log_softmax(logits.detach(), -1)[..., -1].mean()
    torch.testing.assert_close(losses["loss_ce"], expected_ce)
    assert losses["loss_mask"].item() == 0.0 and losses["loss_dice"].item() == 0.0
    (losses["loss_ce"] + losses["loss_mask"] + losses["loss_dice"]).backward()
    assert torch.isfinite(logits.grad).all()


def test_a_few_optimisation_steps_lower_the_total_loss() -> None:
    num_prompts = torch.tensor([3, 2])
    padding = torch.arange(4)[None, :] >= num_prompts[:, None]  # (B, M_max + 1); the no-object column stays
    padding[:, -1] = False
    params = [torch.zeros(2, 5, 4, requires_grad=True), torch.randn(2, 5, 8, 8, requires_grad=True)]
    aux_params = [torch.zeros(2, 5, 4, requires_grad=True), torch.randn(2, 5, 8, 8, requires_grad=True)]
    targets = [
        {"labels": torch.tensor([2, 0]), "masks": upsample(square_masks(2, 8), 4)},
        {"labels": torch.tensor([1]), "masks": upsample(square_masks(1, 8), 4)},
    ]
    criterion = SetCriterion(HungarianMatcher(num_points=64), num_points=64)
    optimiser = torch.optim.Adam(params + aux_params, lr=0.2)

    def total() -> torch.Tensor:
        def layer(logits: torch.Tensor, masks: torch.Tensor) -> dict:
            return {"pred_logits": logits.masked_fill(padding[:, None, :], NEG_INF), "pred_masks": masks}

        return criterion.total_loss(criterion({**layer(*params), "aux_outputs": [layer(*aux_params)]}, targets))

    initial = total().item()
    for _ in range(30):
        optimiser.zero_grad()
        loss = total()
        loss.backward()
        optimiser.step()
    assert total().item() < 0.3 * initial


def test_losses_are_float32_under_bfloat16_autocast() -> None:
    targets = [{"labels": torch.tensor([0, 1]), "masks": upsample(square_masks(2, 8), 4)}]
    outputs = {"pred_logits": torch.randn(1, 4, 3).bfloat16(), "pred_masks": torch.randn(1, 4, 8, 8).bfloat16()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = SetCriterion(HungarianMatcher(num_points=64))(outputs, targets)
    assert all(value.dtype == torch.float32 and torch.isfinite(value) for value in losses.values())


def _count_on_rank(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    """Rank 0 holds 4 target masks, rank 1 holds 1: both must divide by the global mean, (4 + 1) / 2."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        per_rank = [
            [{"labels": torch.tensor([0, 1, 0])}, {"labels": torch.tensor([1])}],
            [{"labels": torch.tensor([2])}, {"labels": torch.tensor([], dtype=torch.long)}],
        ]
        count = count_target_masks(per_rank[rank], torch.device("cpu"))
        (Path(out_dir) / f"rank{rank}.txt").write_text(repr(count))
    finally:
        dist.destroy_process_group()


def test_mask_count_is_all_reduced_over_two_gloo_processes(tmp_path) -> None:
    mp.spawn(_count_on_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    assert [float((tmp_path / f"rank{rank}.txt").read_text()) for rank in (0, 1)] == [2.5, 2.5]


def test_criterion_rejects_bad_arguments_and_inputs() -> None:
    matcher = HungarianMatcher(num_points=64)
    with pytest.raises(ValueError, match="no_object_weight"):
        SetCriterion(matcher, no_object_weight=0.0)
    with pytest.raises(ValueError, match="importance_sample_ratio"):
        SetCriterion(matcher, importance_sample_ratio=1.5)
    criterion = SetCriterion(matcher)
    with pytest.raises(ValueError, match="pred_masks"):
        criterion({"pred_logits": torch.randn(1, 2, 3)}, [empty_target()])
    aux_without_masks = {
        "pred_logits": torch.randn(1, 2, 3),
        "pred_masks": torch.randn(1, 2, 4, 4),
        "aux_outputs": [{"pred_logits": torch.randn(1, 2, 3)}],
    }
    with pytest.raises(ValueError, match="pred_masks"):
        criterion(aux_without_masks, [empty_target()])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_criterion_on_cuda_under_autocast_with_targets_on_the_cpu() -> None:
    device = torch.device("cuda")
    logits = torch.randn(2, 6, 4, device=device, requires_grad=True)
    masks = torch.randn(2, 6, 16, 16, device=device, requires_grad=True)
    targets = [{"labels": torch.tensor([0, 2]), "masks": upsample(square_masks(2, 16), 4)}, empty_target(64)]
    criterion = SetCriterion(HungarianMatcher())
    with torch.autocast("cuda", dtype=torch.bfloat16):
        padded_logits = logits.masked_fill(torch.arange(4, device=device) == 1, NEG_INF)  # prompt 1 is padding
        losses = criterion({"pred_logits": padded_logits, "pred_masks": masks}, targets)
    criterion.total_loss(losses).backward()
    for value in losses.values():
        assert value.dtype == torch.float32 and value.device.type == "cuda" and torch.isfinite(value)
    assert torch.isfinite(logits.grad).all() and torch.isfinite(masks.grad).all()
