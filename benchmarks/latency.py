"""Per-stage latency of the baseline and PMP segmenters side by side, and the project's speed targets.

Usage (from the repository root; the defaults run everything: about 4-5 minutes on 2 quiet CPU cores,
11 minutes on a 2-core machine at load average 6-11):

    python -m benchmarks.latency
    python -m benchmarks.latency --models bundled --prompts 10 --repeats 5 --json latency.json
    python -m benchmarks.latency --models r50 --prompts 10 --autocast bfloat16

Models (``--models``, comma-separated):
    bundled  checkpoints/baseline and checkpoints/pmp; random-weight ``train.recipes.world_model`` when a
             checkpoint is missing (said in the output). Input image ``--image-size`` (default 512) px,
             resized by the model to its own 128 px.
    r50      paper scale, random weights: ``recipes/m2f-r50-vitb16.json``'s model, CLIP ViT-B/16,
             100 queries, stage 1 at ``--image-size`` (default 640) px.
    swinb    the same with timm's ``swin_base_patch4_window12_384`` backbone.

For every model, baseline (``text_mode="none"``) and PMP run in the same process on the same image and
prompts, interleaved. Per prompt count: one *cold* request (text cache emptied; the first one also is
the first call after construction) and ``--repeats`` *warm* requests (median reported). A request is
what the app and the CLI do: parse the prompt text, check token limits, encode (cached), stage 1,
stage 2, post-processing. Stages: ``text`` (parse + encode), ``stage1``, ``stage2``, ``post``, ``total``
(wall time of the whole request). Peak memory: RSS high-water mark per request (Linux clear_refs),
CUDA ``max_memory_allocated`` on GPU.

Per model also: PMP's stage-1 overhead (interleaved forwards on identical inputs, and the share of a PMP
forward spent in its text path); stage 2 alone, mask pooling vs OVSeg crops of every proposal; the text
cache (encoding vs cache hits); for the paper-scale CLIP (shared by r50 and swinb, so measured once) the
ViT dense-pass resolution trade-off (``Segmenter.vit_dense_scale``), and for r50 float32 vs bfloat16
autocast (time, and how far the outputs move). ``--reference FOLDER`` times another checkpoint (the
previous bundled baseline, say) against the bundled baseline, interleaved: how much a change of model
costs, measured side by side so that the machine's speed on the day cancels out of the ratio.

Targets (printed as PASS/MISS/SKIP lines, kept in the JSON): PMP stage-1 overhead <= 3%; pooled stage 2
>= 10x faster than crops of all proposals; cached prompts >= 50x faster than encoding them; bundled warm
512 px / 10 prompts <= 0.1 s; paper R50 640 px / 10 prompts <= 2 s (both on CPU); GPU 640 px / 20 prompts
<= 0.10 s. A missed latency target prints a torch.profiler table of one request.

On a busy machine, set ``OMP_WAIT_POLICY=PASSIVE``: with more runnable threads than cores, OpenMP's
spin-waiting otherwise makes multi-threaded requests up to ~100x slower (seen: bundled 2.8 s instead
of 30 ms). On a quiet machine leave it unset (the default, active waiting, is the fastest there).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.ops import roi_align

from pmp.allocator import release_freed_memory, retain_freed_memory
from pmp.config import AUTOCAST_NAMES, SegmenterConfig
from pmp.images import load_image, normalize_pixels
from pmp.postprocess import upsample
from pmp.prompts import parse_prompts
from pmp.segmenter import AUTOCAST_DTYPES, Segmenter
from pmp.stage2 import classify_proposals, crop_sources, dense_input, masked_crops, square_box_samples

MODEL_KEYS = ("bundled", "r50", "swinb")
PAPER_BACKBONES = {"r50": "resnet50", "swinb": "swin_base_patch4_window12_384"}
PAPER_RECIPES = {"r50": "m2f-r50-vitb16", "swinb": "m2f-swinb-vitl14"}
STAGES = ("text", "stage1", "stage2", "post", "total")
COLOURS = ("red", "blue", "green", "yellow", "white", "black", "brown", "grey", "orange", "pink")
PROFILE_ROWS = 12

OVERHEAD_LIMIT = 0.03
POOL_SPEEDUP = 10.0
CACHE_SPEEDUP = 50.0
BUNDLED_LIMIT_S = 0.1
R50_LIMIT_S = 2.0
GPU_LIMIT_S = 0.10
GPU_PROMPTS = 20


# ----------------------------------------------------------------------------------------- set-up
def hardware(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on (the JSON and the header of the printout)."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "env": {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")},
    }
    return info


def paper_config(key: str, text_mode: str) -> SegmenterConfig:
    """The Mask2Former-style recipe's model (``recipes/m2f-*.json``) with random weights, and with the CLIP
    the recorded figures were measured with: ViT-B/16 and one template, for both backbones."""
    from train.recipes import get_recipe

    variant = "baseline" if text_mode == "none" else text_mode
    config = get_recipe(f"{PAPER_RECIPES[key]}-{variant}").model
    config.clip = dataclasses.replace(
        config.clip, model_name="ViT-B-16", pretrained=None, templates=("a photo of a {}.",)
    )
    config.backbone = dataclasses.replace(config.backbone, pretrained_file=None)  # random: never read any
    return config


def _repo_relative(path: Path) -> str:
    """A path as the results files may record it: relative to the repository, never the machine's."""
    try:
        return str(Path(path).resolve().relative_to(Path(__file__).resolve().parent.parent))
    except ValueError:
        return Path(path).name


