"""The server's bounds without a server: the disk budget on a folder, the upload guard on ASGI messages."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from demo.server import GRADIO_DIR, DiskBudget, IdleTrim, UploadGuard, client_key


def _entry(root: Path, name: str, size: int, age_s: float) -> Path:
    """A request folder (``request-*``) or a Gradio cache entry (``gradio/*``) holding ``size`` bytes,
    last modified ``age_s`` seconds ago."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "file.png").write_bytes(b"\0" * size)
    stamp = time.time() - age_s
    os.utime(folder, (stamp, stamp))
    return folder


def test_stale_entries_go_first_then_the_oldest_until_the_room_fits(tmp_path):
    budget = DiskBudget(tmp_path, max_bytes=1000, max_age_s=600, min_age_s=60)
    stale = _entry(tmp_path, "request-stale", 10, age_s=700)
    old = _entry(tmp_path, f"{GRADIO_DIR}/old", 400, age_s=300)
    middle = _entry(tmp_path, "request-middle", 400, age_s=200)
    new = _entry(tmp_path, f"{GRADIO_DIR}/new", 100, age_s=100)
    assert budget.used() == 910
    assert budget.make_room(0)
    assert not stale.exists() and budget.used() == 900  # older than max_age_s, whatever the room
    assert budget.make_room(500)  # 900 + 500 > 1000: the oldest (400) goes, then 500 + 500 fits
    assert not old.exists() and middle.exists() and new.exists()
    assert budget.used() == 500


def test_young_and_protected_entries_stay_and_the_room_is_then_refused(tmp_path):
    budget = DiskBudget(tmp_path, max_bytes=1000, max_age_s=600, min_age_s=60)
    example = _entry(tmp_path, f"{GRADIO_DIR}/example", 300, age_s=500)
    budget.protect_existing()
    young = _entry(tmp_path, "request-young", 600, age_s=10)
    assert not budget.make_room(200)  # 900 used; the only candidates are protected or younger than min_age_s
    assert example.exists() and young.exists()
    assert budget.make_room(100)


def _run_guard(guard: UploadGuard, headers: dict[bytes, bytes], body: bytes = b"", client=("10.0.0.1", 5)):
    """Call ``guard`` with one upload request; returns (status, what the app behind it received or None)."""
    seen: dict = {}

    async def app(scope, receive, send):
        seen["body"] = (await receive())["body"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"[]"})

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    guard.app = app
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/gradio_api/upload", "headers": list(headers.items())}
    scope["client"] = client
    asyncio.run(guard(scope, receive, send))
    return sent[0]["status"], seen.get("body")


def _multipart(count: int) -> tuple[dict[bytes, bytes], bytes]:
    parts = b"".join(
        b'--XyZ\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\nPNG\r\n' for _ in range(count)
    )
    body = parts + b"--XyZ--\r\n"
    headers = {b"content-type": b"multipart/form-data; boundary=XyZ", b"content-length": str(len(body)).encode()}
    return headers, body


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"max_files": 2}, 200),
        ({"max_files": 1}, 413),  # two files
        ({"max_concurrent": 0}, 503),
        ({"client_bytes": 10}, 429),
        ({"budget_bytes": 10}, 507),
    ],
)
def test_the_upload_guard_refuses_before_the_app_reads_anything(tmp_path, change, status):
    headers, body = _multipart(2)
    budget = DiskBudget(tmp_path, max_bytes=change.pop("budget_bytes", 10**6))
    answer, received = _run_guard(UploadGuard(None, budget, **change), headers, body)
    assert answer == status
    assert received == (body if status == 200 else None)


def test_an_upload_must_declare_its_size_and_be_multipart(tmp_path):
    headers, body = _multipart(1)
    assert _run_guard(UploadGuard(None), {b"content-type": headers[b"content-type"]}, body)[0] == 411
    assert _run_guard(UploadGuard(None), {**headers, b"content-type": b"application/json"}, body)[0] == 400


def test_the_quota_is_per_client_and_per_window(tmp_path, monkeypatch):
    headers, body = _multipart(1)
    guard = UploadGuard(None, client_bytes=2 * len(body), window_s=60)
    assert [_run_guard(guard, headers, body)[0] for _ in range(3)] == [200, 200, 429]
    assert _run_guard(guard, headers, body, client=("10.0.0.2", 5))[0] == 200  # another client
    later = time.monotonic() + 61
    monkeypatch.setattr(time, "monotonic", lambda: later)
    assert _run_guard(guard, headers, body)[0] == 200  # the window has passed


def test_the_client_is_the_address_the_nearest_proxy_saw():
    scope = {"headers": [(b"x-forwarded-for", b"6.6.6.6, 1.2.3.4")], "client": ("10.0.0.9", 1)}
    assert client_key(scope) == "1.2.3.4"  # the first entry is whatever the client wrote
    assert client_key({"headers": [], "client": ("10.0.0.9", 1)}) == "10.0.0.9"


def test_freed_memory_is_returned_once_requests_stop_and_not_during_them():
    trims: list[float] = []
    idle = IdleTrim(idle_s=0.2, trim=lambda: trims.append(time.monotonic()))
    with idle.request():
        with idle.request():  # two at once
            pass
        time.sleep(0.4)
        assert trims == []  # one request still runs
    finished = time.monotonic()
    with idle.request():  # a new request within the idle time cancels the pending trim
        pass
    time.sleep(0.1)
    assert trims == []
    time.sleep(0.4)
    assert len(trims) == 1 and trims[0] - finished >= 0.2
