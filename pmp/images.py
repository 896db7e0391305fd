"""Turn whatever a user hands us (file, bytes, PIL image, numpy array) into one RGB PIL image.

Why a module of its own: the Segmenter, the CLI and the demo (whose every event is a public API)
all accept images from untrusted sources. Every check lives here, once, so that a bad upload gets
the same clear :class:`ImageError` everywhere instead of a PIL traceback or an out-of-memory kill.

Policy (each line is tested in tests/test_images.py):

* size is checked from the header, *before* the pixels are decoded: more than ``max_pixels``
  pixels is rejected (this also covers decompression bombs; PIL's own bomb error is translated);
* images whose longer side exceeds ``max_side`` are downscaled (JPEGs decode at reduced scale);
* the aspect ratio (longer side / shorter side) must be at most ``max_aspect`` (50 by default).
  Tiny images, even 1x1, are accepted: the Segmenter resizes the longer side to its input size
  and pads to a multiple of 32. Beyond 50:1 the shorter side shrinks below one stride-32 feature
  cell for any input size we run at, so the masks carry no information: rejected with a message;
* colour modes: 1/L/P/CMYK/YCbCr/HSV are converted to RGB; anything with transparency (RGBA, LA,
  PA, P or L with a transparency key) is composited on white; 16-bit and 32-bit grey (I;16, I)
  and float (F) images are rescaled to 8 bit (not clipped, which is what ``convert`` would do);
  16-bit RGB PNGs are read by PIL at 8 bit;
* animated GIF/WebP/PNG: the first frame;
* the EXIF orientation is applied exactly once (``ImageOps.exif_transpose`` drops the tag, so an
  image already transposed by Gradio or by the caller is not rotated again);
* numpy arrays: HxW, HxWx1, HxWx3, HxWx4 (channels last) of uint8, uint16 (scaled by 1/257),
  float in [0, 1], or another integer type whose values are in 0..255. Boolean arrays (masks),
  channels-first arrays and NaN/out-of-range floats are rejected.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")  # files read as images
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_SIDE = 2048
DEFAULT_MAX_ASPECT = 50.0

ACCEPTED = (
    "accepted: an image file (PNG, JPEG, WebP, GIF, BMP, TIFF) as a path or bytes, a PIL image, or a "
    "numpy array HxW, HxWx1, HxWx3 or HxWx4 (channels last) of uint8, uint16 or float in [0, 1]"
)

_TRANSPARENT_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class ImageError(ValueError):
    """The input cannot be used as an image; the message says why and what is accepted."""


class ImageNotFoundError(ImageError, FileNotFoundError):
    """A path that does not exist (both a ValueError and a FileNotFoundError, for either handler)."""


def normalize_pixels(pixels: "torch.Tensor", mean: tuple[float, ...], std: tuple[float, ...]) -> "torch.Tensor":
    """(B, 3, H, W) RGB in [0, 1] -> (pixels - mean) / std per channel (stage 1 and CLIP each have theirs)."""
    mean_t = pixels.new_tensor(mean).view(1, 3, 1, 1)
    std_t = pixels.new_tensor(std).view(1, 3, 1, 1)
    return (pixels - mean_t) / std_t


def load_image(
    image: Image.Image | np.ndarray | str | Path | bytes | None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int = DEFAULT_MAX_SIDE,
    max_aspect: float = DEFAULT_MAX_ASPECT,
) -> Image.Image:
    """Return a decoded RGB image with longer side <= ``max_side``; raise :class:`ImageError` otherwise.

    The result never shares pixels or an open file with the input.
    """
    if image is None:
        raise ImageError(f"no image was given; {ACCEPTED}")
    if isinstance(image, Image.Image):
        rgb = _from_pil(image, max_pixels, max_aspect)
    elif isinstance(image, np.ndarray):
        rgb = _from_array(image, max_pixels, max_aspect)
    elif isinstance(image, (str, Path)):
        rgb = _from_path(image, max_pixels, max_side, max_aspect)
    elif isinstance(image, (bytes, bytearray, memoryview)):
        import io

        if len(image) == 0:
            raise ImageError(f"the image data is empty (0 bytes); {ACCEPTED}")
        rgb = _decode(io.BytesIO(bytes(image)), "the image data", max_pixels, max_side, max_aspect)
    else:
        raise ImageError(f"cannot read an image from a {type(image).__name__}; {ACCEPTED}")
    return _limit_side(rgb, max_side)


def check_image_header(
    source: str | Path | Any,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_aspect: float = DEFAULT_MAX_ASPECT,
    what: str = "the image",
) -> tuple[int, int]:
    """(width, height) from the file header alone, refused like :func:`load_image` refuses it; no pixel
    is decoded, so a small file that claims a huge size costs nothing. ``source``: a path or a binary file."""
    try:
        with Image.open(source) as opened:
            _check_size(opened.size, max_pixels, max_aspect, what)
            return opened.size
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(f"{what} has too many pixels ({error}); at most {max_pixels:,} are accepted") from None
    except UnidentifiedImageError:
        raise ImageError(f"{what} is not an image file PIL can read; {ACCEPTED}") from None
    except (OSError, SyntaxError, EOFError, ValueError) as error:
        raise ImageError(f"{what} could not be read ({error}); is it truncated or corrupt? {ACCEPTED}") from None


def _check_size(size: tuple[int, int], max_pixels: int, max_aspect: float, what: str) -> None:
    """Reject empty, too large or too elongated sizes from the header alone (no pixels decoded)."""
    width, height = size
    if width < 1 or height < 1:
        raise ImageError(f"{what} is empty ({width}x{height} pixels); {ACCEPTED}")
    if width * height > max_pixels:
        raise ImageError(
            f"{what} has {width}x{height} = {width * height:,} pixels; at most {max_pixels:,} are accepted "
            "(downscale it first)"
        )
    aspect = max(width, height) / min(width, height)
    if aspect > max_aspect:
        raise ImageError(
            f"{what} is {width}x{height} pixels, an aspect ratio of {aspect:.0f}:1; at most {max_aspect:.0f}:1 "
            "is accepted (crop it into pieces first)"
        )


def _from_path(source: str | Path, max_pixels: int, max_side: int, max_aspect: float) -> Image.Image:
    text = str(source)
    if isinstance(source, str) and source.startswith(("http://", "https://")):
        raise ImageError(f"URLs are not fetched (no network use at run time): {text}; download the image first")
    path = Path(source)
    if not path.exists():
        raise ImageNotFoundError(f"no image file at {text}")
    if not path.is_file():
        raise ImageError(f"{text} is not a file; {ACCEPTED}")
    if path.stat().st_size == 0:
        raise ImageError(f"the image file {text} is empty (0 bytes); {ACCEPTED}")
    return _decode(path, f"the image {path.name}", max_pixels, max_side, max_aspect)


def _decode(source, what: str, max_pixels: int, max_side: int, max_aspect: float) -> Image.Image:
    """Open lazily, check the header size, then decode the first frame only."""
    try:
        with Image.open(source) as opened:
            _check_size(opened.size, max_pixels, max_aspect, what)
            if opened.format == "JPEG" and max(opened.size) > max_side:
                # JPEG can decode at 1/2, 1/4, 1/8 scale: far less memory and time for huge photos.
                scale = max_side / max(opened.size)
                opened.draft("RGB", (max(1, int(opened.size[0] * scale)), max(1, int(opened.size[1] * scale))))
            if getattr(opened, "n_frames", 1) > 1:
                opened.seek(0)
            decoded = ImageOps.exif_transpose(opened)  # a loaded copy, orientation tag removed
            return _to_rgb(decoded)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:  # the warning: under -W error
        raise ImageError(f"{what} has too many pixels ({error}); at most {max_pixels:,} are accepted") from None
    except UnidentifiedImageError:
        raise ImageError(f"{what} is not an image file PIL can read; {ACCEPTED}") from None
    except (OSError, SyntaxError, EOFError, ValueError, IndexError) as error:
        raise ImageError(f"{what} could not be decoded ({error}); is it truncated or corrupt? {ACCEPTED}") from None


def _from_pil(image: Image.Image, max_pixels: int, max_aspect: float) -> Image.Image:
    """Same policy as files; the caller's image is left as it was (its frame pointer is restored)."""
    _check_size(image.size, max_pixels, max_aspect, "the image")
    frame = image.tell() if getattr(image, "n_frames", 1) > 1 else None
    try:
        if frame:
            image.seek(0)
        return _to_rgb(ImageOps.exif_transpose(image))
    except ImageError:
        raise
    except (OSError, SyntaxError, EOFError, ValueError) as error:
        raise ImageError(f"the image could not be decoded ({error}); {ACCEPTED}") from None
    finally:
        if frame:
            image.seek(frame)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: transparency composited on white, wide grey rescaled to 8 bit."""
    mode = image.mode
    try:
        if mode in _WIDE_GREY_MODES:
            return Image.fromarray(_grey_to_uint8(np.asarray(image), mode), mode="L").convert("RGB")
        has_key = "transparency" in image.info and mode in ("P", "L", "RGB")
        if mode in _TRANSPARENT_MODES or has_key:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        if mode == "RGB":
            return image.copy()
        return image.convert("RGB")
    except ValueError as error:
        raise ImageError(f"images in colour mode {mode} are not supported ({error}); {ACCEPTED}") from None


def _grey_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """16/32-bit integer or float grey -> uint8 by scaling, so that detail is kept rather than clipped.

    I;16: /257 (65535 -> 255). I: as is if within 0..255, /257 if within 0..65535, else stretched
    min..max. F: x255 if within [0, 1], as is if within 0..255, else stretched; NaN -> 0.
    """
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(values.min()), float(values.max())
    if mode.startswith("I;16"):
        scaled = values / 257.0
    elif mode == "F" and low >= 0.0 and high <= 1.0:
        scaled = values * 255.0
    elif low >= 0.0 and high <= 255.0:
        scaled = values
    elif mode == "I" and low >= 0.0 and high <= 65535.0:
        scaled = values / 257.0
    else:
        scaled = (values - low) * (255.0 / max(high - low, 1e-12))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _from_array(array: np.ndarray, max_pixels: int, max_aspect: float) -> Image.Image:
    if array.dtype == np.bool_:
        raise ImageError(f"a boolean array is a mask, not an image; {ACCEPTED}")
    if array.ndim == 3 and array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3, 4):
        raise ImageError(
            f"the array has shape {array.shape}, which looks channels-first (C,H,W); pass H,W,C "
            f"(e.g. array.transpose(1, 2, 0)); {ACCEPTED}"
        )
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (1, 3, 4))):
        raise ImageError(f"the array has shape {array.shape}; {ACCEPTED}")
    _check_size((array.shape[1], array.shape[0]), max_pixels, max_aspect, "the image array")
    pixels = _array_to_uint8(array)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    mode = "L" if pixels.ndim == 2 else {3: "RGB", 4: "RGBA"}[pixels.shape[-1]]
    return _to_rgb(Image.fromarray(np.ascontiguousarray(pixels), mode=mode))


def _array_to_uint8(array: np.ndarray) -> np.ndarray:
    """uint8 as is; uint16 /257; float in [0, 1] x255; other integers if within 0..255."""
    kind = array.dtype.kind
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return np.rint(array / 257.0).astype(np.uint8)
    if kind == "f":
        if not np.isfinite(array).all():
            raise ImageError(f"the float image array contains NaN or infinite values; {ACCEPTED}")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise ImageError(
                f"float image arrays must hold values in [0, 1], got [{low:g}, {high:g}] "
                f"(divide 0..255 data by 255); {ACCEPTED}"
            )
        return np.rint(array * 255.0).astype(np.uint8)
    if kind in "iu":
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ImageError(f"{array.dtype} image arrays must hold values in 0..255, got {low}..{high}; {ACCEPTED}")
        return array.astype(np.uint8)
    raise ImageError(f"image arrays of dtype {array.dtype} are not supported; {ACCEPTED}")


def _limit_side(image: Image.Image, max_side: int) -> Image.Image:
    """Downscale so the longer side is at most ``max_side``; the aspect ratio is kept (sides >= 1)."""
    width, height = image.size
    if max(width, height) <= max_side:
        return image
    scale = max_side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


RESIZE_MODES = ("long", "short", "detectron2")
# detectron2's default test resizing (INPUT.MIN_SIZE_TEST 800, MAX_SIZE_TEST 1333), which FC-CLIP's configs keep
DETECTRON2_MAX_RATIO = 1333 / 800


def model_input_size(width: int, height: int, size: int, resize: str = "long") -> tuple[int, int]:
    """(width, height) an image enters stage 1 at. ``"long"``: the longer side is ``size`` (this project's
    fast default, the demo's). ``"short"``: the shorter side is ``size`` with the longer at most ``4 * size``,
    detectron2's ResizeShortestEdge as OVSeg evaluates (MIN_SIZE_TEST 640 / MAX_SIZE_TEST 2560 for Swin-B,
    512 / 2048 for R101c: the cap is 4x in both). ``"detectron2"``: the same with detectron2's default cap,
    1333 for 800 (FC-CLIP's evaluation)."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
    if resize == "long":
        scale = size / max(width, height)
    else:
        cap = 4 * size if resize == "short" else round(size * DETECTRON2_MAX_RATIO)
        scale = size / min(width, height)
        if max(width, height) * scale > cap:
            scale = cap / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))
