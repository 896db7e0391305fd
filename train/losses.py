"""Stage-1 training loss: Mask2Former's set criterion over open-vocabulary prompts.

After :class:`train.matcher.HungarianMatcher` pairs queries with target masks, three terms are computed
for the final prediction and for every auxiliary (earlier-layer) prediction, each layer re-matched:

- ``loss_ce``: cross-entropy over the M_max + 1 columns of ``pred_logits``. A matched query's target is
  its mask's prompt index; every other query's target is no-object, the LAST column (index M_max of
  the padded batch, the same for every image whatever its own number of prompts). Class weights are
  1 for prompts and ``no_object_weight`` (0.1) for no-object, so the many unmatched queries do not
  drown the matched ones. Padded prompt columns are -inf: probability 0, never a target, zero gradient.
- ``loss_mask`` (sigmoid BCE) and ``loss_dice`` on ``num_points`` points per matched mask, chosen by
  Mask2Former's importance sampling (oversample 3x, keep the 75 % most uncertain, i.e. smallest
  |logit|, the rest uniform), summed over masks and divided by the number of target masks in the batch
  (averaged over DDP ranks, clamped at >= 1) so each mask weighs the same whatever the batch holds.

API choice: ``forward`` returns the UNWEIGHTED terms (``loss_ce``, ``loss_mask``, ``loss_dice`` and
``loss_ce_0``, ``loss_mask_0``, ... for ``outputs["aux_outputs"][0]``, ...), which is what one wants to
log; ``criterion.total_loss(losses)`` gives the weighted sum to back-propagate, with ``weight_dict``
(base key -> weight, the same weight for every layer) and ``weight(key)`` saying how.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from train.matcher import (
    MASK_LOSSES,
    Indices,
    Targets,
    point_sample,
    points_for_mask_size,
    validate_outputs_and_targets,
)

_LAYER_SUFFIX = re.compile(r"_\d+$")
IGNORE_INDEX = -100  # CE target of proposals that are padding


def sigmoid_ce_loss(point_logits: Tensor, point_labels: Tensor, num_masks: float) -> Tensor:
    """Per-mask mean BCE over its points, summed over masks, divided by num_masks: (N, P), (N, P) -> ()."""
    loss = F.binary_cross_entropy_with_logits(point_logits, point_labels, reduction="none")
    return loss.mean(1).sum() / num_masks


def dice_loss(point_logits: Tensor, point_labels: Tensor, num_masks: float) -> Tensor:
    """Per-mask dice loss (+1 smoothing, as Mask2Former), summed over masks, divided by num_masks."""
    probs = point_logits.sigmoid()
    numerator = 2.0 * (probs * point_labels).sum(-1)
    denominator = probs.sum(-1) + point_labels.sum(-1)
    loss = 1.0 - (numerator + 1.0) / (denominator + 1.0)
    return loss.sum() / num_masks


def sigmoid_focal_loss(
    logits: Tensor, labels: Tensor, num_masks: float, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """MaskFormer's mask loss (mask_former/modeling/criterion.py ``sigmoid_focal_loss``): per-mask mean focal
    loss over its pixels, summed over masks, divided by num_masks: (N, P), (N, P) -> ()."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    p_t = prob * labels + (1 - prob) * (1 - labels)
    loss = ce * (1 - p_t) ** gamma * (alpha * labels + (1 - alpha) * (1 - labels))
    return loss.mean(1).sum() / num_masks


def uncertainty(logits: Tensor) -> Tensor:
    """Mask2Former's point uncertainty: -|logit|, highest where the prediction is closest to 0.5."""
    return -logits.abs()


@torch.no_grad()
def uncertain_point_coords(
    mask_logits: Tensor, num_points: int, oversample_ratio: float, importance_sample_ratio: float
) -> Tensor:
    """Mask2Former's ``get_uncertain_point_coords_with_randomness``: (N, 1, h, w) -> (N, num_points, 2).

    Why: most of a mask's pixels are easy (far inside or outside); spending most points where the
    prediction is uncertain concentrates the loss on boundaries, while the uniform share keeps the
    whole mask supervised. Coordinates are (x, y) in [0, 1] for :func:`point_sample`.
    """
    num_masks = mask_logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    coords = torch.rand(num_masks, num_sampled, 2, device=mask_logits.device)  # (N, S, 2)
    point_uncertainty = uncertainty(point_sample(mask_logits, coords))[:, 0]  # (N, 1, S) -> (N, S)
    top = point_uncertainty.topk(num_uncertain, dim=1).indices  # (N, U)
    chosen = coords.gather(1, top[..., None].expand(-1, -1, 2))  # (N, U, 2)
    if num_random > 0:
        uniform = torch.rand(num_masks, num_random, 2, device=mask_logits.device)
        chosen = torch.cat([chosen, uniform], dim=1)
    return chosen


