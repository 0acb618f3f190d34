"""Backend-neutral vector-store interface: data models, validation and per-case grouping.

The app talks only to :class:`VectorStore`; the two backends (in-process Qdrant Edge and a Qdrant server through
qdrant-client) run the same Qdrant engine, so tests exercise the real thing on both and deployment is a setting.
Everything that must behave identically on both backends (input checks, filter validation, grouping per case)
lives here, once.
"""

from __future__ import annotations

import abc
import json
import logging
import struct
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from rag.payload import POINT_KINDS

log = logging.getLogger(__name__)

#: Bump when the payload layout or index set changes in a way that needs ``ragvqa kb reindex``.
SCHEMA_VERSION = 1

#: Name of the dense vector in both backends.
VECTOR_NAME = "dense"

#: Payload fields with a keyword index; also the only keys accepted in search/scroll/count filters.
FILTER_KEYS: tuple[str, ...] = ("product_line", "equipment_model", "tags", "case_id", "kind")

#: Allowed values of ``payload["kind"]``.
KINDS: tuple[str, ...] = POINT_KINDS

#: Namespace for deterministic point ids, so re-ingesting a case overwrites its points instead of duplicating them.
POINT_NAMESPACE = uuid.UUID("6f1c7e2a-3b5d-5e8f-9a41-52d0c3b7e9a1")

#: Filters: key -> one value or "any of" a list of values. ``None`` or ``[]`` means "no constraint" (empty UI pickers).
Filters = Mapping[str, "str | Sequence[str] | None"]


def vector_of(record: Any) -> np.ndarray | None:
    """The named dense vector of an engine record (Edge and qdrant-client return the same shape)."""
    vec = record.vector
    if isinstance(vec, dict):
        vec = vec.get(VECTOR_NAME)
    return None if vec is None else np.asarray(vec, dtype=np.float32)


def stored_points(records: Iterable[Any], with_vectors: bool) -> list["StoredPoint"]:
    """Engine records (Edge or qdrant-client, same shape) as :class:`StoredPoint` s."""
    return [StoredPoint(id=str(r.id), payload=r.payload or {}, vector=vector_of(r) if with_vectors else None)
            for r in records]


@dataclass(frozen=True)
class PointArrays:
    """One page of points as arrays (:meth:`VectorStore.scroll_arrays`): row ``i`` of ``vectors`` is point ``ids[i]``
    with payload ``payloads[i]`` (only the fields asked for). No per-point model objects: reading every vector of a
    large store is dominated by per-point Python work otherwise."""

    ids: list[str]
    #: ``(n, dim)`` float32 as stored (unit length for cosine stores); ``(n, 0)`` when read without vectors
    vectors: np.ndarray
    payloads: list[dict[str, Any]]

    def __post_init__(self) -> None:
        if not (len(self.ids) == len(self.payloads) == self.vectors.shape[0]) or self.vectors.ndim != 2:
            raise ValueError(f"PointArrays rows disagree: {len(self.ids)} ids, {len(self.payloads)} payloads, "
                             f"vectors of shape {self.vectors.shape}")

    def __len__(self) -> int:
        return len(self.ids)


class StoreError(RuntimeError):
    """A store operation failed in the engine (I/O, lock held by another process, closed store...)."""


class StoreMismatchError(ValueError):
    """The store on disk/server was built with another embedder, dimension or schema: vectors are not comparable."""


def fill_vectors(records: Sequence[Any], dim: int, with_vectors: bool) -> np.ndarray:
    """The named dense vectors of one page of engine records as one ``(n, dim)`` float32 array (``(n, 0)`` when
    ``with_vectors`` is false).

    Each record's vector arrives from the engine binding as a Python list of floats. They are packed row by row
    straight into the array's buffer (``struct``, native float32): about half the cost of numpy's sequence conversion,
    and converting each list while it is the only one alive keeps the float objects' memory reused and in cache.
    """
    if not with_vectors or not records:
        return np.zeros((len(records), dim if with_vectors else 0), dtype=np.float32)
    out = np.empty((len(records), dim), dtype=np.float32)
    row = struct.Struct(f"={dim}f")  # "=": native byte order, standard 4-byte IEEE floats, as numpy's float32
    buf = out.data.cast("B")
    for i, r in enumerate(records):
        vec = r.vector
        if isinstance(vec, dict):
            vec = vec.get(VECTOR_NAME)
        if vec is None:
            raise StoreError(f"point {r.id} has no {VECTOR_NAME!r} vector")
        try:
            row.pack_into(buf, i * row.size, *vec)
        except (struct.error, TypeError, OverflowError) as e:  # another length than dim, or not numbers
            raise StoreError(f"point {r.id}: its vector does not fit the store's dim={dim} float32 layout ({e})") from None
    return out


