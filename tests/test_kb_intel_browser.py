"""Chat tab in headless Chromium: the opened case lists its related cases (picking one opens it), and a photo query
may show a product-line hint that changes the filter only when clicked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ui_helpers import Served, served_app

pytestmark = pytest.mark.browser

from playwright import sync_api  # noqa: E402 - pinned: a missing Playwright fails the run, never skips it

CHROMIUM = os.environ.get("RAGVQA_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


app = served_app("ui-intel-browser")


def test_related_cases_and_line_hint_in_the_chat(app: Served, tmp_path: Path) -> None:
    from PIL import Image

    from knowledge_base.related import related_cases

    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}", pytrace=False)
    photo = tmp_path / "photo.jpg"
    Image.open(app.images["prn-jam2"]).resize((240, 180)).save(photo, quality=80)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = b.new_context(viewport={"width": 1400, "height": 1100}).new_page()
            page.set_default_timeout(90_000)
            page.goto(app.url, wait_until="domcontentloaded")
            page.wait_for_selector("#chat-input textarea")
            page.locator("#chat-input input[type=file]").set_input_files(str(photo))
            page.wait_for_selector("#chat-input img, #chat-input .thumbnail-item, #chat-input [data-testid=file-preview]")
            page.locator("#chat-input textarea").fill("What is wrong?")
            page.locator("#chat-input [data-testid=submit-button]").click()
            page.wait_for_function("() => /Cited cases|Cases used|No similar case/.test("
                                   "document.querySelector('#chatbot')?.innerText || '')")
            page.wait_for_function("() => document.querySelectorAll('#sources img').length >= 3")
            line_input = page.locator("#filter-line input")
            unfiltered = line_input.input_value()  # the "any product line" choice
            assert unfiltered in ("", "Any product line")
            page.wait_for_timeout(1500)  # the hint is computed right after the answer
            hint = page.locator("#line-hint")
            if hint.count() and hint.is_visible():
                text = hint.inner_text()
                assert text.startswith("Looks like: ")
                line = text.removeprefix("Looks like: ").split(" (")[0]
                assert line_input.input_value() == unfiltered  # never a silent filter
                hint.click()
                page.wait_for_function("v => document.querySelector('#filter-line input').value === v", arg=line)
            else:
                assert line_input.input_value() == unfiltered
            # open a source: its related cases are listed; picking one opens it
            items = page.locator("#sources button.thumbnail-item, #sources .thumbnail-item")
            first = items.nth(0).inner_text()
            import re

            cid = re.search(r"\[([\w.-]+)\]", first).group(1)
            items.nth(0).click()
            page.wait_for_selector("#related-cases", state="visible")
            want = related_cases(app.services.kb, cid, limit=5)
            page.locator("#related-cases input").click()
            options = page.locator("#related-cases [role=option]")
            page.wait_for_function("() => document.querySelectorAll('#related-cases [role=option]').length > 0")
            assert options.count() == len(want)
            assert want[0].title in options.nth(0).inner_text()
            options.nth(0).click()
            page.wait_for_function("id => document.querySelector('#case-detail').innerText.includes(id)",
                                   arg=want[0].case_id)
            assert want[0].title in page.locator("#case-detail").inner_text()
        finally:
            b.close()
