"""Gradio demo: the OVSeg-style baseline and PMP side by side on one image and one prompt list.

    python app.py                                  # bundled checkpoints/baseline and checkpoints/pmp
    python app.py --baseline user/ovseg --pmp ./my-pmp --host 0.0.0.0 --port 7860

This file lays out the components, wires the events and holds the Gradio adapter (component values,
``gr.Error``, the server's request limits); the comparison itself (input checks, both models, the
pictures, the downloads) is in :mod:`pmp.demo`, which does not know Gradio. The comparison is also an HTTP API named
``/compare`` (see the README): every input is checked in the handler, not in the UI.
"""

from __future__ import annotations

import os

# Before gradio is imported: no telemetry, no version check, nothing leaves the machine.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Before torch is imported: idle OpenMP threads sleep instead of spinning, so concurrent requests
# (or other processes) on a small CPU do not starve each other (measured: 2.8 s instead of 30 ms).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import atexit  # noqa: E402
import html  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import tempfile  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gradio as gr  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

from pmp.demo import (  # noqa: E402
    DIFF_HEADERS,
    MODEL_NAMES,
    MODEL_TITLES,
    STAGE2_MODES,
    TABLE_HEADERS,
    DemoInputError,
    DemoModels,
    check_token_limit,
    prompts_markdown,
    read_prompts,
    run_comparison,
    write_pictures,
)
from pmp.images import ACCEPTED, IMAGE_SUFFIXES, ImageError, check_image_header  # noqa: E402

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
MAX_FILE_SIZE = "25mb"  # uploads above this are refused by Gradio before they reach the handler
MAX_UPLOAD_BODY_BYTES = 26 * 1024 * 1024  # an upload request: the 25 MB file plus its multipart framing
# Every other request is a small JSON event; an image sent inline as a data URL must fit in it too.
MAX_API_BODY_BYTES = 2 * 1024 * 1024
DEFAULT_QUEUE_SIZE = 16
INTRO = """# PMP vs an OVSeg-style baseline
Both models propose masks (stage 1) and let CLIP classify them (stage 2). PMP conditions the mask
proposals on your prompts; the baseline does not. For each prompt, the proposal with the highest
**p_out = p^(1-w) · p_hat^w** is picked, where **p** is the stage-1 probability, **p_hat** CLIP's and
w the CLIP weight (0.65, as OVSeg and ODISE weight CLIP; the paper's Eq. 3 writes λ = 1 - w).
Type class names separated by commas (*sky, house, red car*) or a caption.
"""


# ------------------------------------------------------------------------- the Gradio adapter
# (pmp.demo builds the comparison; these functions turn it into component values and gr.Error)
logger = logging.getLogger("app")
STAGE2_DESCRIPTIONS = {"pool": "mask-pooled dense CLIP features", "crop": "OVSeg's masked crops"}
GENERIC_ERROR = "Something went wrong while segmenting (error id {}). Try another image or fewer prompts."


def column_title(name: str, stage2_mode: str) -> str:
    """A model column's heading, naming the second stage it ran."""
    mode = stage2_mode if stage2_mode in STAGE2_DESCRIPTIONS else "pool"
    return f"## {MODEL_TITLES[name]}\nstage 2: **{mode}** ({STAGE2_DESCRIPTIONS[mode]})"


# The order of the values returned by compare_for_ui; app.py wires its output components in this order.
UI_OUTPUTS = (
    "prompts",  # Markdown: the parsed prompts
    "baseline_overlay", "baseline_masks", "baseline_table", "baseline_grid", "baseline_timings",
    "pmp_overlay", "pmp_masks", "pmp_table", "pmp_grid", "pmp_timings",
    "differences_text", "differences_table",
    "downloads",
    "grids_state",  # per-session: both grid orders per model, for the sort toggle (not part of the API)
)  # fmt: skip


def user_error(message: str) -> gr.Error:
    """gr.Error with the message HTML-escaped (gr.Error renders HTML; prompts are user text)."""
    return gr.Error(html.escape(message, quote=False), print_exception=False)


