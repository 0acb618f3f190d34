"""The served Gradio app end to end through its API: gradio_client and raw HTTP, tiny models, real Edge store + KB.

Thresholds make both answer paths deterministic with random weights: reranked queries never abstain (threshold
0), retrieval-only queries (Rerank unticked) always do (threshold above any cosine).
"""

from __future__ import annotations

import io
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Sequence

import httpx
import pytest
from gradio_client import Client, handle_file  # noqa: E402
from PIL import Image
from ui_helpers import ADMIN, RecordingGenerator, Served, component_id, fn_index_for, raw_call, serve_app, stop_app


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, embedder, reranker, generator) -> Served:
    # the real generator behind a pass-through spy: tests read the prompt it was given
    s = serve_app(tmp_path_factory.mktemp("ui-api"), embedder, reranker, RecordingGenerator(generator))
    yield s
    stop_app(s)


@pytest.fixture()
def client(app: Served) -> Client:
    return Client(app.url, verbose=False, download_files=False)


def photo_of(app: Served, case_id: str, tmp_path: Path) -> str:
    """The case's picture resized and JPEG re-encoded, as a user's phone photo would arrive."""
    img = Image.open(app.images[case_id]).resize((240, 180))
    p = tmp_path / f"photo-{case_id}.jpg"
    img.save(p, quality=75)
    return str(p)


def chat(client: Client, text: str, files: list[str] = (), *, rerank: bool = True, line: str = "", model: str = "",
         page: int = 1) -> tuple[list[tuple], tuple]:
    """Submit one message; returns (every streamed update, final outputs)."""
    job = client.submit({"text": text, "files": [handle_file(f) for f in files]}, [], line, model, rerank, page, None,
                        api_name="/chat")
    updates = list(job)
    return updates, job.result()


def text_of(msg: dict) -> str:
    c = msg["content"]
    return " ".join(x.get("text", "") for x in c) if isinstance(c, list) else str(c)


def served_pixels(url: str):
    """The image the browser would get for a gallery tile, decoded."""
    import numpy as np

    r = httpx.get(url, timeout=30)
    assert r.status_code == 200, url
    return np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))


