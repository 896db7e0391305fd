"""Evaluate a Segmenter on a synthetic-world or real benchmark: mIoU (all / seen / unseen) and proposal recall.

    python -m train.evaluate --checkpoint checkpoints/pmp --benchmark world-full --limit 200
    python -m train.evaluate --checkpoint checkpoints/pmp --benchmark ade150 --data-root datasets --json
    torchrun --nproc_per_node 4 -m train.evaluate --checkpoint checkpoints/pmp --benchmark pc459 --data-root datasets

Every image is segmented with the benchmark's full class list as labels (``Segmenter.segment``, no
prompt parsing or limits). Under torchrun (``WORLD_SIZE > 1``) rank r takes images r, r + W, ...; the
confusion matrices and recall sums are all-reduced, so every rank ends with the numbers one process
would compute (up to float summation order in the recall sums).

Result (a dict, and ``--json``): fractions in [0, 1], NaN (``null`` in JSON) where undefined:
``benchmark``, ``num_classes``, ``num_images`` (scored), ``num_skipped`` and ``skipped`` (images or labels that
could not be used: each named once on stderr and skipped, or with ``--strict`` the run stops at the first with
one line and exit status 2), ``seconds`` (wall time, slowest rank),
``miou``, ``miou_seen``, ``miou_unseen``, ``pixel_accuracy``, ``mean_accuracy``,
``proposal_recall`` (class-balanced mean best IoU of the first-stage proposals per ground-truth
segment; NaN with ``--no-recall``), ``proposal_recall_seen``, ``proposal_recall_unseen``,
``proposal_recall@0.5``, ``proposal_recall@0.75`` (fraction of segments whose best IoU reaches the
threshold), ``num_segments``, ``per_class`` ({name: IoU}), ``seen_classes`` (names), ``options``, and with
``--clip-weight-sweep`` ``clip_weight_sweep``: [{clip_weight, miou, miou_seen, miou_unseen}, ...], every
weight (one for every prompt) scored on the same pass of both stages per image (Eq. 3 is the only thing
that changes), and with ``--split-weight-sweep`` ``split_weight_sweep``: the same rows with
``clip_weight_unseen``, FC-CLIP's two weights (prompts inside / outside stage 1's training names).
Definitions are in :mod:`pmp.metrics`. Seen classes: the synthetic benchmark's own flags; for real
benchmarks, classes that are in COCO-Stuff-171 by name or documented synonym (:func:`train.datasets.coco_seen_mask`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from pmp.config import AUTOCAST_NAMES, ENSEMBLES, parse_weight_pair
from pmp.metrics import ProposalRecall, SemSegMetric
from pmp.segmenter import AUTOCAST_DTYPES, Segmenter
from train.adapt_clip import with_adapted_clip
from train.datasets import REAL_DATASETS, SampleError, SyntheticBenchmarkDataset, build_dataset, describe_layouts
from train.eval_output import format_table, to_json
from train.protocol import PROTOCOLS, ovseg_clip_weight, to_label_size
from train.runtime import all_reduce, cleanup_distributed, rank_and_world_size, setup_distributed

RECALL_THRESHOLDS = (0.5, 0.75)
BAD_SAMPLE_POLICIES = ("skip", "stop")


class BenchmarkDataset(Protocol):
    """What :func:`evaluate` needs from a dataset (``SemSegDataset`` and ``SyntheticBenchmarkDataset`` are ones)."""

    name: str
    class_names: tuple[str, ...]
    seen: np.ndarray  # (K,) bool
    ignore_label: int

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]: ...

    def image_prompts(self, index: int) -> list[str] | None: ...  # None: every class, for every image


def load_benchmark(name: str, data_root: str | Path | None = None, split: str = "val", size: int = 128) -> Any:
    """A real dataset (a :data:`train.datasets.REAL_DATASETS` key, needs ``data_root``) or a synthetic one.

    ``size`` is the render size of synthetic images; real images keep their own size.
    """
    if name in REAL_DATASETS:
        if data_root is None:
            raise ValueError(f"benchmark {name!r} is a real dataset: pass --data-root (detectron2's datasets folder)")
        return build_dataset(name, data_root, split)
    try:
        return SyntheticBenchmarkDataset(name, size=size)
    except ValueError as error:
        raise ValueError(f"{error}; real datasets: {', '.join(REAL_DATASETS)}") from None


def _all_reduce(array: np.ndarray, op: Any = None) -> np.ndarray:
    """:func:`train.runtime.all_reduce` for the metrics' numpy state."""
    return all_reduce(torch.from_numpy(np.ascontiguousarray(array)), op).numpy()


