"""Many users at once against one served app (tiny models, real Qdrant Edge store, real Gradio queue).

* 16 gradio_client sessions, each with its own photo, product-line filter and question, all complete; each gets
  back exactly the sources the pipeline retrieves for its own query alone, cites only those, and its follow-up
  reuses its own photo (per-session ``gr.State``: no cross-talk).
* The queue limits come from the settings (``RAGVQA_UI_CONCURRENCY_LIMIT`` / ``RAGVQA_UI_QUEUE_MAX_SIZE``): while
  the model slots are busy, requests wait with a queue rank, the UI shows the waiting state, and a request beyond
  the queue size is refused with "queue is full".

How the slots are held without mocking anything: admin saves share the chat's ``models`` concurrency group, and the
test holds the knowledge base's write lock, so two real admin saves occupy both slots until the test releases it.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from conftest import case_picture
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.utils import QueueError, Status  # noqa: E402
from PIL import Image
from ui_helpers import ADMIN, Served, fn_index_for, serve_app, stop_app

pytestmark = pytest.mark.slow

N_SESSIONS = 16
CONCURRENCY = 2
QUEUE_MAX = 16
LINES = ["line-a", "line-b", "line-c", "line-d"]
SHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
JOB_TIMEOUT = 180


def session_case(i: int) -> str:
    return f"unit-{i:02d}"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, embedder, reranker, generator) -> Iterator[Served]:
    from knowledge_base.schema import CaseInput

    root = tmp_path_factory.mktemp("ui-concurrency")
    with pytest.MonkeyPatch.context() as mp:  # the limits reach the app through the documented settings
        mp.setenv("RAGVQA_UI_CONCURRENCY_LIMIT", str(CONCURRENCY))
        mp.setenv("RAGVQA_UI_QUEUE_MAX_SIZE", str(QUEUE_MAX))
        s = serve_app(root, embedder, reranker, generator)
    # One case per session, four per product line, each with its own picture.
    for i in range(N_SESSIONS):
        p = root / "src" / f"{session_case(i)}.png"
        case_picture(100 + i, (20 + 14 * i, 230 - 12 * i, (60 * i) % 256)).save(p)
        s.images[session_case(i)] = p
        s.services.kb.add_case(CaseInput(id=session_case(i), title=f"Unit {i} fault", product_line=LINES[i % 4],
                                         equipment_model=f"U-{i}", symptom=f"Unit {i} shows fault code F{i}.",
                                         solution=["Reset the unit.", "Replace the board."]), media=[str(p)])
    s.services.invalidate_choices()
    yield s
    stop_app(s)


def client(app: Served) -> Client:
    return Client(app.url, verbose=False, download_files=False)


def photo(app: Served, i: int, tmp: Path) -> str:
    """Session i's phone photo of its unit (resized, JPEG re-encoded)."""
    p = tmp / f"session-{i:02d}.jpg"
    if not p.exists():
        Image.open(app.images[session_case(i)]).resize((200, 150)).save(p, quality=80)
    return str(p)


def question(i: int, turn: int = 1) -> str:
    return f"session {i}: what is wrong with this unit?" if turn == 1 else f"session {i}: how long does the fix take?"


def submit_chat(c: Client, i: int, files: list[str], turn: int = 1):
    msg = {"text": question(i, turn), "files": [handle_file(f) for f in files]}
    return c.submit(msg, [], LINES[i % 4], "", True, 1, None, api_name="/chat")


def text_of(msg: dict) -> str:
    c = msg["content"]
    return " ".join(x.get("text", "") for x in c if isinstance(x, dict)) if isinstance(c, list) else str(c)


def source_ids(gallery: list[dict]) -> list[str]:
    out = []
    for g in gallery:
        m = re.search(r"\[([\w.-]+)\] · -?[\d.]+$", g["caption"])
        assert m, g["caption"]
        out.append(m.group(1))
    return out


def footer_ids(answer: str) -> list[str]:
    """Case ids in the answer's "Cited cases"/"Cases used" footer (citations are HTML entities: inert Markdown)."""
    m = re.search(r"\*\*(Cited cases|Cases used):\*\*\n(.*)$", answer, re.S)
    assert m, answer
    return re.findall(r"^- &#91;([\w.-]+)&#93;", m.group(2), re.M)