@pytest.mark.parametrize("every_chunk", [False, True])
def test_image_question_streams_answer_and_sources(app: Served, client: Client, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch, every_chunk: bool) -> None:
    """``every_chunk``: a render after every chunk, as on a machine so loaded that chunks come >50 ms apart; the last
    partial is then the whole answer (before this case was tested, it made the test flaky under load)."""
    import functools

    import numpy as np

    import ui.chat
    from rag.models.query_image import load_query_image
    from rag.pipeline import Query
    from rag.pipeline.render import StreamRenderer

    photo = photo_of(app, "prn-e13", tmp_path)
    # Long enough to stream: 48 tokens (end-of-sequence suppressed), each decoding step slowed to 20 ms so several
    # renders (at most one per 50 ms) happen while the answer is written.
    gen = app.services.pipeline.generate_stage.generator
    cfg, stage = gen.model.generation_config, app.services.pipeline.generate_stage
    saved = (cfg.min_new_tokens, stage.max_new_tokens)
    cfg.min_new_tokens, stage.max_new_tokens = 48, 48
    handle = gen.model.register_forward_pre_hook(lambda *_: time.sleep(0.02))
    if every_chunk:
        monkeypatch.setattr(ui.chat, "StreamRenderer", functools.partial(StreamRenderer, interval=0.0))
    try:
        updates, out = chat(client, "What is wrong and how do I fix it?", [photo])
    finally:
        handle.remove()
        cfg.min_new_tokens, stage.max_new_tokens = saved
    history, _msg, gallery, detail, banner, timings, _crop, _fb = out
    roles = [m["role"] for m in history]
    assert roles[-1] == "assistant" and "user" in roles
    answer = text_of(history[-1])
    assert "Cited cases" in answer or "Cases used" in answer
    # streaming: several distinct partial answers, each a growing prefix of the final one
    partials: list[str] = []
    for u in updates:
        msgs = u[0] if isinstance(u, (list, tuple)) else []
        last = text_of(msgs[-1]) if msgs and msgs[-1]["role"] == "assistant" else ""
        if last and not last.startswith("_") and "**Cited cases" not in last and "**Cases used" not in last:
            if not partials or partials[-1] != last:
                partials.append(last)
    assert len(partials) >= 3, f"expected several partial answers while streaming, got {len(partials)}"
    body = answer.split("\n\n**Cited cases")[0].split("\n\n**Cases used")[0]
    for a, b in zip(partials, partials[1:], strict=False):
        assert b.startswith(a) and len(b) > len(a), (a, b)
    assert body.startswith(partials[-1]), (partials[-1], body)  # the last partial may already be the whole answer
    assert any(isinstance(m["content"], list) and any(x.get("type") == "file" for x in m["content"]) for m in history)
    # every source tile: the case's own stored thumbnail (not the placeholder) and the case's score
    assert len(gallery) == len(app.services.kb.list_cases().cases)
    q = Query(text="What is wrong and how do I fix it?", images=[load_query_image(photo, app.services.settings.vision)],
              rerank=True)
    cases, reranked = app.services.pipeline.retrieve(q)
    assert reranked
    scores = {c.case_id: c.score for c in cases}
    for g in gallery:
        cid = re.search(r"\[([\w.-]+)\] · (-?[\d.]+)$", g["caption"])
        assert cid, g["caption"]
        case_id, shown = cid.group(1), float(cid.group(2))
        assert abs(shown - scores[case_id]) <= 0.005 + 1e-9, (case_id, shown, scores[case_id])
        thumb = app.services.kb.get(case_id).media[0].thumbnail
        assert thumb, f"{case_id} has a stored thumbnail"
        expected = np.asarray(Image.open(app.services.media_root / thumb).convert("RGB"))
        got = served_pixels(g["image"]["url"])
        assert got.shape == expected.shape and np.array_equal(got, expected), f"tile of {case_id} is not its thumbnail"
        assert got.reshape(-1, 3).std(axis=0).max() > 5, f"tile of {case_id} is a flat placeholder"
    assert any("[prn-e13]" in g["caption"] for g in gallery)
    assert "| search |" in timings and "| embed |" in timings and "generate" in timings
    assert banner.get("visible") is False


class ScriptedGenerator:
    """Stand-in for the generator on the citation path only: the tiny random model never writes ``[case-id]``, so
    citations could not be tested end to end with it. It has the generator's interface (stream/generate/
    count_tokens, cancel honoured) and writes SCRIPT word by word; embedder, reranker, store, pipeline and Gradio
    stay real."""

    def __init__(self, script: str) -> None:
        self.script = script
        self.calls: list[list[dict[str, Any]]] = []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def generate(self, messages: Sequence[dict[str, Any]], max_new_tokens: int = 512, temperature: float = 0.0,
                 top_p: float = 0.9, stop: Sequence[str] | None = None) -> str:
        return "".join(self.stream(messages, max_new_tokens, temperature, top_p, stop))

    def stream(self, messages: Sequence[dict[str, Any]], max_new_tokens: int = 512, temperature: float = 0.0,
               top_p: float = 0.9, stop: Sequence[str] | None = None,
               cancel: threading.Event | None = None) -> Iterator[str]:
        self.calls.append(list(messages))
        for word in re.findall(r"\S+\s*", self.script)[:max_new_tokens]:
            if cancel is not None and cancel.is_set():
                return
            yield word


#: Cites a case of the context (prn-e13), one outside the filtered context (hvac-f3) and one that does not exist.
SCRIPT = "The fuser thermistor failed [prn-e13]. Replace it. This is not [hvac-f3] nor [no-such-case]."


@pytest.fixture(scope="module")
def cite_app(tmp_path_factory: pytest.TempPathFactory, embedder, reranker) -> Served:
    s = serve_app(tmp_path_factory.mktemp("ui-cite"), embedder, reranker, ScriptedGenerator(SCRIPT), max_new_tokens=64)
    yield s
    stop_app(s)


