"""Real-dataset loaders on tiny fixture datasets in the detectron2/OVSeg layouts, and the train transform."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from train import class_names
from train.augment import SemSegTrainTransform
from train.datasets import (
    IGNORE_LABEL,
    REAL_DATASETS,
    build_dataset,
    coco_seen_mask,
)


def write_sample(
    root: Path, dataset: str, split: str, stem: str, label: np.ndarray, image_hw: tuple[int, int] | None = None
) -> None:
    """Write ``<stem>.jpg`` and its label into ``dataset``'s prepared layout under ``root``."""
    spec = REAL_DATASETS[dataset]
    image_dir, label_dir = (root / spec.base / sub for sub in spec.splits[split])
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    height, width = image_hw or label.shape
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(image_dir / f"{stem}.jpg")
    Image.fromarray(label).save(label_dir / f"{stem}.{spec.label_ext}")


def test_class_lists_match_their_benchmarks() -> None:
    sizes = {"coco171": 171, "coco133": 133, "ade150": 150, "ade847": 847, "pc59": 59, "pc459": 459, "voc20": 20}
    for name, size in sizes.items():
        names = REAL_DATASETS[name].class_names
        assert len(names) == size and len(set(names)) == size, name
    assert class_names.ADE20K_847_NAMES[846] == "adding machine, totalizer, totaliser"
    assert class_names.ADE20K_150_NAMES[149] == "flag"
    assert class_names.COCO_STUFF_171_NAMES[80] == "banner"  # first stuff class after the 80 things
    # panoptic id 92 (banner) is the first stuff class, contiguous id 80; id 200 (rug) the last, 132
    assert class_names.COCO_PANOPTIC_133_NAMES[80] == "banner,banners"
    assert class_names.COCO_PANOPTIC_133_NAMES[132] == "rug" and class_names.COCO_PANOPTIC_133_NAMES[0].startswith(
        "person,"
    )
    assert set(class_names.PASCAL_CONTEXT_59_NAMES) <= set(class_names.PASCAL_CONTEXT_459_NAMES)
    assert list(class_names.PASCAL_CONTEXT_459_NAMES) == sorted(class_names.PASCAL_CONTEXT_459_NAMES)


@pytest.mark.parametrize(
    "dataset, split, raw_ignore, dtype",
    [
        ("coco171", "train", 255, np.uint8),
        ("coco133", "train", 255, np.uint8),
        ("ade150", "val", 255, np.uint8),
        ("ade847", "val", 65535, np.uint16),
        ("pc59", "val", 255, np.uint8),
        ("pc459", "val", 65535, np.uint16),
        ("voc20", "val", 255, np.uint8),
    ],
)
def test_loads_each_layout_with_ignore_mapped_to_minus_one(
    tmp_path: Path, dataset: str, split: str, raw_ignore: int, dtype: type
) -> None:
    top = len(REAL_DATASETS[dataset].class_names) - 1
    label_b = np.array([[0, top, raw_ignore], [1, 1, 0]], dtype=dtype)
    write_sample(tmp_path, dataset, split, "b", label_b)
    write_sample(tmp_path, dataset, split, "a", np.zeros((3, 5), dtype=dtype))
    loaded = build_dataset(dataset, tmp_path, split)
    assert len(loaded) == 2 and loaded.ignore_label == IGNORE_LABEL == -1
    image, label = loaded[1]  # sorted by file name: "a" then "b"
    assert image.shape == (2, 3, 3) and image.dtype == np.uint8
    assert label.dtype == np.int64
    np.testing.assert_array_equal(label, [[0, top, -1], [1, 1, 0]])
    assert loaded[0][1].shape == (3, 5)


def test_pascal_context_samples_come_from_the_label_folder(tmp_path: Path) -> None:
    write_sample(tmp_path, "pc59", "val", "2008_000002", np.zeros((2, 2), dtype=np.uint8))
    extra = tmp_path / "VOCdevkit/VOC2010/JPEGImages/2008_000003.jpg"  # an image without a label
    Image.new("RGB", (2, 2)).save(extra)
    loaded = build_dataset("pc59", tmp_path)
    assert [image.name for image, _ in loaded.samples] == ["2008_000002.jpg"]


