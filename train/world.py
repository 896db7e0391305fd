"""A procedurally generated open-vocabulary world: the project's offline stand-in for COCO, ADE20K and Pascal-Part.

Why it exists: training a CLIP and a segmenter needs images with captions and label maps, and the demo
must be reproducible on a 2-core machine with no downloads. Every scene here is a pure function of its
seed (one ``numpy.random.Generator`` per scene, PIL drawing, numpy compositing), rendered fast enough to
generate training data on the fly, so nothing is stored in git.

What a scene is: stuff regions laid out like a photograph (sky above a horizon of random height with
ground below; sometimes mountains or a forest on the horizon, a road, a river, a lake or a second ground
type; or a room: a wall above a floor) and 0-5 things built from named parts (a car is a body, wheels and
windows), placed on a plausible surface (boats on water, cars preferably on roads, clouds in the sky),
scaled with distance to the horizon and drawn far-to-near so that near things occlude far ones. Stuff and
things are recognisable from appearance, not only colour: every stuff kind has its own texture (bricks,
planks, waves, grass blades, crop rows...) and every thing its own silhouette, and colours are jittered.

How it is drawn: the whole scene is drawn ONCE into an 8-bit image of "primitive ids" (a region drawn
later overwrites what is under it, which is occlusion for free); each id is a material (colour, texture,
shading) plus labels (class, part, instance), so a handful of lookup tables turn that one image into
the RGB image and the three label maps, which therefore can never disagree. Textures come from a bank of
pattern fields per image size, built once from a fixed seed (a cache, but a deterministic one).

Captions are written from the final label maps: an object is named only if enough of it is visible, a
part only if that part is visible, so every class a caption names is in the semantic map.

API: ``render_scene(seed, size, classes)`` -> :class:`Scene`; ``render_training_scene(seed, size)`` (seen
classes only) and ``training_target(scene)`` (labels over SEEN_CLASSES); ``render_object_crop(seed, size)``
-> (image, caption, class name); ``benchmark_sample(benchmark, index, size)`` -> (image, label) and
``benchmark_scene`` (the same with the whole Scene); ``classes_named(caption)``. Vocabularies and
benchmarks live in :mod:`train.vocab`; ``python -m train.render_world`` draws samples to a PNG.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from train.vocab import (
    BENCHMARKS,
    CLASS_ID,
    CLASS_NAMES,
    COLOURS,
    PART_ID,
    PART_NAMES,
    SEEN_CLASSES,
    STUFF_CLASSES,
    THING_CLASSES,
    Benchmark,
    get_benchmark,
    plural,
)

IGNORE = 255
MIN_SIZE, MAX_SIZE = 32, 1024

# Generator salts keep the streams of scenes, crops and benchmark images apart even for equal seeds.
_SALT_SCENE, _SALT_CROP, _SALT_BENCHMARK = 11, 23, 37

# ----------------------------------------------------------------------------------------------- textures
TEXTURES: tuple[str, ...] = (
    "flat", "sky", "grass", "water", "sand", "road", "brick", "snow", "forest", "field", "mountain", "planks",
    "smooth", "foliage", "bark", "fur", "siding", "tiles", "cloud", "glass",
)
_TEX = {name: i for i, name in enumerate(TEXTURES)}


def _noise(rng: np.random.Generator, n: int, cells_y: float, cells_x: float) -> np.ndarray:
    """Smooth value noise (n, n) with unit variance: a random grid of cells upsampled bicubically."""
    small = rng.standard_normal((max(2, int(cells_y)), max(2, int(cells_x)))).astype(np.float32)
    field_ = np.asarray(Image.fromarray(small).resize((n, n), Image.BICUBIC), dtype=np.float32)
    return (field_ - field_.mean()) / (field_.std() + 1e-6)


@functools.lru_cache(maxsize=6)
def _texture_bank(size: int) -> np.ndarray:
    """(len(TEXTURES), N, N) float32 pattern fields in about [-1, 1], N = 1.5 * size.

    Built from a fixed seed per size so that it is identical in every process; scenes read a window at
    a per-scene offset. Feature sizes scale with ``size`` so a 256 px scene looks like a 128 px one.
    """
    rng = np.random.default_rng(20241213 + size)
    n = size + size // 2
    f = size / 128.0
    y, x = np.mgrid[0:n, 0:n].astype(np.float32)
    grain = rng.uniform(-1.0, 1.0, (n, n)).astype(np.float32)

    def nz(feature_px_y: float, feature_px_x: float | None = None) -> np.ndarray:
        fx = feature_px_y if feature_px_x is None else feature_px_x
        return _noise(rng, n, n / (feature_px_y * f), n / (fx * f))

    bank: dict[str, np.ndarray] = {}
    bank["flat"] = 0.15 * grain
    bank["sky"] = 0.5 * nz(60) + 0.04 * grain
    bank["grass"] = np.tanh(0.8 * nz(6, 1.3) + 0.45 * nz(22) + 0.3 * grain)
    waves = np.sin(2 * np.pi * y / (5.0 * f) + 2.2 * nz(40))
    streaks = nz(2.5, 20)
    bank["water"] = np.where(streaks > 2.0, 1.0, 0.45 * waves + 0.35 * streaks)
    bank["sand"] = 0.45 * grain + 0.35 * np.sin(2 * np.pi * (y + 0.4 * x) / (7.0 * f) + 1.5 * nz(40)) + 0.25 * nz(30)
    road = 0.55 * grain + 0.3 * nz(12) + 0.2 * nz(40)
    bank["road"] = np.where(rng.uniform(size=(n, n)) > 0.985, -1.0, road)
    brick_h = max(3, round(5 * f))
    brick_w = int(round(2.2 * brick_h))
    rows = (y // brick_h).astype(np.int64)
    shifted = x + (rows % 2) * (brick_w // 2)
    cols = (shifted // brick_w).astype(np.int64)
    brick_shade = rng.uniform(-0.45, 0.25, (rows.max() + 1, cols.max() + 1)).astype(np.float32)
    mortar = (y % brick_h == 0) | (shifted % brick_w == 0)
    bank["brick"] = np.where(mortar, 0.9, brick_shade[rows, cols] + 0.15 * grain)
    bank["snow"] = np.where(grain > 0.985, 0.8, 0.45 * nz(25) + 0.1 * grain)
    bank["forest"] = 0.9 * np.tanh(1.5 * (nz(9) + 0.6 * nz(4) + 0.3 * grain))
    bank["field"] = 0.6 * np.sin(2 * np.pi * x / (4.0 * f) + 1.2 * nz(40)) + 0.25 * nz(8) + 0.2 * grain
    bank["mountain"] = 0.5 * nz(40) + 0.35 * np.sin(2 * np.pi * (0.6 * x + y) / (9.0 * f) + 2.0 * nz(30)) + 0.15 * grain
    plank_h = max(4, round(9 * f))
    plank_rows = (y // plank_h).astype(np.int64)
    plank_shade = rng.uniform(-0.35, 0.35, plank_rows.max() + 1).astype(np.float32)
    plank_len = max(20, round(60 * f))
    plank_ends = rng.integers(0, plank_len, plank_rows.max() + 1)
    seam = (y % plank_h == 0) | ((x + plank_ends[plank_rows]) % plank_len == 0)
    bank["planks"] = np.where(seam, -0.9, plank_shade[plank_rows] + 0.35 * nz(1.5, 25) + 0.1 * grain)
    bank["smooth"] = 0.6 * nz(45) + 0.12 * grain
    bank["foliage"] = 0.9 * np.tanh(1.5 * (nz(3) + 0.5 * nz(8))) + 0.1 * grain
    bank["bark"] = 0.7 * nz(40, 2.5) + 0.2 * grain
    bank["fur"] = 0.5 * nz(1.5, 4) + 0.25 * grain
    siding_h = max(3, round(4 * f))
    bank["siding"] = np.where(y % siding_h == 0, -0.9, 0.3 * ((y % siding_h) / siding_h - 0.5)) + 0.1 * grain
    tile_h = max(3, round(4 * f))
    tile_rows = (y // tile_h).astype(np.int64)
    tile_x = x + (tile_rows % 2) * tile_h
    bank["tiles"] = np.where(tile_x % (2 * tile_h) == 0, -0.8, 0.9 * (y % tile_h) / tile_h - 0.45) + 0.1 * grain
    bank["cloud"] = 0.6 * nz(12) + 0.05 * grain
    bank["glass"] = np.where((x + y) % max(8, round(18 * f)) < 3 * f, 0.8, -0.2) + 0.1 * nz(20)
    stacked = np.stack([bank[name] for name in TEXTURES]).astype(np.float32)
    return np.clip(stacked, -1.2, 1.2)


@functools.lru_cache(maxsize=6)
def _pixel_grid(size: int, bank_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat offsets y * bank_side + x of a (size, size) window into a texture field, and y/size - 0.5 for shading."""
    iy, ix = np.indices((size, size))
    return (iy * bank_side + ix).astype(np.int64), (iy / size - 0.5).astype(np.float32)


