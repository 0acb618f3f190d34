"""Cross-modal admin search: planted structure against a numpy brute force (points and per-case grouping, kind and
product-line filters), the tiny model end to end (text, image and text+image queries; the ranking equals a brute
force over the stored vectors with the query embedded the chat's way), the ``kb search`` CLI and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from kb_planted import grouped_cases, open_planted, unit
from kb_support import TinyCli, add_scene_cases, jpeg_bytes, kb_state, make_source, open_kb, scene

from knowledge_base.semantic_search import SearchInputError, semantic_search

DIM = 20


def brute(cases, q: np.ndarray, limit: int, kinds=None, line=None):
    """Reference: every (case, kind, vector) by cosine; points = top ``limit``; cases = grouped by best point."""
    q = unit(q)
    pts = [(float(unit(v) @ q), c.id, k) for c in cases for k, v in c.points
           if (kinds is None or k in kinds) and (line is None or c.product_line == line)]
    pts.sort(key=lambda t: -t[0])
    best: dict[str, float] = {}
    for s, cid, _ in pts if kinds is None else []:
        best.setdefault(cid, s)
    return pts[:limit], sorted(best.items(), key=lambda kv: -kv[1])[:limit]


@pytest.mark.parametrize("backend", ["edge", "local"])
def test_planted_search_equals_brute_force(tmp_path: Path, backend: str) -> None:
    rng = np.random.default_rng(4)
    cases = grouped_cases(rng, groups=3, per_group=5, dim=DIM)
    store = open_planted(tmp_path / "s", cases, DIM, backend=backend)
    try:
        for _trial in range(5):
            q = rng.normal(size=DIM)
            res = semantic_search(store, vector=q, limit=7, exact=True)
            want_pts, want_cases = brute(cases, q, 7)
            assert [(p.case_id, p.kind) for p in res.points] == [(c, k) for _, c, k in want_pts]
            np.testing.assert_allclose([p.score for p in res.points], [s for s, _, _ in want_pts], rtol=0, atol=1e-5)
            assert [(c.case_id) for c in res.cases] == [c for c, _ in want_cases]
            np.testing.assert_allclose([c.score for c in res.cases], [s for _, s in want_cases], rtol=0, atol=1e-5)
            only = semantic_search(store, vector=q, limit=4, kinds=["image", "pdf_page"], exact=True)
            want_pts, _ = brute(cases, q, 4, kinds={"image", "pdf_page"})
            assert [(p.case_id, p.kind) for p in only.points] == [(c, k) for _, c, k in want_pts]
            assert all(p.thumbnail for p in only.points)
            line = semantic_search(store, vector=q, limit=3, filters={"product_line": "line1"}, exact=True)
            want_pts, _ = brute(cases, q, 3, line="line1")
            assert [(p.case_id, p.kind) for p in line.points] == [(c, k) for _, c, k in want_pts]
            assert {c.product_line for c in line.cases} == {"line1"}
        # A matched case text shows the case's first picture, if it has one.
        texts = semantic_search(store, vector=cases[0].points[0][1], limit=15, kinds=["text"], exact=True).points
        with_pics = {c.id for c in cases if any(k in ("image", "pdf_page") for k, _ in c.points[1:])}
        assert {p.case_id for p in texts if p.thumbnail} == with_pics & {p.case_id for p in texts}
    finally:
        store.close()


def test_search_bad_input(tmp_path: Path) -> None:
    store = open_planted(tmp_path / "s", [], DIM)
    try:
        assert semantic_search(store, vector=np.ones(DIM)) == semantic_search(store, vector=np.ones(DIM))
        assert semantic_search(store, vector=np.ones(DIM)).cases == []  # empty KB: no results, no error
        for kw, msg in [({"text": "x"}, "needs a knowledge base"), ({"vector": np.ones(3)}, "20 values"),
                        ({"vector": np.ones(DIM), "limit": 0}, "limit"),
                        ({"vector": np.ones(DIM), "kinds": ["photo"]}, "unknown kind"),
                        ({"vector": np.ones(DIM), "filters": {"case": "x"}}, "unknown filter")]:
            with pytest.raises(SearchInputError, match=msg):
                semantic_search(store, **kw)
    finally:
        store.close()


def test_tiny_model_text_and_image_queries(tmp_path: Path, embedder) -> None:
    from rag.pipeline.retrieve import RETRIEVAL_INSTRUCTION

    kb = open_kb("edge", tmp_path / "data", embedder)
    try:
        add_scene_cases(kb, 4)
        before = kb_state(kb)
        stored = [(p.payload["case_id"], p.payload["kind"], p.vector) for p in kb.store.scroll(with_vectors=True)]
        img = tmp_path / "q.jpg"
        img.write_bytes(jpeg_bytes(scene(2)))
        for item in ({"text": "fault pattern 2"}, {"image": str(img)}, {"text": "component", "image": str(img)}):
            q = embedder.embed([item], instruction=RETRIEVAL_INSTRUCTION, dim=kb.store.dim)[0]
            want = sorted(stored, key=lambda t: -float(unit(t[2]) @ unit(q)))[:5]
            res = semantic_search(kb, text=item.get("text"), image=item.get("image"), limit=5, exact=True)
            # Same model, same process: the query vector is the same up to kernel noise; rankings agree.
            assert [(p.case_id, p.kind) for p in res.points] == [(c, k) for c, k, _ in want], item
        with pytest.raises(SearchInputError, match="give a text, an image"):
            semantic_search(kb, text="  ")
        with pytest.raises(SearchInputError, match="image not found"):
            semantic_search(kb, image=tmp_path / "missing.png")
        from kb_support import assert_same_state
        assert_same_state(kb_state(kb), before)
    finally:
        kb.close()


def test_cli_search(tmp_path: Path, tiny_model_dir: Path) -> None:
    cli = TinyCli(tmp_path / "data", tiny_model_dir)
    assert cli("import", str(make_source(tmp_path / "src", 4))).exit_code == 0
    img = tmp_path / "q.jpg"
    img.write_bytes(jpeg_bytes(scene(1)))
    res = cli("search", "--text", "fault", "--image", str(img), "--kind", "image", "--json")
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert got["points"] and all(p["kind"] == "image" and p["thumbnail"] for p in got["points"])
    assert len({c["case_id"] for c in got["cases"]}) == len(got["cases"]) == 4
    res = cli("search", "--text", "fault")
    assert res.exit_code == 0 and "case-0" in res.stdout
    res = cli("search")
    assert res.exit_code == 1 and "give a text, an image" in res.output and "Traceback" not in res.output