def reference_ids(app: Served, i: int, turn: int, tmp: Path) -> list[str]:
    """What the pipeline retrieves for session i's query alone (same photo, filter, question, reranked)."""
    from rag.pipeline import Query

    q = Query(text=question(i, turn), images=[photo(app, i, tmp)], filters={"product_line": LINES[i % 4]}, rerank=True)
    cases, reranked = app.services.pipeline.retrieve(q)
    assert reranked
    return [c.case_id for c in cases]


@contextlib.contextmanager
def slots_held(app: Served, tag: str) -> Iterator[None]:
    """Occupy every ``models`` slot with a real admin save that waits on the KB write lock held here."""
    admin = client(app)
    admin.predict(*ADMIN, api_name="/admin_login")
    idx = fn_index_for(admin.config, "case-save")
    admin.endpoints[idx].is_valid = True  # a private endpoint: the logged-in session may call it
    lock = app.services.kb._lock
    lock.acquire()
    jobs = []
    try:
        for k in range(CONCURRENCY):
            jobs.append(admin.submit(f"hold-{tag}-{k}", f"Slot holder {tag} {k}", "zz-hold", "", "Holds a model slot.",
                                     "", "Nothing to do.", "", "", "", "", None, fn_index=idx))
        wait_until(lambda: all(j.status().code == Status.PROGRESS for j in jobs), 60, "admin saves hold the slots")
        queue = app.demo._queue.event_queue_per_concurrency_id["models"]
        assert queue.current_concurrency == CONCURRENCY
        yield
    finally:
        lock.release()
    for j in jobs:
        assert "Added case" in j.result(timeout=JOB_TIMEOUT)[1]


