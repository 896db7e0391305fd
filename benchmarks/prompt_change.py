"""The demo's prompt-change view with and without the image prepared once (``Segmenter.set_image``), interleaved.

    python -m benchmarks.prompt_change --rounds 15 --json results/prompt_change.json

Per round, for the bundled baseline and PMP on one world scene: the two prompt sets of the view segmented
from the image itself (each set runs the whole pipeline, as the demo did), then from one prepared state (the
backbone, the pixel decoder and CLIP's dense features once; only what the prompts change per set). The two
ways alternate round by round, so that the machine's load on the day falls on both alike; the figures are
medians, and the ratio is before over after.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from pmp.segmenter import Segmenter
from train.world.demo import demo_scene, prompt_sets

SCENE = 73  # the demo's opening example


def prompt_change(models: dict[str, Segmenter], image, sets: list[list[str]], prepared: bool) -> float:
    """Seconds for both models under both prompt sets, from the image or from one state per model."""
    start = time.perf_counter()
    with torch.inference_mode():
        for model in models.values():
            source = model.set_image(image) if prepared else image
            for labels in sets:
                model.segment(source, labels)
    return time.perf_counter() - start


def sentence(report: dict) -> str:
    """docs/demo.md's sentence about a ``--json`` report (tested against results/prompt_change.json)."""
    before, after = report["median_s"]["from the image"], report["median_s"]["prepared once"]
    return (
        f"The prompt-change view, both bundled models under both prompt sets of world scene {report['scene']}, "
        f"{report['rounds']} interleaved rounds (`python -m benchmarks.prompt_change`, "
        f"`results/prompt_change.json`): {before * 1000:.1f} ms from the image, {after * 1000:.1f} ms prepared "
        f"once, {report['speedup']:.2f}x."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.prompt_change", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (the medians are reported)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    models = {name: Segmenter.from_pretrained(name) for name in ("baseline", "pmp")}
    scene = demo_scene(SCENE)
    sets = list(prompt_sets(scene).values())
    for prepared in (False, True):  # warm-up of both ways
        prompt_change(models, scene.image, sets, prepared)
    times: dict[str, list[float]] = {"from the image": [], "prepared once": []}
    for _ in range(args.rounds):
        times["from the image"].append(prompt_change(models, scene.image, sets, prepared=False))
        times["prepared once"].append(prompt_change(models, scene.image, sets, prepared=True))
    before, after = (statistics.median(values) for values in times.values())
    report = {
        "scene": SCENE,
        "prompt_sets": sets,
        "rounds": args.rounds,
        "median_s": {"from the image": before, "prepared once": after},
        "speedup": before / after,
        "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}",
    }
    print(sentence(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
