"""Security of the served app (tiny models, real Edge store + KB, real Gradio server, loopback only).

Complements tests/test_ui_api.py (which covers reading admin endpoints without a login): here the *writing* admin
functions are refused over every channel with nothing written, even with a forged or genuine token sent by the
client; case text full of HTML/JS stays inert in Chromium and makes no request leave 127.0.0.1; oversized uploads
are refused before they are read whole; no user-given path outside the upload folders is ever used.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file  # noqa: E402
from PIL import Image
from ui_helpers import ADMIN, Served, component_id, fn_index_for, raw_call, serve_app, stop_app

GRADIO_MAX = 3 * 1024 * 1024  # RAGVQA_UI_MAX_FILE_SIZE=3mb: Gradio refuses larger uploads while receiving them
VISION_MAX = 1_000_000  # Settings.vision.max_file_bytes: our validation refuses larger files by stat
SHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
EXTERNAL = "203.0.113.7"  # TEST-NET-3: never routable, and any request to it is a failure here

XSS_CASES = [
    dict(id="xss-markup", title="<img src=x onerror=alert(1)>Fuser <script>window.__pwn='title'</script>",
         product_line="xss-lab", equipment_model="<svg onload=alert(9)>",
         symptom=("<script>alert(1);window.__pwn='symptom'</script> <svg onload=\"alert(2);window.__pwn='svg'\"></svg> "
                  f"<iframe src=\"http://{EXTERNAL}/frame\"></iframe> Display flickers."),
         cause=(f"[click me](javascript:window.__pwn='link') <a href=\"javascript:alert(3)\">js link</a> "
                f"![tracker](http://{EXTERNAL}/pixel.png)"),
         solution=[f"<img src=http://{EXTERNAL}/step.png onerror=\"window.__pwn='step'\">",
                   "<b onmouseover=alert(4)>hover</b>", "<style>body{display:none}</style>Reseat the cable."],
         tags=["<svg/onload=alert(5)>"], error_codes=["<script>E1</script>"], source="javascript:alert(6)"),
    dict(id="xss-markdown", title="[Open manual](javascript:alert(7)) ![x](https://" + EXTERNAL + "/t.png)",
         product_line="xss-lab", equipment_model="MD-1",
         symptom="<details open ontoggle=\"window.__pwn='details'\">x</details> <a href=x onclick=alert(8)>a</a>",
         solution=["<object data=\"javascript:alert(10)\"></object>", "<math><mtext><img src=x onerror=alert(11)>"]),
]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, embedder, reranker, generator) -> Iterator[Served]:
    from conftest import case_picture

    from knowledge_base.schema import CaseInput
    from rag.config import VisionBudget

    root = tmp_path_factory.mktemp("ui-security")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAGVQA_UI_MAX_FILE_SIZE", "3mb")
        s = serve_app(root, embedder, reranker, generator, vision=VisionBudget(max_file_bytes=VISION_MAX))
    for i, c in enumerate(XSS_CASES):
        p = root / "src" / f"{c['id']}.png"
        case_picture(50 + i, (150, 30 + 60 * i, 150)).save(p)
        s.services.kb.add_case(CaseInput(**c), media=[str(p)])
    s.services.invalidate_choices()
    yield s
    stop_app(s)


def snapshot(app: Served) -> tuple[int, list[str], int]:
    kb = app.services.kb
    return app.services.store.count(), sorted(c.id for c in kb.list_cases(limit=1000).cases), \
        len(list(app.services.media_root.rglob("*")))


def config(app: Served) -> dict[str, Any]:
    return httpx.get(f"{app.url}/config", timeout=10).json()


# -- 1. admin writes refused without a login, over every channel -----------------------------------------------------
WRITES = {  # elem_id of the trigger -> inputs after the token (what a form would send)
    "case-save": ["evil-case", "Injected case", "printers", "LP-500", "Injected symptom text", "", "step", "", "", "",
                  "", None],
    "admin-del-btn": ["prn-e13", True],
    "reindex-btn": [True],
    "check-btn": [True],
}


def write_triggers(cfg: dict[str, Any]) -> dict[str, int]:
    out = {}
    for elem in list(WRITES) + ["import-btn"]:
        try:
            out[elem] = fn_index_for(cfg, elem)
        except (KeyError, StopIteration):
            pass
    return out


def test_admin_writes_refused_through_gradio_client(app: Served, tmp_path: Path) -> None:
    before = snapshot(app)
    c = Client(app.url, verbose=False, download_files=False)
    triggers = write_triggers(c.config)
    assert {"case-save", "admin-del-btn"} <= set(triggers), triggers
    api = c.view_api(print_info=False, return_format="dict")
    assert not {"/save_case", "/delete_case", "/bulk_import", "/reindex", "/check"} & set(api["named_endpoints"])
    jsonl = tmp_path / "import.jsonl"
    jsonl.write_text(json.dumps({"id": "evil-import", "title": "Imported", "product_line": "printers",
                                 "symptom": "Injected by import"}) + "\n")
    c.predict("admin", "wrong password", api_name="/admin_login")  # a failed login grants nothing
    for elem, idx in triggers.items():
        c.endpoints[idx].is_valid = True
        args = [handle_file(str(jsonl))] if elem == "import-btn" else [
            handle_file(a) if isinstance(a, str) and a.endswith(".png") else a for a in WRITES[elem]]
        with pytest.raises(Exception, match="Admin login required"):
            c.predict(*args, fn_index=idx)
    assert snapshot(app) == before
    assert app.services.kb.get("evil-case") is None and app.services.kb.get("evil-import") is None


def test_admin_writes_refused_over_plain_http_even_with_a_token_in_the_payload(app: Served) -> None:
    """The token is a server-side gr.State: a value in the request body (forged, or even a genuine one minted for
    another session) is ignored, so only a login in the same session authorises."""
    before = snapshot(app)
    cfg = config(app)
    genuine = app.services.auth.login(*ADMIN)  # a valid token, as if stolen from somewhere
    assert app.services.auth.verify(genuine) == ADMIN[0]
    forged = ["x.y", genuine, {"u": "admin"}, None]
    for elem, idx in write_triggers(cfg).items():
        if elem == "import-btn":
            continue
        for token in forged:
            msg = raw_call(app.url, idx, [token, *WRITES[elem]], trigger_id=component_id(cfg, elem))
            assert msg.get("success") is False, (elem, msg)
            assert "Admin login required" in str(msg.get("output", {}).get("error")), (elem, msg)
    # the REST route by derived name: refused too (error event or no route), never a completed write
    for name, data in (("save_case", [None, *WRITES["case-save"]]), ("delete_case", [None, "prn-e13", True]),
                       ("reindex", [None, True]), ("check", [None, True]), ("bulk_import", [None, None])):
        r = httpx.post(f"{app.url}/gradio_api/call/{name}", json={"data": data}, timeout=10)
        if r.status_code == 200:
            events = httpx.get(f"{app.url}/gradio_api/call/{name}/{r.json()['event_id']}", timeout=60).text
            assert "event: complete" not in events, (name, events)
        else:
            assert r.status_code in (400, 403, 404, 405, 422), (name, r.status_code)
    assert snapshot(app) == before
    assert app.services.kb.get("prn-e13") is not None and app.services.kb.get("evil-case") is None


def browser_or_skip():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    chromium = os.environ.get("RAGVQA_CHROMIUM", "/usr/bin/chromium")
    if not Path(chromium).exists():
        pytest.skip(f"no Chromium at {chromium} (set RAGVQA_CHROMIUM)")
    return sync_api, chromium


ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(scope="module")
def browser():
    sync_api, chromium = browser_or_skip()
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=ARGS, headless=True)
        yield b
        b.close()


class Watched:
    """A page whose dialogs and requests are recorded."""

    def __init__(self, ctx, url: str) -> None:
        self.page = ctx.new_page()
        self.page.set_default_timeout(90_000)
        self.dialogs: list[str] = []
        self.requests: list[str] = []
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(url, wait_until="domcontentloaded")
        self.page.wait_for_selector("#chat-input textarea")

    def foreign_requests(self) -> list[str]:
        return [u for u in self.requests
                if urlsplit(u).scheme not in ("data", "blob", "about") and urlsplit(u).hostname not in ("127.0.0.1", "localhost")]


@pytest.mark.browser
def test_admin_ui_needs_a_login_per_tab(app: Served, browser) -> None:
    before = snapshot(app)
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        a = Watched(ctx, app.url)
        a.page.locator("button[role=tab]:has-text('Admin')").first.click()
        a.page.wait_for_selector("#admin-login-btn")
        # nothing admin-only is in the page before a login: no panel, no buttons, no case data in the config
        assert a.page.locator("#admin-panel, #case-save, #admin-del-btn, #admin-case-table").count() == 0
        assert "Injected" not in a.page.content() and "Display flickers" not in json.dumps(
            a.page.evaluate("() => window.gradio_config"))
        a.page.locator("#admin-user input, #admin-user textarea").first.fill(ADMIN[0])
        a.page.locator("#admin-password input, #admin-password textarea").first.fill(ADMIN[1])
        a.page.locator("#admin-login-btn").click()
        a.page.wait_for_selector("#admin-panel", state="visible")
        # a second tab of the same browser (same cookies) is a different session: still locked
        b = Watched(ctx, app.url)
        b.page.locator("button[role=tab]:has-text('Admin')").first.click()
        b.page.wait_for_selector("#admin-login-btn")
        assert b.page.locator("#admin-panel, #case-save, #admin-del-btn").count() == 0
        # ...and calling the delete handler from that tab's origin is refused by the server
        cfg = config(app)
        result = b.page.evaluate("""async ([idx, trig]) => {
            const sh = Math.random().toString(36).slice(2, 13);
            const r = await fetch('/gradio_api/queue/join', {method: 'POST', headers: {'Content-Type': 'application/json'},
              body: JSON.stringify({data: [null, 'prn-e13', true], fn_index: idx, session_hash: sh, event_data: null,
                                    trigger_id: trig})});
            if (!r.ok) return 'http ' + r.status;
            const s = await fetch('/gradio_api/queue/data?session_hash=' + sh);
            return await s.text(); }""", [fn_index_for(cfg, "admin-del-btn"), component_id(cfg, "admin-del-btn")])
        assert "Admin login required" in result and '"success": true' not in result.replace("\\", ""), result
        shot_path = SHOTS / "security_admin_second_tab.png"
        SHOTS.mkdir(parents=True, exist_ok=True)
        b.page.screenshot(path=str(shot_path), full_page=True)
        # logging out ends the session's rights: the panel (and its buttons) leave the page
        a.page.locator("#admin-logout").click()
        a.page.wait_for_selector("#admin-login-btn", state="visible")
        assert a.page.locator("#admin-panel").is_hidden()
        assert a.dialogs == b.dialogs == [] and a.foreign_requests() == b.foreign_requests() == []
    finally:
        ctx.close()
    assert snapshot(app) == before


# -- 2. case text with HTML/JS payloads stays inert in the browser ----------------------------------------------------
DOM_CHECK = """sel => { const out = []; for (const root of document.querySelectorAll(sel)) {
  for (const el of root.querySelectorAll('*')) {
    const tag = el.tagName.toLowerCase();
    if (['script', 'iframe', 'object', 'embed', 'svg', 'details', 'math'].includes(tag)) out.push(tag);
    if (tag === 'style' && !el.closest('svg defs')) out.push(tag);  // Gradio's icons carry <defs><style>
    for (const a of el.attributes) {
      if (a.name.startsWith('on')) out.push(tag + '[' + a.name + ']');
      if (/^\\s*javascript:/i.test(a.value)) out.push(tag + '[' + a.name + '=javascript]');
      if (['src', 'href', 'data'].includes(a.name) && /203\\.0\\.113/.test(a.value)) out.push(tag + '[external ' + a.name + ']');
    } } } return out; }"""


def assert_inert(w: Watched, where: str) -> None:
    assert w.dialogs == [], (where, w.dialogs)
    assert w.page.evaluate("() => window.__pwn") is None, where
    found = w.page.evaluate(DOM_CHECK, "#chatbot, #case-detail, #sources, #abstain-banner, #case-media, #filter-model")
    # Gradio's own icons are <svg> elements without handlers: only report svg with attributes we added
    bad = [x for x in found if x != "svg"]
    assert bad == [], (where, bad)
    assert w.foreign_requests() == [], (where, w.foreign_requests())


def open_sources(w: Watched, ids: list[str]) -> list[str]:
    page = w.page
    items = page.locator("#sources .thumbnail-item")
    opened = []
    for i in range(items.count()):
        cap = items.nth(i).inner_text()
        cid = next((x for x in ids if x in cap), None)
        if cid is None:
            continue
        items.nth(i).click()
        page.wait_for_function("id => (document.querySelector('#case-detail')?.innerText || '').includes(id)", arg=cid)
        opened.append(cid)
        assert_inert(w, f"case detail {cid}")
    return opened


@pytest.mark.browser
def test_payloads_in_cases_render_inert(app: Served, browser) -> None:
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        w = Watched(ctx, app.url)
        page = w.page
        page.locator("#filter-line input").click()
        page.get_by_role("option", name="xss-lab").click()
        page.locator("#chat-input textarea").fill("<img src=x onerror=alert('q')> [q](javascript:alert(12)) why?")
        page.locator("#chat-input [data-testid=submit-button]").click()
        page.wait_for_function("() => /Cited cases|Cases used/.test(document.querySelector('#chatbot')?.innerText || '')")
        page.wait_for_function("() => document.querySelectorAll('#sources .thumbnail-item').length >= 2")
        assert_inert(w, "answer")
        assert "<img src=x onerror=alert('q')>" in page.locator("#chatbot").inner_text()
        opened = open_sources(w, [c["id"] for c in XSS_CASES])
        assert sorted(opened) == sorted(c["id"] for c in XSS_CASES)
        detail = page.locator("#case-detail").inner_text()
        assert "<script>" in detail or "<details" in detail  # shown as text
        # the markup case's own text, shown as text
        page.locator("#sources .thumbnail-item", has_text="xss-markup").first.click()
        page.wait_for_function("() => (document.querySelector('#case-detail')?.innerText || '').includes('onmouseover')")
        page.locator("#case-detail").hover()
        page.mouse.move(300, 300)
        assert_inert(w, "hover over the case")
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "security_inert_case.png"), full_page=True)
        # retrieval-only: the abstention banner lists the same titles (HTML component)
        page.locator("#rerank input").uncheck()
        page.locator("#chat-input textarea").fill("anything similar?")
        page.locator("#chat-input [data-testid=submit-button]").click()
        page.wait_for_function("() => (document.querySelector('#abstain-banner')?.innerText || '').includes('xss-')")
        assert_inert(w, "abstention banner")
        # the equipment-model picker lists the payload model as text
        page.locator("#filter-model input").click()
        page.wait_for_selector("[role=option]")
        assert_inert(w, "model picker")
    finally:
        ctx.close()


# -- 3. upload size limits ---------------------------------------------------------------------------------------------
def test_oversized_upload_refused_while_it_is_still_arriving(app: Served) -> None:
    """Declare 256 MB, send 4 MB and stop: Gradio answers 413 without waiting for (or storing) the rest."""
    host, port = urlsplit(app.url).hostname, urlsplit(app.url).port
    boundary = "XXsecXX"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="huge.png"\r\n'
            "Content-Type: image/png\r\n\r\n").encode()
    declared = 256 * 1024 * 1024
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall((f"POST /gradio_api/upload HTTP/1.1\r\nHost: {host}:{port}\r\n"
                   f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {declared}\r\n\r\n").encode())
        s.sendall(head)
        sent = 0
        chunk = b"\x89PNG\r\n\x1a\n" + b"\0" * (64 * 1024 - 8)
        while sent < GRADIO_MAX + (1 << 20):
            s.sendall(chunk)
            sent += len(chunk)
        s.settimeout(30)
        reply = b""
        while b"\r\n\r\n" not in reply or b"maximum" not in reply:
            part = s.recv(65536)
            if not part:
                break
            reply += part
    status = reply.split(b"\r\n", 1)[0]
    assert b" 413 " in status, reply[:300]
    assert b"File size exceeded maximum allowed size of 3145728 bytes" in reply
    assert sent < declared // 50, "the reply came while most of the declared body was never sent"


def test_oversized_upload_refused_through_gradio_client(app: Served, tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    Image.fromarray((np.random.RandomState(0).rand(1200, 1200, 3) * 255).astype("uint8")).save(big)
    assert big.stat().st_size > GRADIO_MAX
    c = Client(app.url, verbose=False, download_files=False)
    with pytest.raises(Exception, match="413|exceeded|maximum"):
        c.predict({"text": "what is this?", "files": [handle_file(str(big))]}, [], "", "", True, 1, None,
                  api_name="/chat")


def test_upload_over_the_validation_limit_gets_a_clear_message(app: Served, tmp_path: Path) -> None:
    """Accepted by Gradio (< 3 MB) but over Settings.vision.max_file_bytes: refused by stat, with the sizes."""
    mid = tmp_path / "mid.png"
    Image.fromarray((np.random.RandomState(1).rand(700, 700, 3) * 255).astype("uint8")).save(mid)
    assert VISION_MAX < mid.stat().st_size < GRADIO_MAX
    c = Client(app.url, verbose=False, download_files=False)
    out = c.predict({"text": "what is this?", "files": [handle_file(str(mid))]}, [], "", "", True, 1, None,
                    api_name="/chat")
    reply = str(out[0][-1]["content"])
    assert "file is 1." in reply and "the limit is 1 MB" in reply and "mid.png" in reply, reply
    assert str(tmp_path) not in reply and "/gradio" not in reply


def test_size_check_reads_nothing_of_a_huge_file(app: Served) -> None:
    """A 20 GB (sparse) upload in the upload folder is refused from its size alone, in milliseconds."""
    from ui.upload import UploadError, prepare_uploads

    huge = app.services.upload_dir / f"huge-{uuid.uuid4().hex}.png"
    with open(huge, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.truncate(20 * 1024**3)
    try:
        t0 = time.perf_counter()
        with pytest.raises(UploadError, match="the limit is 1 MB"):
            prepare_uploads([str(huge)], pdf_page=1, out_dir=app.services.upload_dir, budget=app.services.settings.vision)
        assert time.perf_counter() - t0 < 1.0
    finally:
        huge.unlink()


# -- 4. user-given paths ------------------------------------------------------------------------------------------------
def test_chat_api_refuses_server_paths(app: Served, tmp_path: Path) -> None:
    cfg = config(app)
    chat_idx = next(d["id"] for d in cfg["dependencies"] if d.get("api_name") == "chat")
    outside = tmp_path / "outside.png"
    Image.open(next(iter(app.images.values()))).save(outside)
    data_file = app.services.data_dir / "feedback.sqlite3"
    media_file = next(p for p in app.services.media_root.rglob("*") if p.is_file())
    upload_dir = Path(os.environ.get("GRADIO_TEMP_DIR") or (Path(os.environ.get("TMPDIR", "/tmp")) / "gradio"))
    for path in ("/etc/passwd", str(outside), str(data_file), str(media_file), f"{upload_dir}/../../etc/passwd"):
        file = {"path": path, "meta": {"_type": "gradio.FileData"}, "orig_name": Path(path).name}
        before = len(app.services.feedback.latest(limit=1000))
        msg = raw_call(app.url, chat_idx, [{"text": "read this", "files": [file]}, [], "", "", True, 1, None])
        text = json.dumps(msg)
        assert msg.get("success") is False, (path, text[:500])
        assert "root:x:0:0" not in text and "SQLite format" not in text
        assert len(app.services.feedback.latest(limit=1000)) == before
    # the same through the crop editor input
    file = {"path": str(outside), "meta": {"_type": "gradio.FileData"}}
    msg = raw_call(app.url, chat_idx, [{"text": "crop", "files": []}, [], "", "", True, 1,
                                       {"background": file, "layers": [], "composite": file}])
    assert msg.get("success") is False, json.dumps(msg)[:500]


def test_file_route_serves_only_media(app: Served) -> None:
    base = f"{app.url}/gradio_api/file="
    assert httpx.get(base + "/etc/passwd", timeout=10).status_code in (403, 404)
    for p in [app.services.data_dir / "feedback.sqlite3", *sorted(app.services.data_dir.rglob("*.json"))[:3]]:
        assert httpx.get(base + str(p), timeout=10).status_code in (403, 404), p
    assert httpx.get(base + str(app.services.media_root / ".." / "feedback.sqlite3"), timeout=10).status_code in (403, 404)
    media_file = next(p for p in app.services.media_root.rglob("*") if p.is_file())
    assert httpx.get(base + str(media_file), timeout=10).status_code == 200  # case media are served on purpose


def test_chat_handler_itself_refuses_paths_outside_the_upload_folders(app: Served, tmp_path: Path) -> None:
    """Defence in depth: even if a path got past Gradio, the handler uses only files in Gradio's upload folder or
    the app's own upload dir."""
    from ui.chat import ChatTab

    outside = tmp_path / "outside.png"
    Image.open(next(iter(app.images.values()))).save(outside)
    media_file = next(p for p in app.services.media_root.rglob("*.png"))
    tab = ChatTab(app.services)
    for path in ("/etc/passwd", str(outside), str(media_file), str(app.services.upload_dir / ".." / "feedback.sqlite3")):
        outs = list(tab.respond({"text": "read this", "files": [path]}, [], [], {}, "", "", True, 1, None))
        reply = outs[-1].history[-1]["content"]
        assert reply.startswith("⚠️") and "not accepted" in reply, (path, reply)
        assert str(Path(path).parent) not in reply
        assert outs[-1].media_state == {}, "nothing from the refused path reached the conversation state"
    # a file in the app's upload dir (rendered PDF pages, crops) is fine
    ok = app.services.upload_dir / "ok.png"
    Image.open(next(iter(app.images.values()))).save(ok)
    outs = list(tab.respond({"text": "what is it?", "files": [str(ok)]}, [], [], {}, "", "", True, 1, None))
    assert outs[-1].media_state == {"images": [str(ok)], "video": None}


