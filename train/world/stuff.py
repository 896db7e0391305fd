"""Stuff: the layout of a scene (sky over a horizon with ground below, mountains, forests, roads, rivers,
lakes, or a room) and the textured stuff regions."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from train.world.canvas import _Canvas, _jitter
from train.world.vocabulary import STUFF_CLASSES

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


def _wavy(
    rng: np.random.Generator, s: float, y: float, amplitude: float, points: int = 10
) -> list[tuple[float, float]]:
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
    chosen = [
        stuff[int(i)] for i in rng.choice(len(stuff), size=min(len(stuff), int(rng.integers(1, 4))), replace=False)
    ]
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
