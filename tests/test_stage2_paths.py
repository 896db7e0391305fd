"""Eq. 2's stage 2 through classify_proposals with the bundled tiny CLIP: what reaches CLIP on a padded
batch, the crop path's top-k and geometry, FC-CLIP's pooled form (pmp/stage2.py)."""

from __future__ import annotations

import torch

from pmp.segmenter import Segmenter
from pmp.stage2 import classify_proposals


def _inputs(segmenter: Segmenter) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 48, 64, generator=generator)  # not square: height and width must not be swapped
    pixels = torch.nn.functional.pad(image, (0, 32, 0, 48))  # the batch's zero padding beyond the image
    mask_logits = torch.randn(3, 12, 16, generator=generator) * 4
    text = segmenter.clip.encode_text(["sky", "car"])
    p = torch.tensor([[0.9, 0.1], [0.2, 0.3], [0.6, 0.4]])
    return image, pixels, mask_logits, text, p


def test_only_the_image_inside_the_padding_reaches_clip(segmenter: Segmenter) -> None:
    image, pixels, mask_logits, text, p = _inputs(segmenter)
    for mode in ("pool", "crop"):
        padded = classify_proposals(segmenter.clip, pixels, (48, 64), mask_logits, text, p, mode, crop_top_k=3)
        alone = classify_proposals(segmenter.clip, image, (48, 64), mask_logits, text, p, mode, crop_top_k=3)
        torch.testing.assert_close(padded, alone)


def test_the_crop_path_keeps_p_beyond_its_top_k_and_takes_at_most_every_proposal(segmenter: Segmenter) -> None:
    image, _, mask_logits, text, p = _inputs(segmenter)
    two = classify_proposals(segmenter.clip, image, (48, 64), mask_logits, text, p, "crop", crop_top_k=2)
    assert torch.equal(two[1], p[1])  # the proposal with the lowest stage-1 score: p_hat = p
    assert not torch.allclose(two[[0, 2]], p[[0, 2]])
    every = classify_proposals(segmenter.clip, image, (48, 64), mask_logits, text, p, "crop", crop_top_k=10)
    torch.testing.assert_close(every[[0, 2]], two[[0, 2]])
    assert not torch.allclose(every[1], p[1])


def test_the_crop_geometry_reaches_the_crops(segmenter: Segmenter) -> None:
    image, _, mask_logits, text, p = _inputs(segmenter)
    square, tight = (
        classify_proposals(
            segmenter.clip, image, (48, 64), mask_logits, text, p, "crop", crop_top_k=3, crop_geometry=(box, 0.5)
        )  # fmt: skip
        for box in ("square", "tight")
    )
    assert not torch.allclose(square, tight)
