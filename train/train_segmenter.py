"""Train a segmenter (baseline or PMP or an ablation) with Mask2Former's recipe; nanoGPT-style script.

    python -m train.train_segmenter --recipe world-pmp --out runs/pmp
    torchrun --nproc_per_node 2 -m train.train_segmenter --recipe world-pmp --out runs/pmp     # DDP, same result
    torchrun --nproc_per_node 8 -m train.train_segmenter --recipe ovseg-swinb-vitl14-pmp --data-root datasets --out r
    python -m train.train_segmenter --recipe ovseg-swinb-vitl14-pmp --print-config     # the resolved config, as JSON

Prompts during training (baseline and PMP always share them): the paper-scale recipes prompt every
image with every training class, the paper's "C = C_train" (``training_prompts="all"``); the world's
recipes prompt the present classes plus random absent ones (``"sampled"``, :mod:`train.batches`).
The batch is global: each of W ranks takes ``batch_size / W`` samples, and sample indices run over the
global batch, so a run on 1 or 8 GPUs sees the same samples in the same steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from pmp.checkpoint import model_card
from pmp.clip.loading import tag_quick_gelu
from pmp.segmenter import Segmenter
from train.batches import TrainingData, build_batch, rank_sample_indices, step_batches
from train.configs import SegTrainConfig
from train.datasets import training_vocabulary
from train.dry_run import dry_run
from train.evaluate import evaluate, load_benchmark
from train.init_from import load_baseline_weights
from train.losses import SetCriterion
from train.matcher import HungarianMatcher
from train.optimizer import lr_factor, parameter_groups
from train.recipes import get_recipe, read_recipe_file, recipe_names
from train.resume import ResumeError, resume_point
from train.runtime import (
    DistributedContext,
    MetricsLog,
    NonFiniteLossError,
    all_reduce,
    check_finite,
    cleanup_distributed,
    gathered_rng_states,
    load_training_state,
    predictions_are_finite,
    save_training_state,
    seed_everything,
    setup_distributed,
    stop_unless_finite,
    weights_are_finite,
)


# -------------------------------------------------------------------------------------------- model
def build_segmenter(config: SegTrainConfig) -> Segmenter:
    """A fresh segmenter; the CLIP comes from ``init_clip`` (a trained local open_clip folder) when given."""
    model_config = config.model
    if config.init_clip:
        clip_dir = Path(config.init_clip)
        open_clip_cfg = json.loads((clip_dir / "open_clip_config.json").read_text())
        model_config = dataclasses.replace(
            model_config,
            clip=dataclasses.replace(
                model_config.clip,
                model_cfg=open_clip_cfg["model_cfg"],
                pretrained=str(clip_dir / "open_clip_model.safetensors"),
            ),
        )
    segmenter = Segmenter(model_config)
    # The checkpoint stores the CLIP weights itself; pretrained only says where they first came from. The
    # activation the tag implied is written down, or a reload would build OpenAI's towers with plain GELU.
    clip = dataclasses.replace(model_config.clip, pretrained=None, quick_gelu=tag_quick_gelu(model_config.clip))
    segmenter.config = dataclasses.replace(model_config, clip=clip)
    return segmenter


# ------------------------------------------------------------------------------------------- train
def train(
    config: SegTrainConfig, out_dir: Path, *, resume: bool = True, restart: bool = False, command: str = ""
) -> dict[str, Any]:
    """Run (or resume) one training; returns the final metrics.

    ``resume``: continue from the newest valid checkpoint in ``out_dir``. When ``out_dir`` holds a run
    but none of its checkpoints is valid, training refuses to start again from step 0 unless
    ``restart`` is given (then the old log rows are dropped, never duplicated).
    """
    ctx = setup_distributed()
    try:
        return _train(config, out_dir, ctx, resume=resume, restart=restart, command=command)
    finally:
        cleanup_distributed()


AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
TRAINED_SHARD_SIZE = "5GB"  # Hugging Face's default shard size


def check_backbone_weights(config: SegTrainConfig) -> None:
    """Never from scratch by accident: a timm or Swin backbone needs pretrained weights unless ``from_scratch``."""
    backbone = config.model.backbone
    if backbone.kind in ("timm", "swin") and not backbone.pretrained_file and not config.from_scratch:
        raise ValueError(
            f"the backbone {backbone.name!r} has no pretrained weights (model.backbone.pretrained_file is empty): it "
            "would train from random weights. Give a weights file or a Hub id in the local cache, or pass "
            "--from-scratch if that is what you want"
        )


def _train(
    config: SegTrainConfig, out_dir: Path, ctx: DistributedContext, *, resume: bool, restart: bool, command: str
) -> dict[str, Any]:
    per_rank = config.per_rank_batch(ctx.world_size)
    check_backbone_weights(config)
    seed_everything(config.seed)
    segmenter = build_segmenter(config).to(ctx.device)
    data = TrainingData(config)
    # The training vocabulary travels with the model: Eq. 3's clip_weight_unseen tells prompts apart by it,
    # with every synonym and suffix-free form that the evaluator also counts as seen.
    segmenter.config.training_names = training_vocabulary(data.class_names)
    with torch.no_grad():
        class_embeddings = segmenter.clip.encode_text(data.class_names).to(ctx.device)  # (V, C), CLIP is frozen
    # Per-rank random streams (dropout, drop path, the matcher's points) from base seed + rank, after the model
    # is built alike on every rank; rank 0 keeps the single-process stream, so 1 GPU and rank 0 of 8 agree.
    if ctx.rank:
        seed_everything(config.seed + ctx.rank)
    model = segmenter.proposal_model
    if config.init_from:
        fresh = load_baseline_weights(model, config.init_from)
        if ctx.is_main:
            print(
                f"--init-from {config.init_from}: {len(fresh)} text-layer weights new, the rest loaded", file=sys.stderr
            )
    model.train()
    optimizer = torch.optim.AdamW(parameter_groups(model, config), lr=config.lr, weight_decay=config.weight_decay)
    # num_points=None: train.matcher.points_for_mask_size keeps Mask2Former's point density at any crop size.
    criterion = SetCriterion(
        HungarianMatcher(
            cost_class=config.class_weight,
            cost_mask=config.mask_weight,
            cost_dice=config.dice_weight,
            mask_loss=config.mask_loss,
        ),
        mask_loss=config.mask_loss,
        no_object_weight=config.no_object_weight,
        weight_ce=config.class_weight,
        weight_mask=config.mask_weight,
        weight_dice=config.dice_weight,
    )
    checkpoint_dir = out_dir / "checkpoints"
    log = MetricsLog(out_dir / "metrics.jsonl", enabled=ctx.is_main)
    start_step = 0
    latest = resume_point(checkpoint_dir, log, config, resume, restart)
    use_amp = config.amp and ctx.device.type == "cuda"
    # fp16 needs loss scaling (V100s have no bf16); bf16 does not. Disabled, the scaler passes everything through.
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=use_amp and config.amp_dtype == "float16")
    if latest is not None:
        start_step, extra = load_training_state(latest, model, optimizer, rank=ctx.rank)
        if "grad_scaler" in extra and scaler.is_enabled():
            scaler.load_state_dict(extra["grad_scaler"])
        if ctx.is_main:
            print(f"resumed from {latest} at step {start_step}", file=sys.stderr)
    elif restart and ctx.is_main and log.records():
        print(f"--restart: starting {out_dir} again from step 0; its old log rows are dropped", file=sys.stderr)
    log.truncate_after(start_step)  # no step is ever logged twice
    if ctx.is_main:
        (out_dir / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    # Every trainable parameter gets a gradient in every step, in every text mode and decoder (tested), so DDP
    # needs no search for unused ones (find_unused_parameters would walk the graph after each backward).
    ddp_model = DistributedDataParallel(model) if ctx.enabled else model
    progress = tqdm(
        range(start_step, config.steps),
        initial=start_step,
        total=config.steps,
        desc="train.train_segmenter",
        disable=not ctx.is_main or not sys.stderr.isatty(),
        dynamic_ncols=True,
    )
    started = time.perf_counter()
    batches = step_batches(data, config, start_step, ctx.rank, per_rank, pin_memory=ctx.device.type == "cuda")
    for step, (samples, pixels) in zip(progress, batches):
        factor = lr_factor(step, config)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        first = rank_sample_indices(step, ctx.rank, per_rank, config.batch_size).start
        images, text, text_mask, targets = build_batch(
            samples, config.seed * 7_919 + first, class_embeddings, config, ctx.device, pixels
        )
        with torch.autocast(device_type=ctx.device.type, dtype=AMP_DTYPES[config.amp_dtype], enabled=use_amp):
            outputs = ddp_model(images, text, text_mask)
        # Diverged weights give NaN predictions; the matcher would fail on them with no step in the message.
        stop_unless_finite(predictions_are_finite(outputs), ctx, step, "predictions")
        losses = criterion(_to_float(outputs), targets)
        loss = criterion.total_loss(losses)
        check_finite(loss, ctx, step)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # the clip acts on true gradients
        grad_norm = (
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad_norm)
            if config.clip_grad_norm > 0
            else torch.tensor(0.0)
        )
        scaler.step(optimizer)  # skipped (and the scale lowered) when fp16 gradients overflowed
        scaler.update()
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            record = {
                "step": done,
                "loss": float(all_reduce(loss.detach())) / ctx.world_size,
                "lr": optimizer.param_groups[0]["lr"],
                "grad_norm": float(grad_norm),
                "seconds": round(time.perf_counter() - started, 2),
            }
            for key in ("loss_ce", "loss_mask", "loss_dice"):
                if key in losses:
                    record[key] = float(losses[key].detach())
            log.write(record)
            progress.set_postfix(loss=f"{record['loss']:.3f}")
        if done % config.checkpoint_every == 0 or done == config.steps:
            stop_unless_finite(weights_are_finite(model), ctx, done, "weights")  # never save a diverged model
            rng_states = gathered_rng_states(ctx)  # every rank's, so each resumes its own streams
            if ctx.is_main:
                extra = {"train_config": config.to_dict(), "grad_scaler": scaler.state_dict()}
                save_training_state(checkpoint_dir, done, model, optimizer, extra, rng_states=rng_states)
            if ctx.enabled:
                dist.barrier()
        if config.eval_every and done % config.eval_every == 0 and done != config.steps:
            log.write({"step": done, **_evaluate(segmenter, config, ctx)})
            model.train()
    metrics = _evaluate(segmenter, config, ctx) if config.eval_limit > 0 else {}
    if ctx.enabled:
        metrics["ranks_agree"] = ranks_agree(model, ctx)
    if ctx.is_main:
        log.write({"step": config.steps, **metrics})
        log.plot(out_dir / "loss.png", keys=("loss", "loss_ce", "loss_mask", "loss_dice"))
        # Few large shards: the 9 MB shards are for the bundled world models, which a Space serves without LFS.
        segmenter.save_pretrained(
            out_dir / "model", model_card=training_card(config, metrics, command), max_shard_size=TRAINED_SHARD_SIZE
        )
        (out_dir / "final_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def ranks_agree(model: torch.nn.Module, ctx: DistributedContext) -> bool:
    """DDP sanity check: every rank must end with the same weights; raises if they diverged."""
    checksum = torch.stack(
        [
            torch.cat([p.detach().double().flatten() for p in model.parameters()]).sum(),
            torch.cat([p.detach().double().flatten().abs() for p in model.parameters()]).sum(),
        ]
    ).to(ctx.device)
    gathered = [torch.zeros_like(checksum) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, checksum)
    if not all(torch.allclose(g, gathered[0], rtol=1e-9, atol=0) for g in gathered):
        raise RuntimeError(f"DDP ranks diverged: weight checksums {[g.tolist() for g in gathered]}")
    return True


def _to_float(outputs: dict[str, Any]) -> dict[str, Any]:
    """Losses run in float32 even when the forward ran under bf16 autocast.

    ``proposal_mask`` (concat and text_queries: which proposals are real) is copied to every aux layer so the
    matcher never assigns a target to a padded text query.
    """

    def convert(prediction: dict[str, Any]) -> dict[str, Any]:
        converted = {k: v.float() for k, v in prediction.items() if k in ("pred_logits", "pred_masks")}
        if "proposal_mask" in outputs:
            converted["proposal_mask"] = outputs["proposal_mask"]
        return converted

    return {**convert(outputs), "aux_outputs": [convert(aux) for aux in outputs.get("aux_outputs", [])]}


def _evaluate(segmenter: Segmenter, config: SegTrainConfig, ctx: DistributedContext) -> dict[str, Any]:
    """Validation: the evaluator on the first ``eval_limit`` images of ``eval_benchmark``, every rank its
    share (all-reduced). The world's benchmarks are drawn at the crop size; a real one (a held-out split under
    ``data_root``, e.g. ADE20K-150 validation as OVSeg's TEST period evaluates) at the model's own size."""
    if config.eval_limit <= 0:
        return {}

    world = config.data == "world"
    benchmark = load_benchmark(config.eval_benchmark, None if world else config.data_root, "val")
    segmenter.eval()
    result = evaluate(
        segmenter,
        benchmark,
        limit=config.eval_limit,
        image_size=config.crop_size if world else None,
        show_progress=False,
    )
    return {
        f"eval/{config.eval_benchmark}/{key}": result[key]
        for key in ("miou", "miou_seen", "miou_unseen", "proposal_recall")
    }


def read_config(path: Path) -> SegTrainConfig:
    """A ``train_config.json``, or a recipe file of one's own (its ``config``, text mode as written)."""
    data = json.loads(path.read_text())
    if "config" in data and "sources" in data:
        data = read_recipe_file(path)["config"]
    return SegTrainConfig.from_dict(data)


