"""Stage 2 of the paper: CLIP classifies every proposal (Eq. 2), then the two stages are ensembled (Eq. 3).

Eq. 2 has two implementations, because the paper's stage 2 and its OVSeg baseline differ in exactly this:

* ``pool``: one dense CLIP pass (:mod:`pmp.clip.dense`), then each proposal is the mask-weighted mean of
  the per-pixel embeddings (:func:`pool_classify`). Its cost does not grow with the number of proposals.
* ``crop``: OVSeg's masked crops, one CLIP image forward per proposal on its box with the background
  filled with CLIP's mean colour (:func:`crop_classify`). Its cost grows with the number of proposals.
  ``crop_views`` can add a second view, the same box with the image kept, for masks that miss part of
  their object (:data:`pmp.config.CROP_VIEWS`).

Eq. 3 (:func:`ensemble`) is p_out = p^(1 - w) * p_hat^w, with w = ``clip_weight`` = 0.65 on the CLIP
term, as OVSeg (``CLIP_ENSEMBLE_WEIGHT``) and ODISE apply the paper's value (docs/method.md).
OVSeg applies it to stage 1's p as is; ODISE to p without no-object, keeping no-object out of the
result (``ensemble="odise"`` in the config). The paper does not say which; OVSeg's is the default.
FC-CLIP weights CLIP differently for names stage 1 was and was not trained on (``clip_weight_unseen``,
:func:`prompt_clip_weights`); the paper, like OVSeg, has one weight, the default.
"""

from __future__ import annotations

from itertools import repeat
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from torch import Tensor

from pmp.clip import CLIPModel
from pmp.config import ENSEMBLES, POOL_FORMS, STAGE2_MODES, check_crop_views, name_synonyms
from pmp.postprocess import upsample

CROP_BATCH = 64  # masked crops per image-tower forward
MASK_CHUNK = 4  # proposals upsampled at a time in soft_masks_on_grid (cache-sized, measured on CPU)
VIT_DENSE_SCALE = 0.5  # SAN-style: CLIP ViT sees half the stage-1 resolution (640 px -> 320 px, 20x20 tokens)
_EPS = 1e-6


def prompt_clip_weights(
    labels: Sequence[str], clip_weight: float, clip_weight_unseen: float | None, training_names: Sequence[str]
) -> Tensor:
    """(K,) Eq. 3's CLIP weight per prompt: ``clip_weight`` for a prompt stage 1 was trained to name, else
    ``clip_weight_unseen`` (None: ``clip_weight`` for every prompt, OVSeg's and the paper's Eq. 3).

    FC-CLIP's geometric ensemble (``GEOMETRIC_ENSEMBLE_ALPHA`` 0.4 for its "in-vocabulary" classes,
    ``_BETA`` 0.8 for the rest) marks a test class in-vocabulary when any of its comma-separated synonyms
    is a training class name; so does this, case-insensitively. Why two weights: stage 1 has never been
    taught a name outside its training vocabulary, so its probability for one is low for every proposal,
    and a single weight either lets stage 1 bury those names or lets CLIP's confusions among the names
    stage 1 knows through.
    """
    if clip_weight_unseen is None:
        return torch.full((len(labels),), float(clip_weight))
    seen = seen_prompts(labels, training_names)
    return torch.where(seen, torch.tensor(float(clip_weight)), torch.tensor(float(clip_weight_unseen)))


def seen_prompts(labels: Sequence[str], training_names: Sequence[str]) -> Tensor:
    """(K,) bool: True for a prompt stage 1 was trained to name, i.e. one of its comma-separated synonyms
    is a training name's (case-insensitively), as FC-CLIP marks its in-vocabulary classes."""
    known = {word for name in training_names for word in name_synonyms(name)}
    return torch.tensor([bool(known.intersection(name_synonyms(label))) for label in labels], dtype=torch.bool)


