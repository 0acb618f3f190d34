"""Knowledge gaps (knowledge_base/gaps.py) from the real feedback log (ui/feedback.py), and the admin Clusters /
Knowledge gaps views end to end (tiny models, real store, gradio_client with login)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import uuid
from pathlib import Path

import numpy as np
import pytest
from kb_planted import Planted
from PIL import Image

from knowledge_base.gaps import FEEDBACK_DB, GapError, GapReport, find_gaps, read_gap_queries
from rag.store import VectorStore
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
        for elem, data in (("clusters-btn", [None, 2, "cluster"]), ("gaps-btn", [None]),
                           ("gap-new-case", [None, 0, None])):
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
        # new gaps logged after the report was shown would renumber the topics (a bigger one becomes topic 0): the
        # draft comes from the topic the admin read on screen
        log = FeedbackLog(app.services.data_dir / FEEDBACK_DB)
        for q in ("conveyor belt slips under load", "conveyor belt slipping when loaded", "belt slips on the conveyor"):
            log.record_abstention(question=q, media_files=[], filters={}, cases=[])
        new = raw_call(app.url, fn_index_for(cfg, "gap-new-case"), [None, 0, None], session_hash=session)
        assert new["success"], new
        out = new["output"]["data"]
        assert out[1] == "forklift charger fault F9" and "forklift charger fault F9" in out[4]
        files = out[11]
        assert files and len(files) == 1
        assert {p.id: p.payload for p in app.services.store.scroll()} == store_before, "the views wrote to the store"
    finally:
        stop_app(app)


# ------------------------------------------------------------------------------ what the photo shows (shown cases)

DIM = 32
#: Shown cases per planted query (the app logs its closest cases, closest first).
SHOWN = 3


def _planted_kb(root: Path, seed: int = 5) -> tuple[list[Planted], dict[str, list[str]]]:
    """Three planted fault families of six cases each (tight: member cosines ≈ 0.97) written through a real Edge
    store; returns the cases and the case ids per family."""
    from kb_planted import grouped_cases, open_planted

    cases = grouped_cases(np.random.default_rng(seed), groups=3, per_group=6, dim=DIM, noise=0.03,
                          media_kinds=("image",))
    open_planted(root, cases, DIM).close()
    fams: dict[str, list[str]] = {}
    for c in cases:
        fams.setdefault(c.id.split("-")[0], []).append(c.id)
    return cases, fams


def _shown(ids: list[str], start: int) -> list[dict[str, object]]:
    """``SHOWN`` cases of one family, a different subset per query (as the app logs them: closest first)."""
    pick = [ids[(start + k) % len(ids)] for k in range(SHOWN)]
    return [{"case_id": c, "score": 0.3 - 0.01 * k} for k, c in enumerate(pick)]


def _reference_vector(cases: list[Planted], shown: list[dict[str, object]]) -> np.ndarray:
    """Reference from the definition: the normalised mean of the shown cases' planted (unit) text vectors."""
    by_id = {c.id: c.points[0][1] for c in cases}
    v = np.mean([by_id[str(s["case_id"])] / np.linalg.norm(by_id[str(s["case_id"])]) for s in shown], axis=0)
    return np.asarray(v / np.linalg.norm(v))


def _log_photo_only(data: Path, photo: Path, fams: dict[str, list[str]]) -> dict[str, list[int]]:
    """Photo-only abstentions, all under one product-line filter: three whose shown cases come from family g0, three
    from family g1, one from g2 (a one-off), and two that showed no case; returns the abstention ids per planted
    topic."""
    log = FeedbackLog(data / FEEDBACK_DB)
    out: dict[str, list[int]] = {}
    for fam, n in (("g0", 3), ("g1", 3), ("g2", 1)):
        for k in range(n):
            out.setdefault(fam, []).append(log.record_abstention(
                question="", media_files=[str(photo)], filters={"product_line": "printers"},
                cases=_shown(fams[fam], 2 * k)))
    for _ in range(2):
        out.setdefault("none", []).append(log.record_abstention(
            question="", media_files=[str(photo)], filters={"product_line": "printers"}, cases=[]))
    return out


def _partition(report: GapReport) -> set[frozenset[int]]:
    assert all(t.size == len(t.examples) for t in report.topics), "raise `examples` for this check"
    return {frozenset(q.id for q in t.examples) for t in report.topics}


