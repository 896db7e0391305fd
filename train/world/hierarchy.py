"""The label hierarchy of the world and the prompt-dependent target: what a pixel is depends on what was asked.

Every pixel of a thing has a chain of names from fine to coarse, part -> thing -> group ("wheel" ->
"car" -> "vehicle"); a stuff pixel has one name ("road"). Given a set of prompts, a pixel's target is
the finest name in its chain that was prompted: with "car, wheel" the wheel pixels are "wheel" and the
rest of the car is "car"; with "vehicle" the whole car is "vehicle". A pixel none of whose names was
prompted has no target (255): it is left out of training and ignored by evaluation. This is the
paper's motivation for PMP (Sec. 3.3): a proposal generator trained on whole "vehicles" will not
propose "tire" unless the prompts can tell it to.

:func:`prompt_target` is the one implementation of the rule; training (:mod:`train.batches`), the
world-mixed benchmark (:mod:`train.world.benchmarks`) and the demo call it.

Seen and unseen at every granularity, as the paper's protocol: segmentation training prompts only
:data:`SEEN_NAMES` (the seen stuff and things, the parts in :data:`SEEN_PARTS`, the groups in
:data:`SEEN_GROUPS`); every other name (the parts of unseen things, held-out parts of seen things such
as "beak" and "backrest", and the unseen groups) is reachable only through CLIP's text.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from train.world.canvas import IGNORE
from train.world.vocabulary import (
    ALL_NAMES,
    CLASS_ID,
    CLASS_NAMES,
    GRANULARITY,
    GROUP_NAMES,
    GROUP_OF,
    GROUPS,
    PART_ID,
    PART_NAMES,
    SEEN_CLASSES,
    SEEN_GROUPS,
    SEEN_NAMES,
    SEEN_PARTS,
    THING_CLASSES,
    THING_PARTS,
)

__all__ = [  # the vocabulary facts are re-exported: the hierarchy is read together with them
    "ALL_NAMES", "GRANULARITY", "GROUPS", "GROUP_OF", "SEEN_GROUPS", "SEEN_NAMES", "SEEN_PARTS",
    "granularity_prompts", "is_seen", "names_present", "prompt_target", "seen_parts_of",
]  # fmt: skip


def seen_parts_of(thing: str) -> tuple[str, ...]:
    """The parts of ``thing`` that segmentation training labels (none for an unseen thing)."""
    if thing not in SEEN_CLASSES:
        return ()
    return tuple(part for part in THING_PARTS.get(thing, ()) if part in SEEN_PARTS)


def is_seen(name: str) -> bool:
    return name in SEEN_NAMES


_GROUP_ID_OF_CLASS = np.full(256, IGNORE, np.int32)  # class id -> group index (IGNORE: no group)
for _thing, _group in GROUP_OF.items():
    _GROUP_ID_OF_CLASS[CLASS_ID[_thing]] = GROUP_NAMES.index(_group)
_IS_THING = np.zeros(256, bool)
for _thing in THING_CLASSES:
    _IS_THING[CLASS_ID[_thing]] = True


def prompt_target(semantic: np.ndarray, parts: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
    """The prompt-dependent target: (H, W) uint8 index into ``prompts``, 255 where no name of the pixel's
    chain was prompted.

    ``semantic`` (H, W) holds global class ids (:data:`CLASS_NAMES`, 255 = unlabelled) and ``parts``
    global part ids (:data:`PART_NAMES`, 255 = not a part), as a :class:`train.world.Scene` has them.
    Coarse names are written first and finer ones over them, so the finest prompted name wins. A part
    name claims that part on every thing that has it ("window": car, house and bus windows alike).
    """
    if len(prompts) >= IGNORE:
        raise ValueError(f"at most {IGNORE - 1} prompts fit a uint8 target, got {len(prompts)}")
    unknown = [name for name in prompts if name not in GRANULARITY]
    if unknown:
        raise ValueError(f"names outside the world's vocabulary: {unknown}; accepted: {', '.join(ALL_NAMES)}")
    semantic = np.asarray(semantic)
    parts = np.asarray(parts)
    target = np.full(semantic.shape, IGNORE, np.uint8)
    labelled = semantic != IGNORE
    classes = np.where(labelled, semantic, 0)
    thing_pixel = labelled & _IS_THING[classes]
    group_of_pixel = np.where(labelled, _GROUP_ID_OF_CLASS[classes], IGNORE)
    by_level = sorted(
        enumerate(prompts), key=lambda item: ("group", "thing", "stuff", "part").index(GRANULARITY[item[1]])
    )
    for index, name in by_level:  # coarse to fine: later writes win
        level = GRANULARITY[name]
        if level == "group":
            mask = group_of_pixel == GROUP_NAMES.index(name)
        elif level in ("thing", "stuff"):
            mask = semantic == CLASS_ID[name]
        else:
            mask = thing_pixel & (parts == PART_ID[name])
        target[mask] = index
    return target


def granularity_prompts(thing: str, parts: Sequence[str], group: str | None, rng: np.random.Generator) -> list[str]:
    """The prompts that name one present thing at a granularity drawn uniformly from those it has: the
    thing itself, its ``parts``, both, or its ``group`` (one draw from ``rng``). The training sampler passes
    seen parts and groups only; world-mixed passes all of them."""
    options = ["whole"] + (["parts", "both"] if parts else []) + (["group"] if group else [])
    choice = options[int(rng.integers(len(options)))]
    return (
        ([thing] if choice in ("whole", "both") else [])
        + (list(parts) if choice in ("parts", "both") else [])
        + ([group] if choice == "group" else [])
    )


def names_present(semantic: np.ndarray, parts: np.ndarray) -> dict[str, tuple[str, ...]]:
    """Per granularity, the names that have at least one pixel in the maps (the names a prompt would claim)."""
    class_ids = [int(i) for i in np.unique(semantic) if i != IGNORE]
    things = [CLASS_NAMES[i] for i in class_ids if _IS_THING[i]]
    part_ids = np.unique(np.asarray(parts)[np.isin(semantic, [CLASS_ID[t] for t in things])]) if things else []
    return {
        "stuff": tuple(CLASS_NAMES[i] for i in class_ids if not _IS_THING[i]),
        "thing": tuple(things),
        "part": tuple(PART_NAMES[int(i)] for i in part_ids if i != IGNORE),
        "group": tuple(dict.fromkeys(GROUP_OF[t] for t in things if t in GROUP_OF)),
    }