def point_arrays(records: Sequence[Any], dim: int, with_vectors: bool, with_payload: bool) -> PointArrays:
    """One page of engine records (Edge or qdrant-client, same shape) as :class:`PointArrays`."""
    return PointArrays(ids=[str(r.id) for r in records], vectors=fill_vectors(records, dim, with_vectors),
                       payloads=[(r.payload or {}) if with_payload else {} for r in records])


def point_id(case_id: str, media_id: str | None = None) -> str:
    """Deterministic point id (uuid5) for a case's text vector (``media_id=None``) or one of its media.

    Deterministic ids make ingestion idempotent: re-running it upserts the same points.
    """
    if not isinstance(case_id, str) or not case_id:
        raise ValueError(f"case_id must be a non-empty string, got {case_id!r}")
    if media_id is not None and (not isinstance(media_id, str) or not media_id):
        raise ValueError(f"media_id must be a non-empty string or None, got {media_id!r}")
    # "\x1f" (unit separator) cannot be confused with characters of either id.
    return str(uuid.uuid5(POINT_NAMESPACE, f"{case_id}\x1f{media_id or ''}"))


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class StoreMeta(BaseModel):
    """What the vectors in a store are comparable with; persisted with the store and checked on every open."""

    model_config = ConfigDict(frozen=True)

    embedder_id: str = Field(min_length=1)
    dim: int = Field(gt=0, le=65536)
    schema_version: int = SCHEMA_VERSION
    quantization: bool = False
    created_at: datetime = Field(default_factory=_utcnow)

    def check_compatible(self, stored: StoreMeta, where: str) -> None:
        """Raise :class:`StoreMismatchError` if vectors made under ``self`` cannot be searched in ``stored``.

        ``quantization`` is not checked: it is a property of the existing index, not of the vectors.
        """
        problems = []
        if stored.embedder_id != self.embedder_id:
            problems.append(f"embedder_id: store has {stored.embedder_id!r}, configured {self.embedder_id!r}")
        if stored.dim != self.dim:
            problems.append(f"dim: store has {stored.dim}, configured {self.dim}")
        if stored.schema_version != self.schema_version:
            problems.append(
                f"schema_version: store has {stored.schema_version}, code expects {self.schema_version}"
            )
        if problems:
            raise StoreMismatchError(
                f"Vector store at {where} does not match the configuration ({'; '.join(problems)}). "
                "Run `ragvqa kb reindex` to rebuild it with the current embedder."
            )


def check_payload(p: dict[str, Any]) -> dict[str, Any]:
    """The payload contract every point satisfies (upserts and payload-only rewrites alike)."""
    case_id = p.get("case_id")
    if not isinstance(case_id, str) or not case_id:
        raise ValueError(f"payload['case_id'] must be a non-empty string, got {case_id!r}")
    if p.get("kind") not in KINDS:
        raise ValueError(f"payload['kind'] must be one of {list(KINDS)}, got {p.get('kind')!r}")
    media_id = p.get("media_id")
    if media_id is not None and not isinstance(media_id, str):
        raise ValueError(f"payload['media_id'] must be a string or None, got {media_id!r}")
    for key in ("product_line", "equipment_model"):
        if p.get(key) is not None and not isinstance(p[key], str):
            raise ValueError(f"payload[{key!r}] must be a string or None, got {p[key]!r}")
    tags = p.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ValueError(f"payload['tags'] must be a list of strings, got {tags!r}")
    try:  # the engines store JSON: catch datetimes, sets, NaN... before anything is written
        json.dumps(p, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"payload of case {case_id!r} is not plain JSON ({e}); convert values to str/number/list") from None
    return p


