"""Training configs as dataclasses, saved beside every run (``train_config.json``) and in its checkpoints.

:class:`SegTrainConfig` is what :mod:`train.train_segmenter` runs (the segmenter's own
:class:`pmp.config.SegmenterConfig` inside it); :class:`CLIPTrainConfig` is what :mod:`train.train_clip`
runs. The recipes are files (``recipes/*.json``, read by :mod:`train.recipes`) holding these as data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pmp.config import SegmenterConfig, tiny_clip_model_cfg
from train.matcher import MASK_LOSSES

LR_SCHEDULES = ("poly", "warmup_poly", "warmup_multistep")
AUGMENTATIONS = ("resize_crop", "lsj")
WEIGHT_DECAY_GROUPS = ("names", "detectron2")
TRAINING_PROMPTS = ("all", "sampled")


@dataclass
class SegTrainConfig:
    model: SegmenterConfig = field(default_factory=SegmenterConfig)
    data: str = "world"  # "world" (synthetic, on the fly) or a real dataset key, "coco171" (needs data_root)
    data_root: str | None = None
    crop_size: int = 128
    batch_size: int = 8  # global, over all ranks: each takes batch_size / world size (refused unless it divides)
    steps: int = 2000
    lr: float = 1e-4  # for the global batch
    # "poly": linear warm-up from lr / warmup_steps, then (1 - t/T)^0.9 over the rest (the world's runs);
    # "warmup_poly": detectron2's WarmupPolyLR, (warmup_factor ramped linearly to 1) x (1 - step/steps)^0.9
    lr_schedule: str = "poly"
    # "warmup_multistep": detectron2's WarmupMultiStepLR, the warm-up as above times lr_gamma for each of
    # lr_steps passed (SOLVER.STEPS, SOLVER.GAMMA)
    warmup_factor: float = 1.0  # the warm-up's factor at step 0 (detectron2's SOLVER.WARMUP_FACTOR)
    lr_steps: tuple[int, ...] = ()
    lr_gamma: float = 0.1
    weight_decay: float = 0.05
    # "names": no decay on parameters of ndim <= 1 and names with "embed" or "norm" (biases too: the world's runs);
    # "detectron2": no decay on normalisation layers' parameters and embeddings, biases decayed
    # (detectron2's get_default_optimizer_params with WEIGHT_DECAY_NORM = WEIGHT_DECAY_EMBED = 0)
    weight_decay_groups: str = "names"
    backbone_lr_multiplier: float = 0.1
    warmup_steps: int = 100
    # Real data's resizing (train.augment.SemSegTrainTransform): the short side is one of min_size_train
    # (detectron2's ResizeShortestEdge, "choice"), the long side at most max_size_train; () and 0: the short
    # side 0.5x-2x the crop, the long side at most 4x the crop.
    min_size_train: tuple[int, ...] = ()
    max_size_train: int = 0
    color_aug_ssd: bool = False  # detectron2's ColorAugSSDTransform (Mask2Former's INPUT.COLOR_AUG_SSD)
    # "resize_crop": the resizing above then a crop (Mask2Former's semantic mapper, OVSeg's); "lsj":
    # large-scale jitter at lsj_scale x crop_size (Mask2Former's COCO mapper, FC-CLIP's; train.augment)
    augmentation: str = "resize_crop"
    lsj_scale: tuple[float, float] = (0.1, 2.0)
    # "all": every training class is a prompt of every image, the paper's C = C_train; "sampled": the
    # present classes plus random absent ones (train.batches), this project's scheme for the world
    training_prompts: str = "sampled"
    num_workers: int = 0  # DataLoader worker processes building samples ahead (0: in the training step)
    prefetch_factor: int = 2  # steps each worker builds ahead
    from_scratch: bool = False  # a timm backbone without pretrained weights trains only when this says so
    # A trained baseline's folder: stage 1 starts from its weights, only the text layers new (train.init_from)
    init_from: str | None = None
    clip_grad_norm: float = 0.01  # Mask2Former clips the full model's gradient norm at 0.01
    negative_prob: float = 0.5  # each absent training class is also prompted with this probability
    present_prob: float = 1.0  # each present class is prompted with this probability (1: always)
    # "points_bce": Mask2Former's mask loss and matching cost on sampled points; "full_focal": MaskFormer's
    # (OVSeg's) sigmoid focal loss and dice on every pixel (train.matcher.MASK_LOSSES)
    mask_loss: str = "points_bce"
    no_object_weight: float = 0.1
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    seed: int = 0
    amp: bool = True  # autocast on CUDA in amp_dtype; ignored on CPU
    amp_dtype: str = "bfloat16"  # or "float16", with a GradScaler (GPUs without bf16, e.g. V100)
    checkpoint_every: int = 200
    log_every: int = 10
    eval_every: int = 0  # 0: only at the end
    eval_benchmark: str = "world-full"
    eval_limit: int = 100
    init_clip: str | None = None  # a local open_clip folder (open_clip_config.json + weights) for the CLIP

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SegTrainConfig":
        """Build from a dict (missing fields take their defaults); unknown keys and unsupported values are errors."""
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training config keys {unknown}; accepted: {sorted(known)}")
        model = SegmenterConfig.from_dict(data.pop("model", {}))
        for key in ("min_size_train", "lr_steps", "lsj_scale"):
            if key in data:
                data[key] = tuple(data[key])
        config = cls(model=model, **data)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise ValueError naming the first field that holds an unsupported value."""
        for name, accepted in (
            ("lr_schedule", LR_SCHEDULES),
            ("augmentation", AUGMENTATIONS),
            ("weight_decay_groups", WEIGHT_DECAY_GROUPS),
            ("training_prompts", TRAINING_PROMPTS),
            ("mask_loss", MASK_LOSSES),
            ("amp_dtype", ("bfloat16", "float16")),
        ):
            if getattr(self, name) not in accepted:
                raise ValueError(f"{name}={getattr(self, name)!r} is not supported; accepted: {', '.join(accepted)}")
        if self.batch_size < 1 or self.steps < 1 or self.crop_size < 1:
            raise ValueError("batch_size, steps and crop_size must be positive")

    def per_rank_batch(self, world_size: int) -> int:
        """The batch each of ``world_size`` ranks takes: the global batch divided evenly, or ValueError."""
        if self.batch_size % world_size:
            raise ValueError(
                f"the global batch {self.batch_size} does not divide over {world_size} ranks; use a number of "
                f"GPUs that divides it, or set --batch-size (the learning rate belongs to the global batch)"
            )
        return self.batch_size // world_size