# ------------------------------------------------------------------------------------------------ canvas
@dataclass(frozen=True)
class _Material:
    rgb: tuple[float, float, float]
    texture: int
    amp: float  # texture strength
    grad: float  # vertical shading: brightness changes by grad per image height (sky lightens downwards)
    cls: int
    part: int
    inst: int


class _Canvas:
    """One scene as an 8-bit image of material ids; drawing later is drawing in front (occlusion)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.image = Image.new("L", (size, size), 0)
        self.draw = ImageDraw.Draw(self.image)
        self.materials: list[_Material] = [_Material((0.0, 0.0, 0.0), 0, 0.0, 0.0, IGNORE, IGNORE, 0)]
        self._ids: dict[_Material, int] = {}

    def mat(self, rgb: tuple[float, float, float], texture: str, amp: float, cls: str, part: str | None = None,
            inst: int = 0, grad: float = 0.0) -> int:
        """The id of a material (allocated on first use): its look and the labels its pixels get."""
        m = _Material(tuple(float(c) for c in rgb), _TEX[texture], amp, grad, CLASS_ID[cls],
                      IGNORE if part is None else PART_ID[part], inst)
        if m not in self._ids:
            if len(self.materials) == 256:
                raise RuntimeError("scene uses more than 255 materials; draw fewer things")
            self._ids[m] = len(self.materials)
            self.materials.append(m)
        return self._ids[m]

    def poly(self, pts, m: int) -> None:
        if len(pts) >= 3:
            self.draw.polygon(pts, fill=m)

    def rect(self, x0, y0, x1, y1, m: int) -> None:
        self.draw.rectangle((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), fill=m)

    def ellipse(self, x0, y0, x1, y1, m: int) -> None:
        self.draw.ellipse((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), fill=m)

    def circle(self, cx, cy, r, m: int) -> None:
        self.draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=m)

    def ring(self, cx, cy, r, width: float, m: int) -> None:
        self.draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=m, width=max(1, int(round(width))))

    def line(self, pts, width: float, m: int) -> None:
        self.draw.line(pts, fill=m, width=max(1, int(round(width))), joint="curve")

    def labels_now(self) -> np.ndarray:
        """Semantic class map of what is drawn so far (used to put things on plausible surfaces)."""
        lut = np.array([m.cls for m in self.materials] + [IGNORE] * (256 - len(self.materials)), dtype=np.int32)
        return lut[np.asarray(self.image)]

    def render(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(image uint8 (S,S,3), semantic, parts, instances int32 (S,S)) from the drawn ids."""
        s = self.size
        count = len(self.materials)
        colour = np.zeros((256, 3), np.float32)
        colour[:count] = [m.rgb for m in self.materials]
        colour *= rng.uniform(0.9, 1.08)  # scene exposure
        texture = np.zeros(256, np.int64)
        texture[:count] = [m.texture for m in self.materials]
        amp = np.zeros(256, np.float32)
        amp[:count] = [m.amp for m in self.materials]
        grad = np.zeros(256, np.float32)
        grad[:count] = [m.grad for m in self.materials]
        labels = np.full((3, 256), IGNORE, np.int32)
        labels[:, :count] = np.array([[m.cls, m.part, m.inst] for m in self.materials], np.int32).T

        ids = np.asarray(self.image)
        bank = _texture_bank(s)
        n = bank.shape[1]
        oy, ox = rng.integers(0, n - s + 1, size=2)
        flat_pixel, rel_y = _pixel_grid(s, n)
        # pattern[y, x] = bank[texture of the pixel's material, y + oy, x + ox]; np.take is the fast gather
        pattern = np.take(bank.reshape(-1), np.take(texture, ids) * (n * n) + (flat_pixel + int(oy * n + ox)))
        strength = np.take(amp, ids) * pattern  # (S,S)
        shade = 1.0 + strength + np.take(grad, ids) * rel_y
        rgb = np.take(colour, ids, axis=0)  # (S,S,3)
        rgb *= shade[..., None]
        rgb += (18.0 * strength)[..., None]
        np.clip(rgb, 0, 255, out=rgb)
        return rgb.astype(np.uint8), np.take(labels[0], ids), np.take(labels[1], ids), np.take(labels[2], ids)


class _Frame:
    """An object's local coordinates: u to the front (mirrored by facing), v up, both in units of h."""

    def __init__(self, cx: float, by: float, h: float, facing: int) -> None:
        self.cx, self.by, self.h, self.f = cx, by, h, facing

    def p(self, u: float, v: float) -> tuple[float, float]:
        return (self.cx + self.f * u * self.h, self.by - v * self.h)

    def pts(self, uv) -> list[tuple[float, float]]:
        return [self.p(u, v) for u, v in uv]

    def box(self, u0, v0, u1, v1) -> tuple[float, float, float, float]:
        (x0, y0), (x1, y1) = self.p(u0, v0), self.p(u1, v1)
        return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def _jitter(rng: np.random.Generator, rgb, amount: int = 14) -> tuple[float, float, float]:
    """The colour with a random gain and a per-channel offset of up to ``amount``."""
    gain = 0.9 + 0.18 * rng.random()
    noise = rng.integers(-amount, amount + 1, size=3).tolist()
    return tuple(min(255.0, max(0.0, c * gain + d)) for c, d in zip(rgb, noise))


def _colour(rng: np.random.Generator, names: tuple[str, ...]) -> tuple[str, tuple[float, float, float]]:
    name = names[int(rng.integers(len(names)))]
    return name, _jitter(rng, COLOURS[name])


def _shade(rgb, factor: float) -> tuple[float, float, float]:
    return tuple(min(255.0, c * factor) for c in rgb)


# ------------------------------------------------------------------------------------------------- stuff
# (caption phrase, RGB, texture, texture strength, vertical shading) per stuff kind.
STUFF_LOOKS: dict[str, list[tuple[str, tuple[int, int, int], str, float, float]]] = {
    "sky": [
        ("a clear blue sky", (95, 150, 228), "sky", 0.06, 0.6),
        ("a pale blue sky", (150, 190, 235), "sky", 0.06, 0.35),
        ("a gray overcast sky", (165, 170, 182), "sky", 0.12, 0.3),
        ("an orange evening sky", (236, 150, 100), "sky", 0.06, 0.5),
    ],
    "grass": [
        ("green grass", (75, 150, 50), "grass", 0.3, 0.2),
        ("lush green grass", (50, 128, 42), "grass", 0.3, 0.2),
        ("dry yellow grass", (165, 160, 72), "grass", 0.28, 0.2),
    ],
    "water": [
        ("blue water", (45, 100, 175), "water", 0.25, 0.2),
        ("dark blue water", (30, 65, 135), "water", 0.3, 0.2),
        ("green water", (45, 115, 112), "water", 0.25, 0.2),
    ],
    "road": [
        ("a gray road", (92, 92, 97), "road", 0.3, 0.1),
        ("a dark asphalt road", (62, 62, 68), "road", 0.35, 0.1),
    ],
    "wall": [
        ("a red brick wall", (160, 72, 52), "brick", 0.35, 0.0),
        ("a gray stone wall", (135, 135, 140), "brick", 0.35, 0.0),
        ("a yellow brick wall", (200, 170, 105), "brick", 0.3, 0.0),
        ("a white painted wall", (222, 220, 208), "smooth", 0.08, 0.1),
    ],
    "floor": [
        ("a wooden floor", (150, 100, 58), "planks", 0.3, 0.0),
        ("a light wooden floor", (196, 152, 102), "planks", 0.28, 0.0),
        ("a dark wooden floor", (100, 64, 38), "planks", 0.35, 0.0),
    ],
    "sand": [
        ("yellow sand", (222, 196, 140), "sand", 0.16, 0.1),
        ("pale sand", (234, 218, 178), "sand", 0.14, 0.1),
        ("golden sand", (210, 172, 108), "sand", 0.18, 0.1),
    ],
    "snow": [
        ("white snow", (238, 242, 250), "snow", 0.1, 0.05),
        ("fresh snow", (226, 234, 248), "snow", 0.12, 0.05),
    ],
    "forest": [
        ("a dark green forest", (30, 78, 38), "forest", 0.5, 0.0),
        ("a green forest", (48, 102, 46), "forest", 0.5, 0.0),
        ("a pine forest", (30, 68, 55), "forest", 0.5, 0.0),
    ],
    "field": [
        ("a golden wheat field", (215, 185, 90), "field", 0.3, 0.1),
        ("a green crop field", (125, 165, 65), "field", 0.3, 0.1),
        ("a brown ploughed field", (135, 95, 65), "field", 0.35, 0.1),
    ],
    "mountain": [
        ("gray mountains", (118, 122, 140), "mountain", 0.3, -0.3),
        ("brown mountains", (135, 112, 92), "mountain", 0.3, -0.3),
        ("blue mountains", (95, 110, 148), "mountain", 0.3, -0.3),
    ],
}
_GROUNDS = {"grass": 3.0, "road": 0.7, "sand": 1.5, "snow": 1.2, "field": 1.5, "water": 1.2}
_PREPOSITION = {"grass": "on", "road": "on", "sand": "on", "snow": "in", "field": "in", "water": "on", "floor": "on"}


