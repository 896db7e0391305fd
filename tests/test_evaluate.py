"""The evaluation loop (train/evaluate.py) with a stub segmenter: fields, CLI, and 2-rank gloo == 1 process."""

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from train.evaluate import evaluate, format_table, load_benchmark, main, to_json

NAMES = ("sky", "grass", "zebra", "kite")


class StubSegmenter:
    """Deterministic in the image: class = red channel bucket, -1 where green is low; proposals = class masks."""

    def __init__(self) -> None:
        self.options: list[dict[str, Any]] = []

    def segment(self, image: np.ndarray, labels: list[str], **options: Any) -> SimpleNamespace:
        self.options.append(options)
        semantic = image[..., 0].astype(np.int64) * len(labels) // 256
        semantic[image[..., 1] < 40] = -1
        proposals = np.stack([(semantic == k) for k in range(len(labels))] + [image[..., 2] > 128]).astype(np.float32)
        return SimpleNamespace(semantic=semantic, proposals=proposals)


class TinyDataset:
    """Seven deterministic 12x10 images whose labels mostly agree with the stub's predictions."""

    name = "tiny"
    class_names = NAMES
    seen = np.array([True, True, False, False])
    ignore_label = -1

    def __len__(self) -> int:
        return 7

    def image_prompts(self, index: int) -> list[str] | None:
        return None

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(index)
        image = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
        label = image[..., 0].astype(np.int64) * len(NAMES) // 256
        noise = rng.random((12, 10))
        label[noise < 0.2] = (label[noise < 0.2] + 1) % len(NAMES)
        label[noise > 0.9] = -1
        return image, label


def test_evaluate_reports_the_documented_fields() -> None:
    stub = StubSegmenter()
    result = evaluate(stub, TinyDataset(), limit=5, clip_weight=0.65, stage2_mode="crop", show_progress=False)
    for key in (
        "benchmark",
        "miou",
        "miou_seen",
        "miou_unseen",
        "proposal_recall",
        "per_class",
        "pixel_accuracy",
        "num_images",
        "seconds",
    ):
        assert key in result
    assert result["benchmark"] == "tiny" and result["num_images"] == 5 and result["num_classes"] == 4
    assert set(result["per_class"]) == set(NAMES) and result["seen_classes"] == ["sky", "grass"]
    # A second count, written here: per class, intersection and union over labelled pixels of the five images.
    inter, union, correct, labelled = np.zeros(4), np.zeros(4), 0, 0
    for index in range(5):
        image, label = TinyDataset()[index]
        pred, valid = StubSegmenter().segment(image, list(NAMES)).semantic, label >= 0
        for k in range(4):
            inter[k] += np.sum((pred == k) & (label == k) & valid)
            union[k] += np.sum(((pred == k) | (label == k)) & valid)
        correct, labelled = correct + np.sum((pred == label) & valid), labelled + valid.sum()
    assert [result["per_class"][name] for name in NAMES] == pytest.approx(inter / union)
    assert result["miou"] == pytest.approx(np.mean(inter / union)) and 0.5 < np.mean(inter / union) < 0.6
    assert result["pixel_accuracy"] == pytest.approx(correct / labelled)
    assert result["miou_seen"] == pytest.approx(np.mean([result["per_class"]["sky"], result["per_class"]["grass"]]))
    assert 0.0 < result["proposal_recall"] <= 1.0 and result["proposal_recall@0.5"] >= result["proposal_recall@0.75"]
    assert stub.options == [{"clip_weight": 0.65, "stage2_mode": "crop", "resize": "short"}] * 5  # OVSeg's protocol
    assert json.loads(to_json(result))["miou"] == pytest.approx(result["miou"])
    table = format_table(result)
    assert "zebra" in table and "mIoU unseen" in table


def test_evaluate_without_recall_and_undefined_values_become_null() -> None:
    class SkyOnly(TinyDataset):
        def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
            image, label = super().__getitem__(index)
            return image, np.where(label >= 0, 0, -1)

    result = evaluate(StubSegmenter(), SkyOnly(), limit=2, proposal_recall=False, show_progress=False)
    assert math.isnan(result["proposal_recall"]) and math.isnan(result["miou_unseen"])
    assert math.isnan(result["per_class"]["kite"])
    decoded = json.loads(to_json(result))
    assert decoded["miou_unseen"] is None and decoded["per_class"]["kite"] is None


