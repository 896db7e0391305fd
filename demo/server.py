"""What a client may make the server hold: request bodies, uploads, disk, and what is left at exit.

Every Gradio event and Gradio's own ``/gradio_api/upload`` route are public HTTP APIs, so the app
bounds them itself instead of trusting the page:

- :class:`RequestBodyLimit`: a request body over its limit is refused before it is read.
- :class:`UploadGuard`: uploads carry a declared size, hold at most :data:`MAX_FILES_PER_UPLOAD` files,
  run at most :data:`MAX_CONCURRENT_UPLOADS` at once, stay within each client's quota per window, and
  are refused when the disk budget has no room for them.
- :class:`DiskBudget`: everything the instance writes (its request folders and Gradio's cache, uploads
  included) lives under one folder whose size is kept under a budget by age and then oldest first.
- :class:`IdleTrim`: memory kept for the next request is returned to the system once the app is idle.
- :func:`instance_folders` / :func:`remove_on_exit`: that folder is the instance's own, removed on a
  normal exit, on SIGTERM / SIGINT, and, when an instance was killed, by the next one to start.

The worst case on disk, whatever clients send, is stated (and derived) in ``docs/demo.md``.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pmp.allocator import trim_freed_memory

MAX_UPLOAD_BODY_BYTES = 26 * 1024 * 1024  # an upload request: the app's 25 MB file limit plus multipart framing
# Every other request is a small JSON event; an image sent inline as a data URL must fit in it too.
MAX_API_BODY_BYTES = 2 * 1024 * 1024
MAX_FILES_PER_UPLOAD = 2  # the page uploads one image at a time
MAX_CONCURRENT_UPLOADS = 8
CLIENT_UPLOAD_BYTES = 128 * 1024 * 1024  # one client's uploads per window...
CLIENT_UPLOAD_WINDOW_S = 600.0  # ...of ten minutes
DISK_BUDGET_BYTES = 1024 * 1024 * 1024  # request folders + Gradio's cache (uploads, cached outputs)
MAX_REQUEST_BYTES = 128 * 1024 * 1024  # room a request needs: its folder (at most ~50 MB) and Gradio's copy of it
OUTPUT_MAX_AGE_S = 1800.0  # anything older is removed at the next request or upload
MIN_AGE_S = 120.0  # never removed younger than this to make room: a client may still be fetching it
IDLE_TRIM_S = 20.0  # freed memory goes back to the system after this long without a request
GRADIO_DIR = "gradio"  # Gradio's cache (GRADIO_TEMP_DIR) inside the instance folder
INSTANCE_PREFIX = "pmp-demo-"  # instance folders are named pmp-demo-<pid>-<random>


@dataclass
class DiskBudget:
    """Keeps the instance folder ``root`` under ``max_bytes``.

    Its entries are the request folders (``root/request-*``) and the entries of Gradio's cache
    (``root/gradio/*``: one folder per upload or cached output). :meth:`make_room` removes every entry
    older than ``max_age_s``, then the oldest entries older than ``min_age_s`` until the room asked for
    fits; entries present when :meth:`protect_existing` was called (the examples Gradio cached while the
    page was built) are never removed. Thread-safe: handlers run in worker threads.
    """

    root: Path
    max_bytes: int = DISK_BUDGET_BYTES
    max_age_s: float = OUTPUT_MAX_AGE_S
    min_age_s: float = MIN_AGE_S
    protected: set[Path] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def entries(self) -> list[Path]:
        cache = self.root / GRADIO_DIR
        found = list(self.root.glob("request-*"))
        if cache.is_dir():
            found += list(cache.iterdir())
        return [entry for entry in found if entry not in self.protected]

    def protect_existing(self) -> None:
        self.protected = set(self.entries())

    def used(self) -> int:
        return folder_bytes(self.root)

    def make_room(self, needed: int) -> bool:
        """Remove what is stale, then the oldest entries, until ``needed`` more bytes fit; whether they do."""
        with self._lock:
            now = time.time()
            aged: list[tuple[float, Path]] = []
            for entry in self.entries():
                try:
                    mtime = entry.stat().st_mtime
                except OSError:  # removed meanwhile
                    continue
                if now - mtime > self.max_age_s:
                    _remove(entry)
                else:
                    aged.append((mtime, entry))
            used = self.used()
            for mtime, entry in sorted(aged):
                if used + needed <= self.max_bytes or now - mtime < self.min_age_s:
                    break
                used -= folder_bytes(entry)
                _remove(entry)
            return used + needed <= self.max_bytes


def folder_bytes(path: Path) -> int:
    """Bytes under ``path`` (a file or a folder); what vanishes while counting counts as 0."""
    try:
        if not path.is_dir():
            return path.stat().st_size
    except OSError:
        return 0
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(folder, name)).st_size
            except OSError:
                continue
    return total


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class IdleTrim:
    """Return freed memory to the system once no request has run for ``idle_s`` seconds.

    :func:`pmp.allocator.retain_freed_memory` keeps freed blocks for the next request (stage 2 about
    1.25x faster), and each worker thread's allocator arena keeps its own; without a trim the process
    would keep the high-water mark of its heaviest burst for good. Under load nothing changes; after a
    burst, ``trim`` (glibc's ``malloc_trim``) runs once the app has been idle. Wrap each request in
    :meth:`request`.
    """

    def __init__(self, idle_s: float = IDLE_TRIM_S, trim: Callable[[], object] = trim_freed_memory) -> None:
        self.idle_s = idle_s
        self.trim = trim
        self.active = 0
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    @contextmanager
    def request(self) -> Iterator[None]:
        with self._lock:
            self.active += 1
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        try:
            yield
        finally:
            with self._lock:
                self.active -= 1
                if self.active == 0:
                    self._timer = threading.Timer(self.idle_s, self._trim_if_idle)
                    self._timer.daemon = True
                    self._timer.start()

    def _trim_if_idle(self) -> None:
        with self._lock:
            if self.active:
                return
            self._timer = None
        self.trim()


# --------------------------------------------------------------------------- the instance folder
def instance_folders(base: str | Path | None = None) -> Path:
    """A fresh instance folder under ``base`` (default: GRADIO_TEMP_DIR, else the system temp dir), after
    removing those of instances that died without cleaning up (killed, or the machine restarted: their
    PID no longer runs). Gradio's cache is pointed inside it (GRADIO_TEMP_DIR), before any component
    exists, so that uploads and cached outputs are removed with it."""
    base = Path(base or os.environ.get("GRADIO_TEMP_DIR") or tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    for folder in base.glob(f"{INSTANCE_PREFIX}*"):
        pid = folder.name[len(INSTANCE_PREFIX) :].split("-", 1)[0]
        if folder.is_dir() and pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
    root = Path(tempfile.mkdtemp(prefix=f"{INSTANCE_PREFIX}{os.getpid()}-", dir=base))
    (root / GRADIO_DIR).mkdir()
    os.environ["GRADIO_TEMP_DIR"] = str(root / GRADIO_DIR)
    return root


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_on_exit(folder: Path) -> None:
    """Remove ``folder`` at a normal exit and on SIGTERM / SIGINT, then end as the signal would have.

    ``atexit`` alone does not run when a signal ends the process, which is how hosts stop a server;
    Gradio's own clean-up does not run either once the signal is re-raised, which is why Gradio's cache
    lives inside ``folder`` (:func:`instance_folders`).
    """

    def remove() -> None:
        shutil.rmtree(folder, ignore_errors=True)
        # Gradio makes one empty folder at start in the temp dir it read when imported, before
        # instance_folders could point it elsewhere: removed when still empty (rmdir removes nothing else).
        from gradio.route_utils import DEFAULT_TEMP_DIR

        for empty in (Path(DEFAULT_TEMP_DIR) / "vibe_edit_history", Path(DEFAULT_TEMP_DIR)):
            try:
                empty.rmdir()
            except OSError:  # not empty (another app's files), or not there
                pass

    atexit.register(remove)

    def on_signal(signum: int, frame: Any) -> None:
        remove()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)  # end as the signal would have, with its exit status

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)


# --------------------------------------------------------------------------- ASGI middleware
async def _answer(send: Any, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def is_upload(scope: dict) -> bool:
    return scope["type"] == "http" and scope["path"].rstrip("/").endswith("/upload")


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
        limit = self.upload_limit if is_upload(scope) else self.api_limit
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

        try:
            await self.app(scope, counted_receive, tracked_send)
        except Exception:
            if not refused:
                raise  # after a refusal the app fails on the cut-off body; the client has its answer

    @staticmethod
    async def _refuse(send: Any, limit: int) -> None:
        await _answer(
            send,
            413,
            f"request body too large: at most {limit:,} bytes are accepted here; "
            "send images as file uploads (gradio_client's handle_file does)",
        )


def client_key(scope: dict) -> str:
    """Whom an upload counts against: the address the nearest proxy saw (the last X-Forwarded-For
    entry; a Space's proxy appends it, so a client cannot choose it), else the socket's peer."""
    forwarded = dict(scope.get("headers", [])).get(b"x-forwarded-for", b"").decode("latin-1")
    if forwarded.strip():
        return forwarded.split(",")[-1].strip()
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class UploadGuard:
    """ASGI middleware for ``/gradio_api/upload``: a declared size, few files, few at once, a quota per
    client and room on disk, each refused with a status and a message before the app reads the body
    (which is read here in full first, at most :data:`MAX_UPLOAD_BODY_BYTES` for each of at most
    ``max_concurrent`` uploads, so that an upload refused for its file count writes nothing)."""

    def __init__(
        self,
        app: Any,
        budget: DiskBudget | None = None,
        *,
        max_files: int = MAX_FILES_PER_UPLOAD,
        max_concurrent: int = MAX_CONCURRENT_UPLOADS,
        client_bytes: int = CLIENT_UPLOAD_BYTES,
        window_s: float = CLIENT_UPLOAD_WINDOW_S,
    ) -> None:
        self.app = app
        self.budget = budget
        self.max_files = max_files
        self.max_concurrent = max_concurrent
        self.client_bytes = client_bytes
        self.window_s = window_s
        self.active = 0
        self.sent: dict[str, deque[tuple[float, int]]] = {}

    def _quota_left(self, client: str, now: float) -> int:
        history = self.sent.setdefault(client, deque())
        while history and now - history[0][0] > self.window_s:
            history.popleft()
        if not history:
            del self.sent[client]  # the table holds only clients seen within the window
        return self.client_bytes - sum(size for _, size in history)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if not is_upload(scope) or scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers", []))
        declared = headers.get(b"content-length", b"")
        if not declared.isdigit():
            return await _answer(send, 411, "an upload must declare its size (Content-Length)")
        boundary = _boundary(headers.get(b"content-type", b""))
        if boundary is None:
            return await _answer(send, 400, "an upload must be multipart/form-data")
        size = int(declared)
        client, now = client_key(scope), time.monotonic()
        if size > self._quota_left(client, now):
            minutes = self.window_s / 60
            return await _answer(
                send,
                429,
                f"too many uploads: at most {self.client_bytes:,} bytes per client every {minutes:.0f} minutes",
            )
        if self.active >= self.max_concurrent:
            return await _answer(send, 503, "the server is receiving too many uploads at once; try again shortly")
        if self.budget is not None and not self.budget.make_room(size):
            return await _answer(send, 507, "the server's upload space is full; try again in a few minutes")
        self.sent.setdefault(client, deque()).append((now, size))
        self.active += 1
        try:
            body = await _whole_body(receive)  # at most MAX_UPLOAD_BODY_BYTES: RequestBodyLimit runs first
            if body is None:
                return  # the client went away (or RequestBodyLimit refused the body and answered)
            parts = body.count(b"--" + boundary) - 1  # n parts are framed by n + 1 delimiters
            if parts > self.max_files:
                return await _answer(send, 413, f"at most {self.max_files} files per upload request, got {parts}")
            await self.app(scope, _replay(body, receive), send)
        finally:
            self.active -= 1


async def _whole_body(receive: Any) -> bytes | None:
    """The request body, read in full before the app sees any of it (so that a refused upload writes
    nothing), or None when the client disconnects first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Any) -> Any:
    """``receive`` for the app: the body read by :func:`_whole_body`, then the client's later messages."""
    sent = False

    async def replayed() -> dict:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


def _boundary(content_type: bytes) -> bytes | None:
    kind, _, params = content_type.partition(b";")
    if kind.strip().lower() != b"multipart/form-data":
        return None
    for param in params.split(b";"):
        key, _, value = param.strip().partition(b"=")
        if key.lower() == b"boundary" and value:
            return value.strip(b'"')
    return None
