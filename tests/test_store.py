"""Vector-store tests on the real engines: Qdrant Edge (in tmp_path), qdrant-client local mode, and a Qdrant
server when ``RAGVQA_QDRANT_URL`` is set. No mocks: the point is to pin the behaviour of the engine we ship.

Exact-neighbour assertions use ``exact=True`` or sets small enough to stay unindexed.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rag.store import (
    EdgeStore,
    ServerStore,
    StoreConfig,
    StoreError,
    StoreMeta,
    StoreMismatchError,
    VectorPoint,
    VectorStore,
    open_store,
    point_id,
)

DIM = 32
META = StoreMeta(embedder_id="test-embedder", dim=DIM)
SERVER_URL = os.environ.get("RAGVQA_QDRANT_URL")


# ------------------------------------------------------------------------------------------------ fixtures
class Backend:
    """Opens stores of one backend; ``reopen`` goes through the same persistence path the app uses."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.root = tmp_path / "qdrant"
        self.collection = f"ragvqa_test_{uuid.uuid4().hex[:8]}"
        self.client = None
        if kind == "local":
            from qdrant_client import QdrantClient

            self.client = QdrantClient(location=":memory:")
        elif kind == "server":
            from qdrant_client import QdrantClient

            self.client = QdrantClient(url=SERVER_URL, api_key=os.environ.get("RAGVQA_QDRANT_API_KEY"))

    def open(self, meta: StoreMeta | None = META) -> VectorStore:
        if self.kind == "edge":
            return EdgeStore.open(self.root, meta)
        return ServerStore.open(client=self.client, collection=self.collection, meta=meta)

    def cleanup(self) -> None:
        if self.kind == "server" and self.client is not None:
            for c in self.client.get_collections().collections:
                if c.name.startswith(self.collection):
                    self.client.delete_collection(c.name)
        if self.client is not None:
            self.client.close()


