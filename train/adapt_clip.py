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
import copy
import dataclasses
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from pmp.clip import CLIPModel
from pmp.config import check_crop_views
from pmp.images import normalize_pixels
from pmp.postprocess import upsample
from pmp.segmenter import Segmenter
from pmp.stage2 import crop_classify, masked_crops, view_log_probs
from train.configs import CLIPAdaptConfig, CLIPTrainConfig
from train.runtime import MetricsLog, cosine_lr_factor, seed_everything
from train.train_clip import (
    CONTRASTIVE_DESCRIPTION,
    load_clip_for_evaluation,
    make_pair,
    save_open_clip_folder,
    to_clip_pixels,
)
from train.world.vocabulary import (
    CLASS_NAMES,
    GRANULARITY,
    PART_NAMES,
    SEEN_CLASSES,
    SEEN_PARTS,
    STUFF_CLASSES,
)

REGION_NAMES: tuple[str, ...] = CLASS_NAMES + PART_NAMES  # what a masked crop is classified among
_SCENE_SEED_BASE = 700_000_000  # adaptation scenes: far from training indices and the benchmarks (> 2e9)
_EVAL_SEED_BASE = 800_000_000
_SEED_STRIDE = 10_000_000  # each adaptation seed draws its scenes from its own range (seed 0: the first)


def scene_regions(scene, min_pixels: int) -> list[tuple[np.ndarray, str]]:
    """Every region of a scene a proposal could be, with its name: (H, W) bool mask, name.

    Each thing whole (its instance, parts included), each visible part of each thing, each stuff class.
    """
    from train.world import IGNORE

    regions = []
    for obj in scene.objects:
        whole = scene.instances == obj.instance_id
        if whole.sum() >= min_pixels:
            regions.append((whole, obj.class_name))
        for part_id in np.unique(scene.parts[whole]):
            if part_id == IGNORE:
                continue
            part = whole & (scene.parts == part_id)
            if part.sum() >= min_pixels:
                regions.append((part, PART_NAMES[int(part_id)]))
    for class_id in np.unique(scene.semantic[scene.instances == 0]):
        if class_id != IGNORE and CLASS_NAMES[int(class_id)] in STUFF_CLASSES:
            stuff = (scene.semantic == class_id) & (scene.instances == 0)
            if stuff.sum() >= min_pixels:
                regions.append((stuff, CLASS_NAMES[int(class_id)]))
    return regions


