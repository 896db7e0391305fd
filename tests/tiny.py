"""The tiny random-weight segmenter config the tests share: the bundled architecture at toy width."""

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
