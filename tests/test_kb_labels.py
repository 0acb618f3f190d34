"""Suggested labels on planted structure (real Qdrant Edge store) against references written here: scikit-learn's
KNeighborsClassifier (cosine, similarity weights) for one-point cases, a numpy best-pair vote for multi-point cases,
and a softmax for zero-shot; then the mechanics on the tiny model (embedding a new case, label-description cache,
``kb classify``) and bad input. Suggestions never write to the store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from kb_planted import Planted, grouped_cases, open_planted, unit
from kb_support import TinyCli, case_dict, jpeg_bytes, kb_state, make_source, open_kb, scene
from scipy.special import softmax
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import MultiLabelBinarizer

from knowledge_base.cases import CaseNotFoundError
from knowledge_base.labels import (
    MIN_CONFIDENCE,
    LabelsInputError,
    LabelSuggestion,
    suggest_labels,
    zero_shot,
)

DIM = 16
K = 5


def _sim_weights(d: np.ndarray) -> np.ndarray:
    return np.clip(1.0 - d, 0.0, None)  # cosine distance -> similarity, negatives do not vote


def noisy_one_point_cases(seed: int) -> list[Planted]:
    """One-point cases in 3 families; 25 % of the product lines and severities are flipped, so votes are split."""
    rng = np.random.default_rng(seed)
    cases = grouped_cases(rng, groups=3, per_group=8, dim=DIM, noise=0.5, media_kinds=())
    for c in cases:
        c.points = c.points[:1]
        if rng.random() < 0.25:
            c.product_line = f"line{int(rng.integers(3))}"
        if rng.random() < 0.25:
            c.severity = ("low", "high", "critical")[int(rng.integers(3))]
        c.tags = [t for t in (f"fam{c.id[1]}", "common", "rare" if rng.random() < 0.3 else "") if t]
    return cases


def test_neighbour_votes_equal_sklearn_knn(tmp_path: Path) -> None:
    cases = noisy_one_point_cases(11)
    store = open_planted(tmp_path / "s", cases, DIM)
    try:
        X = np.stack([c.points[0][1] for c in cases])
        n_checked = n_suggested = 0
        for i, c in enumerate(cases):  # leave-one-out, as the evaluation does
            train = [j for j in range(len(cases)) if j != i]
            got = suggest_labels(store, vectors=X[i], exclude_case_id=c.id, k=K, exact=True)
            for field in ("product_line", "severity"):
                y = [getattr(cases[j], field) for j in train]
                knn = KNeighborsClassifier(n_neighbors=K, metric="cosine", algorithm="brute", weights=_sim_weights)
                proba = knn.fit(X[train], y).predict_proba(X[i:i + 1])[0]
                best = int(np.argmax(proba))
                mine = [s for s in got if s.field == field]
                if proba[best] >= MIN_CONFIDENCE:
                    assert [(s.value, s.source) for s in mine] == [(knn.classes_[best], "neighbours")], (c.id, field)
                    assert mine[0].confidence == pytest.approx(proba[best], abs=1e-5)
                    n_suggested += 1
                else:
                    assert mine == [], (c.id, field, proba)
                n_checked += 1
            mlb = MultiLabelBinarizer().fit([cases[j].tags for j in train])
            knn = KNeighborsClassifier(n_neighbors=K, metric="cosine", algorithm="brute", weights=_sim_weights)
            knn.fit(X[train], mlb.transform([cases[j].tags for j in train]))
            per_tag = {t: (p[0, 1] if p.shape[1] == 2 else float(knn.classes_[n][0] == 1))
                       for n, (t, p) in enumerate(zip(mlb.classes_, knn.predict_proba(X[i:i + 1]), strict=True))}
            want = {t: p for t, p in per_tag.items() if p >= MIN_CONFIDENCE}
            mine_tags = {s.value: s.confidence for s in got if s.field == "tags"}
            assert set(mine_tags) == set(want), (c.id, per_tag)
            for t, p in want.items():
                assert mine_tags[t] == pytest.approx(p, abs=1e-5)
        assert n_suggested >= n_checked // 2 and n_suggested < n_checked  # both branches were exercised
    finally:
        store.close()


def brute_vote(cases: list[Planted], q: np.ndarray, skip: str, k: int, field: str) -> dict[str, float]:
    """Reference for multi-point cases: neighbours = top-k cases by best (query row, case point) cosine."""
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    scored = []
    for c in cases:
        if c.id == skip:
            continue
        b = np.stack([unit(v) for _, v in c.points])
        scored.append((float((qn @ b.T).max()), c))
    scored.sort(key=lambda t: -t[0])
    votes: dict[str, float] = {}
    total = 0.0
    for s, c in scored[:k]:
        w = max(s, 0.0)
        total += w
        values = c.tags if field == "tags" else [getattr(c, field)]
        for v in values:
            votes[v] = votes.get(v, 0.0) + w
    return {v: w / total for v, w in votes.items()}


@pytest.mark.parametrize("backend", ["edge", "local"])
def test_case_id_votes_with_all_its_points(tmp_path: Path, backend: str) -> None:
    rng = np.random.default_rng(5)
    cases = grouped_cases(rng, groups=3, per_group=5, dim=DIM, noise=0.6)
    for c in cases[::4]:
        c.equipment_model = "odd-model"
    store = open_planted(tmp_path / "s", cases, DIM, backend=backend)
    try:
        for c in cases:
            q = np.stack([unit(v) for _, v in c.points])
            got = suggest_labels(store, case_id=c.id, k=K, exact=True)
            for field in ("product_line", "equipment_model", "severity", "tags"):
                ref = brute_vote(cases, q, c.id, K, field)
                want = {v: p for v, p in ref.items() if p >= MIN_CONFIDENCE}
                if field != "tags":
                    want = dict(sorted(want.items(), key=lambda kv: -kv[1])[:1])
                mine = {s.value: s.confidence for s in got if s.field == field}
                assert set(mine) == set(want), (c.id, field, ref)
                for v in want:
                    assert mine[v] == pytest.approx(want[v], abs=1e-5)
    finally:
        store.close()


def test_zero_shot_is_a_softmax_of_best_cosines() -> None:
    rng = np.random.default_rng(0)
    q = rng.normal(size=(3, DIM))
    labels = {f"v{i}": rng.normal(size=DIM) for i in range(4)}
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    cos = np.array([[float(r @ v / np.linalg.norm(v)) for v in labels.values()] for r in qn]).max(axis=0)
    want = softmax(cos / 0.02)
    got = zero_shot(q, labels)
    np.testing.assert_allclose([got[n] for n in labels], want, rtol=0, atol=1e-9)
    assert zero_shot(q, {}) == {}


def test_small_knowledge_bases_suggest_nothing_from_neighbours(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    two = [Planted(id=f"c{i}", product_line="printer", severity="low", tags=["jam"],
                   points=[("text", unit(rng.normal(size=DIM)))]) for i in range(2)]
    store = open_planted(tmp_path / "s", two, DIM)
    try:  # one neighbour is not evidence: no suggestion (and a bare store has no zero-shot)
        assert suggest_labels(store, case_id="c0") == []
    finally:
        store.close()
    empty = open_planted(tmp_path / "e", [], DIM)
    try:
        assert suggest_labels(empty, vectors=unit(rng.normal(size=DIM))) == []
        with pytest.raises(CaseNotFoundError):
            suggest_labels(empty, case_id="c0")
        with pytest.raises(LabelsInputError, match="exactly one"):
            suggest_labels(empty)
        with pytest.raises(LabelsInputError, match=r"\(n, 16\)"):
            suggest_labels(empty, vectors=np.ones(3))
        with pytest.raises(LabelsInputError, match="k must be"):
            suggest_labels(empty, vectors=np.ones(DIM), k=0)
    finally:
        empty.close()


def test_new_case_zero_shot_and_cache(tmp_path: Path, embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real tiny model: a one-label KB (no neighbour evidence) falls back to zero-shot over described labels;
    label embeddings are computed once; nothing is written."""
    kb = open_kb("edge", tmp_path / "data", embedder)
    try:
        kb.add_case(case_dict(1), media=[("a.jpg", jpeg_bytes(scene(1)))])
        (tmp_path / "data" / "labels.json").write_text(json.dumps(
            {"product_line": {"printer": "paper jams, toner", "pump": "water pumps, leaks", "hvac": "air"}}))
        before = kb_state(kb)
        calls: list[int] = []
        real_embed = kb.state.embed

        def counting(items, *a, **kw):
            calls.append(len(items))
            return real_embed(items, *a, **kw)

        monkeypatch.setattr(kb.state, "embed", counting)
        img = tmp_path / "q.jpg"
        img.write_bytes(jpeg_bytes(scene(9)))
        got = suggest_labels(kb, text="Paper jam in tray 2", media=[img], min_confidence=1e-6)
        assert all(isinstance(s, LabelSuggestion) for s in got)
        zs = {s.field: s for s in got if s.source == "zero-shot"}
        assert set(zs) == {"product_line", "severity"}  # every candidate clears a near-zero threshold
        assert zs["product_line"].value in {"printer", "pump", "hvac"}
        first = list(calls)
        got2 = suggest_labels(kb, text="Paper jam in tray 2", media=[img], min_confidence=1e-6)
        assert [(s.field, s.value, s.source) for s in got2] == [(s.field, s.value, s.source) for s in got]
        np.testing.assert_allclose([s.confidence for s in got2], [s.confidence for s in got], rtol=0, atol=1e-5)
        assert len(calls) == len(first) + 1 and calls[-1] == 2  # only the query was embedded again: labels cached
        from kb_support import assert_same_state
        assert_same_state(kb_state(kb), before)
        (tmp_path / "data" / "labels.json").write_text("{not json")
        with pytest.raises(LabelsInputError, match="labels.json"):
            suggest_labels(kb, text="x", min_confidence=1e-6)
    finally:
        kb.close()


