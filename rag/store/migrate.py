"""Move a vector store between Qdrant Edge and a Qdrant server (or cluster) without re-embedding anything.

Why not Qdrant's own snapshots both ways: Qdrant Edge (qdrant-edge-py 0.9) can *consume* a server shard snapshot
(``EdgeShard.unpack_snapshot`` / ``update_from_snapshot``; see :func:`restore_edge_from_server`) but has no call that
*creates* one, and a server's shard-snapshot upload expects a server shard (replica state, shard config, WAL clocks),
not an Edge directory. A cluster with several shards cannot be represented by one Edge shard anyway. So the
direction Edge → server, and every direction in general, goes through the engines' public APIs:

* :func:`copy_store` (``promote``/``demote``): batched ``scroll(with_vectors)`` → ``upsert`` from one open
  :class:`VectorStore` to another, after checking both were built by the same embedder/dim/schema. Point ids are
  deterministic, so an interrupted copy is resumed by running it again (``allow_nonempty=True``).
* a portable snapshot file (:func:`export_snapshot` / :func:`import_snapshot`): an uncompressed or gzipped tar with
  ``chunks/NNNNNN.npy`` (float32 vectors) + ``chunks/NNNNNN.jsonl`` (ids and payloads, same order) and a last
  ``manifest.json`` (format version, the source :class:`StoreMeta`, counts, a SHA-256 per member). It is written to a
  temporary file, fsynced and renamed into place, so a crash never leaves a half snapshot under the final name;
  reading never extracts to disk and checks every checksum and shape before the first point is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
from pydantic import BaseModel, Field

from rag.fileio import atomic_writer, write_atomic
from rag.store.base import (
    SCHEMA_VERSION,
    StoredPoint,
    StoreError,
    StoreMeta,
    StoreMismatchError,
    VectorPoint,
    VectorStore,
)

log = logging.getLogger(__name__)

FORMAT: Final = "ragvqa-store-snapshot"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
#: Upper bound of one JSONL member, so a forged manifest cannot make the reader allocate without limit.
MAX_PAYLOAD_MEMBER_BYTES = 1 << 30

Progress = Callable[[int, int], None]


class SnapshotError(StoreError):
    """A snapshot file that cannot be written or trusted (truncated, tampered, another format)."""


class ChunkInfo(BaseModel):
    """One chunk of points: its two tar members and their checksums."""

    name: str
    points: int = Field(ge=0)
    vectors_sha256: str
    vectors_bytes: int = Field(ge=0)
    payloads_sha256: str
    payloads_bytes: int = Field(ge=0)


class SnapshotManifest(BaseModel):
    """What a snapshot holds; read first, checked before anything is imported."""

    format: Literal["ragvqa-store-snapshot"] = FORMAT
    format_version: int = FORMAT_VERSION
    store_meta: StoreMeta
    points: int = Field(ge=0)
    dim: int = Field(gt=0)
    vector_dtype: Literal["float32"] = "float32"
    chunks: list[ChunkInfo]
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    source: str = ""


# -- store to store -----------------------------------------------------------------------------------------------
def check_compatible(source_meta: StoreMeta, target: VectorStore) -> None:
    """Refuse a target whose vectors are not comparable (embedder, dim, schema): copying would corrupt search."""
    source_meta.check_compatible(target.meta, repr(target))


def _check_target_empty(target: VectorStore, allow_nonempty: bool) -> int:
    existing = target.count()
    if existing and not allow_nonempty:
        raise StoreError(
            f"{target!r} already holds {existing} points; pass allow_nonempty=True to merge into it "
            "(also the way to resume an interrupted copy: point ids are deterministic, re-upserts overwrite)"
        )
    return existing


def _batches(points: Iterator[StoredPoint], size: int) -> Iterator[list[StoredPoint]]:
    batch: list[StoredPoint] = []
    for p in points:
        batch.append(p)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def copy_store(source: VectorStore, target: VectorStore, *, batch_size: int = 512, allow_nonempty: bool = False,
               verify: bool = True, progress: Progress | None = None) -> int:
    """Copy every point (vector + payload) from ``source`` into ``target``; returns the number copied.

    The target must be built for the same embedder/dim/schema (:class:`StoreMismatchError` otherwise) and, unless
    ``allow_nonempty``, be empty. Memory stays bounded by ``batch_size``. With ``verify``, counts and a sample of
    points (payload equal, vector within 1e-5) are compared afterwards.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    check_compatible(source.meta, target)
    existing = _check_target_empty(target, allow_nonempty)
    total = source.count()
    copied = 0
    t0 = time.perf_counter()
    for batch in _batches(source.scroll(with_vectors=True, batch_size=batch_size), batch_size):
        target.upsert([p.to_vector_point() for p in batch], batch_size=batch_size)
        copied += len(batch)
        if progress is not None:
            progress(copied, total)
    target.flush()
    log.info("copied %d points %r -> %r in %.1f s", copied, source, target, time.perf_counter() - t0)
    if verify:
        verify_copy(source, target, expect_count=None if existing else copied)
    return copied


