"""What every training script shares: distributed set-up, atomic safetensors checkpoints, logging.

Training state is saved as ONE safetensors file per checkpoint (model, optimizer moments and RNG
states as tensors; step, optimizer hyper-parameters and the run config as JSON metadata), so resuming
never unpickles anything. The file is written to a temp name, fsynced and renamed, and is validated
(it must open, hold a ``complete`` marker and the step it is named after) before a resume uses it:
a checkpoint killed mid-write is never chosen.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from pmp.checkpoint import atomic_write, file_sha256

CHECKPOINT_PATTERN = re.compile(r"^step-(\d{8})\.safetensors$")


class NonFiniteLossError(RuntimeError):
    """Raised on every rank when any rank's loss is NaN or inf; the last good checkpoint is kept."""


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str | None = None) -> DistributedContext:
    """Join the process group torchrun describes (NCCL on GPU, gloo on CPU), or run single-process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) of the current torch.distributed group, (0, 1) when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce(tensor: torch.Tensor, op: Any = None) -> torch.Tensor:
    """The sum (or ``op``) of ``tensor`` over all ranks, as a new CPU tensor; the input itself when not
    distributed. On NCCL the values travel through the current GPU."""
    if rank_and_world_size()[1] == 1:
        return tensor
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    reduced = tensor.detach().clone().to(device)
    dist.all_reduce(reduced, op=op or dist.ReduceOp.SUM)
    return reduced.cpu()


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def stop_unless_finite(finite: bool, ctx: DistributedContext, step: int, what: str) -> None:
    """Stop every rank together, with one message naming the step, when any rank saw a non-finite value.

    The flag is all-reduced, so no rank is left waiting in a collective while another has stopped.
    """
    bad = torch.tensor([0.0 if finite else 1.0], device=ctx.device)
    if ctx.enabled:
        dist.all_reduce(bad)
    if bad.item() > 0:
        raise NonFiniteLossError(
            f"non-finite {what} at step {step} (NaN or inf on at least one rank); training stopped and the "
            "last good checkpoint was kept. Lower the learning rate, check the data, or resume from that checkpoint."
        )


def check_finite(loss: torch.Tensor, ctx: DistributedContext, step: int) -> None:
    """Stop every rank together when any rank sees a non-finite loss."""
    stop_unless_finite(bool(torch.isfinite(loss.detach()).all()), ctx, step, "loss")


def predictions_are_finite(outputs: dict[str, Any]) -> bool:
    """True when no prediction of any layer holds NaN or +inf (padded prompt columns are -inf by design)."""
    for layer in [outputs, *outputs.get("aux_outputs", [])]:
        logits, masks = layer["pred_logits"].detach(), layer["pred_masks"].detach()
        if torch.isnan(logits).any() or torch.isposinf(logits).any() or not torch.isfinite(masks).all():
            return False
    return True


def weights_are_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p.detach()).all()) for p in model.parameters() if p.is_floating_point())


def poly_lr_factor(step: int, total_steps: int, warmup_steps: int, power: float = 0.9) -> float:
    """Linear warm-up, then Mask2Former's poly decay (1 - t/T)^0.9."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return (1.0 - progress) ** power


def warmup_poly_lr_factor(
    step: int, total_steps: int, warmup_steps: int, warmup_factor: float, power: float = 0.9
) -> float:
    """detectron2's WarmupPolyLR (solver/lr_scheduler.py; OVSeg's and Mask2Former's LR_SCHEDULER_NAME): a linear
    warm-up from ``warmup_factor`` to 1 over ``warmup_steps`` times (1 - step / total_steps) ** power over the
    whole run (the poly term is not restarted after the warm-up)."""
    return linear_warmup(step, warmup_steps, warmup_factor) * (1.0 - step / total_steps) ** power