def test_a_prediction_of_another_size_is_scored_at_the_labels_size() -> None:
    """As OVSeg resizes its prediction to the label (detectron2's sem_seg_postprocess), by nearest neighbour:
    a map at half the size scores as the full-size map that repeats each of its pixels 2 x 2."""

    class Halving(StubSegmenter):
        def segment(self, image: np.ndarray, labels: list[str], **options: Any) -> SimpleNamespace:
            return super().segment(image[::2, ::2], labels)

    class Doubled(Halving):
        def segment(self, image: np.ndarray, labels: list[str], **options: Any) -> SimpleNamespace:
            small = super().segment(image, labels)
            return SimpleNamespace(semantic=small.semantic.repeat(2, axis=0).repeat(2, axis=1), proposals=None)

    halved = evaluate(Halving(), TinyDataset(), limit=3, proposal_recall=False, show_progress=False)
    doubled = evaluate(Doubled(), TinyDataset(), limit=3, proposal_recall=False, show_progress=False)
    assert halved["per_class"] == pytest.approx(doubled["per_class"], nan_ok=True) and halved["num_images"] == 3
    assert halved["pixel_accuracy"] == doubled["pixel_accuracy"]


def _rank_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        result = evaluate(StubSegmenter(), TinyDataset(), show_progress=False)
    finally:
        dist.destroy_process_group()
    Path(out_dir, f"rank{rank}.json").write_text(to_json(result))


def test_two_gloo_ranks_equal_one_process(tmp_path: Path) -> None:
    mp.spawn(_rank_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    single = json.loads(to_json(evaluate(StubSegmenter(), TinyDataset(), show_progress=False)))
    for rank in range(2):
        distributed = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert distributed["num_images"] == single["num_images"] == 7
        assert distributed["options"]["world_size"] == 2
        for key in (
            "miou",
            "miou_seen",
            "miou_unseen",
            "pixel_accuracy",
            "proposal_recall",
            "proposal_recall@0.5",
            "num_segments",
        ):
            assert distributed[key] == pytest.approx(single[key], rel=1e-12), key
        assert distributed["per_class"] == pytest.approx(single["per_class"], rel=1e-12)


def test_cli_json_on_a_real_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image_dir = tmp_path / "VOCdevkit/VOC2012/JPEGImages"
    label_dir = tmp_path / "VOCdevkit/VOC2012/annotations_detectron2/val"
    image_dir.mkdir(parents=True)
    label_dir.mkdir(parents=True)
    for stem in ("2007_000033", "2007_000042"):
        Image.fromarray(np.full((6, 8, 3), 200, dtype=np.uint8)).save(image_dir / f"{stem}.jpg")
        Image.fromarray(np.array([[14] * 8] * 5 + [[255] * 8], dtype=np.uint8)).save(label_dir / f"{stem}.png")
    factory_calls = []

    def factory(checkpoint: str | None, device: torch.device) -> StubSegmenter:
        factory_calls.append((checkpoint, device.type))
        return StubSegmenter()

    argv = ["--checkpoint", "my-ckpt", "--benchmark", "voc20", "--data-root", str(tmp_path), "--json", "--limit", "1"]
    assert main(argv, segmenter_factory=factory) == 0
    result = json.loads(capsys.readouterr().out)
    assert factory_calls == [("my-ckpt", "cpu")]
    assert result["benchmark"] == "voc20" and result["num_images"] == 1 and result["checkpoint"] == "my-ckpt"
    # red 200 of 256 over 20 labels -> class 15 everywhere, ground truth 14 ("person"): a clean miss.
    assert result["miou"] == 0.0 and result["per_class"]["person"] == 0.0 and result["per_class"]["cat"] is None
    assert "person" in result["seen_classes"] and "aeroplane" in result["seen_classes"]  # COCO spells it "airplane"


def test_cli_autocast_sets_the_segmenters_dtype_and_is_recorded(capsys: pytest.CaptureFixture[str]) -> None:
    made = []

    def factory(checkpoint: str | None, device: torch.device) -> StubSegmenter:
        made.append(StubSegmenter())
        return made[-1]

    argv = ["--benchmark", "world-voc", "--size", "48", "--limit", "1", "--json", "--no-recall"]
    assert main([*argv, "--autocast", "bfloat16"], segmenter_factory=factory) == 0
    assert made[-1].autocast_dtype is torch.bfloat16
    assert json.loads(capsys.readouterr().out)["options"]["autocast"] == "bfloat16"
    assert main(argv, segmenter_factory=factory) == 0
    assert made[-1].autocast_dtype is None and "autocast" not in json.loads(capsys.readouterr().out)["options"]


def test_cli_ensemble_replaces_the_checkpoints_form_and_is_recorded(capsys: pytest.CaptureFixture[str]) -> None:
    from pmp.config import SegmenterConfig

    made = []

    def factory(checkpoint: str | None, device: torch.device) -> StubSegmenter:
        made.append(StubSegmenter())
        made[-1].config = SegmenterConfig()
        return made[-1]

    argv = ["--benchmark", "world-voc", "--size", "48", "--limit", "1", "--json", "--no-recall", "--ensemble", "odise"]
    assert main(argv, segmenter_factory=factory) == 0
    assert made[-1].config.ensemble == "odise"
    assert json.loads(capsys.readouterr().out)["options"]["ensemble"] == "odise"


def test_flip_test_is_passed_on_only_when_asked_and_recorded(capsys: pytest.CaptureFixture[str]) -> None:
    stub = StubSegmenter()
    evaluate(stub, TinyDataset(), limit=2, show_progress=False)
    assert all("flip_test" not in options for options in stub.options)  # stand-ins need not know it
    result = evaluate(stub, TinyDataset(), limit=2, flip_test=True, show_progress=False)
    assert [options["flip_test"] for options in stub.options[2:]] == [True, True]
    assert result["options"]["flip_test"] is True
    sweep = SweepStub()
    evaluate(sweep, TinyDataset(), limit=2, clip_weight_sweep=(0.0,), flip_test=True, show_progress=False)
    assert [options["flip_test"] for options in sweep.options] == [True, True]  # run_stages gets it too
    made = []

    def factory(checkpoint: str | None, device: torch.device) -> StubSegmenter:
        made.append(StubSegmenter())
        return made[-1]

    argv = ["--benchmark", "world-voc", "--size", "48", "--limit", "1", "--json", "--no-recall", "--flip-test"]
    assert main(argv, segmenter_factory=factory) == 0
    assert made[-1].options == [{"flip_test": True, "resize": "short"}]
    assert json.loads(capsys.readouterr().out)["options"]["flip_test"] is True


def test_synthetic_benchmark_by_name() -> None:
    dataset = load_benchmark("world-full", size=48)
    result = evaluate(StubSegmenter(), dataset, limit=2, show_progress=False)
    assert result["benchmark"] == "world-full" and result["num_images"] == 2
    assert set(result["seen_classes"]) == {n for n, s in zip(dataset.class_names, dataset.seen) if s}
    assert result["num_segments"] > 0


def test_cli_reports_a_missing_dataset_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--benchmark", "pc459", "--data-root", str(tmp_path)], segmenter_factory=lambda c, d: StubSegmenter())
    assert exit_info.value.code == 2
    assert "VOCdevkit/VOC2010/annotations_detectron2/pc459_val" in capsys.readouterr().err


def test_load_benchmark_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="real datasets: coco171"):
        load_benchmark("world-nope")
    with pytest.raises(ValueError, match="--data-root"):
        load_benchmark("ade150")
    with pytest.raises(FileNotFoundError):
        load_benchmark("pc59", tmp_path)


