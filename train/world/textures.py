"""Texture fields: a bank of pattern fields per image size, built once from a fixed seed (a deterministic cache)."""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

TEXTURES: tuple[str, ...] = (
    "flat",
    "sky",
    "grass",
    "water",
    "sand",
    "road",
    "brick",
    "snow",
    "forest",
    "field",
    "mountain",
    "planks",
    "smooth",
    "foliage",
    "bark",
    "fur",
    "siding",
    "tiles",
    "cloud",
    "glass",
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