def test_citations_end_to_end_from_generated_text_to_answer_and_footer(cite_app: Served) -> None:
    from rag.pipeline import Query

    c = Client(cite_app.url, verbose=False, download_files=False)
    _, out = chat(c, "printer shows E13", line="printers")
    history, _msg, gallery, *_ = out
    answer = text_of(history[-1])
    # the generated text reaches the chat (inert: brackets as entities), then the footer lists only real citations
    assert "The fuser thermistor failed &#91;prn-e13&#93;" in answer
    footer = re.search(r"\*\*(Cited cases|Cases used):\*\*\n(.*)$", answer, re.S)
    assert footer and footer.group(1) == "Cited cases", answer
    assert re.findall(r"^- &#91;([\w.-]+)&#93; (.*)$", footer.group(2), re.M) == [("prn-e13", "Fuser error E13 on laser printer")]
    starred = [g["caption"] for g in gallery if g["caption"].startswith("★ ")]
    assert len(starred) == 1 and "[prn-e13]" in starred[0]
    assert all("[hvac-f3]" not in g["caption"] for g in gallery)
    # Answer.cited from the pipeline itself, and the feedback record of the chat's answer
    ans = cite_app.services.pipeline.answer(Query(text="printer shows E13", filters={"product_line": "printers"}))
    assert not ans.abstained and ans.text == SCRIPT and ans.cited == ["prn-e13"]
    c.predict("", api_name="/feedback_up")
    assert cite_app.services.feedback.latest(limit=1)[0]["cited"] == ["prn-e13"]


def test_abstention_is_shown_distinctly(app: Served, client: Client) -> None:
    _, out = chat(client, "The coffee machine grinds loudly", rerank=False)
    history, _msg, gallery, _detail, banner, _timings, _crop, _fb = out
    assert banner["visible"] is True
    assert "No similar case found — possibly related:" in banner["value"]
    assert text_of(history[-1]).startswith("No similar case was found")
    assert "Cited cases" not in text_of(history[-1])
    assert gallery, "possibly related cases are still shown with thumbnails"


def reference_ids(messages: list[dict], known: list[str]) -> list[str]:
    """Case ids inside the reference block of the last user message the generator received."""
    content = messages[-1]["content"]
    text = " ".join(c.get("text", "") for c in content if c.get("type") == "text") if isinstance(content, list) else content
    block = text[text.index("<reference_cases>"):text.rindex("</reference_cases>")]
    return [cid for cid in known if f"[{cid}]" in block]


def test_abstained_turn_hands_no_cases_to_the_follow_up(app: Served, client: Client) -> None:
    """Turn 1 abstains (retrieval only, threshold above any cosine) and lists "possibly related" cases; turn 2 is
    answered (reranked, hvac filter): the generator's reference block holds only turn 2's own case."""
    known = sorted(app.images)
    _, first = chat(client, "The coffee machine grinds loudly", rerank=False)
    assert first[4]["visible"] is True, "turn 1 must abstain"
    related = [cid for cid in known if any(f"[{cid}]" in g["caption"] for g in first[2])]
    assert set(related) - {"hvac-f3"}, "turn 1 lists possibly related cases from other product lines"
    spy: RecordingGenerator = app.services.pipeline.generate_stage.generator
    n_calls = len(spy.calls)
    _, second = chat(client, "unit trips", line="hvac")
    assert "follow-up: 1 earlier turn" in second[5] and second[4].get("visible") is False
    assert len(spy.calls) == n_calls + 1, "turn 2 was generated"
    assert reference_ids(spy.calls[-1], known) == ["hvac-f3"]
    assert [g["caption"] for g in second[2]] and all("[hvac-f3]" in g["caption"] for g in second[2])


def test_filters_restrict_sources_and_unmatched_filter_abstains(app: Served, client: Client) -> None:
    _, out = chat(client, "unit trips", line="hvac")
    assert [g["caption"] for g in out[2]] and all("[hvac-f3]" in g["caption"] for g in out[2])
    _, out = chat(client, "unit trips", line="hvac", model="LP-500")
    assert out[4]["visible"] is True and "No case matches the current filters" in out[4]["value"]


