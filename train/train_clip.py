"""Contrastive pre-training of the tiny CLIP on the synthetic world, with open_clip's loss.

    python -m train.train_clip --out runs/tiny-clip [--steps 3000] [--batch-size 128]
    torchrun --nproc_per_node 2 -m train.train_clip --out runs/tiny-clip

Why the CLIP sees the WHOLE vocabulary while the segmenters see only the seen classes: this is the
open-vocabulary premise of the paper. CLIP was trained on web image-text pairs that name (nearly)
everything; the segmenter's masks come from COCO-Stuff's 171 classes only. Here the CLIP is trained on
scene captions, object crops and part close-ups of every class, part and group word, and the segmenters on
masks of seen names.

The output folder is in open_clip's own layout (``open_clip_config.json`` + ``open_clip_model.safetensors``),
so ``open_clip.create_model("local-dir:runs/tiny-clip/model")`` and ``pmp`` both load it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from safetensors.torch import save_file
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from pmp.clip import CLIPModel
from pmp.config import CLIP_MEAN, CLIP_STD, CLIPConfig
from pmp.images import normalize_pixels
from pmp.segmenter import Segmenter
from train import world
from train.configs import CLIPTrainConfig
from train.recipes import world_model
from train.runtime import (
    MetricsLog,
    check_finite,
    cleanup_distributed,
    cosine_lr_factor,
    latest_valid_checkpoint,
    load_training_state,
    save_training_state,
    seed_everything,
    setup_distributed,
)
from train.world import vocabulary as vocab
from train.world.vocabulary import PART_NAMES


def make_pair(index: int, config: CLIPTrainConfig) -> tuple[np.ndarray, str]:
    """One (image, caption) pair, deterministic by index: a scene with a caption or an object crop."""

    seed = config.seed * 1_000_003 + index
    rng = np.random.default_rng(seed)
    draw = rng.random()
    if draw < config.crop_fraction:
        image, caption, _ = world.render_object_crop(seed, config.image_size)
        return image, caption
    if draw < config.crop_fraction + config.part_fraction:
        part = PART_NAMES[int(rng.integers(len(PART_NAMES)))]
        return world.render_part_crop(seed, part, config.image_size)
    scene = world.render_scene(seed, config.image_size)
    return scene.image, scene.captions[int(rng.integers(len(scene.captions)))]


def to_clip_pixels(images: list[np.ndarray], size: int | None = None) -> torch.Tensor:
    """(H, W, 3) uint8 images -> (B, 3, H, W) CLIP-normalised pixels, resized to ``size`` x ``size`` when
    given and different (the world renders at its own scale; an image tower may read another size)."""
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)  # (B,3,H,W)
    if size is not None and pixels.shape[-2:] != (size, size):
        pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return normalize_pixels(pixels, CLIP_MEAN, CLIP_STD)


@torch.no_grad()
def zero_shot_accuracy(clip: CLIPModel, config: CLIPTrainConfig, per_class: int | None = None) -> dict[str, float]:
    """Top-1 zero-shot accuracy on held-out crops at three granularities, each among its whole vocabulary:

    * ``zero_shot_top1`` (and ``_seen`` / ``_unseen``): object crops among every stuff and thing name;
    * ``zero_shot_group_top1``: crops of grouped things among the group words ("vehicle", "animal", ...);
    * ``zero_shot_part_top1``: part close-ups (:func:`train.world.render_part_crop`) among the part names.

    Seen / unseen is segmentation training's split (:mod:`train.world.vocabulary`). Crops come from seeds
    far from every training index, so none was seen in training.
    """

    per_class = per_class or config.eval_crops_per_class
    was_training = clip.training
    clip.eval()

    def classify(images: list[np.ndarray], names: list[str]) -> list[str]:
        text = clip.encode_text(names)  # (V, C)
        predicted = []
        for start in range(0, len(images), 256):
            pixels = to_clip_pixels(images[start : start + 256], clip.image_size)
            feats = F.normalize(clip.open_clip.encode_image(pixels), dim=-1)
            predicted += [names[i] for i in (feats @ text.T).argmax(-1).tolist()]
        return predicted

    def accuracy(truths: list[str], predicted: list[str], seen: set[str]) -> dict[str, float]:
        per_name: dict[str, list[bool]] = {}
        for truth, guess in zip(truths, predicted):
            per_name.setdefault(truth, []).append(truth == guess)
        means = {name: float(np.mean(v)) for name, v in per_name.items()}
        seen_acc = [a for n, a in means.items() if n in seen]
        unseen_acc = [a for n, a in means.items() if n not in seen]
        return {
            "": float(np.mean(list(means.values()))),
            "_seen": float(np.mean(seen_acc)) if seen_acc else float("nan"),
            "_unseen": float(np.mean(unseen_acc)) if unseen_acc else float("nan"),
        }

    names = list(vocab.CLASS_NAMES)
    crops = {name: [world.render_object_crop(10_000_000 + 1_000 * i + k, config.image_size, class_name=name)[0]
                    for k in range(per_class)] for i, name in enumerate(names)}  # fmt: skip
    truths = [name for name in names for _ in range(per_class)]
    things = accuracy(truths, classify(sum(crops.values(), []), names), set(vocab.SEEN_CLASSES))
    metrics = {f"zero_shot_top1{key}": value for key, value in things.items()}
    grouped = [name for name in names if name in vocab.GROUP_OF]
    group_truths = [vocab.GROUP_OF[name] for name in grouped for _ in range(per_class)]
    group_images = [image for name in grouped for image in crops[name]]
    groups = accuracy(group_truths, classify(group_images, list(vocab.GROUP_NAMES)), set(vocab.SEEN_GROUPS))
    metrics.update({f"zero_shot_group_top1{key}": value for key, value in groups.items()})
    parts = list(vocab.PART_NAMES)
    part_images = [world.render_part_crop(20_000_000 + 1_000 * i + k, name, config.image_size)[0]
                   for i, name in enumerate(parts) for k in range(per_class)]  # fmt: skip
    part_truths = [name for name in parts for _ in range(per_class)]
    part_scores = accuracy(part_truths, classify(part_images, parts), set(vocab.SEEN_PARTS))
    metrics.update({f"zero_shot_part_top1{key}": value for key, value in part_scores.items()})
    metrics.update(
        {"chance": 1.0 / len(names), "chance_group": 1.0 / len(vocab.GROUP_NAMES), "chance_part": 1.0 / len(parts)}
    )
    clip.train(was_training)
    return metrics


CONTRASTIVE_DESCRIPTION = (
    "Trained contrastively (open_clip's ClipLoss) on the synthetic world's scene captions, object crops "
    "and part close-ups."
)


def save_open_clip_folder(
    clip: CLIPModel,
    config: CLIPTrainConfig,
    folder: Path,
    metrics: dict[str, float],
    command: str,
    description: str = CONTRASTIVE_DESCRIPTION,
) -> None:
    """open_clip's local-dir layout; weights in float16 to keep the bundled file small."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().cpu().half().contiguous() if v.is_floating_point() else v.detach().cpu().contiguous()
        for k, v in clip.open_clip.state_dict().items()
    }
    save_file(state, str(folder / "open_clip_model.safetensors"), metadata={"format": "pt"})
    preprocess = {
        "size": clip.image_size,  # what the image tower reads (the world may render at another scale)
        "mean": list(CLIP_MEAN),
        "std": list(CLIP_STD),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": config.model_cfg, "preprocess_cfg": preprocess}, indent=2) + "\n"
    )
    lines = [
        "---",
        "library_name: open_clip",
        "tags:",
        "- clip",
        "- synthetic",
        "---",
        "",
        "# Tiny CLIP for the PMP synthetic world",
        "",
        description,
        "",
        "```",
        command,
        "```",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.4f} |" for k, v in metrics.items()]
    (folder / "README.md").write_text("\n".join(lines) + "\n")
    for path in folder.iterdir():
        path.chmod(0o644)  # safetensors may create files private to the user; these are meant to be shared


