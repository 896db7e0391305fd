"""Hungarian matching of stage-1 queries to ground-truth masks (Mask2Former's matcher, open-vocabulary).

Why a matcher: the decoder's Q queries are an unordered set, so before any loss can be computed each
ground-truth mask must be paired with exactly one query. The pairing minimises Mask2Former's cost
``cost_class * -p(prompt) + cost_mask * BCE + cost_dice * dice``, solved exactly by
``scipy.optimize.linear_sum_assignment`` one image at a time.

Open vocabulary: an image's "classes" are the indices of its own prompt list. In a batch the prompt
lists are padded to ``M_max``: ``pred_logits`` is (B, Q, M_max + 1), the padded prompt columns of an
image hold -inf (softmax probability 0) and the last column, index ``M_max``, is no-object.

The mask costs are computed on ``num_points`` random points shared by predictions and targets
(Mask2Former's trick): the cost of a pair is then independent of the mask resolution, and target
masks may be at any resolution (e.g. the image's, 4x the prediction's) as long as they cover the same
extent as the prediction. This module also holds the point helpers (:func:`point_sample`,
:func:`points_for_mask_size`) and the input checks that :mod:`train.losses` shares.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

UNMATCHABLE_COST = 1e8  # finite, so scipy accepts it, and larger than any real cost

# Mask2Former samples 112 * 112 = 12544 points per mask; at its 512-px ADE20K crops the masks are
# predicted at 1/4 resolution, 128 x 128 pixels, i.e. 0.77 points per mask pixel.
MASK2FORMER_POINTS = 112 * 112
MASK2FORMER_MASK_PIXELS = 128 * 128
MIN_POINTS = 64

Targets = Sequence[Mapping[str, Tensor]]
Indices = list[tuple[Tensor, Tensor]]


# "points_bce": Mask2Former's sigmoid BCE + dice on importance-sampled points; "full_focal": MaskFormer's
# (OVSeg's) sigmoid focal loss + dice on every pixel of the mask upsampled to the target's size.
MASK_LOSSES = ("points_bce", "full_focal")


def points_for_mask_size(height: int, width: int) -> int:
    """How many points to sample per mask for predicted masks of ``height`` x ``width`` pixels.

    Why scaled: Mask2Former's 12544 points were chosen for 128 x 128 masks; on the small masks of a
    fast synthetic run (32 x 32 at 128-px images) that is 12x more points than pixels and wastes
    time without adding information. The rule keeps Mask2Former's point density,
    ``round(12544 / (128 * 128) * height * width)``, capped at Mask2Former's 12544 (so 512-px and
    larger training is exactly Mask2Former) and floored at 64 so tiny masks still get a usable
    estimate. Examples: 32x32 -> 784, 40x40 -> 1225, 64x64 -> 3136, 128x128 and up -> 12544.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"mask size must be positive, got {height} x {width}")
    density = MASK2FORMER_POINTS / MASK2FORMER_MASK_PIXELS
    return int(min(MASK2FORMER_POINTS, max(MIN_POINTS, round(density * height * width))))


