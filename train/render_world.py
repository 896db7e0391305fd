"""Look at the synthetic world: a PNG grid of scenes (image, semantic map, parts map, caption) or crops.

    python -m train.render_world --out world.png [--n 8] [--size 128] [--benchmark world-full]
    python -m train.render_world --out crops.png --crops --n 24
    python -m train.render_world --out docs/hierarchy.png --hierarchy --n 3   # one target per prompt granularity
    python -m train.render_world --speed          # images/s on this core at 128 and 256 px

Why: the world is only useful if a person can recognise what is drawn and the labels line up with the
pixels; this is the quickest way to check both after changing a drawer or a texture.
"""

from __future__ import annotations

import argparse
import textwrap
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pmp.visualize import palette_array
from train import world
from train.world.hierarchy import names_present, prompt_target
from train.world.vocabulary import BENCHMARKS, CLASS_NAMES, PART_NAMES

_TEXT_H = 11  # pixel height of one line of PIL's default bitmap font


def palette(n: int) -> np.ndarray:
    """(256, 3) uint8 colours: the demo's label colours (:func:`pmp.visualize.palette_array`) for ids
    0..n-1, black for everything else (255 = none)."""
    colours = np.zeros((256, 3), np.uint8)
    colours[:n] = palette_array(n)
    return colours


def _tile(array: np.ndarray, zoom: int) -> Image.Image:
    image = Image.fromarray(array)
    return image.resize((image.width * zoom, image.height * zoom), Image.NEAREST) if zoom > 1 else image


def _legend(draw: ImageDraw.ImageDraw, x: int, y: int, ids, names, colours: np.ndarray, width: int) -> int:
    """Swatch + name for every id present; returns the y below the legend."""
    font = ImageFont.load_default()
    cx = x
    for i in ids:
        label = names[i]
        w = 12 + int(draw.textlength(label, font=font)) + 8
        if cx + w > x + width:
            cx, y = x, y + _TEXT_H + 2
        draw.rectangle((cx, y + 1, cx + 9, y + 10), fill=tuple(int(c) for c in colours[i]), outline=(0, 0, 0))
        draw.text((cx + 12, y), label, fill=(0, 0, 0), font=font)
        cx += w
    return y + _TEXT_H + 2