class VectorPoint(BaseModel):
    """One vector to store: a case text, an image, a video or a PDF page of a case."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    id: str
    vector: np.ndarray
    payload: dict[str, Any]

    @field_validator("id", mode="before")
    @classmethod
    def _check_id(cls, v: Any) -> str:
        try:
            return str(uuid.UUID(str(v)))
        except ValueError:
            raise ValueError(f"point id must be a UUID string (see point_id()), got {v!r}") from None

    @field_validator("vector", mode="before")
    @classmethod
    def _check_vector(cls, v: Any) -> np.ndarray:
        arr = np.asarray(v, dtype=np.float32)
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(f"vector must be a non-empty 1-D sequence of floats, got shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError("vector contains NaN or infinite values")
        if not np.any(arr):
            raise ValueError("vector is all zeros (cosine similarity is undefined)")
        return arr

    @field_validator("payload")
    @classmethod
    def _check_payload(cls, p: dict[str, Any]) -> dict[str, Any]:
        return check_payload(p)


class StoredPoint(BaseModel):
    """A point read back from the store (``vector`` only when asked for)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    id: str
    payload: dict[str, Any]
    vector: np.ndarray | None = None

    def to_vector_point(self) -> VectorPoint:
        """For copying points between stores (needs ``with_vectors=True``)."""
        if self.vector is None:
            raise ValueError(f"point {self.id} was read without its vector (use with_vectors=True)")
        return VectorPoint(id=self.id, vector=self.vector, payload=self.payload)


def _keys(payload_keys: Sequence[str] | None, *required: str) -> list[str] | None:
    """Checked payload field names (``None`` = the whole payload)."""
    if payload_keys is None:
        return None
    if isinstance(payload_keys, str) or not all(isinstance(k, str) and k for k in payload_keys):
        raise ValueError(f"payload_keys must be a list of field names, got {payload_keys!r}")
    return list(dict.fromkeys([*required, *payload_keys]))


class Hit(BaseModel):
    """One search result: a point and its cosine similarity."""

    id: str
    score: float
    payload: dict[str, Any]


class CaseHit(BaseModel):
    """Search results grouped by case: best score first, the case's matching points sorted by score."""

    case_id: str
    score: float
    hits: list[Hit]

    @property
    def payloads(self) -> list[dict[str, Any]]:
        return [h.payload for h in self.hits]


def validate_filters(filters: Filters | None) -> dict[str, list[str]]:
    """Normalise filters to ``{key: [values...]}`` (dropping empty constraints) and reject unknown keys/values."""
    if not filters:
        return {}
    if not isinstance(filters, Mapping):
        raise ValueError(f"filters must be a mapping of field -> value(s), got {type(filters).__name__}")
    out: dict[str, list[str]] = {}
    for key, value in filters.items():
        if key not in FILTER_KEYS:
            raise ValueError(f"unknown filter key {key!r}; allowed keys: {', '.join(FILTER_KEYS)}")
        if value is None:
            continue
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, (list, tuple, set, frozenset)):
            raise ValueError(f"filter {key!r} must be a string or a list of strings, got {value!r}")
        values = list(values)
        if not all(isinstance(v, str) and v for v in values):
            raise ValueError(f"filter {key!r} values must be non-empty strings, got {value!r}")
        if values:
            out[key] = values
    return out


def check_query_vector(vector: Any, dim: int) -> list[float]:
    """Validate a query vector against the store dimension; returns a plain list for the engine."""
    arr = np.asarray(vector, dtype=np.float32)
    if arr.ndim != 1:
        raise ValueError(f"query vector must be 1-D, got shape {arr.shape}")
    if arr.shape[0] != dim:
        raise ValueError(f"query vector has length {arr.shape[0]}, store expects dim={dim}")
    if not np.isfinite(arr).all():
        raise ValueError("query vector contains NaN or infinite values")
    values: list[float] = arr.tolist()  # a 1-D float32 array lists as Python floats
    return values


def check_points(points: Iterable[VectorPoint | Mapping[str, Any]], dim: int) -> list[VectorPoint]:
    """Validate a whole batch before anything is written, so a bad point cannot leave the batch half-written."""
    out: list[VectorPoint] = []
    seen: set[str] = set()
    for i, p in enumerate(points):
        vp = p if isinstance(p, VectorPoint) else VectorPoint.model_validate(p)
        if vp.vector.shape[0] != dim:
            raise ValueError(
                f"point #{i} ({vp.id}) has vector length {vp.vector.shape[0]}, store expects dim={dim}"
            )
        if vp.id in seen:
            raise ValueError(f"point id {vp.id} appears twice in the same upsert batch")
        seen.add(vp.id)
        out.append(vp)
    return out


