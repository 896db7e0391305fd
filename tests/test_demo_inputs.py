"""The comparison handler on bad input: images and prompts a client may send, each a clear error or a clean
segmentation, never a crash."""

from __future__ import annotations

import struct
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from demo.comparison import (
    DemoModels,
    run_comparison,
)
from demo.handlers import UI_OUTPUTS
from tests.demo_fixtures import (
    FakeSegmenter,
    _animated_gif,
    _cmyk_jpeg,
    _compare,
    _error_message,
    _exif_rotated_jpeg,
    _palette_png,
    _png,
    _write,
)


@pytest.mark.parametrize("image", [None, "", "   "])
def test_no_image(models, tmp_path, image):
    assert "no image: upload an image" in _error_message(models, image, tmp_path=tmp_path)


def test_truncated_and_non_image_files(models, tmp_path):
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    data = _png(Image.fromarray(noise))
    assert "truncated or corrupt" in _error_message(
        models, _write(tmp_path, "cut.png", data[: len(data) // 2]), tmp_path=tmp_path
    )
    assert "not an image file" in _error_message(models, _write(tmp_path, "x.png", b"hello" * 100), tmp_path=tmp_path)


def test_huge_image_is_rejected_before_decoding(models, tmp_path):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 9000, 9000, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"junk") + chunk(b"IEND", b"")
    message = _error_message(models, _write(tmp_path, "huge.png", data), tmp_path=tmp_path)
    assert "81,000,000 pixels; at most 40,000,000" in message


def test_large_image_is_downscaled_for_display(models, tmp_path):
    run_comparison(models, Image.new("RGB", (3000, 1500)), "sky", output_root=tmp_path)
    assert models.pmp.calls[0]["size"] == (1024, 512)


@pytest.mark.parametrize(
    "name, data, size",
    [
        ("grey.png", lambda: _png(Image.new("L", (20, 10), 99)), (20, 10)),
        ("rgba.png", lambda: _png(Image.new("RGBA", (20, 10), (255, 0, 0, 0))), (20, 10)),
        ("cmyk.jpg", _cmyk_jpeg, (20, 10)),
        ("grey16.png", lambda: _png(Image.fromarray(np.full((10, 20), 40000, np.uint16))), (20, 10)),
        ("palette.png", _palette_png, (20, 10)),
        ("animated.gif", _animated_gif, (20, 10)),
        ("rotated.jpg", _exif_rotated_jpeg, (20, 40)),
        ("dot.png", lambda: _png(Image.new("RGB", (1, 1))), (1, 1)),
        ("strip.png", lambda: _png(Image.new("RGB", (50, 1))), (50, 1)),
    ],
)
def test_unusual_images_are_segmented(models, tmp_path, name, data, size):
    values = _compare(models, _write(tmp_path, name, data()), "sky, house", tmp_path)
    assert models.pmp.calls[0]["size"] == size
    assert Image.open(values[UI_OUTPUTS.index("pmp_overlay")]).width >= 256  # drawn, legend included


def test_extreme_aspect_ratio_is_rejected_clearly(models, tmp_path):
    message = _error_message(models, _write(tmp_path, "line.png", _png(Image.new("RGB", (5000, 1)))), tmp_path=tmp_path)
    assert "aspect ratio of 5000:1; at most 50:1" in message


@pytest.mark.parametrize("prompts", ["", "   ", ", ;\n", None])
def test_empty_prompts(models, tmp_path, prompts):
    assert "no prompts" in _error_message(models, Image.new("RGB", (8, 8)), prompts, tmp_path)


def test_too_many_and_too_long_prompts(models, tmp_path):
    image = Image.new("RGB", (8, 8))
    many = ", ".join(f"class {i}" for i in range(31))
    assert "too many prompts: 31 given, at most 30" in _error_message(models, image, many, tmp_path)
    assert "at most 80 are accepted" in _error_message(models, image, "x" * 81, tmp_path)


def test_huge_prompt_text_is_rejected_before_parsing(models, tmp_path):
    caption = "a red car parked on a road under a blue sky " * 200  # a caption: would go to spaCy
    message = _error_message(models, Image.new("RGB", (8, 8)), caption, tmp_path)
    assert "8,800 characters long; at most 4,000" in message
    assert "prompts must be text or a list of strings, got int" in _error_message(
        models, Image.new("RGB", (8, 8)), 5, tmp_path
    )


def test_prompt_limits_follow_the_stricter_model_config(tmp_path):
    strict = FakeSegmenter()
    strict.config = SimpleNamespace(max_prompts=2, max_prompt_chars=10)
    models = DemoModels(baseline=FakeSegmenter(), pmp=strict)
    assert "at most 2 are accepted" in _error_message(models, Image.new("RGB", (8, 8)), "a, b, c", tmp_path)


def test_clip_token_limit(models, tmp_path):
    models.pmp.context_length = 8
    message = _error_message(models, Image.new("RGB", (8, 8)), "one two three four five, sky", tmp_path)
    assert "too long for CLIP: 11 tokens" in message and "at most 8" in message


def test_emoji_other_scripts_and_duplicates(models, tmp_path):
    values = _compare(
        models, Image.new("RGB", (16, 16)), "\u732b, \U0001f697 car, \u0434\u043e\u043c, Sky, sky, SKY", tmp_path
    )
    assert models.pmp.calls[0]["labels"] == ["\u732b", "\U0001f697 car", "\u0434\u043e\u043c", "Sky"]
    assert "**4 prompt(s):**" in values[0]


def test_html_in_prompts_is_escaped(models, tmp_path):
    values = _compare(models, Image.new("RGB", (16, 16)), "<b>sky</b>, `tick`", tmp_path)
    # inside a code span Markdown shows the text literally: escaping it again would show "&lt;b&gt;"
    assert "`<b>sky</b>`" in values[0] and "&lt;" not in values[0] and "`'tick'`" in values[0]
    message = _error_message(models, Image.new("RGB", (8, 8)), "<script>" + "x" * 90, tmp_path)
    assert "<script>" not in message and "&lt;script&gt;" in message


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"clip_weight": 1.5}, "CLIP weight must be between 0.0 and 1.0"),
        ({"clip_weight": float("nan")}, "CLIP weight must be between"),
        ({"clip_weight": "abc"}, "CLIP weight must be a number"),
        ({"clip_weight": None}, "CLIP weight must be a number"),
        ({"stage2_mode": "slice"}, "stage-2 mode must be one of pool, crop"),
        ({"mask_threshold": 0.0}, "mask threshold must be strictly between 0.0 and 1.0"),
        ({"mask_threshold": 1}, "mask threshold must be strictly between"),
    ],
)
def test_bad_settings(models, tmp_path, settings, message):
    assert message in _error_message(models, Image.new("RGB", (8, 8)), "sky", tmp_path, **settings)


def test_prompt_text_attacks_are_refused_or_cleaned_before_any_model_runs(models, tmp_path):
    message = _error_message(models, Image.new("RGB", (8, 8)), "sky, car\ud800", tmp_path)
    assert "lone surrogate" in message and not models.baseline.calls and not models.pmp.calls
    _compare(models, Image.new("RGB", (16, 16)), "\u200bsky, \u202ecar, \u200b\u2066, \u200d", tmp_path)
    assert models.pmp.calls[-1]["labels"] == ["sky", "car"]  # invisible-only prompts are gone


def test_prompts_as_a_list_of_strings(models, tmp_path):
    _compare(models, Image.new("RGB", (16, 16)), ["sky", "red car"], tmp_path)
    assert models.pmp.calls[-1]["labels"] == ["sky", "red car"]
    assert "a list of prompts must hold strings only" in _error_message(
        models, Image.new("RGB", (8, 8)), ["sky", 3], tmp_path
    )
    assert "prompts must be text or a list of strings" in _error_message(
        models, Image.new("RGB", (8, 8)), {"a": 1}, tmp_path
    )
