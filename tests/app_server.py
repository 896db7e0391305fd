"""``python app.py`` in a subprocess on a free localhost port, serving tiny random-weight checkpoints:
what the end-to-end tests of the app start and drive through its public HTTP interface."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent
SERVER_START_TIMEOUT_S = 90


def tiny_config(text_mode: str):
    """A tiny random-weight segmenter whose CLIP is named as the world's (so the page offers the world's
    vocabulary and flags words outside it)."""
    from pmp.config import CLIPConfig, tiny_clip_model_cfg
    from tests.tiny import tiny_segmenter_config

    clip = CLIPConfig(model_name="tiny-clip", model_cfg=tiny_clip_model_cfg())
    return tiny_segmenter_config(text_mode, num_queries=10, clip=clip, image_size=128)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_bytes(pid: int) -> int:
    """Resident memory of a process: psutil when installed, else /proc/<pid>/status."""
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for process {pid}")


def tiny_checkpoints(folder: Path) -> dict[str, Path]:
    """Random-weight baseline and PMP checkpoints in ``folder`` (written once)."""
    from pmp.segmenter import Segmenter

    folders = {}
    for name, text_mode in (("baseline", "none"), ("pmp", "pmp")):
        folders[name] = folder / name
        if not (folders[name] / "config.json").is_file():
            Segmenter(tiny_config(text_mode)).save_pretrained(folders[name])
    return folders


@contextlib.contextmanager
def running_app(
    workdir: Path, *arguments: str, env: dict[str, str] | None = None, use_bundled: bool = False
) -> Iterator[SimpleNamespace]:
    """The app serving tiny checkpoints (the bundled ones with ``use_bundled``), its temp dir (TMPDIR)
    ``workdir/tmp``; terminated on exit.

    Yields url, process, pid, log (the server's output) and tmp (where its instance folder is made).
    """
    models = [] if use_bundled else [f"--{name}={folder}" for name, folder in tiny_checkpoints(workdir).items()]
    port = free_port()
    tmp = workdir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "server.log"
    environment = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                   "TMPDIR": str(tmp), "NO_PROXY": "127.0.0.1,localhost", **(env or {})}  # fmt: skip
    command = [sys.executable, "app.py", *models, "--port", str(port), "--device", "cpu", *arguments]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO, env=environment, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"app.py exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"app.py did not answer within {SERVER_START_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield SimpleNamespace(url=url, process=process, pid=process.pid, log=log_path, tmp=tmp)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def instance_folder(server: SimpleNamespace) -> Path:
    """The running app's own folder (its request folders and Gradio's cache)."""
    [folder] = [path for path in server.tmp.glob("pmp-demo-*") if path.is_dir()]
    return folder


def call(server: SimpleNamespace, api_name: str, data: list[Any], timeout: float = 120) -> tuple[str, Any]:
    """A named event called as a raw HTTP client would: POST /gradio_api/call/<name>, then read its event
    stream; returns ("complete", outputs) or ("error", the message, None when Gradio gave none)."""
    body = json.dumps({"data": data})  # json.dumps writes NaN as NaN, as a careless client would
    posted = httpx.post(
        f"{server.url}gradio_api/call/{api_name}",
        content=body,
        headers={"content-type": "application/json"},
        timeout=timeout,
    )
    if posted.status_code != 200:
        return "refused", posted.text
    event_id = posted.json()["event_id"]
    with httpx.stream("GET", f"{server.url}gradio_api/call/{api_name}/{event_id}", timeout=timeout) as stream:
        event = None
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                payload = json.loads(line.split(":", 1)[1])
                if event == "error":
                    return "error", (payload.get("error") if isinstance(payload, dict) else payload)
                return "complete", payload
    raise AssertionError(f"/{api_name}: the event stream ended without a result")


def upload(server: SimpleNamespace, *files: tuple[str, bytes]) -> httpx.Response:
    """POST /gradio_api/upload with ``files`` as (name, bytes)."""
    return httpx.post(
        f"{server.url}gradio_api/upload",
        files=[("files", (name, content, "application/octet-stream")) for name, content in files],
        timeout=60,
    )