def ensemble(p: Tensor, p_hat: Tensor, clip_weight: float | Tensor, form: str = "ovseg") -> Tensor:
    """Eq. 3: (N, K) stage-1 p (no-object left out, so a row sums to 1 - p(no-object)) and CLIP's p_hat
    -> (N, K) scores, in log space, with ``clip_weight`` the exponent of p_hat:
    one number, or (K,) one per prompt (:func:`prompt_clip_weights`).

    ``form`` (:data:`pmp.config.ENSEMBLES`):

    * "ovseg": p_out = p^(1 - w) * p_hat^w, OVSeg's (``clip_ensemble_weight``), the paper's baseline. A
      proposal stage 1 calls no-object has a small p, but p^(1 - w) shrinks it far less than p does
      (0.005^0.35 = 0.16), so CLIP's answer for it still reaches the semantic map.
    * "odise": ODISE's and FC-CLIP's: the same product on stage 1's class distribution without
      no-object (p / (1 - p(no-object))), renormalised over the K classes, then scaled by
      1 - p(no-object), which keeps such a proposal out of the map.
    """
    if form not in ENSEMBLES:
        raise ValueError(f"ensemble form must be one of {', '.join(ENSEMBLES)}, got {form!r}")
    eps = torch.finfo(p.dtype).tiny
    if isinstance(clip_weight, Tensor):
        clip_weight = clip_weight.to(p)  # (K,), broadcast over the N proposals
    if form == "ovseg":
        return torch.exp((1.0 - clip_weight) * p.clamp_min(eps).log() + clip_weight * p_hat.clamp_min(eps).log())
    thing = p.sum(dim=1, keepdim=True)  # (N, 1): 1 - p(no-object)
    classes = p / thing.clamp_min(eps)  # (N, K): stage 1's class distribution without no-object
    mixed = (1.0 - clip_weight) * classes.clamp_min(eps).log() + clip_weight * p_hat.clamp_min(eps).log()
    return mixed.softmax(dim=1) * thing


def classify_proposals(
    clip: CLIPModel,
    pixels: torch.Tensor,
    valid_hw: tuple[int, int],
    mask_logits: torch.Tensor,
    text: torch.Tensor,
    p: torch.Tensor,
    stage2_mode: str,
    *,
    crop_top_k: int,
    crop_views: Sequence[str] = ("masked",),
    crop_geometry: tuple[str, float] = ("square", 0.5),
    vit_dense_scale: float = VIT_DENSE_SCALE,
    trunk: torch.Tensor | None = None,
    pool_form: str = "maskclip",
    dense: torch.Tensor | None = None,
    crop_cache: dict | None = None,
) -> torch.Tensor:
    """Eq. 2: p_hat (N, K) from CLIP, for the proposals' ``mask_logits`` (N, h, w) on ``pixels`` (1, 3, Hp, Wp).

    ``pool`` runs CLIP's image tower once and mask-pools its dense features; ``trunk`` (the CLIP
    tower's last-stage map that stage 1 already computed on the same pixels) replaces that pass.
    ``pool_form`` "fcclip" pools a ConvNeXt tower's map FC-CLIP's way (:meth:`pmp.clip.CLIPModel.fcclip_pooled`).
    ``dense``: :func:`dense_map` of this image, when the caller already has it (one image, several prompt sets);
    ``crop_cache``: a dict kept with the image, in which the crops' embeddings (:func:`crop_embeddings`) are
    reused while the proposals stay the same (a baseline's, under any prompts).
    ``crop`` (OVSeg) runs the tower once per proposal crop, so only the ``crop_top_k`` proposals with
    the highest stage-1 score are upsampled and cropped, in each of ``crop_views``, with ``crop_geometry``
    (box, mask threshold: :func:`masked_crops`); the rest keep p_hat = p, which leaves their ensemble score
    equal to p.
    """
    if stage2_mode not in STAGE2_MODES or pool_form not in POOL_FORMS:
        raise ValueError(
            f"classify_proposals takes a stage2_mode of {', '.join(STAGE2_MODES)} and a pool_form of "
            f"{', '.join(POOL_FORMS)}; got {stage2_mode!r} and {pool_form!r}"
        )
    image = pixels[..., : valid_hw[0], : valid_hw[1]]  # (1, 3, H, W) in [0, 1]
    if stage2_mode == "pool" and pool_form == "fcclip":
        trunk = trunk if trunk is not None else clip.convnext_trunk(clip.normalize(image))  # (1, D, h, w)
        embeds = F.normalize(clip.fcclip_pooled(trunk, mask_logits), dim=-1)  # (N, C)
        scale = clip.logit_scale.clamp(max=100.0)  # as FC-CLIP's get_classification_logits clamps it
        return (scale * embeds @ text.to(embeds).T).softmax(dim=-1).to(p.dtype)
    if stage2_mode == "pool":
        if dense is None:
            dense = dense_map(clip, image, vit_dense_scale, trunk)  # (1, C, h, w)
        masks = soft_masks_on_grid(mask_logits, valid_hw, tuple(dense.shape[-2:]))  # (N, h, w)
        return pool_classify(clip, dense, masks[None], text)[0].to(p.dtype)
    top_k = min(crop_top_k, mask_logits.shape[0])
    indices = p.max(1).values.topk(top_k).indices.sort().values  # in proposal order: the same set, the same key
    key = (mask_logits[indices].float().cpu().numpy().tobytes(), tuple(crop_views), tuple(crop_geometry))
    embedded = crop_cache.get(key) if crop_cache is not None else None
    if embedded is None:
        masks = upsample(mask_logits[indices][None], valid_hw)[0].sigmoid()  # (top_k, H, W)
        embedded = crop_embeddings(clip, image[0], masks, crop_views, crop_geometry)
        if crop_cache is not None:
            crop_cache.clear()  # one entry: the last proposals' crops (a baseline's stay the same)
            crop_cache[key] = embedded
    p_hat = p.clone()
    p_hat[indices] = crop_probabilities(clip, embedded, text, top_k, len(crop_views)).to(p.dtype)
    return p_hat