def build_pair(key: str, device: torch.device) -> tuple[dict[str, Segmenter], str]:
    """The baseline and PMP segmenters of one model key, and a note on where their weights came from."""
    if key == "bundled":
        from pmp.checkpoint import BUNDLED_DIR
        from train.recipes import world_model

        pair, notes = {}, []
        for name, mode in (("baseline", "none"), ("pmp", "pmp")):
            folder = BUNDLED_DIR / name
            if (folder / "config.json").is_file():  # weights may be one file or shards
                pair[name] = Segmenter.from_pretrained(folder, device=device)
                notes.append(f"{name}: {_repo_relative(folder)}")
            else:
                torch.manual_seed(0)
                pair[name] = Segmenter(world_model(mode)).to(device).eval()
                notes.append(f"{name}: RANDOM weights (train.recipes.world_model; {_repo_relative(folder)} missing)")
        return pair, "; ".join(notes)
    pair = {}
    for name, mode in (("baseline", "none"), ("pmp", "pmp")):
        torch.manual_seed(0)
        pair[name] = Segmenter(paper_config(key, mode)).to(device).eval()
    return (
        pair,
        f"random weights: recipes/{PAPER_RECIPES[key]}.json's model, CLIP ViT-B-16",
    )


def test_image(side: int) -> np.ndarray:
    """A synthetic-world street scene, side x side uint8 RGB (the same for every model)."""
    from train.world import benchmark_sample

    image, _ = benchmark_sample("world-full", 0, side)
    return image


def prompt_text(count: int) -> str:
    """``count`` distinct class names as the comma list a user would type."""
    from train.world.vocabulary import CLASS_NAMES, PART_NAMES

    names = list(dict.fromkeys(CLASS_NAMES + PART_NAMES))
    names += [f"{colour} {name}" for colour in COLOURS for name in CLASS_NAMES]
    if count > len(names):
        raise ValueError(f"at most {len(names)} distinct prompts are available, got --prompts {count}")
    return ", ".join(names[:count])