def scene_grid(
    n: int, size: int, benchmark: str | None = None, training: bool = False, first_seed: int = 0
) -> Image.Image:
    """Rows of [image | semantic | parts (| benchmark label)] with the first caption and a legend under each."""
    zoom = max(1, 256 // size)
    tile = size * zoom
    columns = 4 if benchmark else 3
    sem_colours, part_colours = palette(len(CLASS_NAMES)), palette(len(PART_NAMES))
    rows = []
    for k in range(n):
        label = None
        if benchmark:
            scene, label = world.benchmark_scene(benchmark, first_seed + k, size)
        elif training:
            scene = world.render_training_scene(first_seed + k, size)
        else:
            scene = world.render_scene(first_seed + k, size)
        width = columns * tile + (columns - 1) * 4
        caption_lines = textwrap.wrap(scene.captions[0], width=width // 6)
        canvas = Image.new("RGB", (width, tile + (len(caption_lines) + 5) * (_TEXT_H + 2)), (255, 255, 255))
        maps = [scene.image, sem_colours[scene.semantic], part_colours[scene.parts]]
        if label is not None:
            maps.append(palette(len(BENCHMARKS[benchmark].class_names))[label])
        for c, array in enumerate(maps):
            canvas.paste(_tile(array, zoom), (c * (tile + 4), 0))
        draw = ImageDraw.Draw(canvas)
        y = tile + 2
        for line in caption_lines:
            draw.text((2, y), line, fill=(0, 0, 0), font=ImageFont.load_default())
            y += _TEXT_H + 2
        y = _legend(draw, 2, y, [i for i in np.unique(scene.semantic) if i != 255], CLASS_NAMES, sem_colours, width - 4)
        _legend(draw, 2, y, [i for i in np.unique(scene.parts) if i != 255], PART_NAMES, part_colours, width - 4)
        rows.append(canvas)
    out = Image.new("RGB", (max(r.width for r in rows), sum(r.height + 6 for r in rows)), (200, 200, 200))
    y = 0
    for r in rows:
        out.paste(r, (0, y))
        y += r.height + 6
    return out


def crop_grid(n: int, size: int, first_seed: int = 0, per_row: int = 6) -> Image.Image:
    """Object crops with their captions, ``per_row`` to a row."""
    zoom = max(1, 128 // size)
    tile = size * zoom
    lines = 5
    cell_h = tile + lines * (_TEXT_H + 1) + 4
    cols = min(per_row, n)
    out = Image.new("RGB", (cols * (tile + 6), ((n + cols - 1) // cols) * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    for k in range(n):
        image, caption, _ = world.render_object_crop(first_seed + k, size)
        x, y = (k % cols) * (tile + 6), (k // cols) * cell_h
        out.paste(_tile(image, zoom), (x, y))
        for j, line in enumerate(textwrap.wrap(caption, width=tile // 6)[:lines]):
            draw.text((x, y + tile + 2 + j * (_TEXT_H + 1)), line, fill=(0, 0, 0), font=font)
    return out


def hierarchy_grid(n: int, size: int, first_seed: int = 0, zoom: int = 2) -> Image.Image:
    """Per row: a scene, then its prompt-dependent target under three prompt sets of different granularity
    (its things whole, their parts, their groups; its stuff in all three), each with its legend."""
    rows = []
    seed = first_seed
    while len(rows) < n:
        scene = world.render_scene(seed, size)
        seed += 1
        present = names_present(scene.semantic, scene.parts)
        if not (present["thing"] and present["part"] and present["group"]):
            continue
        stuff = list(present["stuff"])
        rows.append((scene, {"wholes": list(present["thing"]) + stuff, "parts": list(present["part"]) + stuff,
                             "groups": list(present["group"]) + stuff}))  # fmt: skip
    side = size * zoom
    legend_h = 5 * (_TEXT_H + 2)
    grid = Image.new("RGB", (4 * (side + 6), len(rows) * (side + legend_h + 8)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for r, (scene, prompt_sets) in enumerate(rows):
        y = r * (side + legend_h + 8)
        grid.paste(_tile(scene.image, zoom), (0, y))
        draw.text((0, y + side + 2), "image", fill=(0, 0, 0), font=ImageFont.load_default())
        for c, (title, prompts) in enumerate(prompt_sets.items(), start=1):
            target = prompt_target(scene.semantic, scene.parts, prompts)
            colours = palette(len(prompts))
            grid.paste(_tile(colours[target], zoom), (c * (side + 6), y))
            present_ids = [k for k in range(len(prompts)) if (target == k).any()]
            draw.text(
                (c * (side + 6), y + side + 2), f"prompts: {title}", fill=(0, 0, 0), font=ImageFont.load_default()
            )
            _legend(draw, c * (side + 6), y + side + 2 + _TEXT_H + 2, present_ids, prompts, colours, side)
    return grid


def measure_speed(size: int, n: int = 200) -> dict[str, float]:
    """Images per second on the calling core for scenes, training scenes and object crops of ``size`` px."""
    world.render_scene(0, size)  # builds the texture bank for this size outside the timing
    result = {}
    for name, fn in (
        ("scene", world.render_scene),
        ("training", world.render_training_scene),
        ("crop", world.render_object_crop),
    ):
        start = time.perf_counter()
        for seed in range(n):
            fn(seed, size)
        result[name] = n / (time.perf_counter() - start)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("world.png"), help="PNG to write")
    parser.add_argument("--n", type=int, default=8, help="number of scenes (or crops)")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="first seed (benchmark: first index)")
    parser.add_argument("--benchmark", choices=sorted(BENCHMARKS), help="show this benchmark's images and labels")
    parser.add_argument("--training", action="store_true", help="show training scenes (seen classes only)")
    parser.add_argument("--crops", action="store_true", help="show object crops instead of scenes")
    parser.add_argument("--hierarchy", action="store_true", help="show each scene's target under wholes, parts, groups")
    parser.add_argument("--speed", action="store_true", help="print images/s at 128 and 256 px and exit")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"--n must be at least 1, got {args.n}")
    if args.speed:
        for size in (128, 256):
            rates = measure_speed(size, n=300 if size == 128 else 150)
            print(f"{size}px: " + ", ".join(f"{k} {v:.0f} img/s" for k, v in rates.items()))
        return
    if args.hierarchy:
        grid = hierarchy_grid(args.n, args.size, args.seed)
    elif args.crops:
        grid = crop_grid(args.n, args.size, args.seed)
    else:
        grid = scene_grid(args.n, args.size, args.benchmark, args.training, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out)
    print(f"wrote {args.out} ({grid.width}x{grid.height})")


if __name__ == "__main__":
    main()
