"""Mask-adapted CLIP (OVSeg, Liang et al., CVPR 2023, Sec. 3.2) for the tiny CLIP: the image tower is
fine-tuned on masked crops of regions, the text tower stays frozen.

    python -m train.adapt_clip --clip checkpoints/tiny-clip --out runs/tiny-clip-adapted \
        [--steps 2400] [--lr 5e-4] [--seed 0] [--proposals-from checkpoints/baseline] [--results FILE.json] \
        [--vision-layers 2,2,2,2]                # a deeper image tower, grown from the given one
        [--fresh-image-tower 32,64]              # a new tower, 32 wide, reading 64 px crops, from scratch
    python -m train.adapt_clip --clip runs/tiny-clip-adapted/model --proposals-from checkpoints/baseline \
        --measure-only [--crop-errors]          # its top-1 on held-out crops (or why they are misread)

Why: OVSeg's stage 2 classifies each proposal by a masked crop (:func:`pmp.stage2.masked_crops`), and a
CLIP trained on whole photos has never seen an image that is mostly CLIP's mean colour with one region
left. OVSeg collects such crops (its proposals matched to caption nouns) and fine-tunes CLIP on them;
this module does the same on the synthetic world, with each region's name standing in for the caption
noun. Like the tiny CLIP's own pairs, the regions cover every thing, part and stuff name, seen or not:
the open-vocabulary premise is that CLIP knows every word; the segmenters still learn seen masks only.

Departures from OVSeg, and why:
* The regions are the world's own masks, degraded to the proposals' resolution (area pooling to a
  quarter of the image, a random one-cell dilation or erosion, bilinear upsampling), instead of
  pseudo-labelled proposals: the world renders them for free, and no segmenter has to run first.
  ``--proposals-from SEGMENTER`` makes some of each scene's crops a trained segmenter's own proposals,
  named after the world region each overlaps best (OVSeg names them by caption nouns with CLIP); the
  bundled CLIP does without, since on held-out crops that traded seen things for parts.
* The text tower is frozen (OVSeg fine-tunes the whole CLIP). The segmenters' class embeddings and PMP's
  text tokens come from it, so the bundled segmenters stay valid without retraining, and only the
  image tower's weights change.
* Each step also keeps the CLIP's own contrastive objective on its image-caption pairs (frozen text), so
  the tower does not forget whole photos and group words while it learns crops.
* ``--crop-views masked,box`` trains on each region's masked crop and its box (the views the world
  recipe's stage 2 reads, :data:`pmp.config.CROP_VIEWS`), with the loss on the two views' combined p_hat;
  OVSeg trains on masked crops alone, the default, which is how the bundled CLIP was adapted.
* ``--vision-layers`` grows the image tower before adapting it (:func:`deepen_image_tower`): a capacity
  the tiny CLIP never had, added without retraining the text tower or the segmenters.
  ``--fresh-image-tower WIDTH,SIZE`` instead starts a wider tower that reads smaller crops from scratch
  (:func:`fresh_image_tower`), trained by the same objective against the frozen text tower.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from pmp.clip import CLIPModel
from pmp.config import check_crop_views
from pmp.segmenter import Segmenter
from train.adapt_regions import (
    REGION_NAMES,
    SCENE_SEED_BASE,
    SEED_STRIDE,
    check_kind_weights,
    region_accuracy,
    region_batch,
    region_view_loss,
)
from train.configs import CLIPAdaptConfig, CLIPTrainConfig
from train.recipes import world_model
from train.runtime import MetricsLog, cosine_lr_factor, seed_everything
from train.train_clip import (
    CONTRASTIVE_DESCRIPTION,
    load_clip_for_evaluation,
    make_pair,
    save_open_clip_folder,
    to_clip_pixels,
    zero_shot_accuracy,
)


def accuracies(clip: CLIPModel, config: CLIPAdaptConfig, segmenter: Segmenter | None) -> dict[str, float]:
    """Everything :func:`adapt` measures before and after: region (and proposal) top-1, zero-shot tests."""

    clip_train = CLIPTrainConfig(
        image_size=config.image_size, seed=config.seed, eval_crops_per_class=config.eval_crops_per_class
    )
    measured = {**region_accuracy(clip, config), **zero_shot_accuracy(clip, clip_train)}
    if segmenter is not None:
        measured.update(region_accuracy(clip, config, segmenter))
    return measured


def load_proposal_segmenter(config: CLIPAdaptConfig) -> Segmenter | None:
    """The trained segmenter whose proposals :func:`matched_proposals` names, frozen; None without one."""
    if config.proposal_segmenter is None:
        return None
    segmenter = Segmenter.from_pretrained(config.proposal_segmenter)
    segmenter.eval().requires_grad_(False)
    return segmenter


def adapt(clip: CLIPModel, config: CLIPAdaptConfig, out_dir: Path, *, command: str = "") -> dict[str, float]:
    """Fine-tune ``clip``'s image tower in place (text tower and logit scale frozen); write the adapted
    CLIP as an open_clip folder to ``out_dir / "model"`` with before / after accuracies."""
    seed_everything(config.seed)
    rng = np.random.default_rng(config.seed)
    if clip.config.model_cfg is None:
        raise ValueError("adaptation saves an open_clip folder, so it needs a CLIP given by model_cfg (such a folder)")
    clip_train = CLIPTrainConfig(
        model_cfg=clip.config.model_cfg,  # saved as the adapted folder's architecture
        image_size=config.image_size,
        seed=config.seed,
        eval_crops_per_class=config.eval_crops_per_class,
    )
    segmenter = load_proposal_segmenter(config)
    before = accuracies(clip, config, segmenter)
    clip.requires_grad_(False)
    visual = clip.open_clip.visual
    visual.requires_grad_(True)
    decay = [p for p in visual.parameters() if p.ndim >= 2]
    no_decay = [p for p in visual.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    with torch.no_grad():
        region_text = clip.encode_text(list(REGION_NAMES)).clone()  # (V, C), template-averaged as at inference
    logit_scale = clip.logit_scale.detach()
    contrastive = ClipLoss()
    log = MetricsLog(out_dir / "metrics.jsonl")
    clip.train()
    started = time.perf_counter()
    for step in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = config.lr * cosine_lr_factor(step, config.steps, config.warmup_steps)
        first_scene = SCENE_SEED_BASE + config.seed * SEED_STRIDE + step * config.scenes_per_step
        seeds = [first_scene + i for i in range(config.scenes_per_step)]
        crops, names = region_batch(clip, seeds, config, rng, segmenter)  # (V*B, 3, S, S), B names
        targets = torch.tensor([REGION_NAMES.index(n) for n in names])
        features = F.normalize(clip.open_clip.encode_image(crops), dim=-1)  # (V*B, C)
        region_loss = region_view_loss(logit_scale * features @ region_text.T, targets)
        first_pair = SCENE_SEED_BASE + config.seed * SEED_STRIDE + step * config.pair_batch
        pairs = [make_pair(first_pair + i, clip_train) for i in range(config.pair_batch)]
        pixels = to_clip_pixels([p[0] for p in pairs], clip.image_size)  # (P, 3, S, S)
        images = F.normalize(clip.open_clip.encode_image(pixels), dim=-1)
        with torch.no_grad():
            captions = F.normalize(clip.open_clip.encode_text(clip.tokenizer([p[1] for p in pairs])), dim=-1)
        pair_loss = contrastive(images, captions, logit_scale)
        loss = region_loss + pair_loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite adaptation loss at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(visual.parameters(), 1.0)
        optimizer.step()
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            log.write(
                {
                    "step": step + 1,
                    "loss": float(loss.detach()),
                    "region_loss": float(region_loss.detach()),
                    "pair_loss": float(pair_loss.detach()),
                    "seconds": round(time.perf_counter() - started, 2),
                }
            )
    clip.eval()
    clip.requires_grad_(False)
    clip.clear_cache()
    after = accuracies(clip, config, segmenter)
    metrics = {"adapt_seconds": round(time.perf_counter() - started, 1)}
    metrics.update({f"{k}_before": v for k, v in before.items()})
    metrics.update(after)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_open_clip_folder(
        clip,
        clip_train,
        out_dir / "model",
        metrics,
        command,
        description=CONTRASTIVE_DESCRIPTION[:-1] + ", then mask-adapted as OVSeg's CLIP: the image tower "
        "fine-tuned on masked crops of regions (train.adapt_clip), the text tower frozen.",
    )
    (out_dir / "final_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


ACCURACY_ROWS = {  # metric key: what it measures (top-1 in %, per name then averaged)
    "proposal_top1": "masked crops of the baseline's matched proposals: all names",
    "proposal_class_top1_seen": "masked crops of the baseline's matched proposals: seen things and stuff",
    "proposal_class_top1_unseen": "masked crops of the baseline's matched proposals: unseen things and stuff",
    "proposal_part_top1_seen": "masked crops of the baseline's matched proposals: seen parts",
    "proposal_part_top1_unseen": "masked crops of the baseline's matched proposals: unseen parts",
    "region_top1": "masked crops of proposal-like regions: all names",
    "region_class_top1_seen": "masked crops of proposal-like regions: seen things and stuff",
    "region_class_top1_unseen": "masked crops of proposal-like regions: unseen things and stuff",
    "region_part_top1_seen": "masked crops of proposal-like regions: seen parts",
    "region_part_top1_unseen": "masked crops of proposal-like regions: unseen parts",
    "zero_shot_top1": "whole-object crops among the class names",
    "zero_shot_part_top1": "part close-ups among the part names",
    "zero_shot_group_top1": "grouped things among the group words",
}


def with_adapted_clip(segmenter: Any, clip_folder: Path) -> Any:
    """A trained world segmenter with the bundled stage 2: the image tower of the mask-adapted CLIP in
    ``clip_folder`` and the recipe's stage 2 (:func:`train.recipes.world_model`'s ``stage2_mode``,
    ``crop_top_k`` and ``crop_views``).

    Stage 1 never runs the CLIP's image tower (its backbone is its own CNN) and adaptation leaves the
    text tower as it was, so stage 1's outputs are unchanged: only p_hat (Eq. 2) changes. Both are
    checked: a segmenter whose backbone is the CLIP tower, or a CLIP with another text tower, is refused.
    The image tower may have another architecture (:func:`train.adapt_clip.deepen_image_tower`): the
    segmenter's CLIP is then rebuilt from the adapted folder's config, which its saved config records.
    """

    config = segmenter.config
    if config.backbone.kind == "clip":
        raise ValueError("this segmenter's stage 1 runs the CLIP image tower; a new tower would change its proposals")
    own = segmenter.clip.open_clip.state_dict()
    adapted_clip = load_clip_for_evaluation(str(clip_folder))
    adapted = adapted_clip.open_clip.state_dict()
    text_keys = [k for k in own if not k.startswith("visual.")]
    if text_keys != [k for k in adapted if not k.startswith("visual.")]:
        raise ValueError(f"{clip_folder} is not this segmenter's CLIP architecture")
    text_changed = [
        k for k in text_keys if own[k].shape != adapted[k].shape or not torch.equal(own[k], adapted[k].to(own[k]))
    ]
    if text_changed:
        raise ValueError(
            f"{clip_folder} has another text tower than the segmenter ({', '.join(text_changed[:3])}, ...)"
        )
    # The new weights are a copy, not the CLIP the segmenter may have referenced (install_segmenter
    # references the installed one again).
    clip_config = dataclasses.replace(
        config.clip, model_cfg=adapted_clip.config.model_cfg, checkpoint=None, checkpoint_sha256=None
    )
    if clip_config.model_cfg != config.clip.model_cfg:  # another image-tower architecture: rebuild the CLIP
        clip = CLIPModel.build(dataclasses.replace(clip_config, pretrained=None)).to(segmenter.device)
        segmenter.clip = clip.requires_grad_(False).train(segmenter.training)
    segmenter.clip.open_clip.load_state_dict(adapted)
    segmenter.clip.clear_cache()
    recipe = world_model(config.decoder.text_mode, config.decoder.num_queries)
    segmenter.config = dataclasses.replace(
        config,
        clip=clip_config,
        stage2_mode=recipe.stage2_mode,
        crop_top_k=recipe.crop_top_k,
        crop_views=recipe.crop_views,
    )
    segmenter.config.validate()
    return segmenter


def accuracy_table(columns: dict[str, dict[str, float]]) -> str:
    """Markdown: each :data:`ACCURACY_ROWS` accuracy (rows) of each measured CLIP (columns: a title and
    its metrics, as :func:`accuracies` returns them); rows no column measured are left out."""
    lines = ["| top-1 (%) | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for key, title in ACCURACY_ROWS.items():
        if any(key in metrics for metrics in columns.values()):
            cells = [f"{100 * metrics[key]:.1f}" if key in metrics else "n/a" for metrics in columns.values()]
            lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def measured_before(metrics: dict[str, float]) -> dict[str, float]:
    """The accuracies of the CLIP an :func:`adapt` run started from (its ``*_before`` metrics)."""
    return {key[: -len("_before")]: value for key, value in metrics.items() if key.endswith("_before")}


def _kind_weights(text: str, parser: argparse.ArgumentParser) -> tuple[float, float, float]:
    """``--kind-weights`` as a tuple; a parser error (:func:`check_kind_weights`'s) says what is accepted."""
    try:
        weights = tuple(float(part) for part in text.split(","))
    except ValueError:
        weights = ()  # not numbers: check_kind_weights says what is accepted
    try:
        check_kind_weights(weights)
    except ValueError as error:
        parser.error(f"--kind-weights {text!r}: {error}")
    return weights  # type: ignore[return-value]


def build_parser(prog: str = "python -m train.adapt_clip", description: str | None = None) -> argparse.ArgumentParser:
    """The command line of world adaptation (experiments.adaptation adds its study flags to it)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description or __doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clip", required=True, help="the CLIP to adapt: an open_clip folder or a segmenter's CLIP")
    parser.add_argument(
        "--out", type=Path, default=None, help="the adapted CLIP's run folder (not with --measure-only)"
    )
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--proposals-from",
        default=None,
        help="a trained segmenter folder: its proposals, named by the region each matches, are adaptation "
        "regions too (OVSeg's data), and their crops are measured",
    )
    parser.add_argument(
        "--proposal-regions", type=int, default=None, help="with --proposals-from: how many of each scene's crops"
    )
    parser.add_argument(
        "--crop-views",
        default="masked",
        help="the views of each crop the tower learns from, e.g. masked,box (pmp.config.CROP_VIEWS)",
    )
    parser.add_argument(
        "--kind-weights",
        default=None,
        help="how often a world region of each kind is drawn, as stuff,thing,part weights, e.g. 1,1,1 "
        "(default: every region equally likely)",
    )
    parser.add_argument("--results", type=Path, default=None, help="also write the accuracies (JSON) here")
    parser.add_argument(
        "--measure-only", action="store_true", help="print the accuracies of --clip as it is; train nothing"
    )
    return parser


def config_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> CLIPAdaptConfig:
    """:class:`CLIPAdaptConfig` with the command line's values over its defaults."""
    views = tuple(args.crop_views.split(","))
    try:
        check_crop_views(views)
    except ValueError as error:
        parser.error(str(error))
    overrides = {
        "steps": args.steps,
        "lr": args.lr,
        "seed": args.seed,
        "proposal_segmenter": args.proposals_from,
        "proposal_regions": args.proposal_regions,
        "crop_views": views,
        "kind_weights": _kind_weights(args.kind_weights, parser) if args.kind_weights else None,
    }
    return dataclasses.replace(CLIPAdaptConfig(), **{k: v for k, v in overrides.items() if v is not None})


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = config_from_args(args, parser)
    command = "python -m train.adapt_clip " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.out is None and not args.measure_only:
        parser.error("--out is required, unless --measure-only")
    return measure_or_adapt(args, load_clip_for_evaluation(args.clip), config, command)


def measure_or_adapt(
    args: argparse.Namespace, clip: CLIPModel, config: CLIPAdaptConfig, command: str, metrics: dict | None = None
) -> int:
    """``--measure-only``: the accuracies of ``clip`` as it is; else adapt it. The figures (or ``metrics``, when
    the caller measured something else) go to stdout and to ``--results``."""
    record: dict[str, Any] = {"command": command}
    if metrics is None and args.measure_only:
        metrics = accuracies(clip, config, load_proposal_segmenter(config))
    elif metrics is None:
        metrics = adapt(clip, config, args.out, command=command)
        record["config"] = config.to_dict()
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps({**record, **metrics}, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