# ------------------------------------------------------------------------------------ measurement
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory of one block: RSS high-water mark (reset through /proc/self/clear_refs on Linux,
    else the process-wide ``ru_maxrss``), and CUDA ``max_memory_allocated``."""

    def __init__(self, device: torch.device):
        self.device = device
        self.resettable = self._reset_rss()

    @staticmethod
    def _reset_rss() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            return True
        except OSError:
            return False

    @staticmethod
    def _status_mb(field_name: str) -> float | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return None

    def __enter__(self) -> "PeakMemory":
        self.resettable = self._reset_rss()
        self.rss_before_mb = self._status_mb("VmRSS")
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc: Any) -> None:
        hwm = self._status_mb("VmHWM") if self.resettable else None
        self.peak_rss_mb = hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.cuda_peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else None


def request(segmenter: Segmenter, image: np.ndarray, text: str, **options: Any) -> tuple[dict[str, float], Any]:
    """One app/CLI request: parse + token check + segment. Returns the stage timings (seconds) and the result.

    ``Segmenter.forward`` would refuse more prompts than the model's ``max_prompts``; the benchmark
    measures 100 prompts on every model, so it parses with the limit raised and calls ``segment``.
    """
    device = segmenter.device
    synchronize(device)
    start = time.perf_counter()
    labels = parse_prompts(
        text,
        max_prompts=max(segmenter.config.max_prompts, text.count(",") + 1),
        max_chars=segmenter.config.max_prompt_chars,
    )
    segmenter.check_token_limit(labels)
    parse_seconds = time.perf_counter() - start
    result = segmenter.segment(image, labels, **options)
    synchronize(device)
    timings = {stage: result.timings[stage] for stage in ("stage1", "stage2", "post")}
    timings["text"] = result.timings["text"] + parse_seconds
    timings["total"] = time.perf_counter() - start
    return timings, result


@dataclass
class Series:
    """All measured requests of one (model, variant, prompt count)."""

    cold: dict[str, float] = field(default_factory=dict)
    first_call_after_construction: bool = False
    warm: list[dict[str, float]] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    cuda_peak_mb: float | None = None

    def warm_median(self) -> dict[str, float]:
        return {stage: statistics.median(t[stage] for t in self.warm) for stage in STAGES} if self.warm else {}

    def to_json(self) -> dict[str, Any]:
        return {
            "cold": self.cold,
            "cold_is_first_call_after_construction": self.first_call_after_construction,
            "warm_median": self.warm_median(),
            "warm": self.warm,
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "cuda_peak_mb": None if self.cuda_peak_mb is None else round(self.cuda_peak_mb, 1),
        }


def measured(series: Series, memory: PeakMemory) -> None:
    series.peak_rss_mb = max(series.peak_rss_mb, memory.peak_rss_mb)
    if memory.cuda_peak_mb is not None:
        series.cuda_peak_mb = max(series.cuda_peak_mb or 0.0, memory.cuda_peak_mb)


def measure_pair(
    pair: dict[str, Segmenter],
    image: np.ndarray,
    prompt_counts: list[int],
    repeats: int,
    image_size: int | None,
    first: bool,
) -> dict[int, dict[str, Series]]:
    """Cold then warm requests for each prompt count, baseline and PMP interleaved."""
    device = next(iter(pair.values())).device
    results: dict[int, dict[str, Series]] = {}
    for index, count in enumerate(prompt_counts):
        text = prompt_text(count)
        series = {name: Series() for name in pair}
        for name, segmenter in pair.items():
            segmenter.clip.clear_cache()
            with PeakMemory(device) as memory:
                series[name].cold, _ = request(segmenter, image, text, image_size=image_size)
            series[name].first_call_after_construction = first and index == 0
            measured(series[name], memory)
        for _ in range(repeats):
            for name, segmenter in pair.items():
                with PeakMemory(device) as memory:
                    timings, _ = request(segmenter, image, text, image_size=image_size)
                series[name].warm.append(timings)
                measured(series[name], memory)
        results[count] = series
    return results


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
    from pmp.modeling.text_conditioning import TextCrossAttention, TextProjection

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


def readme_rows(results: dict[str, Any]) -> str:
    """The README's bundled rows of the warm-median table (ms, 10 prompts), from a ``--json`` file of
    ``--models bundled --prompts 10``."""
    bundled = results["models"]["bundled"]
    side = bundled["image_side"]
    lines = []
    for name, title in (("baseline", "baseline"), ("pmp", "PMP")):
        t = bundled["results"]["10"][name]["warm_median"]
        cells = " | ".join(f"{1000 * t[stage]:.1f}" for stage in STAGES)
        lines.append(f"| bundled {title}, {side} px image | {cells} |")
    return "\n".join(lines) + "\n"


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


def stage2_pool_vs_crop(
    segmenter: Segmenter, image: np.ndarray, count: int, repeats: int, image_size: int | None
) -> dict[str, Any]:
    """Stage 2 alone on one set of stage-1 proposals: mask pooling vs OVSeg crops of every proposal, and
    those crops read in the model's own ``crop_views`` (when it has more than OVSeg's masked crop)."""
    _, result = request(segmenter, image, prompt_text(count), image_size=image_size)
    pixels, valid_hw = segmenter.preprocess(load_image(image), image_size or segmenter.config.image_size)
    mask_logits = result.mask_logits.to(segmenter.device)
    text = segmenter.clip.encode_text(result.labels).to(segmenter.device)
    p = torch.from_numpy(result.p).to(segmenter.device)
    num = mask_logits.shape[0]

    def stage2(mode: str, views: tuple[str, ...] = ("masked",)) -> float:
        synchronize(segmenter.device)
        start = time.perf_counter()
        with torch.inference_mode(), segmenter._autocast():
            classify_proposals(
                segmenter.clip,
                pixels,
                valid_hw,
                mask_logits,
                text,
                p,
                mode,
                crop_top_k=segmenter.config.crop_top_k,
                crop_views=views,
                vit_dense_scale=segmenter.vit_dense_scale,
            )
        synchronize(segmenter.device)
        return time.perf_counter() - start

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


def dense_resolution_tradeoff(segmenter: Segmenter, image: np.ndarray, image_size: int | None) -> list[dict[str, Any]]:
    """Stage 2 (pool) time with a ViT CLIP's dense pass at several input sides (``vit_dense_scale``).

    Time only: with random CLIP weights, how the scores change says nothing about accuracy.
    """
    if not hasattr(segmenter.clip.open_clip.visual, "patch_size"):
        return []
    _, result = request(segmenter, image, prompt_text(10), image_size=image_size)
    pixels, valid_hw = segmenter.preprocess(load_image(image), image_size or segmenter.config.image_size)
    mask_logits = result.mask_logits.to(segmenter.device)
    text = segmenter.clip.encode_text(result.labels).to(segmenter.device)
    p = torch.from_numpy(result.p).to(segmenter.device)
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
            synchronize(segmenter.device)
            start = time.perf_counter()
            with torch.inference_mode(), segmenter._autocast():
                classify_proposals(
                    segmenter.clip,
                    pixels,
                    valid_hw,
                    mask_logits,
                    text,
                    p,
                    "pool",
                    crop_top_k=segmenter.config.crop_top_k,
                    vit_dense_scale=segmenter.vit_dense_scale,
                )
            synchronize(segmenter.device)
            rows.append(
                {
                    "side": side,
                    "tokens": (side // patch) ** 2,
                    "stage2_s": time.perf_counter() - start,
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


def profile_request(segmenter: Segmenter, image: np.ndarray, text: str, image_size: int | None) -> str:
    """torch.profiler's top operators of one warm request (printed where a target is missed)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if segmenter.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        request(segmenter, image, text, image_size=image_size)
    sort = "self_device_time_total" if segmenter.device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=PROFILE_ROWS, max_name_column_width=48)


