"""The fixed benchmark images: scenes drawn by index with each benchmark's classes and label maps."""

from __future__ import annotations

import re

import numpy as np

from train.world.canvas import IGNORE
from train.world.hierarchy import granularity_prompts, names_present, prompt_target
from train.world.scene import Scene, _check_args, _render
from train.world.vocabulary import (
    ALL_NAMES,
    CLASS_ID,
    CLASS_NAMES,
    DEV_SUFFIX,
    GROUP_OF,
    GROUPS,
    PART_ID,
    PART_NAMES,
    STUFF_CLASSES,
    THING_CLASSES,
    Benchmark,
    get_benchmark,
    plural,
)

_SALT_BENCHMARK = 37

_BENCHMARK_SALT = {"world-voc": 1, "world-full": 2, "world-parts": 3, "world-mixed": 4}
_SALT_MIXED_PROMPTS = 41
MAX_MIXED_NEGATIVES = 3


def benchmark_scene_classes(benchmark: Benchmark) -> tuple[str, ...]:
    """The classes a benchmark's scenes may contain: its vocabulary, plus all stuff for a things-only one."""
    if benchmark.granularity == "things":
        return STUFF_CLASSES + tuple(c for c in THING_CLASSES if c in benchmark.class_names)
    if benchmark.granularity in ("parts", "mixed"):
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
    salt = _BENCHMARK_SALT.get(benchmark.name.removesuffix(DEV_SUFFIX), 0)  # a -dev split: its benchmark's
    rng = np.random.default_rng([_SALT_BENCHMARK, salt, seed])
    min_things = 2 if benchmark.granularity in ("parts", "mixed") else 1
    scene = _render(rng, seed, int(size), set(benchmark_scene_classes(benchmark)), min_things=min_things)
    lut = np.full(256, IGNORE, np.uint8)
    if benchmark.granularity == "mixed":
        prompts = mixed_prompts(scene, seed)
        ids = np.array([benchmark.class_names.index(name) for name in prompts] + [IGNORE], np.uint8)
        target = prompt_target(scene.semantic, scene.parts, prompts)  # index into prompts, 255 = none
        return scene, ids[np.where(target == IGNORE, len(prompts), target)]
    if benchmark.granularity == "parts":
        for i, name in enumerate(benchmark.class_names):
            lut[PART_ID[name]] = i
        return scene, lut[scene.parts]
    for i, name in enumerate(benchmark.class_names):
        lut[CLASS_ID[name]] = i
    return scene, lut[scene.semantic]


def mixed_prompts(scene: Scene, seed: int) -> list[str]:
    """world-mixed's fixed prompt set for one image, from its seed: every present thing at a random
    granularity (itself, its parts, both, or its group; seen and unseen names alike), the present stuff,
    and up to :data:`MAX_MIXED_NEGATIVES` names with no pixel in the image; shuffled."""
    rng = np.random.default_rng([_SALT_MIXED_PROMPTS, int(seed)])
    present = names_present(scene.semantic, scene.parts)
    prompts = list(present["stuff"])
    for thing in present["thing"]:
        own = np.unique(scene.parts[scene.semantic == CLASS_ID[thing]])
        parts = [name for name in PART_NAMES if PART_ID[name] in own]
        prompts += granularity_prompts(thing, parts, GROUP_OF.get(thing), rng)
    prompts = list(dict.fromkeys(prompts))
    claimed = set(sum(present.values(), ()))
    absent = [name for name in ALL_NAMES if name not in claimed]
    count = int(rng.integers(MAX_MIXED_NEGATIVES + 1))
    prompts += [absent[int(i)] for i in rng.choice(len(absent), size=count, replace=False)]
    return [prompts[int(i)] for i in rng.permutation(len(prompts))]


def benchmark_prompts(benchmark: Benchmark | str, index: int, size: int = 128) -> list[str]:
    """The prompts of image ``index``: world-mixed's own set for that image, else the benchmark's classes."""
    if isinstance(benchmark, str):
        benchmark = get_benchmark(benchmark)
    if benchmark.granularity != "mixed":
        return list(benchmark.class_names)
    scene, _ = benchmark_scene(benchmark, index, size)
    return mixed_prompts(scene, benchmark.seed_offset + int(index))


def benchmark_sample(benchmark: Benchmark | str, index: int, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 (H, W, 3), label uint8 (H, W)) of image ``index``; label indexes benchmark.class_names,
    255 = ignore."""
    scene, label = benchmark_scene(benchmark, index, size)
    return scene.image, label


_CLASS_PATTERN = {name: re.compile(rf"\b({re.escape(name)}|{re.escape(plural(name))})\b") for name in CLASS_NAMES}
_GROUP_PATTERN = {name: re.compile(rf"\b({re.escape(name)}|{re.escape(plural(name))})\b") for name in GROUPS}


def classes_named(text: str) -> set[str]:
    """Class names a caption mentions (whole words, singular or plural); a group word ("vehicles")
    stands for the classes of that group that the caption could mean, so it is returned as the group
    name itself and checked with :func:`group_is_present`."""
    lowered = text.lower()
    found = {name for name, pattern in _CLASS_PATTERN.items() if pattern.search(lowered)}
    return found | {name for name, pattern in _GROUP_PATTERN.items() if pattern.search(lowered)}


def group_is_present(group: str, classes: set[str] | tuple[str, ...]) -> bool:
    """Whether a group word may be said of a scene with these classes: one of its members is there."""
    return any(member in classes for member in GROUPS[group])