def _store_state(store: VectorStore) -> dict[str, tuple[object, list[float]]]:
    return {p.id: (p.payload, np.asarray(p.vector).round(6).tolist()) for p in store.scroll(with_vectors=True)}


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    p = tmp_path / "upload.png"
    Image.new("RGB", (64, 48), (10, 200, 30)).save(p)
    return p


def test_photo_only_gaps_form_one_topic_per_planted_family(tmp_path: Path, photo: Path) -> None:
    """Photo-only questions whose shown cases come from two planted families form two topics (the text-only grouping
    puts every photo-only question of a product line in one); a one-off stays a topic of its own; questions that
    showed no case keep the product-line topic. The store and the log are only read."""
    from kb_planted import EMBEDDER

    from knowledge_base.gaps import VECTOR_THRESHOLD
    from rag.store import EdgeStore, StoreMeta

    data = tmp_path / "data"
    cases, fams = _planted_kb(data / "qdrant")
    ids = _log_photo_only(data, photo, fams)
    # The planted margins, from the planted vectors (not the code under test): queries of one family show shown-case
    # vectors far above the threshold, queries of different families far below it.
    rows = read_gap_queries(data / FEEDBACK_DB)
    ref = {q.id: _reference_vector(cases, [{"case_id": c} for c in q.shown_cases[:SHOWN]]) for q in rows
           if q.shown_cases}
    fam_of = {i: f for f, lst in ids.items() for i in lst}
    same = [float(ref[a] @ ref[b]) for a in ref for b in ref if a < b and fam_of[a] == fam_of[b]]
    cross = [float(ref[a] @ ref[b]) for a in ref for b in ref if fam_of[a] != fam_of[b]]
    assert min(same) > VECTOR_THRESHOLD + 0.05 and max(cross) < VECTOR_THRESHOLD - 0.3, (min(same), max(cross))

    store = EdgeStore.open(data / "qdrant", StoreMeta(embedder_id=EMBEDDER, dim=DIM))
    try:
        before_store, before_log = _store_state(store), _digest(data / FEEDBACK_DB)
        report = find_gaps(data, store)
        assert _store_state(store) == before_store, "grouping the gaps wrote to the vector store"
        assert _digest(data / FEEDBACK_DB) == before_log, "grouping the gaps wrote to the feedback log"
    finally:
        store.close()
    assert report.n_topics == len(ids), [t.label for t in report.topics]
    assert _partition(report) == {frozenset(v) for v in ids.values()}
    by_ids = {frozenset(q.id for q in t.examples): t for t in report.topics}
    g0 = by_ids[frozenset(ids["g0"])]
    assert g0.draft.product_line == "printers" and g0.abstentions == 3 and set(g0.shown_cases) <= set(fams["g0"])
    assert "near g0-" in g0.label and "near g1-" in by_ids[frozenset(ids["g1"])].label  # two topics, two labels
    assert len(g0.draft.media) == 1 and (data / g0.draft.media[0]).is_file()
    # today's (text-only) grouping: everything photo-only under one product line is one topic
    old = find_gaps(data)
    assert old.n_topics == 1 and old.topics[0].size == sum(map(len, ids.values()))


def test_text_and_photo_combined(tmp_path: Path, photo: Path) -> None:
    """A photo-only question joins the text topic whose questions showed the same family; the same generic text over
    photos of two families stays two topics (both signals must agree); text questions that showed no case group by
    their text exactly as without a store."""
    from kb_planted import EMBEDDER

    from rag.store import EdgeStore, StoreMeta

    data = tmp_path / "data"
    _, fams = _planted_kb(data / "qdrant")
    log = FeedbackLog(data / FEEDBACK_DB)
    pump = [log.record_abstention(question=q, media_files=[str(photo)], filters={}, cases=_shown(fams["g0"], k))
            for k, q in enumerate(["pump hums but there is no flow", "no flow from the pump, it hums"])]
    pump.append(log.record_abstention(question="", media_files=[str(photo)], filters={}, cases=_shown(fams["g0"], 3)))
    generic = [log.record_abstention(question="what is wrong with this machine", media_files=[str(photo)], filters={},
                                     cases=_shown(fams[f], 1)) for f in ("g1", "g2")]
    text_only = [log.record_abstention(question=q, media_files=[], filters={}, cases=[]) for q in WIFI]
    store = EdgeStore.open(data / "qdrant", StoreMeta(embedder_id=EMBEDDER, dim=DIM))
    try:
        report = find_gaps(data, store)
    finally:
        store.close()
    assert _partition(report) == {frozenset(pump), frozenset(generic[:1]), frozenset(generic[1:]),
                                  frozenset(text_only)}
    topic = next(t for t in report.topics if t.size == 3 and pump[0] in {q.id for q in t.examples})
    assert {"pump", "flow"} <= set(topic.terms)
    # without the store the generic question is one topic, as the text says
    assert frozenset(generic) in _partition(find_gaps(data))


