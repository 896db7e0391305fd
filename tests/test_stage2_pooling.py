"""Stage 2's mask pooling (pmp/stage2.py ``pool_classify``) on inputs small enough to follow by hand: how masks
of each size reach the dense grid, the softmax over prompts, the messages."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from pmp.stage2 import (
    crop_classify,
    crop_embeddings,
    crop_probabilities,
    crop_sources,
    crops_and_regions,
    masked_crops,
    pool_classify,
    soft_masks_on_grid,
    square_box_samples,
    square_boxes,
    tight_box_crops,
)
from tests.messages import raises_exactly

CLIP = SimpleNamespace(logit_scale=torch.tensor(10.0))  # all pool_classify reads of the CLIP model
DENSE = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [1.0, 1.0]]]])  # (B=1, C=2, 2, 2): no symmetry
TEXT = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=-1)  # (M=3, C=2)


def _expected(grid_masks: torch.Tensor) -> torch.Tensor:
    """Mean dense feature under each mask on the dense grid, normalised, softmax(10 cos) over the prompts."""
    pooled = torch.stack([(DENSE[0] * mask).sum(dim=(1, 2)) / mask.sum() for mask in grid_masks[0]])
    return (10.0 * F.normalize(pooled, dim=-1) @ TEXT.T).softmax(dim=-1)[None]


def test_larger_masks_are_area_averaged_onto_the_grid() -> None:
    masks = torch.zeros(1, 2, 4, 4)
    masks[0, 0, :2, :2] = 1.0  # exactly the top-left cell
    masks[0, 1, :, :1] = 1.0  # half of each left cell
    grid = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]], [[0.5, 0.0], [0.5, 0.0]]]])
    torch.testing.assert_close(pool_classify(CLIP, DENSE, masks, TEXT), _expected(grid))


@pytest.mark.parametrize("size", [(1, 1), (1, 4), (4, 1)])
def test_masks_that_must_grow_are_resized_bilinearly(size: tuple[int, int]) -> None:
    masks = torch.rand(1, 2, *size, generator=torch.Generator().manual_seed(0))
    grid = F.interpolate(masks, size=(2, 2), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(pool_classify(CLIP, DENSE, masks, TEXT), _expected(grid))
    if size == (1, 4):  # the grid's width is already passed: averaged the other way would differ
        assert not torch.allclose(grid, F.adaptive_avg_pool2d(masks, (2, 2)))


def test_soft_masks_above_one_count_as_one_and_an_empty_mask_is_uniform() -> None:
    masks = torch.zeros(1, 2, 2, 2)
    masks[0, 0, 0, 0], masks[0, 0, 1, 1] = 3.0, 1.0  # 3 counts as 1: the two cells weigh the same
    grid = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]]])
    got = pool_classify(CLIP, DENSE, masks, TEXT)
    torch.testing.assert_close(got[:, :1], _expected(grid[:, :1]))
    torch.testing.assert_close(got[0, 1], torch.full((3,), 1 / 3))


def test_pooling_messages() -> None:
    message = "pool_classify takes dense (B,C,h,w), masks (B,N,H,W), text (M,C); got (1, 2, 2, 2), (2, 2, 2), (3, 2)"
    with raises_exactly(message):
        pool_classify(CLIP, DENSE, torch.zeros(2, 2, 2), TEXT)
    message = "pool_classify shapes disagree: dense (1, 2, 2, 2), masks (1, 1, 2, 2), text (3, 4)"
    with raises_exactly(message):
        pool_classify(CLIP, DENSE, torch.zeros(1, 1, 2, 2), torch.zeros(3, 4))
    for masks, text in ((torch.zeros(2, 1, 2, 2), TEXT), (torch.zeros(1, 1, 2, 2), torch.zeros(3, 4)),
                        (torch.zeros(1, 2, 2), TEXT), (torch.zeros(1, 1, 2, 2), torch.zeros(3))):  # fmt: skip
        with pytest.raises(ValueError):
            pool_classify(CLIP, DENSE, masks, text)


# ---------------------------------------------------------------- what the crops and the pooled masks start from

CROP_CLIP = SimpleNamespace(device=torch.device("cpu"), normalize=lambda pixels: pixels * 2 - 1)  # all it reads


def test_masks_of_another_size_are_resized_bilinearly_before_binarising() -> None:
    image = torch.rand(3, 6, 8, generator=torch.Generator().manual_seed(1))
    small = torch.rand(2, 3, 4, generator=torch.Generator().manual_seed(2))
    full = F.interpolate(small[:, None], size=(6, 8), mode="bilinear", align_corners=False)[:, 0]
    resized, given = crop_sources(CROP_CLIP, image, small), crop_sources(CROP_CLIP, image, full)
    for mine, reference in zip(resized, given):
        assert torch.equal(mine, reference)
    normalised, inside, boxes, nonempty = given
    assert normalised.shape == (1, 3, 8, 10) and inside.shape == (len(nonempty), 1, 8, 10)  # one-pixel zero border
    assert normalised[..., 0, :].abs().sum() == 0 and normalised[..., :, -1].abs().sum() == 0
    assert inside[..., -1, :].sum() == 0 and inside[..., :, -1].sum() == 0


def test_a_mask_at_exactly_the_threshold_is_empty_and_no_masks_is_fine() -> None:
    image = torch.rand(3, 4, 4)
    masks = torch.full((2, 4, 4), 0.5)
    masks[1, 0, 0] = 0.75
    assert crop_sources(CROP_CLIP, image, masks)[3].tolist() == [1]
    assert crop_sources(CROP_CLIP, image, torch.zeros(0, 2, 2))[3].numel() == 0


def test_images_crop_stage_2_accepts_and_refuses() -> None:
    masks = torch.ones(1, 2, 2)
    pixels = np.full((2, 2, 3), 255, dtype=np.uint8)
    assert torch.equal(crop_sources(CROP_CLIP, pixels, masks)[0][0, :, 1:-1, 1:-1], torch.ones(3, 2, 2))
    assert crop_sources(CROP_CLIP, torch.ones(3, 2, 2), masks)[0].shape == (1, 3, 4, 4)
    start = "crop_classify takes an (H,W,3) uint8 image or a (3,H,W) float tensor in [0,1]; got "
    for image, got in (
        (np.zeros((2, 2, 3), dtype=np.float32), "a numpy array (2, 2, 3) float32"),
        (np.zeros((2, 2, 4), dtype=np.uint8), "a numpy array (2, 2, 4) uint8"),
        (np.zeros((2, 2), dtype=np.uint8), "a numpy array (2, 2) uint8"),
        (torch.zeros(3, 2, 2, dtype=torch.uint8), "Tensor (3, 2, 2)"),
        (torch.zeros(4, 2, 2), "Tensor (4, 2, 2)"),
        (torch.zeros(1, 3, 2, 2), "Tensor (1, 3, 2, 2)"),
        ([[0.0]], "list ()"),
    ):
        with raises_exactly(start + got):
            crop_sources(CROP_CLIP, image, masks)


@pytest.mark.parametrize("grid", [(10, 3), (3, 10)])
def test_a_grid_finer_than_the_image_gets_the_full_size_soft_masks(grid: tuple[int, int]) -> None:
    logits = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(3))
    full = F.interpolate(logits[None], size=(8, 6), mode="bilinear", align_corners=False)[0].sigmoid()
    torch.testing.assert_close(soft_masks_on_grid(logits, (8, 6), grid), full)
    coarse = F.adaptive_avg_pool2d(full[None], (4, 3))[0]
    torch.testing.assert_close(soft_masks_on_grid(logits, (8, 6), (4, 3)), coarse)


def test_square_box_samples_are_torchvisions_roi_align() -> None:
    images = F.pad(torch.rand(2, 3, 18, 18, generator=torch.Generator().manual_seed(4)), (1, 1, 1, 1))  # zero border
    boxes = torch.tensor([[1.0, 3.0, 9.0, 11.0], [2.0, 1.0, 18.0, 17.0]])  # sides 8 and 16: 2 and 4 samples a bin
    rois = torch.cat([torch.arange(2.0)[:, None], boxes], dim=1)
    expected = roi_align(images, rois, 4, 1.0, sampling_ratio=-1, aligned=True)
    torch.testing.assert_close(square_box_samples(images, boxes, 4), expected)
    one = images[:1]  # one image for every box
    expected = roi_align(one, torch.cat([torch.zeros(2, 1), boxes], dim=1), 4, 1.0, sampling_ratio=-1, aligned=True)
    torch.testing.assert_close(square_box_samples(one, boxes, 4), expected)
    message = "square_box_samples takes images (K or 1, C, H, W) and boxes (K, 4), got images "
    for bad_images, bad_boxes in ((images[0], boxes), (images, boxes[:, :3]), (images, boxes[0]),
                                  (torch.zeros(3, 3, 20, 20), boxes)):  # fmt: skip
        got = f"{tuple(bad_images.shape)} and boxes {tuple(bad_boxes.shape)}"
        with raises_exactly(message + got):
            square_box_samples(bad_images, bad_boxes, 4)


def test_tight_crops_are_cut_from_the_image_without_the_square_crops_border() -> None:
    clip = SimpleNamespace(**vars(CROP_CLIP), image_size=8)
    image = torch.rand(3, 12, 10, generator=torch.Generator().manual_seed(5))
    masks = torch.zeros(2, 12, 10)
    masks[0, 0:5, 0:4] = 1.0  # touches the top-left corner
    masks[1, 6:12, 3:10] = 1.0  # touches the bottom-right corner
    crops, regions, nonempty = crops_and_regions(clip, image, masks, views=("masked", "box"), geometry=("tight", 0.5))
    reference = tight_box_crops(clip.normalize(image[None]), masks[:, None] > 0.5, 8)
    torch.testing.assert_close(crops, torch.cat([reference["masked"], reference["box"]]))
    torch.testing.assert_close(regions, torch.cat([reference["region"], torch.ones_like(reference["region"])]))
    assert nonempty.tolist() == [0, 1]


def test_square_boxes_by_hand() -> None:
    masks = torch.zeros(2, 10, 8, dtype=torch.bool)
    masks[0, 5:7, 1:4] = True  # tight box x 1..4, y 5..7: wider than tall, centred at (2.5, 6)
    masks[1, 2:9, 6:7] = True  # x 6..7, y 2..9: taller than wide, centred at (6.5, 5.5)
    assert square_boxes(masks).tolist() == [[1.0, 4.5, 4.0, 7.5], [3.0, 2.0, 10.0, 9.0]]


@pytest.mark.parametrize("size", [(2, 4), (4, 2)])
def test_masks_larger_along_one_side_only_are_area_averaged(size: tuple[int, int]) -> None:
    masks = torch.rand(1, 2, *size, generator=torch.Generator().manual_seed(6))
    grid = F.adaptive_avg_pool2d(masks, (2, 2))  # a plain mean of the two values in each cell
    torch.testing.assert_close(pool_classify(CLIP, DENSE, masks, TEXT), _expected(grid))


def test_a_grid_coarser_than_the_image_only_in_height_is_area_averaged() -> None:
    logits = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(7))
    full = F.interpolate(logits[None], size=(8, 6), mode="bilinear", align_corners=False)[0].sigmoid()
    torch.testing.assert_close(soft_masks_on_grid(logits, (8, 6), (7, 3)), F.adaptive_avg_pool2d(full[None], (7, 3))[0])
    torch.testing.assert_close(soft_masks_on_grid(logits, (8, 6), (8, 6)), full)  # the grid is the image


def test_crop_classify_messages_and_empty_crops() -> None:
    clip = SimpleNamespace(device=torch.device("cpu"))
    masks, text = torch.ones(2, 4, 4), torch.ones(3, 8)
    for args, message in (
        ((masks, torch.ones(8)), "crop_classify takes text (M,C), got shape (8,)"),
        ((torch.ones(4, 4), text), "crop_classify takes masks (N,H,W), got shape (4, 4)"),
        ((masks, text, [0, 2]), "top_k_indices must lie in [0, 2), got [0, 2]"),
        ((masks, text, [-1]), "top_k_indices must lie in [0, 2), got [-1]"),
    ):
        with raises_exactly(message):
            crop_classify(clip, torch.ones(3, 4, 4), *args)
    for num_classes, uniform in ((1, 1.0), (4, 0.25)):  # no crop (every mask empty): p_hat uniform
        nothing = (torch.zeros(0, 8), torch.zeros(0, dtype=torch.long))
        probs = crop_probabilities(clip, nothing, torch.ones(num_classes, 8), 2, 1)
        assert torch.equal(probs, torch.full((2, num_classes), uniform))
    assert crop_probabilities(clip, (torch.ones(1, 8), torch.tensor([0])), torch.ones(0, 8), 2, 1).shape == (2, 0)


def test_no_non_empty_mask_gives_no_crops_and_no_embeddings() -> None:
    clip = SimpleNamespace(**vars(CROP_CLIP), image_size=8, embed_dim=5)
    image, empty = torch.rand(3, 4, 4), torch.zeros(2, 4, 4)
    crops, regions, nonempty = crops_and_regions(clip, image, empty)
    assert crops.shape == (0, 3, 8, 8) and regions is None and nonempty.numel() == 0
    feats, nonempty = crop_embeddings(clip, image, empty)
    assert feats.shape == (0, 5) and nonempty.numel() == 0
    for indices in ([], np.zeros(0, dtype=np.int64)):  # no proposal chosen: no row
        assert crop_classify(clip, image, torch.ones(2, 4, 4), torch.ones(3, 5), indices).shape == (0, 3)
    with raises_exactly("masked_crops takes masks (N,H,W), got shape (4, 4)"):
        masked_crops(clip, image, torch.ones(4, 4))


def test_the_threshold_reaches_the_masks_and_square_crops_have_no_regions() -> None:
    clip = SimpleNamespace(**vars(CROP_CLIP), image_size=4)
    image, masks = torch.rand(3, 6, 6), torch.zeros(2, 6, 6)
    masks[0, 1:3, 1:3] = 0.4  # non-empty only under a threshold below 0.4
    masks[1, 2:5, 2:5] = 0.9
    assert masked_crops(clip, image, masks)[1].tolist() == [1]
    crops, regions, nonempty = crops_and_regions(clip, image, masks, geometry=("square", 0.3))
    assert nonempty.tolist() == [0, 1] and crops.shape == (2, 3, 4, 4) and regions is None
    assert masked_crops(clip, image, masks, geometry=("square", 0.3))[1].tolist() == [0, 1]


def test_the_geometry_reaches_masked_crops() -> None:
    """A tight box shows only the mask's rectangle, here one colour; the square about it shows more rows."""
    clip = SimpleNamespace(**vars(CROP_CLIP), image_size=6)
    image = torch.rand(3, 12, 10, generator=torch.Generator().manual_seed(6))
    image[:, 2:5, 1:7] = torch.tensor([0.25, 0.5, 0.75])[:, None, None]
    masks = torch.zeros(1, 12, 10)
    masks[0, 2:5, 1:7] = 1.0  # 3 rows by 6 columns
    colour = torch.tensor([-0.5, 0.0, 0.5])[:, None, None].expand(3, 6, 6)  # CROP_CLIP's normalisation: 2x - 1
    tight, _ = masked_crops(clip, image, masks, views=("box",), geometry=("tight", 0.5))
    torch.testing.assert_close(tight[0], colour)
    square, _ = masked_crops(clip, image, masks, views=("box",))
    assert (square[0] - colour).abs().max() > 0.1


