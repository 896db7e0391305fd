"""Vocabularies of the synthetic world and its three benchmarks, mirroring the paper's open-vocabulary split.

The paper trains stage 1 on COCO-Stuff's 171 classes and evaluates zero-shot on benchmarks whose
vocabularies reach beyond it (PASCAL VOC, ADE20K-150, part datasets). The world copies that shape at
toy scale: segmentation training sees only ``SEEN_CLASSES``; the tiny CLIP, like a real web-trained
CLIP, learns every class and part word from captions, so unseen classes are reachable only through text.

Vocabularies (``describe_vocabularies()`` prints this table; a test keeps the two identical):

| benchmark | role in the paper | classes | seen / unseen | images | labelled pixels |
|---|---|---|---|---|---|
| training | COCO-Stuff (training vocabulary) | 15 | 15 / 0 | on the fly | every pixel |
| world-voc | PASCAL VOC-20 (background ignored) | 11 | 7 / 4 | 500 | things only; stuff is 255 |
| world-full | ADE20K-150 (stuff + things) | 29 | 15 / 14 | 500 | every pixel |
| world-parts | part segmentation (Pascal-Part) | 29 | 0 / 29 | 500 | thing parts only; the rest is 255 |
| world-mixed | prompt-dependent targets (Sec. 3.3) | 63 | 26 / 37 | 500 | the finest prompted name of each pixel; the rest is 255 |

| class | kind | seen in training | parts | group |
|---|---|---|---|---|
| sky | stuff | yes | - | - |
| grass | stuff | yes | - | - |
| water | stuff | yes | - | - |
| road | stuff | yes | - | - |
| wall | stuff | yes | - | - |
| floor | stuff | yes | - | - |
| sand | stuff | no | - | - |
| snow | stuff | no | - | - |
| forest | stuff | no | - | - |
| field | stuff | no | - | - |
| mountain | stuff | no | - | - |
| house | thing | yes | roof, facade, door, window | building |
| car | thing | yes | body, wheel, window | vehicle |
| tree | thing | yes | trunk, foliage | plant |
| person | thing | yes | head, torso, arm, leg | - |
| dog | thing | yes | body, head, leg, tail | animal |
| boat | thing | yes | hull, sail | vehicle |
| chair | thing | yes | seat, backrest, leg | furniture |
| bird | thing | yes | body, head, wing, beak, tail | animal |
| cloud | thing | yes | - | - |
| truck | thing | no | cab, cargo, wheel, window | vehicle |
| bus | thing | no | body, wheel, window, door | vehicle |
| bicycle | thing | no | frame, wheel | vehicle |
| cat | thing | no | body, head, leg, tail | animal |
| flower | thing | no | petal, stem | plant |
| lamp post | thing | no | pole, lamp | - |
| fence | thing | no | post, rail | - |
| table | thing | no | tabletop, leg | furniture |
| sun | thing | no | - | - |

| parts and groups | seen in segmentation training |
|---|---|
| parts | wheel, window, door, roof, head, leg, tail, sail, trunk (on seen things only) |
| parts, never labelled | facade, body, cab, cargo, frame, hull, foliage, torso, arm, wing, beak, petal, stem, pole, lamp, post, rail, seat, backrest, tabletop |
| groups | vehicle (car, truck, bus, bicycle, boat), animal (dog, cat, bird) |
| groups, never labelled | plant (tree, flower), furniture (chair, table), building (house) |

Part names (the world-parts classes): roof, facade, door, window, body, wheel, cab, cargo, frame, hull,
sail, trunk, foliage, head, torso, arm, leg, tail, wing, beak, petal, stem, pole, lamp, post, rail,
seat, backrest, tabletop. world-parts counts none of them as seen (its role is the strict zero-shot
case); world-mixed counts the parts and groups above as seen.

Seeds: training code uses small seeds (``seed * 1_000_003 + index``); benchmark images use
``seed_offset + index`` with offsets above 2e9 and a generator salt of their own, so no benchmark image
is ever a training image.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

STUFF_CLASSES: tuple[str, ...] = (
    "sky",
    "grass",
    "water",
    "road",
    "wall",
    "floor",
    "sand",
    "snow",
    "forest",
    "field",
    "mountain",
)
THING_CLASSES: tuple[str, ...] = (
    "house",
    "car",
    "tree",
    "person",
    "dog",
    "boat",
    "chair",
    "bird",
    "cloud",
    "truck",
    "bus",
    "bicycle",
    "cat",
    "flower",
    "lamp post",
    "fence",
    "table",
    "sun",
)
CLASS_NAMES: tuple[str, ...] = STUFF_CLASSES + THING_CLASSES
CLASS_ID: dict[str, int] = {name: i for i, name in enumerate(CLASS_NAMES)}

PART_NAMES: tuple[str, ...] = (
    "roof",
    "facade",
    "door",
    "window",
    "body",
    "wheel",
    "cab",
    "cargo",
    "frame",
    "hull",
    "sail",
    "trunk",
    "foliage",
    "head",
    "torso",
    "arm",
    "leg",
    "tail",
    "wing",
    "beak",
    "petal",
    "stem",
    "pole",
    "lamp",
    "post",
    "rail",
    "seat",
    "backrest",
    "tabletop",
)
PART_ID: dict[str, int] = {name: i for i, name in enumerate(PART_NAMES)}

THING_PARTS: dict[str, tuple[str, ...]] = {
    "house": ("roof", "facade", "door", "window"),
    "car": ("body", "wheel", "window"),
    "tree": ("trunk", "foliage"),
    "person": ("head", "torso", "arm", "leg"),
    "dog": ("body", "head", "leg", "tail"),
    "boat": ("hull", "sail"),
    "chair": ("seat", "backrest", "leg"),
    "bird": ("body", "head", "wing", "beak", "tail"),
    "cloud": (),
    "truck": ("cab", "cargo", "wheel", "window"),
    "bus": ("body", "wheel", "window", "door"),
    "bicycle": ("frame", "wheel"),
    "cat": ("body", "head", "leg", "tail"),
    "flower": ("petal", "stem"),
    "lamp post": ("pole", "lamp"),
    "fence": ("post", "rail"),
    "table": ("tabletop", "leg"),
    "sun": (),
}

SEEN_STUFF: tuple[str, ...] = ("sky", "grass", "water", "road", "wall", "floor")
SEEN_THINGS: tuple[str, ...] = ("house", "car", "tree", "person", "dog", "boat", "chair", "bird", "cloud")
SEEN_CLASSES: tuple[str, ...] = SEEN_STUFF + SEEN_THINGS
UNSEEN_CLASSES: tuple[str, ...] = tuple(c for c in CLASS_NAMES if c not in SEEN_CLASSES)

# Groups of things, as captions and object crops name them ("a vehicle on the road").
GROUPS: dict[str, tuple[str, ...]] = {
    "vehicle": ("car", "truck", "bus", "bicycle", "boat"),
    "animal": ("dog", "cat", "bird"),
    "plant": ("tree", "flower"),
    "furniture": ("chair", "table"),
    "building": ("house",),
}
GROUP_OF: dict[str, str] = {thing: group for group, things in GROUPS.items() for thing in things}
GROUP_NAMES: tuple[str, ...] = tuple(GROUPS)

# Labelled in segmentation training: these part names (on seen things only) and these groups.
SEEN_PARTS: tuple[str, ...] = ("wheel", "window", "door", "roof", "head", "leg", "tail", "sail", "trunk")
SEEN_GROUPS: tuple[str, ...] = ("vehicle", "animal")
SEEN_NAMES: tuple[str, ...] = SEEN_CLASSES + SEEN_PARTS + SEEN_GROUPS

# Every name a prompt can use, with its granularity; names are unique across granularities.
GRANULARITY: dict[str, str] = {
    **{name: "stuff" for name in STUFF_CLASSES},
    **{name: "thing" for name in THING_CLASSES},
    **{name: "part" for name in PART_NAMES},
    **{name: "group" for name in GROUP_NAMES},
}
ALL_NAMES: tuple[str, ...] = tuple(GRANULARITY)
GRANULARITIES: tuple[str, ...] = ("stuff", "thing", "part", "group")

if len(GRANULARITY) != len(CLASS_NAMES) + len(PART_NAMES) + len(GROUP_NAMES):
    raise AssertionError("a name is used at two granularities")  # pragma: no cover - a vocabulary edit


PLURALS: dict[str, str] = {
    "person": "people",
    "bus": "buses",
    "sky": "skies",
    "lamp post": "lamp posts",
    "bench": "benches",
    "beak": "beaks",
}

# Named object colours: captions say "a red car"; renderers jitter around these RGB centres.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 35, 35),
    "orange": (235, 130, 25),
    "yellow": (240, 205, 40),
    "green": (45, 150, 55),
    "blue": (35, 75, 200),
    "purple": (125, 45, 165),
    "pink": (235, 125, 175),
    "brown": (120, 75, 35),
    "black": (28, 28, 30),
    "white": (236, 236, 232),
    "gray": (128, 128, 132),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)


def plural(word: str) -> str:
    """English plural of a class or part name as captions write it ("person" -> "people")."""
    if word in PLURALS:
        return PLURALS[word]
    if word.endswith(("s", "x", "ch", "sh")):
        return word + "es"
    return word + "s"


@dataclass(frozen=True)
class Benchmark:
    """One fixed evaluation set: its vocabulary, which classes segmentation training saw, and its seeds.

    ``granularity`` says what a label index means: "things" (thing classes, stuff pixels are 255),
    "semantic" (every pixel one of stuff + things), "parts" (part names; non-part pixels are 255) or
    "mixed" (any name of :data:`ALL_NAMES`: each image has its own prompt set, and each pixel the
    finest name of its chain that the set holds, 255 where none; :mod:`train.world.hierarchy`).
    """

    name: str
    class_names: tuple[str, ...]
    seen: tuple[bool, ...]
    num_images: int
    seed_offset: int
    granularity: str
    role: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _benchmark(name: str, class_names: tuple[str, ...], offset: int, granularity: str, role: str) -> Benchmark:
    seen_words = set(SEEN_CLASSES)
    seen = tuple(c in seen_words for c in class_names) if granularity != "parts" else (False,) * len(class_names)
    return Benchmark(name, class_names, seen, 500, offset, granularity, role)


VOC_CLASSES: tuple[str, ...] = (
    "person",
    "car",
    "boat",
    "bird",
    "dog",
    "chair",
    "house",
    "bus",
    "bicycle",
    "cat",
    "table",
)

BENCHMARKS: dict[str, Benchmark] = {
    "world-voc": _benchmark("world-voc", VOC_CLASSES, 2_100_000_000, "things", "PASCAL VOC-20 (background ignored)"),
    "world-full": _benchmark("world-full", CLASS_NAMES, 2_200_000_000, "semantic", "ADE20K-150 (stuff + things)"),
    "world-parts": _benchmark("world-parts", PART_NAMES, 2_300_000_000, "parts", "part segmentation (Pascal-Part)"),
    "world-mixed": Benchmark(
        "world-mixed",
        ALL_NAMES,
        tuple(name in SEEN_NAMES for name in ALL_NAMES),
        500,
        2_400_000_000,
        "mixed",
        "prompt-dependent targets (Sec. 3.3)",
    ),
}


# Held-out scenes for choices about the model (a stage-2 setting, a CLIP weight): each benchmark's
# vocabulary, granularity and rules on other seeds, so that a choice made on them is not also measured on
# the images Table 1 reports.
DEV_SUFFIX = "-dev"
DEV_IMAGES = 200
DEV_SEED_SHIFT = 50_000_000  # each offset + this: far from every benchmark's 500 seeds and from training's
DEV_BENCHMARKS: dict[str, Benchmark] = {
    name + DEV_SUFFIX: dataclasses.replace(
        b,
        name=name + DEV_SUFFIX,
        num_images=DEV_IMAGES,
        seed_offset=b.seed_offset + DEV_SEED_SHIFT,
        role=f"held-out scenes of {name}, for choices about the model",
    )
    for name, b in BENCHMARKS.items()
}


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called ``name`` (one of :data:`BENCHMARKS` or its held-out ``-dev`` scenes,
    :data:`DEV_BENCHMARKS`); a clear error lists the accepted names."""
    known = {**BENCHMARKS, **DEV_BENCHMARKS}
    if name not in known:
        raise ValueError(f"unknown world benchmark {name!r}; accepted: {', '.join(known)}")
    return known[name]