@dataclass
class _Layout:
    kind: str  # "outdoor", "indoor" or "bands"
    horizon: float  # pixel row where the ground starts
    phrases: dict[str, str] = field(default_factory=dict)  # stuff class -> caption phrase
    ground: str | None = None


def _stuff_mat(cv: _Canvas, rng: np.random.Generator, layout: _Layout, name: str) -> int:
    phrase, rgb, texture, amp, grad = STUFF_LOOKS[name][int(rng.integers(len(STUFF_LOOKS[name])))]
    layout.phrases.setdefault(name, phrase)
    return cv.mat(_jitter(rng, rgb, 10), texture, amp, name, grad=grad)


def _wavy(rng: np.random.Generator, s: float, y: float, amplitude: float, points: int = 10) -> list[tuple[float, float]]:
    phase, wavelength = rng.uniform(0, 2 * math.pi), rng.uniform(0.5, 1.2) * s
    xs = np.linspace(-2, s + 2, points)
    return [(float(x), float(y + amplitude * math.sin(2 * math.pi * x / wavelength + phase))) for x in xs]


def _draw_mountains(cv: _Canvas, rng: np.random.Generator, layout: _Layout, s: float, h0: float) -> None:
    m = _stuff_mat(cv, rng, layout, "mountain")
    snow_cap = cv.mat(_jitter(rng, (238, 240, 246), 6), "snow", 0.1, "mountain")
    n = int(rng.integers(2, 5))
    apex_x = np.sort(rng.uniform(-0.1, 1.1, n)) * s
    pts = [(-2.0, h0 + 1), (-2.0, h0 - rng.uniform(0.0, 0.1) * s)]
    apexes = []
    for i, ax in enumerate(apex_x):
        ay = max(0.04 * s, h0 - rng.uniform(0.12, 0.32) * s)
        pts.append((float(ax), float(ay)))
        apexes.append((len(pts) - 1, ax, ay))
        nxt = apex_x[i + 1] if i + 1 < n else s + 0.1 * s
        pts.append((float((ax + nxt) / 2), float(h0 - rng.uniform(0.0, 0.1) * s)))
    pts += [(s + 2.0, h0 - rng.uniform(0.0, 0.1) * s), (s + 2.0, h0 + 1)]
    cv.poly(pts, m)
    if rng.random() < 0.6:
        for index, ax, ay in apexes:
            (lx, ly), (rx, ry) = pts[index - 1], pts[index + 1]
            t = rng.uniform(0.2, 0.35)
            left = (ax + t * (lx - ax), ay + t * (ly - ay))
            right = (ax + t * (rx - ax), ay + t * (ry - ay))
            mid = (ax, ay + 0.8 * t * ((ly + ry) / 2 - ay))
            cv.poly([(ax, ay), right, mid, left], snow_cap)


def _draw_forest(cv: _Canvas, rng: np.random.Generator, layout: _Layout, s: float, h0: float) -> None:
    m = _stuff_mat(cv, rng, layout, "forest")
    top = h0 - rng.uniform(0.07, 0.15) * s
    r = rng.uniform(0.03, 0.05) * s
    cv.rect(-1, top + r, s + 1, h0 + 1, m)
    pine = rng.random() < 0.5
    x = -r
    while x < s + r:
        jitter = rng.uniform(-0.6, 0.6) * r
        if pine:
            cv.poly([(x, top + jitter - r), (x - r, top + 2.5 * r), (x + r, top + 2.5 * r)], m)
        else:
            cv.circle(x, top + r + jitter, r * rng.uniform(0.9, 1.3), m)
        x += r * rng.uniform(1.0, 1.5)


def _draw_perspective_road(cv: _Canvas, rng: np.random.Generator, layout: _Layout, s: float, h0: float) -> None:
    m = _stuff_mat(cv, rng, layout, "road")
    marking = cv.mat(_jitter(rng, (235, 235, 225) if rng.random() < 0.6 else (235, 200, 60), 8), "flat", 0.3, "road")
    vx = rng.uniform(0.3, 0.7) * s
    bx = vx + rng.uniform(-0.3, 0.3) * s
    top_w, bottom_w = 0.015 * s, rng.uniform(0.25, 0.45) * s
    cv.poly([(vx - top_w, h0), (vx + top_w, h0), (bx + bottom_w, s + 1), (bx - bottom_w, s + 1)], m)

    def centre(t: float) -> tuple[float, float, float]:
        return vx + t * (bx - vx), h0 + t * (s + 1 - h0), 0.05 * (top_w + t * (bottom_w - top_w))

    for t0, t1 in ((0.12, 0.2), (0.3, 0.42), (0.55, 0.72), (0.84, 1.0)):
        (x0, y0, w0), (x1, y1, w1) = centre(t0), centre(t1)
        cv.poly([(x0 - w0, y0), (x0 + w0, y0), (x1 + w1, y1), (x1 - w1, y1)], marking)


def _draw_straight_road(cv: _Canvas, rng: np.random.Generator, layout: _Layout, s: float, h0: float) -> None:
    m = _stuff_mat(cv, rng, layout, "road")
    marking = cv.mat(_jitter(rng, (235, 235, 225), 8), "flat", 0.3, "road")
    width = rng.uniform(0.14, 0.24) * s
    y0 = h0 + rng.uniform(0.15, 0.55) * (s - h0)
    cv.rect(-1, y0, s + 1, y0 + width, m)
    dash = 0.08 * s
    x = rng.uniform(-dash, 0)
    mid, thick = y0 + width / 2, max(1.0, 0.012 * s)
    while x < s:
        cv.rect(x, mid - thick, x + dash, mid + thick, marking)
        x += 2 * dash


def _layout_outdoor(cv: _Canvas, rng: np.random.Generator, s: int, allowed: set[str]) -> _Layout:
    h0 = rng.uniform(0.3, 0.55) * s
    layout = _Layout("outdoor", h0)
    cv.rect(0, 0, s, s, _stuff_mat(cv, rng, layout, "sky"))
    far = [name for name in ("mountain", "forest") if name in allowed]
    if far and rng.random() < 0.55:
        choice = far[int(rng.integers(len(far)))]
        if choice == "mountain":
            _draw_mountains(cv, rng, layout, s, h0)
            if "forest" in allowed and rng.random() < 0.3:
                _draw_forest(cv, rng, layout, s, h0)
        else:
            _draw_forest(cv, rng, layout, s, h0)
    grounds = [g for g in _GROUNDS if g in allowed]
    weights = np.array([_GROUNDS[g] for g in grounds])
    ground = grounds[int(rng.choice(len(grounds), p=weights / weights.sum()))]
    layout.ground = ground
    cv.rect(-1, h0, s + 1, s + 1, _stuff_mat(cv, rng, layout, ground))
    others = [g for g in grounds if g not in (ground, "water", "road")]
    if ground == "water":
        shores = [g for g in ("sand", "grass", "snow") if g in allowed]
        if shores and rng.random() < 0.6:
            shore = shores[int(rng.integers(len(shores)))]
            y = h0 + rng.uniform(0.45, 0.7) * (s - h0)
            cv.poly(_wavy(rng, s, y, 0.03 * s) + [(s + 2, s + 2), (-2, s + 2)], _stuff_mat(cv, rng, layout, shore))
        return layout
    options = []
    if "water" in allowed:
        options += ["lake", "river"]
    if "road" in allowed and ground != "road":
        options += ["road", "road"]
    if others:
        options.append("patch")
    if not options or rng.random() < 0.35:
        return layout
    option = options[int(rng.integers(len(options)))]
    if option == "lake":
        depth = rng.uniform(0.12, 0.3) * (s - h0)
        cv.poly([(-2, h0)] + _wavy(rng, s, h0 + depth, 0.02 * s) + [(s + 2, h0)], _stuff_mat(cv, rng, layout, "water"))
    elif option == "river":
        y = h0 + rng.uniform(0.25, 0.65) * (s - h0)
        width = rng.uniform(0.07, 0.15) * s
        top = _wavy(rng, s, y, 0.04 * s)
        bottom = [(x, yy + width * rng.uniform(0.8, 1.2)) for x, yy in reversed(top)]
        cv.poly(top + bottom, _stuff_mat(cv, rng, layout, "water"))
    elif option == "road":
        (_draw_perspective_road if rng.random() < 0.6 else _draw_straight_road)(cv, rng, layout, s, h0)
    else:
        other = others[int(rng.integers(len(others)))]
        left = rng.random() < 0.5
        edge = -2 if left else s + 2
        y = h0 + rng.uniform(0.2, 0.6) * (s - h0)
        reach = rng.uniform(0.35, 0.75) * s
        inner = reach if left else s - reach
        pts = [(edge, y), ((edge + inner) / 2, y + rng.uniform(-0.05, 0.08) * s), (inner, s + 2), (edge, s + 2)]
        cv.poly(pts, _stuff_mat(cv, rng, layout, other))
    return layout