@pytest.fixture(
    params=[
        "edge",
        "local",
        pytest.param(
            "server",
            marks=pytest.mark.skipif(not SERVER_URL, reason="RAGVQA_QDRANT_URL not set (no Qdrant server to test)"),
        ),
    ]
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = Backend(request.param, tmp_path)
    yield b
    b.cleanup()


@pytest.fixture
def store(backend: Backend) -> Iterator[VectorStore]:
    s = backend.open()
    yield s
    s.close()


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def make_points(n_cases: int = 12, media_per_case: int = 2, seed: int = 0, dim: int = DIM) -> list[VectorPoint]:
    """Each case: one text vector + media vectors near a case centre; payloads rotate over filter values."""
    rng = np.random.default_rng(seed)
    points = []
    for c in range(n_cases):
        centre = rng.normal(size=dim)
        case_id = f"case-{c:03d}"
        common = {
            "case_id": case_id,
            "product_line": ["printers", "scanners", "copiers"][c % 3],
            "equipment_model": f"M-{c % 4}",
            "tags": [["jam"], ["toner", "streaks"], ["network"], []][c % 4],
        }
        points.append(
            VectorPoint(
                id=point_id(case_id),
                vector=_unit(centre + 0.3 * rng.normal(size=dim)),
                payload={**common, "media_id": None, "kind": "text"},
            )
        )
        for m in range(media_per_case):
            media_id = f"m-{c:03d}-{m}"
            points.append(
                VectorPoint(
                    id=point_id(case_id, media_id),
                    vector=_unit(centre + 0.3 * rng.normal(size=dim)),
                    payload={**common, "media_id": media_id, "kind": "image"},
                )
            )
    return points


# ------------------------------------------------------------------------------------------------ basics
def test_point_id_is_deterministic() -> None:
    assert point_id("c1") == point_id("c1")
    assert point_id("c1") != point_id("c1", "m1") != point_id("c2", "m1")
    uuid.UUID(point_id("c1", "m1"))
    with pytest.raises(ValueError):
        point_id("")


def test_upsert_search_exact_neighbour(store: VectorStore) -> None:
    pts = make_points()
    assert store.upsert(pts) == len(pts)
    assert store.count() == len(pts)
    for p in pts[::7]:
        hits = store.search(p.vector, limit=5, exact=True)
        assert hits[0].id == p.id
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert hits[0].payload == p.payload
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # upsert is idempotent: same ids overwrite
    store.upsert(pts[:5])
    assert store.count() == len(pts)


def test_filters_single_and_any_of(store: VectorStore) -> None:
    pts = make_points()
    store.upsert(pts)
    q = pts[0].vector
    hits = store.search(q, limit=50, filters={"product_line": "scanners"}, exact=True)
    assert hits and all(h.payload["product_line"] == "scanners" for h in hits)
    assert len(hits) == sum(p.payload["product_line"] == "scanners" for p in pts)

    hits = store.search(q, limit=50, filters={"product_line": ["scanners", "copiers"], "kind": "text"}, exact=True)
    expected = {p.id for p in pts if p.payload["product_line"] in ("scanners", "copiers") and p.payload["kind"] == "text"}
    assert {h.id for h in hits} == expected

    # tags is a list field: "any of" matches when one of the point's tags is in the list
    assert store.count({"tags": ["jam", "network"]}) == sum(
        bool({"jam", "network"} & set(p.payload["tags"])) for p in pts
    )
    assert store.count({"equipment_model": "M-1"}) == sum(p.payload["equipment_model"] == "M-1" for p in pts)
    # None / [] mean "no constraint" (empty UI pickers)
    assert store.count({"product_line": None, "tags": []}) == len(pts)
    # the default (approximate) path honours filters too
    assert all(h.payload["equipment_model"] == "M-2" for h in store.search(q, 10, filters={"equipment_model": "M-2"}))


def test_bad_input_is_refused_and_nothing_written(store: VectorStore) -> None:
    pts = make_points(n_cases=2)
    with pytest.raises(ValueError, match=r"length 31.*dim=32"):
        store.search(np.ones(DIM - 1), limit=3)
    with pytest.raises(ValueError, match=r"unknown filter key 'colour'.*product_line, equipment_model, tags"):
        store.search(pts[0].vector, filters={"colour": "red"})
    with pytest.raises(ValueError, match="non-empty strings"):
        store.count({"product_line": [1]})
    with pytest.raises(ValueError, match="positive integer"):
        store.search(pts[0].vector, limit=0)

    bad_dim = VectorPoint(id=point_id("x"), vector=np.ones(DIM + 1), payload={"case_id": "x", "kind": "text"})
    with pytest.raises(ValueError, match=r"vector length 33, store expects dim=32"):
        store.upsert([*pts, bad_dim])
    with pytest.raises(ValueError, match="case_id"):
        store.upsert([*pts, {"id": point_id("y"), "vector": np.ones(DIM), "payload": {"kind": "text"}}])
    with pytest.raises(ValueError, match="kind"):
        store.upsert([{"id": point_id("y"), "vector": np.ones(DIM), "payload": {"case_id": "y", "kind": "audio"}}])
    with pytest.raises(ValueError, match="UUID"):
        store.upsert([{"id": "not-a-uuid", "vector": np.ones(DIM), "payload": {"case_id": "y", "kind": "text"}}])
    with pytest.raises(ValueError, match="NaN"):
        VectorPoint(id=point_id("z"), vector=[float("nan")] * DIM, payload={"case_id": "z", "kind": "text"})
    assert store.count() == 0  # the valid points in the rejected batches were not written either


def test_search_cases_groups_per_case(store: VectorStore) -> None:
    pts = make_points(n_cases=12, media_per_case=2)
    # one case with many near-identical media: its points would crowd out a plain top-k
    rng = np.random.default_rng(5)
    target = pts[0]
    crowd = [
        VectorPoint(
            id=point_id("case-000", f"extra-{i}"),
            vector=_unit(target.vector + 0.01 * rng.normal(size=DIM)),
            payload={**target.payload, "media_id": f"extra-{i}", "kind": "image"},
        )
        for i in range(60)
    ]
    store.upsert(pts + crowd)
    res = store.search_cases(target.vector, limit_cases=5, per_case_points=3, exact=True)
    assert len(res) == 5
    assert len({c.case_id for c in res}) == 5
    assert res[0].case_id == "case-000"
    assert res[0].hits[0].id == target.id
    assert len(res[0].hits) == 3
    for c in res:
        assert all(h.payload["case_id"] == c.case_id for h in c.hits)
        assert [h.score for h in c.hits] == sorted((h.score for h in c.hits), reverse=True)
        assert c.score == c.hits[0].score
    assert [c.score for c in res] == sorted((c.score for c in res), reverse=True)
    # asking for more cases than exist returns them all
    assert len(store.search_cases(target.vector, limit_cases=100, exact=True)) == 12
    # filtered grouping
    res = store.search_cases(target.vector, limit_cases=10, filters={"product_line": "copiers"}, exact=True)
    assert res and all(h.payload["product_line"] == "copiers" for c in res for h in c.hits)
    # only the payload fields asked for (case_id always, for the grouping), same cases and scores
    slim = store.search_cases(target.vector, limit_cases=5, exact=True, payload_keys=["kind"])
    full = store.search_cases(target.vector, limit_cases=5, exact=True)
    assert [c.case_id for c in slim] == [c.case_id for c in full]
    assert [c.score for c in slim] == pytest.approx([c.score for c in full], abs=1e-6)  # same search, not bit-exact
    assert all(set(h.payload) <= {"case_id", "kind"} and "case_id" in h.payload for c in slim for h in c.hits)
    assert set(store.search(target.vector, limit=1, payload_keys=["product_line"])[0].payload) == {"product_line"}
    with pytest.raises(ValueError, match="payload_keys"):
        store.search(target.vector, limit=1, payload_keys="kind")  # type: ignore[arg-type]


def test_delete_case_retrieve_scroll(store: VectorStore) -> None:
    pts = make_points(n_cases=6, media_per_case=3)
    store.upsert(pts)
    assert store.case_ids() == {f"case-{c:03d}" for c in range(6)}
    store.delete_case("case-002")
    assert store.count({"case_id": "case-002"}) == 0
    assert store.count() == len(pts) - 4
    assert "case-002" not in store.case_ids()
    assert all(h.payload["case_id"] != "case-002" for h in store.search(pts[8].vector, 50, exact=True))

    store.delete_points([pts[0].id])
    got = store.retrieve([pts[1].id, pts[0].id, str(uuid.uuid4())], with_vectors=True)
    assert [g.id for g in got] == [pts[1].id]
    np.testing.assert_allclose(got[0].vector, pts[1].vector, atol=1e-5)
    assert got[0].payload == pts[1].payload

    scrolled = list(store.scroll(batch_size=5))
    assert len(scrolled) == store.count() == len(pts) - 5
    assert len({p.id for p in scrolled}) == len(scrolled)
    assert all(p.vector is None for p in scrolled)
    with_vec = list(store.scroll(filters={"kind": "text"}, with_vectors=True, batch_size=2))
    assert {p.payload["kind"] for p in with_vec} == {"text"}
    assert all(p.vector is not None and p.vector.shape == (DIM,) for p in with_vec)
    with pytest.raises(ValueError):
        store.delete_points(["nope"])


def test_meta_mismatch_refused(backend: Backend) -> None:
    s = backend.open()
    s.upsert(make_points(n_cases=1))
    if backend.kind == "edge":
        s.close()  # Edge: one process owns the shard
    with pytest.raises(StoreMismatchError) as ei:
        backend.open(StoreMeta(embedder_id="other-embedder", dim=64))
    msg = str(ei.value)
    assert "test-embedder" in msg and "other-embedder" in msg
    assert "32" in msg and "64" in msg
    assert "ragvqa kb reindex" in msg
    assert isinstance(ei.value, ValueError)
    s2 = backend.open(None)  # no meta: open as it is
    assert s2.meta.embedder_id == "test-embedder" and s2.count() == 3
    s2.close()
    if backend.kind != "edge":
        s.close()


def test_reindex_keeps_old_until_commit(backend: Backend) -> None:
    old = backend.open()
    old_pts = make_points(n_cases=3)
    old.upsert(old_pts)
    new_meta = StoreMeta(embedder_id="new-embedder", dim=16)

    # abort: the live store is untouched, the half-built one disappears
    tmp = old.begin_reindex(new_meta)
    tmp.upsert(make_points(n_cases=1, dim=16))
    old.abort_reindex(tmp)
    assert old.count() == len(old_pts)

    new = old.begin_reindex(new_meta)
    new_pts = make_points(n_cases=2, dim=16, seed=1)
    new.upsert(new_pts)
    # still serving the old store with the old vectors
    assert old.count() == len(old_pts)
    assert old.search(old_pts[0].vector, 1, exact=True)[0].id == old_pts[0].id
    assert new.count() == len(new_pts)
    if backend.kind != "edge":  # a second handle on the alias still sees the old data (Edge: shard is locked)
        other = backend.open(None)
        assert other.meta.embedder_id == "test-embedder"
        other.close()

    old.commit_reindex(new)
    assert old.closed
    with pytest.raises(StoreError):
        old.count()
    assert new.search(new_pts[0].vector, 1, exact=True)[0].id == new_pts[0].id
    new.close()

    reopened = backend.open(new_meta)
    assert reopened.meta.embedder_id == "new-embedder" and reopened.dim == 16
    assert reopened.count() == len(new_pts)
    reopened.close()
    with pytest.raises(StoreMismatchError):
        backend.open(META)
    if backend.kind == "edge":
        assert isinstance(new, EdgeStore)
        assert sorted(p.name for p in backend.root.iterdir()) == ["ACTIVE", new.version]  # old one deleted
    else:
        assert isinstance(new, ServerStore) and backend.client is not None
        names = {c.name for c in backend.client.get_collections().collections}
        assert names == {new.collection}  # old collection dropped, alias moved


def test_edge_reopen_after_close_persists(tmp_path: Path) -> None:
    pts = make_points()
    s = EdgeStore.open(tmp_path / "q", META)
    s.upsert(pts)
    s.delete_case("case-001")
    with pytest.raises(StoreError, match="Qdrant Edge load"):
        EdgeStore.open(tmp_path / "q", META)  # one process owns the shard (WAL lock)
    s.close()
    s.close()  # idempotent
    s = EdgeStore.open(tmp_path / "q", META)
    assert s.count() == len(pts) - 3
    assert s.search(pts[7].vector, 1, exact=True)[0].id == pts[7].id  # pts[3:6] were case-001
    assert s.meta.created_at.tzinfo is not None
    s.close()


def test_edge_unfinished_build_is_ignored(tmp_path: Path) -> None:
    root = tmp_path / "q"
    (root / "v000001" / "shard").mkdir(parents=True)  # crashed first build: no meta, no ACTIVE
    with pytest.raises(StoreError, match="no vector store"):
        EdgeStore.open(root)
    s = EdgeStore.open(root, META)
    assert s.version == "v000002"
    s.close()
    (root / "ACTIVE").write_text("../../etc\n")
    with pytest.raises(StoreError, match="not a store version"):
        EdgeStore.open(root, META)


def test_quantized_hnsw_returns_right_neighbour(tmp_path: Path) -> None:
    """int8 + HNSW actually built (tiny indexing threshold), searched with rescoring."""
    dim = 64
    meta = StoreMeta(embedder_id="q", dim=dim, quantization=True)
    cfg = StoreConfig(store_indexing_threshold_kb=1, store_full_scan_threshold_kb=1, store_hnsw_ef=64)
    s = EdgeStore.open(tmp_path / "q", meta, config=cfg)
    rng = np.random.default_rng(3)
    centres = _unit(rng.normal(size=(20, dim)))
    vecs = _unit(centres[rng.integers(0, 20, size=1500)] + 0.08 * rng.normal(size=(1500, dim)))
    pts = [
        VectorPoint(id=point_id(f"c{i}"), vector=v, payload={"case_id": f"c{i}", "kind": "text", "product_line": f"p{i % 4}"})
        for i, v in enumerate(vecs)
    ]
    s.upsert(pts)
    s.optimize()
    assert s.info()["indexed_vectors"] > 0
    for i in range(0, 1500, 97):
        q = _unit(vecs[i] + 0.01 * rng.normal(size=dim))
        assert s.search(q, 1)[0].id == pts[i].id
        hit = s.search(q, 1, filters={"product_line": f"p{i % 4}"})[0]
        assert hit.id == pts[i].id
    s.close()


def test_open_store_factory(tmp_path: Path) -> None:
    s = open_store(embedder_id="e", dim=DIM, data_dir=tmp_path)
    assert isinstance(s, EdgeStore) and (tmp_path / "qdrant" / "ACTIVE").exists()
    s.close()
    s = open_store(embedder_id="e", dim=DIM, data_dir=tmp_path, qdrant_location=":memory:", qdrant_collection="kb")
    assert isinstance(s, ServerStore) and s.local
    s.upsert(make_points(n_cases=1))
    assert s.count() == 3
    s.close()
    with pytest.raises(ValueError, match="both"):
        open_store(embedder_id="e", dim=None, data_dir=tmp_path)


def test_store_bench_smoke(tmp_path: Path) -> None:
    from eval.bench_store import render_markdown, run_store_bench, write_report

    res = run_store_bench(sizes=(2000,), dims=(64,), n_queries=30, n_queries_local=5, work_dir=tmp_path)
    run = res["runs"][0]
    assert set(run["engines"]) == {
        "edge_exact", "edge_hnsw_f32", "edge_hnsw_int8_rescore", "edge_hnsw_int8_rescore_acorn", "client_local_mode"
    }
    assert run["shipped_engine"] == "edge_hnsw_int8_rescore"
    for rows in run["engines"].values():
        assert set(rows) == {"unfiltered", "product_line", "equipment_model"}
        for r in rows.values():
            assert r["recall@10"] >= 0.99 and 0 < r["p50_ms"] <= r["p95_ms"]
    assert res["goal"] is None
    assert "| edge_hnsw_int8_rescore (app) | filter equipment_model |" in render_markdown(res)
    jpath, mpath = write_report(res, tmp_path / "out")
    assert jpath.exists() and mpath.read_text().startswith("# Vector store benchmark")


# ------------------------------------------------------------------------------------------------ int8 (issue 11)
class _Spy:
    """Pass-through spy around a real engine handle (Edge shard, qdrant-client): records the calls of one method and
    forwards every call unchanged, so the engine still computes every result. Not a mock."""

    def __init__(self, inner: object, method: str) -> None:
        self._inner, self._method, self.calls = inner, method, []

    def __getattr__(self, name: str):
        attr = getattr(self._inner, name)
        if name != self._method:
            return attr

        def recording(*args, **kwargs):
            self.calls.append((args, kwargs))
            return attr(*args, **kwargs)

        return recording


def _planted(n: int = 1500, dim: int = 64, seed: int = 3) -> np.ndarray:
    """Unit vectors around 20 centres: structured like embeddings, so HNSW is exact enough to compare with numpy."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(20, dim)))
    return _unit(centres[rng.integers(0, 20, size=n)] + 0.08 * rng.normal(size=(n, dim)))


def _app_store(backend_kind: str, tmp_path: Path, dim: int, **overrides) -> VectorStore:
    """A store opened the way the app opens it (Settings -> Settings.store_config() -> open_store)."""
    from rag.config import Settings

    s = Settings(data_dir=tmp_path / "data", qdrant_url=SERVER_URL if backend_kind == "server" else None,
                 qdrant_collection=f"ragvqa_int8_{uuid.uuid4().hex[:8]}")
    return open_store(embedder_id="int8-test", dim=dim, config=s.store_config(), **overrides)


def _engine_quantization(store: VectorStore) -> tuple[str | None, bool]:
    """(quantization type in the engine's collection/shard config, whether built int8 vectors exist), from the
    engine's own records: Edge's ``edge_config.json`` and segment configs, the server's collection info."""
    import json

    if isinstance(store, EdgeStore):
        cfg = json.loads((store.shard_dir / "edge_config.json").read_text())
        q = (cfg.get("quantization_config") or {}).get("scalar", {}).get("type")
        built = False
        for seg in (store.shard_dir / "segments").iterdir():
            seg_cfg = json.loads((seg / "segment.json").read_text())["config"]["vector_data"]["dense"]
            if (seg_cfg.get("quantization_config") or {}).get("scalar", {}).get("type") == "int8":
                built = built or (seg / "vector_storage-dense" / "quantized.data").is_file()
        return q, built
    assert isinstance(store, ServerStore)
    info = store.client.get_collection(store.collection)
    q = info.config.quantization_config
    return (None if q is None else str(q.scalar.type.value)), bool(info.indexed_vectors_count)


def _raw_scores(store: VectorStore, q: np.ndarray, k: int, rescore: bool) -> dict[str, float]:
    """Top-k straight from the engine with quantized search and rescoring on or off (not through the store)."""
    if isinstance(store, EdgeStore):
        import qdrant_edge as qe

        req = qe.QueryRequest(limit=k, query=qe.Query.Nearest(q.tolist(), using="dense"), with_payload=False,
                              params=qe.SearchParams(hnsw_ef=128, quantization=qe.QuantizationSearchParams(rescore=rescore)))
        return {str(r.id): float(r.score) for r in store._shard.query(req)}
    from qdrant_client import models as qm

    assert isinstance(store, ServerStore)
    res = store.client.query_points(store.collection, query=q.tolist(), using="dense", limit=k, search_params=qm.SearchParams(
        hnsw_ef=128, quantization=qm.QuantizationSearchParams(rescore=rescore)))
    return {str(p.id): float(p.score) for p in res.points}


@pytest.mark.parametrize("kind", ["edge", pytest.param(
    "server", marks=pytest.mark.skipif(not SERVER_URL, reason="RAGVQA_QDRANT_URL not set (no Qdrant server to test)"))])
def test_default_store_is_int8_and_searches_it_with_rescoring(kind: str, tmp_path: Path) -> None:
    """The shipped configuration really quantizes: the engine holds int8 vectors and searches them (raw int8 scores
    are off by > 1e-4), the app's search asks for rescoring with the configured oversampling (seen by a pass-through
    spy on the engine handle), and its results equal exact numpy search on planted data (scores within 1e-5,
    recall@10 >= 0.98)."""
    from rag.config import Settings

    dim, k = 64, 10
    x = _planted(dim=dim)
    # indexing/full-scan thresholds of 1 KB: build the HNSW + int8 index on 1500 points (the defaults wait for MBs)
    store = _app_store(kind, tmp_path, dim, store_indexing_threshold_kb=1, store_full_scan_threshold_kb=1)
    try:
        ids = [point_id(f"c{i}") for i in range(len(x))]
        store.upsert([VectorPoint(id=pid, vector=v, payload={"case_id": f"c{i}", "kind": "text"})
                      for i, (pid, v) in enumerate(zip(ids, x, strict=False))])
        store.optimize()
        qtype, built = _engine_quantization(store)
        assert qtype == "int8" and built, (qtype, built)

        rng = np.random.default_rng(9)
        queries = _unit(x[rng.choice(len(x), 30, replace=False)] + 0.05 * rng.normal(size=(30, dim)))
        exact = queries.astype(np.float64) @ x.astype(np.float64).T
        raw_err = max(abs(s - exact[0, ids.index(pid)]) for pid, s in _raw_scores(store, queries[0], k, False).items())
        assert raw_err > 1e-4, "unrescored search returned exact scores: the engine has no int8 vectors"

        if isinstance(store, EdgeStore):
            spy = _Spy(store._shard, "query")
            store._shard = spy  # type: ignore[assignment]
        else:
            spy = _Spy(store.client, "query_points")
            store.client = spy  # type: ignore[assignment]
        recalls = []
        for qi, q in enumerate(queries):
            hits = store.search(q, k)
            truth = np.argsort(-exact[qi])[:k]
            recalls.append(len({h.id for h in hits} & {ids[i] for i in truth}) / k)
            for h in hits:  # rescored: the float cosine, not the int8 estimate
                assert h.score == pytest.approx(exact[qi, ids.index(h.id)], abs=1e-5)
        assert np.mean(recalls) >= 0.98, recalls
        assert len(spy.calls) == len(queries)
        for args, kwargs in spy.calls:
            params = args[0].params if isinstance(store, EdgeStore) else kwargs["search_params"]
            assert not params.exact and params.quantization is not None
            assert params.quantization.rescore is True and not params.quantization.ignore
            assert params.quantization.oversampling == pytest.approx(Settings().store_oversampling)
    finally:
        if isinstance(store, ServerStore):
            client = getattr(store.client, "_inner", store.client)
            for c in client.get_collections().collections:
                if c.name.startswith(store.alias):
                    client.delete_collection(c.name)
        store.close()


def test_app_default_store_config_is_int8(tmp_path: Path) -> None:
    """The store the app opens with default settings is created with int8 scalar quantization in the engine."""
    store = _app_store("edge", tmp_path, DIM)
    try:
        assert _engine_quantization(store)[0] == "int8"
    finally:
        store.close()


def test_bench_store_measures_the_app_store_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ragvqa bench store`` with its defaults builds and searches the store the app ships: the same engine config
    (HNSW m/ef_construct/full-scan threshold, int8, optimizers; read from the engine's ``edge_config.json``), the
    same search breadth/oversampling/ACORN, and the app's exact search parameters among those it sent to the engine
    (pass-through spies on the real shards)."""
    import json

    from typer.testing import CliRunner

    from rag.config import Settings
    from ui.cli import app as cli_app

    dim = 64
    config = Settings(data_dir=tmp_path / "app").store_config()
    app_store = open_store(embedder_id="app", dim=dim, config=config, qdrant_url=None)  # as ui/services.py opens it
    assert isinstance(app_store, EdgeStore)
    app_engine = json.loads((app_store.shard_dir / "edge_config.json").read_text())
    app_spy = _Spy(app_store._shard, "query")
    app_store._shard = app_spy  # type: ignore[assignment]
    q = _unit(np.random.default_rng(0).normal(size=dim))
    app_store.search(q, 10)
    app_store.search(q, 10, filters={"product_line": "PL1"})
    app_params = {repr(args[0].params) for args, _ in app_spy.calls}
    app_search = (app_store.hnsw_ef, app_store.oversampling, app_store.acorn, app_store.meta.quantization)
    app_store.close()

    built: list[tuple[EdgeStore, dict]] = []
    real_open = EdgeStore.open.__func__  # type: ignore[attr-defined]

    def spy_open(cls, *args, **kw):
        s = real_open(cls, *args, **kw)
        built.append((s, json.loads((s.shard_dir / "edge_config.json").read_text())))
        s._shard = _Spy(s._shard, "query")
        return s

    monkeypatch.setattr(EdgeStore, "open", classmethod(spy_open))
    r = CliRunner().invoke(cli_app, ["bench", "store", "--size", "1500", "--dim", str(dim), "--queries", "20",
                                     "--no-local", "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    [(bench, bench_engine)] = built
    assert bench_engine == app_engine
    assert (bench.hnsw_ef, bench.oversampling, bench.acorn, bench.meta.quantization) == app_search
    bench_params = {repr(args[0].params) for args, _ in bench._shard.calls}  # type: ignore[attr-defined]
    assert app_params <= bench_params, (app_params, bench_params)
    report = json.loads((tmp_path / "out" / "store_bench.json").read_text())
    assert report["differs_from_defaults"] == {}
    assert report["runs"][0]["store_config"]["engine"]["quantization_config"] == app_engine["quantization_config"]
    md = (tmp_path / "out" / "store_bench.md").read_text()
    assert "These are the shipped defaults" in md and "edge_hnsw_int8_rescore (app)" in md


def test_store_options_have_one_default_and_travel_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bare ``open_store`` and the app's settings agree on every store default (int8 quantization used to be on in
    the settings and off in ``open_store``); a ``RAGVQA_*`` store option reaches the opened store through the one
    config object; an unknown option is refused by name."""
    from pydantic import ValidationError

    from rag.config import Settings

    for name in ("RAGVQA_STORE_QUANTIZATION", "RAGVQA_STORE_HNSW_EF", "RAGVQA_QDRANT_URL"):
        monkeypatch.delenv(name, raising=False)
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    bare = open_store(embedder_id="e", dim=DIM, data_dir=tmp_path / "bare")
    try:
        assert bare.meta.quantization is defaults.store_quantization is True
        assert (bare.hnsw_ef, bare.oversampling, bare.acorn) == (defaults.store_hnsw_ef, defaults.store_oversampling,
                                                                  defaults.store_acorn) == (128, 2.0, False)
    finally:
        bare.close()
    monkeypatch.setenv("RAGVQA_STORE_HNSW_EF", "77")
    monkeypatch.setenv("RAGVQA_STORE_QUANTIZATION", "false")
    settings = Settings(data_dir=tmp_path / "app", _env_file=None)  # type: ignore[call-arg]
    assert isinstance(settings.store_config(), StoreConfig)
    app = open_store(embedder_id="e", dim=DIM, config=settings.store_config())
    try:
        assert isinstance(app, EdgeStore) and app.root == tmp_path / "app" / "qdrant"
        assert app.hnsw_ef == 77 and app.meta.quantization is False
    finally:
        app.close()
    with pytest.raises(ValidationError, match="store_hnsw"):
        open_store(embedder_id="e", dim=DIM, data_dir=tmp_path / "x", store_hnsw=3)
