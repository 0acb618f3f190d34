"""The Chinese UI in a real headless Chromium with a zh-CN locale: labels from gr.I18n, the switch, an ask in
Chinese with a photo, and the abstention banner in Chinese. Screenshots in ``artifacts/screenshots/``."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_ui_browser import ARGS, CHROMIUM, TIMEOUT_MS, ask, ask_with_photo, shot, wait_answer
from ui_helpers import Served, served_app

pytestmark = pytest.mark.browser

from playwright import sync_api  # noqa: E402

app = served_app("ui-zh")


@pytest.fixture()
def zh_page(app: Served):
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[*ARGS, "--lang=zh-CN"], headless=True)
        ctx = b.new_context(viewport={"width": 1400, "height": 1000}, locale="zh-CN")
        pg = ctx.new_page()
        pg.set_default_timeout(TIMEOUT_MS)
        pg.goto(app.url, wait_until="domcontentloaded")
        pg.wait_for_selector("#chat-input textarea")
        yield pg
        ctx.close()
        b.close()


#: The footers that end a finished answer in the zh-CN UI.
ZH_FOOTERS = "引用的案例|使用的案例|知识库中没有找到相似的案例"


def test_chinese_ui_ask_with_photo_and_abstention(zh_page, app: Served, tmp_path: Path) -> None:
    page = zh_page
    assert page.evaluate("navigator.language") == "zh-CN"
    page.wait_for_function("() => (document.querySelector('#chat-input textarea')?.placeholder || '').includes('附上照片')")
    body = page.locator("body").inner_text()
    assert "对话" in body and "管理" in body and "产品线" in body and "重排序" in body
    page.wait_for_function("() => document.querySelector('#lang-switch input[value=\"zh-CN\"]')?.checked === true")
    shot(page, "i18n-zh-start")

    chat = ask_with_photo(page, app, tmp_path, "打印机显示E13，哪里坏了？怎么修？", footers=ZH_FOOTERS)
    assert "引用的案例" in chat or "使用的案例" in chat
    shot(page, "i18n-zh-answer")

    page.locator("#rerank input[type=checkbox]").uncheck()  # retrieval only: this app's threshold always abstains
    ask(page, "咖啡机研磨时声音很大，怎么办？")
    wait_answer(page, 2, footers=ZH_FOOTERS)
    page.wait_for_selector("#abstain-banner .ragvqa-abstain", state="visible")
    banner = page.locator("#abstain-banner").inner_text()
    assert "没有找到相似案例" in banner and "二线支持" in banner
    shot(page, "i18n-zh-abstain")

    page.locator("#tab-admin-button, button[role=tab]:has-text('管理')").first.click()
    page.wait_for_selector("#admin-login", state="visible")
    login = page.locator("#admin-login").inner_text()
    assert "管理员登录" in login and "用户名" in login and "密码" in login
    shot(page, "i18n-zh-admin")
    page.locator("#tab-chat-button, button[role=tab]:has-text('对话')").first.click()

    page.locator("#lang-switch label", has_text="English").click()  # the visible switch
    page.wait_for_function("() => (document.querySelector('#chat-input textarea')?.placeholder || '').startsWith('Attach')")
    assert "Product line" in page.locator("body").inner_text()
    shot(page, "i18n-switched-to-en")
