"""The canvas a scene is drawn on: one 8-bit image of primitive ids (later regions overwrite earlier ones,
which is occlusion for free), each id a material plus its class, part and instance labels, so the RGB
image and the label maps can never disagree; colour helpers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from train.world.textures import _TEX, _pixel_grid, _texture_bank
from train.world.vocabulary import CLASS_ID, COLOURS, PART_ID

IGNORE = 255
MIN_SIZE, MAX_SIZE = 32, 1024


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

    def mat(
        self,
        rgb: tuple[float, float, float],
        texture: str,
        amp: float,
        cls: str,
        part: str | None = None,
        inst: int = 0,
        grad: float = 0.0,
    ) -> int:
        """The id of a material (allocated on first use): its look and the labels its pixels get."""
        m = _Material(
            tuple(float(c) for c in rgb),
            _TEX[texture],
            amp,
            grad,
            CLASS_ID[cls],
            IGNORE if part is None else PART_ID[part],
            inst,
        )
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