# -------------------------------------------------------------------------------------- reporting
def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:9.1f}"


def print_table(
    key: str, note: str, side: int, results: dict[int, dict[str, Series]], build_s: dict[str, float]
) -> None:
    print(f"\n== {key}: {note}")
    print(f"   image {side} px; build: " + ", ".join(f"{n} {s:.1f} s" for n, s in build_s.items()))
    header = (
        f"{'prompts':>7}  {'phase':<5}  {'model':<8}"
        + "".join(f"{s + ' ms':>10}" for s in STAGES)
        + f"{'peak RSS MB':>13}"
    )
    print(header)
    for count, series in results.items():
        for phase in ("cold", "warm"):
            for name, s in series.items():
                timings = s.cold if phase == "cold" else s.warm_median()
                mark = "*" if phase == "cold" and s.first_call_after_construction else " "
                memory = f"{s.peak_rss_mb:13.0f}" + (
                    f"  cuda {s.cuda_peak_mb:.0f} MB" if s.cuda_peak_mb is not None else ""
                )
                print(
                    f"{count:>7}  {phase:<4}{mark}  {name:<8}"
                    + "".join(f"{ms(timings.get(st)):>10}" for st in STAGES)
                    + (memory if phase == "warm" else "")
                )
    print(
        "   (* = first call after construction; warm = median; peak RSS = high-water mark over the model's requests,"
        " both models' weights included)"
    )


