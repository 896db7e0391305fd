"""The world's things: which drawing (:mod:`train.world.drawings`) each class has, and where each kind of
thing may stand."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from train.world.drawings import (
    _draw_bicycle,
    _draw_bird,
    _draw_boat,
    _draw_bus,
    _draw_car,
    _draw_cat,
    _draw_chair,
    _draw_cloud,
    _draw_dog,
    _draw_fence,
    _draw_flower,
    _draw_house,
    _draw_lamp_post,
    _draw_person,
    _draw_sun,
    _draw_table,
    _draw_tree,
    _draw_truck,
)
from train.world.stuff import _Layout
from train.world.vocabulary import CLASS_ID, CLASS_NAMES

_DRAW = {
    "house": _draw_house,
    "car": _draw_car,
    "tree": _draw_tree,
    "person": _draw_person,
    "dog": _draw_dog,
    "boat": _draw_boat,
    "chair": _draw_chair,
    "bird": _draw_bird,
    "cloud": _draw_cloud,
    "truck": _draw_truck,
    "bus": _draw_bus,
    "bicycle": _draw_bicycle,
    "cat": _draw_cat,
    "flower": _draw_flower,
    "lamp post": _draw_lamp_post,
    "fence": _draw_fence,
    "table": _draw_table,
    "sun": _draw_sun,
}
SKY_THINGS = ("sun", "cloud", "bird")  # drawn centred at (cx, cy), far behind ground things
# Where a thing may stand (the stuff under its base point).
SURFACES: dict[str, tuple[str, ...]] = {
    "house": ("grass", "sand", "snow", "field"),
    "tree": ("grass", "snow", "field"),
    "fence": ("grass", "snow", "field", "sand"),
    "lamp post": ("grass", "snow", "sand", "road"),
    "car": ("road", "grass", "sand", "snow"),
    "truck": ("road", "grass", "sand", "snow", "field"),
    "bus": ("road", "grass", "snow"),
    "bicycle": ("road", "grass", "sand", "snow", "field"),
    "person": ("grass", "sand", "snow", "road", "field", "floor"),
    "dog": ("grass", "sand", "snow", "road", "field", "floor"),
    "cat": ("grass", "sand", "snow", "road", "field", "floor"),
    "flower": ("grass", "field", "floor"),
    "chair": ("grass", "sand", "floor"),
    "table": ("grass", "sand", "floor"),
    "boat": ("water",),
    "cloud": ("sky",),
    "sun": ("sky",),
    "bird": ("sky",),
}
# Size at the front of the scene, as a fraction of the image side (height; wingspan/width/radius for sky things).
NOMINAL_SIZE: dict[str, float] = {
    "house": 0.56,
    "car": 0.26,
    "truck": 0.32,
    "bus": 0.32,
    "bicycle": 0.34,
    "boat": 0.42,
    "tree": 0.6,
    "person": 0.5,
    "dog": 0.32,
    "cat": 0.28,
    "flower": 0.32,
    "lamp post": 0.62,
    "fence": 0.26,
    "chair": 0.4,
    "table": 0.3,
    "cloud": 0.36,
    "sun": 0.075,
    "bird": 0.24,
}
# (width, height) of the drawing per unit of size, for fitting an object crop.
_EXTENT: dict[str, tuple[float, float]] = {
    "house": (1.4, 1.0),
    "car": (2.4, 1.0),
    "truck": (2.6, 1.0),
    "bus": (3.1, 1.0),
    "bicycle": (1.7, 1.0),
    "boat": (1.4, 1.0),
    "tree": (0.75, 1.0),
    "person": (0.45, 1.0),
    "dog": (1.45, 1.0),
    "cat": (1.5, 1.0),
    "flower": (0.6, 1.0),
    "lamp post": (0.5, 1.05),
    "fence": (3.0, 1.0),
    "chair": (0.6, 1.0),
    "table": (2.0, 1.0),
    "cloud": (1.0, 0.55),
    "sun": (3.5, 3.5),
    "bird": (0.85, 0.5),
}
_PREFERRED = {"car": "road", "truck": "road", "bus": "road", "bicycle": "road"}
_CLASS_WEIGHT = {"cloud": 0.7, "sun": 0.35, "bird": 0.8}


@dataclass
class _Placed:
    cls: str
    cx: float
    y: float  # base row for ground things, centre row for sky things
    size: float
    facing: int
    surface: str | None


def _place(rng: np.random.Generator, cls: str, labels: np.ndarray, layout: _Layout, s: int) -> _Placed | None:
    """A position for ``cls`` on an allowed surface, scaled by its distance to the horizon; None if impossible."""
    allowed = np.zeros(256, bool)
    allowed[[CLASS_ID[c] for c in SURFACES[cls]]] = True
    xs = rng.uniform(0.1, 0.9, 48) * s
    if cls in SKY_THINGS:
        ys = rng.uniform(0.06, 0.9, 48) * max(layout.horizon, 0.25 * s)
    else:
        ys = layout.horizon + rng.uniform(0.15, 0.98, 48) * (s - layout.horizon)
    found = labels[np.clip(ys.astype(int), 0, s - 1), np.clip(xs.astype(int), 0, s - 1)]
    ok = allowed[found]
    if not ok.any():
        return None
    pick = int(np.argmax(ok))
    preferred = _PREFERRED.get(cls)
    if preferred is not None and rng.random() < 0.75:
        on_preferred = ok & (found == CLASS_ID[preferred])
        if on_preferred.any():
            pick = int(np.argmax(on_preferred))
    x, y = float(xs[pick]), float(ys[pick])
    facing = 1 if rng.random() < 0.5 else -1
    jitter = rng.uniform(0.85, 1.15)
    if cls in SKY_THINGS:
        return _Placed(cls, x, y, NOMINAL_SIZE[cls] * s * jitter, facing, "sky")
    depth = float(np.clip((y - layout.horizon) / max(1.0, s - layout.horizon), 0.0, 1.0))
    size = NOMINAL_SIZE[cls] * s * (0.7 + 0.3 * depth) * jitter
    return _Placed(cls, x, y, size, facing, CLASS_NAMES[int(found[pick])])
