"""The fake segmenters, the models fixture and the helpers the demo tests share (a pytest plugin: conftest.py)."""

from __future__ import annotations

import io
from types import SimpleNamespace
from typing import Any

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

from demo.comparison import (
    DemoModels,
)
from demo.handlers import compare_for_ui
from pmp.prompts import PromptError
from pmp.segmenter import SegmentationResult


class FakeSegmenter:
    """The Segmenter interface with deterministic output: N horizontal-band proposals, returned as a real
    :class:`SegmentationResult`. Prompts count one token per word plus start and end (like the real
    tokenizer for simple words) against a ``context_length`` of 32 with the template "a photo of a {}.".

    ``shift`` moves the bands so that the baseline and PMP fakes pick different masks.
    """

    template = "a photo of a {}."

    def __init__(
        self,
        shift: int = 0,
        num_proposals: int = 6,
        fail: bool = False,
        context_length: int = 32,
        follows_prompts: bool = False,
        stage2_mode: str = "pool",
    ) -> None:
        self.shift, self.num_proposals, self.fail = shift, num_proposals, fail
        self.follows_prompts = follows_prompts  # True: one more band per prompt, so the masks move with the prompts
        self.config = SimpleNamespace(
            max_prompts=100, max_prompt_chars=120, stage2_mode=stage2_mode, clip_weight=0.65, clip_weight_unseen=None
        )
        self.context_length = context_length
        self.calls: list[dict] = []

    def set_image(self, image: Any) -> Any:
        """The real one prepares the image's half of both stages; here the image is its own state."""
        return image

    def check_token_limit(self, labels: list[str]) -> None:
        for label in labels:
            tokens = len(self.template.replace("{}", label).split()) + 2
            if tokens > self.context_length:
                raise PromptError(
                    f"prompt {label!r} is too long for CLIP: {tokens} tokens with its template, "
                    f"at most {self.context_length} fit; shorten it"
                )

    def segment(self, image, labels, *, clip_weight=0.65, stage2_mode="pool", mask_threshold=0.5) -> SegmentationResult:
        if self.fail:
            raise RuntimeError("CUDA out of memory (simulated)")
        assert isinstance(image, Image.Image) and image.mode == "RGB"
        self.calls.append({"size": image.size, "labels": list(labels), "clip_weight": clip_weight, "mode": stage2_mode})
        width, height = image.size
        n, k = self.num_proposals + (len(labels) if self.follows_prompts else 0), len(labels)
        rows = (np.arange(height)[:, None] * n // max(height, 1) + self.shift) % n  # (H, 1) band index
        bands = np.arange(n)[:, None, None] == np.broadcast_to(rows, (height, width))[None]  # (N, H, W)
        rng = np.random.default_rng(len(labels) + self.shift)
        p, p_hat = rng.random((n, k)), rng.random((n, k))
        p_out = p ** (1 - clip_weight) * p_hat**clip_weight
        best = p_out.argmax(0)
        selected = [(int(best[j]), float(p_out[best[j], j])) for j in range(k)]
        semantic = np.full((height, width), -1, np.int64)
        for j, (index, _) in enumerate(selected):
            semantic[bands[index]] = j
        timings = {"text": 0.001, "stage1": 0.02, "stage2": 0.01, "post": 0.002}
        return SegmentationResult(
            labels=list(labels), semantic=semantic, p=p, p_hat=p_hat, p_out=p_out, selected=selected,
            timings={**timings, "total": sum(timings.values())}, clip_weight=clip_weight, stage2_mode=stage2_mode,
            mask_threshold=mask_threshold, no_object=np.zeros(n), image_size=(height, width),
            mask_logits=torch.from_numpy(np.where(bands, 10.0, -10.0).astype(np.float32)),
        )  # fmt: skip


@pytest.fixture()
def models() -> DemoModels:
    return DemoModels(baseline=FakeSegmenter(shift=0), pmp=FakeSegmenter(shift=2))


def _compare(models, image, prompts="sky, house", tmp_path=None, **settings):
    options = {"clip_weight": 0.65, "stage2_mode": "pool", "mask_threshold": 0.5, **settings}
    return compare_for_ui(
        models,
        image,
        prompts,
        options["clip_weight"],
        options["stage2_mode"],
        options["mask_threshold"],
        True,
        output_root=tmp_path,
    )


def _error_message(models, image, prompts="sky, house", tmp_path=None, **settings) -> str:
    with pytest.raises(gr.Error) as caught:
        _compare(models, image, prompts, tmp_path, **settings)
    return caught.value.message


def _png(image: Image.Image, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **params)
    return buffer.getvalue()


def _write(tmp_path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (20, 10), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


def _exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to view
    buffer = io.BytesIO()
    Image.new("RGB", (40, 20), (0, 200, 0)).save(buffer, "JPEG", exif=exif)
    return buffer.getvalue()


def _cmyk_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("CMYK", (20, 10), (0, 255, 255, 0)).save(buffer, "JPEG")
    return buffer.getvalue()


def _palette_png() -> bytes:
    palette = Image.new("P", (20, 10))
    palette.putpalette([0, 0, 255, 0, 255, 0] + [0, 0, 0] * 254)
    return _png(palette, transparency=0)