def describe_vocabularies() -> str:
    """Markdown tables of the benchmarks and of every class (the module docstring holds the same text)."""
    rows = [
        "| benchmark | role in the paper | classes | seen / unseen | images | labelled pixels |",
        "|---|---|---|---|---|---|",
        f"| training | COCO-Stuff (training vocabulary) | {len(SEEN_CLASSES)} | {len(SEEN_CLASSES)} / 0 "
        "| on the fly | every pixel |",
    ]
    pixels = {
        "things": "things only; stuff is 255",
        "semantic": "every pixel",
        "parts": "thing parts only; the rest is 255",
        "mixed": "the finest prompted name of each pixel; the rest is 255",
    }
    for b in BENCHMARKS.values():
        n_seen = sum(b.seen)
        rows.append(
            f"| {b.name} | {b.role} | {b.num_classes} | {n_seen} / {b.num_classes - n_seen} | "
            f"{b.num_images} | {pixels[b.granularity]} |"
        )
    rows += ["", "| class | kind | seen in training | parts | group |", "|---|---|---|---|---|"]
    ordered = [c for c in SEEN_STUFF] + [c for c in STUFF_CLASSES if c not in SEEN_STUFF]
    ordered += [c for c in SEEN_THINGS] + [c for c in THING_CLASSES if c not in SEEN_THINGS]
    for name in ordered:
        kind = "stuff" if name in STUFF_CLASSES else "thing"
        parts = ", ".join(THING_PARTS.get(name, ())) or "-"
        group = GROUP_OF.get(name, "-")
        rows.append(f"| {name} | {kind} | {'yes' if name in SEEN_CLASSES else 'no'} | {parts} | {group} |")
    rows += ["", "| parts and groups | seen in segmentation training |", "|---|---|"]
    rows.append("| parts | " + ", ".join(SEEN_PARTS) + " (on seen things only) |")
    rows.append("| parts, never labelled | " + ", ".join(p for p in PART_NAMES if p not in SEEN_PARTS) + " |")
    rows.append("| groups | " + ", ".join(f"{g} ({', '.join(GROUPS[g])})" for g in SEEN_GROUPS) + " |")
    rows.append(
        "| groups, never labelled | "
        + ", ".join(f"{g} ({', '.join(GROUPS[g])})" for g in GROUP_NAMES if g not in SEEN_GROUPS)
        + " |"
    )
    return "\n".join(rows)
