"""Pictures and files made from a :class:`~pmp.segmenter.SegmentationResult`.

Used by the demo (both columns must colour a label the same way, hence one fixed palette indexed by
the label's position in the prompt list) and by ``python -m pmp segment`` (:func:`save_outputs`).
Everything is vectorised with numpy lookup tables: the only Python loops run over labels or
proposals, never over pixels.

Files written for downstream tools:

* label map PNG: 8-bit grey, pixel value = index into the prompt list, 255 = no label (mode "L");
  with more than 255 labels a 16-bit PNG (mode "I;16") where 65535 = no label;
* mask PNG: 8-bit grey, 255 inside, 0 outside.
"""

from __future__ import annotations

import colorsys
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Kelly's 22 colours of maximum contrast minus white and black, then a few more; index k = prompt k.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
    (0, 0, 128), (128, 128, 128), (255, 105, 180), (0, 255, 127),
)  # fmt: skip
NO_LABEL_8BIT = 255
NO_LABEL_16BIT = 65535
MIN_DISPLAY_SIDE = 256  # tiny images are enlarged (nearest) for display so the legend stays readable
MAX_LEGEND_CHARS = 32


def colour_for(index: int) -> tuple[int, int, int]:
    """The colour of label ``index``: the fixed palette, then golden-ratio hues (deterministic)."""
    if index < len(PALETTE):
        return PALETTE[index]
    hue = (index * 0.618033988749895) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
    return (round(red * 255), round(green * 255), round(blue * 255))


def palette_array(count: int) -> np.ndarray:
    """(count, 3) uint8 colours for labels 0..count-1."""
    return np.array([colour_for(k) for k in range(count)], dtype=np.uint8).reshape(count, 3)


def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font at ``size`` px (needs FreeType, Pillow >= 10.1); the bitmap font otherwise."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # pragma: no cover - Pillow built without FreeType
        return ImageFont.load_default()


