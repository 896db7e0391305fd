"""One dataclass config per model, saved as ``config.json`` beside ``model.safetensors``.

Everything needed to rebuild a model lives here: ``SegmenterConfig.from_dict(json.load(...))`` followed
by the plain constructors in :mod:`pmp.modeling` and :mod:`pmp.clip` gives the exact module tree the
weights were saved from. There is no registry: a config field names a choice, and one ``if`` in the
builder takes it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

# "none" = baseline; "pmp" = Eq. 5 as written; "pmp_residual" = Eq. 5 with a residual around Q';
# "concat", "concat_drop", "text_queries" = the Fig. 5 ablations (a), (b), (c). See pmp.modeling.text_conditioning.
CROP_BOXES: tuple[str, ...] = ("square", "tight")
TEXT_MODES: tuple[str, ...] = ("none", "pmp", "pmp_residual", "concat", "concat_drop", "text_queries")
PIXEL_DECODERS: tuple[str, ...] = ("fpn", "msdeform")
DECODERS: tuple[str, ...] = ("mask2former", "maskformer")
BACKBONES: tuple[str, ...] = ("timm", "swin", "clip")
STAGE2_MODES: tuple[str, ...] = ("pool", "crop")
POOL_FORMS: tuple[str, ...] = ("maskclip", "fcclip")
# Segmenter.autocast_dtype by name (pmp.segmenter.AUTOCAST_DTYPES), for command lines; "none" = float32.
AUTOCAST_NAMES: tuple[str, ...] = ("none", "bfloat16", "float16")
ENSEMBLES: tuple[str, ...] = ("ovseg", "odise")  # Eq. 3's form: OVSeg's (the paper's baseline) or ODISE's
# What CLIP sees of a proposal in crop mode: "masked" = OVSeg's crop (the mask's square box, everything
# outside the mask filled with CLIP's mean colour); "box" = the same square with the image kept.
CROP_VIEWS: tuple[str, ...] = ("masked", "box")

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class CLIPConfig:
    """The CLIP used for text embeddings (both stages) and for stage-2 classification.

    ``pretrained`` is only used when a model is first built for training: a saved Segmenter stores the
    CLIP weights in its own ``model.safetensors`` (keys ``clip.*``), so loading never needs the original
    source. Unless ``checkpoint`` is set: then the segmenter's CLIP *is* that open_clip folder (a bundled
    name such as ``"tiny-clip"``, a local folder or a Hub repo id), pinned by the sha256 of its weights
    file, and a saved segmenter leaves the ``clip.*`` weights out and loads them from there
    (:meth:`pmp.segmenter.Segmenter.reference_clip`). Two bundled segmenters sharing one frozen CLIP
    then need not carry a copy each.
    """

    model_name: str = "ViT-B-16"  # an open_clip model name, used when model_cfg is None
    pretrained: str | None = None  # an open_clip pretrained tag or a local weights file
    model_cfg: dict[str, Any] | None = None  # a custom open_clip config (embed_dim, vision_cfg, text_cfg)
    templates: tuple[str, ...] = ("a photo of a {}.",)
    text_cache_size: int = 4096  # bounded LRU of per-prompt text embeddings
    checkpoint: str | None = None  # the open_clip folder whose weights this CLIP is (see above), or None
    checkpoint_sha256: str | None = None  # the sha256 of that folder's weights file, checked on load
    # The towers' activation: OpenAI's CLIPs were trained with QuickGELU. None: as the pretrained tag says
    # (open_clip's registry; plain GELU for a file or random weights); True / False: always, so that OpenAI
    # weights loaded from a file, or a trained segmenter that stores its CLIP, keep QuickGELU.
    quick_gelu: bool | None = None
    # OVSeg's mask prompt tuning (pmp.clip.mask_prompts): learned tokens replace the patches outside a
    # masked crop's mask in the first this-many blocks of a ViT image tower (OVSeg's MASK_PROMPT_DEPTH, 3);
    # 0: off. Used by crop stage 2 with tight boxes, as OVSeg's MASK_PROMPT_FWD.
    mask_prompt_depth: int = 0


@dataclass
class BackboneConfig:
    """Stage-1 image features at strides 4, 8, 16, 32."""

    # "timm": a timm features_only model; "swin": Swin as OVSeg/Mask2Former build it (pmp.modeling.swin);
    # "clip": the frozen CLIP image tower (FC-CLIP)
    kind: str = "timm"
    name: str = "resnet50"  # timm model name (kind == "timm")
    pretrained_file: str | None = None  # local weights file or a Hub id already in the cache; never downloads
    freeze: bool = False  # kind == "clip" is always frozen
    drop_path_rate: float = 0.0  # stochastic depth in training (timm's drop_path_rate; Swin in OVSeg: 0.3)
    # BatchNorm layers frozen (statistics and affine parameters fixed, timm's FrozenBatchNorm2d), as
    # detectron2's ResNets train by default (MODEL.RESNETS.NORM "FrozenBN"): OVSeg's R101c, Mask2Former's R50
    frozen_batch_norm: bool = False
    # Constructor sizes beside the name: timm.create_model's (e.g. {"stem_width": 64}) or, for kind "swin",
    # pmp.modeling.swin.SwinTransformer's (embed_dim, depths, num_heads, window_size). Numbers and lists of
    # numbers only, each within BACKBONE_KWARG_LIMIT.
    model_kwargs: dict[str, Any] | None = None
    # DeepLab's multi-grid (detectron2 MODEL.RESNETS.RES5_MULTI_GRID): the last ResNet stage's 3x3 convs
    # dilated block by block by these rates (OVSeg's R101c: [1, 2, 4]); None: undilated.
    res5_multi_grid: list[int] | None = None


@dataclass
class PixelDecoderConfig:
    kind: str = "fpn"  # "fpn": MaskFormer's FPN (OVSeg); "msdeform": Mask2Former's deformable encoder
    conv_dim: int = 256
    mask_dim: int = 256
    num_layers: int = 6  # deformable encoder layers (msdeform only)
    num_heads: int = 8
    num_points: int = 4
    dim_feedforward: int = 1024


@dataclass
class DecoderConfig:
    kind: str = "mask2former"  # "mask2former": masked attention over 3 scales; "maskformer": OVSeg's
    hidden_dim: int = 256
    num_queries: int = 100
    num_layers: int = 9
    num_heads: int = 8
    dim_feedforward: int = 2048
    text_mode: str = "none"  # "none" = baseline, "pmp" = Eq. 5, or a variant / Fig. 5 ablation (see TEXT_MODES)
    pre_norm: bool = False
    dropout: float = 0.0  # the decoder layers' dropout in training (Mask2Former 0.0; MaskFormer / OVSeg 0.1)
    # Eq. 1's class embedding e_q: a linear projection (1 layer) or OVSeg's MLP (EMBED_LAYERS = 2, hidden
    # EMBED_HIDDEN_DIM = 1024) to the CLIP text space; its cosine with the text embeddings is scaled by a
    # learned temperature (None, CLIP's initial 1/0.07) or a fixed one (OVSeg's get_sim_logits: 100).
    class_head_layers: int = 1
    class_head_hidden_dim: int = 1024
    class_logit_scale: float | None = None
    # FC-CLIP's in-vocabulary classifier: e_q is taken of the query plus its mask's mean pixel-decoder feature
    # (pmp.modeling.heads.binary_mask_pool, through LayerNorm and a linear map to hidden_dim).
    class_head_mask_pooling: bool = False


@dataclass
class SegmenterConfig:
    """A two-stage open-vocabulary segmenter: stage-1 proposals + CLIP stage 2 (Eq. 1-3)."""

    clip: CLIPConfig = field(default_factory=CLIPConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    pixel_decoder: PixelDecoderConfig = field(default_factory=PixelDecoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    image_size: int = 640  # inference: the longer image side is resized to this (then padded to /32)
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN  # stage-1 normalisation (0-1 RGB)
    pixel_std: tuple[float, float, float] = IMAGENET_STD
    # Eq. 3's ensemble as OVSeg (CLIP_ENSEMBLE_WEIGHT) and ODISE (beta) use the paper's 0.65: the exponent
    # of the CLIP probability p_hat, p_out = p^(1 - clip_weight) * p_hat^clip_weight (docs/method.md).
    clip_weight: float = 0.65
    # Eq. 3's form (ENSEMBLES): "ovseg" is OVSeg's, the paper's baseline: stage 1's p (no-object left
    # out) against p_hat as above. "odise" is ODISE's and FC-CLIP's: the same on stage 1's class
    # distribution renormalised without no-object, the result renormalised and scaled by 1 - p(no-object),
    # so that a proposal stage 1 calls no-object stays out of the semantic map (pmp.stage2.ensemble).
    ensemble: str = "ovseg"
    # Eq. 3 with two weights, FC-CLIP's geometric ensemble (its alpha and beta, 0.4 and 0.8): prompts
    # that name something stage 1 was trained to classify (``training_names``, FC-CLIP's "in-vocabulary"
    # classes) get ``clip_weight``, every other prompt ``clip_weight_unseen``, so that CLIP decides more
    # where stage 1 has never seen the name. None = one weight for every prompt, as in OVSeg and the
    # paper (pmp.stage2.prompt_clip_weights).
    clip_weight_unseen: float | None = None
    # The names stage 1 was trained on (its training vocabulary; written by train.train_segmenter). A
    # prompt is one of them when any of its comma-separated synonyms is, compared case-insensitively.
    training_names: tuple[str, ...] = ()
    stage2_mode: str = "pool"  # "pool": mask-pooled dense CLIP features; "crop": OVSeg's masked crops
    # Pool mode (POOL_FORMS): "maskclip" pools per-pixel joint-space embeddings (pmp.clip.dense) with the
    # soft masks; "fcclip" is FC-CLIP's: a ConvNeXt tower's last-stage map pooled over each mask's logit > 0
    # cells, then the tower's head on each pooled vector.
    pool_form: str = "maskclip"
    crop_top_k: int = 20  # crop mode: only the top-k proposals by stage-1 score are cropped
    # Crop mode: the views of each proposal CLIP reads (CROP_VIEWS); with several, p_hat is the geometric
    # mean of their probabilities. ("masked",) is OVSeg's stage 2. Adding "box" is this project's
    # departure for imperfect masks: a proposal that misses half its object still shows CLIP the object
    # in its box (docs/results.md, "Reading imperfect masks"); it doubles the crops' cost.
    crop_views: tuple[str, ...] = ("masked",)
    # Crop mode's geometry: "square" (this project's: the tight box grown to a square about its centre, as
    # padding it would, resampled with roi_align) or "tight" (OVSeg's REGION_RESIZED: the tight box stretched
    # to the tower's size, bicubic); the mask is binarised at crop_mask_threshold (OVSeg's MASK_THR).
    crop_box: str = "square"
    crop_mask_threshold: float = 0.5
    mask_threshold: float = 0.5
    max_prompts: int = 100
    max_prompt_chars: int = 120
    name: str = ""

    def uniform_clip_weights(self, weight: float) -> tuple[float, float | None]:
        """:meth:`pmp.segmenter.Segmenter.combine`'s (clip_weight, clip_weight_unseen) that give every
        prompt ``weight``, whatever this config's Eq. 3: the second weight is passed only where the config
        lists training names (combine refuses it otherwise)."""
        return float(weight), (float(weight) if self.training_names else None)

    def validate(self) -> None:
        """Raise ValueError naming the first field that holds an unsupported value."""
        checks = [
            ("backbone.kind", self.backbone.kind, BACKBONES),
            ("pixel_decoder.kind", self.pixel_decoder.kind, PIXEL_DECODERS),
            ("decoder.kind", self.decoder.kind, DECODERS),
            ("decoder.text_mode", self.decoder.text_mode, TEXT_MODES),
            ("stage2_mode", self.stage2_mode, STAGE2_MODES),
            ("ensemble", self.ensemble, ENSEMBLES),
            ("pool_form", self.pool_form, POOL_FORMS),
        ]
        for name, value, accepted in checks:
            if value not in accepted:
                raise ValueError(f"config field {name}={value!r} is not supported; accepted: {', '.join(accepted)}")
        if not 0.0 <= self.clip_weight <= 1.0:
            raise ValueError(f"clip_weight must be in [0, 1], got {self.clip_weight}")
        if self.clip_weight_unseen is not None:
            if not 0.0 <= self.clip_weight_unseen <= 1.0:
                raise ValueError(f"clip_weight_unseen must be None or in [0, 1], got {self.clip_weight_unseen}")
            if not self.training_names:
                raise ValueError(
                    "clip_weight_unseen needs training_names (the names stage 1 was trained on): without them "
                    "every prompt would count as unseen"
                )
        check_crop_views(self.crop_views)
        if self.crop_box not in CROP_BOXES or not 0.0 < self.crop_mask_threshold < 1.0:
            raise ValueError(
                f"crop_box must be one of {', '.join(CROP_BOXES)} and crop_mask_threshold in (0, 1), got "
                f"{self.crop_box!r} and {self.crop_mask_threshold}"
            )
        if self.clip.mask_prompt_depth and (self.stage2_mode, self.crop_box) != ("crop", "tight"):
            raise ValueError(
                "clip.mask_prompt_depth > 0 (OVSeg's mask prompts) needs OVSeg's crops: stage2_mode 'crop' and "
                f"crop_box 'tight', got {self.stage2_mode!r} and {self.crop_box!r}"
            )
        if bool(self.clip.checkpoint) != bool(self.clip.checkpoint_sha256):
            raise ValueError(
                "clip.checkpoint and clip.checkpoint_sha256 go together: a referenced CLIP is pinned by the "
                f"sha256 of its weights file (got checkpoint={self.clip.checkpoint!r}, "
                f"checkpoint_sha256={self.clip.checkpoint_sha256!r})"
            )
        if self.image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32, got {self.image_size}")
        if not 0.0 <= self.decoder.dropout < 1.0:
            raise ValueError(f"decoder.dropout must be in [0, 1), got {self.decoder.dropout}")
        scale = self.decoder.class_logit_scale
        if scale is not None and not (math.isfinite(scale) and 0 < scale <= 1000):
            raise ValueError(f"decoder.class_logit_scale must be None (learned) or in (0, 1000], got {scale}")
        check_sizes(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SegmenterConfig":
        """Build from a dict; unknown keys are an error so that a mismatched config.json is caught."""
        sub = {
            "clip": CLIPConfig,
            "backbone": BackboneConfig,
            "pixel_decoder": PixelDecoderConfig,
            "decoder": DecoderConfig,
        }
        kwargs: dict[str, Any] = {}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if "ensemble_lambda" in unknown:
            raise ValueError(
                "config key 'ensemble_lambda' (the exponent of the stage-1 p in Eq. 3) is now 'clip_weight', "
                'the exponent of CLIP\'s p_hat: replace it by "clip_weight": 1 - ensemble_lambda '
                "(0.65 is the paper's value)"
            )
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}; accepted: {sorted(known)}")
        _check_types(cls, data, "")
        for key, value in data.items():
            if key in sub:
                sub_known = {f.name for f in dataclasses.fields(sub[key])}
                bad = set(value) - sub_known
                if bad:
                    raise ValueError(
                        f"unknown keys {sorted(bad)} in config section {key!r}; accepted: {sorted(sub_known)}"
                    )
                _check_types(sub[key], value, f"{key}.")
                value = dict(value)
                if key == "clip" and "templates" in value:
                    value["templates"] = tuple(value["templates"])
                kwargs[key] = sub[key](**value)
            elif key in ("pixel_mean", "pixel_std", "crop_views", "training_names"):
                kwargs[key] = tuple(value)
            else:
                kwargs[key] = value
        config = cls(**kwargs)
        config.validate()
        return config


# Every size a config sets, bounded before anything is built: a checkpoint from the Hub is untrusted
# input, and a config.json that asks for 2,000,000 queries must be refused, not allocated. The bounds
# are far above any published model (Mask2Former and FC-CLIP: 100-250 queries, 6-10 layers, 256-2048 wide).
SIZE_LIMITS: dict[str, tuple[int, int]] = {
    "image_size": (32, 4096),
    "crop_top_k": (1, 1000),
    "max_prompts": (1, 10_000),
    "max_prompt_chars": (1, 10_000),
    "clip.text_cache_size": (0, 1_000_000),
    "clip.mask_prompt_depth": (0, 64),
    "pixel_decoder.conv_dim": (1, 4096),
    "pixel_decoder.mask_dim": (1, 4096),
    "pixel_decoder.num_layers": (1, 64),
    "pixel_decoder.num_heads": (1, 64),
    "pixel_decoder.num_points": (1, 64),
    "pixel_decoder.dim_feedforward": (1, 65536),
    "decoder.hidden_dim": (1, 4096),
    "decoder.num_queries": (1, 1000),
    "decoder.num_layers": (1, 64),
    "decoder.num_heads": (1, 64),
    "decoder.dim_feedforward": (1, 65536),
    "decoder.class_head_layers": (1, 8),
    "decoder.class_head_hidden_dim": (1, 8192),
}
# clip.model_cfg (an open_clip config, nested) by key; any other whole number in it is bounded by OTHER_CLIP_SIZE.
CLIP_CFG_LIMITS: dict[str, tuple[int, int]] = {
    "embed_dim": (1, 4096),
    "width": (1, 4096),
    "layers": (1, 64),  # an int, or one int per stage (ModifiedResNet)
    "heads": (1, 64),
    "head_width": (1, 1024),
    "image_size": (16, 1024),
    "patch_size": (1, 64),
    "context_length": (1, 1024),
    "vocab_size": (1, 1_000_000),
}
OTHER_CLIP_SIZE = 100_000
BACKBONE_KWARG_LIMIT = (0, 4096)  # every number in backbone.model_kwargs and res5_multi_grid


def check_sizes(config: "SegmenterConfig") -> None:
    """Raise ValueError naming the first size of ``config`` outside :data:`SIZE_LIMITS` (and, in
    ``clip.model_cfg``, :data:`CLIP_CFG_LIMITS`), or a width its attention heads do not divide."""
    for name, (low, high) in SIZE_LIMITS.items():
        value = config
        for part in name.split("."):
            value = getattr(value, part)
        if not low <= value <= high:
            raise ValueError(f"config field {name}={value!r} is out of range: accepted {low:,} to {high:,}")
    heads = [("decoder.hidden_dim", config.decoder.hidden_dim, "decoder.num_heads", config.decoder.num_heads)]
    if config.pixel_decoder.kind == "msdeform":  # the FPN has no attention
        heads.append(
            ("pixel_decoder.conv_dim", config.pixel_decoder.conv_dim, "pixel_decoder.num_heads",
             config.pixel_decoder.num_heads)
        )  # fmt: skip
    for width_name, width, heads_name, count in heads:
        if width % count:
            raise ValueError(f"config field {width_name}={width} must be a multiple of {heads_name}={count}")
    _check_clip_cfg(config.clip.model_cfg or {}, "clip.model_cfg")
    _check_backbone_numbers(config.backbone)


def _check_backbone_numbers(backbone: "BackboneConfig") -> None:
    """backbone.model_kwargs and res5_multi_grid: numbers (or short lists of them) within
    :data:`BACKBONE_KWARG_LIMIT`; no strings, so a config can never hand a constructor a path."""
    low, high = BACKBONE_KWARG_LIMIT
    named = {f"backbone.model_kwargs.{key}": value for key, value in (backbone.model_kwargs or {}).items()}
    named["backbone.res5_multi_grid"] = backbone.res5_multi_grid or []
    for name, value in named.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        if len(values) > 16 or not all(
            isinstance(item, (int, float)) and not isinstance(item, bool) and low <= item <= high for item in values
        ):
            raise ValueError(
                f"config field {name}={value!r} is not accepted: numbers from {low} to {high:,}, or lists of at most "
                "16 of them"
            )


def _check_clip_cfg(section: dict[str, Any], prefix: str) -> None:
    for key, value in section.items():
        name = f"{prefix}.{key}"
        if isinstance(value, dict):
            _check_clip_cfg(value, name)
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        low, high = CLIP_CFG_LIMITS.get(key, (0, OTHER_CLIP_SIZE))
        for item in values:
            if isinstance(item, int) and not isinstance(item, bool) and not low <= item <= high:
                raise ValueError(f"config field {name}={value!r} is out of range: accepted {low:,} to {high:,}")


def name_synonyms(name: str) -> list[str]:
    """A class name's comma-separated synonyms, stripped and case-folded, in order ("tv, Monitor" ->
    ["tv", "monitor"]): how ``training_names`` and prompts are compared (pmp.stage2.prompt_clip_weights),
    and how train.datasets counts a real benchmark's classes as seen."""
    return [word for word in (part.strip().casefold() for part in name.split(",")) if word]