def test_multi_turn_reuses_media_and_history(app: Served, client: Client, tmp_path: Path) -> None:
    _, first = chat(client, "What is this fault?", [photo_of(app, "pump-seal", tmp_path)])
    _, second = chat(client, "And how long does the repair take?")
    history, timings = second[0], second[5]
    assert "reuses the media of the earlier message" in timings
    assert "follow-up: 1 earlier turn" in timings
    assert [m["role"] for m in history].count("assistant") == 1  # the chatbot input was [] in this API call
    # a fresh client is a fresh conversation
    fresh = Client(app.url, verbose=False, download_files=False)
    _, third = chat(fresh, "And how long does the repair take?")
    assert "reuses the media" not in third[5] and "follow-up" not in third[5]


def test_feedback_is_recorded_with_query_answer_and_scores(app: Served, client: Client, tmp_path: Path) -> None:
    status, _ = client.predict("", api_name="/feedback_up")
    assert "Ask a question first" in status
    _, out = chat(client, "printer shows E13", [photo_of(app, "prn-e13", tmp_path)])
    status, comment = client.predict("spot on", api_name="/feedback_down")
    assert "recorded" in status and comment == ""
    rec = app.services.feedback.latest(limit=1)[0]
    assert rec["rating"] == -1 and rec["comment"] == "spot on" and rec["question"] == "printer shows E13"
    assert rec["answer"] and rec["cases"] and {"case_id", "score", "retrieval_score", "rerank_score"} <= set(rec["cases"][0])
    assert rec["media"] == ["photo-prn-e13.jpg"]


def test_bad_uploads_get_a_clear_message(app: Served, client: Client, tmp_path: Path) -> None:
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 50)
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a photo")
    pdf = tmp_path / "manual.pdf"
    _one_page_pdf(pdf)
    for path, expected in ((corrupt, "cannot be used as an image"), (text, "not a supported file"),
                           (pdf, "has 1 page; page 3 does not exist")):
        _, out = chat(client, "what is this?", [str(path)], page=3)
        reply = text_of(out[0][-1])
        assert expected in reply, reply
        assert "Traceback" not in reply and str(tmp_path) not in reply


class Raising:
    """Pass-through wrapper around a real object (embedder, knowledge base) whose method ``method`` raises ``error``;
    every other attribute delegates to the wrapped object."""

    def __init__(self, inner: Any, method: str, error: Exception) -> None:
        self.inner, self.method, self.error = inner, method, error

    def _raise(self, *args: Any, **kwargs: Any) -> Any:
        raise self.error

    def __getattr__(self, name: str) -> Any:
        return self._raise if name == self.method else getattr(self.inner, name)


SERVER_ERROR = re.compile(r"Something went wrong on the server \(reference [0-9a-f]{8}\)")


def test_error_inside_the_pipeline_is_a_server_error_unless_it_is_the_users(app: Served, client: Client) -> None:
    """Only the UserInputError branch is shown as the user's fault. A bare ValueError from deep code (here: the real
    embedder asked for a Matryoshka size it cannot give, a bad internal state) is a server error: a reference id,
    not its message."""
    from rag.models.embedder import EmbeddingError

    stage = app.services.pipeline.retrieve_stage
    saved_dim = stage.dim
    stage.dim = 32  # below the 64-dim Matryoshka minimum: mrl_truncate raises a bare ValueError
    try:
        _, out = chat(client, "The printer shows E13")
    finally:
        stage.dim = saved_dim
    reply = text_of(out[0][-1])
    assert SERVER_ERROR.search(reply), reply
    assert "dim must be between" not in reply

    saved_embedder = stage.embedder
    stage.embedder = Raising(saved_embedder, "embed", EmbeddingError("query: the photo is blank, retake it"))
    try:
        _, out = chat(client, "The printer shows E13")
    finally:
        stage.embedder = saved_embedder
    reply = text_of(out[0][-1])
    assert reply == "⚠️ query: the photo is blank, retake it", reply
    _, out = chat(client, "The printer shows E13")  # the app is fine again afterwards
    assert not text_of(out[0][-1]).startswith("⚠️")


