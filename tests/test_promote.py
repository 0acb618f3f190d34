"""Edge ↔ server without re-embedding: point copy, the portable snapshot file, and Qdrant's shard-snapshot restore."""

from __future__ import annotations

import io
import json
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import MINI_CASES, populate_store

from rag.store import StoreError, StoreMismatchError, VectorPoint, open_store, point_id
from rag.store.base import VectorStore
from rag.store.edge import EdgeStore
from rag.store.migrate import (
    SnapshotError,
    export_snapshot,
    import_snapshot,
    open_for_snapshot,
    open_like,
    promote,
    read_manifest,
    restore_edge_from_server,
)

N_RANDOM = 150
LINES = ["printers", "hvac", "pumps"]


def random_points(dim: int, n: int = N_RANDOM, seed: int = 7) -> list[VectorPoint]:
    rng = np.random.default_rng(seed)
    vecs = rng.normal(size=(n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return [
        VectorPoint(id=point_id(f"case-{i:04d}", None if i % 3 else f"m{i}"), vector=v, payload={
            "case_id": f"case-{i:04d}", "kind": "text" if i % 3 else "image", "media_id": None if i % 3 else f"m{i}",
            "product_line": LINES[i % 3], "tags": [f"t{i % 5}"], "title": f"Fault {i} «ünïcode»",
            "case": {"id": f"case-{i:04d}", "steps": [1, 2.5, None, True]}})
        for i, v in enumerate(vecs)
    ]


@pytest.fixture(scope="module")
def edge(tmp_path_factory, embedder) -> Iterator[EdgeStore]:
    root = tmp_path_factory.mktemp("edge")
    store = open_store(embedder_id="tiny", dim=embedder.dim, data_dir=root)
    populate_store(store, embedder, root / "media")
    store.upsert(random_points(embedder.dim))
    yield store
    store.close()


@pytest.fixture(scope="module")
def queries(embedder) -> np.ndarray:
    rng = np.random.default_rng(1)
    q = rng.normal(size=(4, embedder.dim)).astype(np.float32)
    texts = embedder.embed(["fuser error E13", "pump seal leak"])
    return np.vstack([q / np.linalg.norm(q, axis=1, keepdims=True), texts])


def same_results(a: VectorStore, b: VectorStore, queries: np.ndarray) -> None:
    for q in queries:
        for filters in (None, {"product_line": "hvac"}, {"tags": ["t1", "t3"]}):
            ha, hb = a.search(q, limit=10, filters=filters, exact=True), b.search(q, limit=10, filters=filters, exact=True)
            assert [h.id for h in ha] == [h.id for h in hb]
            assert np.allclose([h.score for h in ha], [h.score for h in hb], atol=1e-5)
            assert [h.payload for h in ha] == [h.payload for h in hb]


def test_promote_edge_to_server_and_back_via_snapshot(edge: EdgeStore, queries: np.ndarray, tmp_path: Path) -> None:
    n = edge.count()
    assert n == N_RANDOM + 2 * len(MINI_CASES)
    server = open_like(edge.meta, qdrant_location=":memory:", qdrant_collection="promoted")
    try:
        assert server.count() == 0
        seen: list[tuple[int, int]] = []
        assert promote(edge, server, batch_size=64, progress=lambda done, total: seen.append((done, total))) == n
        assert seen[-1] == (n, n) and len(seen) > 1  # batched
        assert server.count() == n
        for key in ("embedder_id", "dim", "schema_version", "quantization"):
            assert getattr(server.meta, key) == getattr(edge.meta, key)
        same_results(edge, server, queries)
        assert server.search_cases(queries[4], limit_cases=3)[0].case_id == edge.search_cases(queries[4], limit_cases=3)[0].case_id

        # a second promote into the now non-empty target is refused, unless resuming/merging on purpose
        with pytest.raises(StoreError, match="already holds"):
            promote(edge, server)
        assert promote(edge, server, allow_nonempty=True) == n and server.count() == n  # idempotent ids

        # back again: server → snapshot file → a fresh Edge store, with the meta carried over
        snap = tmp_path / "kb.tar"
        manifest = export_snapshot(server, snap, chunk_size=50)
        assert manifest.points == n and len(manifest.chunks) == 4 and manifest.store_meta.embedder_id == "tiny"
        assert read_manifest(snap).store_meta == server.meta
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left behind
        back = open_for_snapshot(snap, data_dir=tmp_path / "edge2")
        try:
            assert isinstance(back, EdgeStore)
            assert import_snapshot(snap, back) == n and back.count() == n
            assert (back.meta.embedder_id, back.meta.dim) == (edge.meta.embedder_id, edge.meta.dim)
            same_results(edge, back, queries)
        finally:
            back.close()
    finally:
        server.close()


def test_gzipped_snapshot_straight_from_edge(edge: EdgeStore, queries: np.ndarray, tmp_path: Path) -> None:
    snap = tmp_path / "kb.tar.gz"
    export_snapshot(edge, snap)
    with tarfile.open(snap, "r:gz") as tar:
        names = tar.getnames()
    assert names[-1] == "manifest.json" and "chunks/000000.npy" in names and "chunks/000000.jsonl" in names
    target = open_for_snapshot(snap, qdrant_location=":memory:")
    try:
        import_snapshot(snap, target)
        same_results(edge, target, queries)
    finally:
        target.close()


def test_mismatched_targets_are_refused(edge: EdgeStore, tmp_path: Path) -> None:
    snap = tmp_path / "kb.tar"
    export_snapshot(edge, snap)
    other_model = open_store(embedder_id="another-embedder", dim=edge.dim, qdrant_location=":memory:")
    other_dim = open_store(embedder_id="tiny", dim=edge.dim + 64, qdrant_location=":memory:")
    try:
        for target, what in ((other_model, "embedder_id"), (other_dim, "dim")):
            with pytest.raises(StoreMismatchError, match=what):
                promote(edge, target)
            with pytest.raises(StoreMismatchError, match=what):
                import_snapshot(snap, target)
            assert target.count() == 0  # nothing written before the refusal
    finally:
        other_model.close()
        other_dim.close()


def test_corrupt_or_truncated_snapshots_are_refused(edge: EdgeStore, tmp_path: Path) -> None:
    snap = tmp_path / "kb.tar"
    export_snapshot(edge, snap, chunk_size=100)
    raw = bytearray(snap.read_bytes())

    truncated = tmp_path / "cut.tar"
    truncated.write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(SnapshotError):
        read_manifest(truncated)

    # flip one byte inside the first vector chunk: the checksum catches it before anything is written
    with tarfile.open(snap) as tar:
        member = tar.getmember("chunks/000001.npy")
    raw[member.offset_data + 200] ^= 0xFF
    tampered = tmp_path / "tampered.tar"
    tampered.write_bytes(bytes(raw))
    target = open_for_snapshot(tampered, qdrant_location=":memory:")
    try:
        with pytest.raises(SnapshotError, match="checksum mismatch in chunks/000001.npy"):
            import_snapshot(tampered, target)
    finally:
        target.close()

    notsnap = tmp_path / "other.tar"
    with tarfile.open(notsnap, "w") as tar:
        data = json.dumps({"format": "something-else"}).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(SnapshotError, match="not a ragvqa-store-snapshot"):
        read_manifest(notsnap)


def test_failed_export_leaves_the_old_file(edge: EdgeStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snap = tmp_path / "kb.tar"
    export_snapshot(edge, snap)
    before = snap.read_bytes()
    real_scroll = edge.scroll

    def failing_scroll(*a: Any, **kw: Any) -> Iterator[Any]:
        for i, p in enumerate(real_scroll(*a, **kw)):
            if i == 60:
                raise StoreError("disk on fire")
            yield p

    monkeypatch.setattr(edge, "scroll", failing_scroll)
    with pytest.raises(StoreError, match="disk on fire"):
        export_snapshot(edge, snap, chunk_size=20)
    assert snap.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kb.tar"]


# -- Qdrant's native direction: a server shard snapshot restored into Edge ----------------------------------------
class FakeQdrant:
    """The three Qdrant REST calls the restore uses. The snapshot is an Edge shard tarred up (no server runs here):
    it exercises the download/unpack/meta/activation plumbing, not the server's own snapshot writer."""

    def __init__(self, snapshot: bytes, meta: dict[str, Any], shard_number: int = 1) -> None:
        self.api_keys: list[str | None] = []
        state = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                state.api_keys.append(self.headers.get("api-key"))
                if self.path == "/collections/aliases":
                    body = {"aliases": [{"alias_name": "ragvqa", "collection_name": "ragvqa_v000003"}]}
                elif self.path == "/collections/ragvqa_v000003":
                    body = {"config": {"params": {"shard_number": shard_number}, "metadata": {"ragvqa_store": meta}}}
                elif self.path == "/collections/ragvqa_v000003/shards/0/snapshot":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(snapshot)))
                    self.end_headers()
                    self.wfile.write(snapshot)
                    return
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                data = json.dumps({"result": body, "status": "ok"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_restore_edge_from_server_shard_snapshot(edge: EdgeStore, queries: np.ndarray, tmp_path: Path) -> None:
    src = open_like(edge.meta, data_dir=tmp_path / "src")
    assert isinstance(src, EdgeStore)
    promote(edge, src)
    shard_dir = src.shard_dir
    src.close()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(shard_dir, arcname=".")
    fake = FakeQdrant(buf.getvalue(), edge.meta.model_dump(mode="json"))
    try:
        root = tmp_path / "restored" / "qdrant"
        vdir = restore_edge_from_server(fake.url, "ragvqa", root, api_key="secret")
        assert (root / "ACTIVE").read_text().strip() == vdir.name and fake.api_keys[0] == "secret"
        restored = EdgeStore.open(root, edge.meta)
        try:
            assert restored.count() == edge.count()
            same_results(edge, restored, queries)
        finally:
            restored.close()
        multi = FakeQdrant(buf.getvalue(), edge.meta.model_dump(mode="json"), shard_number=3)
        try:
            with pytest.raises(StoreError, match="3 shards"):
                restore_edge_from_server(multi.url, "ragvqa", tmp_path / "nope")
        finally:
            multi.close()
    finally:
        fake.close()
    assert not any(p.name.startswith(".server-shard-") for p in root.iterdir())