def dense_map(
    clip: CLIPModel, image: torch.Tensor, vit_dense_scale: float = VIT_DENSE_SCALE, trunk: torch.Tensor | None = None
) -> torch.Tensor:
    """(1, 3, H, W) image in [0, 1] -> (1, C, h, w) CLIP's per-pixel embeddings for mask pooling; from ``trunk``
    (the CLIP ResNet's layer-4 map stage 1 already computed on the same pixels) when given. It does not depend
    on the prompts."""
    if trunk is not None:
        return clip.dense_features_from_trunk(trunk)
    return clip.dense_features(clip.normalize(dense_input(clip, image, vit_dense_scale)))


def soft_masks_on_grid(mask_logits: torch.Tensor, valid_hw: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """(N, h', w') mask logits -> sigmoid of their image-size upsampling, area-averaged onto the (h, w) grid.

    What :func:`pool_classify` does to full-size soft masks, a few proposals at a time: the same values
    without the (N, H, W) tensor (100 x 640 x 640 floats = 164 MB), about 2x faster. Returns the
    full-size masks when the grid is larger than the image (pool_classify grows them).
    """
    if grid[0] > valid_hw[0] or grid[1] > valid_hw[1]:
        return upsample(mask_logits[None], valid_hw)[0].sigmoid()
    pooled = []
    for chunk in mask_logits.split(MASK_CHUNK):
        soft = upsample(chunk[None], valid_hw).sigmoid_()  # (1, n, H, W)
        pooled.append(F.adaptive_avg_pool2d(soft, grid)[0] if tuple(valid_hw) != tuple(grid) else soft[0])
    return torch.cat(pooled)


def dense_input(clip: CLIPModel, image: torch.Tensor, vit_dense_scale: float = VIT_DENSE_SCALE) -> torch.Tensor:
    """(1, 3, H, W) image in [0, 1] -> the image CLIP's dense pass sees.

    ResNet towers get it as is. A ViT tower's cost grows with the square of its token count, so the
    image is scaled by ``vit_dense_scale`` (never below the tower's native size) to a multiple of the
    patch size.
    """
    visual = clip.open_clip.visual
    if not isinstance(visual, VisionTransformer):
        return image
    height, width = image.shape[-2:]
    longer = max(height, width)
    target = max(clip.image_size, round(longer * vit_dense_scale))
    if target >= longer:  # a scale of 1 or more, or an image already at most the native size
        return image
    # open_clip keeps patch_size as (height, width)
    size = tuple(
        max(patch, round(side * target / longer / patch) * patch)
        for side, patch in zip((height, width), visual.patch_size)
    )
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)