def promote(edge_store: VectorStore, server_store: VectorStore, **kwargs: Any) -> int:
    """Single machine → server/cluster: :func:`copy_store` from the Edge store into the server store."""
    return copy_store(edge_store, server_store, **kwargs)


def demote(server_store: VectorStore, edge_store: VectorStore, **kwargs: Any) -> int:
    """Server/cluster → single machine (the same copy, the other way)."""
    return copy_store(server_store, edge_store, **kwargs)


def verify_copy(source: VectorStore, target: VectorStore, *, expect_count: int | None = None, sample: int = 64) -> None:
    """Raise :class:`StoreError` if the target lacks points or holds different ones (checks a spread sample)."""
    n_src, n_dst = source.count(), target.count()
    if n_dst < n_src or (expect_count is not None and n_dst != expect_count):
        raise StoreError(f"copy incomplete: source {source!r} has {n_src} points, target {target!r} has {n_dst}")
    if not n_src:
        return
    wanted = set(np.linspace(0, n_src - 1, min(sample, n_src), dtype=int).tolist())  # spread over the id space
    picked = [p.id for i, p in enumerate(source.scroll(batch_size=1024, payload_keys=["case_id"])) if i in wanted]
    want = {p.id: p for p in source.retrieve(picked, with_vectors=True)}
    got = {p.id: p for p in target.retrieve(picked, with_vectors=True)}
    for pid, p in want.items():
        q = got.get(pid)
        if q is None:
            raise StoreError(f"point {pid} is missing from {target!r} after the copy")
        if q.payload != p.payload:
            raise StoreError(f"point {pid} has a different payload in {target!r} after the copy")
        if p.vector is not None and (q.vector is None or not np.allclose(q.vector, p.vector, atol=1e-5)):
            raise StoreError(f"point {pid} has a different vector in {target!r} after the copy")


def open_like(meta: StoreMeta, **open_store_kwargs: Any) -> VectorStore:
    """Open (or create) a store for the vectors described by ``meta``, with :func:`rag.store.open_store` arguments.

    E.g. ``open_like(edge.meta, qdrant_url="http://qdrant:6333", qdrant_shard_number=6,
    qdrant_replication_factor=2)`` to create the cluster collection an Edge store is promoted into.
    """
    from rag.store import open_store

    if meta.schema_version != SCHEMA_VERSION:
        raise StoreMismatchError(
            f"the source was built with schema_version {meta.schema_version}, this code writes {SCHEMA_VERSION}: "
            "run `ragvqa kb reindex` on the source first"
        )
    kwargs = {"store_quantization": meta.quantization, **open_store_kwargs}
    return open_store(embedder_id=meta.embedder_id, dim=meta.dim, **kwargs)