def point_sample(inputs: Tensor, point_coords: Tensor) -> Tensor:
    """Bilinearly sample ``inputs`` at normalised points (detectron2's / Mask2Former's ``point_sample``).

    inputs: (N, C, H, W); point_coords: (N, P, 2) with (x, y) in [0, 1] x [0, 1], where 0 and 1 are
    the outer edges of the image (``align_corners=False``: pixel i's centre is (i + 0.5) / W).
    Returns (N, C, P). Outside the pixel centres' hull the image is blended with zero padding, as in
    Mask2Former.
    """
    if inputs.dim() != 4 or point_coords.dim() != 3 or point_coords.shape[-1] != 2:
        raise ValueError(
            f"point_sample expects inputs (N, C, H, W) and point_coords (N, P, 2); got {tuple(inputs.shape)} "
            f"and {tuple(point_coords.shape)}"
        )
    grid = (2.0 * point_coords - 1.0).to(inputs.dtype).unsqueeze(2)  # (N, P, 1, 2) in [-1, 1]
    sampled = F.grid_sample(inputs, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return sampled.squeeze(3)  # (N, C, P, 1) -> (N, C, P)


def validate_outputs_and_targets(outputs: Mapping[str, Tensor], targets: Targets) -> None:
    """Raise ValueError describing the first way ``outputs`` / ``targets`` break the loss contract.

    Why here: a label pointing at a padded prompt column would silently train towards a -inf logit
    (an infinite loss) and a mismatched batch would pair the wrong images, so both fail loudly.
    """
    for key in ("pred_logits", "pred_masks"):
        if key not in outputs:
            raise ValueError(f"model outputs need the key {key!r}; got keys {sorted(outputs)}")
    logits, masks = outputs["pred_logits"], outputs["pred_masks"]
    if logits.dim() != 3 or logits.shape[-1] < 1:
        raise ValueError(f"pred_logits must be (B, Q, M + 1) with the no-object column last; got {tuple(logits.shape)}")
    if masks.dim() != 4 or masks.shape[:2] != logits.shape[:2]:
        raise ValueError(
            f"pred_masks must be (B, Q, h, w) with the B, Q of pred_logits {tuple(logits.shape)}; "
            f"got {tuple(masks.shape)}"
        )
    if len(targets) != logits.shape[0]:
        raise ValueError(f"got {len(targets)} targets for a batch of {logits.shape[0]} predictions")
    num_prompts = logits.shape[-1] - 1
    for b, target in enumerate(targets):
        if "labels" not in target or "masks" not in target:
            raise ValueError(f"target {b} needs the keys 'labels' and 'masks'; got {sorted(target)}")
        labels, target_masks = target["labels"], target["masks"]
        if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(
                f"target {b} labels must be a 1-D integer tensor; got {labels.dtype} {tuple(labels.shape)}"
            )
        if target_masks.dim() != 3 or target_masks.shape[0] != labels.shape[0]:
            raise ValueError(
                f"target {b} masks must be (K, H, W) with K = {labels.shape[0]} labels; got {tuple(target_masks.shape)}"
            )
        if labels.numel() == 0:
            continue
        if int(labels.min()) < 0 or int(labels.max()) >= num_prompts:
            raise ValueError(f"target {b} labels must index its prompts, 0..{num_prompts - 1}; got {labels.tolist()}")
        padded = torch.isneginf(logits[b][:, labels.to(logits.device)]).all(dim=0)  # (K,)
        if bool(padded.any()):
            raise ValueError(
                f"target {b} labels {labels[padded.cpu()].tolist()} point at padded prompt columns "
                "(-inf for every query); labels must be < that image's number of prompts"
            )


def batch_sigmoid_ce_cost(pred_points: Tensor, target_points: Tensor) -> Tensor:
    """Mean sigmoid BCE of every prediction against every target: (Q, P), (K, P) -> (Q, K).

    Written as two matrix products (BCE is linear in the target) so that no (Q, K, P) tensor is built.
    """
    num_points = pred_points.shape[1]
    positive = F.binary_cross_entropy_with_logits(pred_points, torch.ones_like(pred_points), reduction="none")
    negative = F.binary_cross_entropy_with_logits(pred_points, torch.zeros_like(pred_points), reduction="none")
    cost = positive @ target_points.T + negative @ (1.0 - target_points).T
    return cost / num_points


def batch_dice_cost(pred_points: Tensor, target_points: Tensor) -> Tensor:
    """Dice loss (with Mask2Former's +1 smoothing) of every prediction against every target -> (Q, K)."""
    probs = pred_points.sigmoid()
    numerator = 2.0 * probs @ target_points.T
    denominator = probs.sum(-1)[:, None] + target_points.sum(-1)[None, :]
    return 1.0 - (numerator + 1.0) / (denominator + 1.0)


def batch_sigmoid_focal_cost(pred: Tensor, target: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """MaskFormer's matching cost (mask_former/modeling/matcher.py ``batch_sigmoid_focal_loss``): the mean
    sigmoid focal loss of every prediction against every target over all pixels: (Q, P), (K, P) -> (Q, K)."""
    prob = pred.sigmoid()
    positive = (1 - prob) ** gamma * F.binary_cross_entropy_with_logits(pred, torch.ones_like(pred), reduction="none")
    negative = prob**gamma * F.binary_cross_entropy_with_logits(pred, torch.zeros_like(pred), reduction="none")
    cost = alpha * positive @ target.T + (1 - alpha) * negative @ (1.0 - target).T
    return cost / pred.shape[1]


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to target masks, Mask2Former's cost and weights.

    ``num_points=None`` picks :func:`points_for_mask_size` of the predicted masks at every call.
    ``forward(outputs, targets)`` returns, per image, ``(pred_idx, tgt_idx)`` int64 CPU tensors of
    equal length min(Q, K_b) (empty for an image with no target): query ``pred_idx[i]`` predicts
    target mask ``tgt_idx[i]``. All costs are computed in float32, also under autocast.
    """

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_mask: float = 5.0,
        cost_dice: float = 5.0,
        num_points: int | None = None,
        mask_loss: str = "points_bce",
    ) -> None:
        super().__init__()
        if mask_loss not in MASK_LOSSES:
            raise ValueError(f"mask_loss must be one of {', '.join(MASK_LOSSES)}, got {mask_loss!r}")
        self.mask_loss = mask_loss
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("at least one of cost_class, cost_mask, cost_dice must be non-zero")
        if num_points is not None and num_points <= 0:
            raise ValueError(f"num_points must be positive or None (scaled to the mask size), got {num_points}")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    @torch.no_grad()
    def forward(self, outputs: Mapping[str, Tensor], targets: Targets) -> Indices:
        validate_outputs_and_targets(outputs, targets)
        device = outputs["pred_logits"].device
        with torch.autocast(device_type=device.type, enabled=False):
            probs = outputs["pred_logits"].float().softmax(-1)  # (B, Q, M + 1); padded columns -> 0
            pred_masks = outputs["pred_masks"].float()  # (B, Q, h, w)
            num_points = self.num_points or points_for_mask_size(*pred_masks.shape[-2:])
            indices: Indices = []
            for b, target in enumerate(targets):
                labels = target["labels"].to(device=device, dtype=torch.int64)
                if labels.numel() == 0:
                    empty = torch.empty(0, dtype=torch.int64)
                    indices.append((empty, empty.clone()))
                    continue
                cost = self._cost(probs[b], pred_masks[b], labels, target["masks"], num_points)
                if (
                    "proposal_mask" in outputs
                ):  # concat / text_queries: proposals made from padded prompts are not proposals
                    cost = cost.masked_fill(~outputs["proposal_mask"][b][:, None], UNMATCHABLE_COST)
                cost_np = cost.cpu().numpy()
                if not np.isfinite(cost_np).all():
                    raise ValueError(f"matching cost of image {b} is not finite: the predictions hold NaN or inf")
                pred_idx, tgt_idx = linear_sum_assignment(cost_np)
                pair = (torch.as_tensor(pred_idx, dtype=torch.int64), torch.as_tensor(tgt_idx, dtype=torch.int64))
                indices.append(pair)
        return indices

    def _cost(self, probs: Tensor, pred_masks: Tensor, labels: Tensor, target_masks: Tensor, num_points: int) -> Tensor:
        """(Q, K) cost of one image: probs (Q, M+1), pred_masks (Q, h, w), target_masks (K, H, W)."""
        cost_class = -probs[:, labels]  # (Q, K)
        target_masks = target_masks.to(device=pred_masks.device, dtype=torch.float32)
        if self.mask_loss == "full_focal":  # MaskFormer: targets resized to the predictions (nearest), every pixel
            target_pixels = F.interpolate(target_masks[None], size=pred_masks.shape[-2:], mode="nearest")[0]
            pred_pixels, target_pixels = pred_masks.flatten(1), target_pixels.flatten(1)  # (Q, hw), (K, hw)
            cost_mask = batch_sigmoid_focal_cost(pred_pixels, target_pixels)
            cost_dice = batch_dice_cost(pred_pixels, target_pixels)
            return self.cost_class * cost_class + self.cost_mask * cost_mask + self.cost_dice * cost_dice
        # One set of points for every mask of the image, so that the pairwise costs compare like with like.
        coords = torch.rand(1, num_points, 2, device=pred_masks.device)  # (1, P, 2)
        pred_points = point_sample(pred_masks[None], coords)[0]  # (1, Q, P) -> (Q, P)
        target_points = point_sample(target_masks[None], coords)[0]  # (1, K, P) -> (K, P)
        cost_mask = batch_sigmoid_ce_cost(pred_points, target_points)
        cost_dice = batch_dice_cost(pred_points, target_points)
        return self.cost_class * cost_class + self.cost_mask * cost_mask + self.cost_dice * cost_dice