def portable_arguments(argv: list[str], root: Path | None = None) -> list[str]:
    """Command-line arguments as a model card may record them: no path of the machine they ran on.

    Absolute paths inside ``root`` (default: the working directory) become relative to it; other
    absolute paths keep only their last part, as ``<...>/name``.
    """
    root = (root or Path.cwd()).resolve()
    portable = []
    for argument in argv:
        path = Path(argument)
        if path.is_absolute():
            resolved = path.resolve()
            argument = str(resolved.relative_to(root)) if resolved.is_relative_to(root) else f"<...>/{path.name}"
        portable.append(argument)
    return portable


def training_card(config: SegTrainConfig, metrics: dict[str, Any], command: str) -> str:
    """The model card of a trained segmenter: :func:`pmp.checkpoint.model_card` with how it was trained."""
    training = (
        "Trained with this project's `train.train_segmenter` (Mask2Former recipe: Hungarian matching, CE + BCE + dice "
        f"with weights 2/5/5, AdamW) on `{config.data}`, crop {config.crop_size} px, "
        f"global batch {config.batch_size}, "
        f"{config.steps} steps, seed {config.seed}."
    )
    return model_card(
        config.model, training=training, command=command or "python -m train.train_segmenter ...", metrics=metrics
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.train_segmenter",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--recipe", default="world-pmp", help=f"one of: {', '.join(recipe_names())}")
    parser.add_argument(
        "--config", type=Path, default=None, help="a train_config.json (or a recipe file of one's own) instead"
    )
    parser.add_argument("--out", type=Path, default=None, help="the run's folder (required unless --print-config)")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved training config as JSON and exit"
    )
    parser.add_argument(
        "--from-scratch", action="store_true", help="train a timm backbone from random weights (refused otherwise)"
    )
    parser.add_argument(
        "--dry-run",
        type=int,
        default=None,
        metavar="STEPS",
        help="run the recipe for STEPS steps on generated data in the real layout, random weights where real ones "
        "are absent, and report seconds per step, peak memory and the losses (train.dry_run)",
    )
    parser.add_argument("--crop-size", type=int, default=None, help="override the training crop (a reduced dry run)")
    parser.add_argument(
        "--amp-dtype",
        choices=("bfloat16", "float16"),
        default=None,
        help="autocast dtype on CUDA (default: the recipe's, bfloat16); float16 trains with a GradScaler (V100s)",
    )
    parser.add_argument(
        "--init-from",
        default=None,
        metavar="FOLDER",
        help="start from a trained baseline of the same recipe: every weight but the text layers (train.init_from)",
    )
    parser.add_argument(
        "--text-mode", default=None, help="override decoder.text_mode (none, pmp, concat, concat_drop, text_queries)"
    )
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--num-queries", type=int, default=None, help="override decoder.num_queries")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--init-clip", default=None, help="a local open_clip folder (e.g. checkpoints/tiny-clip)")
    parser.add_argument("--eval-limit", type=int, default=None)
    parser.add_argument(
        "--present-prob", type=float, default=None, help="prompt each present class with this probability"
    )
    parser.add_argument("--no-resume", action="store_true", help="start at step 0 in a fresh --out")
    parser.add_argument(
        "--restart",
        action="store_true",
        help="start again from step 0 in an --out that holds a run (its checkpoints and log rows are replaced)",
    )
    parser.add_argument(
        "--push-to-hub", default=None, metavar="REPO_ID", help="upload the final model folder to this Hub repo"
    )
    args = parser.parse_args(argv)
    try:
        config = read_config(args.config) if args.config else get_recipe(args.recipe)
    except (ValueError, OSError) as error:
        parser.error(str(error))
    overrides = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "data_root": args.data_root,
        "init_clip": args.init_clip,
        "eval_limit": args.eval_limit,
        "present_prob": args.present_prob,
        "crop_size": args.crop_size,
        "init_from": args.init_from,
        "amp_dtype": args.amp_dtype,
    }
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    decoder_overrides = {"text_mode": args.text_mode, "num_queries": args.num_queries}
    decoder_overrides = {key: value for key, value in decoder_overrides.items() if value is not None}
    if decoder_overrides:
        config.model = dataclasses.replace(
            config.model, decoder=dataclasses.replace(config.model.decoder, **decoder_overrides)
        )
        config.model.validate()
    if args.from_scratch:
        config.from_scratch = True
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    if args.out is None:
        parser.error("--out is required to train (the run's folder)")
    if args.dry_run is not None:
        try:
            report = dry_run(config, args.dry_run, args.out, train)
        except (ValueError, FileNotFoundError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(json.dumps(report, indent=2))
        return 0
    command = "python -m train.train_segmenter " + " ".join(portable_arguments(sys.argv[1:] if argv is None else argv))
    try:
        metrics = train(config, args.out, resume=not args.no_resume, restart=args.restart, command=command)
    except (ResumeError, NonFiniteLossError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as error:  # the batch over the ranks, missing backbone or CLIP weights
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(metrics, indent=2))
    if args.push_to_hub and int(os.environ.get("RANK", "0")) == 0:
        url = Segmenter.from_pretrained(args.out / "model").push_to_hub(args.push_to_hub)
        print(f"pushed to {url}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