def _layout_indoor(cv: _Canvas, rng: np.random.Generator, s: int) -> _Layout:
    h0 = rng.uniform(0.45, 0.68) * s
    layout = _Layout("indoor", h0, ground="floor")
    wall = _stuff_mat(cv, rng, layout, "wall")
    cv.rect(0, 0, s, s, wall)
    cv.rect(-1, h0, s + 1, s + 1, _stuff_mat(cv, rng, layout, "floor"))
    if rng.random() < 0.6:  # skirting board: still wall
        board = cv.mat(_jitter(rng, (235, 232, 220) if rng.random() < 0.5 else (90, 60, 40), 8), "flat", 0.3, "wall")
        cv.rect(-1, h0 - 0.025 * s, s + 1, h0, board)
    return layout


def _layout_bands(cv: _Canvas, rng: np.random.Generator, s: int, stuff: list[str]) -> _Layout:
    """Fallback for a vocabulary with no sky+ground or wall+floor pair: horizontal bands of what is allowed."""
    chosen = [stuff[int(i)] for i in rng.choice(len(stuff), size=min(len(stuff), int(rng.integers(1, 4))), replace=False)]
    layout = _Layout("bands", s / 2, ground=chosen[-1])
    edges = np.sort(rng.uniform(0.25, 0.75, len(chosen) - 1)) * s
    tops = [0.0, *edges]
    for name, top in zip(chosen, tops):
        cv.rect(-1, top, s + 1, s + 1, _stuff_mat(cv, rng, layout, name))
    layout.horizon = float(tops[1]) if len(tops) > 1 else s * 0.3
    return layout


def _layout(cv: _Canvas, rng: np.random.Generator, s: int, allowed: set[str]) -> _Layout:
    outdoor_ok = "sky" in allowed and any(g in allowed for g in _GROUNDS)
    indoor_ok = "wall" in allowed and "floor" in allowed
    if outdoor_ok and (not indoor_ok or rng.random() < 0.75):
        return _layout_outdoor(cv, rng, s, allowed)
    if indoor_ok:
        return _layout_indoor(cv, rng, s)
    stuff = [c for c in STUFF_CLASSES if c in allowed]
    return _layout_bands(cv, rng, s, stuff)


# ------------------------------------------------------------------------------------------------ things
@dataclass
class _Drawn:
    colour: str  # the object's colour as captions name it
    part_colours: dict[str, str]
    kind: str = ""  # a sub-type captions may use ("pine" tree)


_SKIN = ((235, 195, 160), (200, 150, 110), (150, 100, 70), (100, 65, 45), (245, 210, 180))
_GLASS = (150, 190, 220)


def _draw_car(cv: _Canvas, rng: np.random.Generator, inst: int, cx: float, by: float, h: float, facing: int) -> _Drawn:
    fr = _Frame(cx, by, h, facing)
    name, rgb = _colour(rng, ("red", "blue", "yellow", "white", "black", "gray", "green", "orange", "purple"))
    body = cv.mat(rgb, "smooth", 0.12, "car", "body", inst, grad=-0.6)
    glass = cv.mat(_jitter(rng, _GLASS, 10), "glass", 0.2, "car", "window", inst)
    tyre = cv.mat(_jitter(rng, (30, 30, 32), 4), "flat", 0.3, "car", "wheel", inst)
    hub = cv.mat(_jitter(rng, (165, 165, 170), 8), "flat", 0.3, "car", "wheel", inst)
    lamp = cv.mat((245, 235, 170), "flat", 0.1, "car", "body", inst)
    top = rng.uniform(0.9, 1.0)
    cv.poly(fr.pts([(-1.15, 0.16), (1.15, 0.16), (1.17, 0.42), (1.05, 0.58), (-1.08, 0.6), (-1.17, 0.48)]), body)
    cv.poly(fr.pts([(-0.72, 0.58), (0.5, 0.58), (0.2, top), (-0.6, top)]), body)
    cv.poly(fr.pts([(-0.66, 0.62), (-0.08, 0.62), (-0.08, top - 0.06), (-0.56, top - 0.06)]), glass)
    cv.poly(fr.pts([(0.0, 0.62), (0.42, 0.62), (0.18, top - 0.06), (0.0, top - 0.06)]), glass)
    cv.ellipse(*fr.box(1.06, 0.4, 1.16, 0.5), lamp)
    for u in (-0.7, 0.72):
        x, y = fr.p(u, 0.22)
        cv.circle(x, y, 0.22 * h, tyre)
        cv.circle(x, y, 0.1 * h, hub)
    return _Drawn(name, {"body": name, "wheel": "black", "window": "light blue"})


def _draw_truck(cv: _Canvas, rng: np.random.Generator, inst: int, cx: float, by: float, h: float, facing: int) -> _Drawn:
    fr = _Frame(cx, by, h, facing)
    name, rgb = _colour(rng, ("red", "blue", "yellow", "white", "green", "orange", "black"))
    cargo_name, cargo_rgb = _colour(rng, ("white", "gray", "red", "blue", "yellow", "orange", "green"))
    length = rng.uniform(1.1, 1.4)
    cab = cv.mat(rgb, "smooth", 0.12, "truck", "cab", inst, grad=-0.5)
    cargo = cv.mat(cargo_rgb, "siding", 0.12, "truck", "cargo", inst, grad=-0.3)
    glass = cv.mat(_jitter(rng, _GLASS, 10), "glass", 0.2, "truck", "window", inst)
    tyre = cv.mat(_jitter(rng, (30, 30, 32), 4), "flat", 0.3, "truck", "wheel", inst)
    hub = cv.mat(_jitter(rng, (165, 165, 170), 8), "flat", 0.3, "truck", "wheel", inst)
    cv.rect(*fr.box(-length, 0.16, 0.38, 1.0), cargo)
    cv.poly(fr.pts([(0.44, 0.16), (1.25, 0.16), (1.25, 0.48), (1.05, 0.8), (0.44, 0.8)]), cab)
    cv.poly(fr.pts([(0.62, 0.5), (1.12, 0.5), (0.98, 0.72), (0.62, 0.72)]), glass)
    for u in (-length + 0.35, -length + 0.78, 0.92):
        x, y = fr.p(u, 0.19)
        cv.circle(x, y, 0.19 * h, tyre)
        cv.circle(x, y, 0.08 * h, hub)
    return _Drawn(name, {"cab": name, "cargo": cargo_name, "wheel": "black", "window": "light blue"})


def _draw_bus(cv: _Canvas, rng: np.random.Generator, inst: int, cx: float, by: float, h: float, facing: int) -> _Drawn:
    fr = _Frame(cx, by, h, facing)
    name, rgb = _colour(rng, ("yellow", "red", "blue", "white", "green", "orange"))
    length = rng.uniform(1.3, 1.6)
    body = cv.mat(rgb, "smooth", 0.1, "bus", "body", inst, grad=-0.4)
    stripe = cv.mat(_shade(rgb, 0.7), "flat", 0.2, "bus", "body", inst)
    glass = cv.mat(_jitter(rng, (120, 160, 190), 10), "glass", 0.2, "bus", "window", inst)
    door_name, door_rgb = "dark", _jitter(rng, (60, 80, 95), 8)
    door = cv.mat(door_rgb, "flat", 0.2, "bus", "door", inst)
    tyre = cv.mat(_jitter(rng, (30, 30, 32), 4), "flat", 0.3, "bus", "wheel", inst)
    hub = cv.mat(_jitter(rng, (165, 165, 170), 8), "flat", 0.3, "bus", "wheel", inst)
    x0, y0, x1, y1 = fr.box(-length, 0.12, length, 1.0)
    cv.draw.rounded_rectangle((x0, y0, x1, y1), radius=max(1, int(0.12 * h)), fill=body)
    cv.rect(*fr.box(-length, 0.3, length, 0.38), stripe)
    n = int(rng.integers(3, 6))
    span = 2 * length - 0.6
    width = span / n
    for i in range(n):
        u0 = -length + 0.1 + i * width
        cv.rect(*fr.box(u0 + 0.04, 0.55, u0 + width - 0.04, 0.88), glass)
    cv.rect(*fr.box(length - 0.42, 0.15, length - 0.2, 0.88), door)
    cv.rect(*fr.box(length - 0.14, 0.45, length - 0.02, 0.9), glass)
    for u in (-length + 0.45, length - 0.7):
        x, y = fr.p(u, 0.17)
        cv.circle(x, y, 0.17 * h, tyre)
        cv.circle(x, y, 0.07 * h, hub)
    return _Drawn(name, {"body": name, "wheel": "black", "window": "light blue", "door": door_name})


