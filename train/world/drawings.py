"""How each thing of the world is drawn: its parts on the canvas, with their part labels
(:mod:`train.world.things` places them)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from train.world.canvas import _Canvas, _colour, _Frame, _jitter, _shade
from train.world.vocabulary import COLOURS


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


def _draw_truck(
    cv: _Canvas, rng: np.random.Generator, inst: int, cx: float, by: float, h: float, facing: int
) -> _Drawn:
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


def _draw_bicycle(
    cv: _Canvas, rng: np.random.Generator, inst: int, cx: float, by: float, h: float, facing: int
) -> _Drawn:
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
    tubes = (
        (rear, bracket),
        (rear, seat),
        (bracket, seat),
        (seat, head_low),
        (bracket, head_low),
        (head_low, front),
        (head_low, head_top),
    )
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


def _draw_house(
    cv: _Canvas, rng: np.random.Generator, inst: int, cx: float, by: float, h: float, facing: int
) -> _Drawn:
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
        cv.poly(
            fr.pts([(-half - 0.06, wall_top), (half + 0.06, wall_top), (half * 0.6, 0.92), (-half * 0.6, 0.92)]), roof
        )
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
    return _Drawn(
        name, {"facade": name, "roof": roof_name, "door": door_name, "window": "light blue"}, kind=str(windows)
    )


def _draw_person(
    cv: _Canvas, rng: np.random.Generator, inst: int, cx: float, by: float, h: float, facing: int
) -> _Drawn:
    fr = _Frame(cx, by, h, facing)
    shirt_name, shirt_rgb = _colour(
        rng, ("red", "blue", "green", "yellow", "white", "black", "orange", "purple", "pink")
    )
    trousers_name, trousers_rgb = _colour(rng, ("blue", "black", "brown", "gray", "blue"))
    skin = _jitter(rng, _SKIN[int(rng.integers(len(_SKIN)))], 8)
    head = cv.mat(skin, "smooth", 0.08, "person", "head", inst)
    hair = cv.mat(
        _jitter(rng, ((40, 30, 25), (120, 80, 40), (210, 180, 110), (20, 20, 20))[int(rng.integers(4))], 8),
        "fur",
        0.3,
        "person",
        "head",
        inst,
    )
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


def _draw_animal(
    cv: _Canvas, rng: np.random.Generator, inst: int, cx: float, by: float, h: float, facing: int, cls: str
) -> _Drawn:
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


def _draw_flower(
    cv: _Canvas, rng: np.random.Generator, inst: int, cx: float, by: float, h: float, facing: int
) -> _Drawn:
    fr = _Frame(cx, by, h, facing)
    name, rgb = _colour(rng, ("red", "yellow", "purple", "white", "pink", "orange", "blue"))
    stem = cv.mat(_jitter(rng, (50, 130, 45), 10), "flat", 0.2, "flower", "stem", inst)
    petal = cv.mat(rgb, "smooth", 0.15, "flower", "petal", inst)
    centre = cv.mat(
        _jitter(rng, (230, 190, 40) if name != "yellow" else (110, 70, 30), 10), "fur", 0.2, "flower", None, inst
    )
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


def _draw_lamp_post(
    cv: _Canvas, rng: np.random.Generator, inst: int, cx: float, by: float, h: float, facing: int
) -> _Drawn:
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


def _draw_fence(
    cv: _Canvas, rng: np.random.Generator, inst: int, cx: float, by: float, h: float, facing: int
) -> _Drawn:
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


def _draw_cloud(
    cv: _Canvas, rng: np.random.Generator, inst: int, cx: float, cy: float, w: float, facing: int
) -> _Drawn:
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
            cv.line(
                [
                    (cx + 1.3 * r * math.cos(a), cy + 1.3 * r * math.sin(a)),
                    (cx + 1.75 * r * math.cos(a), cy + 1.75 * r * math.sin(a)),
                ],
                max(1.0, 0.18 * r),
                m,
            )
    cv.circle(cx, cy, r, m)
    return _Drawn(name, {})


def _draw_chair(
    cv: _Canvas, rng: np.random.Generator, inst: int, cx: float, by: float, h: float, facing: int
) -> _Drawn:
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


def _draw_table(
    cv: _Canvas, rng: np.random.Generator, inst: int, cx: float, by: float, h: float, facing: int
) -> _Drawn:
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
