"""Training recipes as plain functions returning configs: the bundled world models and the paper's runs.

Paper-scale recipes follow OVSeg (MaskFormer FPN pixel decoder + a 6-layer MaskFormer decoder over the
stride-32 features, 100 queries, CLIP ViT-B/16 or ViT-L/14 for stage 2 and text) and Mask2Former
(multi-scale deformable pixel decoder + 9-layer masked-attention decoder), each with and without PMP,
trained on COCO-Stuff-171 at 640 px crops with batch 32 (over all ranks) for 120k iterations.
OVSeg's R101c is detectron2's ResNet-101 with a deep stem; timm's ``resnet101d`` is the same stem
(plus average-pool downsampling) and is what we use.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from pmp.config import (
    CLIP_MEAN,
    CLIP_STD,
    TEXT_MODES,
    BackboneConfig,
    CLIPConfig,
    DecoderConfig,
    PixelDecoderConfig,
    SegmenterConfig,
    tiny_clip_model_cfg,
)
from train.configs import SegTrainConfig
from train.world.vocabulary import SEEN_NAMES

WORLD_TEMPLATES = ("a photo of a {}.", "a {} in the scene.", "there is a {}.")


WORLD_BACKBONE = "regnetx_002"  # timm RegNetX-200MF, trained from scratch (see world_recipe)
WORLD_STEPS = 10_000
WORLD_WIDTH = 128  # stage 1's head width: the stage-1 pilots' winner, then three seeds at the full schedule
PREVIOUS_WIDTH = 64  # the head the bundled pair had before; the query sweep and the ablations ran with it


def world_name(text_mode: str) -> str:
    """The bundled recipe's name for a text mode: ``world-baseline`` for ``none``, else ``world-<mode>``."""
    return f"world-{'baseline' if text_mode == 'none' else text_mode}"


def world_model(
    text_mode: str,
    num_queries: int = 24,
    width: int = WORLD_WIDTH,
    backbone: str = WORLD_BACKBONE,
    pixel_decoder: str = "fpn",
) -> SegmenterConfig:
    """The bundled segmenter: OVSeg's design at toy scale, 128 px.

    ``width`` is stage 1's head width (the FPN's and the mask embeddings' channels, the decoder's hidden
    size; feed-forward 4x, one attention head per 16 channels), ``backbone`` its timm CNN and
    ``pixel_decoder`` :func:`world_pixel_decoder`'s kind. The bundled
    pair has 128 channels, chosen over the previous 64 (``PREVIOUS_WIDTH``) by the capacity pilots
    (``STAGE1_PILOTS``) and then three seeds of both at the full schedule (docs/results.md): the wider head
    proposes better masks (recall +2 to +5 on every benchmark) at 1.6x stage 1's parameters.

    Stage 1 has its own trainable CNN (timm's RegNetX-200MF, from scratch: nothing may be downloaded
    here) feeding MaskFormer's FPN and a 6-layer Mask2Former decoder; the frozen tiny CLIP encodes the
    prompts and classifies the proposals (stage 2) as OVSeg's does: a masked crop of every proposal,
    read by the mask-adapted image tower (:mod:`train.adapt_clip`). On the same proposals this beats
    mask pooling of the unadapted tower's 4 x 4 dense grid (the ceilings table of docs/results.md). Each proposal
    is also read in its box with the image kept, and the two views' probabilities are multiplied: half
    the proposals fit their region with IoU under 0.7, and their masked crops alone are misread.
    """
    return SegmenterConfig(
        clip=CLIPConfig(model_name="tiny-clip", model_cfg=tiny_clip_model_cfg(), templates=WORLD_TEMPLATES),
        backbone=BackboneConfig(kind="timm", name=backbone),
        pixel_decoder=world_pixel_decoder(pixel_decoder, width),
        decoder=DecoderConfig(
            kind="mask2former",
            hidden_dim=width,
            num_queries=num_queries,
            num_layers=6,
            num_heads=width // 16,
            dim_feedforward=4 * width,
            text_mode=text_mode,
        ),
        image_size=128,
        pixel_mean=CLIP_MEAN,
        pixel_std=CLIP_STD,
        stage2_mode="crop",
        crop_top_k=num_queries,  # every proposal: the lower-ranked ones still draw pixels of the map
        crop_views=("masked", "box"),  # OVSeg's crop and its box with the image kept (docs/results.md: imperfect masks)
        max_prompts=50,
        name=world_name(text_mode),
        training_names=SEEN_NAMES,  # what the world's prompt sampler labels (train.batches.TrainingData)
    )


def world_pixel_decoder(kind: str, width: int) -> PixelDecoderConfig:
    """MaskFormer's FPN (OVSeg's, the bundled pair's) or Mask2Former's deformable encoder scaled to ``width``:
    Mask2Former's six layers and 4x feed-forward, and one head per 16 channels (8 at the bundled 128, as
    Mask2Former's 8 at 256)."""
    if kind == "fpn":
        return PixelDecoderConfig(kind="fpn", conv_dim=width, mask_dim=width)
    return PixelDecoderConfig(
        kind=kind, conv_dim=width, mask_dim=width, num_heads=width // 16, dim_feedforward=4 * width
    )


