"""The world's regions for mask adaptation (:mod:`train.adapt_clip`): what a proposal could be in a scene, its
masked crops, degraded to a proposal's resolution or taken from a trained segmenter's own proposals, and the
held-out top-1 of a CLIP on them."""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from pmp.clip import CLIPModel
from pmp.images import normalize_pixels
from pmp.postprocess import upsample
from pmp.segmenter import Segmenter
from pmp.stage2 import masked_crops, view_log_probs
from train import world
from train.configs import CLIPAdaptConfig
from train.world import IGNORE
from train.world.vocabulary import (
    CLASS_NAMES,
    PART_NAMES,
    SEEN_CLASSES,
    SEEN_PARTS,
    STUFF_CLASSES,
)

REGION_NAMES: tuple[str, ...] = CLASS_NAMES + PART_NAMES  # what a masked crop is classified among


SCENE_SEED_BASE = 700_000_000  # adaptation scenes: far from training indices and the benchmarks (> 2e9)


EVAL_SEED_BASE = 800_000_000


SEED_STRIDE = 10_000_000  # each adaptation seed draws its scenes from its own range (seed 0: the first)


def scene_regions(scene, min_pixels: int) -> list[tuple[np.ndarray, str]]:
    """Every region of a scene a proposal could be, with its name: (H, W) bool mask, name.

    Each thing whole (its instance, parts included), each visible part of each thing, each stuff class.
    """

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


def region_scenes(seeds: list[int], config: CLIPAdaptConfig) -> list[tuple[torch.Tensor, Regions]]:
    """Each seed's scene as a (3, H, W) image in [0, 1] with its :func:`scene_regions`; scenes without one skipped."""

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
    scenes = region_scenes(seeds, config)
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


def held_out_seeds(config: CLIPAdaptConfig) -> Iterator[list[int]]:
    """The held-out scenes' seeds (``eval_scenes`` of them, the same for every adaptation seed), 16 at a time."""
    for start in range(0, config.eval_scenes, 16):
        yield [EVAL_SEED_BASE + i for i in range(start, min(start + 16, config.eval_scenes))]


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
    for seeds in held_out_seeds(config):
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
    scenes = region_scenes(seeds, config)
    matched = matched_proposals(segmenter, scenes, config.proposal_min_iou)
    return _crops(
        clip, [(image, masks, names) for (image, _), (masks, names) in zip(scenes, matched)], config.crop_views
    )
