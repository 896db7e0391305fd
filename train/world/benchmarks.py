"""The fixed benchmark images: scenes drawn by index with each benchmark's classes and label maps."""

from __future__ import annotations

import re

import numpy as np

from train.world.canvas import IGNORE
from train.world.scene import Scene, _check_args, _render
from train.world.vocabulary import (
    CLASS_ID,
    CLASS_NAMES,
    PART_ID,
    STUFF_CLASSES,
    THING_CLASSES,
    Benchmark,
    get_benchmark,
    plural,
)

_SALT_BENCHMARK = 37

_BENCHMARK_SALT = {"world-voc": 1, "world-full": 2, "world-parts": 3}


def benchmark_scene_classes(benchmark: Benchmark) -> tuple[str, ...]:
    """The classes a benchmark's scenes may contain: its vocabulary, plus all stuff for a things-only one."""
    if benchmark.granularity == "things":
        return STUFF_CLASSES + tuple(c for c in THING_CLASSES if c in benchmark.class_names)
    if benchmark.granularity == "parts":
        return CLASS_NAMES
    return tuple(benchmark.class_names)


def benchmark_scene(benchmark: Benchmark | str, index: int, size: int = 128) -> tuple[Scene, np.ndarray]:
    """(scene, label) of image ``index`` of a benchmark; label (H, W) uint8 indexes benchmark.class_names,
    255 = ignore."""
    if isinstance(benchmark, str):
        benchmark = get_benchmark(benchmark)
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < benchmark.num_images:
        raise ValueError(f"index must be an integer in [0, {benchmark.num_images}) for {benchmark.name}, got {index!r}")
    _check_args(benchmark.seed_offset + int(index), size)
    seed = benchmark.seed_offset + int(index)
    rng = np.random.default_rng([_SALT_BENCHMARK, _BENCHMARK_SALT.get(benchmark.name, 0), seed])
    min_things = 2 if benchmark.granularity == "parts" else 1
    scene = _render(rng, seed, int(size), set(benchmark_scene_classes(benchmark)), min_things=min_things)
    lut = np.full(256, IGNORE, np.uint8)
    if benchmark.granularity == "parts":
        for i, name in enumerate(benchmark.class_names):
            lut[PART_ID[name]] = i
        return scene, lut[scene.parts]
    for i, name in enumerate(benchmark.class_names):
        lut[CLASS_ID[name]] = i
    return scene, lut[scene.semantic]


def benchmark_sample(benchmark: Benchmark | str, index: int, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 (H, W, 3), label uint8 (H, W)) of image ``index``; label indexes benchmark.class_names,
    255 = ignore."""
    scene, label = benchmark_scene(benchmark, index, size)
    return scene.image, label


_CLASS_PATTERN = {name: re.compile(rf"\b({re.escape(name)}|{re.escape(plural(name))})\b") for name in CLASS_NAMES}


def classes_named(text: str) -> set[str]:
    """Class names a caption mentions (whole words, singular or plural)."""
    lowered = text.lower()
    return {name for name, pattern in _CLASS_PATTERN.items() if pattern.search(lowered)}
