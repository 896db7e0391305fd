"""The demo's resident memory under heavy valid requests, and after it goes idle, with and without the idle trim.

    python -m benchmarks.app_memory                       # bundled models; writes results/app_memory.json
    python -m benchmarks.app_memory --requests 6 --out /tmp/memory.json

Each setting starts ``python app.py`` (bundled checkpoints, CPU) in a subprocess, sends one ``/compare``
of the largest request the page accepts (a 1024 x 1024 photo, the most prompts a request may carry,
OVSeg's crop stage 2; its disk writes are measured), then ``--requests`` such requests under both prompt
sets (``/prompt_change``), one after another through the named API, and reads the server's RSS after
start, after each request, and ``--idle-trim-s`` + 5 s after the last one. The two settings run one
after the other on the same machine: the app as shipped (freed memory returned after ``--idle-trim-s``
idle seconds; ``demo.server.IdleTrim``) and ``--idle-trim-s 0`` (never returned).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from demo.comparison import DemoLimits
from demo.server import folder_bytes
from tests.app_server import REPO, instance_folder, rss_bytes, running_app
from train.world.demo import vocabulary

MIB = 2**20


def heavy_image(folder: Path) -> Path:
    """A 1024 x 1024 photo-like picture (smooth regions and noise), the largest side a request keeps."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    pixels = np.asarray(Image.fromarray(coarse).resize((1024, 1024), Image.BICUBIC)).astype(np.int16)
    pixels += rng.integers(-20, 20, pixels.shape, dtype=np.int16)
    path = folder / "heavy.png"
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    return path


def prompt_sets() -> tuple[str, str]:
    """Two sets of the most prompts a request may carry, from the bundled models' vocabulary."""

    names = [name for entries in vocabulary().values() for name, _ in entries]
    count = DemoLimits().max_prompts
    return ", ".join(names[:count]), ", ".join(names[count : 2 * count] or names[:count][::-1])


def measure(idle_trim_s: float, requests: int, workdir: Path) -> dict:
    from gradio_client import Client, handle_file

    image = heavy_image(workdir)
    first, second = prompt_sets()
    with running_app(workdir, "--idle-trim-s", str(idle_trim_s), use_bundled=True) as server:
        client = Client(server.url, verbose=False, download_files=False)
        rss = {"after_start_mib": rss_bytes(server.pid) / MIB, "after_each_request_mib": []}
        folder = instance_folder(server)
        before = folder_bytes(folder)
        client.predict(handle_file(str(image)), first, 0.65, "crop", 0.5, True, None, api_name="/compare")
        time.sleep(1.0)  # Gradio copies the outputs into its cache as it sends them
        rss["largest_compare_writes_mib"] = (folder_bytes(folder) - before) / MIB
        seconds = []
        for _ in range(requests):
            started = time.perf_counter()
            client.predict(handle_file(str(image)), first, second, 0.65, "crop", 0.5, None, api_name="/prompt_change")
            seconds.append(time.perf_counter() - started)
            rss["after_each_request_mib"].append(rss_bytes(server.pid) / MIB)
        wait = (idle_trim_s if idle_trim_s > 0 else 20.0) + 5.0
        time.sleep(wait)
        rss["after_idle_mib"] = rss_bytes(server.pid) / MIB
        rss["idle_wait_s"] = wait
        rss["seconds_per_request"] = float(np.median(seconds))
    return rss


def memory_table(results: dict) -> str:
    """The Markdown table of docs/demo.md (tested against results/app_memory.json)."""
    lines = [
        f"| setting | after start | highest after a request ({results['requests']} requests) | after the idle wait "
        "| the largest /compare wrote | seconds a request |",
        "|---|---|---|---|---|---|",
    ]
    names = {"idle_trim": "idle trim (the app)", "no_trim": "no trim (`--idle-trim-s 0`)"}
    for key, name in names.items():
        row = results["settings"][key]
        lines.append(
            f"| {name} | {row['after_start_mib']:.0f} MiB | {max(row['after_each_request_mib']):.0f} MiB | "
            f"{row['after_idle_mib']:.0f} MiB ({row['idle_wait_s']:.0f} s) | "
            f"{row['largest_compare_writes_mib']:.1f} MiB | {row['seconds_per_request']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.app_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--idle-trim-s", type=float, default=10.0, help="the idle trim measured (the app: 20 s)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "app_memory.json")
    args = parser.parse_args(argv)
    results = {"machine": platform.processor() or platform.machine(), "requests": args.requests, "settings": {}}
    for name, idle in (("idle_trim", args.idle_trim_s), ("no_trim", 0.0)):
        with tempfile.TemporaryDirectory() as folder:
            results["settings"][name] = measure(idle, args.requests, Path(folder))
            measured = results["settings"][name]
            print(
                f"{name:9s}: start {measured['after_start_mib']:.0f} MiB, peak "
                f"{max(measured['after_each_request_mib']):.0f} MiB, after {measured['idle_wait_s']:.0f} s idle "
                f"{measured['after_idle_mib']:.0f} MiB ({measured['seconds_per_request']:.2f} s a request); the "
                f"largest /compare wrote {measured['largest_compare_writes_mib']:.1f} MiB"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(memory_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