def shorten(text: str, limit: int = MAX_LEGEND_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _as_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected an RGB image (H, W, 3) uint8, got {array.shape} {array.dtype}")
    return array


def _resize_labels(semantic: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W) integer map to (height, width) = size."""
    height, width = size
    if semantic.shape == (height, width):
        return semantic
    rows = (np.arange(height) * semantic.shape[0] // height).clip(0, semantic.shape[0] - 1)
    cols = (np.arange(width) * semantic.shape[1] // width).clip(0, semantic.shape[1] - 1)
    return semantic[rows[:, None], cols[None, :]]


def _display_scale(width: int, height: int) -> int:
    """Integer factor that brings a tiny image's longer side up to MIN_DISPLAY_SIDE."""
    return max(1, -(-MIN_DISPLAY_SIDE // max(width, height)))


def colourise(
    image: Image.Image | np.ndarray, semantic: np.ndarray, alpha: float = 0.5, boundaries: bool = True
) -> np.ndarray:
    """(H, W, 3) uint8: the image blended with label colours where ``semantic`` >= 0.

    ``semantic`` (h, w) int, -1 = no label, is resized (nearest) to the image when sizes differ.
    """
    pixels = _as_rgb_array(image)
    labels = _resize_labels(np.asarray(semantic), pixels.shape[:2]).astype(np.int64)
    count = int(labels.max()) + 1 if labels.size else 0
    lut = palette_array(max(count, 1)).astype(np.float32)
    valid = labels >= 0
    colours = lut[np.where(valid, labels, 0)]  # (H, W, 3)
    blended = np.where(valid[..., None], pixels * (1.0 - alpha) + colours * alpha, pixels)
    if boundaries:
        edge = np.zeros(labels.shape, dtype=bool)
        edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
        edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
        blended[edge] = 255.0
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def overlay(
    image: Image.Image | np.ndarray,
    semantic: np.ndarray,
    labels: Sequence[str],
    alpha: float = 0.5,
    *,
    legend: bool = True,
) -> Image.Image:
    """The image with each label's region tinted in its colour, and a legend below it.

    The legend lists every prompt (colour swatch, name, share of the image), so that a prompt
    that got no pixels is visible as "0%" rather than silently missing.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    semantic = np.asarray(semantic)
    if semantic.ndim != 2:
        raise ValueError(f"semantic must be an (H, W) label map, got shape {semantic.shape}")
    if semantic.size and int(semantic.max()) >= len(labels):
        raise ValueError(f"semantic holds label index {int(semantic.max())} but only {len(labels)} labels were given")
    tinted = Image.fromarray(colourise(image, semantic, alpha))
    scale = _display_scale(*tinted.size)
    if scale > 1:
        tinted = tinted.resize((tinted.width * scale, tinted.height * scale), Image.Resampling.NEAREST)
    if not legend:
        return tinted
    counts = (
        np.bincount(semantic[semantic >= 0].ravel(), minlength=len(labels)) if semantic.size else np.zeros(len(labels))
    )
    shares = counts / max(semantic.size, 1)
    entries = [(colour_for(k), f"{shorten(label)} {100 * shares[k]:.0f}%") for k, label in enumerate(labels)]
    return _with_legend(tinted, entries)


def _with_legend(image: Image.Image, entries: list[tuple[tuple[int, int, int], str]]) -> Image.Image:
    """Append a flowed legend (swatch + text per entry) under ``image``."""
    width = max(image.width, 320)
    size = int(np.clip(width / 45, 12, 22))
    face = font(size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad, swatch, line = size // 2, size, int(size * 1.6)
    positions, x, y = [], pad, pad
    for _, text in entries:
        item = swatch + pad // 2 + int(measure.textlength(text, font=face)) + pad
        if x + item > width - pad and x > pad:
            x, y = pad, y + line
        positions.append((x, y))
        x += item
    legend_height = (y + line + pad) if entries else 0
    canvas = Image.new("RGB", (width, image.height + legend_height), (255, 255, 255))
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for (colour, text), (x, y) in zip(entries, positions):
        top = image.height + y
        draw.rectangle([x, top + 2, x + swatch, top + 2 + swatch], fill=colour, outline=(0, 0, 0))
        draw.text((x + swatch + pad // 2, top), text, fill=(0, 0, 0), font=face)
    return canvas


def label_map_png(semantic: np.ndarray, num_labels: int | None = None) -> Image.Image:
    """(H, W) label indices (-1 = none) -> 8-bit PNG image (255 = none) for up to 255 labels, else 16-bit
    (65535 = none). ``num_labels`` (default: the largest index + 1) picks the depth, so that every map
    made for one prompt list has the same format."""
    semantic = np.asarray(semantic)
    if semantic.ndim != 2:
        raise ValueError(f"semantic must be an (H, W) label map, got shape {semantic.shape}")
    top = int(semantic.max()) if semantic.size else -1
    count = top + 1 if num_labels is None else num_labels
    if top >= count:
        raise ValueError(f"semantic holds label index {top} but num_labels is {count}")
    if count <= NO_LABEL_8BIT:
        return Image.fromarray(np.where(semantic >= 0, semantic, NO_LABEL_8BIT).astype(np.uint8), mode="L")
    if count > NO_LABEL_16BIT:
        raise ValueError(f"at most {NO_LABEL_16BIT} labels fit a 16-bit label map, got {count}")
    return Image.fromarray(np.where(semantic >= 0, semantic, NO_LABEL_16BIT).astype(np.uint16))  # mode I;16


def mask_png(mask: np.ndarray, threshold: float = 0.5) -> Image.Image:
    """(H, W) bool or [0, 1] float mask -> 8-bit PNG image, 255 inside, 0 outside."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask must be (H, W), got shape {mask.shape}")
    inside = mask if mask.dtype == np.bool_ else mask >= threshold
    return Image.fromarray(np.where(inside, 255, 0).astype(np.uint8), mode="L")


def mask_overlay(
    image: Image.Image | np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], alpha: float = 0.55
) -> Image.Image:
    """The image with ``mask`` (H, W) tinted in ``colour`` and everything outside it dimmed."""
    pixels = _as_rgb_array(image).astype(np.float32)
    inside = _resize_labels(np.asarray(mask).astype(np.uint8), pixels.shape[:2]).astype(bool)[..., None]
    tint = pixels * (1.0 - alpha) + np.asarray(colour, np.float32) * alpha
    result = Image.fromarray(np.clip(np.where(inside, tint, pixels * 0.35), 0, 255).astype(np.uint8))
    scale = _display_scale(*result.size)
    if scale > 1:
        result = result.resize((result.width * scale, result.height * scale), Image.Resampling.NEAREST)
    return result


def proposal_grid(
    proposals: np.ndarray,
    image: Image.Image | np.ndarray,
    captions: Sequence[str],
    sort_by_scores: np.ndarray | None = None,
    columns: int = 10,
    thumb: int = 96,
    colours: Sequence[tuple[int, int, int]] | None = None,
) -> Image.Image:
    """All N proposals as captioned thumbnails: the image dimmed outside each mask, tinted inside.

    ``proposals`` (N, h, w) in [0, 1] at any resolution (the demo passes mask-resolution masks:
    N full-size float masks would cost N x H x W x 4 bytes). ``sort_by_scores`` (N,): when given, the
    thumbnails go in descending score order; captions should then name the proposal index.
    ``colours`` (N,): the tint per proposal (e.g. its best label's colour); default one colour.
    """
    proposals = np.asarray(proposals, dtype=np.float32)
    if proposals.ndim != 3:
        raise ValueError(f"proposals must be (N, H, W), got shape {proposals.shape}")
    count = proposals.shape[0]
    if len(captions) != count:
        raise ValueError(f"got {len(captions)} captions for {count} proposals")
    if columns < 1 or thumb < 8:
        raise ValueError(f"columns must be >= 1 and thumb >= 8, got {columns} and {thumb}")
    order = (
        np.arange(count)
        if sort_by_scores is None
        else np.argsort(-np.asarray(sort_by_scores, dtype=np.float64), kind="stable")
    )
    pixels = Image.fromarray(_as_rgb_array(image))
    scale = thumb / max(pixels.size)
    tile_w, tile_h = max(1, round(pixels.width * scale)), max(1, round(pixels.height * scale))
    small = np.asarray(pixels.resize((tile_w, tile_h), Image.Resampling.BILINEAR), dtype=np.float32)  # (th, tw, 3)
    masks = np.stack([
        np.asarray(Image.fromarray(proposals[i]).resize((tile_w, tile_h), Image.Resampling.BILINEAR))
        for i in range(count)
    ]) if count else np.zeros((0, tile_h, tile_w), np.float32)  # fmt: skip
    tint = np.asarray(colours, np.float32) if colours is not None else np.tile(np.float32([[230, 25, 75]]), (count, 1))
    weight = masks[..., None].clip(0, 1)  # (N, th, tw, 1)
    tiles = (
        small[None] * (0.3 + 0.7 * weight) * (1 - 0.45 * weight) + tint[:, None, None, :] * 0.45 * weight
    )  # (N, th, tw, 3)
    tiles = np.clip(tiles, 0, 255).astype(np.uint8)

    caption_size = max(10, thumb // 8)
    face = font(caption_size)
    caption_h = caption_size + 6
    rows = max(1, -(-count // columns))
    cols = min(columns, max(count, 1))
    cell_w, cell_h = thumb + 4, thumb + caption_h + 4
    canvas = Image.new("RGB", (cols * cell_w, rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for slot, index in enumerate(order):
        x, y = (slot % columns) * cell_w + 2, (slot // columns) * cell_h + 2
        canvas.paste(Image.fromarray(tiles[index]), (x + (thumb - tile_w) // 2, y + (thumb - tile_h) // 2))
        text = captions[index]
        while text and draw.textlength(text, font=face) > thumb:
            text = text[:-2] + "\u2026" if len(text) > 1 else ""
        draw.text((x, y + thumb + 2), text, fill=(0, 0, 0), font=face)
    return canvas


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe version of a label (letters of any script kept, everything else '_')."""
    cleaned = re.sub(r"[^\w\-]+", "_", text, flags=re.UNICODE).strip("_")
    return cleaned[:limit] or "label"


def result_summary(result: Any) -> dict[str, Any]:
    """Labels, the picked proposal per label with p / p_hat / p_out, and timings, JSON-ready."""
    if hasattr(result, "to_json"):
        return result.to_json()
    return {
        "labels": list(result.labels),
        "selected": [
            {
                "label": label,
                "proposal": int(index),
                "p": float(result.p[index, k]),
                "p_hat": float(result.p_hat[index, k]),
                "p_out": float(score),
                "pixels": int((np.asarray(result.semantic) == k).sum()),
            }
            for k, (label, (index, score)) in enumerate(zip(result.labels, result.selected))
        ],
        "timings": dict(result.timings),
    }


def save_outputs(result: Any, image: Image.Image | np.ndarray, out_dir: str | Path, stem: str) -> dict[str, Any]:
    """Write ``{stem}_overlay.png``, ``{stem}_labels.png``, ``{stem}_mask_{k:02d}_{label}.png`` per label
    (the label's region in the semantic map) and ``{stem}.json``; return the paths written.

    The JSON holds :func:`result_summary` plus the file names, so a script can find each mask.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    semantic = np.asarray(result.semantic)
    paths: dict[str, Any] = {
        "overlay": out / f"{stem}_overlay.png",
        "label_map": out / f"{stem}_labels.png",
        "masks": [],
    }
    overlay(image, semantic, result.labels).save(paths["overlay"])
    label_map_png(semantic, len(result.labels)).save(paths["label_map"])
    for k, label in enumerate(result.labels):
        path = out / f"{stem}_mask_{k:02d}_{slug(label)}.png"
        mask_png(semantic == k).save(path)
        paths["masks"].append(path)
    summary = result_summary(result)
    summary["files"] = {
        "overlay": paths["overlay"].name,
        "label_map": paths["label_map"].name,
        "label_map_no_label_value": NO_LABEL_8BIT if len(result.labels) <= NO_LABEL_8BIT else NO_LABEL_16BIT,
        "masks": [path.name for path in paths["masks"]],
    }
    paths["json"] = out / f"{stem}.json"
    paths["json"].write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return paths
