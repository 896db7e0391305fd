"""OVSeg's mask-adapted CLIP on real data: fine-tuning on region-noun pairs, then mask prompt tuning.

    python -m train.ovseg_pairs --segmenter SEG --data-root datasets --out pairs          # mine the pairs
    torchrun --nproc_per_node 4 -m train.ovseg_adapt finetune --segmenter SEG --pairs pairs --out runs/ft
    torchrun --nproc_per_node 4 -m train.ovseg_adapt prompts --segmenter runs/ft/model --pairs pairs --out runs/mpt

Each stage writes a segmenter folder (``OUT/model``): the given segmenter with its CLIP replaced by the
adapted one, as OVSeg's ``tools/ovseg_replace_clip.py`` puts the fine-tuned CLIP into its MaskFormer. The
values are OVSeg's (``open_clip_training/src/scripts/coco_proposal_1cap_finetune_VitL.sh`` and
``coco_proposal_1cap_mask_prompt_tuning_VitL.sh``, on open_clip 1.3's ``training/params.py`` defaults for
ViTs): :data:`STAGES`. Fine-tuning trains the image tower with the text tower locked (``--lock-text``);
mask prompt tuning trains only the mask prompts (``--lock-image --lock-text``, ``--mask-emb-depth 3``), so
the segmenter reads its crops with them (``clip.mask_prompt_depth``, OVSeg's MASK_PROMPT_FWD).

As OVSeg's ``CsvDataset`` and ``image_transform``: the text is the bare noun (no template); a crop is
``RandomResizedCrop(size, scale=(0.9, 1.0))`` (bicubic) of the stored region; with masks (prompt tuning),
the mask is every pixel of the crop not exactly OVSeg's fill colour (``Maskget``); the loss is open_clip's
``ClipLoss`` over the global batch. Departures: CLIP's logit scale stays fixed (open_clip trains it, but
OVSeg classifies with a fixed temperature of 100 at inference, which the logit scale then is); no resuming
(each stage is five epochs; rerun a stage to repeat it).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler
from torchvision.transforms import InterpolationMode, RandomResizedCrop
from torchvision.transforms.functional import resized_crop

from pmp.clip.mask_prompts import add_mask_prompts
from pmp.images import normalize_pixels
from pmp.segmenter import Segmenter
from train.ovseg_pairs import COLUMNS, MEAN_FILL, PAIRS_FILE
from train.runtime import cleanup_distributed, cosine_lr_factor, seed_everything, setup_distributed


@dataclass(frozen=True)
class AdaptStage:
    lr: float
    epochs: int
    warmup: int
    batch_size: int  # per GPU, as open_clip's --batch-size
    weight_decay: float  # on matrices only (open_clip: not on norms, biases, embeddings' gains or the scale)


# OVSeg's scripts (4 GPUs x 32) and open_clip 1.3's ViT defaults: AdamW betas (0.9, 0.98), eps 1e-6, wd 0.2.
STAGES = {
    "finetune": AdaptStage(lr=5e-6, epochs=5, warmup=100, batch_size=32, weight_decay=0.2),
    "prompts": AdaptStage(lr=0.05, epochs=5, warmup=100, batch_size=32, weight_decay=0.0),  # --mask_wd 0.0
}
BETAS, EPS = (0.9, 0.98), 1e-6
PROMPT_DEPTH = 3  # --mask-emb-depth 3
CROP_SCALE = (0.9, 1.0)


class RegionPairs(Dataset):
    """The pairs file's (region, noun) rows -> (3, S, S) crop in [0, 1], (1, S, S) mask, noun index; the
    crop's randomness comes from (seed, epoch, index), so every rank and rerun draws the same crops."""

    def __init__(self, folder: Path, size: int, seed: int = 0) -> None:
        with open(folder / PAIRS_FILE, newline="") as handle:
            rows = list(csv.reader(handle, delimiter="\t"))
        if not rows or tuple(rows[0]) != COLUMNS:
            raise ValueError(f"{folder / PAIRS_FILE} is not a pairs file (header {'/'.join(COLUMNS)})")
        self.folder, self.size, self.seed, self.epoch = folder, size, seed, 0
        self.paths = [row[0] for row in rows[1:]]
        self.nouns = sorted({row[1] for row in rows[1:]})
        index = {noun: i for i, noun in enumerate(self.nouns)}
        self.targets = [index[row[1]] for row in rows[1:]]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        image = Image.open(self.folder / self.paths[item]).convert("RGB")
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 100_003 + item)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
            top, left, height, width = RandomResizedCrop.get_params(image, CROP_SCALE, (3 / 4, 4 / 3))
        crop = resized_crop(image, top, left, height, width, [self.size, self.size], InterpolationMode.BICUBIC)
        array = np.asarray(crop)
        mask = ~(array == np.array(MEAN_FILL, np.uint8)).all(axis=2)  # Maskget
        pixels = torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0
        return pixels, torch.from_numpy(mask)[None].float(), self.targets[item]