class SweepStub(StubSegmenter):
    """run_stages + combine: the clip weight picks between the stub's map and an all-sky map."""

    def __init__(self) -> None:
        super().__init__()
        self.stage_calls = 0
        self.combined: list[tuple[float | None, float | None]] = []

    def run_stages(self, image: np.ndarray, labels: list[str], **options: Any) -> SimpleNamespace:
        self.stage_calls += 1
        return self.segment(image, labels, **options)

    def combine(
        self, stages: SimpleNamespace, *, clip_weight: float | None = None, clip_weight_unseen: float | None = None
    ) -> SimpleNamespace:
        self.combined.append((clip_weight, clip_weight_unseen))
        if (clip_weight is not None and clip_weight >= 0.5) or (clip_weight_unseen or 0.0) >= 0.9:
            return SimpleNamespace(semantic=np.zeros_like(stages.semantic), proposals=stages.proposals)
        return stages


def test_clip_weight_sweep_reuses_one_stage_pass_per_image() -> None:
    stub = SweepStub()
    result = evaluate(stub, TinyDataset(), limit=4, clip_weight_sweep=(0.0, 0.5, 1.0), show_progress=False)
    assert stub.stage_calls == 4  # one pass of both stages per image, whatever the number of weights
    sweep = result["clip_weight_sweep"]
    assert [row["clip_weight"] for row in sweep] == [0.0, 0.5, 1.0]
    assert sweep[0]["miou"] == pytest.approx(result["miou"])  # the default (None) is the stub's own map
    assert sweep[1]["miou"] == pytest.approx(sweep[2]["miou"]) and sweep[1]["miou"] < sweep[0]["miou"]
    assert "clip weight 0.50" in format_table(result)
    with pytest.raises(ValueError, match="clip weight"):
        evaluate(stub, TinyDataset(), limit=1, clip_weight_sweep=(1.5,), show_progress=False)


