"""Captions written from the final label maps: an object is named only if enough of it is visible, a part
only if that part is visible, so every class a caption names is in the semantic map."""

from __future__ import annotations

import re

import numpy as np

from train.world.scene_types import Scene, SceneObject
from train.world.stuff import _PREPOSITION, _Layout
from train.world.vocabulary import CLASS_ID, GROUP_OF, STUFF_CLASSES, plural

_NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _noun(obj: SceneObject, with_colour: bool = True) -> str:
    """Noun phrase without article: "red car", "person in a blue shirt", "pine tree"."""
    cls = obj.class_name
    if cls == "person":
        return f"person in a {obj.colour} shirt" if with_colour else "person"
    if cls == "tree" and obj.kind == "pine":
        return "pine tree"
    if cls == "tree" and obj.colour != "green" and with_colour:
        return f"{obj.colour} autumn tree"
    return f"{obj.colour} {cls}" if with_colour else cls


# Part descriptions: (part, template); {c} = the part's colour. Only parts visible in the image are described.
_PART_PHRASES: dict[str, tuple[tuple[str, str], ...]] = {
    "car": (("wheel", "with {c} wheels"), ("window", "with {c} windows"), ("body", "with a shiny {c} body")),
    "truck": (
        ("cargo", "with a {c} cargo box"),
        ("wheel", "with {c} wheels"),
        ("cab", "with a {c} cab"),
        ("window", "with a {c} window"),
    ),
    "bus": (
        ("window", "with a row of windows"),
        ("wheel", "with {c} wheels"),
        ("door", "with a {c} door"),
        ("body", "with a long {c} body"),
    ),
    "bicycle": (("wheel", "with {c} wheels"), ("frame", "with a {c} frame")),
    "boat": (("sail", "with a {c} sail"), ("hull", "with a {c} hull")),
    "tree": (("trunk", "with a {c} trunk"), ("foliage", "with {c} foliage")),
    "house": (
        ("roof", "with a {c} roof"),
        ("door", "with a {c} door"),
        ("window", "with framed windows"),
        ("facade", "with a {c} facade"),
    ),
    "person": (
        ("leg", "with {c} legs"),
        ("torso", "with a {c} torso"),
        ("head", "with a round head"),
        ("arm", "with {c} arms"),
    ),
    "dog": (
        ("tail", "with a {c} tail"),
        ("head", "with a {c} head"),
        ("leg", "with four legs"),
        ("body", "with a {c} body"),
    ),
    "cat": (
        ("tail", "with a long tail"),
        ("head", "with a {c} head"),
        ("leg", "with four legs"),
        ("body", "with a {c} body"),
    ),
    "bird": (
        ("wing", "with {c} wings"),
        ("beak", "with an orange beak"),
        ("head", "with a {c} head"),
        ("tail", "with a {c} tail"),
        ("body", "with a {c} body"),
    ),
    "flower": (("petal", "with {c} petals"), ("stem", "on a green stem")),
    "lamp post": (("lamp", "with a glowing {c} lamp"), ("pole", "with a tall {c} pole")),
    "fence": (("post", "with {c} posts"), ("rail", "with {c} rails")),
    "chair": (("backrest", "with a {c} backrest"), ("seat", "with a {c} seat"), ("leg", "with {c} legs")),
    "table": (("tabletop", "with a {c} tabletop"), ("leg", "with {c} legs")),
}


def _with_parts(rng: np.random.Generator, obj: SceneObject, limit: int) -> str:
    options = [(p, t) for p, t in _PART_PHRASES.get(obj.class_name, ()) if p in obj.visible_parts]
    if not options or limit == 0:
        return ""
    chosen = [options[int(i)] for i in sorted(rng.choice(len(options), size=min(limit, len(options)), replace=False))]
    phrases = [template.format(c=obj.part_colours.get(part, obj.colour)) for part, template in chosen]
    phrases[1:] = [p.removeprefix("with ") for p in phrases[1:]]  # "with a red roof and a blue door"
    return " " + " and ".join(phrases)


def _group_phrase(objs: list[SceneObject]) -> str:
    """Noun phrase for the visible things of one class: "a red car", "two dogs", "a red car and a blue car"."""
    if len(objs) == 1:
        return _article(_noun(objs[0]))
    cls = objs[0].class_name
    colours = {o.colour for o in objs}
    count = _NUMBERS[min(len(objs), 9)]
    if len(colours) == 1 and cls not in ("person", "tree"):
        return f"{count} {objs[0].colour} {plural(cls)}"
    return f"{count} {plural(cls)}"


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _group_words(group: str, count: int) -> str:
    """ "a vehicle", "two vehicles"; "furniture" is uncountable ("furniture", "two pieces of furniture")."""
    if group == "furniture":
        return "furniture" if count == 1 else f"{_NUMBERS[min(count, 9)]} pieces of furniture"
    return _article(group) if count == 1 else f"{_NUMBERS[min(count, 9)]} {plural(group)}"


