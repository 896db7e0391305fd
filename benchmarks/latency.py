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
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from benchmarks.latency_parts import profile_request, stage1_overhead, stage2_pool_vs_crop, text_cache
from benchmarks.latency_setup import (
    MODEL_KEYS,
    STAGES,
    Series,
    build_pair,
    hardware,
    measure_pair,
    ms,
    prompt_text,
    test_image,
)
from pmp.allocator import retain_freed_memory
from pmp.config import AUTOCAST_NAMES
from pmp.segmenter import AUTOCAST_DTYPES, Segmenter

OVERHEAD_LIMIT = 0.03
POOL_SPEEDUP = 10.0
CACHE_SPEEDUP = 50.0
BUNDLED_LIMIT_S = 0.1
R50_LIMIT_S = 2.0
GPU_LIMIT_S = 0.10
GPU_PROMPTS = 20


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


def parse_args(
    argv: list[str] | None, add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.Namespace:
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
        "--allocator",
        choices=("retain", "system"),
        default="retain",
        help="retain: glibc keeps freed blocks for reuse, as the app and the CLI set it (pmp.allocator); "
        "system: glibc as it starts",
    )
    parser.add_argument("--no-profile", action="store_true", help="do not profile missed targets")
    parser.add_argument("--json", type=Path, default=None, help="write every figure to this JSON file")
    if add_arguments is not None:
        add_arguments(parser)
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
    studies: Callable[..., None] | None = None,
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

    if studies is not None:  # experiments.latency_studies: the side studies, on the same pair and image
        studies(key, args, entry, pair, image, stage1_size, autocast, count, repeats, measure_clip)
    lines += end_to_end_targets(key, entry, pair, image, stage1_size, device, args)
    if key == "r50" and device.type == "cuda":
        lines += gpu_target(pair, image, side, args, entry, hw["gpu"])
    return entry, lines


def main(
    argv: list[str] | None = None,
    studies: Callable[..., None] | None = None,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    """The harness; ``studies`` and ``add_arguments`` are :mod:`experiments.latency_studies`' hooks."""
    args = parse_args(argv, add_arguments)
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
        entry, lines = benchmark_model(key, args, device, autocast, index == 0, measure_clip, hw, studies)
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
