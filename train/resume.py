"""Resuming a training run: the newest valid checkpoint, and refusals that keep two runs from mixing.

A folder that holds a run is resumed from its newest valid checkpoint; one whose checkpoints are all
invalid, or that was written with another training config, is refused with a message saying what to do
(``--restart`` or another ``--out``), because starting again at step 0 would overwrite it silently.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import safe_open

from train.configs import SegTrainConfig
from train.runtime import (
    MetricsLog,
    checkpoint_problem,
    latest_valid_checkpoint,
    list_checkpoints,
    remove_partial_writes,
)


class ResumeError(RuntimeError):
    """An output folder that cannot be resumed as asked; the message says why and what to do."""


# Fields that may change between a run and its resumption: they do not change what a step computes. The
# model's stage-2 fields are among them: a training step is stage 1 alone (Eq. 1's losses), so a run begun
# before its recipe's stage 2 changed resumes, and only the evaluations it logs read the new stage 2.
STAGE2_FIELDS = ("clip_weight", "stage2_mode", "crop_top_k", "crop_views")
RESUMABLE_CHANGES = frozenset(
    {
        "steps", "log_every", "checkpoint_every", "eval_every", "eval_limit", "amp_dtype", "num_workers",
        "prefetch_factor",
        *(f"model.{f}" for f in STAGE2_FIELDS),
    }
)  # fmt: skip


def config_differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """'field: saved -> current' for every (nested) field that differs."""
    differences = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(old, dict) and isinstance(new, dict):
            differences += config_differences(old, new, f"{prefix}{key}.")
        elif old != new and not (
            isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)) and list(old) == list(new)
        ):
            differences.append(f"{prefix}{key}: {old!r} -> {new!r}")
    return differences


def resume_point(
    checkpoint_dir: Path, log: MetricsLog, config: SegTrainConfig, resume: bool, restart: bool
) -> Path | None:
    """The checkpoint to resume from (None: start at step 0), or ResumeError when the folder holds a run
    that cannot be continued as asked."""
    remove_partial_writes(checkpoint_dir)
    if restart or not resume:
        for _, path in list_checkpoints(checkpoint_dir):  # else the old run's later steps would outrank the new ones
            path.unlink(missing_ok=True)
            path.with_name(path.name + ".sha256").unlink(missing_ok=True)
        return None
    latest = latest_valid_checkpoint(checkpoint_dir)
    found = list_checkpoints(checkpoint_dir)
    if latest is None and (found or log.records()):
        reasons = (
            "; ".join(f"{path.name}: {checkpoint_problem(path)}" for _, path in found) or "no checkpoint was written"
        )
        raise ResumeError(
            f"{checkpoint_dir.parent} holds a training run ({len(log.records())} logged rows) but no valid "
            f"checkpoint to resume from ({reasons}). Starting again from step 0 would overwrite it: "
            "pass --restart to do so, or choose another --out"
        )
    if latest is not None:
        with safe_open(str(latest), framework="pt") as handle:
            saved = json.loads((handle.metadata() or {}).get("extra", "{}")).get("train_config")
        if saved is not None:
            try:  # a run saved before a field existed holds that field's default
                saved = SegTrainConfig.from_dict(saved).to_dict()
            except (ValueError, TypeError):
                pass  # compared as saved: every difference is named below
            differences = [
                d for d in config_differences(saved, config.to_dict()) if d.split(":")[0] not in RESUMABLE_CHANGES
            ]
            if differences:
                raise ResumeError(
                    f"{latest} was written with another training config; resuming would mix two runs. Differences: "
                    + "; ".join(differences)
                    + ". Use the same config, pass --restart, or choose another --out"
                )
    return latest