def _draw_bicycle(cv: _Canvas, rng: np.random.Generator, inst: int, cx: float, by: float, h: float, facing: int) -> _Drawn:
    fr = _Frame(cx, by, h, facing)
    name, rgb = _colour(rng, ("red", "blue", "yellow", "green", "black", "orange", "purple", "white"))
    frame = cv.mat(rgb, "flat", 0.2, "bicycle", "frame", inst)
    saddle = cv.mat(_jitter(rng, (35, 30, 30), 5), "flat", 0.2, "bicycle", "frame", inst)
    tyre = cv.mat(_jitter(rng, (30, 30, 32), 4), "flat", 0.3, "bicycle", "wheel", inst)
    r = 0.32
    rear, front = fr.p(-0.55, r), fr.p(0.58, r)
    bracket, seat, head_low, head_top = fr.p(-0.02, r), fr.p(-0.22, 0.86), fr.p(0.42, 0.74), fr.p(0.47, 0.95)
    w = max(1.5, 0.07 * h)
    for x, y in (rear, front):
        cv.ring(x, y, r * h, max(2.0, 0.08 * h), tyre)
        cv.circle(x, y, max(1.0, 0.04 * h), tyre)
    tubes = ((rear, bracket), (rear, seat), (bracket, seat), (seat, head_low), (bracket, head_low), (head_low, front), (head_low, head_top))
    for a, b in tubes:
        cv.line([a, b], w, frame)
    cv.line([fr.p(-0.32, 0.9), fr.p(-0.12, 0.9)], max(2.0, 0.08 * h), saddle)
    cv.line([head_top, fr.p(0.36, 0.97)], w, saddle)
    return _Drawn(name, {"frame": name, "wheel": "black"})


def _draw_boat(cv: _Canvas, rng: np.random.Generator, inst: int, cx: float, by: float, h: float, facing: int) -> _Drawn:
    fr = _Frame(cx, by, h, facing)
    name, rgb = _colour(rng, ("red", "blue", "white", "yellow", "green", "brown", "black", "orange"))
    sail_name, sail_rgb = _colour(rng, ("white", "white", "white", "red", "yellow", "blue", "orange"))
    hull = cv.mat(rgb, "smooth", 0.12, "boat", "hull", inst, grad=-0.3)
    rim = cv.mat(_jitter(rng, (235, 235, 230), 6), "flat", 0.2, "boat", "hull", inst)
    sail = cv.mat(sail_rgb, "cloud", 0.15, "boat", "sail", inst, grad=-0.2)
    mast = cv.mat(_jitter(rng, (90, 70, 50), 8), "bark", 0.2, "boat", None, inst)
    cv.poly(fr.pts([(-0.62, 0.3), (0.72, 0.34), (0.48, 0.0), (-0.52, 0.0)]), hull)
    cv.poly(fr.pts([(-0.62, 0.3), (0.72, 0.34), (0.7, 0.31), (-0.62, 0.26)]), rim)
    cv.line([fr.p(0.0, 0.3), fr.p(0.0, 1.0)], max(1.0, 0.03 * h), mast)
    cv.poly(fr.pts([(0.04, 0.38), (0.04, 0.97), (0.5, 0.38)]), sail)
    if rng.random() < 0.7:
        cv.poly(fr.pts([(-0.04, 0.42), (-0.04, 0.9), (-0.42, 0.42)]), sail)
    return _Drawn(name, {"hull": name, "sail": sail_name})


def _draw_tree(cv: _Canvas, rng: np.random.Generator, inst: int, cx: float, by: float, h: float, facing: int) -> _Drawn:
    fr = _Frame(cx, by, h, facing)
    trunk = cv.mat(_jitter(rng, (105, 70, 40), 12), "bark", 0.4, "tree", "trunk", inst)
    if rng.random() < 0.35:
        leaves = cv.mat(_jitter(rng, (30, 90, 45), 10), "foliage", 0.45, "tree", "foliage", inst, grad=-0.4)
        cv.rect(*fr.box(-0.06, 0.0, 0.06, 0.3), trunk)
        for base, top, half in ((0.15, 0.62, 0.38), (0.38, 0.82, 0.3), (0.58, 1.0, 0.22)):
            cv.poly(fr.pts([(0.0, top), (-half, base), (half, base)]), leaves)
        return _Drawn("green", {"trunk": "brown", "foliage": "dark green"}, kind="pine")
    colour = ("green", "green", "green", "orange", "yellow")[int(rng.integers(5))]
    leaf_rgb = {"green": (60, 140, 50), "orange": (215, 120, 35), "yellow": (215, 190, 50)}[colour]
    leaves = cv.mat(_jitter(rng, leaf_rgb, 14), "foliage", 0.45, "tree", "foliage", inst, grad=-0.4)
    half = rng.uniform(0.05, 0.07)
    cv.poly(fr.pts([(-half, 0.0), (half, 0.0), (half * 0.7, 0.55), (-half * 0.7, 0.55)]), trunk)
    for _ in range(int(rng.integers(3, 6))):
        u, v, r = rng.uniform(-0.15, 0.15), rng.uniform(0.6, 0.78), rng.uniform(0.17, 0.25)
        x, y = fr.p(u, v)
        cv.circle(x, y, r * h, leaves)
    return _Drawn(colour, {"trunk": "brown", "foliage": colour}, kind="round")


def _draw_house(cv: _Canvas, rng: np.random.Generator, inst: int, cx: float, by: float, h: float, facing: int) -> _Drawn:
    fr = _Frame(cx, by, h, facing)
    name, rgb = _colour(rng, ("white", "yellow", "red", "blue", "gray", "orange", "pink", "green"))
    roof_name, roof_rgb = _colour(rng, ("red", "brown", "gray", "black", "blue"))
    door_name, door_rgb = _colour(rng, ("brown", "red", "blue", "green", "black", "white"))
    half = rng.uniform(0.45, 0.62)
    wall_top = rng.uniform(0.55, 0.65)
    facade = cv.mat(rgb, "siding", 0.15, "house", "facade", inst)
    roof = cv.mat(roof_rgb, "tiles", 0.3, "house", "roof", inst)
    door = cv.mat(door_rgb, "planks", 0.15, "house", "door", inst)
    glass = cv.mat(_jitter(rng, _GLASS, 10), "glass", 0.2, "house", "window", inst)
    frame = cv.mat(_jitter(rng, (240, 240, 235), 5), "flat", 0.1, "house", "window", inst)
    cv.rect(*fr.box(-half, 0.0, half, wall_top), facade)
    if rng.random() < 0.3:  # chimney, part of the roof
        cv.rect(*fr.box(half * 0.45, wall_top + 0.1, half * 0.65, 0.98), roof)
    if rng.random() < 0.7:
        cv.poly(fr.pts([(-half - 0.08, wall_top), (half + 0.08, wall_top), (0.0, 1.0)]), roof)
    else:
        cv.poly(fr.pts([(-half - 0.06, wall_top), (half + 0.06, wall_top), (half * 0.6, 0.92), (-half * 0.6, 0.92)]), roof)
    door_u = rng.uniform(-half + 0.1, half - 0.22)
    cv.rect(*fr.box(door_u, 0.0, door_u + 0.16, 0.3), door)
    windows = 0
    for u0 in (-half + 0.08, half - 0.27):
        if u0 + 0.19 > door_u and u0 < door_u + 0.16:
            continue
        box = fr.box(u0, wall_top - 0.3, u0 + 0.19, wall_top - 0.1)
        cv.rect(*box, frame)
        x0, y0, x1, y1 = box
        pad = max(1.0, 0.02 * h)
        cv.rect(x0 + pad, y0 + pad, x1 - pad, y1 - pad, glass)
        cv.line([((x0 + x1) / 2, y0), ((x0 + x1) / 2, y1)], max(1.0, 0.015 * h), frame)
        windows += 1
    return _Drawn(name, {"facade": name, "roof": roof_name, "door": door_name, "window": "light blue"}, kind=str(windows))


