"""pmp.images.load_image: every accepted input becomes RGB; every bad one gets a clear ImageError."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pmp.images import ImageError, ImageNotFoundError, load_image


def _png_bytes(image: Image.Image, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **params)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _raw_png(width: int, height: int, bit_depth: int, colour_type: int, idat: bytes) -> bytes:
    """A PNG written by hand, so the header can claim any size and the data can be anything."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _rgb16_png(rgb: np.ndarray) -> bytes:
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb)
    return _raw_png(rgb.shape[1], rgb.shape[0], 16, 2, zlib.compress(rows))


def _pixel(image: Image.Image, x: int, y: int) -> tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(image)[y, x])


# ---------------------------------------------------------------- missing / not an image


@pytest.mark.parametrize("bad", [None, 3, [1, 2, 3], {"path": "x.png"}])
def test_no_image_or_unsupported_type_says_what_is_accepted(bad):
    with pytest.raises(ImageError, match="accepted: an image file"):
        load_image(bad)


def test_missing_path_is_both_value_and_file_not_found_error(tmp_path):
    with pytest.raises(ImageNotFoundError, match="no image file at"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(FileNotFoundError):
        load_image(str(tmp_path / "nope.png"))


def test_directory_empty_file_and_url_are_rejected(tmp_path):
    with pytest.raises(ImageError, match="is not a file"):
        load_image(tmp_path)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(empty)
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")
    with pytest.raises(ImageError, match="URLs are not fetched"):
        load_image("https://example.com/cat.png")


def test_non_image_file_is_rejected(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("this is not an image\n" * 10)
    with pytest.raises(ImageError, match="not an image file"):
        load_image(text)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_is_rejected(tmp_path, fmt):
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(path)


# ---------------------------------------------------------------- size limits


def test_too_many_pixels_is_rejected_from_the_header_before_decoding():
    # 7000x7000 = 49M pixels; the pixel data is garbage, so decoding would fail differently.
    data = _raw_png(7000, 7000, 8, 2, b"garbage")
    with pytest.raises(ImageError, match="49,000,000 pixels; at most 40,000,000"):
        load_image(data)


def test_decompression_bomb_is_translated():
    data = _raw_png(20000, 20000, 8, 2, b"garbage")  # 400M pixels: PIL refuses at Image.open
    with pytest.raises(ImageError, match="pixels"):
        load_image(data)


def test_pixel_limit_applies_to_arrays_and_pil_images_too():
    with pytest.raises(ImageError, match="at most 100 are accepted"):
        load_image(np.zeros((11, 10), np.uint8), max_pixels=100)
    with pytest.raises(ImageError, match="at most 100 are accepted"):
        load_image(Image.new("RGB", (11, 10)), max_pixels=100)


def test_large_images_are_downscaled_keeping_aspect():
    image = load_image(Image.new("RGB", (3000, 1000), (10, 20, 30)))
    assert image.size == (2048, 683)
    assert _pixel(image, 5, 5) == (10, 20, 30)


def test_large_jpeg_is_downscaled(tmp_path):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (600, 400), (200, 100, 50)).save(path, quality=95)
    image = load_image(path, max_side=256)
    assert image.size == (256, 171)
    assert np.abs(np.asarray(image, np.int16)[80, 120] - (200, 100, 50)).max() <= 3


def test_tiny_and_elongated_images():
    assert load_image(Image.new("RGB", (1, 1), (1, 2, 3))).size == (1, 1)
    assert load_image(np.zeros((1, 50, 3), np.uint8)).size == (50, 1)  # 50:1 is the limit, accepted
    with pytest.raises(ImageError, match="aspect ratio of 51:1; at most 50:1"):
        load_image(np.zeros((51, 1, 3), np.uint8))
    with pytest.raises(ImageError, match="aspect ratio of 5000:1"):
        load_image(_png_bytes(Image.new("L", (1, 5000))))


def test_downscaling_keeps_short_side_at_least_one_pixel():
    assert load_image(Image.new("RGB", (4000, 80)), max_side=40).size == (40, 1)


# ---------------------------------------------------------------- colour modes


def test_grayscale_becomes_rgb():
    image = load_image(Image.new("L", (4, 3), 77))
    assert image.mode == "RGB" and image.size == (4, 3) and _pixel(image, 0, 0) == (77, 77, 77)
    assert _pixel(load_image(Image.new("1", (2, 2), 1)), 0, 0) == (255, 255, 255)


def test_16_bit_grey_png_is_scaled_not_clipped():
    grey = np.array([[0, 1000, 32896, 65535]], np.uint16)
    image = load_image(_png_bytes(Image.fromarray(grey)))
    assert np.asarray(image)[0, :, 0].tolist() == [0, 4, 128, 255]


def test_32_bit_int_and_float_grey_are_scaled():
    as_int = Image.fromarray(np.array([[0, 65535]], np.int32))
    assert as_int.mode == "I"
    assert np.asarray(load_image(as_int))[0, :, 0].tolist() == [0, 255]
    as_float = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32))
    assert as_float.mode == "F"
    assert np.asarray(load_image(as_float))[0, :, 0].tolist() == [0, 128, 255]
    wide = Image.fromarray(np.array([[-5.0, 5.0]], np.float32))
    assert np.asarray(load_image(wide))[0, :, 0].tolist() == [0, 255]


