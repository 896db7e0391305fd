"""Side studies of the latency harness (``docs/speed.md`` and ``docs/results.md``), run on the same model pairs
and images as ``python -m benchmarks.latency``, whose flags they take:

    python -m experiments.latency_studies --json results/latency_bundled.json     # the harness and every study
    python -m experiments.latency_studies --models bundled --prompts 10 --repeats 15 --no-profile \\
        --json results/latency_flip_test.json                                      # the flip test, interleaved
    python -m experiments.latency_studies --models bundled --prompts 10 --threads 1 --reference FOLDER

Another checkpoint against the bundled baseline (``--reference``); glibc's allocator thresholds against
retained freed blocks; the crop path's fast paths against the libraries'; the ViT dense pass's resolution;
float32 against bfloat16 autocast; one view against the flip test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.ops import roi_align

from benchmarks import latency
from benchmarks.latency_parts import Stage2Inputs
from benchmarks.latency_setup import STAGES, ms, prompt_text, request
from pmp.allocator import release_freed_memory, retain_freed_memory
from pmp.images import load_image
from pmp.postprocess import upsample
from pmp.segmenter import Segmenter
from pmp.stage2 import crop_sources, dense_input, masked_crops, square_box_samples


def reference_comparison(
    segmenter: Segmenter, reference: Segmenter, image: np.ndarray, count: int, repeats: int
) -> dict[str, Any]:
    """Whole warm requests of ``segmenter`` and another checkpoint of the same kind (``--reference``, say a
    previous bundled model), interleaved on one image and prompt set: what a change of model costs, measured
    side by side so that the machine's speed that day cancels out of the ratio."""
    text = prompt_text(count)
    for model in (segmenter, reference):
        request(model, image, text)  # warm both
    pairs = [(request(segmenter, image, text)[0], request(reference, image, text)[0]) for _ in range(repeats)]
    ratios = [mine["total"] / theirs["total"] for mine, theirs in pairs]
    return {
        "prompts": count,
        "pairs": repeats,
        "bundled": {stage: statistics.median(m[stage] for m, _ in pairs) for stage in STAGES},
        "reference": {stage: statistics.median(r[stage] for _, r in pairs) for stage in STAGES},
        "ratio": statistics.median(ratios),
    }


def allocator_comparison(segmenter: Segmenter, image: np.ndarray, count: int, repeats: int) -> dict[str, Any]:
    """Whole warm requests with glibc keeping freed blocks (:func:`pmp.allocator.retain_freed_memory`) and
    with its initial thresholds (:func:`pmp.allocator.release_freed_memory`; fixed there, where glibc as it
    starts would move its mmap threshold up as blocks are freed), interleaved: the setting is switched
    before each request pair, and each measured request follows an unmeasured one under the same setting.
    Ends with freed blocks retained, the setting it is run under."""
    text = prompt_text(count)

    def under(retain: bool) -> dict[str, float]:
        retain_freed_memory() if retain else release_freed_memory()
        request(segmenter, image, text)
        return request(segmenter, image, text)[0]

    try:
        pairs = [(under(False), under(True)) for _ in range(repeats)]
    finally:
        retain_freed_memory()
    return {
        "prompts": count,
        "pairs": repeats,
        "system": {stage: statistics.median(a[stage] for a, _ in pairs) for stage in STAGES},
        "retain": {stage: statistics.median(b[stage] for _, b in pairs) for stage in STAGES},
        "speedup": {stage: statistics.median(a[stage] / b[stage] for a, b in pairs) for stage in ("stage2", "total")},
    }