def test_admin_errors_user_message_or_server_reference(app: Served) -> None:
    """Admin handlers: a bare ValueError from deep code is a server error with a reference id (its message is not
    shown); a UserInputError shows its message."""
    from rag.validation import InputRejected

    c, idx = admin_client(app)
    saved = app.services.kb
    try:
        app.services.kb = Raising(saved, "near_duplicates", ValueError("index 7 is out of bounds for axis 0"))
        with pytest.raises(Exception) as info:
            c.predict(0.95, fn_index=idx["dup-btn"])
        assert SERVER_ERROR.search(str(info.value)), str(info.value)
        assert "out of bounds" not in str(info.value)
        app.services.kb = Raising(saved, "near_duplicates", InputRejected("bad_threshold", "threshold must be in (0, 1]"))
        with pytest.raises(Exception, match=r"threshold must be in \(0, 1\]"):
            c.predict(0.95, fn_index=idx["dup-btn"])
    finally:
        app.services.kb = saved


def test_new_conversation_resets_every_output_in_order(app: Served, client: Client, tmp_path: Path) -> None:
    """The handlers return ``{component: value}`` updates; API clients still read the outputs positionally, in the
    event's output order (States are not sent): chatbot, textbox, sources gallery, case detail, banner, timings,
    crop editor, feedback status, case media."""
    chat(client, "What is wrong?", [photo_of(app, "prn-e13", tmp_path)])
    out = client.predict(api_name="/new_conversation")
    assert len(out) == 9, out
    history, msg, gallery, detail, banner, timings, crop, fb, case_media = out
    assert history == [] and gallery == [] and case_media == [] and fb == ""
    assert msg in (None, {"text": "", "files": []}, {"text": None, "files": []}), msg
    assert "Select a source" in detail and banner.get("visible") is False and timings == "_No timings yet._"
    assert crop is None or not crop.get("composite"), crop


def test_pdf_page_becomes_the_query_image(app: Served, client: Client, tmp_path: Path) -> None:
    pdf = tmp_path / "manual.pdf"
    _one_page_pdf(pdf)
    _, out = chat(client, "what does this page say?", [str(pdf)])
    assert "PDF 'manual.pdf': page 1 of 1" in out[5]
    assert "Cited cases" in text_of(out[0][-1]) or "Cases used" in text_of(out[0][-1])


def test_video_question(app: Served, client: Client, tmp_path: Path) -> None:
    from conftest import write_video

    clip = write_video(tmp_path / "clip.mp4", n_frames=8)
    _, out = chat(client, "the pump vibrates like this", [str(clip)])
    history = out[0]
    assert any(isinstance(m["content"], list) and any(x.get("type") == "file" for x in m["content"]) for m in history)
    assert "Cited cases" in text_of(history[-1]) or "Cases used" in text_of(history[-1])
    assert out[2], "sources shown for a video query"


def _one_page_pdf(path: Path) -> None:
    img = Image.new("RGB", (300, 400), "white")
    img.save(path, "PDF")


# -- admin: refused without a login, over every channel -----------------------------------------------------------
def test_admin_endpoints_are_not_listed(app: Served, client: Client) -> None:
    api = client.view_api(print_info=False, return_format="dict")
    names = set(api["named_endpoints"]) | set(api.get("unnamed_endpoints", {}))
    assert "/admin_login" in names
    assert not any(n.startswith(("/list_cases", "/save_case", "/delete_case", "/bulk_import", "/reindex", "/feedback",
                                 "/stats", "/check", "/duplicates")) and n not in ("/feedback_up", "/feedback_down")
                   for n in names), names