def classification_targets(
    indices: Indices, targets: Targets, num_queries: int, num_columns: int, device: torch.device
) -> Tensor:
    """(B, Q) int64 CE targets: the matched mask's prompt index, else no-object = ``num_columns - 1``.

    The no-object index is the padded batch's last column for EVERY image: an image with fewer
    prompts than M_max still has its no-object logit in column M_max (its own padded columns are -inf).
    """
    no_object = num_columns - 1
    classes = torch.full((len(targets), num_queries), no_object, dtype=torch.int64, device=device)
    for b, ((pred_idx, tgt_idx), target) in enumerate(zip(indices, targets)):
        if pred_idx.numel():
            classes[b, pred_idx.to(device)] = target["labels"].to(device=device, dtype=torch.int64)[tgt_idx.to(device)]
    return classes


def count_target_masks(targets: Targets, device: torch.device) -> float:
    """Number of target masks per rank, for normalising the mask losses (Mask2Former's ``num_masks``).

    Under torch.distributed the count is summed over ranks and divided by the world size, so every
    rank divides by the same mean count and the DDP-averaged gradient is that of the global batch.
    Clamped at 1 so a batch without any mask does not divide by zero.
    """
    count = torch.tensor([float(sum(int(t["labels"].numel()) for t in targets))], device=device)
    world_size = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(count)
        world_size = dist.get_world_size()
    return float(torch.clamp(count / world_size, min=1.0).item())


