"""The components' intake, made safe for the named API: every payload reaches the handlers' checks.

Gradio preprocesses a payload before any handler runs, and a payload that fails there reaches an API
client as ``{"error": null}``; some it changes silently (a seed of 1.5 becomes 2). And ``gr.Image``
opens any ``{"path": ...}`` a client names, on the whole server. So each input component's
``preprocess`` is wrapped here: images only from the app's own upload cache, inline images checked
from their header and never written to disk, settings handed to the handlers as sent (they check
them), and a call with too few inputs answered with what the event takes. Instances are wrapped, not
subclassed, because Gradio writes a ``.pyi`` stub next to the module of every component subclass at
import time (which fails on a read-only deployment).
"""

from __future__ import annotations

import base64
import binascii
import html
import io
import os
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.exceptions import InvalidPathError

from demo.server import MAX_API_BODY_BYTES
from pmp.images import ACCEPTED, ImageError, check_image_header

NOT_UPLOADED = (
    "the image must be a file uploaded to this app (the page's image box, POST /gradio_api/upload, or "
    "gradio_client's handle_file) or an inline data:image/...;base64 URL; paths on the server are not accepted"
)


def user_error(message: str) -> gr.Error:
    """gr.Error with the message HTML-escaped (gr.Error renders HTML; prompts are user text)."""
    return gr.Error(html.escape(message, quote=False), print_exception=False)


def uploaded_path(path: Any, cache_dir: str | Path) -> str:
    """``path`` when it names a file inside the app's upload cache, resolved (links and ``..`` followed);
    otherwise the same refusal for every path, so that nothing about the server's files is revealed."""
    if not isinstance(path, (str, Path)) or not str(path):
        raise user_error(NOT_UPLOADED)
    cache = os.path.realpath(cache_dir)
    real = os.path.realpath(path)
    if os.path.commonpath([cache, real]) != cache or real == cache or not os.path.isfile(real):
        raise user_error(NOT_UPLOADED)
    return real


def inline_image_bytes(url: str, max_pixels: int) -> bytes:
    """An image sent inline as ``data:image/...;base64,...`` -> its bytes, checked from the header first.

    Gradio would decode such an image in full (and write it to its cache) before any handler runs;
    here only its header is read, so a 27 KB PNG that claims 13000 x 13000 pixels is refused in
    milliseconds, and nothing is written: the handler's image intake decodes the bytes.
    """
    header, _, data = url.partition(",")
    if not header.startswith("data:") or not header.endswith(";base64"):
        raise user_error(f"an inline image must be a base64 data URL (data:image/png;base64,...); {ACCEPTED}")
    if len(data) > MAX_API_BODY_BYTES:
        raise user_error(f"the inline image is over {MAX_API_BODY_BYTES:,} bytes; send it as a file upload")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise user_error(f"the inline image is not valid base64; {ACCEPTED}") from None
    try:
        check_image_header(io.BytesIO(raw), max_pixels=max_pixels, what="the inline image")
    except ImageError as error:
        raise user_error(str(error)) from None
    return raw


def guarded_image(component: gr.Image, max_pixels: int) -> gr.Image:
    """``component`` taking only uploads of this app (or inline images), and saying so otherwise.

    An uploaded file that is not an image is refused with one message (the exception's type is not
    named) and removed: it is of no use to anyone.
    """
    original = component.preprocess

    def preprocess(payload: Any) -> Any:
        if payload is None:
            return None
        url = getattr(payload, "url", None)
        if isinstance(url, str) and url.startswith("data:"):
            return inline_image_bytes(url, max_pixels)
        path = uploaded_path(getattr(payload, "path", None), component.GRADIO_CACHE)
        payload.path = path
        try:
            return original(payload)
        except gr.Error:
            raise
        except Exception:  # PIL's UnidentifiedImageError, DecompressionBombError, OSError...
            Path(path).unlink(missing_ok=True)
            raise user_error(f"the uploaded file could not be read as an image; {ACCEPTED}") from None

    component.preprocess = preprocess  # type: ignore[method-assign]
    return component


def list_prompts(component: gr.Textbox) -> gr.Textbox:
    """Let the prompts box take a list of strings through the API, as the library does.

    Gradio's Textbox turns any payload into ``str(payload)``, so a list sent to ``/compare`` would
    become the labels "['sky'" and "'car']". A list (or tuple) reaches the handler as it is and is
    checked there; any other non-text payload is refused with a message.
    """
    original = component.preprocess

    def preprocess(payload: Any) -> Any:
        if isinstance(payload, (list, tuple)):
            return list(payload)
        if payload is not None and not isinstance(payload, str):
            raise user_error(f"prompts must be text or a list of strings, got {type(payload).__name__}")
        return original(payload)

    component.preprocess = preprocess  # type: ignore[method-assign]
    return component


def as_sent(component: Any) -> Any:
    """``component`` handing its payload to the handler as the client sent it.

    For numbers, sliders, radios and checkboxes: Gradio's own preprocessing would fail on "abc" with no
    message for an API client, or round 1.5 to 2; the handlers check every one of these values.
    """
    component.preprocess = lambda payload: payload  # type: ignore[method-assign]
    return component


def clear_input_errors(demo: gr.Blocks) -> gr.Blocks:
    """``demo`` answering an input Gradio itself refuses with a message, never ``{"error": null}``.

    Two refusals happen in Gradio before any component's ``preprocess``: an event called with too few
    inputs (answered here with what the event takes, in order), and a file payload marked as Gradio's
    FileData that names a path outside the upload cache (answered as :func:`uploaded_path` answers).
    """
    validate_inputs, preprocess_data = demo.validate_inputs, demo.preprocess_data

    def counted(block_fn: Any, inputs: list[Any]) -> None:
        if len(inputs) < len(block_fn.inputs):
            names = ", ".join(
                str(getattr(block, "label", None) or getattr(block, "elem_id", None) or type(block).__name__)
                for block in block_fn.inputs
            )
            event = f"/{block_fn.api_name}" if getattr(block_fn, "api_name", None) else "this event"
            raise user_error(f"{event} takes {len(block_fn.inputs)} inputs, in this order: {names}; got {len(inputs)}")
        validate_inputs(block_fn, inputs)

    async def preprocessed(*args: Any, **kwargs: Any) -> Any:
        try:
            return await preprocess_data(*args, **kwargs)
        except InvalidPathError:
            raise user_error(NOT_UPLOADED) from None

    demo.validate_inputs = counted  # type: ignore[method-assign]
    demo.preprocess_data = preprocessed  # type: ignore[method-assign]
    return demo