def target_line(name: str, status: str, detail: str) -> dict[str, str]:
    return {"target": name, "status": status, "detail": detail}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=",".join(MODEL_KEYS), help=f"comma list of {', '.join(MODEL_KEYS)}")
    parser.add_argument("--prompts", default="1,10,100", help="comma list of prompt counts")
    parser.add_argument("--repeats", type=int, default=3, help="warm requests per model and prompt count (median)")
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="input image side in px (default: 512 bundled, 640 paper scale; paper models run stage 1 at it)",
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    parser.add_argument(
        "--autocast",
        default="none",
        choices=AUTOCAST_NAMES,
        help="Segmenter.autocast_dtype for every request (default none = float32)",
    )
    parser.add_argument(
        "--overhead-repeats",
        type=int,
        default=None,
        help="interleaved stage-1 forward pairs (default 20 bundled, 4 paper scale)",
    )
    parser.add_argument(
        "--no-extras", action="store_true", help="skip the ViT dense-resolution, bfloat16 and flip-test comparisons"
    )
    parser.add_argument(
        "--reference",
        type=Path,
        default=None,
        metavar="FOLDER",
        help="with the bundled models: also time this checkpoint against the bundled baseline, interleaved",
    )
    parser.add_argument(
        "--allocator",
        choices=("retain", "system"),
        default="retain",
        help="retain: glibc keeps freed blocks for reuse, as the app and the CLI set it (pmp.allocator); "
        "system: glibc as it starts",
    )
    parser.add_argument("--no-profile", action="store_true", help="do not profile missed targets")
    parser.add_argument("--json", type=Path, default=None, help="write every figure to this JSON file")
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in args.models if m not in MODEL_KEYS]
    if bad or not args.models:
        parser.error(f"--models: unknown or no model(s) {bad}; accepted: {', '.join(MODEL_KEYS)}")
    try:
        args.prompts = [int(p) for p in args.prompts.split(",") if p.strip()]
    except ValueError:
        parser.error(f"--prompts takes a comma list of integers, got {args.prompts!r}")
    if not args.prompts or min(args.prompts) < 1:
        parser.error("--prompts needs positive counts")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.image_size is not None and (args.image_size < 32 or args.image_size % 32):
        parser.error(f"--image-size must be a positive multiple of 32, got {args.image_size}")
    return args