# -- snapshot files -----------------------------------------------------------------------------------------------
def _gz(path: Path) -> bool:
    return path.name.endswith((".tar.gz", ".tgz"))


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def export_snapshot(store: VectorStore, path: str | os.PathLike[str], *, chunk_size: int = 4096,
                    progress: Progress | None = None) -> SnapshotManifest:
    """Write every point of ``store`` to a portable snapshot file at ``path`` (``.tar``, or gzipped ``.tar.gz``).

    Atomic: the file appears under ``path`` only once complete and fsynced; an existing file is replaced.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    path = Path(path)
    meta = store.meta
    chunks: list[ChunkInfo] = []
    total = store.count()
    done = 0
    with atomic_writer(path) as f:
        with tarfile.open(fileobj=f, mode="w:gz" if _gz(path) else "w") as tar:
            for batch in _batches(store.scroll(with_vectors=True, batch_size=min(chunk_size, 1024)), chunk_size):
                vectors = np.stack([p.to_vector_point().vector for p in batch]).astype(np.float32, copy=False)
                if vectors.shape[1] != meta.dim:
                    raise SnapshotError(f"{store!r} returned vectors of length {vectors.shape[1]}, meta says {meta.dim}")
                buf = io.BytesIO()
                np.save(buf, vectors, allow_pickle=False)
                vec_bytes = buf.getvalue()
                lines = "".join(json.dumps({"id": p.id, "payload": p.payload}, ensure_ascii=False, allow_nan=False)
                                + "\n" for p in batch).encode("utf-8")
                name = f"chunks/{len(chunks):06d}"
                _add_member(tar, name + ".npy", vec_bytes)
                _add_member(tar, name + ".jsonl", lines)
                chunks.append(ChunkInfo(name=name, points=len(batch),
                                        vectors_sha256=hashlib.sha256(vec_bytes).hexdigest(), vectors_bytes=len(vec_bytes),
                                        payloads_sha256=hashlib.sha256(lines).hexdigest(), payloads_bytes=len(lines)))
                done += len(batch)
                if progress is not None:
                    progress(done, total)
            manifest = SnapshotManifest(store_meta=meta, points=done, dim=meta.dim, chunks=chunks, source=repr(store))
            _add_member(tar, MANIFEST, manifest.model_dump_json(indent=2).encode("utf-8"))
    log.info("exported %d points of %r to %s (%d chunks)", done, store, path, len(chunks))
    return manifest


def _read_member(tar: tarfile.TarFile, name: str, size: int, sha256: str, where: Path) -> bytes:
    try:
        info = tar.getmember(name)
    except KeyError:
        raise SnapshotError(f"snapshot {where} lacks {name} (truncated or not a ragvqa snapshot)") from None
    if not info.isfile() or info.size != size:
        raise SnapshotError(f"snapshot {where}: {name} is {info.size} bytes, the manifest says {size}")
    fobj = tar.extractfile(info)
    assert fobj is not None
    data = fobj.read()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise SnapshotError(f"snapshot {where}: checksum mismatch in {name} (corrupted file)")
    return data


def read_manifest(path: str | os.PathLike[str]) -> SnapshotManifest:
    """The manifest of a snapshot file (format and meta checked; chunks are checked by :func:`import_snapshot`)."""
    path = Path(path)
    try:
        with tarfile.open(path, "r:*") as tar:
            return _manifest(tar, path)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise SnapshotError(f"cannot read snapshot {path}: {e}") from e


def _manifest(tar: tarfile.TarFile, path: Path) -> SnapshotManifest:
    try:
        fobj = tar.extractfile(MANIFEST)
    except KeyError:
        raise SnapshotError(f"{path} has no {MANIFEST}: not a ragvqa snapshot, or it was cut short") from None
    if fobj is None:
        raise SnapshotError(f"{path}: {MANIFEST} is not a regular file")
    raw = fobj.read(1 << 24)
    try:
        head = json.loads(raw)
    except ValueError as e:
        raise SnapshotError(f"{path}: unreadable {MANIFEST} ({e})") from e
    if not isinstance(head, dict) or head.get("format") != FORMAT:
        raise SnapshotError(f"{path} is not a {FORMAT} file")
    if head.get("format_version", 0) > FORMAT_VERSION:
        raise SnapshotError(f"{path} has snapshot format {head.get('format_version')}; this code reads up to "
                            f"{FORMAT_VERSION}: upgrade ragvqa")
    try:
        m = SnapshotManifest.model_validate(head)
    except ValueError as e:
        raise SnapshotError(f"{path}: invalid manifest ({e})") from e
    if m.dim != m.store_meta.dim or sum(c.points for c in m.chunks) != m.points:
        raise SnapshotError(f"{path}: inconsistent manifest (dim or point counts disagree)")
    return m


def iter_snapshot(path: str | os.PathLike[str]) -> Iterator[list[VectorPoint]]:
    """The snapshot's points, one validated chunk at a time (checksums, shapes, ids, payloads)."""
    path = Path(path)
    try:
        with tarfile.open(path, "r:*") as tar:
            m = _manifest(tar, path)
            for c in m.chunks:
                if c.payloads_bytes > MAX_PAYLOAD_MEMBER_BYTES:
                    raise SnapshotError(f"snapshot {path}: {c.name}.jsonl declares {c.payloads_bytes} bytes")
                vec_raw = _read_member(tar, c.name + ".npy", c.vectors_bytes, c.vectors_sha256, path)
                pay_raw = _read_member(tar, c.name + ".jsonl", c.payloads_bytes, c.payloads_sha256, path)
                try:
                    vectors = np.load(io.BytesIO(vec_raw), allow_pickle=False)
                    rows = [json.loads(line) for line in pay_raw.decode("utf-8").splitlines()]
                except ValueError as e:
                    raise SnapshotError(f"snapshot {path}: unreadable {c.name} ({e})") from e
                if vectors.dtype != np.float32 or vectors.shape != (c.points, m.dim) or len(rows) != c.points:
                    raise SnapshotError(f"snapshot {path}: {c.name} holds {vectors.shape} {vectors.dtype} vectors and "
                                        f"{len(rows)} payloads, the manifest says {c.points}×{m.dim} float32")
                try:
                    yield [VectorPoint(id=r["id"], vector=v, payload=r["payload"]) for r, v in zip(rows, vectors, strict=False)]
                except (KeyError, TypeError, ValueError) as e:
                    raise SnapshotError(f"snapshot {path}: invalid point in {c.name} ({e})") from e
    except (tarfile.TarError, OSError, EOFError) as e:
        raise SnapshotError(f"cannot read snapshot {path}: {e}") from e