def as_benchmark_classes(semantic: np.ndarray, labels: Sequence[str], class_index: dict[str, int]) -> np.ndarray:
    """A map of prompt indices (-1 = nothing) -> the benchmark's class ids (-1 stays -1), so that images
    prompted with their own sets (world-mixed) share one confusion matrix over the benchmark's classes."""
    to_class = np.array([class_index[name] for name in labels] + [-1])  # prediction -1 -> the last entry
    return to_class[np.where(semantic < 0, len(labels), semantic)]


def evaluate(
    segmenter: Any,
    dataset: BenchmarkDataset,
    limit: int | None = None,
    *,
    clip_weight: float | None = None,
    clip_weight_sweep: Sequence[float] = (),
    split_weight_sweep: Sequence[tuple[float, float]] = (),
    stage2_mode: str | None = None,
    image_size: int | None = None,
    flip_test: bool = False,
    proposal_recall: bool = True,
    show_progress: bool | None = None,
    bad_samples: str = "skip",
    protocol: str = "ovseg",
) -> dict[str, Any]:
    """Segment the first ``limit`` images (all when None) of ``dataset`` and score them; see the module docstring.

    ``segmenter`` is anything with ``segment(image, labels, **options) -> result`` where
    ``result.semantic`` is (H, W) ints indexing ``labels`` (-1 = nothing) and ``result.proposals`` is
    (N, H, W) in [0, 1]; ``clip_weight``, ``stage2_mode`` and ``image_size`` are passed on only when
    given, and ``flip_test`` (both stages on the mirrored image too, :meth:`pmp.segmenter.Segmenter.segment`)
    only when True. ``clip_weight_sweep`` (needs a :class:`pmp.segmenter.Segmenter`: ``run_stages`` + ``combine``)
    also scores every listed weight on the same stage outputs, each for every prompt; ``split_weight_sweep``
    scores (clip_weight, clip_weight_unseen) pairs the same way. ``show_progress`` None = a tqdm bar on
    stderr when it is a terminal, on rank 0 only. ``bad_samples``: what a sample whose image or label
    cannot be used (:class:`train.datasets.SampleError`) does: "skip" (one line on stderr naming the file;
    counted in ``num_skipped`` and listed in ``skipped``) or "stop" (the error is raised). ``protocol``:
    how an image enters the model (:mod:`train.protocol`: "ovseg", the shorter side at ``image_size``, the
    default; "long_side", the longer); a prediction of another size is resized to the label's.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if bad_samples not in BAD_SAMPLE_POLICIES:
        raise ValueError(f"bad_samples must be one of {', '.join(BAD_SAMPLE_POLICIES)}, got {bad_samples!r}")
    rank, world_size = rank_and_world_size()
    class_names = list(dataset.class_names)
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"{dataset.name}: class names must be unique to report per-class IoU")
    seen = np.asarray(dataset.seen, dtype=bool)
    class_index = {name: i for i, name in enumerate(class_names)}
    count = len(dataset) if limit is None else min(int(limit), len(dataset))
    if count < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    options = {
        key: value
        for key, value in (("clip_weight", clip_weight), ("stage2_mode", stage2_mode), ("image_size", image_size))
        if value is not None
    }
    if flip_test:
        options["flip_test"] = True
    options["resize"] = PROTOCOLS[protocol]
    # Each sweep row is Segmenter.combine's (clip_weight, clip_weight_unseen); a segmenter without a config
    # (a stand-in) takes one weight as clip_weight alone.
    config = getattr(segmenter, "config", None)
    sweep = [config.uniform_clip_weights(w) if config else (float(w), None) for w in clip_weight_sweep]
    split = [(float(w), float(u)) for w, u in split_weight_sweep]
    weights = [w for row in sweep + split for w in row if w is not None]
    if any(not 0.0 <= w <= 1.0 for w in weights):
        raise ValueError(f"every clip weight of a sweep must be in [0, 1], got {weights}")
    stage_options = {key: value for key, value in options.items() if key != "clip_weight"}
    semseg = SemSegMetric(len(class_names), dataset.ignore_label, seen)
    swept = [SemSegMetric(len(class_names), dataset.ignore_label, seen) for _ in sweep + split]
    recall = ProposalRecall(len(class_names), dataset.ignore_label, RECALL_THRESHOLDS, seen_mask=seen)

    if show_progress is None:
        show_progress = sys.stderr.isatty()
    indices = range(rank, count, world_size)
    started = time.perf_counter()
    skipped: list[dict[str, Any]] = []
    for index in tqdm(indices, desc=f"eval {dataset.name}", file=sys.stderr, disable=not show_progress or rank != 0):
        try:
            image, label = dataset[index]
        except SampleError as error:
            if bad_samples == "stop":
                raise
            print(f"skipped {dataset.name}[{index}]: {error}", file=sys.stderr)
            skipped.append({"index": index, "problem": str(error)})
            continue
        # Prompts: the benchmark's classes, or (world-mixed) this image's own set, whose indices are mapped
        # back onto the benchmark's classes so that one confusion matrix serves every image.
        labels = dataset.image_prompts(index) or class_names

        def as_classes(semantic: np.ndarray) -> np.ndarray:
            return as_benchmark_classes(semantic, labels, class_index)

        if swept:
            stages = segmenter.run_stages(image, labels, **stage_options)
            result = segmenter.combine(stages, clip_weight=clip_weight)
            for (weight, unseen), metric in zip(sweep + split, swept):
                combined = segmenter.combine(stages, clip_weight=weight, clip_weight_unseen=unseen)
                metric.update(as_classes(np.asarray(combined.semantic)), label)
        else:
            result = segmenter.segment(image, labels, **options)
        semantic, proposals = to_label_size(
            as_classes(np.asarray(result.semantic)),
            np.asarray(result.proposals) if proposal_recall else None,
            label.shape,
        )
        semseg.update(semantic, label)
        if proposal_recall:
            recall.update(proposals, label)
    seconds = time.perf_counter() - started

    semseg.load_state(_all_reduce(semseg.state))
    for metric in swept:
        metric.load_state(_all_reduce(metric.state))
    recall.load_state(_all_reduce(recall.state))
    num_skipped = int(_all_reduce(np.array([len(skipped)], dtype=np.int64))[0])
    num_images = int(_all_reduce(np.array([len(indices)], dtype=np.int64))[0]) - num_skipped
    seconds = float(
        _all_reduce(np.array([seconds], dtype=np.float64), dist.ReduceOp.MAX if world_size > 1 else None)[0]
    )

    scores = semseg.compute()
    nan = float("nan")
    result_dict: dict[str, Any] = {
        "benchmark": dataset.name,
        "num_classes": len(class_names),
        "num_images": num_images,
        "num_skipped": num_skipped,
        "skipped": skipped,  # this rank's (all of them without torchrun)
        "seconds": seconds,
        "miou": scores.miou,
        "miou_seen": scores.miou_seen,
        "miou_unseen": scores.miou_unseen,
        "pixel_accuracy": scores.pixel_accuracy,
        "mean_accuracy": scores.mean_accuracy,
        "proposal_recall": nan,
        "proposal_recall_seen": nan,
        "proposal_recall_unseen": nan,
        **{f"proposal_recall@{t}": nan for t in RECALL_THRESHOLDS},
        "num_segments": 0,
        "per_class": {name: float(iou) for name, iou in zip(class_names, scores.iou)},
        "seen_classes": [name for name, flag in zip(class_names, seen) if flag],
        "options": {
            "limit": limit,
            "world_size": world_size,
            "proposal_recall": proposal_recall,
            "protocol": protocol,
            **options,
        },
    }
    rows = [
        {
            "clip_weight": weight,
            "clip_weight_unseen": unseen,
            "miou": m.miou,
            "miou_seen": m.miou_seen,
            "miou_unseen": m.miou_unseen,
        }
        for (weight, unseen), m in zip(sweep + split, (metric.compute() for metric in swept))
    ]
    if sweep:
        result_dict["clip_weight_sweep"] = [
            {key: value for key, value in row.items() if key != "clip_weight_unseen"} for row in rows[: len(sweep)]
        ]
    if split:
        result_dict["split_weight_sweep"] = rows[len(sweep) :]
    if proposal_recall:
        covered = recall.compute()
        per_class_recall = np.divide(
            recall.best_iou_sum, recall.segments, out=np.full(len(class_names), np.nan), where=recall.segments > 0
        )
        result_dict.update(
            {
                "per_class_recall": {name: float(value) for name, value in zip(class_names, per_class_recall)},
                "proposal_recall": covered.mean_best_iou,
                "proposal_recall_seen": covered.mean_best_iou_seen,
                "proposal_recall_unseen": covered.mean_best_iou_unseen,
                **{f"proposal_recall@{t}": value for t, value in covered.recall.items()},
                "num_segments": covered.num_segments,
            }
        )
    return result_dict


def _weights(text: str) -> tuple[float, ...]:
    """'0,0.35,1' -> (0.0, 0.35, 1.0); argparse turns the ValueError into a usage error."""
    try:
        weights = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers in [0, 1], got {text!r}") from None
    if not weights or any(not 0.0 <= w <= 1.0 for w in weights):
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers in [0, 1], got {text!r}")
    return weights


def _weight_pairs(text: str) -> tuple[tuple[float, float], ...]:
    """'0.4:0.8,0.5:0.9' -> ((0.4, 0.8), (0.5, 0.9)): clip_weight:clip_weight_unseen pairs
    (:func:`pmp.config.parse_weight_pair` each)."""
    message = f"expected comma-separated W:W pairs of numbers in [0, 1] (training names : others), got {text!r}"
    try:
        pairs = tuple(parse_weight_pair(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(message) from None
    if not pairs:
        raise argparse.ArgumentTypeError(message)
    return pairs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train.evaluate",
        description=__doc__,
        epilog="real dataset layouts under --data-root:\n" + describe_layouts(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint", default=None, help="a Segmenter folder, Hub id or bundled name (default: bundled PMP)"
    )
    parser.add_argument(
        "--benchmark", required=True, help=f"world-* synthetic benchmark or one of {', '.join(REAL_DATASETS)}"
    )
    parser.add_argument("--data-root", type=Path, default=None, help="detectron2 datasets folder (real benchmarks)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    parser.add_argument("--stage2", choices=("pool", "crop"), default=None, help="stage-2 CLIP classification mode")
    parser.add_argument(
        "--clip-weight",
        type=float,
        default=None,
        help="Eq. 3: exponent w of CLIP's p_hat, p_out = p^(1-w) * p_hat^w (default: the checkpoint's, 0.65)",
    )
    parser.add_argument(
        "--clip-weight-sweep",
        type=_weights,
        default=(),
        metavar="W,W,...",
        help="also score these clip weights on the same stage outputs, e.g. 0,0.2,0.35,0.5,0.65,0.8,1",
    )
    parser.add_argument(
        "--clip-weight-unseen",
        type=float,
        default=None,
        help="Eq. 3 with FC-CLIP's two weights: this exponent for prompts outside the checkpoint's training_names "
        "(default: the checkpoint's; none there = --clip-weight for every prompt)",
    )
    parser.add_argument(
        "--split-weight-sweep",
        type=_weight_pairs,
        default=(),
        metavar="W:U,W:U,...",
        help="also score these (clip weight, clip weight for names outside training) pairs, e.g. 0.4:0.8,0.5:0.9",
    )
    parser.add_argument("--size", type=int, default=128, help="render size of synthetic benchmark images")
    parser.add_argument("--image-size", type=int, default=None, help="segmenter input size (default: its config)")
    parser.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available; one GPU per rank)")
    parser.add_argument("--no-recall", action="store_true", help="skip the proposal-recall metric (saves memory)")
    parser.add_argument(
        "--protocol",
        choices=tuple(PROTOCOLS),
        default="ovseg",
        help="ovseg: the shorter side at the model's image_size, the longer at most 4x (OVSeg's; default); "
        "long_side: the longer side at image_size (the demo's, faster)",
    )
    parser.add_argument(
        "--ovseg-clip-weights",
        action="store_true",
        help="Eq. 3's weight as OVSeg publishes it per benchmark (0.7 ADE, 0.6 Pascal Context, 0.45 VOC) instead "
        "of the checkpoint's (the paper's 0.65)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first image or label that cannot be used (default: skip it, say so on stderr, and "
        "count it in num_skipped)",
    )
    parser.add_argument(
        "--flip-test",
        action="store_true",
        help="also segment each image mirrored left to right and add its class maps, mirrored back (twice the time)",
    )
    parser.add_argument(
        "--ensemble",
        choices=ENSEMBLES,
        default=None,
        help="Eq. 3's form instead of the checkpoint's: ovseg (OVSeg's, the default) or odise (no-object kept out)",
    )
    parser.add_argument(
        "--autocast",
        choices=AUTOCAST_NAMES,
        default="none",
        help="run both stages under torch.autocast in this dtype (Segmenter.autocast_dtype): what it costs in mIoU",
    )
    parser.add_argument(
        "--adapted-clip",
        type=Path,
        default=None,
        metavar="FOLDER",
        help="stage 2 reads this mask-adapted CLIP's image tower (train.adapt_clip.with_adapted_clip): a candidate "
        "from python -m train.adapt_clip measured on a trained world segmenter without installing it",
    )
    return parser


def _load_segmenter(checkpoint: str | None, device: torch.device) -> Any:

    return Segmenter.from_pretrained(checkpoint, device=device)


def main(
    argv: list[str] | None = None, segmenter_factory: Callable[[str | None, torch.device], Any] | None = None
) -> int:
    """CLI entry; ``segmenter_factory(checkpoint, device)`` replaces ``Segmenter.from_pretrained`` (tests)."""

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        dataset = load_benchmark(args.benchmark, args.data_root, args.split, args.size)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))  # exits with status 2 and the message, no traceback
    context = setup_distributed(args.device)
    try:
        segmenter = (segmenter_factory or _load_segmenter)(args.checkpoint, context.device)

        segmenter.autocast_dtype = AUTOCAST_DTYPES[args.autocast]
        if args.adapted_clip is not None:
            try:  # another text tower, or a stage 1 that runs the CLIP tower, would change the proposals
                segmenter = with_adapted_clip(segmenter, args.adapted_clip)
            except (ValueError, FileNotFoundError) as error:
                parser.error(f"--adapted-clip: {error}")
        if args.ensemble is not None:
            segmenter.config = dataclasses.replace(segmenter.config, ensemble=args.ensemble)
        if args.clip_weight_unseen is not None:
            try:  # a checkpoint without training_names cannot tell unseen prompts apart
                segmenter.config = dataclasses.replace(segmenter.config, clip_weight_unseen=args.clip_weight_unseen)
                segmenter.config.validate()
            except ValueError as error:
                parser.error(f"--clip-weight-unseen: {error}")
        if args.ovseg_clip_weights:
            if args.clip_weight is not None:
                parser.error("--ovseg-clip-weights sets the CLIP weight: leave out --clip-weight")
            try:
                args.clip_weight = ovseg_clip_weight(args.benchmark)
            except ValueError as error:
                parser.error(str(error))
        result = evaluate(
            segmenter,
            dataset,
            args.limit,
            clip_weight=args.clip_weight,
            clip_weight_sweep=args.clip_weight_sweep,
            split_weight_sweep=args.split_weight_sweep,
            stage2_mode=args.stage2,
            image_size=args.image_size,
            flip_test=args.flip_test,
            proposal_recall=not args.no_recall,
            bad_samples="stop" if args.strict else "skip",
            protocol=args.protocol,
        )
        result["checkpoint"] = args.checkpoint
        if args.autocast != "none":
            result["options"]["autocast"] = args.autocast
        if args.ensemble is not None:
            result["options"]["ensemble"] = args.ensemble
        if args.clip_weight_unseen is not None:
            result["options"]["clip_weight_unseen"] = args.clip_weight_unseen
        if args.adapted_clip is not None:
            result["options"]["adapted_clip"] = str(args.adapted_clip)
        if context.is_main:
            print(to_json(result) if args.json else format_table(result))
    except SampleError as error:  # --strict
        print(f"error: {error} (without --strict such a file is skipped and counted)", file=sys.stderr)
        return 2
    finally:
        cleanup_distributed()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