def linear_warmup(step: int, warmup_steps: int, warmup_factor: float) -> float:
    """detectron2's "linear" warm-up factor: ``warmup_factor`` at step 0 rising to 1 at ``warmup_steps``."""
    if step >= warmup_steps:
        return 1.0
    alpha = step / warmup_steps
    return warmup_factor * (1 - alpha) + alpha


def warmup_multistep_lr_factor(
    step: int, milestones: tuple[int, ...], gamma: float, warmup_steps: int, warmup_factor: float
) -> float:
    """detectron2's WarmupMultiStepLR (solver/lr_scheduler.py; Mask2Former's and FC-CLIP's COCO configs): the
    linear warm-up times ``gamma`` for every milestone at or before ``step`` (bisect_right, as detectron2)."""
    return linear_warmup(step, warmup_steps, warmup_factor) * gamma ** sum(1 for m in milestones if m <= step)


def cosine_lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warm-up, then CLIP's cosine decay 0.5 (1 + cos(pi t/T)) (the tiny CLIP and its mask adaptation)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, total_steps - warmup_steps)))


# ------------------------------------------------------------------------------------ checkpoints
def save_training_state(
    folder: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    extra_metadata: dict[str, Any],
    keep: int = 2,
    rng_states: list[dict[str, Any]] | None = None,
) -> Path:
    """Atomically write ``step-XXXXXXXX.safetensors`` and prune older ones (keeping ``keep``).

    ``rng_states``: every rank's :func:`rng_state` (:func:`gathered_rng_states`), so that each rank resumes
    its own random streams (CPU, CUDA, numpy, Python); None: this process's alone."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        tensors[f"model.{key}"] = value.detach().cpu().contiguous()
    optim_state = optimizer.state_dict()
    for param_id, state in optim_state["state"].items():
        for name, value in state.items():
            value = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"optim.{param_id}.{name}"] = value.detach().cpu().contiguous()
    states = rng_states if rng_states is not None else [rng_state()]
    positions, python_states = [], []
    for rank, state in enumerate(states):
        tensors[f"rng.{rank}.torch"] = state["torch"]
        tensors[f"rng.{rank}.numpy_keys"] = state["numpy_keys"]
        if state.get("cuda") is not None:
            tensors[f"rng.{rank}.cuda"] = state["cuda"]
        positions.append(state["numpy_pos"])
        python_states.append(state["python"])
    metadata = {
        "complete": "1",
        "step": str(step),
        "param_groups": json.dumps(optim_state["param_groups"]),
        "numpy_pos": json.dumps(positions),
        "python_rng": json.dumps(python_states),
        "extra": json.dumps(extra_metadata),
    }
    target = folder / f"step-{step:08d}.safetensors"
    remove_partial_writes(folder)
    atomic_write(target, lambda path: save_file(tensors, path, metadata=metadata))
    atomic_write(_checksum_path(target), lambda path: Path(path).write_text(file_sha256(target) + "\n"))
    for old in sorted(list_checkpoints(folder))[:-keep]:
        old[1].unlink(missing_ok=True)
        _checksum_path(old[1]).unlink(missing_ok=True)
    return target


def _checksum_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name + ".sha256")


def remove_partial_writes(folder: Path) -> list[Path]:
    """Delete the temporary files of writes that were killed before their rename (``.name.*.tmp``)."""
    removed = []
    if folder.is_dir():
        for path in folder.glob(".*.tmp"):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def rng_state() -> dict[str, Any]:
    """This process's random streams: torch's CPU and (where CUDA exists) CUDA generators, numpy's, Python's."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": _python_rng_state(),
    }


def gathered_rng_states(ctx: "DistributedContext") -> list[dict[str, Any]]:
    """Every rank's :func:`rng_state`, in rank order (a collective: every rank must call it)."""
    if not ctx.enabled:
        return [rng_state()]
    states: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(states, rng_state())
    return states


