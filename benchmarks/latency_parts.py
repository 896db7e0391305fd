"""The latency harness's per-part measurements (:mod:`benchmarks.latency`): PMP's stage-1 overhead, stage 2
pooled against cropped, the text cache, and a profile of one request."""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from benchmarks.latency_setup import prompt_text, request, synchronize
from pmp.images import load_image, normalize_pixels
from pmp.modeling.text_conditioning import TextCrossAttention, TextProjection
from pmp.prompts import parse_prompts
from pmp.segmenter import Segmenter
from pmp.stage2 import classify_proposals

PROFILE_ROWS = 12


def stage1_inputs(
    segmenter: Segmenter, image: np.ndarray, count: int, image_size: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalised pixel batch and text embeddings stage 1 sees in a request."""
    config = segmenter.config
    pixels, _ = segmenter.preprocess(load_image(image), image_size or config.image_size)
    labels = parse_prompts(prompt_text(count), max_prompts=count)
    with torch.inference_mode():
        text = segmenter.clip.encode_text(labels).to(segmenter.device)
    return normalize_pixels(pixels, config.pixel_mean, config.pixel_std), text[None]


def stage1_overhead(
    pair: dict[str, Segmenter], image: np.ndarray, count: int, repeats: int, image_size: int | None
) -> dict[str, Any]:
    """PMP's stage-1 cost over the baseline's: interleaved forwards of both on identical inputs."""
    pixels, text = stage1_inputs(pair["baseline"], image, count, image_size)
    device = pixels.device
    times: dict[str, list[float]] = {name: [] for name in pair}
    with torch.inference_mode():
        for segmenter in pair.values():  # warm-up
            with segmenter._autocast():
                segmenter.proposal_model(pixels, text, return_aux=False)
        for _ in range(repeats):
            for name, segmenter in pair.items():
                synchronize(device)
                start = time.perf_counter()
                with segmenter._autocast():
                    segmenter.proposal_model(pixels, text, return_aux=False)
                synchronize(device)
                times[name].append(time.perf_counter() - start)
    baseline, pmp = statistics.median(times["baseline"]), statistics.median(times["pmp"])
    pair_ratios = [p / b for p, b in zip(times["pmp"], times["baseline"])]
    text_s, total_s = text_path_time(pair["pmp"], pixels, text)
    return {
        "prompts": count,
        "repeats": repeats,
        "baseline_s": baseline,
        "pmp_s": pmp,
        "overhead": statistics.median(pair_ratios) - 1.0,  # adjacent runs share the machine's load: robust
        "overhead_of_medians": pmp / baseline - 1.0,
        "baseline_all_s": times["baseline"],
        "pmp_all_s": times["pmp"],
        "pmp_text_path_s": text_s,
        "pmp_forward_s": total_s,
    }


def text_path_time(segmenter: Segmenter, pixels: torch.Tensor, text: torch.Tensor) -> tuple[float, float]:
    """Seconds one PMP forward spends in its text path (projection + text cross-attentions), and in all.

    This is where PMP's stage-1 overhead goes; timed with forward hooks on those modules.
    """

    modules = [m for m in segmenter.proposal_model.modules() if isinstance(m, (TextCrossAttention, TextProjection))]
    starts: dict[int, float] = {}
    spent: list[float] = []

    def before(module: torch.nn.Module, _: Any) -> None:
        synchronize(pixels.device)
        starts[id(module)] = time.perf_counter()

    def after(module: torch.nn.Module, _: Any, __: Any) -> None:
        synchronize(pixels.device)
        spent.append(time.perf_counter() - starts[id(module)])

    handles = [h for m in modules for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]
    try:
        with torch.inference_mode(), segmenter._autocast():
            synchronize(pixels.device)
            start = time.perf_counter()
            segmenter.proposal_model(pixels, text, return_aux=False)
            synchronize(pixels.device)
            total = time.perf_counter() - start
    finally:
        for handle in handles:
            handle.remove()
    return sum(spent), total


@dataclass
class Stage2Inputs:
    """One request's stage-2 inputs (stage 1 run once), to time stage 2 alone on them again and again."""

    pixels: torch.Tensor
    valid_hw: tuple[int, int]
    mask_logits: torch.Tensor
    text: torch.Tensor
    p: torch.Tensor

    @classmethod
    def of(cls, segmenter: Segmenter, image: np.ndarray, count: int, image_size: int | None) -> "Stage2Inputs":
        _, result = request(segmenter, image, prompt_text(count), image_size=image_size)
        pixels, valid_hw = segmenter.preprocess(load_image(image), image_size or segmenter.config.image_size)
        device = segmenter.device
        text = segmenter.clip.encode_text(result.labels).to(device)
        return cls(pixels, valid_hw, result.mask_logits.to(device), text, torch.from_numpy(result.p).to(device))

    def timed(self, segmenter: Segmenter, mode: str, views: tuple[str, ...] = ("masked",)) -> float:
        """Seconds of one stage-2 pass in ``mode`` (``views`` for crops), at the segmenter's settings."""
        synchronize(segmenter.device)
        start = time.perf_counter()
        with torch.inference_mode(), segmenter._autocast():
            classify_proposals(
                segmenter.clip,
                self.pixels,
                self.valid_hw,
                self.mask_logits,
                self.text,
                self.p,
                mode,
                crop_top_k=segmenter.config.crop_top_k,
                crop_views=views,
                vit_dense_scale=segmenter.vit_dense_scale,
            )
        synchronize(segmenter.device)
        return time.perf_counter() - start


def stage2_pool_vs_crop(
    segmenter: Segmenter, image: np.ndarray, count: int, repeats: int, image_size: int | None
) -> dict[str, Any]:
    """Stage 2 alone on one set of stage-1 proposals: mask pooling vs OVSeg crops of every proposal, and
    those crops read in the model's own ``crop_views`` (when it has more than OVSeg's masked crop)."""
    inputs = Stage2Inputs.of(segmenter, image, count, image_size)
    num = inputs.mask_logits.shape[0]

    def stage2(mode: str, views: tuple[str, ...] = ("masked",)) -> float:
        return inputs.timed(segmenter, mode, views)

    original = segmenter.config
    segmenter.config = dataclasses.replace(original, crop_top_k=num)  # crop every proposal
    try:
        stage2("pool")
        pool = statistics.median(stage2("pool") for _ in range(max(repeats, 3)))
        crop = stage2("crop")  # one forward per proposal: expensive, measured once (after the pool warm-up)
        views = tuple(original.crop_views)
        # the model's views, median of interleaved pairs with OVSeg's crop (the ratio is the cost of the views)
        pairs = (
            [(stage2("crop"), stage2("crop", views)) for _ in range(max(repeats, 3))] if views != ("masked",) else []
        )
    finally:
        segmenter.config = original
    result = {"proposals": num, "prompts": count, "pool_s": pool, "crop_s": crop, "speedup": crop / pool}
    if pairs:
        result.update(
            crop_views="+".join(views),
            crop_masked_s=statistics.median(a for a, _ in pairs),
            crop_views_s=statistics.median(b for _, b in pairs),
            crop_views_ratio=statistics.median(b / a for a, b in pairs),
        )
    return result


def text_cache(segmenter: Segmenter, count: int, repeats: int) -> dict[str, Any]:
    """encode_text of ``count`` prompts: encoded (cache emptied first) vs served from the cache."""
    labels = parse_prompts(prompt_text(count), max_prompts=count)
    clip = segmenter.clip

    def encode(clear: bool) -> float:
        if clear:
            clip.clear_cache()
        synchronize(segmenter.device)
        start = time.perf_counter()
        with torch.inference_mode():
            clip.encode_text(labels)
        synchronize(segmenter.device)
        return time.perf_counter() - start

    encode(True)  # warm the text tower's kernels
    encoded = statistics.median(encode(True) for _ in range(max(repeats, 3)))
    cached = statistics.median(encode(False) for _ in range(20))
    return {
        "prompts": count,
        "templates": len(clip.config.templates),
        "encode_s": encoded,
        "cached_s": cached,
        "speedup": encoded / cached,
    }


def profile_request(segmenter: Segmenter, image: np.ndarray, text: str, image_size: int | None) -> str:
    """torch.profiler's top operators of one warm request (printed where a target is missed)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if segmenter.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        request(segmenter, image, text, image_size=image_size)
    sort = "self_device_time_total" if segmenter.device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=PROFILE_ROWS, max_name_column_width=48)
