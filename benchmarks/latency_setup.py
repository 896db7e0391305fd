"""The latency harness's models, inputs and one timed request (:mod:`benchmarks.latency`): what is measured and
how, apart from what is reported."""

from __future__ import annotations

import dataclasses
import os
import platform
import resource
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pmp.checkpoint import BUNDLED_DIR
from pmp.config import SegmenterConfig
from pmp.prompts import parse_prompts
from pmp.segmenter import Segmenter
from train.recipes import get_recipe, world_model
from train.world import benchmark_sample
from train.world.vocabulary import CLASS_NAMES, PART_NAMES

MODEL_KEYS = ("bundled", "r50", "swinb")


PAPER_BACKBONES = {"r50": "resnet50", "swinb": "swin_base_patch4_window12_384"}


PAPER_RECIPES = {"r50": "m2f-r50-vitb16", "swinb": "m2f-swinb-vitl14"}


STAGES = ("text", "stage1", "stage2", "post", "total")


COLOURS = ("red", "blue", "green", "yellow", "white", "black", "brown", "grey", "orange", "pink")


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

    image, _ = benchmark_sample("world-full", 0, side)
    return image


def prompt_text(count: int) -> str:
    """``count`` distinct class names as the comma list a user would type."""

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


# -------------------------------------------------------------------------------------- reporting
def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:9.1f}"