def compare_for_ui(
    models: DemoModels,
    image: Any,
    prompt_text: Any,
    clip_weight: Any,
    stage2_mode: Any,
    mask_threshold: Any,
    sort_by_score: Any = True,
    *,
    output_root: str | Path | None = None,
) -> tuple:
    """The app's (and the ``/compare`` API's) handler: values in UI_OUTPUTS order, or gr.Error.

    Pictures are returned as PNG paths in the request's own folder, not as PIL images: Gradio
    re-writes a PIL output in place at a path named by its content hash, so two concurrent requests
    with identical outputs (two users running the same example) could serve each other a half-written
    file. A path is copied into Gradio's cache atomically instead.
    """
    try:
        view = run_comparison(
            models, image, prompt_text, clip_weight, stage2_mode, mask_threshold, output_root=output_root
        )
        pictures = write_pictures(view)
    except DemoInputError as error:
        raise user_error(str(error)) from None
    except Exception:  # anything else is a bug or a resource problem: log it, tell the user little
        error_id = uuid.uuid4().hex[:8]
        logger.exception("comparison failed (error id %s)", error_id)
        raise user_error(GENERIC_ERROR.format(error_id)) from None
    slot = 0 if sort_by_score else 1
    values: list[Any] = [view.prompts_markdown()]
    for name in MODEL_NAMES:
        column, files = view.views[name], pictures[name]
        values += [
            files["overlay"],
            [(path, caption) for path, (_, caption) in zip(files["masks"], column.masks)],
            {"headers": TABLE_HEADERS, "data": column.table},
            files["grids"][slot],
            column.timings_markdown(),
        ]
    values += [
        view.differences_markdown(),
        {"headers": DIFF_HEADERS, "data": view.differences},
        [str(path) for path in view.downloads],
        {name: pictures[name]["grids"] for name in MODEL_NAMES},
    ]
    return tuple(values)


def preview_prompts(models: DemoModels, text: Any) -> str:
    """Live feedback while typing: the prompts the Run button will use, or why there are none."""
    if not isinstance(text, str) or not text.strip():
        return "*Type class names separated by commas (sky, house, red car) or a caption.*"
    try:
        prompts = read_prompts(text, models.effective_limits())
        check_token_limit(models, prompts)
    except DemoInputError as error:
        return f"**Cannot use these prompts:** {html.escape(str(error), quote=False)}"
    return prompts_markdown(prompts)


def pick_grids(grids: Any, sort_by_score: Any) -> tuple:
    """The sort toggle: re-show the saved grids in the other order without running the models again.

    ``grids`` is the per-session state {model: (by score path, by index path)}; when there is none
    yet, or its request folder has been pruned, the grids shown are left as they are.
    """
    slot = 0 if sort_by_score else 1
    if not isinstance(grids, dict) or not all(name in grids for name in MODEL_NAMES):
        return (gr.skip(), gr.skip())
    paths = [grids[name][slot] for name in MODEL_NAMES]
    if not all(isinstance(path, str) and Path(path).is_file() for path in paths):
        return (gr.skip(), gr.skip())
    return tuple(paths)


