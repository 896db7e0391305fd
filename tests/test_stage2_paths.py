"""Eq. 2's stage 2 through classify_proposals (pmp/stage2.py) with tiny CLIPs: what reaches CLIP on a padded
batch, the crop path's top-k and geometry, a given trunk or dense map, a ViT's smaller dense input, FC-CLIP's
pooled form, the messages."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pmp.clip import CLIPModel
from pmp.config import CLIPConfig
from pmp.segmenter import Segmenter
from pmp.stage2 import classify_proposals, dense_input
from tests.messages import raises_exactly
from tests.tiny import tiny_convnext_cfg


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


def test_modes_and_pool_forms_are_checked(segmenter: Segmenter) -> None:
    image, _, mask_logits, text, p = _inputs(segmenter)
    accepted = "classify_proposals takes a stage2_mode of pool, crop and a pool_form of maskclip, fcclip; got "
    for mode, form, got in (("dense", "maskclip", "'dense' and 'maskclip'"), ("pool", "odise", "'pool' and 'odise'")):
        with raises_exactly(accepted + got):
            classify_proposals(
                segmenter.clip, image, (48, 64), mask_logits, text, p, mode, crop_top_k=3, pool_form=form
            )


def test_a_given_trunk_is_what_mask_pooling_reads(segmenter: Segmenter) -> None:
    """Stage 1's CLIP-backbone map of the same pixels replaces CLIP's own pass: here a random one."""
    image, _, mask_logits, _, p = _inputs(segmenter)
    clip, generator = segmenter.clip, torch.Generator().manual_seed(1)
    text = F.normalize(torch.randn(2, clip.embed_dim, generator=generator), dim=-1)
    visual = clip.open_clip.visual
    with torch.no_grad():
        own = visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(clip.normalize(image))))))
        trunk = torch.randn(own.shape, generator=generator) * 4  # (1, D, h, w) like CLIP's layer-4 map
        run = dict(crop_top_k=3)
        given = classify_proposals(clip, image, (48, 64), mask_logits, text, p, "pool", trunk=trunk, **run)
        dense = clip.dense_features_from_trunk(trunk)
        expected = classify_proposals(clip, image, (48, 64), mask_logits, text, p, "pool", dense=dense, **run)
        without = classify_proposals(clip, image, (48, 64), mask_logits, text, p, "pool", **run)
    torch.testing.assert_close(given, expected)
    assert not torch.allclose(given, without, atol=1e-2)


def test_a_vits_dense_pass_sees_the_image_at_the_given_scale(vit_clip: CLIPModel) -> None:
    generator = torch.Generator().manual_seed(3)
    image, mask_logits = torch.rand(1, 3, 128, 96, generator=generator), torch.randn(3, 32, 24, generator=generator)
    text, p = F.normalize(torch.randn(2, 64, generator=generator), dim=-1), torch.full((3, 2), 0.5)
    run = dict(crop_top_k=3)
    with torch.no_grad():
        full = vit_clip.dense_features(vit_clip.normalize(image))  # (1, C, 8, 6): scale 1 is the image as is
        half = vit_clip.dense_features(vit_clip.normalize(F.interpolate(image, size=(64, 48), mode="bilinear",
                                                                        antialias=True)))  # fmt: skip
        at_one = classify_proposals(
            vit_clip, image, (128, 96), mask_logits, text, p, "pool", vit_dense_scale=1.0, **run
        )
        default = classify_proposals(vit_clip, image, (128, 96), mask_logits, text, p, "pool", **run)
        for got, dense in ((at_one, full), (default, half)):
            given = classify_proposals(vit_clip, image, (128, 96), mask_logits, text, p, "pool", dense=dense, **run)
            torch.testing.assert_close(got, given)
    assert not torch.allclose(at_one, default, atol=1e-3)


def test_a_vits_dense_input_is_an_antialiased_bilinear_resize(vit_clip: CLIPModel) -> None:
    """Halving is PIL's bilinear resize (a triangle filter over 4 x 4 pixels), which torch's antialiased
    bilinear follows; each side a multiple of its own patch side."""
    image = torch.rand(1, 3, 128, 84, generator=torch.Generator().manual_seed(4))
    smaller = dense_input(vit_clip, image[..., :96])  # scale 0.5: 64 x 48
    channels = [
        Image.fromarray(channel.numpy(), mode="F").resize((48, 64), Image.BILINEAR) for channel in image[0, :, :, :96]
    ]
    expected = torch.from_numpy(np.stack([np.asarray(channel) for channel in channels]))[None]
    torch.testing.assert_close(smaller, expected, rtol=0, atol=1e-4)
    assert dense_input(vit_clip, image, vit_dense_scale=1.0) is image  # not even to patch multiples
    visual = vit_clip.open_clip.visual
    patch = visual.patch_size
    try:
        visual.patch_size = (16, 8)  # 64 rows (4 patches), 42 columns -> 40 (5 patches of 8)
        assert dense_input(vit_clip, image).shape[-2:] == (64, 40)
        visual.patch_size = (8, 16)  # 42 columns -> 48 (3 patches of 16)
        assert dense_input(vit_clip, image).shape[-2:] == (64, 48)
    finally:
        visual.patch_size = patch


def test_fcclips_pooled_form_is_its_out_of_vocabulary_classifier() -> None:
    """fcclip_transformer_decoder.py get_classification_logits: the pooled embeddings normalised, times CLIP's
    logit scale clamped at 100, against the text, softmax over the prompts; pooled from stage 1's trunk when
    given (FC-CLIP's frozen backbone)."""
    torch.manual_seed(0)
    clip = CLIPModel.build(CLIPConfig(model_cfg=tiny_convnext_cfg()))
    generator = torch.Generator().manual_seed(5)
    image, mask_logits = torch.rand(1, 3, 96, 64, generator=generator), torch.randn(4, 24, 16, generator=generator)
    text = F.normalize(torch.randn(3, 32, generator=generator), dim=-1)
    p = torch.full((4, 3), 1 / 3, dtype=torch.float64)
    other = torch.rand(1, 3, 96, 64, generator=generator)
    run = dict(crop_top_k=4, pool_form="fcclip")
    with torch.no_grad():
        cosines = []
        for pixels in (image, other):
            pooled = clip.fcclip_pooled(clip.convnext_trunk(clip.normalize(pixels)), mask_logits)  # (4, C)
            cosines.append((pooled / pooled.norm(dim=1, keepdim=True) @ text.T).double())
        own = classify_proposals(clip, image, (96, 64), mask_logits, text, p, "pool", **run)
        trunk = clip.convnext_trunk(clip.normalize(other))
        given = classify_proposals(clip, image, (96, 64), mask_logits, text, p, "pool", trunk=trunk, **run)
        clip.open_clip.logit_scale.fill_(np.log(200.0))  # a scale past FC-CLIP's clamp
        clamped = classify_proposals(clip, image, (96, 64), mask_logits, text, p, "pool", **run)
    scale = 1 / 0.07  # open_clip's initial logit scale
    torch.testing.assert_close(own, (scale * cosines[0]).softmax(dim=1))
    torch.testing.assert_close(given, (scale * cosines[1]).softmax(dim=1))
    torch.testing.assert_close(clamped, (100 * cosines[0]).softmax(dim=1))
    assert not torch.allclose(own, given, atol=1e-3)