def test_admin_refused_without_login_gradio_client(app: Served, client: Client) -> None:
    idx = fn_index_for(client.config, "admin-list-btn")
    with pytest.raises(ValueError, match="Invalid function index"):  # the stock client will not even try
        client.predict("", "", fn_index=idx)
    # A client patched to call the hidden endpoint anyway is refused by the server...
    client.endpoints[idx].is_valid = True
    with pytest.raises(Exception, match="Admin login required"):
        client.predict("", "", fn_index=idx)
    # ...also after a failed login...
    client.predict("admin", "wrong", api_name="/admin_login")
    with pytest.raises(Exception, match="Admin login required"):
        client.predict("", "", fn_index=idx)
    # ...and served once this client's session has logged in.
    client.predict(*ADMIN, api_name="/admin_login")
    rows, msg = client.predict("E13", "", fn_index=idx)
    assert [r[0] for r in rows["data"]] == ["prn-e13"] and "1 case" in msg


def test_admin_refused_without_login_plain_http(app: Served) -> None:
    cfg = httpx.get(f"{app.url}/config", timeout=10).json()
    for elem, data in (("admin-list-btn", [None, "", ""]), ("admin-del-btn", [None, "prn-e13", True]),
                       ("stats-btn", [None]), ("fb-refresh", [None, "all"])):
        idx = fn_index_for(cfg, elem)
        msg = raw_call(app.url, idx, data, trigger_id=component_id(cfg, elem))
        assert msg.get("success") is False, msg
        assert "Admin login required" in str(msg.get("output", {}).get("error")), msg
    assert app.services.kb.get("prn-e13") is not None, "the unauthorised delete must not have run"
    # Gradio still routes a "private" endpoint by its derived name over the REST API: only the check refuses it.
    r = httpx.post(f"{app.url}/gradio_api/call/list_cases", json={"data": [None, "", ""]}, timeout=10)
    if r.status_code == 200:
        events = httpx.get(f"{app.url}/gradio_api/call/list_cases/{r.json()['event_id']}", timeout=30).text
        assert "event: error" in events and "event: complete" not in events, events
        assert "pump-seal" not in events and "prn-e13" not in events
    else:
        assert r.status_code in (403, 404, 405, 422)


def test_admin_works_after_login_same_session_only(app: Served) -> None:
    cfg = httpx.get(f"{app.url}/config", timeout=10).json()
    login, list_idx = fn_index_for(cfg, "admin-login-btn"), fn_index_for(cfg, "admin-list-btn")
    session = uuid.uuid4().hex[:11]
    bad = raw_call(app.url, login, [ADMIN[0], "nope"], session_hash=session, trigger_id=component_id(cfg, "admin-login-btn"))
    assert "Wrong user name or password" in str(bad["output"]["data"])
    assert raw_call(app.url, list_idx, [None, "", ""], session_hash=session)["success"] is False
    ok = raw_call(app.url, login, list(ADMIN), session_hash=session, trigger_id=component_id(cfg, "admin-login-btn"))
    assert ok["success"] is True and "Logged in" in str(ok["output"]["data"])
    listed = raw_call(app.url, list_idx, [None, "seal", ""], session_hash=session)
    assert listed["success"] is True, listed
    rows = listed["output"]["data"][0]["data"]
    assert [r[0] for r in rows] == ["pump-seal"]
    # another session (another browser/client) is still refused
    assert raw_call(app.url, list_idx, [None, "", ""], session_hash=uuid.uuid4().hex[:11])["success"] is False
    # the token never leaves the server: the login response carries no secret
    assert "." not in "".join(str(x) for x in ok["output"]["data"] if isinstance(x, str) and len(x) > 40)


def test_admin_stats_and_feedback_review_with_login(app: Served) -> None:
    cfg = httpx.get(f"{app.url}/config", timeout=10).json()
    session = uuid.uuid4().hex[:11]
    raw_call(app.url, fn_index_for(cfg, "admin-login-btn"), list(ADMIN), session_hash=session)
    stats = raw_call(app.url, fn_index_for(cfg, "stats-btn"), [None], session_hash=session)
    assert stats["success"] and stats["output"]["data"][0]["cases"] >= len(app.images)
    fb = raw_call(app.url, fn_index_for(cfg, "fb-refresh"), [None, "all"], session_hash=session)
    assert fb["success"] and "vote(s)" in fb["output"]["data"][1]


