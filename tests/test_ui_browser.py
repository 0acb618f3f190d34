"""The app in a real headless Chromium (Playwright): ask with a photo, crop then ask, admin login + add a case.

Screenshots go to ``artifacts/screenshots/`` (gitignored) for a human look.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from pathlib import Path
from typing import Iterator

import pytest
from conftest import case_picture
from ui_helpers import ADMIN, Served, serve_app, served_app, stop_app

pytestmark = pytest.mark.browser

from playwright import sync_api  # noqa: E402 - pinned: a missing Playwright fails the run, never skips it

CHROMIUM = os.environ.get("RAGVQA_CHROMIUM", "/usr/bin/chromium")
if not Path(CHROMIUM).exists():
    pytest.fail(f"no Chromium at {CHROMIUM} (install it: `bash .ci/dev` does; or set RAGVQA_CHROMIUM)", pytrace=False)

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
SHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
TIMEOUT_MS = 90_000


app = served_app("ui-browser")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture()
def page(browser, app: Served):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.dialogs = []  # type: ignore[attr-defined]
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))  # type: ignore[attr-defined]
    pg.goto(app.url, wait_until="domcontentloaded")
    pg.wait_for_selector("#chat-input textarea")
    yield pg
    ctx.close()


def shot(page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def ask(page, text: str, files: list[Path] = ()) -> None:
    if files:
        page.locator("#chat-input input[type=file]").set_input_files([str(f) for f in files])
        page.wait_for_selector("#chat-input img, #chat-input .thumbnail-item, #chat-input [data-testid=file-preview]",
                               timeout=TIMEOUT_MS)
    page.locator("#chat-input textarea").fill(text)
    page.locator("#chat-input [data-testid=submit-button]").click()


#: The footers that end a finished answer (English UI): a regex alternation.
ANSWER_FOOTERS = "Cited cases|Cases used|No similar case was found"


def wait_answer(page, n: int = 1, footers: str = ANSWER_FOOTERS) -> str:
    """Wait for the n-th finished answer (its footer lists the cases) and return the chat text."""
    page.wait_for_function(
        "([n, f]) => { const t = document.querySelector('#chatbot')?.innerText || '';"
        " return (t.match(new RegExp(f, 'g')) || []).length >= n; }", arg=[n, footers])
    return page.locator("#chatbot").inner_text()


def ask_with_photo(page, app: Served, tmp_path: Path, question: str, footers: str = ANSWER_FOOTERS) -> str:
    """Ask ``question`` with a 240x180 JPEG of the ``prn-e13`` case picture; wait for the answer and its source tiles
    (at least 3) and return the chat text, which must echo the question."""
    from PIL import Image

    photo = tmp_path / "photo.jpg"
    Image.open(app.images["prn-e13"]).resize((240, 180)).save(photo, quality=80)
    ask(page, question, [photo])
    chat = wait_answer(page, footers=footers)
    assert question in chat
    page.wait_for_function("() => document.querySelectorAll('#sources img').length >= 3")
    return chat


def poll_until(done, seconds: float, why, every_s: float = 0.05) -> None:
    """Poll ``done()`` until it is true; fail with ``why()`` after ``seconds``."""
    deadline = time.time() + seconds
    while not done():
        assert time.time() < deadline, why()
        time.sleep(every_s)


def assert_inert(page) -> None:
    """The case with <img onerror>/<script>/javascript: markup must not have run or produced elements."""
    assert page.dialogs == []
    assert page.evaluate("window.__xss") is None
    assert page.locator("#chatbot script, #case-detail script, #case-detail img, #chatbot img[src='x']").count() == 0


def test_ask_with_photo_shows_answer_sources_and_case(page, app: Served, tmp_path: Path) -> None:
    from PIL import Image

    ask_with_photo(page, app, tmp_path, "What is wrong and how do I fix it?")
    captions = page.locator("#sources").inner_text()
    assert "[prn-e13]" in captions
    # every tile shows its own case's stored thumbnail (the served bytes decode to the same pixels) and a score
    import re

    import numpy as np

    items = page.locator("#sources button.thumbnail-item, #sources .thumbnail-item")
    page.wait_for_function("() => [...document.querySelectorAll('#sources img')].every(i => i.complete && i.naturalWidth > 0)")
    assert items.count() == len(app.images)
    for i in range(items.count()):
        m = re.search(r"\[([\w.-]+)\] · (-?\d+\.\d\d)", items.nth(i).inner_text())
        assert m, items.nth(i).inner_text()
        src = items.nth(i).locator("img").first.get_attribute("src")
        served = np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB"))
        thumb = app.services.media_root / app.services.kb.get(m.group(1)).media[0].thumbnail
        assert np.array_equal(served, np.asarray(Image.open(thumb).convert("RGB"))), f"tile {m.group(1)}"
    # the chat shows the uploaded photo
    assert page.locator("#chatbot img").count() >= 1
    # open the case carrying markup: it must be shown as text, inert
    items = page.locator("#sources button.thumbnail-item, #sources .thumbnail-item")
    idx = next(i for i in range(items.count()) if "xss-case" in items.nth(i).inner_text()) if "xss-case" in captions else 0
    items.nth(idx).click()
    page.wait_for_function("() => !document.querySelector('#case-detail').innerText.includes('Select a source')")
    detail = page.locator("#case-detail").inner_text()
    if "xss-case" in captions:
        assert "<script>window.__xss=2</script>" in detail and "onerror" in detail
    page.locator("#timings-panel").get_by_text("Timings").click()
    page.wait_for_selector("#timings table")
    assert "search" in page.locator("#timings").inner_text()
    assert_inert(page)
    shot(page, "chat_answer")


def test_bad_upload_message_in_chat(page, tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 200)
    page.locator("#chat-input input[type=file]").set_input_files(str(bad))
    page.locator("#chat-input textarea").fill("what is this?")
    time.sleep(0.5)
    page.locator("#chat-input [data-testid=submit-button]").click()
    page.wait_for_function("() => (document.querySelector('#chatbot')?.innerText || '').includes('cannot be used as an image')")
    assert "Traceback" not in page.locator("#chatbot").inner_text()


def _picture_box(editor, colour_test) -> tuple[float, float, float, float] | None:
    """Screen rectangle of the picture inside the editor canvas (found by its colour), or None."""
    import numpy as np
    from PIL import Image

    box = editor.bounding_box()
    a = np.asarray(Image.open(io.BytesIO(editor.screenshot())).convert("RGB")).astype(int)
    ys, xs = np.where(colour_test(a))
    if not xs.size:
        return None
    return (float(xs.min() + box["x"]), float(ys.min() + box["y"]), float(xs.max() + box["x"]), float(ys.max() + box["y"]))


def test_crop_then_ask_uses_the_region(page, app: Served, tmp_path: Path) -> None:
    """Upload a photo into the crop editor, crop it to its bottom-right quarter, ask: the crop is the query image."""
    from PIL import Image

    photo = tmp_path / "rooftop.png"
    Image.open(app.images["hvac-f3"]).resize((240, 180)).save(photo)
    is_blue = lambda a: (abs(a[:, :, 2] - 200) < 25) & (a[:, :, 0] < 80) & (a[:, :, 1] < 80)  # noqa: E731
    page.locator("#crop-panel").get_by_text("Crop the photo").first.click()
    editor = page.locator("#crop-editor")
    editor.scroll_into_view_if_needed()
    with page.expect_file_chooser() as chooser:  # the editor's own Upload tool, as a user would
        editor.locator("button[aria-label='Upload']").first.click()
    chooser.value.set_files(str(photo))
    # the canvas draws the upload asynchronously
    poll_until(lambda: _picture_box(editor, is_blue) is not None, 60,
               lambda: "the photo never appeared in the crop editor", every_s=0.3)
    editor.locator("button[aria-label=Image]").click()
    editor.locator("button[aria-label=Crop]").click()
    time.sleep(0.5)
    x0, y0, x1, y1 = _picture_box(editor, is_blue)
    page.mouse.move(x0 + 1, y0 + 1)
    page.mouse.down()
    page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=10)
    page.mouse.up()
    shot(page, "crop_editor")
    confirm = page.get_by_role("button", name="Confirm crop")
    confirm.click()
    confirm.wait_for(state="hidden")
    time.sleep(1.0)  # the canvas applies the crop asynchronously; the composite is exported when the event fires
    ask(page, "What is wrong in this region?")
    wait_answer(page)
    page.locator("#timings-panel").get_by_text("Timings").click()
    page.wait_for_function("() => (document.querySelector('#timings')?.innerText || '').includes('cropped region')")
    # the query image shown in the chat is the crop (about a quarter of the 240x180 photo)
    width = page.evaluate("() => Math.max(0, ...[...document.querySelectorAll('#chatbot img')].map(i => i.naturalWidth))")
    assert 0 < width < 180, width
    shot(page, "crop_answer")


def test_admin_refuses_without_login_then_adds_a_case_found_from_chat(page, app: Served, tmp_path: Path) -> None:
    page.locator("#tab-admin-button, button[role=tab]:has-text('Admin')").first.click()
    page.wait_for_selector("#admin-login-btn")
    assert not page.locator("#admin-panel").is_visible()
    page.locator("#admin-user input, #admin-user textarea").first.fill(ADMIN[0])
    page.locator("#admin-password input, #admin-password textarea").first.fill("not-the-password")
    page.locator("#admin-login-btn").click()
    page.wait_for_function("() => (document.querySelector('#admin-login-msg')?.innerText || '').includes('Wrong')")
    assert not page.locator("#admin-panel").is_visible()
    shot(page, "admin_refused")

    page.locator("#admin-user input, #admin-user textarea").first.fill(ADMIN[0])
    page.locator("#admin-password input, #admin-password textarea").first.fill(ADMIN[1])
    page.locator("#admin-login-btn").click()
    page.wait_for_selector("#admin-panel", state="visible")
    page.get_by_role("tab", name="Add / edit case").click()
    picture = tmp_path / "espresso.png"
    case_picture(42, (120, 60, 20)).save(picture)
    fill = {"#case-id": "esp-grinder-jam", "#case-title": "Espresso grinder jams on dark roast",
            "#case-line": "coffee-machines", "#case-model": "BX-9",
            "#case-symptom": "Grinder motor hums but beans do not feed; error G2.",
            "#case-solution": "Unplug the machine.\nClear the burr chamber.\nRecalibrate the grind size."}
    for sel, value in fill.items():
        page.locator(f"{sel} textarea, {sel} input").first.fill(value)
    page.locator("#case-files input[type=file]").set_input_files(str(picture))
    page.wait_for_function("() => (document.querySelector('#case-files')?.innerText || '').includes('espresso.png')")
    page.locator("#case-save").click()
    page.wait_for_function("() => (document.querySelector('#case-save-msg')?.innerText || '').includes('Added case')")
    shot(page, "admin_case_added")
    assert app.services.kb.get("esp-grinder-jam") is not None
    # the case list shows stored markup as text too
    page.get_by_role("tab", name="Cases").click()
    page.locator("#admin-list-btn").click()
    page.wait_for_function("() => (document.querySelector('#admin-case-table')?.innerText || '').includes('esp-grinder-jam')")
    assert "img src=x" in page.locator("#admin-case-table").inner_text()
    assert page.locator("#admin-case-table img, #admin-case-table script").count() == 0
    assert_inert(page)

    # a chat user finds it: reload (filter choices refresh on load), filter on its product line, ask
    page.goto(app.url, wait_until="domcontentloaded")
    page.wait_for_selector("#chat-input textarea")
    deadline = time.time() + 60
    while True:  # the choices arrive with the page-load event; retry until the new line is offered
        page.locator("#filter-line input").click()
        try:
            page.get_by_role("option", name="coffee-machines").click(timeout=2000)
            break
        except sync_api.TimeoutError:
            assert time.time() < deadline, "the new product line never appeared in the filter"
            page.keyboard.press("Escape")
    ask(page, "grinder hums, beans do not feed")
    wait_answer(page)
    page.wait_for_function("() => (document.querySelector('#sources')?.innerText || '').includes('esp-grinder-jam')")
    assert "Espresso grinder jams" in page.locator("#sources").inner_text()
    assert_inert(page)
    shot(page, "chat_finds_new_case")


# -- Stop ---------------------------------------------------------------------------------------------------------------
STEP_S = 0.25  # each decoding step of the long-generating model is slowed to this, so "one step" is measurable


@pytest.fixture(scope="module")
def long_app(tmp_path_factory: pytest.TempPathFactory, embedder, reranker, tiny_model_dir) -> Served:
    """A served app whose generator (its own instance) can be made to write an endless answer, one concurrency slot."""
    from rag.models.generator import Generator

    gen = Generator.from_pretrained(tiny_model_dir, dtype="float32", device="cpu")
    s = serve_app(tmp_path_factory.mktemp("ui-stop"), embedder, reranker, gen, max_new_tokens=20_000)
    assert s.services.ui.concurrency_limit == 1
    yield s
    stop_app(s)


def _generation_threads() -> list:
    import threading

    return [t for t in threading.enumerate() if t.name == "generator-stream" and t.is_alive()]


@contextlib.contextmanager
def endless_silent_model(app: Served) -> Iterator[list[int]]:
    """The served generator writes no end-of-sequence and no whitespace (the text streamer then releases no text,
    as with a long part number) and each forward takes STEP_S; yields the forward count. Restored on exit."""
    gen = app.services.pipeline.generate_stage.generator
    tok, cfg = gen.tokenizer, gen.model.generation_config
    no_text = [i for i in range(len(tok)) if any(ch.isspace() or ord(ch) >= 0x2E80 for ch in tok.decode([i]))]
    cfg.min_new_tokens, cfg.suppress_tokens = 20_000, no_text  # = max_new_tokens: no end-of-sequence
    steps = [0]

    def slow(module, args) -> None:
        steps[0] += 1
        time.sleep(STEP_S)

    handle = gen.model.register_forward_pre_hook(slow)
    try:
        yield steps
    finally:
        handle.remove()
        cfg.min_new_tokens, cfg.suppress_tokens = None, None


def test_stop_ends_generation_within_a_step_and_frees_the_slot(browser, long_app: Served) -> None:
    """Stop while the model writes: generation ends after the decoding step in progress and the next question is
    answered. The model writes no end-of-sequence and no whitespace (so the chat handler receives no text at all:
    the text streamer releases text only at word boundaries, as with a long part number or URL) and each step takes
    STEP_S: only a cancel that reaches the model itself can stop it; closing the handler's generator cannot."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = ctx.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    with endless_silent_model(long_app) as steps:
        page.goto(long_app.url, wait_until="domcontentloaded")
        page.wait_for_selector("#chat-input textarea")
        ask(page, "What is wrong with the fuser?")
        # prefill and a few decoding steps done: the model is writing
        poll_until(lambda: steps[0] >= 4, 60, lambda: "generation never started")
        stop = page.locator("#chat-input button.stop-button")
        stop.wait_for(state="visible")
        at = steps[0]
        stop.click()
        poll_until(lambda: not _generation_threads(), 10,
                   lambda: f"generation still running {steps[0] - at} steps after Stop")
        assert steps[0] - at <= 2, f"{steps[0] - at} decoding steps ran after Stop (one is in flight when it arrives)"
        shot(page, "chat_stopped")
    # the one model slot is free: the next question is answered (short answers again)
    stage = long_app.services.pipeline.generate_stage
    stage.max_new_tokens = 8
    try:
        ask(page, "And the paper jam?")
        wait_answer(page)
        assert "And the paper jam?" in page.locator("#chatbot").inner_text()
        assert long_app.demo._queue.event_queue_per_concurrency_id["models"].current_concurrency == 0
    finally:
        ctx.close()
        stage.max_new_tokens = 20_000


def test_closing_the_page_ends_its_generation(browser, long_app: Served) -> None:
    """A page closed while its answer is being written: the model stops, it does not write on for nobody."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    with endless_silent_model(long_app) as steps:
        page = ctx.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(long_app.url, wait_until="domcontentloaded")
        page.wait_for_selector("#chat-input textarea")
        ask(page, "What is wrong with the pump?")
        poll_until(lambda: steps[0] >= 4, 60, lambda: "generation never started")
        at = steps[0]
        ctx.close()
        poll_until(lambda: not _generation_threads(), 20,
                   lambda: f"generation still running {steps[0] - at} steps after the page closed")
