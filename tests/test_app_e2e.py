"""End to end: ``python app.py`` in a subprocess with tiny random-weight checkpoints, driven through
its public API (gradio_client, localhost only), under load, and in headless Chromium.

The browser test needs Debian's chromium and the ``playwright`` Python package (``apt-get install -y
chromium``; ``pip install playwright``; ``playwright install`` is not needed: the system browser is
used); it is skipped, saying so, when either is missing.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.app_server import REPO, rss_bytes, running_app

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
PROMPTS = "sky, house, red car"
MAX_QUEUE = 6  # small, so that the load test also meets the queue's "full" answer


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("app_e2e")


@pytest.fixture(scope="module")
def sample_image(workdir) -> Path:
    """An example image from examples/ when there is one, else a small synthetic street scene."""
    examples = sorted(
        p for p in (REPO / "examples").glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")
    )
    if examples:
        return examples[0]
    pixels = np.zeros((120, 160, 3), np.uint8)
    pixels[:50] = (120, 170, 230)  # sky
    pixels[50:] = (90, 90, 90)  # road
    pixels[30:80, 20:70] = (180, 80, 60)  # house
    pixels[85:105, 90:140] = (220, 20, 30)  # red car
    path = workdir / "street.png"
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def server(workdir):
    """The app on a free localhost port, serving tiny random-weight baseline and PMP checkpoints."""
    with running_app(workdir, "--max-queue", str(MAX_QUEUE), "--concurrency", "1") as running:
        running.downloads = workdir / "client"
        yield running


def _client(server, download: bool = True):
    from gradio_client import Client

    return Client(server.url, verbose=False, download_files=str(server.downloads) if download else False)


def _compare(client, image: Path, prompts: str = PROMPTS, clip_weight=0.65, stage2_mode="pool", mask_threshold=0.5):
    from gradio_client import handle_file

    return client.predict(
        handle_file(str(image)), prompts, clip_weight, stage2_mode, mask_threshold, True, api_name="/compare"
    )


# ---------------------------------------------------------------- the API


def test_api_lists_the_three_named_endpoints(server):
    info = _client(server).view_api(return_format="dict", print_info=False)
    endpoints = info["named_endpoints"]
    assert sorted(endpoints) == ["/compare", "/prompt_change", "/render_scene"]

    def names(endpoint: str) -> list[str]:
        return [parameter["parameter_name"] for parameter in endpoints[endpoint]["parameters"]]

    settings = ["clip_weight", "stage2_mode", "mask_threshold"]
    assert names("/compare") == ["image", "prompts", *settings, "sort_by_score", "scene_seed"]
    assert names("/prompt_change") == ["image", "prompts", "second_prompts", *settings, "scene_seed"]
    assert names("/render_scene") == ["scene_seed"]


def test_api_renders_a_scene_and_scores_both_models_on_it(server):
    from gradio_client import handle_file

    from demo.handlers import CHANGE_OUTPUTS, UI_OUTPUTS

    client = _client(server)
    image, prompts, seed, note, second = client.predict(12, api_name="/render_scene")
    assert seed == 12 and "World scene **12**" in note and prompts
    values = client.predict(handle_file(image), prompts, 0.65, "pool", 0.5, True, seed, api_name="/compare")
    named = dict(zip([key for key in UI_OUTPUTS if key != "grids_state"], values))
    assert "Ground truth of world scene 12" in named["truth_note"] and Path(named["truth"]).is_file()
    assert "mIoU" in named["baseline_title"] and "recall" in named["pmp_title"]
    change = dict(zip(CHANGE_OUTPUTS, client.predict(
        handle_file(image), prompts, "car, wheel", 0.65, "pool", 0.5, seed, api_name="/prompt_change"
    )))  # fmt: skip
    assert "did **not move**" in change["baseline_change_title"]
    assert "mIoU on this image" in change["pmp_change_title"]
    assert Path(change["truth_set2"]).is_file()
    with pytest.raises(Exception, match="the scene seed must be a whole number from 0 to 999,999,999, got -3"):
        client.predict(-3, api_name="/render_scene")


def test_api_compare_still_takes_its_earlier_six_inputs(server, sample_image):
    """Clients written before the scene seed existed send six inputs: the seed defaults to none."""
    from demo.handlers import UI_OUTPUTS

    values = _compare(_client(server), sample_image)
    named = dict(zip([key for key in UI_OUTPUTS if key != "grids_state"], values))
    assert "No ground truth for your own image" in named["truth_note"] and named["truth"] is None


def test_api_compare_returns_both_models_views(server, sample_image):
    from demo.comparison import TABLE_HEADERS
    from demo.handlers import UI_OUTPUTS

    values = _compare(_client(server), sample_image)
    named = dict(zip([key for key in UI_OUTPUTS if key != "grids_state"], values))
    assert named["prompts"] == "**3 prompt(s):** `sky`, `house`, `red car`"
    width, height = Image.open(sample_image).size
    for name in ("baseline", "pmp"):
        overlay = Image.open(named[f"{name}_overlay"])
        assert overlay.width >= width and overlay.height > height  # the legend is below the image
        captions = [item["caption"] for item in named[f"{name}_masks"]]
        assert [c.split(" · ")[0] for c in captions] == ["sky", "house", "red car"]
        assert all("p=" in c and "p_hat=" in c and "p_out=" in c for c in captions)
        assert named[f"{name}_table"]["headers"] == TABLE_HEADERS
        assert [row[0] for row in named[f"{name}_table"]["data"]] == ["sky", "house", "red car"]
        assert Image.open(named[f"{name}_grid"]).width > 0
        assert "stage 1" in named[f"{name}_timings"] and "total" in named[f"{name}_timings"]
    assert "pixels the same" in named["differences_text"]
    assert len(named["differences_table"]["data"]) == 3
    files = {Path(path).name: Path(path) for path in named["downloads"]}
    assert set(files) == {"baseline_labels.png", "pmp_labels.png", "masks.zip", "scores.json"}
    scores = json.loads(files["scores.json"].read_text())
    assert scores["prompts"] == ["sky", "house", "red car"] and np.asarray(scores["pmp"]["scores"]["p_out"]).shape == (
        10,
        3,
    )
    assert np.asarray(Image.open(files["pmp_labels.png"])).shape == (height, width)


def test_api_bad_input_gets_clear_messages(server, sample_image, workdir):
    from gradio_client.exceptions import AppError

    client = _client(server)
    not_an_image = workdir / "notes.png"
    not_an_image.write_text("not an image at all\n" * 20)
    data = sample_image.read_bytes()
    truncated = workdir / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    cases = [
        ((sample_image, ""), "no prompts"),
        ((sample_image, ", ".join(f"c{i}" for i in range(40))), "too many prompts: 40 given"),
        # Sliders and radios hand their values to the handler as sent, which checks them.
        ((sample_image, PROMPTS, 7.0), "CLIP weight must be between 0.0 and 1.0, got 7.0"),
        ((sample_image, PROMPTS, 0.5, "slice"), "stage-2 mode must be one of pool, crop, got 'slice'"),
        ((not_an_image, PROMPTS), "could not be read as an image"),
        ((truncated, PROMPTS), "truncated or corrupt"),
    ]
    for args, expected in cases:
        with pytest.raises(AppError) as caught:
            _compare(client, *args)
        assert expected in str(caught.value), (args[1:], str(caught.value))
        assert "Traceback" not in str(caught.value)


def _queue_event(server, data: list, session: str) -> dict:
    """Send one /compare event as a browser does (queue/join, then the event stream); the final message."""
    config = httpx.get(server.url + "config", timeout=10).json()
    fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "compare")
    payload = {"data": data, "event_data": None, "fn_index": fn_index, "trigger_id": None, "session_hash": session}
    joined = httpx.post(server.url + "gradio_api/queue/join", json=payload, timeout=30)
    assert joined.status_code == 200, joined.text
    with httpx.stream(
        "GET", server.url + "gradio_api/queue/data", params={"session_hash": session}, timeout=60
    ) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    return message
    raise AssertionError("the event stream ended without a result")


def test_inline_pixel_bomb_is_refused_from_its_header(server):
    """A 13000 x 13000 PNG of a few KB sent as a data URL in the event payload: Gradio would decode all
    169 Mpixel (about 1.7 GB and 15 s); the header check refuses it with flat memory."""
    import base64
    import io

    buffer = io.BytesIO()
    Image.new("1", (13000, 13000)).save(buffer, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    before = rss_bytes(server.pid)
    started = time.monotonic()
    message = _queue_event(
        server,
        [{"path": None, "url": url, "meta": {"_type": "gradio.FileData"}}, PROMPTS, 0.65, "pool", 0.5, True, None],
        "bomb",
    )
    seconds = time.monotonic() - started
    grown = rss_bytes(server.pid) - before
    print(f"pixel bomb refused in {seconds:.2f} s, server memory {grown / 2**20:+.0f} MB")
    assert message["success"] is False
    assert "13000x13000 = 169,000,000 pixels; at most 40,000,000" in json.dumps(message["output"])
    assert grown < 150 * 2**20  # decoding it would take > 500 MB (1 byte per pixel, 3 for RGB)


def test_inline_image_within_the_limits_still_works(server, sample_image):
    import base64

    url = "data:image/png;base64," + base64.b64encode(sample_image.read_bytes()).decode()
    message = _queue_event(
        server,
        [{"path": None, "url": url, "meta": {"_type": "gradio.FileData"}}, PROMPTS, 0.65, "pool", 0.5, True, None],
        "inline",
    )
    assert message["success"] is True, message


def test_oversized_event_payload_is_refused_before_it_is_read(server):
    body = json.dumps({"data": ["x" * (41 * 1024 * 1024)], "fn_index": 0, "session_hash": "big"})
    before = rss_bytes(server.pid)
    answer = httpx.post(
        server.url + "gradio_api/queue/join", content=body, headers={"content-type": "application/json"}, timeout=60
    )
    assert answer.status_code == 413 and "at most 2,097,152 bytes" in answer.text
    assert rss_bytes(server.pid) - before < 100 * 2**20

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(41):
            yield b"x" * (1024 * 1024)

    answer = httpx.post(server.url + "gradio_api/queue/join", content=chunks(), timeout=60)
    assert answer.status_code == 413


def test_api_takes_prompts_as_a_list_of_strings(server, sample_image):
    from gradio_client import handle_file

    result = _client(server).predict(
        handle_file(str(sample_image)), ["sky", "red car"], 0.65, "pool", 0.5, True, api_name="/compare"
    )
    assert "**2 prompt(s):** `sky`, `red car`" in result[0]


# ---------------------------------------------------------------- load


@pytest.fixture(scope="module")
def load_run(server, sample_image) -> dict:
    """8 clients x 5 requests against the queue, once per module; the RSS before and after, for the bound below."""
    from gradio_client.exceptions import AppError

    clients = [_client(server, download=False) for _ in range(8)]  # the server's work, not file transfers
    for client in clients[:2]:  # warm up: first requests allocate caches, thread pools, CLIP text cache
        _compare(client, sample_image)
    rss_after_first = rss_bytes(server.pid)
    outcomes: list[str] = []
    lock = threading.Lock()

    def hammer(client) -> None:
        for i in range(5):
            try:
                values = _compare(client, sample_image, prompts=f"{PROMPTS}, thing {i}")
                outcome = "ok" if values[0].startswith("**4 prompt(s):**") else f"bad output {values[0]!r}"
            except AppError as error:
                outcome = f"error: {error}"
            except Exception as error:  # the client's own QueueError when the queue is full
                outcome = "busy" if "Queue is full" in str(error) else f"error: {type(error).__name__}: {error}"
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=hammer, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return {"outcomes": outcomes, "rss_after_first": rss_after_first, "rss_after_load": rss_bytes(server.pid)}


def test_load_8_clients_x_5_requests(server, load_run):
    """Every request succeeds or gets the queue's busy answer; no outside connections."""
    outcomes = load_run["outcomes"]
    assert len(outcomes) == 40
    unexpected = [outcome for outcome in outcomes if outcome not in ("ok", "busy")]
    assert not unexpected, unexpected
    assert outcomes.count("ok") >= 8  # the queue serves while it is full for others
    try:
        import psutil
    except ImportError:
        return
    remote = {conn.raddr.ip for conn in psutil.Process(server.pid).net_connections() if conn.raddr}
    assert remote <= {"127.0.0.1", "::1", "::ffff:127.0.0.1"}, remote