# ------------------------------------------------------------------------------------------- main
def end_to_end_targets(
    key: str,
    entry: dict[str, Any],
    pair: dict[str, Segmenter],
    image: np.ndarray,
    stage1_size: int | None,
    device: torch.device,
    args: argparse.Namespace,
) -> list[dict[str, str]]:
    """The CPU latency target of this model (bundled or r50), with a profile of each miss."""
    wanted = {
        "bundled": (512, 10, BUNDLED_LIMIT_S, "bundled, warm, 512 px, 10 prompts <= 0.1 s on CPU"),
        "r50": (640, 10, R50_LIMIT_S, "paper R50, 640 px, 10 prompts <= 2 s on CPU"),
    }
    if key not in wanted:
        return []
    side, count, limit, title = wanted[key]
    if device.type != "cpu":
        return [target_line(title, "SKIP", f"measured on {device}, not on the CPU")]
    if entry["image_side"] != side or str(count) not in entry["results"]:
        return [target_line(title, "SKIP", f"not measured: needs --models {key} --prompts {count} --image-size {side}")]
    breakdowns = {name: entry["results"][str(count)][name]["warm_median"] for name in ("baseline", "pmp")}
    return latency_target_lines(
        title, breakdowns, limit, "", pair, image, count, stage1_size, args, entry, "{name}/" + str(count)
    )


def latency_target_lines(
    title: str,
    breakdowns: dict[str, dict[str, float]],
    limit: float,
    where: str,
    pair: dict[str, Segmenter],
    image: np.ndarray,
    count: int,
    side: int,
    args: argparse.Namespace,
    entry: dict[str, Any],
    profile_key: str,
) -> list[dict[str, str]]:
    """PASS/MISS per model for a warm end-to-end latency limit; each miss prints and stores a profile.

    ``profile_key`` names the stored profile, with ``{name}`` standing for the model (baseline / pmp).
    """
    lines = []
    for name, breakdown in breakdowns.items():
        status = "PASS" if breakdown["total"] <= limit else "MISS"
        lines.append(
            target_line(
                f"{title} [{name}]",
                status,
                f"{breakdown['total']:.3f} s warm median{where} ("
                + ", ".join(f"{st} {breakdown[st]:.3f}" for st in STAGES[:-1])
                + ")",
            )
        )
        if status == "MISS" and not args.no_profile:
            table = profile_request(pair[name], image, prompt_text(count), side)
            entry.setdefault("profiles", {})[profile_key.format(name=name)] = table
            print(f"   MISS {title} [{name}]: {breakdown['total']:.3f} s; profile of one warm request:\n{table}")
    return lines


def gpu_target(
    pair: dict[str, Segmenter],
    image: np.ndarray,
    side: int,
    args: argparse.Namespace,
    entry: dict[str, Any],
    gpu_name: str,
) -> list[dict[str, str]]:
    """Paper R50 on the GPU at 20 prompts: warm end-to-end latency, with a profile of each miss."""
    title = f"GPU {side} px, {GPU_PROMPTS} prompts <= 0.10 s, paper R50"
    series = measure_pair(pair, image, [GPU_PROMPTS], max(args.repeats, 5), side, False)[GPU_PROMPTS]
    entry["gpu_20_prompts"] = {name: s.to_json() for name, s in series.items()}
    breakdowns = {name: s.warm_median() for name, s in series.items()}
    return latency_target_lines(
        title, breakdowns, GPU_LIMIT_S, f" on {gpu_name}", pair, image, GPU_PROMPTS, side, args, entry, "gpu/{name}"
    )