def test_admin_disabled_without_configured_credentials() -> None:
    from ui.auth import AdminAuth, AuthError

    auth = AdminAuth(None)
    with pytest.raises(AuthError, match="disabled"):
        auth.login("admin", "")
    assert auth.verify("anything.sig") is None


def test_login_brake_and_token_checks() -> None:
    from ui.auth import AdminAuth, AuthError

    auth = AdminAuth(("a", "b"), max_failures=2, lockout_seconds=60, session_seconds=60)
    token = auth.login("a", "b")
    assert auth.verify(token) == "a"
    assert auth.verify(token[:-2] + "xx") is None  # tampered signature
    assert AdminAuth(("a", "b")).verify(token) is None  # another process/secret
    for _ in range(2):
        with pytest.raises(AuthError, match="Wrong"):
            auth.login("a", "x")
    with pytest.raises(AuthError, match="Too many"):
        auth.login("a", "b")
    auth.logout(token)
    assert auth.verify(token) is None


def test_credentials_from_env_or_secret_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ui.settings import AdminCredentials

    monkeypatch.delenv("RAGVQA_ADMIN_PASSWORD", raising=False)
    monkeypatch.setenv("RAGVQA_ADMIN_USER", "ops")
    assert AdminCredentials().resolved() is None
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    monkeypatch.setenv("RAGVQA_ADMIN_PASSWORD_FILE", str(secret))
    assert AdminCredentials().resolved() == ("ops", "from-file")
    monkeypatch.setenv("RAGVQA_ADMIN_PASSWORD", "from-env")
    assert AdminCredentials().resolved() == ("ops", "from-env")


def test_rendering_is_inert() -> None:
    from rag.pipeline import CaseCandidate
    from ui.show import case_detail_html, inert_md

    md = inert_md('<script>x()</script> ![p](http://e/x.png) [a](javascript:alert(1)) [case-1]')
    assert "<" not in md and "](" not in md and "&#91;case-1&#93;" in md
    c = CaseCandidate(case_id="c1", title="<img src=x onerror=alert(1)>", retrieval_score=0.5,
                      case={"symptom": "<script>alert(2)</script>", "solution": ["<b>x</b>"], "tags": ['"><svg onload=1>']})
    html_ = case_detail_html(c)
    assert "<img" not in html_ and "<script" not in html_ and "<svg" not in html_ and "&lt;img" in html_


def admin_client(app: Served) -> tuple[Client, dict[str, int]]:
    """A gradio_client session that logged in, with the (hidden) admin events callable by their button's elem_id."""
    c = Client(app.url, verbose=False, download_files=False)
    c.predict(*ADMIN, api_name="/admin_login")
    idx = {e: fn_index_for(c.config, e) for e in ("case-save", "admin-del-btn", "import-btn", "dup-btn", "reindex-btn",
                                                  "admin-load-btn", "check-btn")}
    for i in idx.values():
        c.endpoints[i].is_valid = True
    return c, idx