def bicubic_matrix(size_in: int, size_out: int, a: float = -0.75) -> torch.Tensor:
    """(out, in) weights of PyTorch's bicubic resize with half-pixel centres (UpSample.h: source index
    (i + 0.5) * in / out - 0.5, not clamped for cubic; Keys' kernel with A = -0.75; indices clamped to the
    edge), written out from aten/src/ATen/native/UpSample.h, the resize OVSeg's adapter calls."""

    def kernel(x: float) -> float:
        x = abs(x)
        if x <= 1:
            return ((a + 2) * x - (a + 3)) * x * x + 1
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a if x < 2 else 0.0

    weights = torch.zeros(size_out, size_in, dtype=torch.float64)
    for i in range(size_out):
        source = (i + 0.5) * size_in / size_out - 0.5
        first = int(np.floor(source))
        for tap in range(first - 1, first + 3):
            weights[i, min(max(tap, 0), size_in - 1)] += kernel(source - tap)
    return weights


def test_tight_crops_are_bicubic_with_half_pixel_centres() -> None:
    normalised = torch.rand(1, 3, 9, 11, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    binary = torch.zeros(1, 1, 9, 11, dtype=torch.bool)
    binary[0, 0, 2:5, 3:8] = True  # a 3 x 5 box
    crops = tight_box_crops(normalised, binary, 7)
    rows, cols = bicubic_matrix(3, 7), bicubic_matrix(5, 7)
    expected = rows @ normalised[0, :, 2:5, 3:8] @ cols.T  # (3, 7, 7)
    torch.testing.assert_close(crops["box"][0], expected)
    torch.testing.assert_close(crops["masked"][0], expected)  # the whole box lies inside the mask