def benchmark_model(
    key: str,
    args: argparse.Namespace,
    device: torch.device,
    autocast: torch.dtype | None,
    first: bool,
    measure_clip: bool,
    hw: dict[str, Any],
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Everything measured on one model pair; returns its JSON entry and its target lines."""
    side = args.image_size or (512 if key == "bundled" else 640)
    stage1_size = None if key == "bundled" else side
    start = time.perf_counter()
    pair, note = build_pair(key, device)
    for segmenter in pair.values():
        segmenter.autocast_dtype = autocast
    build_s = {"both": time.perf_counter() - start}
    image = test_image(side)
    results = measure_pair(pair, image, args.prompts, args.repeats, stage1_size, first)
    print_table(key, note, side, results, build_s)
    entry: dict[str, Any] = {
        "note": note,
        "image_side": side,
        "stage1_side": stage1_size or pair["pmp"].config.image_size,
        "build_s": build_s,
        "results": {str(c): {n: s.to_json() for n, s in series.items()} for c, series in results.items()},
    }
    lines: list[dict[str, str]] = []

    count = 10 if 10 in args.prompts else args.prompts[0]
    repeats = args.overhead_repeats or (20 if key == "bundled" else 4)
    o = entry["stage1_overhead"] = stage1_overhead(pair, image, count, repeats, stage1_size)
    print(
        f"   stage-1 forward, {repeats} interleaved pairs at {count} prompts: "
        f"baseline {ms(o['baseline_s']).strip()} ms, "
        f"PMP {ms(o['pmp_s']).strip()} ms (medians) -> overhead {o['overhead']:+.1%} (median of the pairs' ratios; "
        f"ratio of the medians {o['overhead_of_medians']:+.1%})"
    )
    status = "PASS" if o["overhead"] <= OVERHEAD_LIMIT else "MISS"
    lines.append(
        target_line(
            f"PMP stage-1 overhead <= 3% ({key})",
            status,
            f"{o['overhead']:+.1%} (median ratio of {repeats} interleaved pairs at {count} prompts, "
            f"{ms(o['baseline_s']).strip()} -> {ms(o['pmp_s']).strip()} ms; text path "
            f"{o['pmp_text_path_s'] / o['pmp_forward_s']:.1%} of a PMP forward)",
        )
    )
    print(
        f"   PMP's text path (projection + {pair['pmp'].config.decoder.num_layers} text cross-attentions) in one "
        f"forward: {ms(o['pmp_text_path_s']).strip()} of {ms(o['pmp_forward_s']).strip()} ms "
        f"({o['pmp_text_path_s'] / o['pmp_forward_s']:.1%})"
        + ("  <- where the overhead goes" if status == "MISS" else "")
    )

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

    if measure_clip:  # stage 2 and the text cache depend on the CLIP only: r50 and swinb share theirs
        c = entry["stage2_pool_vs_crop"] = stage2_pool_vs_crop(pair["pmp"], image, count, args.repeats, stage1_size)
        print(
            f"   stage 2 at {c['proposals']} proposals, {c['prompts']} prompts: pool {ms(c['pool_s']).strip()} ms, "
            f"crop (all proposals) {ms(c['crop_s']).strip()} ms -> {c['speedup']:.1f}x"
        )
        if "crop_views" in c:
            print(
                f"   the model's crop views ({c['crop_views']}) against masked crops alone, interleaved: "
                f"{ms(c['crop_views_s']).strip()} vs {ms(c['crop_masked_s']).strip()} ms -> "
                f"{c['crop_views_ratio']:.2f}x"
            )
        if pair["pmp"].config.stage2_mode == "crop":
            f = entry["crop_fast_paths"] = crop_fast_paths(pair["pmp"], image, count, args.repeats)
            print(
                f"   crop fast paths, {f['pairs']} interleaved pairs on {f['crops']} crops of {f['boxes']} proposals: "
                f"resampling roi_align {ms(f['resampling']['library_s']).strip()} vs grid_sample "
                f"{ms(f['resampling']['ours_s']).strip()} ms -> {f['resampling']['speedup']:.1f}x; image tower "
                f"open_clip's {ms(f['image_tower']['library_s']).strip()} vs the inference tower "
                f"{ms(f['image_tower']['ours_s']).strip()} ms -> {f['image_tower']['speedup']:.2f}x"
            )
        name = f"pooled stage 2 >= 10x faster than crops of all proposals ({key}, {c['proposals']} proposals)"
        lines.append(
            target_line(
                name + ("" if c["proposals"] >= 100 else " [the model has fewer than 100 queries]"),
                "PASS" if c["speedup"] >= POOL_SPEEDUP else "MISS",
                f"{c['speedup']:.1f}x ({ms(c['pool_s']).strip()} vs {ms(c['crop_s']).strip()} ms)",
            )
        )
        t = entry["text_cache"] = text_cache(pair["pmp"], max(args.prompts), args.repeats)
        print(
            f"   text: {t['prompts']} prompts x {t['templates']} templates encoded {ms(t['encode_s']).strip()} ms, "
            f"from the cache {t['cached_s'] * 1e6:.0f} us -> {t['speedup']:.0f}x"
        )
        lines.append(
            target_line(
                f"cached prompts >= 50x faster than encoding them ({key}, {t['prompts']} prompts)",
                "PASS" if t["speedup"] >= CACHE_SPEEDUP else "MISS",
                f"{t['speedup']:.0f}x ({ms(t['encode_s']).strip()} ms vs {t['cached_s'] * 1e6:.0f} us)",
            )
        )

    if key != "bundled" and not args.no_extras and measure_clip:
        rows = entry["vit_dense_resolution"] = dense_resolution_tradeoff(pair["pmp"], image, stage1_size)
        for row in rows:
            print(
                f"   ViT dense pass at {row['side']:>4} px ({row['tokens']:>4} tokens): "
                f"stage 2 {ms(row['stage2_s']).strip()} ms"
                f"{'  <- default (Segmenter.vit_dense_scale)' if row['default'] else ''}"
            )
    if key in ("bundled", "r50") and autocast is None and not args.no_extras:
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

    if key == "bundled" and not args.no_extras:
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

    lines += end_to_end_targets(key, entry, pair, image, stage1_size, device, args)
    if key == "r50" and device.type == "cuda":
        lines += gpu_target(pair, image, side, args, entry, hw["gpu"])
    return entry, lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device is available", file=sys.stderr)
        return 2
    device = torch.device("cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    autocast = AUTOCAST_DTYPES[args.autocast]
    hw = hardware(device)
    # the app's and the CLI's setting unless told otherwise; "system" leaves glibc as it started
    args.allocator_applied = retain_freed_memory() if args.allocator == "retain" else False
    report: dict[str, Any] = {
        "hardware": hw,
        "settings": {
            "models": args.models,
            "prompts": args.prompts,
            "repeats": args.repeats,
            "image_size": args.image_size,
            "autocast": args.autocast,
            "allocator": args.allocator
            if args.allocator_applied or args.allocator == "system"
            else "system (not glibc)",
        },
        "models": {},
        "targets": [],
    }
    print(
        f"CPU: {hw['cpu']} ({hw['cpu_cores']} cores, {hw['cpu_cores_usable']} usable), torch {hw['torch']} with "
        f"{hw['torch_threads']} threads; device {hw['device']}"
        + (f" ({hw['gpu']})" if hw["gpu"] else "")
        + f"; load average {hw['load_average_at_start']}; OMP_WAIT_POLICY={hw['env']['OMP_WAIT_POLICY']}"
        + f"; allocator {report['settings']['allocator']}"
    )

    started = time.perf_counter()
    clip_measured = False
    for index, key in enumerate(args.models):
        measure_clip = key == "bundled" or not clip_measured
        entry, lines = benchmark_model(key, args, device, autocast, index == 0, measure_clip, hw)
        clip_measured = clip_measured or key != "bundled"
        report["models"][key] = entry
        report["targets"] += lines
        gc.collect()
    if device.type != "cuda":
        report["targets"].append(
            {"target": "GPU 640 px, 20 prompts <= 0.10 s", "status": "SKIP", "detail": "no GPU available"}
        )
    elif "r50" not in args.models:
        report["targets"].append(
            {
                "target": "GPU 640 px, 20 prompts <= 0.10 s",
                "status": "SKIP",
                "detail": "not measured: needs --models r50",
            }
        )

    print("\n== targets")
    for line in report["targets"]:
        print(f"{line['status']:<5} {line['target']}: {line['detail']}")
    hw["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    hw["benchmark_wall_s"] = time.perf_counter() - started
    print(f"benchmark wall time {hw['benchmark_wall_s']:.0f} s; load average at the end {hw['load_average_at_end']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
