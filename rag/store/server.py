"""Vector store on a Qdrant server (or qdrant-client local mode for tests) through qdrant-client.

Blue-green: the app always addresses the collection through an alias (``collection``); the data lives in versioned
collections ``{collection}_v000001`` ... A reindex fills a new version and switches the alias in one
``update_collection_aliases`` request, which the server applies atomically, so readers never see a half-built index.

StoreMeta is kept in the collection's own ``metadata`` (Qdrant >= 1.16, qdrant-client 1.20; local mode supports
it and aliases too, verified with qdrant-client 1.20.0).

Local mode (``location=":memory:"`` / ``path=``) is a pure-Python brute-force re-implementation: it ignores payload
indexes, HNSW, quantization and search params (and warns about them), so this class does not send them there.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

from qdrant_client import QdrantClient
from qdrant_client import models as qm
from qdrant_client.local.qdrant_local import QdrantLocal

from rag.config import StoreConfig
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

#: Key of StoreMeta inside the collection metadata.
META_KEY = "ragvqa_store"


@contextlib.contextmanager
def _engine(what: str) -> Iterator[None]:
    """Give transport/server errors one type and say which operation failed; input errors pass through."""
    try:
        yield
    except (StoreError, TypeError):
        raise
    except ValueError as e:
        # local mode raises ValueError for engine-side problems too; keep it a ValueError (bad input) but named.
        raise ValueError(f"Qdrant {what} failed: {e}") from e
    except Exception as e:  # noqa: BLE001 - httpx/grpc/UnexpectedResponse have no common base
        raise StoreError(f"Qdrant {what} failed: {e}") from e


def _to_filter(filters: dict[str, list[str]]) -> qm.Filter | None:
    if not filters:
        return None
    return qm.Filter(
        must=[
            qm.FieldCondition(
                key=k, match=qm.MatchValue(value=v[0]) if len(v) == 1 else qm.MatchAny(any=v)
            )
            for k, v in filters.items()
        ]
    )


class ServerStore(VectorStore):
    """:class:`VectorStore` on a Qdrant server collection addressed through an alias."""

    def __init__(
        self,
        client: QdrantClient,
        alias: str,
        collection: str,
        meta: StoreMeta,
        *,
        owns_client: bool,
        config: StoreConfig,
    ) -> None:
        """Use :meth:`open`; this wraps an existing, verified collection."""
        super().__init__(meta, hnsw_ef=config.store_hnsw_ef, oversampling=config.store_oversampling,
                         acorn=config.store_acorn)
        self.client = client
        self.alias = alias
        self.collection = collection
        self._owns_client = owns_client
        self._config = config
        #: Where operations go: the alias for the live store, the collection itself while it is being rebuilt.
        self._target = alias
        self.local = isinstance(getattr(client, "_client", None), QdrantLocal)

    # -- opening / creating -----------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        *,
        url: str | None = None,
        api_key: str | None = None,
        location: str | None = None,
        path: str | None = None,
        client: QdrantClient | None = None,
        collection: str | None = None,
        meta: StoreMeta | None = None,
        config: StoreConfig | None = None,
    ) -> ServerStore:
        """Connect (``url``/``api_key``, or ``location=":memory:"``/``path=`` local mode, or a given ``client``)
        and open the store behind alias ``collection`` (default: ``config.qdrant_collection``), creating version 1
        from ``meta`` if there is none; ``config`` gives the layout, index and search options and the timeout.
        """
        cfg = config or StoreConfig()
        collection = cfg.qdrant_collection if collection is None else collection
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,200}", collection):
            raise ValueError(f"collection name must be 1-200 characters of [A-Za-z0-9_-], got {collection!r}")
        owns = client is None
        if client is None:
            if sum(x is not None for x in (url, location, path)) != 1:
                raise ValueError("give exactly one of url=, location= or path= (or an existing client=)")
            with _engine(f"connection to {url or location or path}"):
                client = QdrantClient(url=url, api_key=api_key, location=location, path=path,
                                      timeout=cfg.qdrant_timeout)
        try:
            target = cls._alias_target(client, collection)
            if target is None:
                with _engine("collection lookup"):
                    exists = client.collection_exists(collection)
                if exists:
                    # A plain collection under the alias name (created by hand or an older layout): usable,
                    # and the first commit_reindex turns the name into an alias.
                    log.warning("Qdrant collection %r is not an alias; blue-green reindex will replace it", collection)
                    target = collection
            if target is None:
                if meta is None:
                    raise StoreError(f"no Qdrant collection or alias {collection!r}; give a StoreMeta to create one")
                store = cls._create_version(client, collection, meta, owns, cfg)
                try:
                    with _engine("alias creation"):
                        client.update_collection_aliases(
                            change_aliases_operations=[
                                qm.CreateAliasOperation(
                                    create_alias=qm.CreateAlias(collection_name=store.collection, alias_name=collection)
                                )
                            ]
                        )
                except BaseException:
                    with contextlib.suppress(Exception):  # no orphan collection left behind
                        client.delete_collection(store.collection)
                    raise
                log.info("created Qdrant collection %s as %s (%s, dim=%d)", store.collection, collection,
                         meta.embedder_id, meta.dim)
                return store
            stored = cls._read_meta(client, target)
            if meta is not None:
                meta.check_compatible(stored, f"Qdrant collection {target!r} (alias {collection!r})")
                if meta.quantization != stored.quantization:
                    log.warning(
                        "collection %s was built with quantization=%s; the configured %s (RAGVQA_STORE_QUANTIZATION) "
                        "applies after `ragvqa kb reindex`",
                        target, stored.quantization, meta.quantization,
                    )
            return cls(client, collection, target, stored, owns_client=owns, config=cfg)
        except BaseException:
            if owns:
                with contextlib.suppress(Exception):
                    client.close()
            raise

    @staticmethod
    def _alias_target(client: QdrantClient, alias: str) -> str | None:
        with _engine("alias lookup"):
            aliases = client.get_aliases().aliases
        return next((a.collection_name for a in aliases if a.alias_name == alias), None)

    @staticmethod
    def _read_meta(client: QdrantClient, name: str) -> StoreMeta:
        with _engine(f"get_collection({name})"):
            info = client.get_collection(name)
        raw = (info.config.metadata or {}).get(META_KEY)
        if raw is None:
            raise StoreError(
                f"Qdrant collection {name!r} has no {META_KEY!r} metadata: it was not created by ragvqa, or the "
                "server is older than 1.16 (collection metadata). Use another collection name or reindex."
            )
        try:
            return StoreMeta.model_validate(raw)
        except ValueError as e:
            raise StoreError(f"Qdrant collection {name!r} has unreadable {META_KEY!r} metadata: {e}") from e

    @staticmethod
    def _next_version(client: QdrantClient, alias: str) -> str:
        with _engine("list collections"):
            names = [c.name for c in client.get_collections().collections]
        pat = re.compile(rf"^{re.escape(alias)}_v(\d{{6}})$")
        nums = [int(m.group(1)) for n in names if (m := pat.match(n))]
        return f"{alias}_v{(max(nums) + 1) if nums else 1:06d}"

    @classmethod
    def _create_version(
        cls,
        client: QdrantClient,
        alias: str,
        meta: StoreMeta,
        owns: bool,
        config: StoreConfig,
    ) -> ServerStore:
        """A new collection (not yet behind the alias) with indexes and metadata; deleted again if any step fails."""
        name = cls._next_version(client, alias)
        local = isinstance(getattr(client, "_client", None), QdrantLocal)
        co = config
        quant = (
            qm.ScalarQuantization(
                scalar=qm.ScalarQuantizationConfig(type=qm.ScalarType.INT8, quantile=0.99, always_ram=True)
            )
            if meta.quantization
            else None
        )
        with _engine(f"create_collection({name})"):
            client.create_collection(
                collection_name=name,
                vectors_config={VECTOR_NAME: qm.VectorParams(size=meta.dim, distance=qm.Distance.COSINE)},
                shard_number=co.qdrant_shard_number,
                replication_factor=co.qdrant_replication_factor,
                write_consistency_factor=co.qdrant_write_consistency_factor,
                on_disk_payload=co.qdrant_on_disk_payload,
                hnsw_config=qm.HnswConfigDiff(
                    m=co.store_hnsw_m, ef_construct=co.store_hnsw_ef_construct,
                    full_scan_threshold=co.store_full_scan_threshold_kb,
                ),
                quantization_config=quant,
                optimizers_config=(None if co.store_indexing_threshold_kb is None
                                   else qm.OptimizersConfigDiff(indexing_threshold=co.store_indexing_threshold_kb)),
                metadata={META_KEY: meta.model_dump(mode="json")},
            )
        try:
            if not local:  # local mode ignores payload indexes (and warns); the server needs them for filters
                for key in FILTER_KEYS:
                    with _engine(f"create_payload_index({key})"):
                        client.create_payload_index(name, key, field_schema=qm.PayloadSchemaType.KEYWORD, wait=True)
            stored = cls._read_meta(client, name)  # proves the server keeps metadata
            if stored.embedder_id != meta.embedder_id or stored.dim != meta.dim:
                raise StoreError(f"Qdrant collection {name!r} did not keep its metadata")
        except BaseException:
            with contextlib.suppress(Exception):
                client.delete_collection(name)
            raise
        return cls(client, alias, name, stored, owns_client=owns, config=config)

    # -- blue-green reindex -----------------------------------------------------------------------------------
    def begin_reindex(self, new_meta: StoreMeta) -> ServerStore:
        """A new empty collection next to the live one; the alias keeps pointing at the old one until commit."""
        self._check_open()
        store = self._create_version(
            self.client, self.alias, new_meta, False, self._config)
        # The new store writes to its collection by name (the alias still serves the old data).
        store._target = store.collection
        return store

    def commit_reindex(self, new_store: VectorStore) -> None:
        """Switch the alias to ``new_store``'s collection in one atomic request, then drop the old collection."""
        self._check_same_family(new_store)
        assert isinstance(new_store, ServerStore)
        new_store._check_open()
        ops: list[Any] = []
        if self.collection == self.alias:
            # Legacy plain collection named like the alias: it has to go before the alias can take its name
            # (a short window without a store; only happens once).
            log.warning("deleting plain collection %r so the alias can take its name", self.alias)
            with _engine(f"delete_collection({self.alias})"):
                self.client.delete_collection(self.alias)
        else:
            ops.append(qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name=self.alias)))
        ops.append(
            qm.CreateAliasOperation(create_alias=qm.CreateAlias(collection_name=new_store.collection, alias_name=self.alias))
        )
        with _engine("alias switch"):
            self.client.update_collection_aliases(change_aliases_operations=ops)
        log.info("Qdrant alias %s switched %s -> %s", self.alias, self.collection, new_store.collection)
        new_store._target = self.alias
        old = self.collection
        self._closed = True  # this handle's collection is gone; the client stays open for new_store
        if old != self.alias:
            try:
                self.client.delete_collection(old)
            except Exception as e:  # noqa: BLE001 - the switch is done; a leftover collection is only disk space
                log.warning("could not delete old Qdrant collection %s: %s", old, e)
        if self._owns_client:  # hand the connection over to the new store
            self._owns_client = False
            new_store._owns_client = True

    def abort_reindex(self, new_store: VectorStore) -> None:
        """Delete the unfinished collection; the alias was never touched."""
        self._check_same_family(new_store)
        assert isinstance(new_store, ServerStore)
        if self._alias_target(self.client, self.alias) == new_store.collection:
            raise StoreError(f"{new_store.collection} is the live collection; refusing to delete it")
        new_store._closed = True
        with _engine(f"delete_collection({new_store.collection})"):
            self.client.delete_collection(new_store.collection)

    def _check_same_family(self, other: VectorStore) -> None:
        if (
            not isinstance(other, ServerStore)
            or other.client is not self.client
            or other.alias != self.alias
            or other.collection == self.collection
        ):
            raise ValueError("expected a store returned by begin_reindex() on this store")

    # -- engine operations ------------------------------------------------------------------------------------
    @property
    def _name(self) -> str:
        return self._target

    def _upsert(self, points: list[VectorPoint]) -> None:
        structs = [qm.PointStruct(id=p.id, vector={VECTOR_NAME: p.vector.tolist()}, payload=p.payload) for p in points]
        with _engine("upsert"):
            self.client.upsert(self._name, points=structs, wait=True)

    def _search_params(self, exact: bool, hnsw_ef: int | None, filtered: bool) -> qm.SearchParams | None:
        if self.local:
            return None  # local mode is always exact and warns on any search params
        quant = None
        if exact:
            quant = qm.QuantizationSearchParams(ignore=True)
        elif self.meta.quantization:
            quant = qm.QuantizationSearchParams(rescore=True, oversampling=self.oversampling)
        # ACORN needs server >= 1.16; only sent with filters when enabled (store_acorn).
        acorn = qm.AcornSearchParams(enable=True) if filtered and self.acorn and not exact else None
        return qm.SearchParams(hnsw_ef=hnsw_ef, exact=exact, quantization=quant, acorn=acorn)

    def _search(
        self, vector: list[float], limit: int, filters: dict[str, list[str]], exact: bool, hnsw_ef: int | None,
        payload_keys: list[str] | None = None,
    ) -> list[Hit]:
        with _engine("search"):
            res = self.client.query_points(
                self._name,
                query=vector,
                using=VECTOR_NAME,
                limit=limit,
                query_filter=_to_filter(filters),
                search_params=self._search_params(exact, hnsw_ef, bool(filters)),
                with_payload=payload_keys if payload_keys is not None else True,
            )
        return [Hit(id=str(p.id), score=float(p.score), payload=p.payload or {}) for p in res.points]

    def _search_batch(
        self, vectors: list[list[float]], limit: int, filters: dict[str, list[str]], exact: bool,
        hnsw_ef: int | None, payload_keys: list[str] | None = None,
    ) -> list[list[Hit]]:
        flt, params = _to_filter(filters), self._search_params(exact, hnsw_ef, bool(filters))
        reqs = [qm.QueryRequest(query=v, using=VECTOR_NAME, limit=limit, filter=flt, params=params,
                                with_payload=payload_keys if payload_keys is not None else True) for v in vectors]
        with _engine("batch search"):
            res = self.client.query_batch_points(self._name, requests=reqs)
        return [[Hit(id=str(p.id), score=float(p.score), payload=p.payload or {}) for p in r.points] for r in res]

    def _overwrite_payload(self, point_id: str, payload: dict[str, Any]) -> None:
        with _engine("overwrite payload"):
            self.client.overwrite_payload(self._name, payload=payload, points=[point_id], wait=True)

    def _delete_ids(self, ids: list[str]) -> None:
        with _engine("delete"):
            self.client.delete(self._name, points_selector=qm.PointIdsList(points=list[qm.ExtendedPointId](ids)), wait=True)

    def _delete_by_filter(self, filters: dict[str, list[str]]) -> None:
        flt = _to_filter(filters)
        assert flt is not None, "refusing to delete by an empty filter"
        with _engine("delete by filter"):
            self.client.delete(self._name, points_selector=qm.FilterSelector(filter=flt), wait=True)

    def _retrieve(self, ids: list[str], with_vectors: bool) -> list[StoredPoint]:
        with _engine("retrieve"):
            recs = self.client.retrieve(
                self._name, ids=ids, with_payload=True, with_vectors=[VECTOR_NAME] if with_vectors else False
            )
        return stored_points(recs, with_vectors)

    def _scroll_records(
        self,
        filters: dict[str, list[str]],
        offset: Any,
        limit: int,
        with_vectors: bool,
        with_payload: list[str] | bool,
    ) -> tuple[Sequence[Any], Any]:
        with _engine("scroll"):
            recs, nxt = self.client.scroll(
                self._name,
                scroll_filter=_to_filter(filters),
                limit=limit,
                offset=offset,
                with_payload=with_payload,
                with_vectors=[VECTOR_NAME] if with_vectors else False,
            )
        return recs, nxt

    def _count(self, filters: dict[str, list[str]]) -> int:
        with _engine("count"):
            return int(self.client.count(self._name, count_filter=_to_filter(filters), exact=True).count)

    def optimize(self, timeout_s: float = 600.0) -> None:
        """The server optimises in the background; wait until the collection is green so timings are meaningful."""
        self._check_open()
        if self.local:
            return
        deadline = time.monotonic() + timeout_s
        while True:
            with _engine("get_collection"):
                status = self.client.get_collection(self.collection).status
            if status == qm.CollectionStatus.GREEN:
                return
            if time.monotonic() > deadline:
                log.warning("collection %s still %s after %.0f s", self._name, status, timeout_s)
                return
            time.sleep(0.5)

    def flush(self) -> None:
        """Writes use ``wait=True``: nothing to flush client-side."""
        self._check_open()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owns_client:
            with contextlib.suppress(Exception):
                self.client.close()

    def __repr__(self) -> str:
        return (
            f"ServerStore(alias={self.alias!r}, collection={self.collection!r}, "
            f"embedder={self.meta.embedder_id!r}, dim={self.dim}, local={self.local})"
        )


__all__ = ["META_KEY", "ServerStore"]
