"""The tiny random-weight configs the tests share: the bundled segmenter at toy width, and a ViT and a ConvNeXt
CLIP for the paths the bundled ResNet CLIP does not take."""

from __future__ import annotations

from typing import Any

from pmp.config import (
    CLIP_MEAN,
    CLIP_STD,
    BackboneConfig,
    CLIPConfig,
    DecoderConfig,
    PixelDecoderConfig,
    SegmenterConfig,
    tiny_clip_model_cfg,
)


def tiny_segmenter_config(
    text_mode: str = "pmp",
    *,
    num_queries: int = 8,
    num_layers: int = 3,
    templates: tuple[str, ...] = ("a photo of a {}.",),
    **overrides: Any,
) -> SegmenterConfig:
    settings: dict[str, Any] = dict(
        clip=CLIPConfig(model_name="tiny", model_cfg=tiny_clip_model_cfg(), templates=templates),
        backbone=BackboneConfig(kind="clip"),
        pixel_decoder=PixelDecoderConfig(kind="fpn", conv_dim=32, mask_dim=32),
        decoder=DecoderConfig(
            hidden_dim=32,
            num_queries=num_queries,
            num_layers=num_layers,
            num_heads=2,
            dim_feedforward=64,
            text_mode=text_mode,
        ),
        image_size=64,
        pixel_mean=CLIP_MEAN,
        pixel_std=CLIP_STD,
    )
    settings.update(overrides)
    return SegmenterConfig(**settings)


def tiny_vit_model_cfg() -> dict:
    """A two-layer ViT with 16 px patches at 64 px: a 4 x 4 token grid."""
    return {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }


def tiny_convnext_cfg() -> dict:
    """open_clip's convnext_large_d_320 config with timm's smallest ConvNeXt in place of ConvNeXt-Large."""
    return {
        "embed_dim": 32,
        "vision_cfg": {"timm_model_name": "convnext_atto", "timm_model_pretrained": False, "timm_pool": "",
                       "timm_proj": "mlp", "timm_drop": 0.0, "timm_drop_path": 0.1, "image_size": 64},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }  # fmt: skip