class ImageTower(nn.Module):
    """The CLIP's image side as one module for DDP: crops (and masks, with mask prompts) -> embeddings."""

    def __init__(self, segmenter: Segmenter, prompts: bool) -> None:
        super().__init__()
        self.clip, self.prompts = segmenter.clip, prompts

    def forward(self, pixels: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        crops = normalize_pixels(pixels, self.clip.mean, self.clip.std)
        return F.normalize(self.clip.encode_crops(crops, masks if self.prompts else None), dim=-1)


def trainable(segmenter: Segmenter, stage: str) -> list[nn.Parameter]:
    """Unlock what ``stage`` trains: the image tower (not its prompts) or the mask prompts alone."""
    clip = segmenter.clip
    clip.requires_grad_(False)
    visual = clip.open_clip.visual
    if stage == "finetune":
        params = [p for name, p in visual.named_parameters() if name != "mask_embedding"]
    else:
        params = [visual.mask_embedding]
    for param in params:
        param.requires_grad_(True)
    return params


def with_prompts(segmenter: Segmenter) -> None:
    """Give the segmenter's CLIP OVSeg's mask prompts (zeros) unless it has them, and say so in its config."""
    config = segmenter.config
    if (config.stage2_mode, config.crop_box) != ("crop", "tight"):
        raise ValueError(
            "mask prompts are read by OVSeg's crops: the segmenter needs stage2_mode 'crop' and crop_box 'tight', "
            f"not {config.stage2_mode!r} and {config.crop_box!r}"
        )
    if not config.clip.mask_prompt_depth:
        add_mask_prompts(segmenter.clip.open_clip.visual, PROMPT_DEPTH)
        segmenter.clip.config = dataclasses.replace(segmenter.clip.config, mask_prompt_depth=PROMPT_DEPTH)
        config.clip = segmenter.clip.config


def adapt(segmenter: Segmenter, pairs: Path, out: Path, stage: str, *, max_steps: int | None = None, seed: int = 0,
          epochs: int | None = None, batch_size: int | None = None) -> dict[str, float]:  # fmt: skip
    """Train ``segmenter``'s CLIP for ``stage`` (:data:`STAGES`, over ``epochs``/``batch_size`` when given) on the
    pairs folder; rank 0 writes ``out/model`` and ``out/metrics.jsonl``. Returns the last step's figures."""
    spec = STAGES[stage]
    ctx = setup_distributed()
    seed_everything(seed)
    if stage == "prompts":
        with_prompts(segmenter)
    segmenter.to(ctx.device)
    clip = segmenter.clip
    data = RegionPairs(pairs, clip.image_size, seed)
    with torch.no_grad():
        text = F.normalize(clip.open_clip.encode_text(clip.tokenizer(data.nouns).to(ctx.device)), dim=-1)  # (V, C)
    params = trainable(segmenter, stage)
    tower = ImageTower(segmenter, prompts=stage == "prompts").train()
    model = nn.parallel.DistributedDataParallel(tower) if ctx.enabled else tower
    decayed = [p for p in params if p.ndim >= 2 and stage == "finetune"]
    rest = [p for p in params if not any(p is q for q in decayed)]
    groups = [{"params": decayed, "weight_decay": spec.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=spec.lr, betas=BETAS, eps=EPS)
    per_rank = batch_size or spec.batch_size
    sampler = (
        DistributedSampler(data, ctx.world_size, ctx.rank, shuffle=True, seed=seed, drop_last=True)
        if ctx.enabled
        else RandomSampler(data, generator=torch.Generator().manual_seed(seed))
    )
    loader = DataLoader(data, batch_size=per_rank, sampler=sampler, drop_last=len(data) >= per_rank)
    total = max(1, (epochs or spec.epochs) * len(loader))
    if max_steps is not None:
        total = min(total, max_steps)
    criterion = ClipLoss(rank=ctx.rank, world_size=ctx.world_size)
    use_amp = ctx.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    scale = clip.open_clip.logit_scale.exp().detach()
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "metrics.jsonl", "a") if ctx.is_main else None
    step, started, figures = 0, time.perf_counter(), {}
    while step < total:
        data.epoch = step // max(1, len(loader))
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(data.epoch)
        for pixels, masks, targets in loader:
            if step >= total:
                break
            for group in optimizer.param_groups:
                group["lr"] = spec.lr * cosine_lr_factor(step, total, spec.warmup)
            with torch.autocast(ctx.device.type, dtype=torch.float16, enabled=use_amp):
                embeds = model(pixels.to(ctx.device), masks.to(ctx.device))
                loss = criterion(embeds.float(), text[targets.to(ctx.device)], scale)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            figures = {"step": step, "loss": float(loss.detach()), "lr": optimizer.param_groups[0]["lr"],
                       "seconds": time.perf_counter() - started}  # fmt: skip
            if log is not None:
                log.write(json.dumps(figures) + "\n")
                log.flush()
    if ctx.is_main:
        log.close()
        segmenter.save_pretrained(out / "model")
    cleanup_distributed()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.ovseg_adapt", description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=tuple(STAGES), help="finetune: the image tower; prompts: mask prompt tuning")
    parser.add_argument("--segmenter", required=True, help="the segmenter folder whose CLIP is adapted")
    parser.add_argument("--pairs", type=Path, required=True, help="a folder written by python -m train.ovseg_pairs")
    parser.add_argument("--out", type=Path, required=True, help="the run folder (the adapted segmenter in OUT/model)")
    parser.add_argument("--epochs", type=int, default=None, help="override the stage's epochs (OVSeg: 5)")
    parser.add_argument("--batch-size", type=int, default=None, help="per GPU (OVSeg: 32)")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (a smoke run)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        segmenter = Segmenter.from_pretrained(args.segmenter)
        figures = adapt(segmenter, args.pairs, args.out, args.stage, max_steps=args.max_steps, seed=args.seed,
                        epochs=args.epochs, batch_size=args.batch_size)  # fmt: skip
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{args.stage}: {figures.get('step', 0)} steps, last loss {figures.get('loss', float('nan')):.4f}; "
          f"the adapted segmenter is {args.out / 'model'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