def crop_fast_paths(segmenter: Segmenter, image: np.ndarray, count: int, repeats: int) -> dict[str, Any]:
    """Stage 2's two crop fast paths against the library calls they replace, interleaved, on the crops of
    one request's proposals: the resampling (:func:`pmp.stage2.square_box_samples` against torchvision's
    ``roi_align``, the same samples) and the image tower (:meth:`pmp.clip.CLIPModel.encode_crops`, the
    :mod:`pmp.clip.inference_tower` copy, against open_clip's ``encode_image``)."""
    clip = segmenter.clip
    _, result = request(segmenter, image, prompt_text(count))
    pixels, valid_hw = segmenter.preprocess(load_image(image), segmenter.config.image_size)
    picture = pixels[0, :, : valid_hw[0], : valid_hw[1]]  # (3, H, W)
    masks = upsample(result.mask_logits[None].to(segmenter.device), valid_hw)[0].sigmoid()  # (N, H, W)
    normalised, inside, boxes, _ = crop_sources(clip, picture, masks)
    own = torch.arange(len(boxes), dtype=boxes.dtype)[:, None]
    size = clip.image_size

    def timed(fn: Any) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            fn()
        return time.perf_counter() - start

    def by_roi_align() -> None:
        roi_align(normalised, torch.cat([torch.zeros_like(own), boxes], 1), size, 1.0, -1, True)
        roi_align(inside, torch.cat([own, boxes], 1), size, 1.0, -1, True)

    def by_grid_sample() -> None:
        square_box_samples(normalised, boxes, size)
        square_box_samples(inside, boxes, size)

    crops, _ = masked_crops(clip, picture, masks, views=tuple(segmenter.config.crop_views))
    rounds = max(repeats, 10)
    paths = {
        "resampling": (by_roi_align, by_grid_sample),
        "image_tower": (lambda: clip.open_clip.encode_image(crops), lambda: clip.encode_crops(crops)),
    }
    out: dict[str, Any] = {"crops": len(crops), "boxes": len(boxes), "pairs": rounds}
    for name, (library, ours) in paths.items():
        library(), ours()  # warm-up (builds the inference tower once)
        pairs = [(timed(library), timed(ours)) for _ in range(rounds)]
        out[name] = {
            "library_s": statistics.median(a for a, _ in pairs),
            "ours_s": statistics.median(b for _, b in pairs),
            "speedup": statistics.median(a / b for a, b in pairs),
        }
    return out