def _draw_person(cv: _Canvas, rng: np.random.Generator, inst: int, cx: float, by: float, h: float, facing: int) -> _Drawn:
    fr = _Frame(cx, by, h, facing)
    shirt_name, shirt_rgb = _colour(rng, ("red", "blue", "green", "yellow", "white", "black", "orange", "purple", "pink"))
    trousers_name, trousers_rgb = _colour(rng, ("blue", "black", "brown", "gray", "blue"))
    skin = _jitter(rng, _SKIN[int(rng.integers(len(_SKIN)))], 8)
    head = cv.mat(skin, "smooth", 0.08, "person", "head", inst)
    hair = cv.mat(_jitter(rng, ((40, 30, 25), (120, 80, 40), (210, 180, 110), (20, 20, 20))[int(rng.integers(4))], 8),
                  "fur", 0.3, "person", "head", inst)
    torso = cv.mat(shirt_rgb, "smooth", 0.15, "person", "torso", inst)
    arm = cv.mat(_shade(shirt_rgb, 0.85), "smooth", 0.15, "person", "arm", inst)
    leg = cv.mat(trousers_rgb, "fur", 0.2, "person", "leg", inst)
    stride = rng.uniform(0.0, 0.08)
    cv.poly(fr.pts([(-0.1, 0.0), (-0.02, 0.0), (0.0, 0.48), (-0.1, 0.48)]), leg)
    cv.poly(fr.pts([(0.02 + stride, 0.0), (0.1 + stride, 0.0), (0.1, 0.48), (0.0, 0.48)]), leg)
    cv.poly(fr.pts([(-0.13, 0.8), (0.13, 0.8), (0.11, 0.46), (-0.11, 0.46)]), torso)
    swing = rng.uniform(-0.06, 0.1)
    aw = max(2.0, 0.065 * h)
    cv.line([fr.p(-0.13, 0.77), fr.p(-0.18 - swing, 0.5)], aw, arm)
    cv.line([fr.p(0.13, 0.77), fr.p(0.18 + swing, 0.5)], aw, arm)
    hx, hy = fr.p(0.0, 0.895)
    r = 0.09 * h
    cv.circle(hx, hy, r, head)
    cv.draw.chord((hx - r, hy - r, hx + r, hy + r), 180, 360, fill=hair)
    return _Drawn(shirt_name, {"torso": shirt_name, "arm": shirt_name, "leg": trousers_name, "head": "round"})


def _draw_animal(cv: _Canvas, rng: np.random.Generator, inst: int, cx: float, by: float, h: float, facing: int,
                 cls: str) -> _Drawn:
    """Dog or cat: the same four-legged plan, told apart by ears, snout, tail and proportions."""
    fr = _Frame(cx, by, h, facing)
    dog = cls == "dog"
    names = ("brown", "black", "white", "gray", "orange") if dog else ("orange", "black", "white", "gray", "brown")
    name, rgb = _colour(rng, names)
    body = cv.mat(rgb, "fur", 0.3, cls, "body", inst, grad=-0.3)
    far = cv.mat(_shade(rgb, 0.8), "fur", 0.3, cls, "leg", inst)
    leg = cv.mat(rgb, "fur", 0.3, cls, "leg", inst)
    head = cv.mat(rgb, "fur", 0.3, cls, "head", inst)
    tail = cv.mat(_shade(rgb, 0.9), "fur", 0.3, cls, "tail", inst)
    dark = cv.mat((25, 22, 20), "flat", 0.1, cls, "head", inst)
    if dog:
        body_box, leg_top, leg_w = (-0.55, 0.38, 0.42, 0.75), 0.5, 0.11
        legs = ((-0.44, far), (0.22, far), (-0.32, leg), (0.32, leg))
        cv.line([fr.p(-0.5, 0.65), fr.p(-0.68, 0.9)], max(2.0, 0.08 * h), tail)
    else:
        body_box, leg_top, leg_w = (-0.5, 0.3, 0.38, 0.6), 0.4, 0.08
        legs = ((-0.4, far), (0.2, far), (-0.3, leg), (0.3, leg))
        cv.line([fr.p(-0.45, 0.48), fr.p(-0.72, 0.62), fr.p(-0.78, 0.85), fr.p(-0.68, 1.0)], max(2.0, 0.06 * h), tail)
    for u, m in legs:
        cv.rect(*fr.box(u, 0.0, u + leg_w, leg_top), m)
    cv.ellipse(*fr.box(*body_box), body)
    if dog:
        hx, hy, r = 0.52, 0.8, 0.19
        cv.circle(*fr.p(hx, hy), r * h, head)
        cv.ellipse(*fr.box(0.55, 0.67, 0.85, 0.83), head)
        cv.circle(*fr.p(0.84, 0.78), max(1.0, 0.045 * h), dark)
        ear = cv.mat(_shade(rgb, 0.7), "fur", 0.3, cls, "head", inst)
        cv.poly(fr.pts([(0.42, 0.96), (0.3, 0.86), (0.36, 0.62), (0.46, 0.72)]), ear)
    else:
        hx, hy, r = 0.45, 0.7, 0.18
        cv.poly(fr.pts([(0.3, 0.8), (0.34, 1.0), (0.44, 0.84)]), head)
        cv.poly(fr.pts([(0.48, 0.84), (0.58, 1.0), (0.62, 0.8)]), head)
        cv.circle(*fr.p(hx, hy), r * h, head)
        eye = cv.mat((200, 200, 60), "flat", 0.1, cls, "head", inst)
        cv.circle(*fr.p(hx + 0.08, hy + 0.03), max(1.0, 0.035 * h), eye)
    return _Drawn(name, {"body": name, "head": name, "leg": name, "tail": name})


def _draw_dog(cv: _Canvas, rng: np.random.Generator, inst: int, cx: float, by: float, h: float, facing: int) -> _Drawn:
    return _draw_animal(cv, rng, inst, cx, by, h, facing, "dog")


def _draw_cat(cv: _Canvas, rng: np.random.Generator, inst: int, cx: float, by: float, h: float, facing: int) -> _Drawn:
    return _draw_animal(cv, rng, inst, cx, by, h, facing, "cat")


def _draw_bird(cv: _Canvas, rng: np.random.Generator, inst: int, cx: float, cy: float, w: float, facing: int) -> _Drawn:
    """A flying bird centred at (cx, cy); w is its wingspan."""
    name, rgb = _colour(rng, ("white", "black", "blue", "red", "yellow", "brown", "gray"))
    body = cv.mat(rgb, "smooth", 0.15, "bird", "body", inst)
    wing = cv.mat(_shade(rgb, 0.8), "fur", 0.2, "bird", "wing", inst)
    head = cv.mat(rgb, "smooth", 0.15, "bird", "head", inst)
    tail = cv.mat(_shade(rgb, 0.75), "smooth", 0.15, "bird", "tail", inst)
    beak = cv.mat(_jitter(rng, (240, 150, 30), 8), "flat", 0.1, "bird", "beak", inst)
    fr = _Frame(cx, cy, w, facing)  # v up from the centre line
    up = rng.uniform(0.2, 0.4)
    cv.poly(fr.pts([(-0.3, 0.0), (-0.46, 0.07), (-0.46, -0.07)]), tail)
    cv.ellipse(*fr.box(-0.32, -0.07, 0.2, 0.07), body)
    cv.circle(*fr.p(0.22, 0.04), 0.075 * w, head)
    cv.poly(fr.pts([(0.28, 0.06), (0.28, 0.0), (0.38, 0.03)]), beak)
    cv.poly(fr.pts([(-0.12, 0.03), (0.08, 0.03), (-0.15, up + 0.05), (-0.42, up + 0.15)]), wing)
    cv.poly(fr.pts([(-0.02, 0.0), (0.14, 0.0), (0.18, up * 0.8), (0.02, up)]), wing)
    return _Drawn(name, {"body": name, "wing": name, "head": name, "tail": name, "beak": "orange"})


