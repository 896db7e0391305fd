"""Training augmentation of real (image, label) pairs, as the references' dataset mappers do it.

:class:`SemSegTrainTransform` is Mask2Former's and OVSeg's ``MaskFormerSemanticDatasetMapper``: resize the short
side, crop (optionally under a category-area constraint), flip, photometric jitter (:func:`color_aug_ssd`),
pad. Every random draw comes from the ``numpy.random.Generator`` given to each call, so a sample is a
function of its seed.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from train.datasets import IGNORE_LABEL

SSD_BRIGHTNESS_DELTA = 32  # detectron2 projects/PointRend/point_rend/color_augmentation.py ColorAugSSDTransform
SSD_CONTRAST = (0.5, 1.5)
SSD_SATURATION = (0.5, 1.5)
SSD_HUE_DELTA = 18  # in OpenCV's 8-bit hue units (180 per turn)


def color_aug_ssd(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """SSD's photometric distortion as detectron2's ``ColorAugSSDTransform`` applies it (Mask2Former's and
    OVSeg's ``INPUT.COLOR_AUG_SSD``): brightness (each with probability 1/2: add U(-32, 32)), then either
    contrast, saturation, hue or saturation, hue, contrast (contrast: multiply by U(0.5, 1.5); saturation:
    multiply HSV's S by U(0.5, 1.5); hue: shift H by U{-18..18} of 180 steps per turn). Values are clipped to
    [0, 255] and cast to uint8 after each step, as detectron2's ``convert`` does. HSV comes from PIL (256
    hue steps per turn; the shift is scaled to it) instead of OpenCV, which is not a dependency here.
    (H, W, 3) uint8 RGB -> the same."""
    image = _brightness(image, rng)
    order = (_contrast, _saturation, _hue) if rng.integers(2) else (_saturation, _hue, _contrast)
    for step in order:
        image = step(image, rng)
    return image


def _convert(image: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    return np.clip(image.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def _brightness(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if not rng.integers(2):
        return image
    return _convert(image, beta=rng.uniform(-SSD_BRIGHTNESS_DELTA, SSD_BRIGHTNESS_DELTA))


def _contrast(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if not rng.integers(2):
        return image
    return _convert(image, alpha=rng.uniform(*SSD_CONTRAST))


def _saturation(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if not rng.integers(2):
        return image
    hsv = np.array(Image.fromarray(image).convert("HSV"))
    hsv[..., 1] = _convert(hsv[..., 1], alpha=rng.uniform(*SSD_SATURATION))
    return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))


def _hue(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if not rng.integers(2):
        return image
    hsv = np.array(Image.fromarray(image).convert("HSV"))
    shift = int(rng.integers(-SSD_HUE_DELTA, SSD_HUE_DELTA + 1)) * 256 / 180
    hsv[..., 0] = np.round(hsv[..., 0].astype(np.float64) + shift).astype(np.int64) % 256
    return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))


def nearest_indices(source: int, target: int) -> np.ndarray:
    """PIL's NEAREST sampling grid: target pixel i reads source pixel floor((i + 0.5) * source / target)."""
    return np.minimum(((np.arange(target) + 0.5) * (source / target)).astype(np.int64), source - 1)


class SemSegTrainTransform:
    """Mask2Former's semantic-segmentation training augmentation on numpy (image, label) pairs.

    Mask2Former (``MaskFormerSemanticDatasetMapper`` with configs/ade20k/semantic-segmentation): resize
    the short side to one of 0.5x..2.0x the crop size (``[int(x * 0.1 * 512) for x in range(5, 21)]``
    for a 512 crop) capping the long side at 4x (``MAX_SIZE_TRAIN: 2048``), take a random
    ``crop_size`` crop under ``RandomCrop_CategoryAreaConstraint`` (``SINGLE_CATEGORY_MAX_AREA``: 1.0 =
    no constraint), flip horizontally with probability 0.5, and pad a crop that is smaller than
    ``crop_size`` with 128 (image) and the ignore label (label) at the bottom/right. With ``min_sizes``
    the short side is one of them and the long side at most ``max_size`` (the recipes' INPUT.MIN_SIZE_TRAIN
    and MAX_SIZE_TRAIN); without, the short side scale is drawn uniformly from ``scale_range``. With
    ``color_aug_ssd`` the crop gets :func:`color_aug_ssd` before the flip, in the mapper's order (resize,
    crop, ColorAugSSD, flip; INPUT.COLOR_AUG_SSD). Image resizing is bilinear (PIL, as detectron2's
    ``ResizeTransform``), label resizing nearest.

    All randomness comes from the ``numpy.random.Generator`` passed to each call, so a data loader that
    seeds one generator per (epoch, sample) reproduces its crops exactly.
    """

    def __init__(
        self,
        crop_size: int,
        *,
        scale_range: tuple[float, float] = (0.5, 2.0),
        max_size_factor: float = 4.0,
        single_category_max_area: float = 1.0,
        flip_prob: float = 0.5,
        ignore_label: int = IGNORE_LABEL,
        pad_value: int = 128,
        min_sizes: tuple[int, ...] = (),
        max_size: int = 0,
        color_aug_ssd: bool = False,
    ) -> None:
        if crop_size < 1:
            raise ValueError(f"crop_size must be a positive number of pixels, got {crop_size}")
        low, high = scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {scale_range}")
        if not 0 < single_category_max_area <= 1.0:
            raise ValueError(f"single_category_max_area must be in (0, 1], got {single_category_max_area}")
        self.crop_size = int(crop_size)
        self.scale_range = (float(low), float(high))
        self.max_size_factor = float(max_size_factor)
        self.single_category_max_area = float(single_category_max_area)
        self.flip_prob = float(flip_prob)
        self.ignore_label = int(ignore_label)
        self.pad_value = int(pad_value)
        if any(size < 1 for size in min_sizes) or max_size < 0:
            raise ValueError(f"min_sizes must be positive sides and max_size >= 0, got {min_sizes}, {max_size}")
        self.min_sizes = tuple(int(size) for size in min_sizes)
        self.max_size = int(max_size)
        self.color_aug_ssd = bool(color_aug_ssd)

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 and (H, W) int labels -> (crop, crop, 3) uint8 and (crop, crop) int64."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
        if label.shape != image.shape[:2]:
            raise ValueError(f"label shape {label.shape} does not match image {image.shape[:2]}")
        image, label = self.resize(image, np.asarray(label, dtype=np.int64), rng)
        image, label = self.crop(image, label, rng)
        if self.color_aug_ssd:
            image = color_aug_ssd(np.ascontiguousarray(image), rng)
        if rng.random() < self.flip_prob:
            image, label = image[:, ::-1], label[:, ::-1]
        return self.pad(np.ascontiguousarray(image), np.ascontiguousarray(label))

    def resize(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        height, width = label.shape
        if self.min_sizes:  # detectron2's ResizeShortestEdge(min_sizes, max_size, "choice")
            short_side = float(self.min_sizes[int(rng.integers(len(self.min_sizes)))])
        else:
            short_side = rng.uniform(*self.scale_range) * self.crop_size
        scale = short_side / min(height, width)
        max_size = self.max_size or self.max_size_factor * self.crop_size
        if max(height, width) * scale > max_size:
            scale = max_size / max(height, width)
        new_h, new_w = max(1, int(round(height * scale))), max(1, int(round(width * scale)))
        if (new_h, new_w) == (height, width):
            return image, label
        resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
        rows, cols = nearest_indices(height, new_h), nearest_indices(width, new_w)
        return resized, label[rows[:, None], cols[None, :]]

    def crop(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        height, width = label.shape
        crop_h, crop_w = min(self.crop_size, height), min(self.crop_size, width)

        def draw() -> tuple[int, int]:
            return int(rng.integers(0, height - crop_h + 1)), int(rng.integers(0, width - crop_w + 1))

        top, left = draw()
        if self.single_category_max_area < 1.0:
            # detectron2's RandomCrop_CategoryAreaConstraint: up to 10 tries for a crop where no single
            # (non-ignored) class covers more than the allowed share; the last try is kept otherwise.
            for _ in range(10):
                window = label[top : top + crop_h, left : left + crop_w]
                classes, counts = np.unique(window, return_counts=True)
                counts = counts[classes != self.ignore_label]
                if len(counts) > 1 and counts.max() < counts.sum() * self.single_category_max_area:
                    break
                top, left = draw()
        return image[top : top + crop_h, left : left + crop_w], label[top : top + crop_h, left : left + crop_w]

    def pad(self, image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        height, width = label.shape
        if (height, width) == (self.crop_size, self.crop_size):
            return image, label
        padded_image = np.full((self.crop_size, self.crop_size, 3), self.pad_value, dtype=np.uint8)
        padded_label = np.full((self.crop_size, self.crop_size), self.ignore_label, dtype=np.int64)
        padded_image[:height, :width] = image
        padded_label[:height, :width] = label
        return padded_image, padded_label


class LargeScaleJitter(SemSegTrainTransform):
    """Large-scale jitter, Mask2Former's and FC-CLIP's COCO augmentation (``coco_panoptic_new_baseline_dataset_mapper``
    ``build_transform_gen``): flip horizontally with probability 0.5, resize by detectron2's ``ResizeScale``
    (a scale drawn uniformly from ``scale_range`` times ``crop_size``, the image fitted inside that square,
    aspect kept), take detectron2's ``FixedSizeCrop`` (a random ``crop_size`` window, the offset a uniform
    fraction of the slack) and pad the rest with 128 and the ignore label. INPUT.IMAGE_SIZE 1024,
    MIN_SCALE 0.1, MAX_SCALE 2.0 in FC-CLIP's configs."""

    def __init__(self, crop_size: int, *, scale_range: tuple[float, float] = (0.1, 2.0), **kwargs) -> None:
        super().__init__(crop_size, scale_range=scale_range, **kwargs)

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or label.shape != image.shape[:2]:
            raise ValueError(f"image must be (H, W, 3) uint8 with an (H, W) label, got {image.shape} and {label.shape}")
        label = np.asarray(label, dtype=np.int64)
        if rng.random() < self.flip_prob:
            image, label = image[:, ::-1], label[:, ::-1]
        image, label = self.resize(np.ascontiguousarray(image), np.ascontiguousarray(label), rng)
        image, label = self.crop(image, label, rng)
        return self.pad(np.ascontiguousarray(image), np.ascontiguousarray(label))

    def resize(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        height, width = label.shape
        target = rng.uniform(*self.scale_range) * self.crop_size
        scale = min(target / height, target / width)
        new_h, new_w = max(1, int(round(height * scale))), max(1, int(round(width * scale)))
        resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
        rows, cols = nearest_indices(height, new_h), nearest_indices(width, new_w)
        return resized, label[rows[:, None], cols[None, :]]

    def crop(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        height, width = label.shape
        slack_h, slack_w = max(height - self.crop_size, 0), max(width - self.crop_size, 0)
        top, left = int(round(slack_h * rng.uniform())), int(round(slack_w * rng.uniform()))
        bottom, right = top + min(self.crop_size, height), left + min(self.crop_size, width)
        return image[top:bottom, left:right], label[top:bottom, left:right]