def parse_weight_pair(text: str) -> tuple[float, float]:
    """'0.4:0.9' -> (0.4, 0.9): Eq. 3's two CLIP weights (training names : other names) as command lines
    write them; ValueError unless both are numbers in [0, 1]."""
    try:
        pair = tuple(float(part) for part in text.split(":"))
    except ValueError:
        pair = ()
    if len(pair) != 2 or not all(0.0 <= w <= 1.0 for w in pair):
        raise ValueError(f"expected W:U, two numbers in [0, 1] (training names : other names), got {text!r}")
    return pair  # type: ignore[return-value]


def check_crop_views(views: tuple[str, ...]) -> None:
    """Raise ValueError unless ``views`` names one or more distinct :data:`CROP_VIEWS`."""
    if not views or len(set(views)) != len(views) or any(view not in CROP_VIEWS for view in views):
        raise ValueError(
            f"crop_views must name one or more distinct views of {', '.join(CROP_VIEWS)}; got {list(views)}"
        )


def _check_types(cls: type, data: dict[str, Any], prefix: str) -> None:
    """Raise ValueError naming the first field of ``data`` whose JSON value does not fit ``cls``'s annotation
    (a config.json with ``"num_queries": "lots"`` must fail here, not deep inside a constructor)."""
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        hint = hints.get(key)
        if hint is not None and not _fits(value, hint):
            shown = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
            raise ValueError(f"config field {prefix}{key}={value!r} has the wrong type: expected {shown}")


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a type annotation of this module (int, float, str, bool, None, tuple,
    dict, unions of them, and the config dataclasses, which are checked field by field elsewhere)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if dataclasses.is_dataclass(hint):
        return isinstance(value, dict)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis and len(args) != len(value):
            return False
        item_hints = [args[0]] * len(value) if (origin is list or (args and args[-1] is Ellipsis)) else list(args)
        return all(_fits(item, item_hint) for item, item_hint in zip(value, item_hints)) if args else True
    if origin is dict:
        return isinstance(value, dict)
    return True


def tiny_clip_model_cfg() -> dict[str, Any]:
    """The open_clip config of the bundled tiny CLIP (trained on the synthetic world by train.train_clip).

    A narrow ModifiedResNet (its stages give the FC-CLIP backbone features at strides 4-32) and a
    small text transformer. The text width is kept small because open_clip's 49,408-token embedding
    table dominates the size of the file.
    """
    return {
        "embed_dim": 128,
        "vision_cfg": {"image_size": 128, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3},
    }
