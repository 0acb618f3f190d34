"""Vector store on Qdrant Edge: the Qdrant engine in-process, on a local directory, no server to run.

Layout under ``root`` (blue-green, so a reindex never leaves the app without a working store)::

    root/ACTIVE                   name of the live version dir, switched atomically with os.replace
    root/v000001/shard/           the Edge shard (segments, WAL, edge_config.json)
    root/v000001/store_meta.json  StoreMeta, written atomically, last: a version dir without it is unfinished

One process owns a shard (Edge locks its WAL): run ``kb reindex`` inside the app process or while it is stopped;
for several processes use a Qdrant server (``ServerStore``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from rag.config import StoreConfig
from rag.fileio import write_atomic
from rag.store.base import (
    FILTER_KEYS,
    VECTOR_NAME,
    Hit,
    StoredPoint,
    StoreError,
    StoreMeta,
    VectorPoint,
    VectorStore,
    stored_points,
)

log = logging.getLogger(__name__)

ACTIVE_FILE = "ACTIVE"
META_FILE = "store_meta.json"
SHARD_DIR = "shard"
_VERSION_RE = re.compile(r"^v(\d{6})$")


@contextlib.contextmanager
def _engine(what: str) -> Iterator[None]:
    """Edge raises bare ``Exception``; give it a type and say which operation failed."""
    try:
        yield
    except (ValueError, StoreError):
        raise
    except Exception as e:  # noqa: BLE001 - the binding has no finer exception types
        hint = " (is the store open in another process? Edge allows one)" if "WouldBlock" in str(e) else ""
        raise StoreError(f"Qdrant Edge {what} failed: {e}{hint}") from e


def to_filter(filters: dict[str, list[str]]) -> qe.Filter | None:
    """Edge filter of validated filters (see ``validate_filters``); None for no constraint."""
    if not filters:
        return None
    must: list[qe.FieldCondition | qe.IsEmptyCondition | qe.IsNullCondition | qe.HasIdCondition | qe.HasVectorCondition
               | qe.NestedCondition | qe.Filter] = [
        qe.FieldCondition(key=k, match=qe.MatchValue(v[0]) if len(v) == 1 else qe.MatchAny(v))
        for k, v in filters.items()
    ]
    return qe.Filter(must=must)


@dataclass(frozen=True)
class EdgeEngineOptions:
    """Edge-only engine knobs that are not product settings (benchmarks set them; the app leaves Qdrant's defaults)."""

    default_segment_number: int | None = None
    max_search_threads: int | None = None


class EdgeStore(VectorStore):
    """:class:`VectorStore` on an in-process Qdrant Edge shard (one version dir of a blue-green root)."""

    def __init__(
        self,
        root: Path,
        version: str,
        shard: qe.EdgeShard,
        meta: StoreMeta,
        *,
        config: StoreConfig,
        engine: EdgeEngineOptions,
    ) -> None:
        """Use :meth:`open`; this only wraps an already opened shard."""
        super().__init__(meta, hnsw_ef=config.store_hnsw_ef, oversampling=config.store_oversampling,
                         acorn=config.store_acorn)
        self.root = root
        self.version = version
        self._shard = shard
        self._config, self._engine_extra = config, engine

    # -- opening / creating -----------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        root: str | os.PathLike[str],
        meta: StoreMeta | None = None,
        *,
        config: StoreConfig | None = None,
        default_segment_number: int | None = None,
        max_search_threads: int | None = None,
    ) -> EdgeStore:
        """Open the active version under ``root``, or create the first one from ``meta``.

        ``config`` gives the search and index options (its ``data_dir`` is not used: ``root`` is the place);
        ``config.store_full_scan_threshold_kb`` (vectors' KB, 2000 = 500 vectors of 1024-d): filters matching fewer points are
        brute-forced via the payload index; larger payload-value blocks get extra HNSW links, which is what keeps
        filtered recall high (Qdrant's default 10000 lost ~7 % recall@10 on a 25 % filter in the benchmark).
        With ``meta`` given, an existing store must match its embedder_id/dim/schema (else
        :class:`StoreMismatchError`); without it the stored meta is trusted (tools that only read).
        """
        root = Path(root)
        cfg = config or StoreConfig()
        engine = EdgeEngineOptions(default_segment_number=default_segment_number, max_search_threads=max_search_threads)
        active = cls._read_active(root)
        if active is None:
            if meta is None:
                raise StoreError(f"no vector store under {root} (no {ACTIVE_FILE} file); give a StoreMeta to create one")
            store = cls._create_version(root, meta, config=cfg, engine=engine)
            try:
                write_atomic(root / ACTIVE_FILE, store.version + "\n")
            except BaseException:
                store._discard()
                raise
            log.info("created vector store %s (%s, dim=%d)", store.shard_dir, meta.embedder_id, meta.dim)
            _write_holder(root / store.version)
            return store
        vdir = root / active
        stored = cls._read_meta(vdir)
        if meta is not None:
            meta.check_compatible(stored, str(vdir))
            if meta.quantization != stored.quantization:
                log.warning(
                    "store %s was built with quantization=%s; the configured %s (RAGVQA_STORE_QUANTIZATION) applies after "
                    "`ragvqa kb reindex`",
                    vdir, stored.quantization, meta.quantization,
                )
        load_cfg = None
        if max_search_threads:  # runtime-only override; the vector config must be restated (checked, not changed)
            load_cfg = qe.EdgeConfig(
                vectors={VECTOR_NAME: qe.EdgeVectorParams(size=stored.dim, distance=qe.Distance.Cosine)},
                max_search_threads=max_search_threads,
            )
        try:
            with _engine(f"load of {vdir / SHARD_DIR}"):
                shard = qe.EdgeShard.load(str(vdir / SHARD_DIR), load_cfg)
        except StoreError as e:
            if "WouldBlock" in str(e.__cause__ or e):
                raise StoreError(f"Qdrant Edge load of {vdir / SHARD_DIR} failed: {_held_message(root, vdir)}") from e
            raise
        _write_holder(vdir)
        return cls(root, active, shard, stored, config=cfg, engine=engine)

    @staticmethod
    def _read_active(root: Path) -> str | None:
        try:
            name = (root / ACTIVE_FILE).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        if not _VERSION_RE.match(name) or not (root / name).is_dir():
            raise StoreError(f"{root / ACTIVE_FILE} points at {name!r}, which is not a store version under {root}")
        return name

    @staticmethod
    def _read_meta(vdir: Path) -> StoreMeta:
        try:
            return StoreMeta.model_validate_json((vdir / META_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StoreError(f"{vdir} has no {META_FILE}: it is an unfinished build") from None
        except ValueError as e:
            raise StoreError(f"{vdir / META_FILE} is unreadable: {e}") from e

    @staticmethod
    def _next_version(root: Path) -> str:
        nums = [int(m.group(1)) for p in root.iterdir() if (m := _VERSION_RE.match(p.name))] if root.exists() else []
        return f"v{(max(nums) + 1) if nums else 1:06d}"

    @classmethod
    def _create_version(
        cls, root: Path, meta: StoreMeta, *, config: StoreConfig, engine: EdgeEngineOptions
    ) -> EdgeStore:
        """A new, not yet active, version dir: shard + payload indexes first, meta file last."""
        root.mkdir(parents=True, exist_ok=True)
        version = cls._next_version(root)
        vdir = root / version
        vdir.mkdir()
        shard: qe.EdgeShard | None = None
        try:
            quant = (
                qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=0.99, always_ram=True)
                if meta.quantization
                else None
            )
            optimizers = None
            if config.store_indexing_threshold_kb is not None or engine.default_segment_number is not None:
                optimizers = qe.EdgeOptimizersConfig(
                    indexing_threshold=config.store_indexing_threshold_kb,
                    default_segment_number=engine.default_segment_number,
                )
            edge_config = qe.EdgeConfig(
                vectors={VECTOR_NAME: qe.EdgeVectorParams(size=meta.dim, distance=qe.Distance.Cosine)},
                hnsw_config=qe.HnswIndexConfig(
                    m=config.store_hnsw_m, ef_construct=config.store_hnsw_ef_construct,
                    full_scan_threshold=config.store_full_scan_threshold_kb,
                ),
                quantization_config=quant,
                optimizers=optimizers,
                max_search_threads=engine.max_search_threads,
            )
            with _engine(f"create of {vdir / SHARD_DIR}"):
                shard = qe.EdgeShard.create(str(vdir / SHARD_DIR), edge_config)
            store = cls(root, version, shard, meta, config=config, engine=engine)
            with _engine("payload index creation"):
                for key in FILTER_KEYS:
                    shard.update(qe.UpdateOperation.create_field_index(key, qe.PayloadSchemaType.Keyword))
                shard.flush()
            write_atomic(vdir / META_FILE, meta.model_dump_json(indent=2) + "\n")
        except BaseException:
            if shard is not None:
                with contextlib.suppress(Exception):
                    shard.close()
            shutil.rmtree(vdir, ignore_errors=True)
            raise
        return store

    @property
    def shard(self) -> qe.EdgeShard:
        """The engine handle, for tools that query Qdrant Edge directly (the store benchmark's baselines)."""
        self._check_open()
        return self._shard

    @property
    def shard_dir(self) -> Path:
        return self.root / self.version / SHARD_DIR

    # -- blue-green reindex -----------------------------------------------------------------------------------
    def begin_reindex(self, new_meta: StoreMeta) -> EdgeStore:
        """A fresh, empty, inactive store next to this one; this one keeps serving until :meth:`commit_reindex`."""
        self._check_open()
        return self._create_version(self.root, new_meta, config=self._config, engine=self._engine_extra)

    def commit_reindex(self, new_store: VectorStore) -> None:
        """Make ``new_store`` the active one (atomic pointer switch), then close and delete this one."""
        self._check_same_root(new_store)
        assert isinstance(new_store, EdgeStore)
        new_store._check_open()
        new_store.flush()
        write_atomic(self.root / ACTIVE_FILE, new_store.version + "\n")
        log.info("vector store switched %s -> %s", self.version, new_store.version)
        self._discard()

    def abort_reindex(self, new_store: VectorStore) -> None:
        """Drop an unfinished reindex; the active store is untouched."""
        self._check_same_root(new_store)
        assert isinstance(new_store, EdgeStore)
        if self._read_active(self.root) == new_store.version:
            raise StoreError(f"{new_store.version} is the active store; refusing to delete it")
        new_store._discard()

    def _check_same_root(self, other: VectorStore) -> None:
        if not isinstance(other, EdgeStore) or other.root != self.root or other.version == self.version:
            raise ValueError("expected a store returned by begin_reindex() on this store")

    def _discard(self) -> None:
        """Close and delete this version dir (after it stopped being, or never became, active)."""
        self.close()
        try:
            shutil.rmtree(self.root / self.version)
        except OSError as e:
            log.warning("could not delete old store %s: %s", self.root / self.version, e)

    # -- engine operations ------------------------------------------------------------------------------------
    def _upsert(self, points: list[VectorPoint]) -> None:
        pts = [qe.Point(p.id, {VECTOR_NAME: p.vector.tolist()}, p.payload) for p in points]
        with _engine("upsert"):
            self._shard.update(qe.UpdateOperation.upsert_points(pts))

    def _search_params(self, exact: bool, hnsw_ef: int | None, filtered: bool) -> qe.SearchParams:
        if exact:
            quant = qe.QuantizationSearchParams(ignore=True)
        elif self.meta.quantization:
            quant = qe.QuantizationSearchParams(rescore=True, oversampling=self.oversampling)
        else:
            quant = None
        acorn = qe.AcornSearchParams(enable=True) if filtered and self.acorn and not exact else None
        return qe.SearchParams(hnsw_ef=hnsw_ef, exact=exact, quantization=quant, acorn=acorn)

    def _search(
        self, vector: list[float], limit: int, filters: dict[str, list[str]], exact: bool, hnsw_ef: int | None,
        payload_keys: list[str] | None = None,
    ) -> list[Hit]:
        req = qe.QueryRequest(
            limit=limit,
            query=qe.Query.Nearest(vector, using=VECTOR_NAME),
            filter=to_filter(filters),
            with_payload=payload_keys if payload_keys is not None else True,
            params=self._search_params(exact, hnsw_ef, bool(filters)),
        )
        with _engine("search"):
            res = self._shard.query(req)
        return [Hit(id=str(r.id), score=float(r.score), payload=r.payload or {}) for r in res]

    def _search_batch(
        self, vectors: list[list[float]], limit: int, filters: dict[str, list[str]], exact: bool,
        hnsw_ef: int | None, payload_keys: list[str] | None = None,
    ) -> list[list[Hit]]:
        flt, params = to_filter(filters), self._search_params(exact, hnsw_ef, bool(filters))
        reqs = [qe.QueryRequest(limit=limit, query=qe.Query.Nearest(v, using=VECTOR_NAME), filter=flt,
                                with_payload=payload_keys if payload_keys is not None else True, params=params)
                for v in vectors]
        with _engine("batch search"):
            res = self._shard.query_batch(qe.QueryBatchRequest(reqs))
        return [[Hit(id=str(r.id), score=float(r.score), payload=r.payload or {}) for r in rs] for rs in res]

    def _overwrite_payload(self, point_id: str, payload: dict[str, Any]) -> None:
        with _engine("overwrite payload"):
            self._shard.update(qe.UpdateOperation.overwrite_payload([point_id], payload))

    def _delete_ids(self, ids: list[str]) -> None:
        with _engine("delete"):
            self._shard.update(qe.UpdateOperation.delete_points(list[int | uuid.UUID | str](ids)))

    def _delete_by_filter(self, filters: dict[str, list[str]]) -> None:
        flt = to_filter(filters)
        assert flt is not None, "refusing to delete by an empty filter"
        with _engine("delete by filter"):
            self._shard.update(qe.UpdateOperation.delete_points_by_filter(flt))

    def _retrieve(self, ids: list[str], with_vectors: bool) -> list[StoredPoint]:
        with _engine("retrieve"):
            recs = self._shard.retrieve(list[int | uuid.UUID | str](ids), with_payload=True, with_vector=[VECTOR_NAME] if with_vectors else False)
        return stored_points(recs, with_vectors)

    def _scroll_records(
        self,
        filters: dict[str, list[str]],
        offset: Any,
        limit: int,
        with_vectors: bool,
        with_payload: list[str] | bool,
    ) -> tuple[Sequence[Any], Any]:
        req = qe.ScrollRequest(
            offset=uuid.UUID(str(offset)) if offset is not None else None,
            limit=limit,
            filter=to_filter(filters),
            with_payload=with_payload,
            with_vector=[VECTOR_NAME] if with_vectors else False,
        )
        with _engine("scroll"):
            recs, nxt = self._shard.scroll(req)
        return recs, (None if nxt is None else str(nxt))

    def _count(self, filters: dict[str, list[str]]) -> int:
        with _engine("count"):
            return int(self._shard.count(qe.CountRequest(exact=True, filter=to_filter(filters))))

    def optimize(self) -> None:
        """Build HNSW/quantized indexes now (blocking; ~1 min per 100k×1024 on 2 cores) so searches are fast."""
        self._check_open()
        with _engine("optimize"):
            changed = self._shard.optimize()
        log.info("optimized %s (changed=%s)", self.shard_dir, changed)

    def flush(self) -> None:
        self._check_open()
        with _engine("flush"):
            self._shard.flush()

    def info(self) -> dict[str, Any]:
        """Segment/index counts, for diagnostics and the benchmark."""
        self._check_open()
        with _engine("info"):
            i = self._shard.info()
        return {
            "points": i.points_count,
            "segments": i.segments_count,
            "indexed_vectors": i.indexed_vectors_count,
            "payload_indexes": sorted(i.payload_schema),
        }

    def engine_config(self) -> dict[str, Any]:
        """The shard's index configuration as the engine persisted it (``edge_config.json``: HNSW, quantization,
        optimizer thresholds), so tools report what the engine was given rather than what they meant to give it."""
        try:
            config: dict[str, Any] = json.loads((self.shard_dir / "edge_config.json").read_text(encoding="utf-8"))
            return config
        except (OSError, ValueError) as e:
            raise StoreError(f"cannot read the engine config of {self.shard_dir}: {e}") from e

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            with _engine("flush"):
                self._shard.flush()
        finally:
            with _engine("close"):
                self._shard.close()

    def __repr__(self) -> str:
        return f"EdgeStore({str(self.shard_dir)!r}, embedder={self.meta.embedder_id!r}, dim={self.dim})"


HOLDER_FILE = ".holder.json"


def _write_holder(vdir: Path) -> None:
    """Who opened the store (pid, since, command), for the message another process gets (Edge's lock says only
    "WouldBlock")."""
    import datetime
    import sys

    info = {"pid": os.getpid(), "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300] if sys.argv else ""}
    try:
        write_atomic(vdir / HOLDER_FILE, json.dumps(info) + "\n")
    except OSError as e:  # informative only
        log.debug("could not record the store holder: %s", e)


def _held_message(root: Path, vdir: Path) -> str:
    try:
        h = json.loads((vdir / HOLDER_FILE).read_text())
        who = f"process {h['pid']} (`{h.get('command') or '?'}`) since {h['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        who = "another process"
    return (f"the vector store under {root} is in use by {who}; Qdrant Edge allows one process per store. "
            f"If that is `ragvqa serve`, `ragvqa kb` commands on the same data dir run through it (it must have "
            f"started its admin channel: see .ragvqa-control.json in the data dir); otherwise stop that process "
            f"and retry, or use a Qdrant server (RAGVQA_QDRANT_URL) for several processes.")


def read_active_meta(root: str | os.PathLike[str]) -> StoreMeta | None:
    """Meta of the active store under ``root`` without opening (locking) the shard; None if there is none."""
    root = Path(root)
    active = EdgeStore._read_active(root)
    return None if active is None else EdgeStore._read_meta(root / active)


__all__ = ["EdgeStore", "read_active_meta", "to_filter", "write_atomic"]