"""What a rendered scene is: its maps and its visible things (:mod:`train.world.scene` renders them)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from train.world.canvas import IGNORE
from train.world.vocabulary import CLASS_NAMES


@dataclass
class SceneObject:
    """One visible thing: ``bbox`` = (x0, y0, x1, y1) of its visible pixels, x1/y1 exclusive."""

    instance_id: int
    class_name: str
    colour: str
    bbox: tuple[int, int, int, int]
    area: int
    part_colours: dict[str, str]
    visible_parts: tuple[str, ...]
    surface: str | None
    kind: str = ""


@dataclass
class Scene:
    """One rendered scene; every map is (H, W) with H = W = size."""

    seed: int
    size: int
    image: np.ndarray  # (H, W, 3) uint8
    semantic: np.ndarray  # int32 global class id (train.world.vocabulary.CLASS_NAMES), 255 = unlabelled
    parts: np.ndarray  # int32 global part id (train.world.vocabulary.PART_NAMES), 255 = not a part
    instances: np.ndarray  # int32, 0 = stuff, 1..K = objects[k-1]
    objects: list[SceneObject]
    captions: list[str]
    layout: str  # "outdoor", "indoor" or "bands"

    def present_classes(self) -> tuple[str, ...]:
        """Names of the classes with at least one pixel, in CLASS_NAMES order."""
        ids = np.unique(self.semantic)
        return tuple(CLASS_NAMES[i] for i in ids if i != IGNORE)