def test_cli_classify(tmp_path: Path, tiny_model_dir: Path) -> None:
    cli = TinyCli(tmp_path / "data", tiny_model_dir)
    assert cli("import", str(make_source(tmp_path / "src", 6))).exit_code == 0
    with cli.open_kb() as kb:
        want = suggest_labels(kb, case_id="case-02")
        before = kb_state(kb)
    res = cli("classify", "case-02", "--json")
    assert res.exit_code == 0, res.output
    got = [LabelSuggestion.model_validate(s) for s in json.loads(res.stdout)]
    assert [s for s in got if s.source == "neighbours"] == want  # the CLI has the model: zero-shot may add more
    img = tmp_path / "new.jpg"
    img.write_bytes(jpeg_bytes(scene(3)))
    res = cli("classify", str(img), "--json")
    assert res.exit_code == 0, res.output
    assert all(s["source"] in ("neighbours", "zero-shot") for s in json.loads(res.stdout))
    res = cli("classify", "case-02")
    assert res.exit_code == 0 and ("suggested" in res.stdout or "no confident suggestion" in res.stdout)
    record = tmp_path / "src" / "new.json"  # a case record: its text and its picture (relative to the file)
    record.write_text(json.dumps({"title": "Fault number 2 on the unit", "media": ["img02.png"]}))
    res = cli("classify", str(record), "--json")
    assert res.exit_code == 0, res.output
    assert all(s["source"] in ("neighbours", "zero-shot") for s in json.loads(res.stdout))
    record.write_text("[1, 2]")
    res = cli("classify", str(record))
    assert res.exit_code == 1 and "must hold one case record" in res.output and "Traceback" not in res.output
    res = cli("classify", "nope")
    assert res.exit_code == 1 and "nope" in res.output and "Traceback" not in res.output
    with cli.open_kb() as kb:
        from kb_support import assert_same_state
        assert_same_state(kb_state(kb), before)


