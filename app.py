"""Gradio demo: the OVSeg-style baseline and PMP side by side on one image and one prompt list.

    python app.py                                  # the bundled baseline and pmp
    python app.py --baseline user/ovseg --pmp ./my-pmp --host 0.0.0.0 --port 7860

The Space's entry point: it loads both models, builds the page (:mod:`demo.layout`) and serves it with the
server's limits (:mod:`demo.server`). The comparison itself is in :mod:`demo.comparison`, which does not know
Gradio; it is also an HTTP API named ``/compare`` (docs/demo.md): every input is checked in the handler.
"""

from __future__ import annotations

import os

# Before gradio is imported: no telemetry, no version check, nothing leaves the machine.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Before torch is imported: idle OpenMP threads sleep instead of spinning, so concurrent requests
# (or other processes) on a small CPU do not starve each other (measured: 2.8 s instead of 30 ms).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import logging  # noqa: E402

import gradio as gr  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

from demo.comparison import DemoModels  # noqa: E402
from demo.handlers import clip_weight_pair  # noqa: E402
from demo.layout import CSS, build_app  # noqa: E402
from demo.server import (  # noqa: E402
    IDLE_TRIM_S,
    DiskBudget,
    IdleTrim,
    RequestBodyLimit,
    UploadGuard,
    instance_folders,
    remove_on_exit,
)
from pmp.allocator import retain_freed_memory  # noqa: E402
from pmp.config import AUTOCAST_NAMES  # noqa: E402

MAX_FILE_SIZE = "25mb"  # uploads above this are refused by Gradio before they reach the handler
DEFAULT_QUEUE_SIZE = 16


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
    parser.add_argument(
        "--autocast",
        choices=AUTOCAST_NAMES,
        default="none",
        help="run both models under torch.autocast (bfloat16: about 1.2x faster on CPUs with AVX-512 BF16)",
    )
    parser.add_argument(
        "--clip-weights",
        type=clip_weight_pair,
        default=None,
        metavar="W:U",
        help="Eq. 3 with FC-CLIP's two weights: W for prompts among the models' training names (the slider opens "
        "at it), U for the others, e.g. 0.4:0.9 (default: one weight, the paper's Eq. 3)",
    )
    parser.add_argument(
        "--idle-trim-s",
        type=float,
        default=IDLE_TRIM_S,
        help="return freed memory to the system after this many seconds without a request (0: never; "
        "docs/demo.md, Memory)",
    )
    return parser.parse_args(argv)


def launch(
    demo: gr.Blocks,
    *,
    host: str,
    port: int,
    concurrency: int,
    max_queue: int,
    block: bool = True,
    budget: DiskBudget | None = None,
) -> gr.Blocks:
    """Bounded queue, bounded request bodies and uploads, no share link, no SSR (which needs Node), API docs
    kept. Uploads are refused when ``budget`` has no room for them."""
    demo.queue(default_concurrency_limit=concurrency, max_size=max_queue)
    demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        max_file_size=MAX_FILE_SIZE,
        ssr_mode=False,
        css=CSS,
        show_error=False,  # only our own gr.Error messages reach users
        prevent_thread_lock=not block,
        quiet=not block,
        footer_links=["api", "gradio"],
        app_kwargs={"middleware": [Middleware(RequestBodyLimit), Middleware(UploadGuard, budget=budget)]},
    )
    return demo


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    retain_freed_memory()  # stage 2's crop tower reuses its activations' memory (pmp.allocator)
    try:
        models = DemoModels.load(
            args.baseline, args.pmp, device=args.device, autocast=args.autocast, clip_weights=args.clip_weights
        )
    except ValueError as error:  # e.g. --clip-weights for a model whose config lists no training names
        raise SystemExit(f"app.py: error: {error}") from None
    output_root = instance_folders()  # also Gradio's cache, so that every file of the instance is in it
    remove_on_exit(output_root)
    budget = DiskBudget(output_root)
    idle_trim = IdleTrim(args.idle_trim_s) if args.idle_trim_s > 0 else None
    demo = build_app(models, output_root=output_root, budget=budget, idle_trim=idle_trim)
    budget.protect_existing()  # the examples Gradio cached while the page was built
    launch(demo, host=args.host, port=args.port, concurrency=args.concurrency, max_queue=args.max_queue, budget=budget)


if __name__ == "__main__":
    main()