def test_16_bit_rgb_png_is_read():
    rgb = np.zeros((2, 3, 3), np.uint16)
    rgb[0, 0] = (65535, 32768, 0)
    image = load_image(_rgb16_png(rgb))
    assert image.mode == "RGB" and image.size == (3, 2)
    assert _pixel(image, 0, 0) == (255, 128, 0)


def test_rgba_and_la_are_composited_on_white():
    rgba = np.zeros((1, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (255, 0, 0, 0)  # fully transparent
    image = load_image(Image.fromarray(rgba))
    assert _pixel(image, 0, 0) == (255, 0, 0) and _pixel(image, 1, 0) == (255, 255, 255)
    la = Image.new("LA", (1, 1), (0, 0))
    assert _pixel(load_image(la), 0, 0) == (255, 255, 255)


def test_palette_with_transparency_is_composited_on_white():
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 255] + [0, 255, 0] + [0, 0, 0] * 254)
    palette.putpixel((0, 0), 0)
    palette.putpixel((1, 0), 1)
    reread = load_image(_png_bytes(palette, transparency=0))
    assert _pixel(reread, 0, 0) == (255, 255, 255) and _pixel(reread, 1, 0) == (0, 255, 0)


def test_cmyk_becomes_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path, quality=100)  # pure red in CMYK
    image = load_image(path)
    assert image.mode == "RGB"
    red, green, blue = _pixel(image, 4, 4)
    assert red > 200 and green < 60 and blue < 60


def test_unsupported_mode_gets_a_clear_message():
    with pytest.raises(ImageError, match="colour mode La is not supported|colour mode La are not supported"):
        load_image(Image.new("La", (2, 2)))


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animated_image_gives_first_frame(fmt):
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    buffer = io.BytesIO()
    frames[0].save(buffer, fmt, save_all=True, append_images=frames[1:], duration=50, loop=0, lossless=True)
    image = load_image(buffer.getvalue())
    red, green, blue = _pixel(image, 4, 4)
    assert red > 200 and green < 50 and blue < 50


def test_pil_input_animated_frame_pointer_is_restored():
    frames = [Image.new("RGB", (4, 4), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    opened = Image.open(io.BytesIO(buffer.getvalue()))
    opened.seek(1)
    assert _pixel(load_image(opened), 0, 0)[0] > 200  # first frame: red
    assert opened.tell() == 1


def _rotated_jpeg(tmp_path: Path) -> Path:
    """A 4x2 (wide) image whose EXIF says 'rotate 90 degrees clockwise to view' (orientation 6)."""
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=100)
    return path


def test_exif_rotation_is_applied_once(tmp_path):
    path = _rotated_jpeg(tmp_path)
    image = load_image(path)
    assert image.size == (20, 40)  # upright: tall
    assert _pixel(image, 10, 5)[0] > 200 and _pixel(image, 10, 35)[0] < 50  # left half went to the top
    # The returned image has no orientation tag left, so loading it again does not rotate it again.
    assert load_image(image).size == (20, 40)
    # A PIL image opened by the caller (tag still present) is rotated exactly once as well.
    with Image.open(path) as opened:
        assert load_image(opened).size == (20, 40)


# ---------------------------------------------------------------- numpy arrays


@pytest.mark.parametrize(
    "array, expected",
    [
        (np.full((3, 4), 9, np.uint8), (9, 9, 9)),
        (np.full((3, 4, 1), 9, np.uint8), (9, 9, 9)),
        (np.full((3, 4, 3), (1, 2, 3), np.uint8), (1, 2, 3)),
        (np.full((3, 4, 4), (1, 2, 3, 255), np.uint8), (1, 2, 3)),
        (np.full((3, 4, 4), (1, 2, 3, 0), np.uint8), (255, 255, 255)),
        (np.full((3, 4, 3), 65535, np.uint16), (255, 255, 255)),
        (np.full((3, 4, 3), 0.5, np.float32), (128, 128, 128)),
        (np.full((3, 4, 3), 1.0, np.float64), (255, 255, 255)),
        (np.full((3, 4, 3), 200, np.int64), (200, 200, 200)),
    ],
)
def test_numpy_arrays_are_accepted(array, expected):
    image = load_image(array)
    assert image.mode == "RGB" and image.size == (4, 3) and _pixel(image, 1, 1) == expected


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((4, 4), bool), "boolean array is a mask"),
        (np.zeros((3, 8, 8), np.uint8), "channels-first"),
        (np.zeros((2, 4, 4, 3), np.uint8), r"shape \(2, 4, 4, 3\)"),
        (np.zeros((4, 4, 2), np.uint8), r"shape \(4, 4, 2\)"),
        (np.zeros(5, np.uint8), r"shape \(5,\)"),
        (np.zeros((0, 4, 3), np.uint8), "empty"),
        (np.full((4, 4, 3), 2.0, np.float32), r"values in \[0, 1\], got \[2, 2\]"),
        (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
        (np.full((4, 4, 3), -1, np.int32), "values in 0..255"),
        (np.zeros((4, 4, 3), np.complex64), "dtype complex64"),
    ],
)
def test_bad_numpy_arrays_are_rejected(array, message):
    with pytest.raises(ImageError, match=message):
        load_image(array)


def test_result_does_not_share_pixels_with_the_input():
    source = Image.new("RGB", (4, 4), (1, 2, 3))
    result = load_image(source)
    result.putpixel((0, 0), (9, 9, 9))
    assert source.getpixel((0, 0)) == (1, 2, 3)