def import_snapshot(path: str | os.PathLike[str], store: VectorStore, *, batch_size: int = 512,
                    allow_nonempty: bool = False, verify: bool = True, progress: Progress | None = None) -> int:
    """Write the points of a snapshot file into ``store``; returns how many.

    Refuses a store built for other vectors (:class:`StoreMismatchError`) or, unless ``allow_nonempty``, a store
    that already holds points. Every chunk is checked (checksum, shape) before it is written.
    """
    m = read_manifest(path)
    check_compatible(m.store_meta, store)
    existing = _check_target_empty(store, allow_nonempty)
    done = 0
    for points in iter_snapshot(path):
        store.upsert(points, batch_size=batch_size)
        done += len(points)
        if progress is not None:
            progress(done, m.points)
    store.flush()
    if verify:
        n = store.count()
        if n < m.points or (not existing and n != m.points):
            raise StoreError(f"import incomplete: snapshot {path} has {m.points} points, {store!r} has {n}")
    log.info("imported %d points from %s into %r", done, path, store)
    return done


def open_for_snapshot(path: str | os.PathLike[str], **open_store_kwargs: Any) -> VectorStore:
    """Open (or create) a store matching a snapshot's meta, ready for :func:`import_snapshot`."""
    return open_like(read_manifest(path).store_meta, **open_store_kwargs)