# --------------------------------------------------------------------------- the server's limits
class RequestBodyLimit:
    """ASGI middleware: refuse a request whose body is over its limit, before the body is read.

    The declared Content-Length is checked first; a body sent without one (chunked) is counted as it
    arrives and cut off at the limit, so memory stays flat whatever the client sends. Uploads
    (``.../upload``) get :data:`MAX_UPLOAD_BODY_BYTES`, every other route :data:`MAX_API_BODY_BYTES`.
    """

    def __init__(
        self, app: Any, api_limit: int = MAX_API_BODY_BYTES, upload_limit: int = MAX_UPLOAD_BODY_BYTES
    ) -> None:
        self.app = app
        self.api_limit = api_limit
        self.upload_limit = upload_limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.upload_limit if scope["path"].rstrip("/").endswith("/upload") else self.api_limit
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await self._refuse(send, limit)
        received = 0
        started = refused = False

        async def counted_receive() -> dict:
            nonlocal received, refused, started
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # answer now; the app sees a client that went away
                    refused = True
                    if not started:
                        started = True
                        await self._refuse(send, limit)
                    return {"type": "http.disconnect"}
            return message

        async def tracked_send(message: dict) -> None:
            nonlocal started
            if refused:
                return  # the 413 is the answer; whatever the app says after the disconnect is dropped
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counted_receive, tracked_send)

    @staticmethod
    async def _refuse(send: Any, limit: int) -> None:
        body = json.dumps(
            {
                "error": f"request body too large: at most {limit:,} bytes are accepted here; "
                "send images as file uploads (gradio_client's handle_file does)"
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


def data_url_to_file(url: str, folder: str | Path, max_pixels: int) -> str:
    """An image sent inline as ``data:image/...;base64,...`` -> a file holding its bytes, checked first.

    Gradio would decode such an image in full (and re-encode it) before any handler runs; here only its
    header is read: a 27 KB PNG that claims 13000 x 13000 pixels is refused in milliseconds. The bytes
    are written as they are, and the handler's own image intake decodes them.
    """
    import base64
    import binascii
    import io

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
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix="inline-", suffix=".img", delete=False) as handle:
        handle.write(raw)
    return handle.name


def with_clear_upload_errors(component: gr.Image, max_pixels: int) -> gr.Image:
    """Make ``component``'s upload step turn unreadable files into a clear message, and check images
    sent inline as data URLs from their header (:func:`data_url_to_file`) instead of decoding them.

    Gradio opens an uploaded image with PIL before any handler runs; a non-image or corrupt file would
    otherwise reach the user as a bare "Error". The instance's ``preprocess`` is wrapped rather than
    gr.Image subclassed because Gradio writes a ``.pyi`` stub next to the module of every component
    subclass at import time (which fails on a read-only deployment).
    """
    original = component.preprocess

    def preprocess(payload: Any) -> Any:
        url = getattr(payload, "url", None)
        if isinstance(url, str) and url.startswith("data:"):
            return data_url_to_file(url, component.GRADIO_CACHE, max_pixels)
        try:
            return original(payload)
        except gr.Error:
            raise
        except Exception as error:  # PIL's UnidentifiedImageError, DecompressionBombError, OSError...
            raise user_error(
                f"the uploaded file could not be read as an image ({type(error).__name__}); {ACCEPTED}"
            ) from None

    component.preprocess = preprocess  # type: ignore[method-assign]
    return component


def with_list_prompts(component: gr.Textbox) -> gr.Textbox:
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


def read_examples(folder: Path = EXAMPLES_DIR) -> list[list[Any]]:
    """[[image path, prompts], ...] from ``examples/*.json``; a missing or broken file is skipped.

    Each JSON file holds one object or a list of objects {"image": "street.png", "prompts": "sky, car"}
    with the image path relative to the JSON file. Without any JSON file, every image in the folder
    is an example with empty prompts.
    """
    if not folder.is_dir():
        return []
    specs = sorted(folder.glob("*.json"))
    if not specs:
        return [[str(path.resolve()), ""] for path in sorted(folder.iterdir()) if path.suffix.lower() in IMAGE_SUFFIXES]
    rows = []
    for spec in specs:
        try:
            entries = json.loads(spec.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            logging.getLogger(__name__).warning("skipping example file %s: %s", spec, error)
            continue
        for entry in entries if isinstance(entries, list) else [entries]:
            if not isinstance(entry, dict) or "image" not in entry:
                continue
            image = (spec.parent / str(entry["image"])).resolve()
            if image.is_file():
                rows.append([str(image), str(entry.get("prompts", ""))])
    return rows


def build_app(models: DemoModels, *, output_root: str | Path, examples: list[list[Any]] | None = None) -> gr.Blocks:
    """The Blocks UI; queue limits are applied by :func:`launch`."""
    examples = read_examples() if examples is None else examples
    columns: dict[str, dict[str, Any]] = {}
    with gr.Blocks(title="PMP vs OVSeg-style baseline", analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=1):
                # image_mode=None: the handler gets the file as uploaded (16-bit, RGBA, ...), not Gradio's RGB copy
                image = with_clear_upload_errors(
                    gr.Image(
                        label="Image",
                        type="filepath",
                        image_mode=None,
                        sources=["upload", "clipboard"],
                        height=320,
                        elem_id="image",
                    ),
                    models.limits.max_pixels,
                )
                prompts = with_list_prompts(
                    gr.Textbox(
                        label="Prompts",
                        lines=2,
                        max_length=models.limits.max_text_chars,
                        placeholder="sky, house, red car",
                        elem_id="prompts",
                    )
                )
                parsed = gr.Markdown(preview_prompts(models, ""), label="Parsed prompts", elem_id="parsed-prompts")
                with gr.Accordion("Settings", open=False):
                    clip_weight = gr.Slider(
                        0.0,
                        1.0,
                        value=0.65,
                        step=0.05,
                        label="CLIP weight w: p_out = p^(1-w) · p_hat^w (Eq. 3's λ = 1 - w)",
                        elem_id="clip-weight",
                    )
                    stage2_mode = gr.Radio(
                        list(STAGE2_MODES),
                        value="pool",
                        label="Stage 2",
                        info="pool: mask-pooled dense CLIP features; crop: OVSeg's masked crops",
                    )
                    mask_threshold = gr.Slider(0.05, 0.95, value=0.5, step=0.05, label="Mask threshold")
                    sort_by_score = gr.Checkbox(value=True, label="Sort proposals by score")
                run = gr.Button("Run", variant="primary", elem_id="run")
                if examples:
                    gr.Examples(examples=examples, inputs=[image, prompts], cache_examples=False, label="Examples")
            for name in MODEL_NAMES:
                with gr.Column(scale=1, elem_id=f"column-{name}"):
                    col = columns[name] = {}
                    col["title"] = gr.Markdown(column_title(name, "pool"), elem_id=f"{name}-title")
                    short = "PMP" if name == "pmp" else "Baseline"
                    col["overlay"] = gr.Image(
                        label=f"{short} segmentation",
                        type="pil",
                        format="png",
                        interactive=False,
                        elem_id=f"{name}-overlay",
                    )
                    col["timings"] = gr.Markdown(label=f"{short} timings", elem_id=f"{name}-timings")
                    col["masks"] = gr.Gallery(
                        label=f"{short}: picked proposal per prompt",
                        columns=3,
                        height=260,
                        object_fit="contain",
                        elem_id=f"{name}-masks",
                    )
                    col["table"] = gr.Dataframe(
                        headers=TABLE_HEADERS,
                        label=f"{short}: scores of the picked proposals",
                        interactive=False,
                        wrap=True,
                        elem_id=f"{name}-table",
                    )
                    col["grid"] = gr.Image(
                        label=f"{short}: all proposals (best label, p_out)",
                        type="pil",
                        format="png",
                        interactive=False,
                        elem_id=f"{name}-grid",
                    )
        with gr.Row():
            with gr.Column():
                gr.Markdown("## Where the two differ")
                differences_text = gr.Markdown(label="Differences", elem_id="differences")
                differences_table = gr.Dataframe(
                    headers=DIFF_HEADERS,
                    label="Picked masks per prompt: IoU between the models",
                    interactive=False,
                    elem_id="differences-table",
                )
            with gr.Column():
                gr.Markdown(
                    "## Downloads\nLabel maps: 8-bit PNG, pixel = prompt index, 255 = no label. "
                    "`masks.zip`: per model and prompt, the picked proposal and the label's region. "
                    "`scores.json`: p, p_hat and p_out of every proposal."
                )
                downloads = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id="downloads")
        grids_state = gr.State(None, time_to_live=int(models.limits.output_max_age_s))  # paths into the request folder

        components = {
            "prompts": parsed,
            "differences_text": differences_text,
            "differences_table": differences_table,
            "downloads": downloads,
            "grids_state": grids_state,
        }
        for name in MODEL_NAMES:
            for part in ("overlay", "masks", "table", "grid", "timings"):
                components[f"{name}_{part}"] = columns[name][part]

        def compare(image, prompts, clip_weight, stage2_mode, mask_threshold, sort_by_score):
            """Segment the image with both models; returns the views in UI_OUTPUTS order."""
            return compare_for_ui(
                models, image, prompts, clip_weight, stage2_mode, mask_threshold, sort_by_score, output_root=output_root
            )

        def titles(stage2_mode):
            return [column_title(name, stage2_mode) for name in MODEL_NAMES]

        def show_prompts(text):
            return preview_prompts(models, text)

        inputs = [image, prompts, clip_weight, stage2_mode, mask_threshold, sort_by_score]
        outputs = [components[key] for key in UI_OUTPUTS]
        run.click(compare, inputs=inputs, outputs=outputs, api_name="compare").success(
            titles,
            inputs=stage2_mode,
            outputs=[columns[name]["title"] for name in MODEL_NAMES],
            api_visibility="private",
            show_progress="hidden",
        )
        prompts.change(
            show_prompts,
            inputs=prompts,
            outputs=parsed,
            api_visibility="private",
            trigger_mode="always_last",
            show_progress="hidden",
            concurrency_limit=4,
        )
        sort_by_score.change(
            pick_grids,
            inputs=[grids_state, sort_by_score],
            outputs=[columns["baseline"]["grid"], columns["pmp"]["grid"]],
            api_visibility="private",
            show_progress="hidden",
            concurrency_limit=4,
        )
    return demo


OUTPUT_PREFIX = "pmp-demo-"  # output folders are named pmp-demo-<pid>-<random>


def make_output_root(base: str | Path | None = None) -> Path:
    """A fresh folder for this instance's downloads, after removing those of instances that died
    without cleaning up (killed, or the machine restarted): their PID no longer runs."""
    base = Path(base or tempfile.gettempdir())
    for folder in base.glob(f"{OUTPUT_PREFIX}*"):
        pid = folder.name[len(OUTPUT_PREFIX) :].split("-", 1)[0]
        if folder.is_dir() and pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{OUTPUT_PREFIX}{os.getpid()}-", dir=base))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_on_exit(folder: Path) -> None:
    """Remove ``folder`` at a normal exit and on SIGTERM / SIGINT (``atexit`` alone does not run when a
    signal ends the process, which is how hosts stop a server)."""
    atexit.register(shutil.rmtree, folder, ignore_errors=True)

    def on_signal(signum: int, frame: Any) -> None:
        shutil.rmtree(folder, ignore_errors=True)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)  # end as the signal would have, with its exit status

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Gradio demo comparing the OVSeg-style baseline with PMP.")
    parser.add_argument(
        "--baseline",
        default=None,
        help="baseline checkpoint: bundled name, local folder or Hub id (default: bundled baseline)",
    )
    parser.add_argument(
        "--pmp", default=None, help="PMP checkpoint: bundled name, local folder or Hub id (default: bundled pmp)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for all interfaces)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--concurrency", type=int, default=1, help="comparisons run at once (each runs both models)")
    parser.add_argument(
        "--max-queue", type=int, default=DEFAULT_QUEUE_SIZE, help="waiting requests beyond this are refused"
    )
    return parser.parse_args(argv)


def launch(demo: gr.Blocks, *, host: str, port: int, concurrency: int, max_queue: int, block: bool = True) -> gr.Blocks:
    """Bounded queue, bounded uploads, no share link, no SSR (which needs Node), API docs kept."""
    demo.queue(default_concurrency_limit=concurrency, max_size=max_queue)
    demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        max_file_size=MAX_FILE_SIZE,
        ssr_mode=False,
        show_error=False,  # only our own gr.Error messages reach users
        prevent_thread_lock=not block,
        quiet=not block,
        footer_links=["api", "gradio"],
        app_kwargs={"middleware": [Middleware(RequestBodyLimit)]},
    )
    return demo


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    models = DemoModels.load(args.baseline, args.pmp, device=args.device)
    output_root = make_output_root()
    remove_on_exit(output_root)
    demo = build_app(models, output_root=output_root)
    launch(demo, host=args.host, port=args.port, concurrency=args.concurrency, max_queue=args.max_queue)


if __name__ == "__main__":
    main()