def dense_resolution_tradeoff(segmenter: Segmenter, image: np.ndarray, image_size: int | None) -> list[dict[str, Any]]:
    """Stage 2 (pool) time with a ViT CLIP's dense pass at several input sides (``vit_dense_scale``).

    Time only: with random CLIP weights, how the scores change says nothing about accuracy.
    """
    if not hasattr(segmenter.clip.open_clip.visual, "patch_size"):
        return []
    inputs = Stage2Inputs.of(segmenter, image, 10, image_size)
    pixels, valid_hw = inputs.pixels, inputs.valid_hw
    full = max(valid_hw)
    default_side = max(
        dense_input(segmenter.clip, pixels[..., : valid_hw[0], : valid_hw[1]], segmenter.vit_dense_scale).shape[-2:]
    )
    sides = sorted({side for side in (segmenter.clip.image_size, 320, 448, default_side, full) if side <= full})
    patch = segmenter.clip.open_clip.visual.patch_size
    patch = patch[0] if isinstance(patch, (tuple, list)) else int(patch)
    rows = []
    original = segmenter.vit_dense_scale
    try:
        for side in sides:
            segmenter.vit_dense_scale = side / full
            seconds = inputs.timed(segmenter, "pool")
            rows.append(
                {
                    "side": side,
                    "tokens": (side // patch) ** 2,
                    "stage2_s": seconds,
                    "default": side == default_side,
                }
            )
    finally:
        segmenter.vit_dense_scale = original
    return rows


def interleaved_comparison(
    segmenter: Segmenter,
    image: np.ndarray,
    count: int,
    repeats: int,
    settings: dict[str, tuple[torch.dtype | None, dict[str, Any]]],
    image_size: int | None,
) -> dict[str, Any]:
    """One model under two settings, each (autocast dtype, request options), interleaved (one request in
    each per round, after a warm-up of each): warm stage timings and how much the outputs move."""
    text = prompt_text(count)
    original = segmenter.autocast_dtype
    runs: dict[str, list[dict[str, float]]] = {label: [] for label in settings}
    outputs = {}
    try:
        for dtype, options in settings.values():
            segmenter.autocast_dtype = dtype
            request(segmenter, image, text, image_size=image_size, **options)  # warm-up of this setting
        for _ in range(repeats):
            for label, (dtype, options) in settings.items():
                segmenter.autocast_dtype = dtype
                timings, outputs[label] = request(segmenter, image, text, image_size=image_size, **options)
                runs[label].append(timings)
    finally:
        segmenter.autocast_dtype = original
    (name_a, a), (name_b, b) = outputs.items()
    return {
        "prompts": count,
        "warm_median": {label: {s: statistics.median(t[s] for t in ts) for s in STAGES} for label, ts in runs.items()},
        "speedup_total": statistics.median(
            x["total"] / y["total"] for x, y in zip(*runs.values())
        ),  # median of the rounds' first / second setting ratios
        "semantic_pixel_agreement": float((a.semantic == b.semantic).mean()),
        "max_abs_diff_p_out": float(np.abs(a.p_out - b.p_out).max()),
        "picked_proposals_equal": [i for i, _ in a.selected] == [i for i, _ in b.selected],
    }


def autocast_comparison(
    segmenter: Segmenter, image: np.ndarray, count: int, repeats: int, dtype: torch.dtype, image_size: int | None
) -> dict[str, Any]:
    """One model in float32 and under autocast in ``dtype`` (:func:`interleaved_comparison`)."""
    settings = {"float32": (None, {}), str(dtype).replace("torch.", ""): (dtype, {})}
    return interleaved_comparison(segmenter, image, count, repeats, settings, image_size)


def flip_test_comparison(
    segmenter: Segmenter, image: np.ndarray, count: int, repeats: int, image_size: int | None
) -> dict[str, Any]:
    """One model with one view and with the flip test (``Segmenter.segment(flip_test=True)``), in its own
    precision (:func:`interleaved_comparison`): what the second view costs per request."""
    dtype = segmenter.autocast_dtype
    settings = {"one view": (dtype, {}), "flip test": (dtype, {"flip_test": True})}
    return interleaved_comparison(segmenter, image, count, repeats, settings, image_size)


def run_studies(
    key: str,
    args: argparse.Namespace,
    entry: dict[str, Any],
    pair: dict[str, Segmenter],
    image: np.ndarray,
    stage1_size: int | None,
    autocast: torch.dtype | None,
    count: int,
    repeats: int,
    measure_clip: bool,
) -> None:
    """The side studies of one model pair, printed and written into its JSON ``entry``: the harness's
    ``studies`` hook (:func:`benchmarks.latency.benchmark_model`)."""
    device = next(pair["pmp"].parameters()).device
    if key == "bundled" and args.reference is not None:
        reference = Segmenter.from_pretrained(args.reference, device=device)
        r = entry["reference"] = reference_comparison(pair["baseline"], reference, image, count, max(repeats, 10))
        r["folder"] = str(args.reference)
        print(
            f"   bundled baseline against --reference {args.reference}, {r['pairs']} interleaved requests at "
            f"{count} prompts: {ms(r['bundled']['total']).strip()} vs {ms(r['reference']['total']).strip()} ms "
            f"(stage 1 {ms(r['bundled']['stage1']).strip()} vs {ms(r['reference']['stage1']).strip()}, stage 2 "
            f"{ms(r['bundled']['stage2']).strip()} vs {ms(r['reference']['stage2']).strip()}) -> {r['ratio']:.2f}x"
        )

    if key == "bundled" and args.allocator_applied:
        a = entry["allocator"] = allocator_comparison(pair["pmp"], image, count, max(repeats, 10))
        print(
            f"   allocator, {a['pairs']} interleaved request pairs at {count} prompts (PMP): glibc's initial "
            f"thresholds {ms(a['system']['total']).strip()} vs freed blocks retained "
            f"{ms(a['retain']['total']).strip()} ms "
            f"(stage 2 {ms(a['system']['stage2']).strip()} vs {ms(a['retain']['stage2']).strip()}) -> "
            f"{a['speedup']['total']:.2f}x (stage 2 {a['speedup']['stage2']:.2f}x)"
        )

    if measure_clip and pair["pmp"].config.stage2_mode == "crop":
        f = entry["crop_fast_paths"] = crop_fast_paths(pair["pmp"], image, count, args.repeats)
        print(
            f"   crop fast paths, {f['pairs']} interleaved pairs on {f['crops']} crops of {f['boxes']} proposals: "
            f"resampling roi_align {ms(f['resampling']['library_s']).strip()} vs grid_sample "
            f"{ms(f['resampling']['ours_s']).strip()} ms -> {f['resampling']['speedup']:.1f}x; image tower "
            f"open_clip's {ms(f['image_tower']['library_s']).strip()} vs the inference tower "
            f"{ms(f['image_tower']['ours_s']).strip()} ms -> {f['image_tower']['speedup']:.2f}x"
        )
    if key != "bundled" and measure_clip:
        rows = entry["vit_dense_resolution"] = dense_resolution_tradeoff(pair["pmp"], image, stage1_size)
        for row in rows:
            print(
                f"   ViT dense pass at {row['side']:>4} px ({row['tokens']:>4} tokens): "
                f"stage 2 {ms(row['stage2_s']).strip()} ms"
                f"{'  <- default (Segmenter.vit_dense_scale)' if row['default'] else ''}"
            )
    if key in ("bundled", "r50") and autocast is None:
        b = entry["bfloat16"] = autocast_comparison(pair["pmp"], image, 10, args.repeats, torch.bfloat16, stage1_size)
        f32, bf16 = b["warm_median"]["float32"], b["warm_median"]["bfloat16"]
        print(
            f"   PMP 10 prompts, float32 vs bfloat16 autocast, {args.repeats} interleaved rounds "
            f"({b['speedup_total']:.2f}x): "
            f"total {ms(f32['total']).strip()} vs {ms(bf16['total']).strip()} ms "
            f"(stage 1 {ms(f32['stage1']).strip()} vs {ms(bf16['stage1']).strip()}, "
            f"stage 2 {ms(f32['stage2']).strip()} vs "
            f"{ms(bf16['stage2']).strip()}); semantic agreement {b['semantic_pixel_agreement']:.2%}, "
            f"max |d p_out| {b['max_abs_diff_p_out']:.3g}, same picks: {b['picked_proposals_equal']}"
        )

    if key == "bundled":
        rounds = max(args.repeats, 10)
        entry["flip_test"] = {}
        for name, model in pair.items():
            f = entry["flip_test"][name] = flip_test_comparison(model, image, 10, rounds, stage1_size)
            one, both = f["warm_median"]["one view"], f["warm_median"]["flip test"]
            print(
                f"   {name} 10 prompts, one view vs the flip test, {rounds} interleaved rounds "
                f"({1 / f['speedup_total']:.2f}x the time): total {ms(one['total']).strip()} vs "
                f"{ms(both['total']).strip()} ms; semantic agreement {f['semantic_pixel_agreement']:.2%}"
            )


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reference",
        type=Path,
        default=None,
        metavar="FOLDER",
        help="with the bundled models: also time this checkpoint against the bundled baseline, interleaved",
    )


def main(argv: list[str] | None = None) -> int:
    return latency.main(argv, studies=run_studies, add_arguments=add_study_arguments)


if __name__ == "__main__":
    sys.exit(main())
