"""Object crops for training the tiny CLIP: one thing, large, on a plain stuff background, with a caption."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from PIL import Image

from train.world.canvas import IGNORE, _Canvas
from train.world.captions import _article, _fix_articles, _group_words, _noun, _with_parts
from train.world.scene import SceneObject, _check_args
from train.world.stuff import _PREPOSITION, _draw_forest, _draw_mountains, _Layout, _stuff_mat
from train.world.things import _DRAW, _EXTENT, SKY_THINGS, SURFACES
from train.world.vocabulary import (
    CLASS_ID,
    CLASS_NAMES,
    GROUP_OF,
    PART_ID,
    PART_NAMES,
    STUFF_CLASSES,
    THING_CLASSES,
    THING_PARTS,
)

_SALT_CROP = 23


def render_object_crop(
    seed: int, size: int = 128, class_name: str | None = None, classes: Iterable[str] = CLASS_NAMES
) -> tuple[np.ndarray, str, str]:
    """One thing centred and large (or a patch of stuff), like the object photos a web CLIP learns from.

    Returns (image uint8 (size, size, 3), caption, class name). ``class_name`` forces the class;
    otherwise it is drawn uniformly from ``classes``. The caption names only that class (or its group:
    "a photo of a vehicle").
    """
    image, caption, class_name, _ = _object_crop(seed, size, class_name, classes)
    return image, caption, class_name


def render_part_crop(seed: int, part_name: str, size: int = 128) -> tuple[np.ndarray, str]:
    """A close-up of one part (a wheel, a beak) and its caption ("a close-up photo of a wheel of a car"):
    the part's box in an object crop of a thing that has it, scaled to ``size``. Web photos show parts
    close up too; without such pairs a CLIP learns part words only as attributes of whole objects."""
    owners = [thing for thing in THING_CLASSES if part_name in THING_PARTS.get(thing, ())]
    if not owners:
        raise ValueError(f"no thing has a part called {part_name!r}; accepted: {', '.join(PART_NAMES)}")
    for attempt in range(8):  # the part may be hidden in a crop; try the next seed
        thing = owners[(int(seed) + attempt) % len(owners)]
        image, _, _, parts = _object_crop(int(seed) + attempt * 7919, size, thing, CLASS_NAMES)
        ys, xs = np.nonzero(parts == PART_ID[part_name])
        if ys.size >= 4:
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            half = max(y1 - y0, x1 - x0, 8) // 2 + 1
            cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
            box = (max(0, cx - half), max(0, cy - half), min(size, cx + half), min(size, cy + half))
            close_up = np.asarray(Image.fromarray(image).crop(box).resize((size, size), Image.BILINEAR))
            templates = ("a close-up photo of a {p}.", "a {p}.", "the {p} of a {t}.", "a close-up of a {t}'s {p}.")
            rng = np.random.default_rng([_SALT_CROP, 1, int(seed)])
            caption = templates[int(rng.integers(len(templates)))].format(p=part_name, t=thing)
            return close_up, _fix_articles(caption)
    raise ValueError(f"part {part_name!r} was not visible in 8 crops from seed {seed}")


def _object_crop(
    seed: int, size: int, class_name: str | None, classes: Iterable[str]
) -> tuple[np.ndarray, str, str, np.ndarray | None]:
    """render_object_crop, plus the crop's part map (global part ids, 255 = none; None for stuff)."""
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
        return image, caption, class_name, None
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
    if class_name in GROUP_OF:  # the group word, as web captions say "a vehicle" as often as "a car"
        templates += ("a photo of {ga}.", "{np}, a kind of {g}.", "{ga}{where}.")
    caption = templates[int(rng.integers(len(templates)))].format(
        np=noun,
        n=class_name,
        g=GROUP_OF.get(class_name, ""),
        ga=_group_words(GROUP_OF[class_name], 1) if class_name in GROUP_OF else "",
        parts=_with_parts(rng, obj, int(rng.integers(1, 3))),
        where=where,
    )
    return image, _fix_articles(caption), class_name, parts