# -- native Qdrant snapshots: server shard → Edge ------------------------------------------------------------------
def restore_edge_from_server(url: str, collection: str, root: str | os.PathLike[str], *, api_key: str | None = None,
                             shard_id: int = 0, timeout: float = 600.0, activate: bool = True) -> Path:
    """Rebuild an Edge store under ``root`` from a Qdrant *server* shard snapshot (Qdrant's native format).

    The server streams a fresh snapshot of ``shard_id`` (``GET /collections/{c}/shards/{id}/snapshot``), which is
    unpacked with ``EdgeShard.unpack_snapshot`` into a new version dir; its vectors, payloads and indexes come over
    as they are. Only a single-shard collection can become one Edge shard (use :func:`demote` for clusters). With
    ``activate``, the new version becomes the active store (blue-green, like a reindex); returns its directory.
    """
    import httpx
    import qdrant_edge as qe

    from rag.store.edge import ACTIVE_FILE, META_FILE, SHARD_DIR, EdgeStore
    from rag.store.server import META_KEY

    base = url.rstrip("/")
    headers = {"api-key": api_key} if api_key else {}
    root = Path(root)
    with httpx.Client(base_url=base, headers=headers, timeout=httpx.Timeout(timeout, connect=10.0)) as http:
        def get(p: str) -> Any:
            r = http.get(p)
            if r.status_code >= 400:
                raise StoreError(f"Qdrant server {base}{p} answered HTTP {r.status_code}: {r.text[:300]}")
            return r.json()["result"]

        aliases = get("/collections/aliases")["aliases"]
        name = next((a["collection_name"] for a in aliases if a["alias_name"] == collection), collection)
        info = get(f"/collections/{name}")
        shards = info["config"]["params"].get("shard_number", 1)
        if shards != 1:
            raise StoreError(f"collection {name!r} has {shards} shards; one Edge shard can hold a single-shard "
                             "collection only: use rag.store.migrate.demote (point copy) instead")
        raw_meta = (info["config"].get("metadata") or {}).get(META_KEY)
        if raw_meta is None:
            raise StoreError(f"collection {name!r} has no {META_KEY!r} metadata: not created by ragvqa")
        meta = StoreMeta.model_validate(raw_meta)
        root.mkdir(parents=True, exist_ok=True)
        version = EdgeStore._next_version(root)
        vdir = root / version
        fd, tmp_name = tempfile.mkstemp(dir=root, prefix=".server-shard-", suffix=".snapshot")
        try:
            with os.fdopen(fd, "wb") as f, http.stream("GET", f"/collections/{name}/shards/{shard_id}/snapshot") as r:
                if r.status_code >= 400:
                    r.read()
                    raise StoreError(f"Qdrant server {base} refused the shard snapshot: HTTP {r.status_code}: {r.text[:300]}")
                for block in r.iter_bytes(1 << 20):
                    f.write(block)
            vdir.mkdir()
            qe.EdgeShard.unpack_snapshot(tmp_name, str(vdir / SHARD_DIR))
            qe.EdgeShard.load(str(vdir / SHARD_DIR)).close()  # proves it opens before it can become active
            write_atomic(vdir / META_FILE, meta.model_dump_json(indent=2) + "\n")
        except BaseException:
            shutil.rmtree(vdir, ignore_errors=True)
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
    if activate:  # the previous version dir stays on disk until you delete it (a way back if the restore is wrong)
        write_atomic(root / ACTIVE_FILE, version + "\n")
    log.info("restored Edge store %s from %s collection %s shard %d", vdir, base, name, shard_id)
    return vdir


__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "SnapshotError",
    "SnapshotManifest",
    "check_compatible",
    "copy_store",
    "demote",
    "export_snapshot",
    "import_snapshot",
    "iter_snapshot",
    "open_for_snapshot",
    "open_like",
    "promote",
    "read_manifest",
    "restore_edge_from_server",
    "verify_copy",
]
