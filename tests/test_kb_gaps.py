"""Knowledge gaps (knowledge_base/gaps.py) from the real feedback log (ui/feedback.py), and the admin Clusters /
Knowledge gaps views end to end (tiny models, real store, gradio_client with login)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import uuid
from pathlib import Path

import pytest
from PIL import Image

from knowledge_base.gaps import FEEDBACK_DB, GapError, find_gaps, read_gap_queries
from ui.feedback import FeedbackLog

#: Planted topics: the questions each was written with (the expected grouping).
WIFI = ["label printer wifi pairing fails", "wifi pairing of the label printer drops", "label printer will not pair over wifi"]
FORKLIFT = ["forklift battery charger shows fault F9", "forklift charger fault F9 while charging battery"]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_gaps_group_abstentions_and_thumbs_down_into_the_planted_topics(tmp_path: Path) -> None:
    data = tmp_path / "data"
    log = FeedbackLog(data / FEEDBACK_DB)
    photo = tmp_path / "upload.png"
    Image.new("RGB", (64, 48), (10, 200, 30)).save(photo)
    for q in WIFI[:2]:
        log.record_abstention(question=q, media_files=[str(photo)], filters={"product_line": "printers"},
                              cases=[{"case_id": "prn-e13", "score": 0.2}])
    for q in FORKLIFT:
        log.record_abstention(question=q, media_files=[], filters={}, cases=[])
    # a thumbs-down on an answered question joins its topic; one on an abstained answer is that abstention again
    log.record(rating=-1, question=WIFI[2], answer="Check the toner.", cited=["prn-e13"], cases=[], abstained=False,
               media_files=[str(photo)], filters={"product_line": "printers"})
    log.record(rating=-1, question=FORKLIFT[0], answer="", cited=[], cases=[], abstained=True)
    log.record(rating=1, question="how do I clear E13", answer="...", cited=["prn-e13"], cases=[], abstained=False)
    # a photo-only question (no text)
    log.record_abstention(question="", media_files=[str(photo)], filters={"product_line": "pumps"}, cases=[])
    photo.unlink()  # uploads are pruned: the kept copy must not depend on it
    before = _digest(data / FEEDBACK_DB)

    report = find_gaps(data)
    assert _digest(data / FEEDBACK_DB) == before, "reading the gaps wrote to the feedback log"
    assert report.n_queries == 2 + 2 + 1 + 1  # the thumbs-up and the thumbs-down on an abstention are not extra gaps
    topics = {frozenset(q.question for q in t.examples): t for t in report.topics}
    assert set(topics) == {frozenset(WIFI), frozenset(FORKLIFT), frozenset({""})}
    wifi = topics[frozenset(WIFI)]
    assert (wifi.size, wifi.abstentions, wifi.thumbs_down) == (3, 2, 1)
    assert wifi.draft.product_line == "printers" and "prn-e13" in wifi.shown_cases
    assert set(wifi.terms) & {"wifi", "pairing", "label"}
    # the query photo was kept (content-addressed, once) and the draft carries it
    assert len(wifi.draft.media) == 1
    kept = data / wifi.draft.media[0]
    assert kept.is_file() and Image.open(kept).size == (64, 48)
    photo_only = topics[frozenset({""})]
    assert photo_only.draft.product_line == "pumps" and photo_only.draft.media == wifi.draft.media
    assert report.topics[0].size == 3  # largest first


def test_empty_missing_old_and_corrupt_logs(tmp_path: Path) -> None:
    assert find_gaps(tmp_path / "nothing-here").note.startswith("no abstentions")  # no log at all
    FeedbackLog(tmp_path / "empty" / FEEDBACK_DB)
    assert find_gaps(tmp_path / "empty").n_topics == 0
    # a log written before this change: no abstentions table, no media_files column
    old = tmp_path / "old"
    old.mkdir()
    con = sqlite3.connect(old / FEEDBACK_DB)
    con.executescript("CREATE TABLE feedback (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, rating INTEGER "
                      "NOT NULL, comment TEXT NOT NULL DEFAULT '', question TEXT NOT NULL DEFAULT '', answer TEXT NOT "
                      "NULL DEFAULT '', cited TEXT NOT NULL DEFAULT '[]', cases TEXT NOT NULL DEFAULT '[]', abstained "
                      "INTEGER NOT NULL DEFAULT 0, media TEXT NOT NULL DEFAULT '[]', filters TEXT NOT NULL DEFAULT '{}');"
                      "INSERT INTO feedback (ts, rating, question) VALUES (1.0, -1, 'pump hums but no flow');")
    con.commit()
    con.close()
    rows = read_gap_queries(old / FEEDBACK_DB)
    assert [(q.source, q.question, q.media) for q in rows] == [("thumbs_down", "pump hums but no flow", [])]
    FeedbackLog(old / FEEDBACK_DB)  # opening it in the app migrates it, keeping the row
    assert [q.question for q in read_gap_queries(old / FEEDBACK_DB)] == ["pump hums but no flow"]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / FEEDBACK_DB).write_bytes(b"this is not a database" * 100)
    with pytest.raises(GapError, match="unreadable"):
        find_gaps(bad)


def test_cli_gaps(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ui.cli import app

    log = FeedbackLog(tmp_path / FEEDBACK_DB)
    for q in FORKLIFT:
        log.record_abstention(question=q, media_files=[], filters={}, cases=[])
    r = CliRunner().invoke(app, ["kb", "gaps", "--json", "--data-dir", str(tmp_path)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["n_topics"] == 1 and rep["topics"][0]["size"] == 2
    r = CliRunner().invoke(app, ["kb", "gaps", "--data-dir", str(tmp_path / "none")], catch_exceptions=False)
    assert r.exit_code == 0 and "no abstentions" in r.stdout


@pytest.mark.slow
def test_admin_clusters_and_gaps_end_to_end(tmp_path: Path, embedder, reranker, generator) -> None:
    from gradio_client import Client, handle_file
    from ui_helpers import ADMIN, component_id, fn_index_for, raw_call, serve_app, stop_app

    app = serve_app(tmp_path, embedder, reranker, generator, abstain_retrieval_threshold=1.5)
    try:
        store_before = {p.id: p.payload for p in app.services.store.scroll()}
        client = Client(app.url, verbose=False, download_files=False)
        photo = tmp_path / "q.jpg"
        Image.open(app.images["pump-seal"]).resize((200, 150)).save(photo, quality=80)
        job = client.submit({"text": "forklift charger fault F9", "files": [handle_file(str(photo))]}, [], "", "",
                            False, 1, None, api_name="/chat")
        list(job)
        job.result()
        # the abstention was logged with the query's photo kept
        rows = read_gap_queries(app.services.data_dir / FEEDBACK_DB)
        assert [(q.source, q.question) for q in rows] == [("abstention", "forklift charger fault F9")]
        assert len(rows[0].media) == 1 and (app.services.data_dir / rows[0].media[0]).is_file()

        cfg = client.config
        # closed without login (over the browser's protocol)
        for elem, data in (("clusters-btn", [None, 2, "cluster"]), ("gaps-btn", [None]), ("gap-new-case", [None, 0])):
            msg = raw_call(app.url, fn_index_for(cfg, elem), data, trigger_id=component_id(cfg, elem))
            assert msg.get("success") is False and "Admin login required" in str(msg["output"].get("error")), msg
        session = uuid.uuid4().hex[:11]
        raw_call(app.url, fn_index_for(cfg, "admin-login-btn"), list(ADMIN), session_hash=session)
        cl = raw_call(app.url, fn_index_for(cfg, "clusters-btn"), [None, 2, "cluster"], session_hash=session)
        assert cl["success"], cl
        msg, picture, table = cl["output"]["data"][:3]
        assert f"{len(app.images)} case(s)" in msg and picture is not None
        assert all(row[1] >= 2 for row in table["data"])
        assert (app.services.data_dir / "clusters" / "model.npz").is_file()
        by_line = raw_call(app.url, fn_index_for(cfg, "clusters-btn"), [None, 2, "product line"], session_hash=session)
        assert by_line["success"] and by_line["output"]["data"][1] is not None
        gp = raw_call(app.url, fn_index_for(cfg, "gaps-btn"), [None], session_hash=session)
        assert gp["success"] and "1 question(s) in 1 topic(s)" in gp["output"]["data"][0]
        new = raw_call(app.url, fn_index_for(cfg, "gap-new-case"), [None, 0], session_hash=session)
        assert new["success"], new
        out = new["output"]["data"]
        assert out[1] == "forklift charger fault F9" and "forklift charger fault F9" in out[4]
        files = out[11]
        assert files and len(files) == 1
        assert {p.id: p.payload for p in app.services.store.scroll()} == store_before, "the views wrote to the store"
    finally:
        stop_app(app)