def train(config: CLIPTrainConfig, out_dir: Path, *, resume: bool = True, command: str = "") -> dict[str, float]:
    ctx = setup_distributed()
    try:
        seed_everything(config.seed)
        clip = CLIPModel.build(CLIPConfig(model_cfg=config.model_cfg)).to(ctx.device)
        clip.train()
        clip.requires_grad_(True)
        model = clip.open_clip
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
        no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr,
            betas=(0.9, 0.98),
            eps=1e-6,
        )
        loss_fn = ClipLoss(rank=ctx.rank, world_size=ctx.world_size)
        checkpoint_dir = out_dir / "checkpoints"
        log = MetricsLog(out_dir / "metrics.jsonl", enabled=ctx.is_main)
        start = 0
        if resume and (latest := latest_valid_checkpoint(checkpoint_dir)) is not None:
            start, _ = load_training_state(latest, model, optimizer)
            log.truncate_after(start)
        ddp = DistributedDataParallel(model) if ctx.enabled else model
        tokenizer = clip.tokenizer
        started = time.perf_counter()
        for step in tqdm(
            range(start, config.steps),
            initial=start,
            total=config.steps,
            desc="train.train_clip",
            disable=not ctx.is_main or not sys.stderr.isatty(),
        ):
            for group in optimizer.param_groups:
                group["lr"] = config.lr * cosine_lr_factor(step, config.steps, config.warmup_steps)
            first = (step * ctx.world_size + ctx.rank) * config.batch_size
            pairs = [make_pair(first + i, config) for i in range(config.batch_size)]
            images = to_clip_pixels([p[0] for p in pairs]).to(ctx.device)
            tokens = tokenizer([p[1] for p in pairs]).to(ctx.device)
            image_features, text_features, logit_scale = ddp(images, tokens)
            loss = loss_fn(image_features, text_features, logit_scale)
            check_finite(loss, ctx, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            done = step + 1
            if done % config.log_every == 0 or done == config.steps:
                log.write(
                    {
                        "step": done,
                        "loss": float(loss.detach()),
                        "lr": optimizer.param_groups[0]["lr"],
                        "logit_scale": float(model.logit_scale.detach().exp()),
                        "seconds": round(time.perf_counter() - started, 2),
                    }
                )
            if done % config.checkpoint_every == 0 or done == config.steps:
                if ctx.is_main:
                    save_training_state(checkpoint_dir, done, model, optimizer, {"train_config": config.to_dict()})
                if ctx.enabled:
                    dist.barrier()
        clip.eval()
        clip.clear_cache()
        metrics = zero_shot_accuracy(clip, config) if ctx.is_main else {}
        if ctx.is_main:
            log.write({"step": config.steps, **metrics})
            log.plot(out_dir / "loss.png")
            save_open_clip_folder(clip, config, out_dir / "model", metrics, command)
            (out_dir / "final_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        return metrics
    finally:
        cleanup_distributed()


def load_clip_for_evaluation(source: str) -> CLIPModel:
    """An open_clip folder (``open_clip_config.json`` + weights) or the CLIP inside a segmenter checkpoint."""
    folder = Path(source)
    if (folder / "open_clip_config.json").is_file():
        model_cfg = json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]
        config = CLIPConfig(
            model_name=folder.name, model_cfg=model_cfg, pretrained=str(folder / "open_clip_model.safetensors")
        )
        return CLIPModel.build(dataclasses.replace(config, templates=world_model("none").clip.templates))

    return Segmenter.from_pretrained(source).clip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.train_clip", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--no-resume", action="store_true")
    parser.add_argument(
        "--evaluate",
        default=None,
        metavar="CLIP",
        help="only measure zero-shot accuracy of this CLIP (an open_clip folder, or a segmenter checkpoint's "
        "CLIP: a bundled name, folder or Hub id) and write it as JSON to --out",
    )
    args = parser.parse_args(argv)
    if args.evaluate:
        metrics = zero_shot_accuracy(load_clip_for_evaluation(args.evaluate), CLIPTrainConfig())
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"clip": args.evaluate, **metrics}, indent=2) + "\n")
        print(json.dumps(metrics, indent=2))
        return 0
    overrides = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed}
    config = dataclasses.replace(CLIPTrainConfig(), **{k: v for k, v in overrides.items() if v is not None})
    command = "python -m train.train_clip " + " ".join(sys.argv[1:] if argv is None else argv)
    metrics = train(config, args.out, resume=not args.no_resume, command=command)
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
