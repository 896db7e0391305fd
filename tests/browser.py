"""Drive the demo page in headless Chromium as a visitor would; the browser test and the README's
screenshots both use :func:`visit`.

    python -m tests.browser --out docs      # the bundled models: screenshots of every view into docs/

``visit`` waits for the first view (the prompt-change view of the first example, filled on load: its
screenshot), draws a new scene, adds a word from the vocabulary, compares two prompt sets, runs the
detail view, then uploads a photo with a word the bundled models never read. It checks what the page says at each
step and saves one screenshot per view (plus one at phone width).
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage", "--disable-extensions", "--no-first-run", "--disable-component-update",
                 "--disable-sync"]  # fmt: skip
SCREENSHOTS = ("app_change.png", "app_detail.png", "app_upload.png", "app_phone.png")


def visit(url: str, photo: Path, out: Path, *, timeout_ms: int = 60_000, world_examples: bool = True) -> dict[str, str]:
    """Walk through the page; returns what it read (titles, notes). Raises on anything missing."""
    from playwright.sync_api import expect, sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    seen: dict[str, str] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        try:
            page.goto(url, wait_until="domcontentloaded")
            page.locator("#run-change").wait_for(timeout=timeout_ms)
            if world_examples:  # the first view is filled on load: the two sets of the first example
                expect(page.locator("#change-summary")).to_contain_text("What to look at", timeout=timeout_ms)
                expect(page.locator("#baseline-change-title")).to_contain_text("did not move", timeout=timeout_ms)
                page.locator("#pmp-set2 img").first.wait_for(timeout=timeout_ms)
                expect(page.locator("#change-truth-note")).to_contain_text("Ground truth", timeout=timeout_ms)
                expect(page.locator("#scene-note")).to_contain_text("Opening example", timeout=timeout_ms)
                load_lazy_images(page)
                page.screenshot(path=str(out / "app_change.png"), full_page=True)
            # New scene: a world scene with its prompts and seed; both prompt sets follow it, old results go
            opening_second = page.locator("#second-prompts textarea").input_value()
            page.locator("#new-scene").click()
            expect(page.locator("#scene-note")).to_contain_text("World scene", timeout=timeout_ms)
            expect(page.locator("#parsed-prompts")).to_contain_text("prompt(s)", timeout=timeout_ms)
            expect(page.locator("#second-prompts textarea")).not_to_have_value(opening_second, timeout=timeout_ms)
            expect(page.locator("#second-prompts textarea")).not_to_have_value("", timeout=timeout_ms)
            expect(page.locator("#pmp-set2 img")).to_have_count(0, timeout=timeout_ms)
            expect(page.locator("#change-summary")).not_to_contain_text("What to look at", timeout=timeout_ms)
            # a vocabulary click adds the word to the prompts
            page.locator("#vocabulary").get_by_text("Vocabulary of the bundled models").click()
            present = [name.strip() for name in page.locator("#prompts textarea").input_value().split(",")]
            word = next(name for name in ("wheel", "sail", "roof", "leg") if name not in present)
            page.locator("#vocabulary-part").get_by_text(word, exact=True).click()
            expect(page.locator("#prompts textarea")).to_have_value(ends_with(word), timeout=timeout_ms)
            seen["vocabulary_word"] = word
            # the prompt-change view on this scene: the first set is the prompts box
            page.locator("#second-prompts textarea").fill("car, wheel, window, sky")
            page.locator("#run-change").click()
            # the new result (the load view's text is already on the page): the summary names the new sets
            expect(page.locator("#change-summary")).to_contain_text("car, wheel, window, sky", timeout=timeout_ms)
            expect(page.locator("#baseline-change-title")).to_contain_text("did not move", timeout=timeout_ms)
            expect(page.locator("#pmp-change-title")).to_contain_text("mIoU on this image", timeout=timeout_ms)
            expect(page.locator("#change-truth-note")).to_contain_text(
                "Ground truth of world scene", timeout=timeout_ms
            )
            page.locator("#truth-set2 img").first.wait_for(timeout=timeout_ms)
            seen["pmp_change_title"] = page.locator("#pmp-change-title").inner_text()
            check_errors_keep_the_page(page, timeout_ms)
            if not world_examples:
                load_lazy_images(page)
                page.screenshot(path=str(out / "app_change.png"), full_page=True)
            # the detail view: ground truth and per-image scores by the titles
            page.get_by_role("tab", name="One set in detail").click()
            page.locator("#run").click()
            expect(page.locator("#truth-note")).to_contain_text("Ground truth of world scene", timeout=timeout_ms)
            for name in ("baseline", "pmp"):
                expect(page.locator(f"#{name}-title")).to_contain_text("mIoU", timeout=timeout_ms)
                page.locator(f"#{name}-masks").get_by_text("p_out=").first.wait_for(timeout=timeout_ms)
                seen[f"{name}_title"] = page.locator(f"#{name}-title").inner_text()
            page.locator("#truth img").first.wait_for(timeout=timeout_ms)
            load_lazy_images(page)
            page.screenshot(path=str(out / "app_detail.png"), full_page=True)
            # a text file named .png is refused when it is uploaded, not at the next Run
            fake = Path(tempfile.mkdtemp(prefix="pmp-browser-")) / "not_an_image.png"  # not beside the screenshots
            fake.write_text("this is text, not a picture")
            page.locator("#image input[type=file]").set_input_files(str(fake))
            expect(page.locator(".toast-body").last).to_contain_text("not an image file", timeout=timeout_ms)
            expect(page.locator("#image img")).to_have_count(0, timeout=timeout_ms)  # emptied, not a broken image
            close_toasts(page)
            # an uploaded photo with a word outside the vocabulary: the flag and the notice
            page.locator("#image input[type=file]").set_input_files(str(photo))
            expect(page.locator("#scene-seed input")).to_have_value("", timeout=timeout_ms)
            page.locator("#prompts textarea").fill("astronaut, sky")
            expect(page.locator("#parsed-prompts")).to_contain_text(
                "not in the bundled models' vocabulary", timeout=timeout_ms
            )
            page.locator("#run").click()
            expect(page.locator("#truth-note")).to_contain_text(
                "No ground truth for your own image", timeout=timeout_ms
            )
            seen["truth_note"] = page.locator("#truth-note").inner_text()
            page.screenshot(path=str(out / "app_upload.png"), full_page=True)
            # a photo example on the opening tab: both prompt sets filled, compared without a word of error
            page.get_by_role("tab", name="Two prompt sets").click()
            page.locator("#photo-examples button").first.click()
            expect(page.locator("#scene-note")).to_contain_text("Photo example", timeout=timeout_ms)
            expect(page.locator("#second-prompts textarea")).not_to_have_value("", timeout=timeout_ms)
            page.locator("#run-change").click()
            expect(page.locator("#change-summary")).to_contain_text("What to look at", timeout=timeout_ms)
            expect(page.locator(".toast-body")).to_have_count(0)
            # phone width: the columns stack and stay usable
            page.set_viewport_size({"width": 390, "height": 844})
            page.reload(wait_until="domcontentloaded")
            page.locator("#run-change").wait_for(timeout=timeout_ms)
            if world_examples:
                expect(page.locator("#change-summary")).to_contain_text("What to look at", timeout=timeout_ms)
            load_lazy_images(page)
            width = page.evaluate("document.documentElement.scrollWidth")
            seen["phone_scroll_width"] = str(width)
            if width > 390 + 16:
                raise AssertionError(f"at phone width the page scrolls sideways: {width} px wide")
            page.screenshot(path=str(out / "app_phone.png"), full_page=True)
            # the detail view's tables at phone width: every column in view, no sideways scroll
            page.get_by_role("tab", name="One set in detail").click()
            page.locator("#run").click()
            expect(page.locator("#pmp-title")).to_contain_text("mIoU", timeout=timeout_ms)
            page.locator("#pmp-table td").first.wait_for(state="attached", timeout=timeout_ms)
            wide = page.evaluate(WIDE_TABLES)
            if wide:
                raise AssertionError(f"at phone width these tables scroll sideways: {wide}")
        except Exception:
            page.screenshot(path=str(out / "app_failure.png"), full_page=True)
            raise
        finally:
            browser.close()
    return seen


WIDE_TABLES = """() => [...document.querySelectorAll('[id$="-table"] .table-wrap, [id$="-table"] table')]
    .filter(e => e.scrollWidth > e.clientWidth + 2)
    .map(e => e.closest('[id$="-table"]').id + ' ' + e.scrollWidth + '/' + e.clientWidth)"""


ERROR_BADGES = """() => [...document.querySelectorAll('.error')]
    .filter(e => !e.closest('.toast-body') && e.offsetParent !== null && e.textContent.trim() === 'Error').length"""


def check_errors_keep_the_page(page, timeout_ms: int) -> None:  # noqa: ANN001 - a playwright Page
    """Bad input after a result: one message naming the box, no error badge over the results, which stay; a
    10,000-character paste is neither cut nor read: refused with its real length."""
    from playwright.sync_api import expect  # optional, as in visit

    first = page.locator("#prompts textarea").input_value()
    page.locator("#prompts textarea").fill("")
    page.locator("#run-change").click()
    expect(page.locator(".toast-body").last).to_contain_text("Prompts (the first set): no prompts", timeout=timeout_ms)
    expect(page.locator("#pmp-set2 img")).to_have_count(1)
    badges = page.evaluate(ERROR_BADGES)
    if badges > 1:
        raise AssertionError(f"one error puts {badges} 'Error' badges on the page")
    close_toasts(page)
    page.locator("#prompts textarea").fill(first)
    second = page.locator("#second-prompts textarea").input_value()
    page.locator("#second-prompts textarea").fill("a" * 10_000)
    expect(page.locator("#second-prompts textarea")).to_have_value("a" * 10_000)
    page.locator("#run-change").click()
    expect(page.locator(".toast-body").last).to_contain_text(
        "Second prompt set: the prompt text is 10,000 characters long", timeout=timeout_ms
    )
    close_toasts(page)
    page.locator("#second-prompts textarea").fill(second)


def close_toasts(page) -> None:  # noqa: ANN001 - a playwright Page
    from playwright.sync_api import expect  # optional, as in visit

    for button in page.locator(".toast-close").all():
        button.click()
    expect(page.locator(".toast-body")).to_have_count(0)


def load_lazy_images(page) -> None:  # noqa: ANN001 - a playwright Page
    """Scroll the page through once: Gradio loads images lazily, so a full-page screenshot would show
    empty boxes below the fold."""
    height = page.evaluate("document.documentElement.scrollHeight")
    step = page.viewport_size["height"] if page.viewport_size else 800
    for top in range(0, height, step):
        page.evaluate(f"window.scrollTo(0, {top})")
        page.wait_for_timeout(150)
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_timeout(300)


def ends_with(word: str) -> re.Pattern[str]:
    """The prompt box's value after a vocabulary click: ``word`` appended as the last prompt."""
    return re.compile(rf"(^|, ){re.escape(word)}$")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_app(arguments: list[str], log_path: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """``python app.py`` on a free localhost port; returns the process and its URL once it answers."""
    import httpx

    port = free_port()
    environment = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
                   "NO_PROXY": "127.0.0.1,localhost", **(env or {})}  # fmt: skip
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "app.py", "--port", str(port), *arguments],
            cwd=REPO,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"app.py did not answer within 120 s:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Screenshots of the demo on the bundled models.")
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    parser.add_argument("--photo", type=Path, default=REPO / "examples" / "photo_astronaut.jpg")
    args = parser.parse_args(argv)
    log = Path(os.environ.get("TMPDIR", "/tmp")) / "pmp-screenshots-app.log"
    process, url = start_app(["--device", "cpu"], log)
    try:
        seen = visit(url, args.photo, args.out)
    finally:
        process.terminate()
        process.wait(timeout=15)
    for key, value in seen.items():
        print(f"{key}: {value}")
    print("wrote " + ", ".join(str(args.out / name) for name in SCREENSHOTS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