def _draw_flower(cv: _Canvas, rng: np.random.Generator, inst: int, cx: float, by: float, h: float, facing: int) -> _Drawn:
    fr = _Frame(cx, by, h, facing)
    name, rgb = _colour(rng, ("red", "yellow", "purple", "white", "pink", "orange", "blue"))
    stem = cv.mat(_jitter(rng, (50, 130, 45), 10), "flat", 0.2, "flower", "stem", inst)
    petal = cv.mat(rgb, "smooth", 0.15, "flower", "petal", inst)
    centre = cv.mat(_jitter(rng, (230, 190, 40) if name != "yellow" else (110, 70, 30), 10), "fur", 0.2, "flower", None, inst)
    cv.line([fr.p(0.0, 0.0), fr.p(0.03, 0.72)], max(2.0, 0.06 * h), stem)
    cv.poly(fr.pts([(0.02, 0.3), (0.22, 0.44), (0.3, 0.38), (0.16, 0.3)]), stem)
    x, y = fr.p(0.03, 0.77)
    n = int(rng.integers(5, 8))
    phase = rng.uniform(0, 2 * math.pi)
    for k in range(n):
        a = phase + 2 * math.pi * k / n
        cv.circle(x + 0.15 * h * math.cos(a), y + 0.15 * h * math.sin(a), 0.12 * h, petal)
    cv.circle(x, y, 0.09 * h, centre)
    return _Drawn(name, {"petal": name, "stem": "green"})


def _draw_lamp_post(cv: _Canvas, rng: np.random.Generator, inst: int, cx: float, by: float, h: float, facing: int) -> _Drawn:
    fr = _Frame(cx, by, h, facing)
    name, rgb = _colour(rng, ("black", "gray", "green", "black"))
    pole = cv.mat(rgb, "smooth", 0.2, "lamp post", "pole", inst)
    glow_name = ("yellow", "white")[int(rng.integers(2))]
    glow = (250, 225, 120) if glow_name == "yellow" else (245, 245, 235)
    lamp = cv.mat(_jitter(rng, glow, 6), "smooth", 0.1, "lamp post", "lamp", inst)
    width = max(1.5, 0.035 * h)
    cv.rect(*fr.box(-0.06, 0.0, 0.06, 0.05), pole)
    if rng.random() < 0.5:
        cv.line([fr.p(0.0, 0.0), fr.p(0.0, 0.86)], width, pole)
        cv.poly(fr.pts([(-0.08, 0.86), (0.08, 0.86), (0.11, 0.98), (-0.11, 0.98)]), lamp)
        cv.poly(fr.pts([(-0.13, 0.98), (0.13, 0.98), (0.0, 1.04)]), pole)
    else:
        cv.line([fr.p(0.0, 0.0), fr.p(0.0, 1.0), fr.p(0.25, 1.0)], width, pole)
        cv.ellipse(*fr.box(0.16, 0.92, 0.36, 1.0), lamp)
    return _Drawn(name, {"pole": name, "lamp": glow_name})


def _draw_fence(cv: _Canvas, rng: np.random.Generator, inst: int, cx: float, by: float, h: float, facing: int) -> _Drawn:
    name, rgb = _colour(rng, ("white", "brown", "gray", "white"))
    post = cv.mat(rgb, "planks" if name == "brown" else "smooth", 0.2, "fence", "post", inst)
    rail = cv.mat(_shade(rgb, 0.85), "smooth", 0.2, "fence", "rail", inst)
    half = h * rng.uniform(1.2, 2.2)
    thick = max(1.5, 0.1 * h)
    for v in (0.3, 0.72):
        cv.rect(cx - half, by - v * h - thick / 2, cx + half, by - v * h + thick / 2, rail)
    step = 0.38 * h
    pw = max(2.0, 0.15 * h)
    x = cx - half
    while x <= cx + half - pw:
        cv.poly([(x, by), (x + pw, by), (x + pw, by - 0.88 * h), (x + pw / 2, by - h), (x, by - 0.88 * h)], post)
        x += step
    return _Drawn(name, {"post": name, "rail": name})


def _draw_cloud(cv: _Canvas, rng: np.random.Generator, inst: int, cx: float, cy: float, w: float, facing: int) -> _Drawn:
    name = "white" if rng.random() < 0.7 else "gray"
    rgb = (245, 246, 250) if name == "white" else (185, 188, 196)
    m = cv.mat(_jitter(rng, rgb, 6), "cloud", 0.12, "cloud", None, inst, grad=-0.8)
    n = int(rng.integers(3, 6))
    base = cy + 0.12 * w
    cv.ellipse(cx - 0.5 * w, base - 0.16 * w, cx + 0.5 * w, base, m)
    for k in range(n):
        x = cx + (k / (n - 1) - 0.5) * 0.7 * w
        r = w * (0.16 + 0.12 * (1 - abs(k / (n - 1) - 0.5) * 2)) * rng.uniform(0.8, 1.15)
        cv.circle(x, base - r * 0.9, r, m)
    return _Drawn(name, {})


def _draw_sun(cv: _Canvas, rng: np.random.Generator, inst: int, cx: float, cy: float, r: float, facing: int) -> _Drawn:
    name = "yellow" if rng.random() < 0.7 else "orange"
    m = cv.mat(_jitter(rng, COLOURS[name], 8), "flat", 0.05, "sun", None, inst)
    if rng.random() < 0.6:
        n = int(rng.integers(8, 13))
        for k in range(n):
            a = 2 * math.pi * k / n
            cv.line([(cx + 1.3 * r * math.cos(a), cy + 1.3 * r * math.sin(a)), (cx + 1.75 * r * math.cos(a), cy + 1.75 * r * math.sin(a))],
                    max(1.0, 0.18 * r), m)
    cv.circle(cx, cy, r, m)
    return _Drawn(name, {})


def _draw_chair(cv: _Canvas, rng: np.random.Generator, inst: int, cx: float, by: float, h: float, facing: int) -> _Drawn:
    fr = _Frame(cx, by, h, facing)
    name, rgb = _colour(rng, ("brown", "red", "blue", "black", "white", "green", "yellow"))
    seat = cv.mat(rgb, "planks" if name == "brown" else "smooth", 0.2, "chair", "seat", inst)
    back = cv.mat(_shade(rgb, 0.9), "planks" if name == "brown" else "smooth", 0.2, "chair", "backrest", inst)
    leg = cv.mat(_shade(rgb, 0.75), "smooth", 0.2, "chair", "leg", inst)
    lw = 0.06
    for u in (-0.2, 0.2, -0.12, 0.27):
        cv.rect(*fr.box(u - lw / 2, 0.0, u + lw / 2, 0.46), leg)
    cv.poly(fr.pts([(-0.24, 0.46), (0.26, 0.46), (0.32, 0.54), (-0.18, 0.54)]), seat)
    cv.rect(*fr.box(-0.24, 0.46, -0.17, 1.0), back)
    if rng.random() < 0.5:
        cv.rect(*fr.box(-0.24, 0.8, -0.05, 1.0), back)
    return _Drawn(name, {"seat": name, "backrest": name, "leg": name})


def _draw_table(cv: _Canvas, rng: np.random.Generator, inst: int, cx: float, by: float, h: float, facing: int) -> _Drawn:
    fr = _Frame(cx, by, h, facing)
    name, rgb = _colour(rng, ("brown", "white", "black", "gray", "brown", "red"))
    top = cv.mat(rgb, "planks" if name == "brown" else "smooth", 0.2, "table", "tabletop", inst)
    side = cv.mat(_shade(rgb, 0.8), "smooth", 0.2, "table", "tabletop", inst)
    leg = cv.mat(_shade(rgb, 0.7), "smooth", 0.2, "table", "leg", inst)
    half = rng.uniform(0.7, 1.0)
    for u in (-half + 0.08, half - 0.16, -half + 0.2, half - 0.04):
        cv.rect(*fr.box(u, 0.0, u + 0.07, 0.88), leg)
    cv.poly(fr.pts([(-half, 0.88), (half, 0.88), (half + 0.12, 1.0), (-half + 0.12, 1.0)]), top)
    cv.rect(*fr.box(-half, 0.8, half, 0.88), side)
    return _Drawn(name, {"tabletop": name, "leg": name})