class SetCriterion(nn.Module):
    """Mask2Former's loss with open-vocabulary prompt columns (see the module docstring).

    matcher: called as ``matcher(layer_outputs, targets) -> [(pred_idx, tgt_idx)] * B``, normally a
    :class:`train.matcher.HungarianMatcher`. ``num_points=None`` picks :func:`points_for_mask_size`
    of the predicted masks. Targets should be on the predictions' device (they are moved otherwise).
    """

    def __init__(
        self,
        matcher: Callable[[Mapping[str, Tensor], Targets], Indices],
        no_object_weight: float = 0.1,
        weight_ce: float = 2.0,
        weight_mask: float = 5.0,
        weight_dice: float = 5.0,
        num_points: int | None = None,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        mask_loss: str = "points_bce",
    ) -> None:
        super().__init__()
        if mask_loss not in MASK_LOSSES:
            raise ValueError(f"mask_loss must be one of {', '.join(MASK_LOSSES)}, got {mask_loss!r}")
        self.mask_loss = mask_loss
        if not no_object_weight > 0:
            raise ValueError(
                f"no_object_weight must be > 0 (a batch without targets would divide by 0), got {no_object_weight}"
            )
        if num_points is not None and num_points <= 0:
            raise ValueError(f"num_points must be positive or None (scaled to the mask size), got {num_points}")
        if oversample_ratio < 1:
            raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
        if not 0.0 <= importance_sample_ratio <= 1.0:
            raise ValueError(f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}")
        self.matcher = matcher
        self.no_object_weight = no_object_weight
        self.weight_dict = {"loss_ce": weight_ce, "loss_mask": weight_mask, "loss_dice": weight_dice}
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio

    def forward(self, outputs: Mapping[str, object], targets: Targets) -> dict[str, Tensor]:
        """Unweighted float32 loss terms for the final and every auxiliary prediction (see module doc)."""
        layers = [outputs, *outputs.get("aux_outputs", [])]
        for layer in layers:
            validate_outputs_and_targets(layer, targets)
        device = outputs["pred_logits"].device
        with torch.autocast(device_type=device.type, enabled=False):
            num_masks = count_target_masks(targets, device)
            losses: dict[str, Tensor] = {}
            for i, layer in enumerate(layers):
                suffix = "" if i == 0 else f"_{i - 1}"
                for key, value in self._layer_losses(layer, targets, num_masks).items():
                    losses[key + suffix] = value
        return losses

    def weight(self, key: str) -> float:
        """The weight of a loss key, e.g. ``loss_dice_3`` -> ``weight_dict['loss_dice']``."""
        base = key if key in self.weight_dict else _LAYER_SUFFIX.sub("", key)
        if base not in self.weight_dict:
            raise ValueError(
                f"unknown loss key {key!r}; accepted: {sorted(self.weight_dict)} optionally suffixed _<layer>"
            )
        return self.weight_dict[base]

    def total_loss(self, losses: Mapping[str, Tensor]) -> Tensor:
        """The weighted sum of the terms returned by :meth:`forward`: the scalar to back-propagate."""
        if not losses:
            raise ValueError("total_loss needs at least one loss term")
        return sum(self.weight(key) * value for key, value in losses.items())  # type: ignore[return-value]

    def _layer_losses(self, layer: Mapping[str, Tensor], targets: Targets, num_masks: float) -> dict[str, Tensor]:
        indices = self.matcher(layer, targets)
        if len(indices) != len(targets):
            raise ValueError(f"the matcher returned {len(indices)} index pairs for {len(targets)} targets")
        return {
            "loss_ce": self.loss_ce(layer["pred_logits"], targets, indices, layer.get("proposal_mask")),
            **self.loss_masks(layer["pred_masks"], targets, indices, num_masks),
        }

    def loss_ce(
        self, pred_logits: Tensor, targets: Targets, indices: Indices, proposal_mask: Tensor | None = None
    ) -> Tensor:
        """Weighted CE over the M_max + 1 columns, no-object (last column) weighted ``no_object_weight``.

        ``proposal_mask`` (B, Q), False = a proposal made from a padded prompt (``concat`` and
        ``text_queries``): such proposals are not predictions at all, so they get no target and no loss.
        """
        logits = pred_logits.float()  # (B, Q, M + 1)
        num_queries, num_columns = logits.shape[1:]
        classes = classification_targets(indices, targets, num_queries, num_columns, logits.device)  # (B, Q)
        if proposal_mask is not None:
            classes = classes.masked_fill(~proposal_mask.to(classes.device), IGNORE_INDEX)
        class_weight = torch.ones(num_columns, device=logits.device)
        class_weight[-1] = self.no_object_weight
        return F.cross_entropy(
            logits.transpose(1, 2), classes, weight=class_weight, ignore_index=IGNORE_INDEX
        )  # (B, M+1, Q)

    def loss_masks(self, pred_masks: Tensor, targets: Targets, indices: Indices, num_masks: float) -> dict[str, Tensor]:
        """BCE and dice of every matched query's mask on importance-sampled points."""
        masks = pred_masks.float()  # (B, Q, h, w)
        batch_idx = torch.cat([torch.full_like(pred_idx, b) for b, (pred_idx, _) in enumerate(indices)])
        batch_idx = batch_idx.to(masks.device)
        pred_idx = torch.cat([pred_idx for pred_idx, _ in indices]).to(masks.device)
        if pred_idx.numel() == 0:
            zero = masks.sum() * 0.0  # keeps the graph (and DDP's used-parameter bookkeeping) intact
            return {"loss_mask": zero, "loss_dice": zero.clone()}
        matched = masks[batch_idx, pred_idx][:, None]  # (N, 1, h, w)
        if self.mask_loss == "full_focal":
            return self._full_mask_losses(matched, targets, indices, num_masks)
        num_points = self.num_points or points_for_mask_size(*masks.shape[-2:])
        with torch.no_grad():
            coords = uncertain_point_coords(matched, num_points, self.oversample_ratio, self.importance_sample_ratio)
            point_labels = self._target_points(targets, indices, coords)  # (N, P)
        point_logits = point_sample(matched, coords)[:, 0]  # (N, 1, P) -> (N, P)
        return {
            "loss_mask": sigmoid_ce_loss(point_logits, point_labels, num_masks),
            "loss_dice": dice_loss(point_logits, point_labels, num_masks),
        }

    @staticmethod
    def _full_mask_losses(matched: Tensor, targets: Targets, indices: Indices, num_masks: float) -> dict[str, Tensor]:
        """MaskFormer: each matched mask upsampled (bilinear) to its target's size, focal + dice on every pixel."""
        focal, dice, start = [], [], 0
        for (_, tgt_idx), target in zip(indices, targets):
            count = tgt_idx.numel()
            if count == 0:
                continue
            target_masks = target["masks"].to(matched.device)[tgt_idx.to(matched.device)].float()  # (n, H, W)
            logits = F.interpolate(
                matched[start : start + count], size=target_masks.shape[-2:], mode="bilinear", align_corners=False
            )[:, 0]  # (n, H, W)
            focal.append(sigmoid_focal_loss(logits.flatten(1), target_masks.flatten(1), num_masks))
            dice.append(dice_loss(logits.flatten(1), target_masks.flatten(1), num_masks))
            start += count
        return {"loss_mask": torch.stack(focal).sum(), "loss_dice": torch.stack(dice).sum()}

    @staticmethod
    def _target_points(targets: Targets, indices: Indices, coords: Tensor) -> Tensor:
        """Sample each matched target mask at its query's points: coords (N, P, 2) -> (N, P).

        One image at a time, because target masks of different images may differ in size.
        """
        sampled = []
        start = 0
        for (_, tgt_idx), target in zip(indices, targets):
            count = tgt_idx.numel()
            if count == 0:
                continue
            target_masks = target["masks"].to(coords.device)[tgt_idx.to(coords.device)].float()  # (n, H, W)
            sampled.append(point_sample(target_masks[:, None], coords[start : start + count])[:, 0])  # (n, P)
            start += count
        return torch.cat(sampled)
