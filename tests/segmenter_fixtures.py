"""The tiny segmenter, image and ViT CLIP that several test modules share (a pytest plugin: conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pmp.clip import CLIPModel
from pmp.config import CLIPConfig, SegmenterConfig
from pmp.segmenter import Segmenter
from tests.tiny import tiny_segmenter_config, tiny_vit_model_cfg


def tiny_config(text_mode: str = "pmp", **overrides) -> SegmenterConfig:
    return tiny_segmenter_config(text_mode, crop_top_k=4, **overrides)


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    torch.manual_seed(0)
    return Segmenter(tiny_config())


@pytest.fixture()
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(48, 80, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def vit_clip() -> CLIPModel:
    """A randomly initialised two-layer ViT CLIP (64 px, 16 px patches): the paths the bundled ResNet CLIP
    does not take."""
    torch.manual_seed(2)
    return CLIPModel.build(CLIPConfig(model_cfg=tiny_vit_model_cfg()))