def test_crop_editor_input_is_confined_to_the_upload_folders(app: Served, tmp_path: Path) -> None:
    """The crop editor's composite/background given as a path: one outside the upload folders is refused with a clear
    message before it is opened; one in the app's upload dir is used as the query image."""
    from ui.chat import ChatTab

    outside = tmp_path / "outside.png"
    Image.open(next(iter(app.images.values()))).save(outside)
    tab = ChatTab(app.services)
    for value in ({"background": str(outside), "layers": [], "composite": str(outside)},
                  {"background": str(outside), "layers": [], "composite": None},
                  {"composite": {"path": str(outside)}}):
        outs = list(tab.respond({"text": "what is in the crop?", "files": []}, [], [], {}, "", "", True, 1, value))
        reply = outs[-1].history[-1]["content"]
        assert reply.startswith("⚠️") and "image to crop is not accepted" in reply, (value, reply)
        assert str(tmp_path) not in reply
        assert outs[-1].media_state == {}, "nothing from the refused path reached the conversation state"
    inside = app.services.upload_dir / "crop-source.png"
    Image.open(next(iter(app.images.values()))).save(inside)
    outs = list(tab.respond({"text": "what is in the crop?", "files": []}, [], [], {}, "", "", True, 1,
                            {"background": str(inside), "layers": [], "composite": str(inside)}))
    assert "query image: the cropped region" in outs[-1].timings


def test_inert_markdown_has_no_autolinks() -> None:
    """Bare URLs in case text or model output must not become links in the chat's Markdown (GFM autolinks)."""
    from ui.show import inert_md

    md = inert_md(f"see https://{EXTERNAL}/t.png or www.example.com, mail ops@example.com ![x](http://{EXTERNAL}/p)")
    assert "://" not in md and "www." not in md and "@" not in md and "](" not in md
    assert html_unescape(md) == f"see https://{EXTERNAL}/t.png or www.example.com, mail ops@example.com ![x](http://{EXTERNAL}/p)"


def html_unescape(s: str) -> str:
    import html

    return html.unescape(s)
