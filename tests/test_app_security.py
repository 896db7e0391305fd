"""The app as an attacker or a careless client meets it: raw HTTP against ``python app.py`` in a subprocess.

Each test sends what a browser never would (a server path as an image, bad seeds, a call with missing
inputs, many files in one upload, uploads over a client's quota) and checks the answer and what the
app left on disk.
"""

from __future__ import annotations

import base64
import io
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from demo.inputs import NOT_UPLOADED
from demo.server import CLIENT_UPLOAD_BYTES, GRADIO_DIR, MAX_FILES_PER_UPLOAD
from tests.app_server import REPO, call, instance_folder, running_app, upload

pytestmark = pytest.mark.slow
SETTINGS = [0.65, "pool", 0.5, True]  # CLIP weight, stage 2, mask threshold, sort by score


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("app_security")) as running:
        yield running


def _png_bytes(size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _files(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()}


@pytest.fixture(scope="module")
def uploaded(server) -> str:
    answer = upload(server, ("street.png", _png_bytes()))
    assert answer.status_code == 200, answer.text
    return answer.json()[0]


# ------------------------------------------------------------------ the image input reads only uploads


@pytest.mark.parametrize("api_name", ["compare", "prompt_change"])
def test_a_server_path_is_refused_alike_whatever_it_names(server, api_name):
    """The repository's own picture, a missing file, a folder, an unreadable file, a path that climbs out
    of the upload cache: one message for all, which says what is accepted and nothing about the path."""
    cache = instance_folder(server) / GRADIO_DIR
    paths = [REPO / "docs" / "world.png", "/nonexistent/x.png", "/etc", "/etc/shadow", cache / ".." / ".." / "x.png"]
    for path in paths:
        for payload in ({"path": str(path)}, {"path": str(path), "meta": {"_type": "gradio.FileData"}}):
            data = {
                "compare": [payload, "sky", *SETTINGS, None],
                "prompt_change": [payload, "sky", "sky, car", *SETTINGS[:3], None],
            }[api_name]
            status, message = call(server, api_name, data)
            assert (status, message) == ("error", NOT_UPLOADED), (path, payload)


def test_a_file_this_app_received_is_accepted(server, uploaded):
    status, outputs = call(server, "compare", [{"path": uploaded}, "sky, car", *SETTINGS, None])
    assert status == "complete" and "**2 prompt(s):**" in outputs[0]


def test_an_uploaded_file_that_is_not_an_image_is_refused_and_removed(server):
    [path] = upload(server, ("notes.png", b"plain text, not a picture")).json()
    assert Path(path).is_file()
    status, message = call(server, "compare", [{"path": path}, "sky", *SETTINGS, None])
    assert status == "error" and message.startswith("the uploaded file could not be read as an image;")
    assert "Error" not in message  # no exception type named
    assert not Path(path).exists()


# ------------------------------------------------------------------ every refusal says why


@pytest.mark.parametrize("seed", ["abc", float("nan"), [1], "٥", 1.5, True, -1])
def test_bad_seeds_are_refused_with_a_message(server, uploaded, seed):
    status, message = call(server, "compare", [{"path": uploaded}, "sky", *SETTINGS, seed])
    assert status == "error" and message.startswith("the scene seed must be a whole number from 0 to 999,999,999")
    status, message = call(server, "render_scene", [seed])
    assert status == "error" and message.startswith("the scene seed must be a whole number")


def test_a_whole_seed_sent_as_text_or_float_is_that_scene(server):
    status, outputs = call(server, "render_scene", ["12"])
    assert status == "complete" and outputs[2] == 12
    status, outputs = call(server, "render_scene", [12.0])
    assert status == "complete" and outputs[2] == 12


@pytest.mark.parametrize(
    ("position", "value", "start"),
    [
        (2, "abc", "CLIP weight must be a number between 0.0 and 1.0"),
        (2, True, "CLIP weight must be a number between 0.0 and 1.0"),
        (4, [0.5], "mask threshold must be a number"),
        (3, "both", "stage-2 mode must be one of pool, crop"),
        (5, "no", "sort by score must be true or false"),
    ],
)
def test_bad_settings_are_refused_with_a_message(server, uploaded, position, value, start):
    data = [{"path": uploaded}, "sky", *SETTINGS, None]
    data[position] = value
    status, message = call(server, "compare", data)
    assert status == "error" and message.startswith(start), message


def test_a_call_with_missing_inputs_is_told_what_the_event_takes(server, uploaded):
    status, message = call(server, "compare", [{"path": uploaded}, "sky", 0.65])
    assert status == "error"
    assert message.startswith("/compare takes 7 inputs, in this order: Image, Prompts (the first set), CLIP weight")
    assert message.endswith("; got 3")


# ------------------------------------------------------------------ what a client can write


def test_inline_images_are_never_written_and_a_refused_request_leaves_nothing(server):
    folder = instance_folder(server)
    inline = {"url": "data:image/png;base64," + base64.b64encode(_png_bytes()).decode()}
    before = _files(folder)
    for _ in range(5):
        assert call(server, "compare", [inline, "", *SETTINGS, None])[0] == "error"  # no prompts
        assert call(server, "compare", [inline, "sky", *SETTINGS, 10**12])[0] == "error"  # a bad seed, checked late
    assert _files(folder) == before
    status, _ = call(server, "compare", [inline, "sky", *SETTINGS, None])
    assert status == "complete"
    assert not [name for name in _files(folder) - before if "inline" in name or name.endswith(".img")]


def test_an_upload_of_many_files_is_refused_and_writes_nothing(server):
    folder = instance_folder(server)
    before = _files(folder)
    answer = upload(server, *[(f"{k}.png", _png_bytes()) for k in range(MAX_FILES_PER_UPLOAD + 1)])
    assert answer.status_code == 413
    assert answer.json()["error"] == f"at most {MAX_FILES_PER_UPLOAD} files per upload request, got 3"
    assert _files(folder) == before


def test_sigterm_removes_every_file_of_the_instance_uploads_included(tmp_path):
    """A host stops the server with SIGTERM: the request folders, Gradio's cache and the users' uploads
    go with it, and a folder left by an instance that died anyway is removed by the next one."""
    stale = tmp_path / "tmp" / "pmp-demo-999999999-dead"  # no such PID
    stale.mkdir(parents=True)
    (stale / "labels.png").write_bytes(b"old")
    with running_app(tmp_path) as server:
        assert not stale.exists()
        [path] = upload(server, ("street.png", _png_bytes())).json()
        assert call(server, "compare", [{"path": path}, "sky", *SETTINGS, None])[0] == "complete"
        folder = instance_folder(server)
        assert Path(path).is_relative_to(folder) and any(folder.glob("request-*/*.png"))
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=20)
        assert server.process.returncode == -signal.SIGTERM
        assert not folder.exists()
        assert not list((tmp_path / "tmp").iterdir())


def test_one_client_cannot_upload_more_than_its_quota(tmp_path):
    """Uploads count against the client's address per window: 25 MB files until the quota is spent."""
    size = 24_000_000  # under the app's 25 MB file limit
    allowed = CLIENT_UPLOAD_BYTES // (size + 1024)  # the multipart framing adds a few hundred bytes
    with running_app(tmp_path) as server:
        for _ in range(allowed):
            assert upload(server, ("big.bin", b"\0" * size)).status_code == 200
        refused = upload(server, ("big.bin", b"\0" * size))
        assert refused.status_code == 429 and "bytes per client every 10 minutes" in refused.json()["error"]
        other = upload(server, ("small.png", _png_bytes()))  # the same client: small files fit what is left
        assert other.status_code == 200