def test_text_only_questions_unchanged_with_a_store(tmp_path: Path, photo: Path) -> None:
    """Questions that showed no case: with the store the report is the text-only one, field for field."""
    from kb_planted import EMBEDDER

    from rag.store import EdgeStore, StoreMeta

    data = tmp_path / "data"
    _planted_kb(data / "qdrant")
    log = FeedbackLog(data / FEEDBACK_DB)
    for q in WIFI + FORKLIFT:
        log.record_abstention(question=q, media_files=[], filters={"product_line": "printers"}, cases=[])
    log.record_abstention(question="", media_files=[str(photo)], filters={"product_line": "pumps"}, cases=[])
    store = EdgeStore.open(data / "qdrant", StoreMeta(embedder_id=EMBEDDER, dim=DIM))
    try:
        assert find_gaps(data, store) == find_gaps(data)
    finally:
        store.close()
    assert find_gaps(data).n_topics == 3
    # a vector threshold that is not a cosine strictly between 0 and 1 is refused by name
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="vector_threshold"):
            find_gaps(data, vector_threshold=bad)


def test_no_store_mismatched_or_missing_vectors_fall_back_to_the_text_grouping(
        tmp_path: Path, photo: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Shown cases written by another embedder, shown cases gone from the store, or a store that cannot be read:
    the text-only grouping, one warning each, no traceback."""
    import logging

    from kb_planted import grouped_cases, open_planted, planted_points

    data = tmp_path / "data"
    cases, fams = _planted_kb(tmp_path / "unused")
    _log_photo_only(data, photo, fams)
    expected = find_gaps(data)  # no store
    assert expected.n_topics == 1  # every photo-only question of the product line
    # a store whose shown-case points come from another embedder (an unfinished re-embedding)
    mixed = open_planted(tmp_path / "mixed", [], DIM)
    try:
        mixed.upsert([p for c in cases for p in planted_points(c, embedder="another-embedder")])
        with caplog.at_level(logging.WARNING, logger="knowledge_base.gaps"):
            assert find_gaps(data, mixed) == expected
        warned = [r.getMessage() for r in caplog.records if r.name == "knowledge_base.gaps"]
        assert len(warned) == 1 and "another-embedder" in warned[0] and "reindex" in warned[0], warned
    finally:
        mixed.close()
    # a store of the right embedder that no longer holds any shown case
    caplog.clear()
    strangers = grouped_cases(np.random.default_rng(1), groups=1, per_group=2, dim=DIM)
    for k, c in enumerate(strangers):
        c.id = f"stranger-{k}"
    other = open_planted(tmp_path / "other", strangers, DIM)
    with caplog.at_level(logging.WARNING, logger="knowledge_base.gaps"):
        assert find_gaps(data, other) == expected
    assert [r.getMessage() for r in caplog.records if r.name == "knowledge_base.gaps"][0].startswith(
        "knowledge gaps grouped by question text only: none of the")
    # a store that cannot be read (closed)
    other.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="knowledge_base.gaps"):
        assert find_gaps(data, other) == expected
    assert len([r for r in caplog.records if r.name == "knowledge_base.gaps"]) == 1


def test_cli_gaps_reads_the_knowledge_base(tmp_path: Path, photo: Path) -> None:
    """``ragvqa kb gaps`` opens the data dir's store read-only (no model) and groups photo-only questions by it."""
    from typer.testing import CliRunner

    from ui.cli import app

    data = tmp_path / "data"
    _, fams = _planted_kb(data / "qdrant")
    ids = _log_photo_only(data, photo, fams)
    r = CliRunner().invoke(app, ["kb", "gaps", "--json", "--data-dir", str(data)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert {frozenset(q["id"] for q in t["examples"]) for t in rep["topics"]} == {frozenset(v) for v in ids.values()}