@dataclass
class CLIPTrainConfig:
    model_cfg: dict[str, Any] = field(default_factory=tiny_clip_model_cfg)
    image_size: int = 128
    batch_size: int = 64  # per rank (train.bundle runs 2 ranks x 32); about half scenes, half object crops
    crop_fraction: float = 0.5
    part_fraction: float = 0.15  # part close-ups ("a close-up photo of a wheel"); the rest are scenes
    steps: int = 1500
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 20
    eval_crops_per_class: int = 20

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class CLIPAdaptConfig:
    """What :mod:`train.adapt_clip` runs: OVSeg's mask-adapted fine-tuning of a trained CLIP's image tower."""

    steps: int = 2400
    scenes_per_step: int = 16  # each gives regions_per_scene masked crops
    regions_per_scene: int = 4
    pair_batch: int = 32  # the CLIP's own image-caption pairs, contrastive against the frozen text tower
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_steps: int = 50
    mask_stride: int = 4  # regions are degraded to the proposals' resolution (a quarter of the image's)
    proposal_segmenter: str | None = None  # a trained segmenter folder: its matched proposals are regions too
    proposal_regions: int = 2  # of each scene's regions_per_scene, with a proposal_segmenter
    proposal_min_iou: float = 0.5  # a proposal is named after the region it overlaps best, from this IoU
    vision_layers: tuple[int, ...] | None = None  # grow the image tower to these blocks per stage first
    fresh_image_tower: tuple[int, int] | None = None  # (width, crop size): a new image tower, from scratch
    # The views of each crop the tower learns from (pmp.config.CROP_VIEWS). With several, the region loss
    # is on their views' mean log-probabilities, the p_hat stage 2 computes from them at inference.
    crop_views: tuple[str, ...] = ("masked",)
    # How often each kind of world region is drawn, as weights for (stuff, thing, part): a kind's weight is
    # shared among that scene's regions of the kind. None = every region equally likely, so a thing's parts
    # outnumber its whole (how the bundled CLIP was adapted).
    kind_weights: tuple[float, float, float] | None = None
    min_region_pixels: int = 12
    image_size: int = 128
    seed: int = 0
    log_every: int = 20
    eval_scenes: int = 200  # held-out scenes whose regions region_accuracy classifies
    eval_crops_per_class: int = 20  # zero-shot accuracy before and after (train.train_clip.zero_shot_accuracy)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