def test_split_weight_sweep_scores_pairs_and_a_uniform_sweep_stays_uniform() -> None:
    from pmp.config import SegmenterConfig

    stub = SweepStub()
    result = evaluate(stub, TinyDataset(), limit=3, split_weight_sweep=((0.4, 0.8), (0.4, 0.9)), show_progress=False)
    assert stub.stage_calls == 3 and "clip_weight_sweep" not in result
    rows = result["split_weight_sweep"]
    assert [(row["clip_weight"], row["clip_weight_unseen"]) for row in rows] == [(0.4, 0.8), (0.4, 0.9)]
    assert rows[0]["miou"] == pytest.approx(result["miou"]) and rows[1]["miou"] < rows[0]["miou"]
    assert "clip weights 0.40 / 0.90 (training names / others)" in format_table(result)
    # One weight for every prompt: (w, None) for a model without training names, (w, w) for one with them.
    evaluate(stub, TinyDataset(), limit=1, clip_weight_sweep=(0.2,), show_progress=False)
    assert stub.combined[-1] == (0.2, None)
    stub.config = SegmenterConfig(training_names=("sky",))
    evaluate(stub, TinyDataset(), limit=1, clip_weight_sweep=(0.2,), show_progress=False)
    assert stub.combined[-1] == (0.2, 0.2)
    with pytest.raises(ValueError, match="clip weight"):
        evaluate(stub, TinyDataset(), limit=1, split_weight_sweep=((0.4, 1.2),), show_progress=False)


def test_split_weight_flags_are_parsed_and_checked(capsys: pytest.CaptureFixture[str]) -> None:
    from pmp.config import SegmenterConfig
    from train.evaluate import build_parser

    args = build_parser().parse_args(["--benchmark", "world-voc", "--split-weight-sweep", "0.4:0.8,0.5:1"])
    assert args.split_weight_sweep == ((0.4, 0.8), (0.5, 1.0))
    for bad in ("0.4", "0.4:0.8:1", "0.4:x", "0.4:2"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--benchmark", "world-voc", "--split-weight-sweep", bad])
        assert "W:W pairs" in capsys.readouterr().err
    made = []

    def factory(checkpoint: str | None, device: torch.device) -> SweepStub:
        made.append(SweepStub())
        made[-1].config = SegmenterConfig(training_names=names)
        return made[-1]

    argv = ["--benchmark", "world-voc", "--size", "48", "--limit", "1", "--json", "--no-recall"]
    names = ("sky",)
    assert main([*argv, "--clip-weight-unseen", "0.9"], segmenter_factory=factory) == 0
    assert made[-1].config.clip_weight_unseen == 0.9
    assert json.loads(capsys.readouterr().out)["options"]["clip_weight_unseen"] == 0.9
    names = ()
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--clip-weight-unseen", "0.9"], segmenter_factory=factory)
    assert exit_info.value.code == 2 and "needs training_names" in capsys.readouterr().err


def test_clip_weight_sweep_flag_is_parsed_and_checked(capsys: pytest.CaptureFixture[str]) -> None:
    from train.evaluate import build_parser

    args = build_parser().parse_args(["--benchmark", "world-voc", "--clip-weight-sweep", "0,0.35,1"])
    assert args.clip_weight_sweep == (0.0, 0.35, 1.0)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--benchmark", "world-voc", "--clip-weight-sweep", "0,2"])
    assert "comma-separated numbers in [0, 1]" in capsys.readouterr().err


class PerImagePrompts(TinyDataset):
    """Like world-mixed: each image asks for its own subset of the classes, in its own order."""

    def image_prompts(self, index: int) -> list[str] | None:
        return ["kite", "sky", "zebra", "grass"] if index % 2 else ["grass", "sky", "kite", "zebra"]


class PromptEcho(StubSegmenter):
    """Predicts every pixel as the prompt named 'sky', wherever it stands in the list."""

    def segment(self, image: np.ndarray, labels: list[str], **options: Any) -> SimpleNamespace:
        result = super().segment(image, labels, **options)
        result.semantic = np.full(image.shape[:2], labels.index("sky"), np.int64)
        return result


def test_per_image_prompts_are_mapped_back_onto_the_benchmark_classes() -> None:
    result = evaluate(PromptEcho(), PerImagePrompts(), limit=4, show_progress=False)
    iou = result["per_class"]
    assert iou["sky"] > 0.0 and iou["grass"] == 0.0 and iou["kite"] == 0.0  # "sky" wherever it was listed
    assert set(result["per_class_recall"]) == set(NAMES)


def test_world_mixed_images_carry_their_own_prompts() -> None:
    dataset = load_benchmark("world-mixed", size=64)
    prompts = dataset.image_prompts(0)
    assert prompts and set(prompts) <= set(dataset.class_names)
    assert prompts == dataset.image_prompts(0)  # fixed by the seed
    assert load_benchmark("world-full", size=64).image_prompts(0) is None
    _, label = dataset[0]
    assert set(np.unique(label[label >= 0])) <= {dataset.class_names.index(name) for name in prompts}
