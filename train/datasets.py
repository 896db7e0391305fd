"""Semantic-segmentation datasets in the folder layouts that detectron2 / Mask2Former / OVSeg prepare.

Ignore-label convention (one for the whole project)
---------------------------------------------------
Every dataset here yields ``label`` as an ``int64`` (H, W) array whose ignored pixels are
:data:`IGNORE_LABEL` ``= -1``. The prepared files use 255 (8-bit PNG) or 65535 (16-bit TIFF: ADE-847 and
Pascal Context-459, which have more than 255 classes, so 255 is a real class id there); both become -1
when a label is loaded. -1 can never be a class id, whatever the number of classes, so the training
loss, the transforms and :mod:`pmp.metrics` all take ``ignore_label=-1`` and never need to know which
file format a label came from. ``dataset.ignore_label`` (always -1) and ``dataset.raw_ignore_label``
(255 / 65535, what the files hold) say it explicitly.

Layouts (``root`` is detectron2's ``$DETECTRON2_DATASETS``)
-----------------------------------------------------------
=========  ==========================================================================================
name       images / labels (label ids, ignore value in the file)
=========  ==========================================================================================
coco171    ``coco/{train2017,val2017}/*.jpg`` / ``coco/stuffthingmaps_detectron2/{train2017,val2017}/*.png``
           (0..170, 255). Made by OVSeg ``datasets/prepare_coco_stuff_sem_seg.py``; registered in
           OVSeg ``register_coco_stuff.py`` (``coco_2017_train_stuff_sem_seg``).
coco133    ``coco/{train2017,val2017}/*.jpg`` / ``coco/panoptic_semseg_{train2017,val2017}/*.png`` (0..132, 255):
           COCO panoptic's categories as semantic labels (FC-CLIP's training set without its instances).
           Made by Mask2Former ``datasets/prepare_coco_semantic_annos_from_panoptic_annos.py``.
ade150     ``ADEChallengeData2016/images/{training,validation}/*.jpg`` /
           ``ADEChallengeData2016/annotations_detectron2/{training,validation}/*.png`` (0..149, 255).
           Made by ``datasets/prepare_ade20k_sem_seg.py`` (detectron2/Mask2Former; OVSeg's copy makes
           only ``validation``); registered in detectron2 ``data/datasets/builtin.py``
           (``register_all_ade20k``).
ade847     ``ADE20K_2021_17_01/images_detectron2/validation/*.jpg`` /
           ``ADE20K_2021_17_01/annotations_detectron2/validation/*.tif`` (16-bit, 0..846, 65535).
           Made by OVSeg ``datasets/prepare_ade20k_full_sem_seg.py``; registered in OVSeg
           ``register_ade20k_full.py`` (``ade20k_full_sem_seg_val``).
pc59       ``VOCdevkit/VOC2010/JPEGImages/*.jpg`` / ``VOCdevkit/VOC2010/annotations_detectron2/pc59_val/*.png``
           (0..58, 255). Made by OVSeg ``datasets/prepare_pascal_context.py``; registered in OVSeg
           ``register_pascal_context.py`` (``pascal_context_59_sem_seg_val``).
pc459      ``VOCdevkit/VOC2010/JPEGImages/*.jpg`` / ``VOCdevkit/VOC2010/annotations_detectron2/pc459_val/*.tif``
           (16-bit, 0..458, 65535), same script and file (``pascal_context_459_sem_seg_val``).
voc20      ``VOCdevkit/VOC2012/JPEGImages/*.jpg`` / ``VOCdevkit/VOC2012/annotations_detectron2/val/*.png``
           (0..19, 255; background is ignored). Made by OVSeg ``datasets/prepare_voc_sem_seg.py``;
           registered in OVSeg ``register_voc_seg.py`` (``pascalvoc20_sem_seg_val``).
=========  ==========================================================================================

As in detectron2's ``load_sem_seg``, the label folder decides which samples exist (JPEGImages of
VOC2010 holds ~10k images but only the 5k validation images have a Pascal Context label); each label
``<stem>.<ext>`` needs the image ``<stem>.jpg``.

The class names are in :mod:`train.class_names`. :class:`SyntheticBenchmarkDataset` wraps the synthetic
world benchmarks (``train.world`` / ``train.world.vocabulary``) behind the same interface, and
:class:`train.augment.SemSegTrainTransform` is Mask2Former's semantic-segmentation training augmentation.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from pmp.config import name_synonyms
from train.class_names import (
    ADE20K_150_NAMES,
    ADE20K_847_NAMES,
    COCO_PANOPTIC_133_NAMES,
    COCO_STUFF_171_NAMES,
    COCO_SYNONYMS,
    PASCAL_CONTEXT_59_NAMES,
    PASCAL_CONTEXT_459_NAMES,
    PASCAL_VOC_20_NAMES,
)
from train.world import benchmark_prompts, benchmark_sample
from train.world.vocabulary import get_benchmark

IGNORE_LABEL = -1  # the ignore value of every label array this module returns (see the module docstring)

# The dtype each label file format must load as: 8-bit PNGs hold ids < 255, 16-bit TIFFs ids < 65535.
_LABEL_DTYPES: dict[str, np.dtype] = {"png": np.dtype(np.uint8), "tif": np.dtype(np.uint16)}


@dataclass(frozen=True)
class RealDatasetSpec:
    """Where one prepared benchmark lives under the datasets root, and how its labels are stored."""

    name: str
    title: str
    base: str  # folder under the datasets root
    splits: dict[str, tuple[str, str]]  # split -> (image folder, label folder), relative to ``base``
    label_ext: str  # "png" (8-bit) or "tif" (16-bit)
    raw_ignore_label: int  # the ignore id stored in the files: 255 or 65535
    class_names: tuple[str, ...]
    prepare_script: str  # the script that makes the label folder, for error messages


REAL_DATASETS: dict[str, RealDatasetSpec] = {
    spec.name: spec
    for spec in (
        RealDatasetSpec(
            "coco171",
            "COCO-Stuff-171",
            "coco",
            {
                "train": ("train2017", "stuffthingmaps_detectron2/train2017"),
                "val": ("val2017", "stuffthingmaps_detectron2/val2017"),
            },
            "png",
            255,
            COCO_STUFF_171_NAMES,
            "datasets/prepare_coco_stuff_sem_seg.py",
        ),
        RealDatasetSpec(
            "coco133",
            "COCO panoptic-133 (semantic)",
            "coco",
            {
                "train": ("train2017", "panoptic_semseg_train2017"),
                "val": ("val2017", "panoptic_semseg_val2017"),
            },
            "png",
            255,
            COCO_PANOPTIC_133_NAMES,
            "Mask2Former datasets/prepare_coco_semantic_annos_from_panoptic_annos.py",
        ),
        RealDatasetSpec(
            "ade150",
            "ADE20K-150",
            "ADEChallengeData2016",
            {
                "train": ("images/training", "annotations_detectron2/training"),
                "val": ("images/validation", "annotations_detectron2/validation"),
            },
            "png",
            255,
            ADE20K_150_NAMES,
            "datasets/prepare_ade20k_sem_seg.py",
        ),
        RealDatasetSpec(
            "ade847",
            "ADE20K-847",
            "ADE20K_2021_17_01",
            {
                "train": ("images_detectron2/training", "annotations_detectron2/training"),
                "val": ("images_detectron2/validation", "annotations_detectron2/validation"),
            },
            "tif",
            65535,
            ADE20K_847_NAMES,
            "datasets/prepare_ade20k_full_sem_seg.py",
        ),
        RealDatasetSpec(
            "pc59",
            "Pascal Context-59",
            "VOCdevkit/VOC2010",
            {"val": ("JPEGImages", "annotations_detectron2/pc59_val")},
            "png",
            255,
            PASCAL_CONTEXT_59_NAMES,
            "datasets/prepare_pascal_context.py",
        ),
        RealDatasetSpec(
            "pc459",
            "Pascal Context-459",
            "VOCdevkit/VOC2010",
            {"val": ("JPEGImages", "annotations_detectron2/pc459_val")},
            "tif",
            65535,
            PASCAL_CONTEXT_459_NAMES,
            "datasets/prepare_pascal_context.py",
        ),
        RealDatasetSpec(
            "voc20",
            "Pascal VOC-20",
            "VOCdevkit/VOC2012",
            {"val": ("JPEGImages", "annotations_detectron2/val")},
            "png",
            255,
            PASCAL_VOC_20_NAMES,
            "datasets/prepare_voc_sem_seg.py",
        ),
    )
}


def _name_words(class_names: Sequence[str]) -> dict[str, None]:
    """Each name's :func:`pmp.config.name_synonyms`, each also without a "-other" / "-stuff" / "-merged"
    suffix ("sky-other" -> "sky"), in order (a dict as an ordered set)."""
    words: dict[str, None] = {}
    for word in (word for name in class_names for word in name_synonyms(name)):
        words[word] = None
        for suffix in ("-other", "-stuff", "-merged"):
            if word.endswith(suffix):
                words[word[: -len(suffix)]] = None
    return words


def training_vocabulary(class_names: Sequence[str]) -> tuple[str, ...]:
    """Every word that names one of ``class_names`` (a training set's classes), in order: their
    :func:`_name_words`, then every :data:`train.class_names.COCO_SYNONYMS` word that maps onto one of
    them (Pascal's "aeroplane" for COCO's "airplane").

    What :func:`coco_seen_mask` calls seen, and what a trained segmenter's ``training_names`` hold, so that
    Eq. 3's second weight (``clip_weight_unseen``) and the evaluator agree on which prompts are seen.
    """
    words = _name_words(class_names)
    synonyms = [word for word, target in COCO_SYNONYMS.items() if target in words and word not in words]
    return (*words, *synonyms)


def coco_seen_mask(class_names: tuple[str, ...] | list[str]) -> np.ndarray:
    """(K,) bool: which classes of a real benchmark count as *seen* (in the COCO-Stuff-171 training set).

    A class is seen when any of its comma-separated synonyms (case-folded, stripped; the first one of
    ADE-847's lists included) is a COCO-Stuff-171 name, that name without its "-other"/"-stuff"/"-merged"
    suffix, or a word that :data:`train.class_names.COCO_SYNONYMS` maps to a COCO-Stuff name (Pascal's
    "aeroplane" is COCO's "airplane", ADE's "sofa" its "couch"). So ADE's "rock, stone", "sky" and
    "windowpane, window" (COCO "window-other") are seen, "painting, picture" is not. The per-benchmark
    counts are in the README (``python -m train.datasets --seen-counts`` prints them).
    """
    vocabulary = frozenset(training_vocabulary(COCO_STUFF_171_NAMES))
    return np.array([not vocabulary.isdisjoint(name_synonyms(name)) for name in class_names], dtype=bool)


def seen_counts() -> dict[str, tuple[int, int]]:
    """{benchmark: (seen, unseen)} class counts under :func:`coco_seen_mask`."""
    counts = {}
    for name, spec in REAL_DATASETS.items():
        mask = coco_seen_mask(spec.class_names)
        counts[name] = (int(mask.sum()), int((~mask).sum()))
    return counts


class SampleError(ValueError):
    """One sample's file cannot be used (unreadable, a decompression bomb, a label of the wrong kind, size
    or ids); the message names the file. Evaluation skips such samples or stops, as asked."""


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB; EXIF orientation applied like detectron2's ``read_image``."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        raise SampleError(f"cannot read image {path}: {error}") from error


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file after EXIF orientation, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)  # 5..8 rotate by 90 degrees
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from error
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


class SemSegDataset(Dataset):
    """One prepared split: ``dataset[i] -> (image uint8 (H, W, 3), label int64 (H, W), ignore = -1)``.

    Samples are the label files of ``label_dir`` in sorted order; each needs ``image_dir/<stem>.jpg``.
    Every label is checked when loaded (readable, 2-D, the expected dtype, the image's size, ids in
    ``[0, K)`` or the raw ignore value) so a badly prepared dataset fails on the first bad file with its
    path instead of training on garbage.
    """

    ignore_label: int = IGNORE_LABEL

    def __init__(
        self,
        image_dir: str | Path,
        label_dir: str | Path,
        class_names: tuple[str, ...] | list[str],
        *,
        label_ext: str = "png",
        raw_ignore_label: int = 255,
        image_ext: str = "jpg",
        name: str = "semseg",
        layout_hint: str = "",
    ) -> None:
        if label_ext not in _LABEL_DTYPES:
            raise ValueError(f"label_ext must be one of {sorted(_LABEL_DTYPES)}, got {label_ext!r}")
        self.name = name
        self.image_dir = Path(image_dir)
        self.label_dir = Path(label_dir)
        self.class_names = tuple(class_names)
        self.label_ext = label_ext
        self.raw_ignore_label = int(raw_ignore_label)
        self.image_ext = image_ext
        self.seen = coco_seen_mask(self.class_names)
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"{name}: class names must be unique")
        hint = f"\nexpected layout: {layout_hint}" if layout_hint else ""
        for folder, kind in ((self.image_dir, "image"), (self.label_dir, "label")):
            if not folder.is_dir():
                raise FileNotFoundError(f"{name}: {kind} folder {folder} does not exist{hint}")
        label_files = sorted(p for p in self.label_dir.iterdir() if p.suffix == f".{label_ext}")
        if not label_files:
            raise FileNotFoundError(f"{name}: no *.{label_ext} label files in {self.label_dir}{hint}")
        available = set(os.listdir(self.image_dir))
        missing = [p.stem for p in label_files if f"{p.stem}.{image_ext}" not in available]
        if missing:
            shown = ", ".join(f"{stem}.{image_ext}" for stem in missing[:5])
            raise FileNotFoundError(
                f"{name}: {len(missing)} label(s) in {self.label_dir} have no image in {self.image_dir} "
                f"(first: {shown}){hint}"
            )
        self.samples: list[tuple[Path, Path]] = [(self.image_dir / f"{p.stem}.{image_ext}", p) for p in label_files]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, label_path = self.samples[index]
        image = read_image(image_path)
        return image, self.load_label(index, expected_size=image.shape[:2])

    def image_prompts(self, index: int) -> list[str] | None:
        """None: every image of a real benchmark is asked for the benchmark's whole class list."""
        return None

    def load_label(self, index: int, expected_size: tuple[int, int] | None = None) -> np.ndarray:
        """The checked (H, W) int64 label of sample ``index`` with ignore mapped to -1."""
        image_path, path = self.samples[index]
        try:
            with Image.open(path) as file:
                raw = np.asarray(file)
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
            raise SampleError(f"{self.name}: cannot read label {path}: {error}") from error
        expected_dtype = _LABEL_DTYPES[self.label_ext]
        if raw.ndim == 2 and raw.dtype.newbyteorder("=") == expected_dtype.newbyteorder("="):
            raw = raw.astype(expected_dtype, copy=False)  # any byte order (big-endian TIFFs), as detectron2 reads them
        if raw.ndim != 2 or raw.dtype != expected_dtype:
            raise SampleError(
                f"{self.name}: label {path} is {raw.dtype} with shape {raw.shape}; expected a single-channel "
                f"{expected_dtype} map of class ids (8-bit PNG for png labels, 16-bit TIFF for tif labels)"
            )
        size = expected_size if expected_size is not None else image_size(image_path)
        if raw.shape != tuple(size):
            raise SampleError(
                f"{self.name}: label {path} is {raw.shape[0]}x{raw.shape[1]} but image {image_path} is "
                f"{size[0]}x{size[1]} (H x W); label maps must match their image pixel for pixel"
            )
        bad = (raw >= self.num_classes) & (raw != self.raw_ignore_label)
        if bad.any():
            values = np.unique(raw[bad])[:10].tolist()
            raise SampleError(
                f"{self.name}: label {path} holds ids {values} outside 0..{self.num_classes - 1} "
                f"(ignore = {self.raw_ignore_label})"
            )
        label = raw.astype(np.int64)
        label[raw == self.raw_ignore_label] = IGNORE_LABEL
        return label


def build_dataset(name: str, root: str | Path, split: str = "val") -> SemSegDataset:
    """The prepared ``split`` of benchmark ``name`` (a key of :data:`REAL_DATASETS`) under ``root``."""
    if name not in REAL_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(REAL_DATASETS)}")
    spec = REAL_DATASETS[name]
    if split not in spec.splits:
        raise ValueError(f"{name} has no split {split!r}; available: {', '.join(spec.splits)}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"datasets root {root} does not exist (it is detectron2's $DETECTRON2_DATASETS)")
    image_sub, label_sub = spec.splits[split]
    base = root / spec.base
    if name in ("pc59", "pc459") and not (base / label_sub).is_dir() and (root / "pcontext").is_dir():
        raise FileNotFoundError(
            f"{root}/pcontext is SAN's Pascal Context layout, which is not supported: SAN numbers the PC-59 "
            f"classes in its own (alphabetical) order, so its label ids would name the wrong classes here. "
            f"Prepare {base}/{label_sub} with OVSeg's datasets/prepare_pascal_context.py instead"
        )
    layout = (
        f"{base}/{image_sub}/*.jpg with labels {base}/{label_sub}/*.{spec.label_ext} "
        f"(ids 0..{len(spec.class_names) - 1}, ignore {spec.raw_ignore_label}), made by {spec.prepare_script}"
    )
    return SemSegDataset(
        base / image_sub,
        base / label_sub,
        spec.class_names,
        label_ext=spec.label_ext,
        raw_ignore_label=spec.raw_ignore_label,
        name=name,
        layout_hint=layout,
    )


class SyntheticBenchmarkDataset(Dataset):
    """A synthetic-world benchmark (``train.world.vocabulary.get_benchmark(name)``) with the interface of
    :class:`SemSegDataset`.

    Images are rendered on demand and deterministically by index, so any subset of indices (one rank's
    share in distributed evaluation) gives the same pixels as a full pass. The world marks unlabelled
    pixels 255; they come out as -1 like every other dataset here.
    """

    ignore_label: int = IGNORE_LABEL
    raw_ignore_label: int = 255

    def __init__(self, name: str, size: int = 128) -> None:

        self.benchmark = get_benchmark(name)  # a clear error lists the accepted names
        self.name = name
        self.size = int(size)
        self.class_names = tuple(self.benchmark.class_names)
        self.seen = np.asarray(self.benchmark.seen, dtype=bool)
        if self.seen.shape != (len(self.class_names),):
            raise ValueError(
                f"benchmark {name}: seen flags {self.seen.shape} do not match {len(self.class_names)} classes"
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return int(self.benchmark.num_images)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:

        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {self.name} ({len(self)} images)")
        image, raw = benchmark_sample(self.benchmark, index, size=self.size)
        label = np.asarray(raw).astype(np.int64)
        label[label == self.raw_ignore_label] = IGNORE_LABEL
        return np.asarray(image, dtype=np.uint8), label

    def image_prompts(self, index: int) -> list[str] | None:
        """world-mixed: the prompts of image ``index`` (its label indexes :attr:`class_names`, over all
        names); None for the fixed-vocabulary benchmarks, whose every image is asked for every class."""
        if self.benchmark.granularity != "mixed":
            return None

        return benchmark_prompts(self.benchmark, index, size=self.size)


def describe_layouts() -> str:
    """One line per real dataset: where its images and labels are expected (for --help texts)."""
    lines = []
    for spec in REAL_DATASETS.values():
        for split, (images, labels) in spec.splits.items():
            lines.append(f"{spec.name} [{split}]: {spec.base}/{images}/*.jpg + {spec.base}/{labels}/*.{spec.label_ext}")
    return "\n".join(lines)


__all__ = [
    "IGNORE_LABEL",
    "REAL_DATASETS",
    "RealDatasetSpec",
    "SemSegDataset",
    "SyntheticBenchmarkDataset",
    "build_dataset",
    "coco_seen_mask",
    "describe_layouts",
    "read_image",
]


def seen_counts_table() -> str:
    """The README's table of seen / unseen classes per real benchmark (Markdown)."""
    lines = ["| benchmark | classes | seen (in COCO-Stuff-171) | unseen |", "|---|---|---|---|"]
    for name, (seen, unseen) in seen_counts().items():
        lines.append(f"| {REAL_DATASETS[name].title} (`{name}`) | {seen + unseen} | {seen} | {unseen} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m train.datasets", description="facts about the real benchmarks")
    parser.add_argument("--seen-counts", action="store_true", help="print the seen / unseen class counts (Markdown)")
    if parser.parse_args().seen_counts:
        print(seen_counts_table(), end="")
    else:
        print(describe_layouts())
