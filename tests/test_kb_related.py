"""Related cases on planted structure (real Qdrant Edge store, brute-force numpy reference), the confirm-link write
path, bad input, and the ``ragvqa kb related`` CLI end to end on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from kb_planted import Planted, brute_related, grouped_cases, open_planted, photo_to_page_cases, unit
from kb_support import add_scene_cases, kb_state, open_kb

from knowledge_base.cases import CaseNotFoundError
from knowledge_base.related import RelatedInputError, confirm_related, related_cases
from rag.store import point_id

DIM = 24


@pytest.fixture(params=["edge", "local"])
def planted(request, tmp_path: Path):
    rng = np.random.default_rng(7)
    cases = grouped_cases(rng, groups=4, per_group=6, dim=DIM)
    store = open_planted(tmp_path / "store", cases, DIM, backend=request.param)
    yield cases, store
    store.close()


def test_related_matches_brute_force_best_pair(planted) -> None:
    cases, store = planted
    for c in cases:
        for limit in (1, 5, 30):  # 30 > cases - 1: all other cases, none twice
            got = related_cases(store, c.id, limit=limit, exact=True)
            want = brute_related(cases, c.id, limit)
            assert [r.case_id for r in got] == [w[0] for w in want], (c.id, limit)
            # Scores come back from the engine (float32 storage, its own kernels): 1e-5 on cosines in [-1, 1].
            np.testing.assert_allclose([r.score for r in got], [w[1] for w in want], rtol=0, atol=1e-5)
            assert all(r.case_id != c.id for r in got)


def test_related_family_and_reasons(planted) -> None:
    cases, store = planted
    by_id = {c.id: c for c in cases}
    for c in cases:
        got = related_cases(store, c.id, limit=5, exact=True)
        fam = c.id.split("-")[0]
        assert all(r.case_id.startswith(fam + "-") for r in got), (c.id, [r.case_id for r in got])
        for r in got:
            best = r.reasons[0]
            assert best.score == pytest.approx(r.score, abs=1e-6)
            # The reason names the best pair: recompute which points those are from the planted vectors.
            a = np.stack([unit(v) for _, v in c.points])
            b = np.stack([unit(v) for _, v in by_id[r.case_id].points])
            i, j = np.unravel_index(np.argmax(a @ b.T), (len(a), len(b)))
            assert best.this.kind == c.points[i][0] and best.other.kind == by_id[r.case_id].points[j][0]
            assert " ↔ " in best.text and len(r.reasons) <= 3
            assert [x.score for x in r.reasons] == sorted((x.score for x in r.reasons), reverse=True)


def test_widening_finds_cases_behind_a_crowd(tmp_path: Path) -> None:
    """Case 'near' has 40 points all close to the query: the first candidate window (limit*4 + own) is filled by
    it alone, so the other cases are only found after widening; the ranking must still equal brute force."""
    rng = np.random.default_rng(3)
    q = unit(rng.normal(size=DIM))
    cases = [Planted(id="query", product_line="a", points=[("text", q)]),
             Planted(id="near", product_line="a",
                     points=[("text", unit(q + 0.1 * rng.normal(size=DIM)))]
                     + [("image", unit(q + 0.1 * rng.normal(size=DIM))) for _ in range(39)])]
    cases += [Planted(id=f"far{i}", product_line="b", points=[("text", unit(q + 0.8 * rng.normal(size=DIM)))])
              for i in range(6)]
    store = open_planted(tmp_path / "s", cases, DIM)
    try:
        got = related_cases(store, "query", limit=3, exact=True)
        assert [(r.case_id) for r in got] == [w[0] for w in brute_related(cases, "query", 3)]
    finally:
        store.close()


def test_labels_of_points(tmp_path: Path) -> None:
    store = open_planted(tmp_path / "s", photo_to_page_cases(DIM), DIM)
    try:
        (r,) = related_cases(store, "a", limit=5, exact=True)
        assert r.reasons[0].text == "photo 1 ↔ manual page 2"
        assert r.reasons[0].this.thumbnail and r.title == "Title of b"
    finally:
        store.close()


def test_bad_input(tmp_path: Path, planted) -> None:
    cases, store = planted
    with pytest.raises(CaseNotFoundError, match="no case with id 'nope'"):
        related_cases(store, "nope")
    with pytest.raises(RelatedInputError, match="limit"):
        related_cases(store, cases[0].id, limit=0)
    # A one-case store: nothing related, no error.
    one = open_planted(tmp_path / "one", cases[:1], DIM)
    try:
        assert related_cases(one, cases[0].id) == []
    finally:
        one.close()
    # Vectors of another embedder in the same store (an unfinished re-embedding): refused with a clear message.
    other = grouped_cases(np.random.default_rng(2), groups=1, per_group=1, dim=DIM)[0]
    other.id = "foreign"
    from kb_planted import planted_points
    store.upsert(planted_points(other, embedder="another-embedder"))
    with pytest.raises(RelatedInputError, match="another-embedder.*reindex"):
        related_cases(store, "foreign")
    assert all(r.case_id != "foreign" for r in related_cases(store, cases[0].id, limit=30))


def test_related_is_read_only_and_confirm_links(tmp_path: Path, embedder) -> None:
    kb = open_kb("edge", tmp_path / "data", embedder)
    try:
        add_scene_cases(kb, 3)
        before = kb_state(kb)
        rel = related_cases(kb, "case-00", limit=5)
        assert {r.case_id for r in rel} == {"case-01", "case-02"}
        _same(kb_state(kb), before)
        rep = confirm_related(kb, "case-00", "case-02", note="same jam")
        assert rep.status == "updated"
        links = kb.get("case-00").links  # type: ignore[union-attr]
        assert [(lk.case_id, lk.relation, lk.note) for lk in links] == [("case-02", "related", "same jam")]
        assert confirm_related(kb, "case-00", "case-02").status == "skipped"
        with pytest.raises(CaseNotFoundError):
            confirm_related(kb, "case-00", "nope")
        with pytest.raises(RelatedInputError, match="itself"):
            confirm_related(kb, "case-00", "case-00")
        assert kb.store.retrieve([point_id("case-00")])
    finally:
        kb.close()


def _same(a: dict, b: dict) -> bool:
    from kb_support import assert_same_state

    assert_same_state(a, b)
    return True


def test_cli_related(tmp_path: Path, tiny_model_dir: Path) -> None:
    """``ragvqa kb related`` end to end: import with the tiny model through the CLI, then relate (no model needed)."""
    from kb_support import TinyCli, make_source

    cli = TinyCli(tmp_path / "data", tiny_model_dir)
    assert cli("import", str(make_source(tmp_path / "src", 4))).exit_code == 0
    with cli.open_kb() as kb:
        want = [(r.case_id, r.score) for r in related_cases(kb, "case-01", limit=2, exact=True)]
        before = kb_state(kb)
    res = cli("related", "case-01", "--limit", "2", "--json")
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert [r["case_id"] for r in got] == [w[0] for w in want] and got[0]["reasons"][0]["text"]
    np.testing.assert_allclose([r["score"] for r in got], [w[1] for w in want], rtol=0, atol=1e-5)
    res = cli("related", "case-01")
    assert res.exit_code == 0 and "case-0" in res.stdout and "↔" in res.stdout
    res = cli("related", "nope")
    assert res.exit_code == 1 and "no case with id 'nope'" in res.output and "Traceback" not in res.output
    with cli.open_kb() as kb:
        _same(kb_state(kb), before)


def test_search_batch_equals_one_search_per_vector(planted) -> None:
    """The batched engine query behind related cases and labels (Edge query_batch, server query_batch_points) gives
    each vector the results a single search gives it, with filters and payload selection."""
    cases, store = planted
    rng = np.random.default_rng(9)
    vs = [unit(rng.normal(size=DIM)) for _ in range(4)]
    for flt, keys in ((None, None), ({"product_line": "line1"}, ["case_id", "kind"])):
        batch = store.search_batch(vs, 6, filters=flt, exact=True, payload_keys=keys)
        single = [store.search(v, 6, filters=flt, exact=True, payload_keys=keys) for v in vs]
        assert [[h.id for h in hs] for hs in batch] == [[h.id for h in hs] for hs in single]
        assert [[h.payload for h in hs] for hs in batch] == [[h.payload for h in hs] for hs in single]
        np.testing.assert_allclose([[h.score for h in hs] for hs in batch], [[h.score for h in hs] for hs in single],
                                   rtol=0, atol=1e-6)
    assert store.search_batch([], 3) == []
    with pytest.raises(ValueError, match="store expects dim"):
        store.search_batch([np.ones(DIM + 1)], 3)