def test_cli_import_suggest_fills_only_missing_fields(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A KB where every case is a high-severity LP-5 printer tagged "jam": the neighbours' vote is unanimous whatever
    the (random) model, so the missing fields of new records are filled with those values and reported as
    suggested; present fields are kept; a record is never written with a value the report does not show."""
    from kb_support import write_jsonl

    cli = TinyCli(tmp_path / "data", tiny_model_dir)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(8):
        scene(i).save(src / f"img{i:02d}.png")
    base = [case_dict(i, [f"img{i:02d}.png"], product_line="printer", equipment_model="LP-5", tags=["jam"],
                      severity="high") for i in range(5)]
    assert cli("import", str(write_jsonl(src / "base.jsonl", base))).exit_code == 0
    new = [
        {k: v for k, v in case_dict(5, ["img05.png"]).items() if k not in ("product_line", "tags", "equipment_model")},
        {**{k: v for k, v in case_dict(6, ["img06.png"]).items() if k not in ("tags",)}, "product_line": "pump"},
        case_dict(7, ["img07.png"], severity="low"),  # complete: nothing to suggest
    ]
    path = write_jsonl(src / "new.jsonl", new)
    original = path.read_text()
    res = cli("import", str(path), "--suggest", "--json")
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["added"] == 3 and path.read_text() == original  # the source file is not modified
    got = {(s["case_id"], s["field"]): s for s in rep["suggested"]}
    assert all(s["suggested"] is True and s["confidence"] >= MIN_CONFIDENCE for s in rep["suggested"])
    assert {k: v["value"] for k, v in got.items()} == {
        ("case-05", "product_line"): "printer", ("case-05", "equipment_model"): "LP-5", ("case-05", "tags"): ["jam"],
        ("case-05", "severity"): "high", ("case-06", "tags"): ["jam"], ("case-06", "severity"): "high"}
    assert {v["source"] for v in got.values()} == {"neighbours"}
    with cli.open_kb() as kb:
        c5, c6, c7 = (kb.get(f"case-0{i}") for i in (5, 6, 7))
        assert (c5.product_line, c5.equipment_model, c5.tags, c5.severity) == ("printer", "LP-5", ["jam"], "high")
        assert (c6.product_line, c6.equipment_model, c6.tags, c6.severity) == ("pump", "M0", ["jam"], "high")
        assert (c7.product_line, c7.tags, c7.severity) == (case_dict(7)["product_line"], case_dict(7)["tags"], "low")
    res = cli("import", str(src / "img00.png"), "--suggest")  # not an import source: the import's own message
    assert res.exit_code == 1 and "unsupported import source" in res.output and "Traceback" not in res.output


def test_store_of_another_embedder_gets_a_clear_message(tmp_path: Path, embedder) -> None:
    """A KB opened (non-strict) on a store whose vectors come from another embedder: classifying or searching new
    text/media refuses with a message naming the mismatch and the fix; stored-vector reads still work."""
    from knowledge_base.kb import KnowledgeBase
    from knowledge_base.semantic_search import SearchInputError, semantic_search
    from rag.config import Settings

    cases = grouped_cases(np.random.default_rng(3), groups=2, per_group=3, dim=embedder.dim)
    store = open_planted(tmp_path / "data" / "store", cases, embedder.dim)
    kb = KnowledgeBase.open(Settings(data_dir=tmp_path / "data"), embedder, store=store, strict=False)
    try:
        with pytest.raises(LabelsInputError, match="planted-embedder.*reindex"):
            suggest_labels(kb, text="paper jam")
        with pytest.raises(SearchInputError, match="planted-embedder.*reindex"):
            semantic_search(kb, text="paper jam")
        assert suggest_labels(kb, case_id=cases[0].id)  # stored vectors: comparable (zero-shot is skipped)
    finally:
        kb.close()


def test_one_store_mismatch_check_for_every_reader(tmp_path: Path, embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    """``KBState.store_mismatch`` is the one check: document embedding, label suggestion and semantic search all
    refuse with its message, so a change to it reaches every reader (they used to carry copies of it)."""
    from knowledge_base.semantic_search import SearchInputError, semantic_search
    from knowledge_base.state import KBState
    from rag.store import StoreMismatchError

    kb = open_kb("edge", tmp_path / "data", embedder)
    try:
        assert kb.state.store_mismatch() is None  # a store built by this embedder
        monkeypatch.setattr(KBState, "store_mismatch", lambda self: "planted: another embedder; run `kb reindex`")
        with pytest.raises(StoreMismatchError, match="planted: another embedder"):
            kb.embed([{"text": "paper jam"}])
        with pytest.raises(LabelsInputError, match="planted: another embedder") as e:
            suggest_labels(kb, text="paper jam")
        assert e.value.code == "store_mismatch"
        with pytest.raises(SearchInputError, match="planted: another embedder") as e2:
            semantic_search(kb, text="paper jam")
        assert e2.value.code == "store_mismatch"
    finally:
        kb.close()


def test_labels_json_is_parsed_once_per_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bulk import asks for the label descriptions once per record: the file is read again only when it changed
    (size, modification time), and callers get their own copy."""
    import os

    from knowledge_base.labels import SEVERITY_DESCRIPTIONS, label_descriptions

    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"product_line": {"printer": "laser printers"}}), encoding="utf-8")
    reads: list[Path] = []
    real = Path.read_text

    def counting(self: Path, *a, **kw):
        if self.name == "labels.json":
            reads.append(self)
        return real(self, *a, **kw)

    monkeypatch.setattr(Path, "read_text", counting)
    want = {"severity": SEVERITY_DESCRIPTIONS, "product_line": {"printer": "laser printers"}}
    first = label_descriptions(tmp_path)
    assert first == want
    first["product_line"]["printer"] = "changed by a caller"
    for _ in range(5):
        assert label_descriptions(tmp_path) == want
    assert len(reads) == 1
    path.write_text(json.dumps({"product_line": {"printer": "laser printers, toner"}}), encoding="utf-8")
    assert label_descriptions(tmp_path)["product_line"] == {"printer": "laser printers, toner"} and len(reads) == 2
    st = path.stat()  # same size, other content, a later modification time: read again
    path.write_text(json.dumps({"product_line": {"printer": "laser printers, paper"}}), encoding="utf-8")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert label_descriptions(tmp_path)["product_line"] == {"printer": "laser printers, paper"} and len(reads) == 3
    path.unlink()
    assert label_descriptions(tmp_path) == {"severity": SEVERITY_DESCRIPTIONS}
