"""Mask-adaptation studies of the tiny CLIP that did not ship (docs/results.md): its image tower grown or
replaced before adapting, and why proposal crops are misread.

    python -m experiments.adaptation --clip checkpoints/tiny-clip --out runs/deeper --vision-layers 2,2,2,2
    python -m experiments.adaptation --clip checkpoints/tiny-clip --out runs/fresh --fresh-image-tower 32,64
    python -m experiments.adaptation --clip checkpoints/tiny-clip --proposals-from checkpoints/baseline \\
        --measure-only --crop-errors [--crop-views masked,box]

Every other flag is ``python -m train.adapt_clip``'s, which adapts the tower these functions return.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
from collections import Counter
from typing import Any

import numpy as np
import torch

from pmp.clip import CLIPModel
from pmp.segmenter import Segmenter
from pmp.stage2 import crop_classify
from train.adapt_clip import (
    build_parser,
    config_from_args,
    load_proposal_segmenter,
    measure_or_adapt,
)
from train.adapt_regions import (
    REGION_NAMES,
    Regions,
    held_out_seeds,
    matched_proposals,
    region_scenes,
)
from train.configs import CLIPAdaptConfig
from train.train_clip import (
    load_clip_for_evaluation,
)
from train.world.vocabulary import (
    GRANULARITY,
)

IOU_BINS = (0.5, 0.6, 0.7, 0.8, 0.9)  # lower edges: the matched proposals' IoU with the region they are named after


def _crop_outcome(binary: np.ndarray, truth: str, guessed: str, regions: Regions) -> tuple[float, str | None]:
    """One proposal crop's IoU with the region it is named after (the best of that name's regions, as
    :func:`matched_proposals` chose it) and, when misread, where the guessed name lies: ``inside the
    mask`` (its regions cover at least 10% of the proposal), ``elsewhere in the scene`` or ``not in it``."""
    iou = max((binary & mask).sum() / max((binary | mask).sum(), 1) for mask, name in regions if name == truth)
    if guessed == truth:
        return float(iou), None
    guessed_pixels = [mask for mask, name in regions if name == guessed]
    if not guessed_pixels:
        return float(iou), "not in it"
    covered = (binary & np.logical_or.reduce(guessed_pixels)).sum()
    return float(iou), "inside the mask" if covered >= 0.1 * binary.sum() else "elsewhere in the scene"


@torch.no_grad()
def proposal_crop_errors(
    clip: CLIPModel, config: CLIPAdaptConfig, segmenter: Segmenter, views: tuple[str, ...] = ("masked",)
) -> dict[str, Any]:
    """Why crops of proposals are misread, on the held-out crops of :func:`region_accuracy`.

    Returns top-1 and the share of crops per bin of their proposal's IoU with the region they are named
    after (:data:`IOU_BINS`); where the wrong answers lie (:func:`_crop_outcome`); and what kind of name
    each kind of region is misread as (thing / stuff / part named as thing / stuff / part). Each crop is
    read as stage 2 reads it with these ``views`` (:func:`pmp.stage2.crop_classify`; ("masked",) is
    OVSeg's crop, the one the bundled CLIP was adapted on).
    """
    was_training = clip.training
    clip.eval()
    text = clip.encode_text(list(REGION_NAMES))  # (V, C)
    ious, hits, where, kinds = [], [], Counter(), Counter()
    for seeds in held_out_seeds(config):
        scenes = region_scenes(seeds, config)
        for (image, regions), (masks, names) in zip(
            scenes, matched_proposals(segmenter, scenes, config.proposal_min_iou)
        ):
            if not names:
                continue
            guesses = crop_classify(clip, image, masks, text, views=views).argmax(-1)  # (N,): matches are non-empty
            for index, guess in enumerate(guesses.tolist()):
                truth, guessed = names[index], REGION_NAMES[guess]
                iou, lies = _crop_outcome(masks[index].numpy() > 0.5, truth, guessed, regions)
                ious.append(iou)
                hits.append(lies is None)
                if lies is not None:
                    where[lies] += 1
                    kinds[f"{GRANULARITY[truth]} named as {GRANULARITY[guessed]}"] += 1
    clip.train(was_training)
    if not hits:
        return {"crops": 0}
    iou, correct = np.asarray(ious), np.asarray(hits)
    edges = (*IOU_BINS, 1.01)
    bins = {}
    for low, high in zip(edges[:-1], edges[1:]):
        chosen = (iou >= low) & (iou < high)
        if chosen.any():
            bins[f"{low:.1f}-{min(high, 1.0):.1f}"] = {
                "share": float(chosen.mean()),
                "top1": float(correct[chosen].mean()),
            }
    errors = max(int((~correct).sum()), 1)
    return {
        "crops": len(hits),
        "top1": float(correct.mean()),
        "by_iou": bins,
        "errors_lie": {key: count / errors for key, count in where.most_common()},
        "errors_by_kind": {key: count / errors for key, count in kinds.most_common()},
    }


def crop_error_table(errors: dict[str, Any]) -> str:
    """Markdown of :func:`proposal_crop_errors`: top-1 per IoU bin, then where the wrong names lie."""
    bins = errors["by_iou"]
    top1 = " | ".join(f"{100 * b['top1']:.0f}" for b in bins.values())
    lines = [
        "| IoU of the proposal with its region | " + " | ".join(bins) + " | all |",
        "|---|" + "---|" * (len(bins) + 1),
        "| share of the crops (%) | " + " | ".join(f"{100 * b['share']:.0f}" for b in bins.values()) + " | 100 |",
        f"| top-1 (%) | {top1} | {100 * errors['top1']:.0f} |",
    ]
    lies = ", ".join(f"{where} {100 * share:.0f}%" for where, share in errors["errors_lie"].items())
    kinds = ", ".join(f"{kind} {100 * share:.0f}%" for kind, share in errors["errors_by_kind"].items())
    return "\n".join(lines) + f"\n\nWrong names: {lies}. By kind: {kinds}.\n"


def _modified_resnet_cfg(clip: CLIPModel, action: str) -> dict[str, Any]:
    """A copy of ``clip``'s model_cfg, checked to describe a ModifiedResNet image tower (else ValueError)."""
    from open_clip.modified_resnet import ModifiedResNet

    model_cfg = copy.deepcopy(clip.config.model_cfg or {})
    vision_cfg = model_cfg.get("vision_cfg", {})
    if not isinstance(clip.open_clip.visual, ModifiedResNet) or not isinstance(vision_cfg.get("layers"), list):
        raise ValueError(f"only a CLIP with a ModifiedResNet image tower given by model_cfg can be {action}")
    return model_cfg


def _rebuilt(clip: CLIPModel, model_cfg: dict[str, Any], state: dict[str, torch.Tensor]) -> tuple[CLIPModel, Any]:
    """A CLIP built to ``model_cfg`` with ``state`` loaded non-strictly (returns the load result), in
    ``clip``'s training mode."""
    rebuilt = CLIPModel.build(dataclasses.replace(clip.config, model_cfg=model_cfg, pretrained=None))
    result = rebuilt.open_clip.load_state_dict(state, strict=False)
    rebuilt.train(clip.training)
    rebuilt.open_clip.train(clip.open_clip.training)  # CLIPModel.build leaves the open_clip model in eval mode
    return rebuilt, result


def deepen_image_tower(clip: CLIPModel, layers: tuple[int, ...]) -> CLIPModel:
    """A copy of ``clip`` whose ModifiedResNet image tower has ``layers`` bottleneck blocks per stage.

    Why: stage 2 runs the tower on every proposal, so capacity is cheaper in depth than in width (a
    convolution's cost grows with the square of its width). The new blocks are
    appended to each stage and start as the identity (open_clip zero-initialises every block's last
    BatchNorm scale, and a block's input is already non-negative), so the grown CLIP computes exactly
    what ``clip`` did until adaptation trains them. The text tower is copied unchanged.
    """
    model_cfg = _modified_resnet_cfg(clip, "deepened")
    current = list(model_cfg["vision_cfg"]["layers"])
    if len(layers) != len(current) or any(new < old for new, old in zip(layers, current)):
        raise ValueError(
            f"vision layers {list(layers)} must give each of the {len(current)} stages at least the blocks it "
            f"has ({current})"
        )
    model_cfg["vision_cfg"]["layers"] = list(layers)
    grown, result = _rebuilt(clip, model_cfg, clip.open_clip.state_dict())
    new_blocks = tuple(
        f"visual.layer{stage + 1}.{block}." for stage, old in enumerate(current) for block in range(old, layers[stage])
    )
    if result.unexpected_keys or any(not key.startswith(new_blocks) for key in result.missing_keys):
        raise RuntimeError(f"growing the image tower lost weights: {result.unexpected_keys or result.missing_keys}")
    return grown


def fresh_image_tower(clip: CLIPModel, width: int, image_size: int) -> CLIPModel:
    """A copy of ``clip`` with a new, randomly initialised ModifiedResNet image tower ``width`` channels
    wide that reads ``image_size`` px crops; the text tower (and logit scale) copied unchanged.

    Why: the world's proposals are small (a wheel is a few pixels of a 128 px image), so a crop resized to
    the tiny CLIP's 128 px shows CLIP little more than a 64 px one would, while the tower's cost grows
    with its input's area. Halving the crop side pays for twice the width at about the same cost per
    crop (``benchmarks/latency.py`` times stage 2). A wider tower cannot inherit the narrow one's weights,
    so adaptation trains it from scratch against the frozen text tower.
    """
    model_cfg = _modified_resnet_cfg(clip, "given a new image tower")
    if width < 1 or image_size < 32 or image_size % 32:
        raise ValueError(
            f"a ModifiedResNet tower needs a width >= 1 and an image size that is a multiple of 32 (>= 32); got "
            f"width {width}, image size {image_size}"
        )
    model_cfg["vision_cfg"].update(width=width, image_size=image_size)
    text_state = {k: v for k, v in clip.open_clip.state_dict().items() if not k.startswith("visual.")}
    fresh, result = _rebuilt(clip, model_cfg, text_state)
    if result.unexpected_keys or any(not key.startswith("visual.") for key in result.missing_keys):
        raise RuntimeError(f"the new image tower lost text weights: {result.unexpected_keys or result.missing_keys}")
    return fresh


def _layers(text: str, parser: argparse.ArgumentParser) -> tuple[int, ...]:
    """``--vision-layers`` as a tuple of block counts; a parser error says what is accepted."""
    try:
        layers = tuple(int(value) for value in text.split(","))
    except ValueError:
        parser.error(f"--vision-layers {text!r}: give comma-separated block counts per stage, e.g. 2,2,2,2")
    if any(value < 1 for value in layers):
        parser.error(f"--vision-layers {text!r}: every stage needs at least one block")
    return layers


def _fresh_tower(text: str, parser: argparse.ArgumentParser) -> tuple[int, int]:
    """``--fresh-image-tower`` as (width, size); a parser error says what is accepted."""
    try:
        width, size = (int(v) for v in text.split(","))
    except ValueError:
        parser.error(f"--fresh-image-tower takes WIDTH,SIZE as two integers, e.g. 32,64; got {text!r}")
    return width, size


def main(argv: list[str] | None = None) -> int:
    parser = build_parser("python -m experiments.adaptation", __doc__)
    parser.add_argument(
        "--vision-layers",
        default=None,
        help="grow the image tower to this many blocks per stage before adapting, e.g. 2,2,2,2 (deepen_image_tower)",
    )
    parser.add_argument(
        "--fresh-image-tower",
        default=None,
        metavar="WIDTH,SIZE",
        help="replace the image tower by a new one this wide reading crops of this size before adapting, e.g. "
        "32,64 (fresh_image_tower)",
    )
    parser.add_argument(
        "--crop-errors",
        action="store_true",
        help="with --measure-only and --proposals-from: only why proposal crops are misread (proposal_crop_errors)",
    )
    args = parser.parse_args(argv)
    config = config_from_args(args, parser)
    config = dataclasses.replace(
        config,
        vision_layers=_layers(args.vision_layers, parser) if args.vision_layers else None,
        fresh_image_tower=_fresh_tower(args.fresh_image_tower, parser) if args.fresh_image_tower else None,
    )
    command = "python -m experiments.adaptation " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.out is None and not args.measure_only:
        parser.error("--out is required, unless --measure-only")
    if args.crop_errors and not (args.measure_only and args.proposals_from):
        parser.error("--crop-errors needs --measure-only and --proposals-from")
    clip = load_clip_for_evaluation(args.clip)
    if config.fresh_image_tower is not None:
        clip = fresh_image_tower(clip, *config.fresh_image_tower)
    if config.vision_layers is not None:
        clip = deepen_image_tower(clip, config.vision_layers)
    errors = None
    if args.crop_errors:
        errors = proposal_crop_errors(clip, config, load_proposal_segmenter(config), config.crop_views)
    return measure_or_adapt(args, clip, config, command, metrics=errors)


if __name__ == "__main__":
    raise SystemExit(main())