def proposal_like(masks: torch.Tensor, stride: int, rng: np.random.Generator) -> torch.Tensor:
    """(R, H, W) bool region masks -> (R, H, W) soft masks as a proposal would draw them: area-averaged to
    1/``stride`` of the size, each dilated, eroded or kept by one cell at random, upsampled bilinearly."""
    height, width = masks.shape[-2:]
    coarse = F.adaptive_avg_pool2d(masks[:, None].float(), (height // stride, width // stride))  # (R, 1, h, w)
    change = torch.from_numpy(rng.integers(-1, 2, size=len(masks))).view(-1, 1, 1, 1)  # -1 erode, 1 dilate
    dilated = F.max_pool2d(coarse, 3, 1, 1)
    eroded = -F.max_pool2d(-coarse, 3, 1, 1)
    coarse = torch.where(change > 0, dilated, torch.where(change < 0, eroded, coarse))
    return F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[:, 0]


Regions = list[tuple[np.ndarray, str]]  # a scene's (H, W) bool masks and their names (scene_regions)


@torch.no_grad()
def matched_proposals(
    segmenter: Segmenter, scenes: list[tuple[torch.Tensor, Regions]], min_iou: float
) -> list[tuple[torch.Tensor, list[str]]]:
    """OVSeg's adaptation data: the ``segmenter``'s stage-1 proposals for each of ``scenes`` (a (3, H, W)
    image in [0, 1] and its :func:`scene_regions`), each named after the region of its scene it overlaps
    best, kept when that IoU (masks binarised at 0.5, as the crops are) is at least ``min_iou``. Returns
    per scene the kept soft masks (P, H, W), as stage 2 crops them at inference (sigmoid of the
    bilinearly upsampled logits), and their names.

    One batched forward, prompted with the names of all the scenes' regions (a baseline's masks do not
    depend on the prompts; PMP's would).
    """
    config = segmenter.config
    images = torch.stack([image for image, _ in scenes])  # (B, 3, H, W)
    names = sorted({name for _, regions in scenes for _, name in regions})
    text = segmenter.clip.encode_text(names).to(segmenter.device)  # (K, C)
    pixels = normalize_pixels(images.to(segmenter.device), config.pixel_mean, config.pixel_std)
    text = text[None].expand(len(images), -1, -1)  # (B, K, C)
    logits = segmenter.proposal_model(pixels, text, return_aux=False)["pred_masks"].float()  # (B, N, h, w)
    matched = []
    for soft, (_, regions) in zip(upsample(logits, tuple(images.shape[-2:])).sigmoid(), scenes):  # (N, H, W)
        binary = (soft > 0.5).flatten(1).float()  # (N, HW)
        truth = torch.from_numpy(np.stack([mask for mask, _ in regions])).flatten(1).float()  # (R, HW)
        overlap = binary @ truth.T  # (N, R)
        iou = overlap / (binary.sum(1, keepdim=True) + truth.sum(1)[None] - overlap).clamp_min(1.0)
        best_iou, best = iou.max(dim=1)
        kept = torch.nonzero(best_iou >= min_iou).flatten()
        matched.append((soft[kept], [regions[int(best[i])][1] for i in kept]))
    return matched


def _scenes(seeds: list[int], config: CLIPAdaptConfig) -> list[tuple[torch.Tensor, Regions]]:
    """Each seed's scene as a (3, H, W) image in [0, 1] with its :func:`scene_regions`; scenes without one skipped."""
    from train import world

    scenes = []
    for seed in seeds:
        scene = world.render_scene(seed, config.image_size)
        regions = scene_regions(scene, config.min_region_pixels)
        if regions:
            scenes.append((torch.from_numpy(scene.image).permute(2, 0, 1).float() / 255.0, regions))
    return scenes


def _crops(
    clip: CLIPModel, scenes: list[tuple[torch.Tensor, torch.Tensor, list[str]]], views: tuple[str, ...] = ("masked",)
) -> tuple[torch.Tensor, list[str]]:
    """Crops (V*B, 3, S, S) of every (image, masks (M, H, W), names) scene in each of ``views``,
    view-major (all B masked crops, then their B boxes), and the B names of the non-empty masks
    (:func:`pmp.stage2.masked_crops` drops the empty ones)."""
    crops, names = [], []
    for image, masks, scene_names in scenes:
        scene_crops, kept = masked_crops(clip, image, masks, views=views)  # (V*k, 3, S, S)
        crops.append(scene_crops.unflatten(0, (len(views), -1)))  # (V, k, 3, S, S)
        names += [scene_names[i] for i in kept.tolist()]
    return torch.cat(crops, dim=1).flatten(0, 1), names


def region_kind(name: str) -> int:
    """0 for a stuff name, 1 for a thing, 2 for a part: the order of :attr:`CLIPAdaptConfig.kind_weights`."""
    return 2 if name in PART_NAMES else 0 if name in STUFF_CLASSES else 1


def check_kind_weights(kind_weights: tuple[float, ...]) -> None:
    """ValueError unless these are three weights above 0 (a zero could leave too few regions to draw)."""
    if len(kind_weights) != 3 or min(kind_weights) <= 0:
        raise ValueError(
            f"kind weights are three weights above 0 for stuff, thing, part, e.g. 1,1,1; got {kind_weights}"
        )


def kind_probabilities(regions: Regions, kind_weights: tuple[float, float, float] | None) -> np.ndarray | None:
    """Each region's chance of being drawn: its kind's weight shared among the scene's regions of that kind,
    normalised over the kinds present; None (every region equally likely) without ``kind_weights``."""
    if kind_weights is None:
        return None
    check_kind_weights(kind_weights)
    kinds = np.array([region_kind(name) for _, name in regions])
    counts = np.bincount(kinds, minlength=3)
    chance = np.asarray(kind_weights, dtype=np.float64)[kinds] / counts[kinds]
    return chance / chance.sum()


def _training_masks(
    regions: Regions,
    proposals: torch.Tensor | None,
    proposal_names: list[str],
    config: CLIPAdaptConfig,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, list[str]]:
    """One scene's ``regions_per_scene`` masks (M, H, W) and names: up to ``proposal_regions`` random
    matched proposals, the rest random world regions made :func:`proposal_like`."""
    take = rng.choice(len(proposal_names), size=min(config.proposal_regions, len(proposal_names)), replace=False)
    size = min(config.regions_per_scene - len(take), len(regions))
    chosen = rng.choice(len(regions), size=size, replace=False, p=kind_probabilities(regions, config.kind_weights))
    masks, names = [], []
    if len(take):
        masks.append(proposals[torch.from_numpy(take).long()])
        names += [proposal_names[i] for i in take]
    if len(chosen):
        world_masks = torch.from_numpy(np.stack([regions[i][0] for i in chosen]))
        masks.append(proposal_like(world_masks, config.mask_stride, rng))
        names += [regions[i][1] for i in chosen]
    return torch.cat(masks), names


def region_batch(
    clip: CLIPModel,
    seeds: list[int],
    config: CLIPAdaptConfig,
    rng: np.random.Generator,
    segmenter: Segmenter | None = None,
) -> tuple[torch.Tensor, list[str]]:
    """Masked crops (B, 3, S, S) of up to ``regions_per_scene`` random regions of each seed's scene, and
    their names. With a ``segmenter``, up to ``proposal_regions`` of them are its matched proposals
    (:func:`matched_proposals`) and the rest proposal-like world regions."""
    scenes = _scenes(seeds, config)
    if segmenter is not None and config.proposal_regions > 0 and scenes:
        matched = matched_proposals(segmenter, scenes, config.proposal_min_iou)
    else:
        matched = [(None, [])] * len(scenes)
    chosen = [
        (image, *_training_masks(regions, proposals, proposal_names, config, rng))
        for (image, regions), (proposals, proposal_names) in zip(scenes, matched)
    ]
    return _crops(clip, chosen, config.crop_views)


def region_view_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of (V*B, names) view-major crop logits against the B regions' names (B,), scored on
    the views' mean log-probabilities: their softmax is the p_hat stage 2 computes from the same views
    (:func:`pmp.stage2.crop_classify`), so the tower learns what inference reads. With one view it is
    the plain cross-entropy of the crops."""
    return F.cross_entropy(view_log_probs(logits, len(logits) // len(targets)), targets)


def _held_out_seeds(config: CLIPAdaptConfig) -> Iterator[list[int]]:
    """The held-out scenes' seeds (``eval_scenes`` of them, the same for every adaptation seed), 16 at a time."""
    for start in range(0, config.eval_scenes, 16):
        yield [_EVAL_SEED_BASE + i for i in range(start, min(start + 16, config.eval_scenes))]


def _guesses(clip: CLIPModel, crops: torch.Tensor, text: torch.Tensor, num_views: int = 1) -> list[str]:
    """The :data:`REGION_NAMES` name stage 2 reads each region as, from its (num_views * B, 3, S, S)
    view-major crops and the names' embeddings ``text`` (names, C): the argmax of the views' mean
    log-probabilities, as :func:`pmp.stage2.crop_classify` combines them."""
    logits = clip.logit_scale * F.normalize(clip.encode_crops(crops), dim=-1) @ text.T  # (V*B, names)
    return [REGION_NAMES[i] for i in view_log_probs(logits, num_views).argmax(-1)]


@torch.no_grad()
def region_accuracy(clip: CLIPModel, config: CLIPAdaptConfig, segmenter: Segmenter | None = None) -> dict[str, float]:
    """Top-1 of masked crops of held-out scenes among :data:`REGION_NAMES`, averaged per name: all names,
    things and stuff (``_class``: seen / unseen), parts (seen / unseen).

    The crops are of every proposal-like world region (keys ``region_*``), or with a ``segmenter`` of its
    matched proposals, as stage 2 sees them at inference (keys ``proposal_*``).
    """
    was_training = clip.training
    clip.eval()
    text = clip.encode_text(list(REGION_NAMES))  # (V, C)
    rng = np.random.default_rng(1)  # the same held-out crops whatever the adaptation's seed
    per_name: dict[str, list[bool]] = {}
    every_region = dataclasses.replace(config, regions_per_scene=1000, kind_weights=None)  # all, however drawn
    for seeds in _held_out_seeds(config):
        if segmenter is None:
            crops, names = region_batch(clip, seeds, every_region, rng)
        else:
            crops, names = proposal_crops(clip, segmenter, seeds, config)
        for name, guess in zip(names, _guesses(clip, crops, text, len(config.crop_views))):
            per_name.setdefault(name, []).append(guess == name)
    clip.train(was_training)

    def mean(names: list[str]) -> float:
        scores = [float(np.mean(per_name[n])) for n in names if n in per_name]
        return float(np.mean(scores)) if scores else float("nan")

    classes = [n for n in CLASS_NAMES if n in per_name]
    parts = [n for n in PART_NAMES if n in per_name]
    prefix = "region" if segmenter is None else "proposal"
    return {
        f"{prefix}_top1": mean(list(per_name)),
        f"{prefix}_class_top1_seen": mean([n for n in classes if n in SEEN_CLASSES]),
        f"{prefix}_class_top1_unseen": mean([n for n in classes if n not in SEEN_CLASSES]),
        f"{prefix}_part_top1_seen": mean([n for n in parts if n in SEEN_PARTS]),
        f"{prefix}_part_top1_unseen": mean([n for n in parts if n not in SEEN_PARTS]),
        f"{prefix}_chance": 1.0 / len(REGION_NAMES),
    }


def proposal_crops(
    clip: CLIPModel, segmenter: Segmenter, seeds: list[int], config: CLIPAdaptConfig
) -> tuple[torch.Tensor, list[str]]:
    """Masked crops of every matched proposal (:func:`matched_proposals`) of each seed's scene, and their names."""
    scenes = _scenes(seeds, config)
    matched = matched_proposals(segmenter, scenes, config.proposal_min_iou)
    return _crops(
        clip, [(image, masks, names) for (image, _), (masks, names) in zip(scenes, matched)], config.crop_views
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
    for seeds in _held_out_seeds(config):
        scenes = _scenes(seeds, config)
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


def accuracies(clip: CLIPModel, config: CLIPAdaptConfig, segmenter: Segmenter | None) -> dict[str, float]:
    """Everything :func:`adapt` measures before and after: region (and proposal) top-1, zero-shot tests."""
    from train.train_clip import zero_shot_accuracy

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
        first_scene = _SCENE_SEED_BASE + config.seed * _SEED_STRIDE + step * config.scenes_per_step
        seeds = [first_scene + i for i in range(config.scenes_per_step)]
        crops, names = region_batch(clip, seeds, config, rng, segmenter)  # (V*B, 3, S, S), B names
        targets = torch.tensor([REGION_NAMES.index(n) for n in names])
        features = F.normalize(clip.open_clip.encode_image(crops), dim=-1)  # (V*B, C)
        region_loss = region_view_loss(logit_scale * features @ region_text.T, targets)
        first_pair = _SCENE_SEED_BASE + config.seed * _SEED_STRIDE + step * config.pair_batch
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.adapt_clip", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
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
        "--crop-views",
        default="masked",
        help="the views of each crop the tower learns from, and with --crop-errors the views stage 2 reads "
        "each crop in, e.g. masked,box (pmp.config.CROP_VIEWS)",
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
    parser.add_argument(
        "--crop-errors",
        action="store_true",
        help="with --measure-only and --proposals-from: only why proposal crops are misread (proposal_crop_errors)",
    )
    args = parser.parse_args(argv)
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
        "vision_layers": _layers(args.vision_layers, parser) if args.vision_layers else None,
        "fresh_image_tower": _fresh_tower(args.fresh_image_tower, parser) if args.fresh_image_tower else None,
        "crop_views": views,
        "kind_weights": _kind_weights(args.kind_weights, parser) if args.kind_weights else None,
    }
    config = dataclasses.replace(CLIPAdaptConfig(), **{k: v for k, v in overrides.items() if v is not None})
    command = "python -m train.adapt_clip " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.out is None and not args.measure_only:
        parser.error("--out is required, unless --measure-only")
    if args.crop_errors and not (args.measure_only and args.proposals_from):
        parser.error("--crop-errors needs --measure-only and --proposals-from")
    clip = load_clip_for_evaluation(args.clip)
    if config.fresh_image_tower is not None:
        clip = fresh_image_tower(clip, *config.fresh_image_tower)
    if config.vision_layers is not None:
        clip = deepen_image_tower(clip, config.vision_layers)
    if args.crop_errors:
        segmenter = load_proposal_segmenter(config)
        metrics, record = proposal_crop_errors(clip, config, segmenter, views), {"command": command}
    elif args.measure_only:
        metrics, record = accuracies(clip, config, load_proposal_segmenter(config)), {"command": command}
    else:
        metrics = adapt(clip, config, args.out, command=command)
        record = {"command": command, "config": config.to_dict()}
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps({**record, **metrics}, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