_DRAW = {
    "house": _draw_house, "car": _draw_car, "tree": _draw_tree, "person": _draw_person, "dog": _draw_dog,
    "boat": _draw_boat, "chair": _draw_chair, "bird": _draw_bird, "cloud": _draw_cloud, "truck": _draw_truck,
    "bus": _draw_bus, "bicycle": _draw_bicycle, "cat": _draw_cat, "flower": _draw_flower,
    "lamp post": _draw_lamp_post, "fence": _draw_fence, "table": _draw_table, "sun": _draw_sun,
}
SKY_THINGS = ("sun", "cloud", "bird")  # drawn centred at (cx, cy), far behind ground things
# Where a thing may stand (the stuff under its base point).
SURFACES: dict[str, tuple[str, ...]] = {
    "house": ("grass", "sand", "snow", "field"), "tree": ("grass", "snow", "field"),
    "fence": ("grass", "snow", "field", "sand"), "lamp post": ("grass", "snow", "sand", "road"),
    "car": ("road", "grass", "sand", "snow"), "truck": ("road", "grass", "sand", "snow", "field"),
    "bus": ("road", "grass", "snow"), "bicycle": ("road", "grass", "sand", "snow", "field"),
    "person": ("grass", "sand", "snow", "road", "field", "floor"), "dog": ("grass", "sand", "snow", "road", "field", "floor"),
    "cat": ("grass", "sand", "snow", "road", "field", "floor"), "flower": ("grass", "field", "floor"),
    "chair": ("grass", "sand", "floor"), "table": ("grass", "sand", "floor"), "boat": ("water",),
    "cloud": ("sky",), "sun": ("sky",), "bird": ("sky",),
}
# Size at the front of the scene, as a fraction of the image side (height; wingspan/width/radius for sky things).
NOMINAL_SIZE: dict[str, float] = {
    "house": 0.56, "car": 0.26, "truck": 0.32, "bus": 0.32, "bicycle": 0.34, "boat": 0.42, "tree": 0.6,
    "person": 0.5, "dog": 0.32, "cat": 0.28, "flower": 0.32, "lamp post": 0.62, "fence": 0.26, "chair": 0.4,
    "table": 0.3, "cloud": 0.36, "sun": 0.075, "bird": 0.24,
}
# (width, height) of the drawing per unit of size, for fitting an object crop.
_EXTENT: dict[str, tuple[float, float]] = {
    "house": (1.4, 1.0), "car": (2.4, 1.0), "truck": (2.6, 1.0), "bus": (3.1, 1.0), "bicycle": (1.7, 1.0),
    "boat": (1.4, 1.0), "tree": (0.75, 1.0), "person": (0.45, 1.0), "dog": (1.45, 1.0), "cat": (1.5, 1.0),
    "flower": (0.6, 1.0), "lamp post": (0.5, 1.05), "fence": (3.0, 1.0), "chair": (0.6, 1.0), "table": (2.0, 1.0),
    "cloud": (1.0, 0.55), "sun": (3.5, 3.5), "bird": (0.85, 0.5),
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


# ------------------------------------------------------------------------------------------------- scene
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
    semantic: np.ndarray  # int32 global class id (train.vocab.CLASS_NAMES), 255 = unlabelled
    parts: np.ndarray  # int32 global part id (train.vocab.PART_NAMES), 255 = not a part
    instances: np.ndarray  # int32, 0 = stuff, 1..K = objects[k-1]
    objects: list[SceneObject]
    captions: list[str]
    layout: str  # "outdoor", "indoor" or "bands"

    def present_classes(self) -> tuple[str, ...]:
        """Names of the classes with at least one pixel, in CLASS_NAMES order."""
        ids = np.unique(self.semantic)
        return tuple(CLASS_NAMES[i] for i in ids if i != IGNORE)


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
        raise ValueError(f"classes must include at least one stuff class to fill the background; stuff: {', '.join(STUFF_CLASSES)}")
    return chosen


def _draw_things(cv: _Canvas, rng: np.random.Generator, layout: _Layout, s: int, allowed: set[str],
                 count: int) -> list[tuple[int, _Placed, _Drawn]]:
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
    order = sorted(range(len(placed)), key=lambda i: (
        (0, SKY_THINGS.index(placed[i].cls), i) if placed[i].cls in SKY_THINGS else (1, placed[i].y, i)))
    drawn = []
    for inst, i in enumerate(order, start=1):
        p = placed[i]
        drawn.append((inst, p, _DRAW[p.cls](cv, rng, inst, p.cx, p.y, p.size, p.facing)))
    return drawn


def _finish(cv: _Canvas, rng: np.random.Generator, seed: int, layout: _Layout,
            drawn: list[tuple[int, _Placed, _Drawn]]) -> tuple[Scene, dict]:
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
    part_counts = np.bincount((instances * (n_parts + 1) + part_index).ravel(), minlength=(len(visible) + 1) * (n_parts + 1))
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
        objects.append(SceneObject(new, p.cls, d.colour, bbox, int(counts[old]), d.part_colours, seen_parts, p.surface, d.kind))
    class_counts = np.bincount(np.where(semantic == IGNORE, len(CLASS_NAMES), semantic).ravel(), minlength=len(CLASS_NAMES) + 1)
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


# ---------------------------------------------------------------------------------------------- captions
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


def _captions(rng: np.random.Generator, scene: Scene, layout: _Layout, class_counts: np.ndarray) -> list[str]:
    """Three to five captions naming only what is visible (objects and stuff above small area thresholds)."""
    s = scene.size
    min_object = max(16, int(0.003 * s * s))
    min_stuff = max(16, int(0.01 * s * s))
    stuff = {c: layout.phrases[c] for c in STUFF_CLASSES if c in layout.phrases and class_counts[CLASS_ID[c]] >= min_stuff}
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
        rest = [stuff[c] for c in STUFF_CLASSES if c in stuff and c not in ("sky", "mountain", "forest") and c not in by_surface]
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
        verb = {"car": "parked", "truck": "parked", "bus": "waiting", "boat": "floating", "bird": "flying",
                "dog": "standing", "cat": "sitting", "person": "standing"}.get(main.class_name, "")
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
        counted = _join([f"{_NUMBERS[min(len(v), 9)]} {cls if len(v) == 1 else plural(cls)}" for cls, v in groups.items()])
        total = len(objs)
        captions.append(f"{_NUMBERS[min(total, 9)]} {'thing' if total == 1 else 'things'} in this picture: {counted}")
    else:
        captions.append("no objects, only " + _join([c for c in STUFF_CLASSES if c in stuff] or ["background"]))
    return [_fix_articles(c) for c in captions]


def _fix_articles(text: str) -> str:
    """ "a orange head" -> "an orange head" (templates put colours after a fixed article)."""
    return re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", text)


def _stuff_row(semantic: np.ndarray, cls_id: int) -> float:
    rows = np.nonzero((semantic == cls_id).any(axis=1))[0]
    return float(rows.mean()) if len(rows) else 0.0


# ---------------------------------------------------------------------------------------------- crops
def render_object_crop(seed: int, size: int = 128, class_name: str | None = None,
                       classes: Iterable[str] = CLASS_NAMES) -> tuple[np.ndarray, str, str]:
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
            (_draw_mountains if class_name == "mountain" else _draw_forest)(cv, rng, layout, s, s * rng.uniform(0.75, 1.0))
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
    obj = SceneObject(1, class_name, drawn.colour, (0, 0, s, s), int((instances == 1).sum()), drawn.part_colours,
                      tuple(PART_NAMES[p] for p in present if p != IGNORE), None, drawn.kind)
    noun = _article(_noun(obj))
    templates = (
        "a photo of {np}.", "{np}{parts}.", "a close-up photo of a {n}.", "a photo of a {n}.", "{np}{parts}{where}",
        "a {n}", "{np}{where}.",
    )
    caption = templates[int(rng.integers(len(templates)))].format(
        np=noun, n=class_name, parts=_with_parts(rng, obj, int(rng.integers(1, 3))), where=where)
    return image, _fix_articles(caption), class_name


# ------------------------------------------------------------------------------------------ benchmarks
_BENCHMARK_SALT = {"world-voc": 1, "world-full": 2, "world-parts": 3}


def benchmark_scene_classes(benchmark: Benchmark) -> tuple[str, ...]:
    """The classes a benchmark's scenes may contain: its vocabulary, plus all stuff for a things-only one."""
    if benchmark.granularity == "things":
        return STUFF_CLASSES + tuple(c for c in THING_CLASSES if c in benchmark.class_names)
    if benchmark.granularity == "parts":
        return CLASS_NAMES
    return tuple(benchmark.class_names)


def benchmark_scene(benchmark: Benchmark | str, index: int, size: int = 128) -> tuple[Scene, np.ndarray]:
    """(scene, label) of image ``index`` of a benchmark; label (H, W) uint8 indexes benchmark.class_names, 255 = ignore."""
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
    """(image uint8 (H, W, 3), label uint8 (H, W)) of image ``index``; label indexes benchmark.class_names, 255 = ignore."""
    scene, label = benchmark_scene(benchmark, index, size)
    return scene.image, label


_CLASS_PATTERN = {name: re.compile(rf"\b({re.escape(name)}|{re.escape(plural(name))})\b") for name in CLASS_NAMES}


def classes_named(text: str) -> set[str]:
    """Class names a caption mentions (whole words, singular or plural)."""
    lowered = text.lower()
    return {name for name, pattern in _CLASS_PATTERN.items() if pattern.search(lowered)}


__all__ = [
    "Scene", "SceneObject", "render_scene", "render_training_scene", "training_target", "render_object_crop",
    "benchmark_scene", "benchmark_sample", "benchmark_scene_classes", "classes_named", "BENCHMARKS", "SURFACES", "TEXTURES",
]
