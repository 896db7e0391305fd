"""The tiny segmenter and image that the segmenter and checkpoint tests share (a pytest plugin: conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pmp.config import SegmenterConfig
from pmp.segmenter import Segmenter
from tests.tiny import tiny_segmenter_config


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
