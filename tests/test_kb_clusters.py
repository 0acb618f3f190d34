"""Fault clusters (knowledge_base/clusters.py) on planted structure written through the real Qdrant Edge store, and
the ``ragvqa kb clusters`` mechanics on the tiny model.

The expectation is always the planted one: which cases were drawn around which group centre, which are noise
singletons, which pair was written as near-identical, which words each group's documents were written with.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from knowledge_base.clusters import (
    ClusterError,
    ClusterSettings,
    assign_case,
    case_vector,
    compute_clusters,
    load_model,
    save_model,
)
from rag.store import StoreMeta, VectorPoint, point_id
from rag.store.edge import EdgeStore

DIM = 64
EMBEDDER = "planted"
GROUP_WORDS = ["fuser heater thermistor", "impeller cavitation suction", "compressor refrigerant pressure",
               "receipt printer paper"]


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def _payload(cid: str, kind: str, line: str, doc: str, media_id: str | None = None,
             embedder: str = EMBEDDER) -> dict:
    p = {"case_id": cid, "kind": kind, "product_line": line, "equipment_model": "", "tags": [], "title": f"title {cid}",
         "media_id": media_id, "embedder": embedder}
    if kind == "text":
        p["document"] = doc
    else:
        p["thumbnail"] = f"thumbs/{cid}.jpg"
    return p


def plant(store: EdgeStore, seed: int = 0, group_size: int = 6, n_noise: int = 5) -> dict:
    """4 groups of cases (text + 0-2 media points near the group centre) and noise singletons; one near-identical pair.

    Returns the ground truth: case id -> group (-1 for noise), product line, the near-identical pair, the centres.
    """
    rng = np.random.default_rng(seed)
    centres = np.stack([_unit(rng.normal(size=DIM)) for _ in range(4)])
    lines = ["printer", "pump", "hvac", None]  # group 3 mixes two product lines (planted: 3 pos + 3 printer)
    truth: dict[str, int] = {}
    line_of: dict[str, str] = {}
    points = []
    for g in range(4):
        for k in range(group_size):
            cid = f"g{g}-c{k}"
            line = lines[g] or ("pos" if k % 2 else "printer")
            truth[cid], line_of[cid] = g, line
            doc = f"{GROUP_WORDS[g]} case {k} shows the usual fault"
            t = _unit(centres[g] + rng.normal(scale=0.1, size=DIM))
            points.append(VectorPoint(id=point_id(cid), vector=t, payload=_payload(cid, "text", line, doc)))
            for m in range(k % 3):  # 0, 1 or 2 media: cases without media are in every group
                mid = f"m-{g}{k}{m}"
                v = _unit(centres[g] + rng.normal(scale=0.1, size=DIM))
                points.append(VectorPoint(id=point_id(cid, mid), vector=v, payload=_payload(cid, "image", line, "", mid)))
    # a near-identical copy of g0-c1 (same text vector up to tiny noise, no media)
    src = next(p for p in points if p.payload["case_id"] == "g0-c1" and p.payload["kind"] == "text")
    src_media = [p.vector for p in points if p.payload["case_id"] == "g0-c1" and p.payload["kind"] != "text"]
    twin = _unit(src.vector + rng.normal(scale=0.002, size=DIM))
    points.append(VectorPoint(id=point_id("g0-twin"), vector=twin, payload=_payload("g0-twin", "text", "printer", "twin")))
    for m, v in enumerate(src_media):
        mid = f"m-twin{m}"
        points.append(VectorPoint(id=point_id("g0-twin", mid), vector=_unit(v + rng.normal(scale=0.002, size=DIM)),
                                  payload=_payload("g0-twin", "image", "printer", "", mid)))
    truth["g0-twin"], line_of["g0-twin"] = 0, "printer"
    for k in range(n_noise):
        cid = f"noise-{k}"
        truth[cid], line_of[cid] = -1, "printer"
        points.append(VectorPoint(id=point_id(cid), vector=_unit(rng.normal(size=DIM)),
                                  payload=_payload(cid, "text", "printer", f"unrelated words number {k}")))
    store.upsert(points)
    return {"truth": truth, "lines": line_of, "centres": centres, "pair": ("g0-c1", "g0-twin")}


def _snapshot(store: EdgeStore) -> dict:
    return {p.id: (json.dumps(p.payload, sort_keys=True), p.vector.tobytes())
            for p in store.scroll(with_vectors=True)}


@pytest.fixture(params=[0, 1, 2])  # seeds 0 and 2: HDBSCAN alone puts a noise case in a family
def planted(tmp_path: Path, request: pytest.FixtureRequest):
    store = EdgeStore.open(tmp_path / "qdrant", StoreMeta(embedder_id=EMBEDDER, dim=DIM))
    truth = plant(store, seed=request.param)
    yield store, truth
    store.close()


def test_planted_groups_are_found_and_noise_stays_unclustered(planted, tmp_path: Path) -> None:
    store, gt = planted
    before = _snapshot(store)
    report, model = compute_clusters(store)
    save_model(model, tmp_path)
    assert _snapshot(store) == before, "computing clusters wrote to the vector store"

    truth = gt["truth"]
    grouped = [c for c in truth if truth[c] >= 0]
    # the planted partition, exactly: every group is one cluster, no two groups share one
    got = [report.assignments[c] for c in grouped]
    assert None not in got
    assert adjusted_rand_score([truth[c] for c in grouped], got) == pytest.approx(1.0)
    assert report.n_clusters == 4
    # the noise singletons stay unclustered
    assert all(report.assignments[c] is None for c in truth if truth[c] < 0)
    assert set(report.unclustered) == {c for c in truth if truth[c] < 0}

    by_id = {c.id: c for c in report.clusters}
    for g in range(4):
        cl = by_id[report.assignments[f"g{g}-c0"]]
        members = {c for c in truth if truth[c] == g}
        assert set(cl.members) == members and cl.size == len(members)
        planted_mix: dict[str, int] = {}
        for c in members:
            planted_mix[gt["lines"][c]] = planted_mix.get(gt["lines"][c], 0) + 1
        assert cl.product_lines == planted_mix
        assert cl.mixed_product_lines == (g == 3)  # only group 3 was planted with two product lines
        # distinguishing terms: the words that group's documents were written with
        assert set(GROUP_WORDS[g].split()) & set(cl.terms), (g, cl.terms)
        # most central: the member whose vector is closest to the planted members' mean direction
        vecs = {c: _case_vec(store, c) for c in members}
        mean = _unit(np.mean(list(vecs.values()), axis=0))
        assert cl.central[0].case_id == max(vecs, key=lambda c: float(vecs[c] @ mean))

    # merge candidates: exactly the planted near-identical pair
    pairs = {frozenset((m.case_id, m.other_case_id)) for m in report.merge_candidates}
    assert pairs == {frozenset(gt["pair"])}
    assert len(report.map_xy) == len(truth)


def _case_vec(store: EdgeStore, cid: str) -> np.ndarray:
    """Reference case vector, written here from the rule stated in the module docstring (text and media mean, equal
    weights), on vectors read back from the store."""
    pts = list(store.scroll(filters={"case_id": cid}, with_vectors=True))
    text = [p.vector for p in pts if p.payload["kind"] == "text"][0]
    media = [p.vector for p in pts if p.payload["kind"] != "text"]
    t = text / np.linalg.norm(text)
    if not media:
        return t
    m = np.mean([v / np.linalg.norm(v) for v in media], axis=0)
    m /= np.linalg.norm(m)
    return (t + m) / np.linalg.norm(t + m)


def test_case_vector_weights_text_and_media_equally() -> None:
    t = np.array([1.0, 0.0, 0.0], dtype=np.float32)
    media = [np.array([0.0, 2.0, 0.0], dtype=np.float32), np.array([0.0, 0.0, 3.0], dtype=np.float32)]
    # media mean direction (0, 1, 1)/sqrt2; text + that = (1, .707, .707) -> normalised
    expect = np.array([1.0, 2 ** -0.5, 2 ** -0.5]) / np.sqrt(2.0)
    np.testing.assert_allclose(case_vector(t, media), expect, atol=1e-6)
    np.testing.assert_allclose(case_vector(t, []), t, atol=1e-7)


def test_incremental_assignment_from_the_saved_model(planted, tmp_path: Path) -> None:
    store, gt = planted
    report, model = compute_clusters(store)
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    rng = np.random.default_rng(42)
    for g in range(4):
        new = _unit(gt["centres"][g] + rng.normal(scale=0.05, size=DIM))  # clearly inside the family
        a = loaded.assign(new)
        assert a.cluster == report.assignments[f"g{g}-c0"]
    assert loaded.assign(_unit(rng.normal(size=DIM))).cluster is None  # far from every family
    # a case written to the store after clustering, assigned from its stored points
    before = _snapshot(store)
    new_text = _unit(gt["centres"][2] + rng.normal(scale=0.05, size=DIM))
    store.upsert([VectorPoint(id=point_id("late"), vector=new_text, payload=_payload("late", "text", "hvac", "x"))])
    before = _snapshot(store)
    assert assign_case(store, loaded, "late").cluster == report.assignments["g2-c0"]
    assert _snapshot(store) == before
    with pytest.raises(ClusterError, match="no case with id"):
        assign_case(store, loaded, "nope")


def test_model_from_another_embedder_is_refused(planted, tmp_path: Path) -> None:
    store, _ = planted
    _, model = compute_clusters(store)
    save_model(model, tmp_path)
    other = EdgeStore.open(tmp_path / "other", StoreMeta(embedder_id="another-model", dim=DIM))
    try:
        other.upsert([VectorPoint(id=point_id("a"), vector=_unit(np.ones(DIM)),
                                  payload=_payload("a", "text", "x", "d", embedder="another-model"))])
        with pytest.raises(ClusterError, match="another-model"):
            assign_case(other, load_model(tmp_path), "a")
    finally:
        other.close()
    with pytest.raises(ClusterError, match="no saved cluster model"):
        load_model(tmp_path / "empty")


def test_empty_one_case_one_label_and_mixed_embedders(tmp_path: Path) -> None:
    store = EdgeStore.open(tmp_path / "q", StoreMeta(embedder_id=EMBEDDER, dim=DIM))
    try:
        with pytest.raises(ClusterError, match="no cases"):
            compute_clusters(store)
        store.upsert([VectorPoint(id=point_id("only"), vector=_unit(np.ones(DIM)),
                                  payload=_payload("only", "text", "printer", "just one"))])
        report, model = compute_clusters(store)
        assert report.n_cases == 1 and report.n_clusters == 0 and report.unclustered == ["only"]
        assert "fewer than min_cluster_size" in report.note
        assert model.assign(_unit(np.ones(DIM))).cluster is None
        # a point written by another embedder: clear refusal, nothing written
        store.upsert([VectorPoint(id=point_id("alien"), vector=_unit(np.ones(DIM)),
                                  payload=_payload("alien", "text", "printer", "x", embedder="old-model"))])
        before = _snapshot(store)
        with pytest.raises(ClusterError, match="old-model"):
            compute_clusters(store)
        assert _snapshot(store) == before
    finally:
        store.close()


def test_one_product_line_kb(tmp_path: Path) -> None:
    store = EdgeStore.open(tmp_path / "q", StoreMeta(embedder_id=EMBEDDER, dim=DIM))
    try:
        gt = plant(store, seed=3, n_noise=0)
        # rewrite every payload to one product line: no cluster may be flagged as mixed
        store.overwrite_payload({p.id: {**p.payload, "product_line": "printer"} for p in store.scroll()})
        report, _ = compute_clusters(store, ClusterSettings(min_cluster_size=3))
        assert report.n_clusters == 4
        assert not any(c.mixed_product_lines for c in report.clusters)
        assert all(c.product_lines == {"printer": c.size} for c in report.clusters)
        assert len(gt["truth"]) == report.n_cases
    finally:
        store.close()


@pytest.mark.slow
def test_cli_clusters_end_to_end_on_the_tiny_model(tmp_path: Path, tiny_model_dir: Path, monkeypatch) -> None:
    from kb_support import make_source
    from typer.testing import CliRunner

    from ui.cli import app

    monkeypatch.setenv("RAGVQA_EMBEDDER_MODEL", str(tiny_model_dir))
    runner = CliRunner()
    data = tmp_path / "data"
    src = make_source(tmp_path / "src", 6)
    r = runner.invoke(app, ["kb", "import", str(src), "--data-dir", str(data), "--models", "tiny"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    out = tmp_path / "report"
    r = runner.invoke(app, ["kb", "clusters", "--json", "--out", str(out), "--min-cluster-size", "2",
                            "--data-dir", str(data), "--models", "tiny"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["n_cases"] == 6 and set(rep["assignments"]) == {f"case-{i:02d}" for i in range(6)}
    for name in ("report.json", "report.md", "map.png"):
        assert (out / name).stat().st_size > 0
    assert (data / "clusters" / "model.npz").exists()
    r = runner.invoke(app, ["kb", "clusters", "--assign", "case-03", "--json", "--data-dir", str(data),
                            "--models", "tiny"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["cluster"] == rep["assignments"]["case-03"]
    # empty knowledge base: a clear message, no traceback
    r = runner.invoke(app, ["kb", "clusters", "--data-dir", str(tmp_path / "empty"), "--models", "tiny"])
    assert r.exit_code != 0
    assert "Traceback" not in r.output


def test_case_vector_cache_reads_only_new_or_changed_cases(tmp_path: Path) -> None:
    from knowledge_base.clusters import case_vectors

    store = EdgeStore.open(tmp_path / "q", StoreMeta(embedder_id=EMBEDDER, dim=DIM))
    try:
        plant(store, seed=4, n_noise=2)
        # give every point the content hash ingestion writes (text: content_hash, media: sha256)
        store.overwrite_payload({p.id: {**p.payload, ("content_hash" if p.payload["kind"] == "text" else "sha256"):
                                        f"h-{p.id}-v1"} for p in store.scroll()})
        cache = tmp_path / "clusters"
        first = case_vectors(store, cache_dir=cache)
        assert first.read_from_store == len(first) and (cache / "case_vectors.npz").is_file()
        for i, cid in enumerate(first.ids):  # the reference rule, on vectors read back from the store
            np.testing.assert_allclose(first.vectors[i], _case_vec(store, cid), atol=1e-5)
        second = case_vectors(store, cache_dir=cache)
        assert second.read_from_store == 0 and second.ids == first.ids
        np.testing.assert_array_equal(second.vectors, first.vectors)
        # one case re-embedded (new vector, new content hash), one deleted: only the changed case is read again
        new = _unit(np.random.default_rng(9).normal(size=DIM))
        old = next(p for p in store.scroll(filters={"case_id": "g1-c0"}) if p.payload["kind"] == "text")
        store.upsert([VectorPoint(id=old.id, vector=new, payload={**old.payload, "content_hash": "h-new"})])
        store.delete_case("g2-c3")
        third = case_vectors(store, cache_dir=cache)
        assert third.read_from_store == 1 and "g2-c3" not in third.ids
        np.testing.assert_allclose(third.vectors[third.ids.index("g1-c0")], _case_vec(store, "g1-c0"), atol=1e-5)
        assert not np.allclose(third.vectors[third.ids.index("g1-c0")], first.vectors[first.ids.index("g1-c0")])
        # a cache written for another embedder is ignored
        other = EdgeStore.open(tmp_path / "o", StoreMeta(embedder_id="other", dim=DIM))
        try:
            other.upsert([VectorPoint(id=point_id("x"), vector=new, payload={
                **_payload("x", "text", "pos", "d", embedder="other"), "content_hash": "h"})])
            assert case_vectors(other, cache_dir=cache).read_from_store == 1
        finally:
            other.close()
    finally:
        store.close()


def test_screened_merge_search_finds_the_same_pairs(planted, monkeypatch) -> None:
    import knowledge_base.clusters as clusters

    store, gt = planted
    monkeypatch.setattr(clusters, "EXACT_GROUP", 1)  # every group goes through the PCA screen
    report, _ = compute_clusters(store)
    assert {frozenset((m.case_id, m.other_case_id)) for m in report.merge_candidates} == {frozenset(gt["pair"])}