def _python_rng_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = CHECKPOINT_PATTERN.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def checkpoint_problem(path: Path) -> str | None:
    """Why a training checkpoint cannot be resumed from, or None when it can.

    It must open as safetensors, be marked complete with the step of its name, match the checksum
    written beside it at save time (``.sha256``; a bit flip inside tensor data is caught only so), and
    hold finite model weights (a run that diverged must not be resumed into the same divergence).
    """
    match = CHECKPOINT_PATTERN.match(path.name)
    if not match:
        return "not a step-XXXXXXXX.safetensors file"
    checksum = _checksum_path(path)
    if checksum.is_file():
        if checksum.read_text().strip() != file_sha256(path):
            return "its bytes do not match the checksum written at save time (corrupt)"
    else:
        return f"no checksum file {checksum.name} (written with every checkpoint; a killed save or an old run)"
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if not (metadata.get("complete") == "1" and metadata.get("step") == str(int(match.group(1)))):
                return "not marked complete for its step"
            for key in handle.keys():
                if key.startswith("model."):
                    tensor = handle.get_tensor(key)
                    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                        return f"weight {key[len('model.') :]!r} holds NaN or inf"
    except (SafetensorError, OSError, ValueError) as error:
        return f"unreadable ({error})"
    return None


def validate_checkpoint(path: Path) -> bool:
    return checkpoint_problem(path) is None


def latest_valid_checkpoint(folder: Path) -> Path | None:
    for _, path in reversed(list_checkpoints(folder)):
        if validate_checkpoint(path):
            return path
    return None


def load_training_state(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, rank: int = 0
) -> tuple[int, dict[str, Any]]:
    """Restore model, optimizer and rank ``rank``'s RNG states (CUDA's too where CUDA exists); returns
    (step, extra metadata)."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    model_state = {key[len("model.") :]: value for key, value in tensors.items() if key.startswith("model.")}
    model.load_state_dict(model_state, strict=True)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, param_id, name = key.split(".", 2)
            state.setdefault(int(param_id), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})
    if "rng.torch" in tensors:  # written before every rank's state was kept: one state for all
        positions, python_states = [int(metadata["numpy_pos"])], [json.loads(metadata["python_rng"])]
        index, prefix = 0, "rng."
    else:
        positions, python_states = json.loads(metadata["numpy_pos"]), json.loads(metadata["python_rng"])
        index = rank % len(positions)  # a run resumed on fewer or more ranks reuses the saved ones
        prefix = f"rng.{index}."
    torch.set_rng_state(tensors[prefix + "torch"])
    if torch.cuda.is_available() and prefix + "cuda" in tensors:
        torch.cuda.set_rng_state(tensors[prefix + "cuda"])
    np.random.set_state(
        ("MT19937", tensors[prefix + "numpy_keys"].numpy().astype(np.uint32), int(positions[index]), 0, 0.0)
    )
    version, internal, gauss = python_states[index]
    random.setstate((version, tuple(internal), gauss))
    return int(metadata["step"]), json.loads(metadata["extra"])


# --------------------------------------------------------------------------------------- logging
class MetricsLog:
    """Appends one JSON object per line; draws the loss curve to PNG on demand (main rank only)."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop records from steps after ``step`` (the resumed checkpoint's, or 0 for a restart), so no
        step is ever logged twice."""
        if not (self.enabled and self.path.exists()):
            return
        kept = [
            line for line in self.path.read_text().splitlines() if line and json.loads(line).get("step", -1) <= step
        ]
        self.path.write_text("".join(line + "\n" for line in kept))

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]

    def plot(self, png_path: Path, keys: tuple[str, ...] = ("loss",)) -> None:
        if not self.enabled:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        records = [r for r in self.records() if "loss" in r]
        if not records:
            return
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        for key in keys:
            points = [(r["step"], r[key]) for r in records if key in r and math.isfinite(r[key])]
            if points:
                ax.plot(*zip(*points), label=key, linewidth=1)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(png_path)
        plt.close(fig)
