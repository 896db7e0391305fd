"""The optimizer's parameter groups and the learning-rate schedule of a segmenter's training run.

Both follow the recipe: ``weight_decay_groups`` says which parameters are exempt from weight decay
(detectron2's rule for the paper-scale recipes, a name rule for the world's), ``lr_schedule`` which poly
schedule the run follows (:mod:`train.runtime` holds both formulas).
"""

from __future__ import annotations

from typing import Any

import torch

from train.configs import SegTrainConfig
from train.runtime import poly_lr_factor, warmup_multistep_lr_factor, warmup_poly_lr_factor

# detectron2 solver/build.py get_default_optimizer_params's norm_module_types
NORM_LAYERS = (
    torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm, torch.nn.GroupNorm,
    torch.nn.InstanceNorm1d, torch.nn.InstanceNorm2d, torch.nn.InstanceNorm3d, torch.nn.LayerNorm,
    torch.nn.LocalResponseNorm,
)  # fmt: skip
EMBEDDING_NAMES = ("relative_position_bias_table", "absolute_pos_embed")  # Mask2Former train_net.py build_optimizer


def exempt_from_decay(model: torch.nn.Module, rule: str) -> set[str]:
    """Names of the parameters that get no weight decay under ``rule`` (SegTrainConfig.weight_decay_groups).

    "detectron2": the parameters of normalisation layers and of embeddings (``nn.Embedding``, Swin's
    ``relative_position_bias_table`` and ``absolute_pos_embed``), as Mask2Former's and OVSeg's
    ``build_optimizer`` ask detectron2 for them (WEIGHT_DECAY_NORM = WEIGHT_DECAY_EMBED = 0); biases are
    decayed. "names": every parameter of ndim <= 1 and every name holding "embed" or "norm".
    """
    if rule == "names":
        return {
            name for name, param in model.named_parameters() if param.ndim <= 1 or "embed" in name or "norm" in name
        }
    exempt = set()
    for module_name, module in model.named_modules():
        for name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{name}" if module_name else name
            if isinstance(module, (*NORM_LAYERS, torch.nn.Embedding)) or name in EMBEDDING_NAMES:
                exempt.add(full)
    return exempt


def parameter_groups(model: torch.nn.Module, config: SegTrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: the backbone at lr x ``backbone_lr_multiplier``; no weight decay on what
    :func:`exempt_from_decay` names under ``config.weight_decay_groups``."""
    exempt = exempt_from_decay(model, config.weight_decay_groups)
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_backbone = name.startswith("backbone.")
        groups.setdefault((is_backbone, name in exempt), []).append(param)
    return [
        {
            "params": params,
            "lr": config.lr * (config.backbone_lr_multiplier if is_backbone else 1.0),
            "base_lr": config.lr * (config.backbone_lr_multiplier if is_backbone else 1.0),
            "weight_decay": 0.0 if no_decay else config.weight_decay,
        }
        for (is_backbone, no_decay), params in sorted(groups.items())
    ]


def lr_factor(step: int, config: SegTrainConfig) -> float:
    """The learning-rate factor of ``step`` under ``config.lr_schedule`` (see SegTrainConfig)."""
    if config.lr_schedule == "warmup_poly":
        return warmup_poly_lr_factor(step, config.steps, config.warmup_steps, config.warmup_factor)
    if config.lr_schedule == "warmup_multistep":
        return warmup_multistep_lr_factor(
            step, config.lr_steps, config.lr_gamma, config.warmup_steps, config.warmup_factor
        )
    return poly_lr_factor(step, config.steps, config.warmup_steps)