def normalize_ids(ids: Iterable[str]) -> list[str]:
    """Canonical UUID strings; raises on anything else so a typo does not silently delete nothing."""
    out = []
    for i in ids:
        try:
            out.append(str(uuid.UUID(str(i))))
        except ValueError:
            raise ValueError(f"point id must be a UUID string, got {i!r}") from None
    return out


class VectorStore(abc.ABC):
    """A Qdrant-backed store of case vectors. Implementations: ``EdgeStore`` (in-process), ``ServerStore``."""

    #: Candidates fetched per requested case in :meth:`search_cases` before widening.
    GROUP_OVERFETCH = 4
    #: Upper bound on points fetched by :meth:`search_cases` (keeps a pathological query bounded).
    GROUP_MAX_FETCH = 4096

    def __init__(
        self, meta: StoreMeta, *, hnsw_ef: int | None = None, oversampling: float = 2.0, acorn: bool = False
    ) -> None:
        """``hnsw_ef``: default search breadth; ``oversampling``: int8 candidates rescored per result;
        ``acorn``: ACORN traversal for filtered HNSW searches. Off by default: with payload-aware HNSW links
        (small full-scan threshold) filtered recall@10 was >= 0.997 without it at 1/2-1/3 of the latency
        (eval/bench_store.py); turn it on when filters cut across clusters and filtered recall drops.
        """
        self._meta = meta
        self.hnsw_ef = hnsw_ef
        self.oversampling = oversampling
        self.acorn = acorn
        self._closed = False

    # -- properties -------------------------------------------------------------------------------------------
    @property
    def meta(self) -> StoreMeta:
        return self._meta

    @property
    def dim(self) -> int:
        return self._meta.dim

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{type(self).__name__} is closed")

    # -- abstract engine operations -----------------------------------------------------------------------------
    @abc.abstractmethod
    def _upsert(self, points: list[VectorPoint]) -> None: ...

    @abc.abstractmethod
    def _search(
        self, vector: list[float], limit: int, filters: dict[str, list[str]], exact: bool, hnsw_ef: int | None,
        payload_keys: list[str] | None = None,
    ) -> list[Hit]: ...

    def _search_batch(
        self, vectors: list[list[float]], limit: int, filters: dict[str, list[str]], exact: bool,
        hnsw_ef: int | None, payload_keys: list[str] | None = None,
    ) -> list[list[Hit]]:
        """One :meth:`_search` per vector; backends with a batch query override it (one planned engine call)."""
        return [self._search(v, limit, filters, exact, hnsw_ef, payload_keys) for v in vectors]

    @abc.abstractmethod
    def _overwrite_payload(self, point_id: str, payload: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    def _delete_ids(self, ids: list[str]) -> None: ...

    @abc.abstractmethod
    def _delete_by_filter(self, filters: dict[str, list[str]]) -> None: ...

    @abc.abstractmethod
    def _retrieve(self, ids: list[str], with_vectors: bool) -> list[StoredPoint]: ...

    @abc.abstractmethod
    def _scroll_records(
        self,
        filters: dict[str, list[str]],
        offset: Any,
        limit: int,
        with_vectors: bool,
        with_payload: list[str] | bool,
    ) -> tuple[Sequence[Any], Any]:
        """One page of the backend's own records (``.id``, ``.payload``, ``.vector``) and the next offset."""

    def _record_pages(self, filters: dict[str, list[str]], limit: int, with_vectors: bool,
                      with_payload: list[str] | bool) -> Iterator[Sequence[Any]]:
        """Every page of :meth:`_scroll_records`, following the offsets (``scroll`` and ``scroll_arrays`` convert)."""
        offset: Any = None
        while True:
            recs, offset = self._scroll_records(filters, offset, limit, with_vectors, with_payload)
            yield recs
            if offset is None:
                return

    @abc.abstractmethod
    def _count(self, filters: dict[str, list[str]]) -> int: ...

    @abc.abstractmethod
    def begin_reindex(self, new_meta: StoreMeta) -> VectorStore:
        """An empty, inactive store to rebuild into; this one keeps serving until :meth:`commit_reindex`."""

    @abc.abstractmethod
    def commit_reindex(self, new_store: VectorStore) -> None:
        """Atomically make ``new_store`` the live store, then close and drop this one."""

    @abc.abstractmethod
    def abort_reindex(self, new_store: VectorStore) -> None:
        """Drop an unfinished rebuild; the live store is untouched."""

    @abc.abstractmethod
    def optimize(self) -> None:
        """Build/merge indexes now (Edge: blocking HNSW build; server: it optimises by itself)."""

    @abc.abstractmethod
    def flush(self) -> None:
        """Make written data durable."""

    @abc.abstractmethod
    def close(self) -> None:
        """Flush and release the engine (file locks, connections). Idempotent."""

    # -- public API ---------------------------------------------------------------------------------------------
    def upsert(self, points: Iterable[VectorPoint | Mapping[str, Any]], batch_size: int = 256) -> int:
        """Insert or overwrite points; returns how many. The whole input is validated before the first write.

        Batches are written in order; if the engine fails mid-way, earlier batches stay written. Ids are
        deterministic, so re-running the same upsert is the recovery.
        """
        self._check_open()
        checked = check_points(points, self.dim)
        for start in range(0, len(checked), batch_size):
            self._upsert(checked[start : start + batch_size])
        return len(checked)

    def search(
        self,
        vector: Sequence[float] | np.ndarray,
        limit: int = 10,
        filters: Filters | None = None,
        exact: bool = False,
        hnsw_ef: int | None = None,
        payload_keys: Sequence[str] | None = None,
    ) -> list[Hit]:
        """Nearest points by cosine similarity, best first. ``exact=True`` bypasses HNSW and quantization;
        ``payload_keys`` returns only those payload fields (all by default)."""
        self._check_open()
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive integer, got {limit!r}")
        q = check_query_vector(vector, self.dim)
        return self._search(q, limit, validate_filters(filters), exact, hnsw_ef or self.hnsw_ef, _keys(payload_keys))

    def search_batch(
        self,
        vectors: Sequence[Sequence[float] | np.ndarray] | np.ndarray,
        limit: int = 10,
        filters: Filters | None = None,
        exact: bool = False,
        hnsw_ef: int | None = None,
        payload_keys: Sequence[str] | None = None,
    ) -> list[list[Hit]]:
        """:meth:`search` for several query vectors at once (one result list per vector, in order): a case's
        text and media vectors searched together, as one engine call where the backend plans batches."""
        self._check_open()
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive integer, got {limit!r}")
        qs = [check_query_vector(v, self.dim) for v in vectors]
        if not qs:
            return []
        return self._search_batch(qs, limit, validate_filters(filters), exact, hnsw_ef or self.hnsw_ef,
                                  _keys(payload_keys))

    def search_cases(
        self,
        vector: Sequence[float] | np.ndarray,
        limit_cases: int = 20,
        filters: Filters | None = None,
        per_case_points: int = 3,
        exact: bool = False,
        hnsw_ef: int | None = None,
        payload_keys: Sequence[str] | None = None,
    ) -> list[CaseHit]:
        """Top cases: hits grouped by ``case_id``, ranked by their best point, up to ``per_case_points`` each.

        ``payload_keys`` returns only those payload fields of the hits (plus ``case_id``): a search that only needs
        ids and media paths does not pay for copying every full case out of the engine.

        A case may own many points (text + media), so ``limit_cases * GROUP_OVERFETCH`` points are fetched and
        the window is doubled until ``limit_cases`` distinct cases are found or the store runs out.
        """
        self._check_open()
        if not isinstance(limit_cases, int) or limit_cases < 1:
            raise ValueError(f"limit_cases must be a positive integer, got {limit_cases!r}")
        if not isinstance(per_case_points, int) or per_case_points < 1:
            raise ValueError(f"per_case_points must be a positive integer, got {per_case_points!r}")
        q = check_query_vector(vector, self.dim)
        flt = validate_filters(filters)
        ef = hnsw_ef or self.hnsw_ef
        keys = _keys(payload_keys, "case_id")
        fetch = min(self.GROUP_MAX_FETCH, limit_cases * self.GROUP_OVERFETCH)
        while True:
            hits = self._search(q, fetch, flt, exact, ef, keys)  # Qdrant uses ef >= limit by itself
            groups: dict[str, CaseHit] = {}
            for h in hits:  # hits are sorted best first, so the first hit of a case is its best
                cid = h.payload.get("case_id")
                if not isinstance(cid, str):
                    log.warning("point %s has no case_id; skipped in search_cases", h.id)
                    continue
                g = groups.get(cid)
                if g is None:
                    groups[cid] = CaseHit(case_id=cid, score=h.score, hits=[h])
                elif len(g.hits) < per_case_points:
                    g.hits.append(h)
            exhausted = len(hits) < fetch
            if len(groups) >= limit_cases or exhausted or fetch >= self.GROUP_MAX_FETCH:
                if len(groups) < limit_cases and not exhausted:
                    log.warning("search_cases stopped at %d points with %d/%d cases", fetch, len(groups), limit_cases)
                return sorted(groups.values(), key=lambda g: -g.score)[:limit_cases]
            fetch = min(self.GROUP_MAX_FETCH, fetch * 2)

    def overwrite_payload(self, payloads: Mapping[str, dict[str, Any]]) -> int:
        """Replace the payload of existing points (id -> payload), leaving their vectors untouched: a payload-only
        change does not rewrite a vector (no second pass through the engine's normalisation, less to lose on a
        crash). All payloads are validated before the first write; returns how many."""
        self._check_open()
        checked = dict(zip(normalize_ids(payloads), (check_payload(p) for p in payloads.values()), strict=False))
        for pid, payload in checked.items():
            self._overwrite_payload(pid, payload)
        return len(checked)

    def delete_points(self, ids: Iterable[str]) -> None:
        """Delete points by id (missing ids are ignored)."""
        self._check_open()
        norm = normalize_ids(ids)
        if norm:
            self._delete_ids(norm)

    def delete_case(self, case_id: str) -> None:
        """Delete every point of a case (text and media) by payload filter, so no stray media vector survives."""
        self._check_open()
        if not isinstance(case_id, str) or not case_id:
            raise ValueError(f"case_id must be a non-empty string, got {case_id!r}")
        self._delete_by_filter({"case_id": [case_id]})

    def retrieve(self, ids: Iterable[str], with_vectors: bool = False) -> list[StoredPoint]:
        """Points by id, in the order asked; missing ids are left out."""
        self._check_open()
        norm = normalize_ids(ids)
        if not norm:
            return []
        found = {p.id: p for p in self._retrieve(norm, with_vectors)}
        return [found[i] for i in norm if i in found]

    def scroll(
        self,
        filters: Filters | None = None,
        with_vectors: bool = False,
        batch_size: int = 256,
        payload_keys: list[str] | None = None,
    ) -> Iterator[StoredPoint]:
        """Iterate over all (matching) points, in id order, page by page (bounded memory)."""
        self._check_open()
        flt = validate_filters(filters)
        keys = _keys(payload_keys)
        for recs in self._record_pages(flt, batch_size, with_vectors, keys if keys is not None else True):
            yield from stored_points(recs, with_vectors)

    def scroll_arrays(
        self,
        payload_keys: Sequence[str],
        filters: Filters | None = None,
        batch_size: int = 1024,
        with_vectors: bool = True,
    ) -> Iterator[PointArrays]:
        """All (matching) points, in id order, as one :class:`PointArrays` per page of up to ``batch_size`` points:
        the vectors of a page as one float32 array and only the ``payload_keys`` fields of each payload (a point
        without such a field has no key for it). For readers of the whole store (clustering); same filters and
        order as :meth:`scroll`, without a model object per point."""
        self._check_open()
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if payload_keys is None:
            raise ValueError("payload_keys must be a list of field names (an empty list for none)")
        keys = _keys(payload_keys) or []
        flt = validate_filters(filters)
        for recs in self._record_pages(flt, batch_size, with_vectors, keys if keys else False):
            if len(recs):
                yield point_arrays(recs, self.dim, with_vectors, bool(keys))

    def count(self, filters: Filters | None = None) -> int:
        """Exact number of (matching) points."""
        self._check_open()
        return self._count(validate_filters(filters))

    def case_ids(self) -> set[str]:
        """Distinct case ids in the store (reads only the ``case_id`` payload field)."""
        out: set[str] = set()
        for p in self.scroll(batch_size=1024, payload_keys=["case_id"]):
            cid = p.payload.get("case_id")
            if isinstance(cid, str):
                out.add(cid)
        return out

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self.count()


__all__ = [
    "FILTER_KEYS",
    "KINDS",
    "SCHEMA_VERSION",
    "VECTOR_NAME",
    "CaseHit",
    "Filters",
    "Hit",
    "PointArrays",
    "StoreError",
    "StoreMeta",
    "StoreMismatchError",
    "StoredPoint",
    "VectorPoint",
    "VectorStore",
    "point_id",
    "validate_filters",
]