def _captions(rng: np.random.Generator, scene: Scene, layout: _Layout, class_counts: np.ndarray) -> list[str]:
    """Three to five captions naming only what is visible (objects and stuff above small area thresholds)."""
    s = scene.size
    min_object = max(16, int(0.003 * s * s))
    min_stuff = max(16, int(0.01 * s * s))
    stuff = {
        c: layout.phrases[c] for c in STUFF_CLASSES if c in layout.phrases and class_counts[CLASS_ID[c]] >= min_stuff
    }
    objs = sorted((o for o in scene.objects if o.area >= min_object), key=lambda o: -o.area)
    groups: dict[str, list[SceneObject]] = {}
    for o in objs:
        groups.setdefault(o.class_name, []).append(o)

    # 1. the scene sentence: things grouped by what they stand on.
    by_surface: dict[str | None, list[SceneObject]] = {}
    for o in objs:
        by_surface.setdefault(o.surface if o.surface in stuff else None, []).append(o)
    clauses = []
    for surface, members in by_surface.items():
        per_class: dict[str, list[SceneObject]] = {}
        for o in members:
            per_class.setdefault(o.class_name, []).append(o)
        noun = _join([_group_phrase(v) for v in per_class.values()])
        if surface == "sky":
            clauses.append(f"{noun} in {stuff['sky']}")
        elif surface is not None:
            clauses.append(f"{noun} {_PREPOSITION.get(surface, 'on')} {stuff[surface]}")
        else:
            clauses.append(noun)
    if layout.kind == "indoor":
        room = [stuff[c] for c in ("wall", "floor") if c in stuff and c not in by_surface]
        tail = f"in a room with {_join(room)}" if room else "in a room"
        first = f"{_join(clauses)} {tail}" if clauses else f"an empty room with {_join(room) or 'nothing in it'}"
    else:
        sky_named = "sky" in by_surface
        rest = [
            stuff[c]
            for c in STUFF_CLASSES
            if c in stuff and c not in ("sky", "mountain", "forest") and c not in by_surface
        ]
        first = _join(clauses) if clauses else _join(rest) or "an empty landscape"
        if clauses and rest:
            first += f" with {_join(rest)} around"
        if "sky" in stuff and not sky_named:
            first += f" under {stuff['sky']}"
        far = [stuff[c] for c in ("mountain", "forest") if c in stuff]
        if far:
            first += f", {_join(far)} in the distance"
    captions = [first[0].upper() + first[1:] + "."] if rng.random() < 0.3 else [first]

    # 2. a tag-like list of bare class names.
    tags = []
    for cls, members in groups.items():
        tags.append(_article(cls) if len(members) == 1 else f"{_NUMBERS[min(len(members), 9)]} {plural(cls)}")
    tags += [plural(c) if c == "mountain" else c for c in STUFF_CLASSES if c in stuff]
    lead = ("a photo of ", "a picture of ", "an image with ", "")[int(rng.integers(4))]
    captions.append(lead + _join(tags) + ".")

    # 3. the largest thing with its parts, or the stuff with its textures.
    if objs:
        main = objs[0]
        detail = _article(_noun(main)) + _with_parts(rng, main, int(rng.integers(1, 3)))
        verb = {
            "car": "parked",
            "truck": "parked",
            "bus": "waiting",
            "boat": "floating",
            "bird": "flying",
            "dog": "standing",
            "cat": "sitting",
            "person": "standing",
        }.get(main.class_name, "")
        where = ""
        if main.surface in stuff and main.surface != "sky":
            where = f" {_PREPOSITION.get(main.surface, 'on')} {stuff[main.surface]}"
        elif main.surface == "sky" and "sky" in stuff:
            where = f" in {stuff['sky']}"
        opener = ("a close look at ", "there is ", "", "a photo of ")[int(rng.integers(4))]
        captions.append(f"{opener}{detail}{(' ' + verb) if verb and where else ''}{where}".strip())
    else:
        names = list(stuff.values())
        captions.append(f"a view of {_join(names)}" if names else "an empty scene")

    # 4. where things are.
    if objs:
        spots = []
        for o in objs[:3]:
            x = (o.bbox[0] + o.bbox[2]) / 2 / s
            if o.surface == "sky":
                where = "at the top"
            else:
                where = "on the left" if x < 0.36 else "on the right" if x > 0.64 else "in the middle"
            spots.append(f"{_article(_noun(o, with_colour=rng.random() < 0.6))} {where}")
        captions.append(_join(spots))
    ordered = sorted(stuff, key=lambda c: _stuff_row(scene.semantic, CLASS_ID[c]))
    if len(ordered) >= 2:
        captions.append(f"{layout.phrases[ordered[0]]} above {layout.phrases[ordered[-1]]}")
    elif ordered:
        captions.append(f"mostly {layout.phrases[ordered[0]]}")

    # 5. counting.
    if objs:
        counted = _join(
            [f"{_NUMBERS[min(len(v), 9)]} {cls if len(v) == 1 else plural(cls)}" for cls, v in groups.items()]
        )
        total = len(objs)
        captions.append(f"{_NUMBERS[min(total, 9)]} {'thing' if total == 1 else 'things'} in this picture: {counted}")
    else:
        captions.append("no objects, only " + _join([c for c in STUFF_CLASSES if c in stuff] or ["background"]))
    # 6. the same things by their group ("two vehicles and a plant"); written last, so that the rng
    # draws above, and with them every other caption, stay as they were before groups existed.
    by_group: dict[str, int] = {}
    for o in objs:
        if o.class_name in GROUP_OF:
            by_group[GROUP_OF[o.class_name]] = by_group.get(GROUP_OF[o.class_name], 0) + 1
    if by_group:
        named = [_group_words(g, n) for g, n in by_group.items()]
        captions.append(f"{_join(named)} in the scene")
    return [_fix_articles(c) for c in captions]


def _fix_articles(text: str) -> str:
    """ "a orange head" -> "an orange head" (templates put colours after a fixed article)."""
    return re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", text)


def _stuff_row(semantic: np.ndarray, cls_id: int) -> float:
    rows = np.nonzero((semantic == cls_id).any(axis=1))[0]
    return float(rows.mean()) if len(rows) else 0.0