def test_memory_stays_flat_under_load(load_run):
    """The one memory bound here: 40 requests after warm-up grow the server's RSS by at most 10% (measured growth
    is a few percent; benchmarks.app_memory measures the rest of the memory story)."""
    before, after = load_run["rss_after_first"], load_run["rss_after_load"]
    print(f"RSS {before / 2**20:.0f} -> {after / 2**20:.0f} MiB")
    assert after <= 1.10 * before, (before / 2**20, after / 2**20)


# ---------------------------------------------------------------- browser


@pytest.mark.browser
def test_browser_new_scene_vocabulary_run_prompt_change_and_upload(server, workdir):
    """The page as a visitor uses it (see tests/browser.py): New scene, a vocabulary click, Run, the
    prompt-change view, an uploaded photo with a word the models never read, phone width."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    try:
        import playwright  # noqa: F401
    except ImportError:
        pytest.skip("the playwright Python package is not installed (pip install playwright)")
    from tests.browser import SCREENSHOTS, visit

    photo = workdir / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(photo)
    seen = visit(server.url, photo, workdir / "screens", world_examples=bool(_world_examples(workdir)))
    assert "moved" in seen["pmp_change_title"] or "did not move" in seen["pmp_change_title"]
    assert "mIoU" in seen["baseline_title"] and "mIoU" in seen["pmp_title"]
    assert "--baseline" in seen["truth_note"] and "synthetic world only" in seen["truth_note"]
    for name in SCREENSHOTS:
        assert Image.open(workdir / "screens" / name).size[0] >= 390


def _world_examples(workdir: Path) -> list:
    from demo import examples as example_files

    examples = example_files.read_examples(REPO / "examples", scenes=workdir / "scenes")
    return [example for example in examples if example.seed is not None]


def test_server_log_has_no_unexpected_errors(server, sample_image):
    """A good request and a refused one leave nothing unexpected in the log: no handler failure, no error
    serving files (Gradio's own slider/radio checks do print a traceback for rejected values; expected)."""
    from gradio_client.exceptions import AppError

    client = _client(server)
    start = server.log.stat().st_size  # judge only what this test's requests write, not earlier tests'
    assert "**3 prompt(s):**" in _compare(client, sample_image)[0]
    with pytest.raises(AppError, match="no prompts"):
        _compare(client, sample_image, "")
    with server.log.open("rb") as log:
        log.seek(start)
        text = log.read().decode(errors="replace")
    for marker in ("comparison failed", "Exception in ASGI application", "LocalProtocolError"):
        assert marker not in text, text[-3000:]


# ---------------------------------------------------------------- examples (no server needed)


def test_examples_are_read_from_json_and_bad_files_skipped(tmp_path):
    from demo import examples as example_files
    from train.world.demo import demo_scene

    Image.new("RGB", (8, 8)).save(tmp_path / "street.png")
    (tmp_path / "a.json").write_text(json.dumps({"image": "street.png", "prompts": "sky, road"}))
    (tmp_path / "b.json").write_text(
        json.dumps(
            [
                {"image": "street.png", "prompts": "car"},
                {"image": "missing.png"},
                "junk",
                {"seed": 4, "prompts": "car", "second_prompts": "car, wheel", "caption": "look at the wheels"},
                {"seed": -1, "prompts": "car"},
            ]
        )
    )
    (tmp_path / "c.json").write_text("{not json")
    examples = example_files.read_examples(tmp_path, scenes=tmp_path / "scenes")
    assert [example.row()[1:] for example in examples] == [
        ["sky, road", None, ""],
        ["car", None, ""],
        ["car", 4, "car, wheel"],
    ]
    assert examples[0].image == str(tmp_path / "street.png") and examples[2].caption == "look at the wheels"
    assert np.array_equal(np.asarray(Image.open(examples[2].image)), demo_scene(4).image)  # the scene, drawn
    assert [example.seed for example in example_files.read_examples(tmp_path, scenes=None)] == [None, None]
    assert example_files.read_examples(tmp_path / "absent") == []
    images_only = tmp_path / "images_only"
    images_only.mkdir()
    Image.new("RGB", (8, 8)).save(images_only / "cat.jpg")
    (images_only / "notes.txt").write_text("not an example")
    assert [example.row() for example in example_files.read_examples(images_only)] == [
        [str(images_only / "cat.jpg"), "", None, ""]
    ]


def test_app_builds_with_examples_and_writes_nothing_beside_itself(tmp_path):
    from demo import examples as example_files
    from demo.comparison import DemoModels
    from demo.layout import build_app
    from tests.demo_fixtures import FakeSegmenter

    Image.new("RGB", (8, 8)).save(tmp_path / "street.png")
    demo = build_app(
        DemoModels(FakeSegmenter(), FakeSegmenter(shift=1)),
        output_root=tmp_path / "out",
        examples=[example_files.Example(str(tmp_path / "street.png"), "sky")],
    )
    config = demo.get_config_file()
    public = [dep["api_name"] for dep in config["dependencies"] if dep.get("api_visibility", "public") == "public"]
    assert sorted(public) == ["compare", "prompt_change", "render_scene"]
    assert not (REPO / "app.pyi").exists()  # Gradio writes one beside the module of any component subclass


def test_the_ui_hands_16_bit_and_rgba_files_to_the_handler_unchanged(tmp_path, monkeypatch):
    """Gradio's default image_mode="RGB" would give the handler an RGB copy: a 16-bit grey PNG as all
    white, an RGBA image with its hidden colours. The app passes the original (uploaded) file on."""
    from gradio.data_classes import ImageData

    from demo.comparison import DemoModels
    from demo.layout import build_app
    from pmp.images import load_image
    from tests.demo_fixtures import FakeSegmenter

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "cache"))  # where uploads land
    demo = build_app(DemoModels(FakeSegmenter(), FakeSegmenter(shift=1)), output_root=tmp_path / "out", examples=[])
    image_box = next(block for block in demo.blocks.values() if getattr(block, "elem_id", None) == "image")
    uploads = tmp_path / "cache" / "0123abcd"
    uploads.mkdir(parents=True)
    grey16 = uploads / "grey16.png"
    Image.fromarray(np.full((10, 20), 40000, np.uint16)).save(grey16)
    rgba = np.zeros((10, 20, 4), np.uint8)
    rgba[..., :3] = (255, 0, 0)  # red under fully transparent pixels
    Image.fromarray(rgba, "RGBA").save(uploads / "rgba.png")
    for path in (grey16, uploads / "rgba.png"):
        handed = image_box.preprocess(ImageData(path=str(path), orig_name=path.name))
        assert Path(handed) == path, "the handler must get the uploaded file itself"
    grey = np.asarray(load_image(grey16))
    assert grey.max() < 200  # 40000 / 65535 of full scale, not the all-white 8-bit copy
    assert (np.asarray(load_image(uploads / "rgba.png")) == 255).all()  # transparent over white, not the hidden red