def pool_classify(clip: CLIPModel, dense: Tensor, masks: Tensor, text: Tensor) -> Tensor:
    """Mask-pooled dense features -> (B,N,M) class probabilities.

    dense (B,C,h,w) from :meth:`pmp.clip.CLIPModel.dense_features`; masks (B,N,H',W') soft in [0,1], shrunk to (h,w) by
    area averaging (bilinear where they must grow); text (M,C) normalised.
    Each proposal's embedding is the mask-weighted mean of the dense features, re-normalised; an
    empty mask pools to zero and so gets uniform probabilities.
    """
    if dense.ndim != 4 or masks.ndim != 4 or text.ndim != 2:
        raise ValueError(
            f"pool_classify takes dense (B,C,h,w), masks (B,N,H,W), text (M,C); got "
            f"{tuple(dense.shape)}, {tuple(masks.shape)}, {tuple(text.shape)}"
        )
    if masks.shape[0] != dense.shape[0] or text.shape[1] != dense.shape[1]:
        raise ValueError(
            f"pool_classify shapes disagree: dense {tuple(dense.shape)}, masks {tuple(masks.shape)}, "
            f"text {tuple(text.shape)}"
        )
    batch, num, _, _ = masks.shape
    h, w = dense.shape[-2:]
    masks = masks.to(device=dense.device, dtype=dense.dtype)
    if masks.shape[-2] >= h and masks.shape[-1] >= w and masks.shape[-2:] != (h, w):
        # Area averaging: each dense cell is weighted by the share of it the mask covers, so small
        # masks never fall between the sampling points of a plain bilinear shrink.
        masks = F.adaptive_avg_pool2d(masks, (h, w))
    elif masks.shape[-2:] != (h, w):
        masks = F.interpolate(masks, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    masks = masks.clamp(0, 1)
    pooled = torch.einsum("bnhw,bchw->bnc", masks, dense) / (masks.sum(dim=(2, 3))[..., None] + _EPS)
    pooled = F.normalize(pooled, dim=-1)  # (B, N, C); zero stays zero
    logits = clip.logit_scale.to(dense.dtype) * pooled @ text.to(dense).T  # (B, N, M)
    return logits.softmax(dim=-1)


def crop_classify(
    clip: CLIPModel,
    image: np.ndarray | Tensor,
    masks: np.ndarray | Tensor,
    text: Tensor,
    top_k_indices: Sequence[int] | Tensor | None = None,
    *,
    views: Sequence[str] = ("masked",),
    geometry: tuple[str, float] = ("square", 0.5),
) -> Tensor:
    """OVSeg's masked-crop classification -> (N,M) probabilities, or (K,M) for ``top_k_indices``.

    image: (H,W,3) uint8 numpy or (3,H,W) float tensor in [0,1]; masks (N,H,W) in [0,1] (resized to
    the image if their size differs); text (M,C) normalised. Each proposal's crop is
    :func:`masked_crops`'; one image-tower forward per :data:`CROP_BATCH` crops. ``views`` (of
    :data:`pmp.config.CROP_VIEWS`): "masked" is that crop, "box" the same square with the image kept;
    with several, the probabilities are the softmax of the views' mean log-probabilities (their
    normalised geometric mean). With ``top_k_indices`` only those proposals are cropped and rows come
    back in that order. Empty masks get uniform probabilities.
    """
    if text.ndim != 2:
        raise ValueError(f"crop_classify takes text (M,C), got shape {tuple(text.shape)}")
    masks = torch.as_tensor(masks)
    if masks.ndim != 3:
        raise ValueError(f"crop_classify takes masks (N,H,W), got shape {tuple(masks.shape)}")
    if top_k_indices is not None:
        index = torch.as_tensor(top_k_indices, dtype=torch.long, device=masks.device).reshape(-1)
        if index.numel() and (index.min() < 0 or index.max() >= masks.shape[0]):
            raise ValueError(f"top_k_indices must lie in [0, {masks.shape[0]}), got {index.tolist()}")
        masks = masks[index]
    embedded = crop_embeddings(clip, image, masks, views, geometry)
    return crop_probabilities(clip, embedded, text, masks.shape[0], len(views))


def crop_embeddings(
    clip: CLIPModel,
    image: np.ndarray | Tensor,
    masks: Tensor,
    views: Sequence[str] = ("masked",),
    geometry: tuple[str, float] = ("square", 0.5),
) -> tuple[Tensor, Tensor]:
    """The image half of :func:`crop_classify`, which does not read the prompts: each non-empty mask's crops
    through the image tower -> (V*K, C) normalised embeddings, view-major, and the K masks' indices."""
    crops, regions, nonempty = crops_and_regions(clip, image, masks, views, geometry)  # (V*K, 3, S, S), ., (K,)
    if nonempty.numel() == 0:
        return crops.new_zeros((0, clip.embed_dim)), nonempty
    crops = crops.to(device=clip.device, dtype=clip.open_clip.logit_scale.dtype)
    if not clip.config.mask_prompt_depth:
        regions = None
    batches = zip(crops.split(CROP_BATCH), regions.split(CROP_BATCH) if regions is not None else repeat(None))
    return torch.cat([F.normalize(clip.encode_crops(batch, region), dim=-1) for batch, region in batches]), nonempty


def crop_probabilities(
    clip: CLIPModel, embedded: tuple[Tensor, Tensor], text: Tensor, num_masks: int, num_views: int
) -> Tensor:
    """The prompts' half of :func:`crop_classify`: :func:`crop_embeddings`' output against the (M, C) text ->
    (num_masks, M) probabilities, uniform for the empty masks."""
    feats, nonempty = embedded
    num_classes = text.shape[0]
    probs = torch.full((num_masks, num_classes), 1.0 / max(num_classes, 1), device=clip.device)
    if nonempty.numel() == 0 or num_classes == 0:
        return probs
    logits = clip.logit_scale * feats @ text.to(feats).T  # (V*K, M)
    probs[nonempty.to(probs.device)] = view_log_probs(logits, num_views).softmax(dim=-1).to(probs.dtype)
    return probs


def view_log_probs(logits: Tensor, num_views: int) -> Tensor:
    """(V*K, M) view-major logits of K crops in ``num_views`` views -> (K, M) the views' mean
    log-probabilities, whose softmax is p_hat (the views' normalised geometric mean). Mask adaptation
    (:mod:`train.adapt_clip`) trains and measures on the same combination."""
    return logits.log_softmax(dim=-1).unflatten(0, (num_views, -1)).mean(0)


def masked_crops(
    clip: CLIPModel,
    image: np.ndarray | Tensor,
    masks: np.ndarray | Tensor,
    *,
    views: Sequence[str] = ("masked",),
    geometry: tuple[str, float] = ("square", 0.5),
) -> tuple[Tensor, Tensor]:
    """OVSeg's masked crops: what CLIP's image tower sees of each proposal, at inference and in
    mask-adapted fine-tuning (:mod:`train.adapt_clip`) alike.

    image: (H,W,3) uint8 numpy or (3,H,W) float tensor in [0,1]; masks (N,H,W) in [0,1] (resized to
    the image if their size differs). Each mask is binarised at 0.5; its tight box is grown to a square
    about its centre (aspect kept, as padding with the mean colour would); the square is cropped and
    resized to ``image_size`` (:func:`square_box_samples`, torchvision's ``roi_align``) on the normalised
    image, and every pixel outside the (equally resampled) mask — including outside the image — is set to CLIP's mean
    colour, which is zero after normalisation: the "masked" view. The "box" view (of ``views``,
    :data:`pmp.config.CROP_VIEWS`) is the same square with only what lies outside the image filled. Both
    come from one box and one resampling of the image. Returns the CLIP-normalised crops (V*K, 3, S, S)
    of the K non-empty masks in each of the V views, view-major (channels-last), and their indices (K,)
    among the N. ``geometry`` (box, threshold): the masks are binarised at the threshold (OVSeg's MASK_THR),
    and a "tight" box is OVSeg's instead of the square (:func:`tight_box_crops`).
    """
    crops, _, nonempty = crops_and_regions(clip, image, masks, views, geometry)
    return crops, nonempty


def crops_and_regions(
    clip: CLIPModel,
    image: np.ndarray | Tensor,
    masks: np.ndarray | Tensor,
    views: Sequence[str] = ("masked",),
    geometry: tuple[str, float] = ("square", 0.5),
) -> tuple[Tensor, Tensor | None, Tensor]:
    """:func:`masked_crops`' crops and K indices, with what mask prompts need beside them: each crop's mask
    as the crop shows it (V*K, 1, S, S) for tight boxes (OVSeg's ``region_masks``; all ones for the "box"
    view, which blanks nothing out), None for square ones."""
    check_crop_views(tuple(views))
    box, threshold = geometry
    normalised, inside, boxes, nonempty = crop_sources(clip, image, masks, threshold)
    if nonempty.numel() == 0:
        return normalised.new_zeros((0, 3, clip.image_size, clip.image_size)), None, nonempty  # (0 = V*K, 3, S, S)
    regions = None
    if box == "tight":
        shown = tight_box_crops(normalised[..., 1:-1, 1:-1], inside[..., 1:-1, 1:-1] > 0, clip.image_size)
        region, everything = shown["region"], torch.ones_like(shown["region"])
        regions = torch.cat([region if view == "masked" else everything for view in views])
    else:
        crops = square_box_samples(normalised, boxes, clip.image_size)  # (K, 3, S, S)
        shown = {"box": crops}  # view -> (K, 3, S, S)
        if "masked" in views:
            fill = square_box_samples(inside, boxes, clip.image_size)  # (K, 1, S, S) mask share
            shown["masked"] = crops * fill  # outside the mask -> 0 == the mean colour after normalisation
    # Channels-last: the towers' convolutions run about 1.8x faster on CPU in this layout (measured on
    # the tiny CLIP's ResNet, 24 crops); the values are the same.
    crops = torch.cat([shown[view] for view in views]).contiguous(memory_format=torch.channels_last)
    return crops, regions, nonempty


def crop_sources(
    clip: CLIPModel, image: np.ndarray | Tensor, masks: np.ndarray | Tensor, threshold: float = 0.5
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """What :func:`masked_crops` resamples, for (H,W,3) uint8 or (3,H,W) [0,1] ``image`` and (N,H,W) [0,1]
    ``masks`` (resized to the image if their size differs, binarised at 0.5): the CLIP-normalised image
    (1, 3, H+2, W+2) and the K non-empty masks (K, 1, H+2, W+2), both with a zero border, the masks'
    square boxes in that bordered frame (K, 4, :func:`square_boxes`), and their indices (K,) among the N.
    """
    img = _image_tensor(clip, image)  # (3, H, W) float in [0, 1]
    masks = torch.as_tensor(masks).to(device=img.device, dtype=torch.float32)
    if masks.ndim != 3:
        raise ValueError(f"masked_crops takes masks (N,H,W), got shape {tuple(masks.shape)}")
    height, width = img.shape[-2:]
    if masks.shape[-2:] != (height, width) and masks.shape[0]:
        masks = F.interpolate(masks[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]
    binary = masks > threshold  # (N, H, W)
    nonempty = torch.nonzero(binary.flatten(1).any(dim=1)).flatten()
    binary = binary[nonempty]
    # A zero border (zero = the mean colour after normalisation) stops the resampling from repeating the
    # edge pixel for samples in [-1, 0); boxes move by the border width.
    normalised = F.pad(clip.normalize(img[None].float()), (1, 1, 1, 1))  # (1, 3, H+2, W+2)
    inside = F.pad(binary.float(), (1, 1, 1, 1))[:, None]  # (K, 1, H+2, W+2)
    boxes = square_boxes(binary) + 1.0  # (K, 4)
    return normalised, inside, boxes, nonempty


def tight_box_crops(normalised: Tensor, binary: Tensor, size: int) -> dict[str, Tensor]:
    """OVSeg's crops (clip_adapter/adapter.py ``_preprocess_image`` with REGION_RESIZED, MASK_FILL "mean",
    MASK_EXPAND_RATIO 1.0): each mask's tight box cut from the CLIP-normalised image (1, 3, H, W), the pixels
    outside the mask set to the mean colour (zero after normalisation) for the "masked" view, and the box
    stretched to ``size`` x ``size`` bicubically, its aspect not kept; "region" is the mask cut from the same
    box and resized by nearest neighbour, as OVSeg hands it to mask prompts. binary (K, 1, H, W) non-empty
    masks -> {"masked": (K, 3, S, S), "box": (K, 3, S, S), "region": (K, 1, S, S)}."""
    crops: dict[str, list[Tensor]] = {"masked": [], "box": [], "region": []}
    for mask in binary[:, 0]:
        rows, cols = torch.nonzero(mask.any(dim=1)).flatten(), torch.nonzero(mask.any(dim=0)).flatten()
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        region = normalised[..., y0:y1, x0:x1]  # (1, 3, h, w)
        for view, pixels in (("box", region), ("masked", region * mask[y0:y1, x0:x1])):
            crops[view].append(F.interpolate(pixels, size=(size, size), mode="bicubic", align_corners=False))
        inside = mask[y0:y1, x0:x1][None, None].to(normalised.dtype)  # (1, 1, h, w)
        crops["region"].append(F.interpolate(inside, size=(size, size), mode="nearest"))
    return {view: torch.cat(parts) for view, parts in crops.items()}


def square_boxes(binary: Tensor) -> Tensor:
    """(K, H, W) non-empty boolean masks -> (K, 4) squares (x0, y0, x1, y1) in pixels about each mask's
    tight box, its longer side kept (as padding the box to a square with the mean colour would)."""
    height, width = binary.shape[-2:]
    rows, cols = binary.any(dim=2).float(), binary.any(dim=1).float()  # (K, H), (K, W)
    y0, y1 = rows.argmax(dim=1), height - rows.flip(1).argmax(dim=1)  # y1: exclusive pixel edge
    x0, x1 = cols.argmax(dim=1), width - cols.flip(1).argmax(dim=1)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half = torch.maximum(x1 - x0, y1 - y0).float() / 2
    return torch.stack([cx - half, cy - half, cx + half, cy + half], dim=1).float()


def square_box_samples(images: Tensor, boxes: Tensor, size: int) -> Tensor:
    """torchvision's ``roi_align(images, rois, size, 1.0, sampling_ratio=-1, aligned=True)`` for square boxes,
    one box per image: (K, C, H, W) images (or one (1, C, H, W) image for every box) with a zero border
    of at least one pixel, (K, 4) boxes (x0, y0, x1, y1) in pixels -> (K, C, size, size).

    Why not ``roi_align`` itself: its CPU kernel loops over the boxes one sample at a time on one thread;
    the same samples taken by ``grid_sample`` (vectorised, multi-threaded) cost about 5x less for the
    bundled model's 24 crops. The samples are roi_align's: each output bin is the mean of n x n bilinear
    samples at the centres of an n x n grid inside it, n = ceil(box side / size) (its adaptive
    sampling ratio). The two differ only in how they read outside the image (roi_align repeats the edge
    pixel up to one pixel out, ``grid_sample`` blends in zeros), which the zero border makes the same.
    """
    if images.ndim != 4 or boxes.ndim != 2 or boxes.shape[1] != 4 or images.shape[0] not in (1, len(boxes)):
        raise ValueError(
            f"square_box_samples takes images (K or 1, C, H, W) and boxes (K, 4), got images "
            f"{tuple(images.shape)} and boxes {tuple(boxes.shape)}"
        )
    height, width = images.shape[-2:]
    side = boxes[:, 2] - boxes[:, 0]
    samples_per_bin = torch.ceil(side / size).clamp_min(1).long()  # roi_align's adaptive sampling ratio
    out = images.new_empty((len(boxes), images.shape[1], size, size))
    for n in samples_per_bin.unique().tolist():
        chosen = torch.nonzero(samples_per_bin == n).flatten()
        box = boxes[chosen].to(images.dtype)
        steps = (torch.arange(size * n, device=images.device, dtype=images.dtype) + 0.5) / (size * n)  # (nS,)
        # Pixel coordinates of the samples; aligned roi_align reads pixel centres at integers, as
        # grid_sample with align_corners=False does at (2p + 1) / W - 1.
        xs = box[:, 0:1] - 0.5 + steps * (box[:, 2:3] - box[:, 0:1])  # (k, nS)
        ys = box[:, 1:2] - 0.5 + steps * (box[:, 3:4] - box[:, 1:2])
        gx = ((2 * xs + 1) / width - 1)[:, None, :].expand(-1, size * n, -1)  # (k, nS, nS)
        gy = ((2 * ys + 1) / height - 1)[:, :, None].expand(-1, -1, size * n)
        source = images[chosen] if images.shape[0] > 1 else images.expand(len(chosen), -1, -1, -1)
        sampled = F.grid_sample(source, torch.stack([gx, gy], -1), align_corners=False)  # (k, C, nS, nS)
        out[chosen] = F.avg_pool2d(sampled, n) if n > 1 else sampled
    return out


def _image_tensor(clip: CLIPModel, image: np.ndarray | Tensor) -> Tensor:
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"crop_classify takes an (H,W,3) uint8 image or a (3,H,W) float tensor in [0,1]; got "
                f"a numpy array {image.shape} {image.dtype}"
            )
        return torch.from_numpy(np.ascontiguousarray(image)).to(clip.device).permute(2, 0, 1).float() / 255.0
    if isinstance(image, Tensor) and image.ndim == 3 and image.shape[0] == 3 and image.is_floating_point():
        return image.to(clip.device)
    raise ValueError(
        f"crop_classify takes an (H,W,3) uint8 image or a (3,H,W) float tensor in [0,1]; got "
        f"{type(image).__name__} {tuple(getattr(image, 'shape', ()))}"
    )