def world_recipe(
    text_mode: str, num_queries: int = 24, steps: int = WORLD_STEPS, **stage1: int | str
) -> SegTrainConfig:
    """Mask2Former's recipe scaled to one CPU core for about 100 minutes (0.55-0.6 s per step).

    Departures, all because the model is tiny and trained from scratch: lr 3e-4 instead of 1e-4, the
    backbone at the full lr (Mask2Former's x0.1 is for an ImageNet-initialised backbone), and gradient
    clipping at norm 1.0 instead of 0.01. The schedule comes from the learning curve in docs/results.md
    (world-full seen mIoU still rising at the end of the shorter runs).
    """
    return SegTrainConfig(
        model=world_model(text_mode, num_queries, **stage1),
        data="world",
        crop_size=128,
        batch_size=8,
        steps=steps,
        lr=3e-4,
        backbone_lr_multiplier=1.0,
        warmup_steps=100,
        clip_grad_norm=1.0,
        checkpoint_every=500,
        eval_every=2000,
        eval_limit=100,
        init_clip="checkpoints/tiny-clip",
    )


def paper_model(backbone: str, decoder: str, text_mode: str, clip_name: str = "ViT-B-16") -> SegmenterConfig:
    """A paper-scale model; CLIP weights from open_clip's ``openai`` tag (resolved from the local cache).

    The OVSeg recipes (``decoder="maskformer"``) use OVSeg's own second stage: CLIP on the masked crop of
    every proposal (``stage2_mode="crop"``, ``crop_top_k`` = all queries). The Mask2Former recipes use
    mask pooling on dense CLIP features, which is far cheaper (see README, Speed).
    """
    ovseg = decoder == "maskformer"
    return SegmenterConfig(
        clip=CLIPConfig(model_name=clip_name, pretrained="openai", templates=("a photo of a {}.",)),
        backbone=BackboneConfig(kind="timm", name=backbone),
        pixel_decoder=PixelDecoderConfig(
            kind="fpn" if decoder == "maskformer" else "msdeform", conv_dim=256, mask_dim=256
        ),
        decoder=DecoderConfig(
            kind=decoder,
            hidden_dim=256,
            num_queries=100,
            num_layers=6 if decoder == "maskformer" else 9,
            num_heads=8,
            dim_feedforward=2048,
            text_mode=text_mode,
        ),
        image_size=640,
        stage2_mode="crop" if ovseg else "pool",
        crop_top_k=100,
        name=f"{'ovseg' if ovseg else 'm2f'}-{backbone}-{'baseline' if text_mode == 'none' else text_mode}",
    )


def paper_recipe(backbone: str, decoder: str, text_mode: str, clip_name: str = "ViT-B-16") -> SegTrainConfig:
    return SegTrainConfig(
        model=paper_model(backbone, decoder, text_mode, clip_name),
        data="coco-stuff-171",
        crop_size=640,
        batch_size=4,
        steps=120_000,
        lr=1e-4,
        warmup_steps=1500,
        clip_grad_norm=0.01,
        checkpoint_every=5000,
        eval_every=0,
        eval_limit=0,
    )


def previous_recipe(text_mode: str) -> str:
    """The recipe of a text mode with the previous bundled pair's 64-channel head: what the query sweep, the
    Fig. 5 ablations and the stage-1 pilots' control were trained with, kept so that they reproduce."""
    return f"{world_name(text_mode)}-width{PREVIOUS_WIDTH}"


# Stage-1 capacity pilots against the 64-channel recipe (baseline, the bundled schedule): is the mask gap a
# matter of stage 1's size? The other pilot, the 128-channel head, won and is today's world-baseline.
STAGE1_PILOTS = {"world-baseline-regnetx004": {"width": PREVIOUS_WIDTH, "backbone": "regnetx_004"}}
# Mask2Former's deformable pixel decoder in place of OVSeg's FPN, the rest the bundled baseline's.
PIXEL_DECODER_PILOTS = {"world-baseline-msdeform": {"pixel_decoder": "msdeform"}}

RECIPES: dict[str, Callable[[], SegTrainConfig]] = {
    **{world_name(m): (lambda m=m: world_recipe(m)) for m in TEXT_MODES},
    **{previous_recipe(m): (lambda m=m: world_recipe(m, width=PREVIOUS_WIDTH)) for m in TEXT_MODES},
    **{
        name: (lambda s=changes: world_recipe("none", **s))
        for name, changes in {**STAGE1_PILOTS, **PIXEL_DECODER_PILOTS}.items()
    },
    **{
        f"ovseg-{b}-{tag}": (lambda b=b, m=m: paper_recipe(b, "maskformer", m))
        for b in ("resnet101d", "swin_base_patch4_window12_384")
        for tag, m in (("baseline", "none"), ("pmp", "pmp"))
    },
    **{
        f"m2f-{b}-{tag}": (lambda b=b, m=m: paper_recipe(b, "mask2former", m))
        for b in ("resnet50", "swin_base_patch4_window12_384")
        for tag, m in (("baseline", "none"), ("pmp", "pmp"))
    },
}


def get_recipe(name: str) -> SegTrainConfig:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; accepted: {', '.join(RECIPES)}")
    config = RECIPES[name]()
    config.model.validate()
    return dataclasses.replace(config)
