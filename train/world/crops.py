"""Object crops for training the tiny CLIP: one thing, large, on a plain stuff background, with a caption."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from train.world.canvas import IGNORE, _Canvas
from train.world.captions import _article, _fix_articles, _noun, _with_parts
from train.world.scene import SceneObject, _check_args
from train.world.stuff import _PREPOSITION, _draw_forest, _draw_mountains, _Layout, _stuff_mat
from train.world.things import _DRAW, _EXTENT, SKY_THINGS, SURFACES
from train.world.vocabulary import (
    CLASS_ID,
    CLASS_NAMES,
    PART_NAMES,
    STUFF_CLASSES,
)

_SALT_CROP = 23


def render_object_crop(
    seed: int, size: int = 128, class_name: str | None = None, classes: Iterable[str] = CLASS_NAMES
) -> tuple[np.ndarray, str, str]:
    """One thing centred and large (or a patch of stuff), like the object photos a web CLIP learns from.

    Returns (image uint8 (size, size, 3), caption, class name). ``class_name`` forces the class;
    otherwise it is drawn uniformly from ``classes``. The caption names only that class.
    """
    _check_args(seed, size)
    chosen = set(classes)
    unknown = sorted(chosen - set(CLASS_NAMES))
    if unknown:
        raise ValueError(f"unknown classes {unknown}; accepted: {', '.join(CLASS_NAMES)}")
    rng = np.random.default_rng([_SALT_CROP, int(seed)])
    if class_name is None:
        pool = [c for c in CLASS_NAMES if c in chosen]
        if not pool:
            raise ValueError("classes is empty; give at least one class name")
        class_name = pool[int(rng.integers(len(pool)))]
    elif class_name not in CLASS_ID:
        raise ValueError(f"unknown class_name {class_name!r}; accepted: {', '.join(CLASS_NAMES)}")
    s = int(size)
    cv = _Canvas(s)
    layout = _Layout("crop", s / 2)
    if class_name in STUFF_CLASSES:
        m = _stuff_mat(cv, rng, layout, class_name)
        if class_name in ("mountain", "forest"):
            cv.rect(0, 0, s, s, _stuff_mat(cv, rng, layout, "sky"))
            (_draw_mountains if class_name == "mountain" else _draw_forest)(
                cv, rng, layout, s, s * rng.uniform(0.75, 1.0)
            )
            cv.rect(-1, s * 0.97, s + 1, s + 1, m)
        else:
            cv.rect(0, 0, s, s, m)
        image, *_ = cv.render(rng)
        phrase = layout.phrases[class_name]
        templates = ("a photo of {p}.", "{p}.", "a close-up photo of {p}.", "a photo of the {n}.", "{n}")
        caption = templates[int(rng.integers(len(templates)))].format(p=phrase, n=class_name)
        return image, caption, class_name
    fit = 0.8 * s / max(_EXTENT[class_name]) * rng.uniform(0.8, 1.05)
    cx = s / 2 + rng.uniform(-0.06, 0.06) * s
    if class_name in SKY_THINGS:
        cv.rect(0, 0, s, s, _stuff_mat(cv, rng, layout, "sky"))
        y = s / 2 + rng.uniform(-0.06, 0.06) * s
        where = ""
    else:
        width_ext, height_ext = _EXTENT[class_name]
        y = s / 2 + height_ext * fit / 2
        surfaces = SURFACES[class_name]
        surface = surfaces[int(rng.integers(len(surfaces)))]
        horizon = float(np.clip(y - rng.uniform(0.25, 0.7) * height_ext * fit, 0.12 * s, 0.85 * s))
        top = "wall" if surface == "floor" else "sky"
        cv.rect(0, 0, s, s, _stuff_mat(cv, rng, layout, top))
        cv.rect(-1, horizon, s + 1, s + 1, _stuff_mat(cv, rng, layout, surface))
        where = f" {_PREPOSITION.get(surface, 'on')} {layout.phrases[surface]}"
    drawn = _DRAW[class_name](cv, rng, 1, cx, y, fit, 1 if rng.random() < 0.5 else -1)
    image, _, parts, instances = cv.render(rng)
    present = np.unique(parts[instances == 1])
    obj = SceneObject(
        1,
        class_name,
        drawn.colour,
        (0, 0, s, s),
        int((instances == 1).sum()),
        drawn.part_colours,
        tuple(PART_NAMES[p] for p in present if p != IGNORE),
        None,
        drawn.kind,
    )
    noun = _article(_noun(obj))
    templates = (
        "a photo of {np}.",
        "{np}{parts}.",
        "a close-up photo of a {n}.",
        "a photo of a {n}.",
        "{np}{parts}{where}",
        "a {n}",
        "{np}{where}.",
    )
    caption = templates[int(rng.integers(len(templates)))].format(
        np=noun, n=class_name, parts=_with_parts(rng, obj, int(rng.integers(1, 3))), where=where
    )
    return image, _fix_articles(caption), class_name