def test_admin_operations_with_login(app: Served, client: Client, tmp_path: Path) -> None:
    """Add a case with an image, a video and a PDF; load, bulk-import, duplicates, check, reindex, delete."""
    import json as _json

    from conftest import case_picture, write_video

    c, idx = admin_client(app)
    img, clip, pdf = tmp_path / "valve.png", tmp_path / "valve.mp4", tmp_path / "valve-manual.pdf"
    case_picture(7, (10, 120, 160)).save(img)
    write_video(clip, n_frames=8)
    Image.new("RGB", (300, 400), "white").save(pdf, "PDF", save_all=True, append_images=[Image.new("RGB", (300, 400), "grey")])
    form = ["valve-v2", "Valve V2 sticks open", "valves", "V2", "Valve does not close; flow continues.", "Debris.",
            "Close the isolation valve\nClean the seat", "V-02", "valve, debris", "high", "field report"]
    new_id, msg = c.predict(*form, [handle_file(str(img)), handle_file(str(clip)), handle_file(str(pdf))],
                            fn_index=idx["case-save"])
    assert new_id == "valve-v2" and "Added case" in msg, msg
    stored = app.services.kb.get("valve-v2")
    assert sorted({m.kind for m in stored.media}) == ["image", "pdf_page", "video"]
    assert sum(m.kind == "pdf_page" for m in stored.media) == 2
    loaded = c.predict("valve-v2", fn_index=idx["admin-load-btn"])
    assert loaded[1] == "Valve V2 sticks open" and loaded[6] == "Close the isolation valve\nClean the seat"
    # edit: same id → update (media kept, text changed)
    form[5] = "Debris on the seat."
    _, msg = c.predict(*form, [], fn_index=idx["case-save"])
    assert "Updated case" in msg and app.services.kb.get("valve-v2").version == 2

    # bulk import: a zip of cases.jsonl + its media, with one bad record
    import zipfile

    buf = io.BytesIO()
    case_picture(8, (160, 10, 120)).save(buf, "PNG")
    lines = [{"id": "imp-ok", "title": "Imported case", "product_line": "valves", "symptom": "Leaks.", "media": ["p.png"]},
             {"id": "imp-bad", "title": "", "product_line": "valves", "symptom": "x"}]
    with zipfile.ZipFile(tmp_path / "bulk.zip", "w") as z:
        z.writestr("cases.jsonl", "\n".join(_json.dumps(x) for x in lines))
        z.writestr("p.png", buf.getvalue())
    summary, report = c.predict(handle_file(str(tmp_path / "bulk.zip")), fn_index=idx["import-btn"])
    assert "Import summary" in summary and report["added"] == 1 and report["rejected"] == 1, report
    assert "title must not be empty" in summary
    assert app.services.kb.get("imp-ok") is not None

    rows, msg = c.predict(0.8, fn_index=idx["dup-btn"])
    assert "pair(s)" in msg
    msg, report = c.predict(False, fn_index=idx["check-btn"])
    assert "cases" in msg and "problems" in report

    # reindex swaps the live store: the chat must keep answering from the new one
    with pytest.raises(Exception, match="confirm reindex"):
        c.predict(False, fn_index=idx["reindex-btn"])
    msg, result = c.predict(True, fn_index=idx["reindex-btn"])
    assert "Reindexed" in msg and result["cases"] >= len(app.images) + 2
    assert app.services.pipeline.retrieve_stage.store is app.services.kb.store
    _, out = chat(client, "valve sticks open", line="valves")
    assert any("[valve-v2]" in g["caption"] for g in out[2])

    msg = c.predict("imp-ok", True, fn_index=idx["admin-del-btn"])
    assert "Deleted" in msg and app.services.kb.get("imp-ok") is None


def test_query_image_decoded_once_matches_the_official_path(tmp_path: Path) -> None:
    import numpy as np
    from qwen_vl_utils import fetch_image
    from reference_qwen3vl import IMAGE_FACTOR, MAX_PIXELS, MIN_PIXELS

    from rag.config import VisionBudget
    from rag.models.query_image import QueryImageError, load_query_image
    from rag.models.vision import prepare_image

    def official(path: Path) -> Image.Image:  # the official path: qwen-vl-utils reads the file itself
        return fetch_image({"image": str(path), "min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS},
                           image_patch_size=IMAGE_FACTOR // 2)

    b = VisionBudget()
    rng = np.random.RandomState(0)
    small = tmp_path / "small.jpg"
    Image.fromarray((rng.rand(480, 640, 3) * 255).astype("uint8")).save(small, quality=85)
    assert np.array_equal(np.asarray(prepare_image(load_query_image(small, b), b)), np.asarray(official(small)))
    big = tmp_path / "phone.jpg"
    Image.fromarray((rng.rand(60, 80, 3) * 255).astype("uint8")).resize((4000, 3000)).save(big, quality=85)
    decoded = load_query_image(big, b)
    assert decoded.size[0] * decoded.size[1] >= b.max_pixels and decoded.size[0] < 4000  # DCT-domain downscale
    # the model sees the official size (the pixels differ by the DCT-domain decode: that is the point of it)
    assert prepare_image(decoded, b).size == official(big).size
    with pytest.raises(QueryImageError, match="no longer available"):
        load_query_image(tmp_path / "gone.png", b)
