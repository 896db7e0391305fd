"""Scenes: the stuff layout plus 0-5 things placed far-to-near, as a pure function of the seed."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from train.world.canvas import IGNORE, MAX_SIZE, MIN_SIZE, _Canvas
from train.world.captions import _captions
from train.world.drawings import _Drawn
from train.world.scene_types import Scene, SceneObject
from train.world.stuff import _Layout, _layout
from train.world.things import _CLASS_WEIGHT, _DRAW, SKY_THINGS, SURFACES, _place, _Placed
from train.world.vocabulary import (
    CLASS_ID,
    CLASS_NAMES,
    PART_NAMES,
    SEEN_CLASSES,
    STUFF_CLASSES,
    THING_CLASSES,
)

# Generator salts keep the streams of scenes, crops and benchmark images apart even for equal seeds.
_SALT_SCENE = 11


_THING_COUNTS = np.array([0.05, 0.2, 0.25, 0.22, 0.16, 0.12])


def _check_args(seed: int, size: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be an integer in [{MIN_SIZE}, {MAX_SIZE}], got {size!r}")


def _check_classes(classes: Iterable[str]) -> set[str]:
    chosen = set(classes)
    unknown = sorted(chosen - set(CLASS_NAMES))
    if unknown:
        raise ValueError(f"unknown classes {unknown}; accepted: {', '.join(CLASS_NAMES)}")
    if not chosen & set(STUFF_CLASSES):
        raise ValueError(
            f"classes must include at least one stuff class to fill the background; stuff: {', '.join(STUFF_CLASSES)}"
        )
    return chosen


def _draw_things(
    cv: _Canvas, rng: np.random.Generator, layout: _Layout, s: int, allowed: set[str], count: int
) -> list[tuple[int, _Placed, _Drawn]]:
    """Choose up to ``count`` things that fit the layout, place them, and draw them far to near."""
    labels = cv.labels_now()
    # stuff drawn so far (a region may be hidden by a later one: _place checks the pixels)
    present = {CLASS_NAMES[m.cls] for m in cv.materials if m.cls != IGNORE}
    candidates = [c for c in THING_CLASSES if c in allowed and set(SURFACES[c]) & present]
    placed: list[_Placed] = []
    for _ in range(count * 2):
        if len(placed) == count or not candidates:
            break
        weights = np.array([_CLASS_WEIGHT.get(c, 1.0) for c in candidates])
        cls = candidates[int(rng.choice(len(candidates), p=weights / weights.sum()))]
        spot = _place(rng, cls, labels, layout, s)
        if spot is None:
            continue
        placed.append(spot)
        if cls == "sun":
            candidates.remove("sun")
    order = sorted(
        range(len(placed)),
        key=lambda i: (0, SKY_THINGS.index(placed[i].cls), i) if placed[i].cls in SKY_THINGS else (1, placed[i].y, i),
    )
    drawn = []
    for inst, i in enumerate(order, start=1):
        p = placed[i]
        drawn.append((inst, p, _DRAW[p.cls](cv, rng, inst, p.cx, p.y, p.size, p.facing)))
    return drawn


def _finish(
    cv: _Canvas, rng: np.random.Generator, seed: int, layout: _Layout, drawn: list[tuple[int, _Placed, _Drawn]]
) -> tuple[Scene, dict]:
    """Render the canvas, drop invisible things, renumber instances 1..K and collect visibility facts."""
    s = cv.size
    image, semantic, parts, instances = cv.render(rng)
    n = len(drawn)
    counts = np.bincount(instances.ravel(), minlength=n + 1)
    visible = [k for k in range(1, n + 1) if counts[k] > 0]
    remap = np.zeros(max(256, n + 1), np.int32)
    for new, old in enumerate(visible, start=1):
        remap[old] = new
    instances = remap[instances]
    n_parts = len(PART_NAMES)
    part_index = np.where(parts == IGNORE, n_parts, parts)
    part_counts = np.bincount(
        (instances * (n_parts + 1) + part_index).ravel(), minlength=(len(visible) + 1) * (n_parts + 1)
    )
    part_counts = part_counts.reshape(len(visible) + 1, n_parts + 1)
    ys, xs = np.nonzero(instances)
    ids = instances[ys, xs]
    objects = []
    by_old = {inst: (p, d) for inst, p, d in drawn}
    min_part = max(3, int(0.0006 * s * s))
    for new, old in enumerate(visible, start=1):
        p, d = by_old[old]
        mask = ids == new
        bbox = (int(xs[mask].min()), int(ys[mask].min()), int(xs[mask].max()) + 1, int(ys[mask].max()) + 1)
        seen_parts = tuple(PART_NAMES[j] for j in range(n_parts) if part_counts[new, j] >= min_part)
        objects.append(
            SceneObject(new, p.cls, d.colour, bbox, int(counts[old]), d.part_colours, seen_parts, p.surface, d.kind)
        )
    class_counts = np.bincount(
        np.where(semantic == IGNORE, len(CLASS_NAMES), semantic).ravel(), minlength=len(CLASS_NAMES) + 1
    )
    scene = Scene(seed, s, image, semantic, parts, instances, objects, [], layout.kind)
    return scene, {"class_counts": class_counts}


def _render(rng: np.random.Generator, seed: int, size: int, allowed: set[str], min_things: int = 0) -> Scene:
    cv = _Canvas(size)
    layout = _layout(cv, rng, size, allowed)
    count = max(min_things, int(rng.choice(len(_THING_COUNTS), p=_THING_COUNTS)))
    drawn = _draw_things(cv, rng, layout, size, allowed, count)
    scene, facts = _finish(cv, rng, seed, layout, drawn)
    scene.captions = _captions(rng, scene, layout, facts["class_counts"])
    return scene


def render_scene(seed: int, size: int = 128, classes: Iterable[str] = CLASS_NAMES) -> Scene:
    """The scene of ``seed`` drawn from the vocabulary ``classes`` (default: every class).

    Only classes in ``classes`` are drawn, so their labels are the only ones that can appear; it must
    include at least one stuff class. Same (seed, size, classes) -> same bytes.
    """
    _check_args(seed, size)
    allowed = _check_classes(classes)
    return _render(np.random.default_rng([_SALT_SCENE, int(seed)]), int(seed), int(size), allowed)


def render_training_scene(seed: int, size: int = 128) -> Scene:
    """A scene for segmentation training: only SEEN_CLASSES are drawn (the paper's COCO-Stuff role)."""
    return render_scene(seed, size, SEEN_CLASSES)


_SEEN_INDEX = np.full(256, IGNORE, np.uint8)
for _i, _name in enumerate(SEEN_CLASSES):
    _SEEN_INDEX[CLASS_ID[_name]] = _i


def training_target(scene: Scene) -> np.ndarray:
    """(H, W) uint8 label map indexing SEEN_CLASSES; any other class and unlabelled pixels are 255."""
    return _SEEN_INDEX[scene.semantic]