def wait_until(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


def test_queue_limits_come_from_settings(app: Served) -> None:
    assert app.services.ui.concurrency_limit == CONCURRENCY and app.services.ui.queue_max_size == QUEUE_MAX
    assert app.demo._queue.max_size == QUEUE_MAX
    chat_fn = next(fn for fn in app.demo.fns.values() if fn.api_name == "chat")
    assert chat_fn.concurrency_id == "models" and chat_fn.concurrency_limit == CONCURRENCY


def test_sessions_wait_in_queue_are_refused_when_full_then_all_get_their_own_answers(app: Served, tmp_path: Path) -> None:
    refs = {i: reference_ids(app, i, 1, tmp_path) for i in range(N_SESSIONS)}
    assert len({tuple(r) for r in refs.values()}) > 4, "queries must differ for cross-talk to be visible"
    with ThreadPoolExecutor(N_SESSIONS) as pool:
        clients = list(pool.map(lambda _: client(app), range(N_SESSIONS)))
    with slots_held(app, "api"):
        with ThreadPoolExecutor(N_SESSIONS) as pool:  # 16 sessions submit at the same moment
            jobs = list(pool.map(lambda i: submit_chat(clients[i], i, [photo(app, i, tmp_path)]), range(N_SESSIONS)))
        wait_until(lambda: all(j.status().code == Status.IN_QUEUE for j in jobs), 60, "all sessions are queued")
        statuses = [j.status() for j in jobs]
        assert sorted(s.rank for s in statuses) == list(range(N_SESSIONS)), [s.rank for s in statuses]
        assert all(s.queue_size and s.queue_size >= s.rank + 1 for s in statuses)
        assert len(app.demo._queue) == QUEUE_MAX

        # one more: refused over plain HTTP (503 + reason) and through gradio_client
        cfg = clients[0].config
        chat_idx = next(d["id"] for d in cfg["dependencies"] if d.get("api_name") == "chat")
        r = httpx.post(f"{app.url}/gradio_api/queue/join", timeout=10, json={
            "data": [{"text": "one too many", "files": []}, [], "", "", True, 1, None], "fn_index": chat_idx,
            "session_hash": uuid.uuid4().hex[:11], "event_data": None, "trigger_id": None})
        assert r.status_code == 503, r.text
        assert "Queue is full" in r.json()["detail"] and f"Max size is {QUEUE_MAX}" in r.json()["detail"]
        late = client(app)
        with pytest.raises(QueueError, match="Queue is full"):
            late.predict({"text": "one too many", "files": []}, [], "", "", True, 1, None, api_name="/chat")
        assert all(j.status().code == Status.IN_QUEUE for j in jobs), "nothing ran while the slots were held"

    t0 = time.perf_counter()
    results = [j.result(timeout=JOB_TIMEOUT) for j in jobs]
    elapsed = time.perf_counter() - t0
    for i, out in enumerate(results):
        history, _msg, gallery, _detail, banner, timings, _crop, _fb = out
        got = source_ids(gallery)
        assert got == refs[i], f"session {i}: sources {got} != its own retrieval {refs[i]}"
        answer = text_of(history[-1])
        assert set(footer_ids(answer)) <= set(got), f"session {i} cites a case it did not retrieve: {answer}"
        asked = [t for m in history if m["role"] == "user" and (t := text_of(m).strip())]
        assert asked == [question(i)], f"session {i} history holds another session's turn: {asked}"
        assert "follow-up" not in timings and banner.get("visible") is False
    print(f"\n{N_SESSIONS} queued sessions answered in {elapsed:.1f} s after the slots were freed")

    # Follow-ups, all at once with nothing held: the server runs CONCURRENCY at a time, each session reuses its
    # own photo from its own server-side state and carries its own earlier cases.
    seen = {"max_running": 0}
    stop = threading.Event()
    models_q = app.demo._queue.event_queue_per_concurrency_id["models"]

    def sample() -> None:
        while not stop.is_set():
            seen["max_running"] = max(seen["max_running"], models_q.current_concurrency)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    refs2 = {i: reference_ids(app, i, 2, tmp_path) for i in range(N_SESSIONS)}
    with ThreadPoolExecutor(N_SESSIONS) as pool:
        follow = list(pool.map(lambda i: submit_chat(clients[i], i, [], turn=2), range(N_SESSIONS)))
    results2 = [j.result(timeout=JOB_TIMEOUT) for j in follow]
    stop.set()
    sampler.join()
    assert seen["max_running"] == CONCURRENCY, seen
    for i, (first, out) in enumerate(zip(results, results2, strict=False)):
        history, _msg, gallery, _detail, _banner, timings, _crop, _fb = out
        assert "reuses the media of the earlier message" in timings and "follow-up: 1 earlier turn" in timings
        carried = [c for c in footer_ids(text_of(first[0][-1])) if c not in refs2[i]][:3]
        assert source_ids(gallery) == refs2[i] + carried, f"session {i} follow-up used another session's state"
        assert set(footer_ids(text_of(history[-1]))) <= set(source_ids(gallery))


@pytest.mark.browser
def test_browser_shows_queue_position_and_queue_full(app: Served, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    chromium = os.environ.get("RAGVQA_CHROMIUM", "/usr/bin/chromium")
    if not Path(chromium).exists():
        pytest.skip(f"no Chromium at {chromium}")
    args = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
    # Visible = rendered and not faded out by an ancestor (Gradio's hidden progress is opacity 0, which Playwright
    # still counts as visible).
    shown_js = """sel => { const el = document.querySelector(sel); if (!el || !el.getClientRects().length) return '';
        for (let e = el; e; e = e.parentElement) { const s = getComputedStyle(e);
          if (s.opacity === '0' || s.visibility === 'hidden' || s.display === 'none') return ''; }
        return el.innerText; }"""
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=args, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(90_000)
            page.goto(app.url, wait_until="domcontentloaded")
            page.wait_for_selector("#chat-input textarea")
            with slots_held(app, "ui"):
                page.locator("#chat-input textarea").fill("session ui: is anyone there?")
                page.locator("#chat-input [data-testid=submit-button]").click()
                page.wait_for_function(f"() => /queue: 1\\/1/.test(({shown_js})('#chatbot .progress-text'))")
                SHOTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(SHOTS / "queue_waiting.png"), full_page=True)
                # fill the rest of the queue, then a second browser tab is refused with a clear message
                fillers = [client(app).submit({"text": f"filler {k}", "files": []}, [], "", "", True, 1, None,
                                              api_name="/chat") for k in range(QUEUE_MAX - 1)]
                wait_until(lambda: len(app.demo._queue) == QUEUE_MAX, 60, "the queue is full")
                page2 = browser.new_page(viewport={"width": 1400, "height": 1000})
                page2.goto(app.url, wait_until="domcontentloaded")
                page2.wait_for_selector("#chat-input textarea")
                page2.locator("#chat-input textarea").fill("one too many")
                page2.locator("#chat-input [data-testid=submit-button]").click()
                page2.get_by_text("This application is currently busy").first.wait_for()
                page2.screenshot(path=str(SHOTS / "queue_full.png"), full_page=True)
            page.wait_for_function("() => /Cited cases|Cases used|No similar case was found/"
                                   ".test(document.querySelector('#chatbot')?.innerText || '')")
            for f in fillers:
                f.result(timeout=JOB_TIMEOUT)
        finally:
            browser.close()