def test_missing_root_and_folders_name_the_expected_layout(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_dataset("ade150", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"ADEChallengeData2016/annotations_detectron2/validation/\*\.png"):
        build_dataset("ade150", tmp_path)
    write_sample(tmp_path, "voc20", "val", "x", np.zeros((2, 2), dtype=np.uint8))
    (tmp_path / "VOCdevkit/VOC2012/JPEGImages/x.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="have no image.*x.jpg"):
        build_dataset("voc20", tmp_path)
    with pytest.raises(ValueError, match="unknown dataset"):
        build_dataset("ade151", tmp_path)
    with pytest.raises(ValueError, match="no split 'train'"):
        build_dataset("pc459", tmp_path, "train")


def test_malformed_labels_name_the_file(tmp_path: Path) -> None:
    write_sample(tmp_path, "ade150", "val", "size", np.zeros((2, 3), dtype=np.uint8), image_hw=(3, 3))
    write_sample(tmp_path, "ade150", "val", "ids", np.array([[0, 150], [7, 255]], dtype=np.uint8))
    write_sample(tmp_path, "ade150", "val", "unreadable", np.zeros((2, 2), dtype=np.uint8))
    (tmp_path / "ADEChallengeData2016/annotations_detectron2/validation/unreadable.png").write_bytes(b"not a png")
    loaded = build_dataset("ade150", tmp_path)
    by_stem = {label.stem: i for i, (_, label) in enumerate(loaded.samples)}
    with pytest.raises(ValueError, match=r"size.png is 2x3 but image .*size.jpg is 3x3"):
        loaded[by_stem["size"]]
    with pytest.raises(ValueError, match=r"ids.png holds ids \[150\] outside 0..149"):
        loaded[by_stem["ids"]]
    with pytest.raises(ValueError, match="cannot read label .*unreadable.png"):
        loaded[by_stem["unreadable"]]


def test_wrong_label_dtype_is_rejected(tmp_path: Path) -> None:
    spec = REAL_DATASETS["ade847"]
    write_sample(tmp_path, "ade847", "val", "eight_bit", np.zeros((2, 2), dtype=np.uint16))
    label_path = tmp_path / spec.base / spec.splits["val"][1] / "eight_bit.tif"
    Image.fromarray(np.zeros((2, 2), dtype=np.uint8)).save(label_path)  # 8-bit TIFF: cannot hold 65535
    with pytest.raises(ValueError, match="expected a single-channel uint16"):
        build_dataset("ade847", tmp_path)[0]


def test_seen_classes_match_coco_stuff_names_and_synonyms() -> None:
    names = ["sky", "rock, stone", "windowpane, window", "Person", "aeroplane", "painting, picture", "desk"]
    np.testing.assert_array_equal(coco_seen_mask(names), [True, True, True, True, True, False, True])
    assert coco_seen_mask(class_names.COCO_STUFF_171_NAMES).all()


def _aligned_pair(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Label ids 0..9 in 2x2 blocks and an image whose red channel is 20 * id (alignment checkable)."""
    label = (np.arange(height)[:, None] // 2 * 3 + np.arange(width)[None, :] // 2) % 10
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[..., 0] = label * 20
    return image, label.astype(np.int64)


def test_transform_crops_and_keeps_image_and_label_aligned() -> None:
    image, label = _aligned_pair(16, 24)
    transform = SemSegTrainTransform(16, scale_range=(1.0, 1.0))  # short side already 16: no resize
    crops = set()
    for seed in range(8):
        out_image, out_label = transform(image, label, np.random.default_rng(seed))
        assert out_image.shape == (16, 16, 3) and out_label.shape == (16, 16) and out_label.dtype == np.int64
        np.testing.assert_array_equal(out_image[..., 0], out_label * 20)
        crops.add(out_label.tobytes())
    assert len(crops) > 1  # crops and flips vary with the seed
    first = transform(image, label, np.random.default_rng(3))
    again = transform(image, label, np.random.default_rng(3))
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])


def test_transform_flip() -> None:
    image, label = _aligned_pair(16, 16)
    flipped = SemSegTrainTransform(16, scale_range=(1.0, 1.0), flip_prob=1.0)(image, label, np.random.default_rng(0))
    kept = SemSegTrainTransform(16, scale_range=(1.0, 1.0), flip_prob=0.0)(image, label, np.random.default_rng(0))
    np.testing.assert_array_equal(flipped[1], label[:, ::-1])
    np.testing.assert_array_equal(flipped[0], image[:, ::-1])
    np.testing.assert_array_equal(kept[1], label)


def test_transform_resizes_labels_nearest_and_pads_with_ignore() -> None:
    image, label = _aligned_pair(8, 12)
    out_image, out_label = SemSegTrainTransform(32, scale_range=(0.5, 0.5), flip_prob=0.0)(
        image, label, np.random.default_rng(0)
    )
    # short side 8 -> 16 (x2): the 16x24 result is smaller than the 32 crop, so it is padded.
    assert out_image.shape == (32, 32, 3)
    assert set(np.unique(out_label[:16, :24])) <= set(np.unique(label))
    assert (out_label[16:] == IGNORE_LABEL).all() and (out_label[:, 24:] == IGNORE_LABEL).all()
    assert (out_image[16:] == 128).all()
    np.testing.assert_array_equal(out_label[:16:2, :24:2], label)  # x2 nearest: every block doubles
    big_image, big_label = SemSegTrainTransform(8, scale_range=(2.0, 2.0))(image, label, np.random.default_rng(1))
    assert big_image.shape == (8, 8, 3) and set(np.unique(big_label)) <= set(np.unique(label))


def test_transform_category_area_constraint_avoids_single_class_crops() -> None:
    label = np.zeros((8, 64), dtype=np.int64)
    label[:, 56:] = 1  # class 1 only in the last 8 columns
    image = np.zeros((8, 64, 3), dtype=np.uint8)
    constrained = SemSegTrainTransform(
        8, scale_range=(1.0, 1.0), max_size_factor=8.0, single_category_max_area=0.99, flip_prob=0.0
    )
    mixed = sum(len(np.unique(constrained(image, label, np.random.default_rng(s))[1])) > 1 for s in range(20))
    plain = SemSegTrainTransform(8, scale_range=(1.0, 1.0), max_size_factor=8.0, flip_prob=0.0)
    mixed_plain = sum(len(np.unique(plain(image, label, np.random.default_rng(s))[1])) > 1 for s in range(20))
    assert mixed_plain <= 3 and mixed >= 15  # a random 8-wide crop of 64 columns rarely reaches class 1


def test_transform_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="does not match"):
        SemSegTrainTransform(8)(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5), np.int64), np.random.default_rng(0))
    with pytest.raises(ValueError, match="crop_size"):
        SemSegTrainTransform(0)


def test_synthetic_benchmark_adapter_maps_255_to_ignore() -> None:
    from train.datasets import SyntheticBenchmarkDataset
    from train.world import benchmark_sample

    dataset = SyntheticBenchmarkDataset("world-voc", size=64)
    assert len(dataset) == dataset.benchmark.num_images and dataset.num_classes == len(dataset.class_names)
    assert dataset.seen.dtype == bool and dataset.seen.shape == (dataset.num_classes,)
    image, label = dataset[3]
    raw_image, raw_label = benchmark_sample(dataset.benchmark, 3, size=64)
    np.testing.assert_array_equal(image, raw_image)
    assert label.dtype == np.int64 and (raw_label == 255).any()
    np.testing.assert_array_equal(label, np.where(raw_label == 255, -1, raw_label.astype(np.int64)))
    with pytest.raises(ValueError, match="unknown world benchmark .world-nope.; accepted: world-voc, .*world-voc-dev"):
        SyntheticBenchmarkDataset("world-nope")
    with pytest.raises(IndexError):
        dataset[len(dataset)]


# ------------------------------------------------------------------------------ seen / unseen by meaning
def _unseen(dataset: str) -> set[str]:
    names = REAL_DATASETS[dataset].class_names
    return {name for name, seen in zip(names, coco_seen_mask(names)) if not seen}


def test_classes_that_coco_spells_differently_count_as_seen() -> None:
    assert _unseen("voc20") == set()  # every VOC class is a COCO class
    assert _unseen("pc59") == {"bag", "computer", "sign", "plate", "bedclothes"}  # shelves, sidewalk now seen
    ade150 = _unseen("ade150")
    assert "sofa" not in ade150 and "stairway, staircase" not in ade150 and "plane" not in ade150
    assert {"painting, picture", "van", "ship", "monitor"} <= ade150  # related, not the same: unseen
    assert "sofa, couch, lounge" not in _unseen("ade847")


def test_every_synonym_maps_to_coco_and_is_used_by_some_benchmark() -> None:
    from train.datasets import _name_words

    vocabulary = set(_name_words(class_names.COCO_STUFF_171_NAMES))  # the names and their suffix-free forms
    words = {
        word.strip().lower() for spec in REAL_DATASETS.values() for name in spec.class_names for word in name.split(",")
    }
    for word, coco in class_names.COCO_SYNONYMS.items():
        assert coco in vocabulary, (word, coco)
        assert word in words, f"{word!r} is in no benchmark's class list"
        assert word not in vocabulary, f"{word!r} is already a COCO name"


def test_a_coco_trained_segmenter_weighs_exactly_the_benchmarks_seen_classes_as_seen() -> None:
    """Eq. 3's second weight and the evaluator agree: a COCO-Stuff model's training_names mark as training
    names exactly the classes coco_seen_mask counts as seen, on every real benchmark."""
    from pmp.stage2 import prompt_clip_weights
    from train.datasets import coco_seen_mask, training_vocabulary
    from train.world.vocabulary import SEEN_NAMES

    names = training_vocabulary(class_names.COCO_STUFF_171_NAMES)
    assert set(class_names.COCO_STUFF_171_NAMES) <= set(names) and len(set(names)) == len(names)
    assert {"sky", "window", "aeroplane", "sofa"} <= set(names)  # suffix-free forms and synonyms
    for spec in REAL_DATASETS.values():
        weights = prompt_clip_weights(list(spec.class_names), 0.4, 0.8, names)
        assert ((weights == 0.4).numpy() == coco_seen_mask(spec.class_names)).all(), spec.name
    assert training_vocabulary(SEEN_NAMES) == SEEN_NAMES  # the world's names have no other forms


def test_the_training_docs_list_the_seen_counts_of_every_benchmark() -> None:
    from train.datasets import seen_counts_table

    training = (Path(__file__).resolve().parent.parent / "docs" / "training.md").read_text()
    assert seen_counts_table() in training


# ------------------------------------------------------------------------------ label files and layouts
def test_big_endian_16_bit_labels_are_read_like_little_endian_ones(tmp_path: Path) -> None:
    label = np.array([[0, 846, 65535], [1, 2, 3]], dtype=">u2")
    write_sample(tmp_path, "ade847", "val", "big", label)
    assert (
        Image.open(next((tmp_path / "ADE20K_2021_17_01/annotations_detectron2/validation").glob("*.tif"))).mode
        == "I;16B"
    )
    np.testing.assert_array_equal(build_dataset("ade847", tmp_path)[0][1], [[0, 846, -1], [1, 2, 3]])


def test_sans_pascal_context_layout_is_refused_not_misread(tmp_path: Path) -> None:
    (tmp_path / "pcontext" / "val" / "label").mkdir(parents=True)
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "pcontext" / "val" / "label" / "2008_000002.png")
    for dataset in ("pc59", "pc459"):
        with pytest.raises(FileNotFoundError, match="SAN's Pascal Context layout, which is not supported"):
            build_dataset(dataset, tmp_path)


# ------------------------------------------------------------------------------ ADE-847 with the bundled models
LONG_ADE847_NAMES = ("bus, autobus, coach", "ashcan, trash can", "baby buggy")


def test_ade847_evaluates_with_the_bundled_models_although_some_names_exceed_the_context(
    tmp_path: Path, capsys
) -> None:
    import json

    from pmp.segmenter import Segmenter
    from train.evaluate import main

    names = REAL_DATASETS["ade847"].class_names
    long_ids = [next(i for i, name in enumerate(names) if name.startswith(prefix)) for prefix in LONG_ADE847_NAMES]
    clip = Segmenter.from_pretrained("baseline").clip
    for index in long_ids:  # the names really are too long whole: they are encoded by their synonyms
        assert not clip._fits(names[index]) and len(clip.phrases(names[index])) > 1
    label = np.full((48, 64), 65535, np.uint16)
    for column, index in enumerate(long_ids):
        label[:, column * 16 : (column + 1) * 16] = index
    write_sample(tmp_path, "ade847", "val", "long_names", label)
    write_sample(tmp_path, "ade847", "val", "other", np.zeros((40, 40), np.uint16))
    for checkpoint in ("baseline", "pmp"):
        assert main(["--checkpoint", checkpoint, "--benchmark", "ade847", "--data-root", str(tmp_path), "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["num_images"] == 2 and result["num_classes"] == 847
        assert all(result["per_class"][names[i]] is not None for i in long_ids)  # scored, not skipped
