"""Fault clusters: the knowledge base grouped into recurring fault families, from the vectors already stored.

Read-only on the vector store: cases and vectors are read page by page with ``scroll_arrays``; nothing is ever written
there. The only thing written is the saved cluster model and report under ``data_dir/clusters/`` (:func:`save_model`).

How it works (scikit-learn throughout, no hand-written algorithm):

* **One vector per case.** A case is its text point plus one point per media. Its vector is
  ``normalize(normalize(text) + normalize(mean(media)))``: the text and the media count equally, whatever the number
  of photos or PDF pages; a case without media is its text vector. (Averaging all points instead would let a case with
  ten photos be clustered by its photos alone.)
* **Density-based clustering.** ``sklearn.cluster.HDBSCAN`` on the case vectors reduced by PCA to
  ``reduce_dims`` dimensions (lossless when there are fewer cases than that; at 2048 dimensions HDBSCAN's
  neighbour search would be brute force). Cases in no dense group stay *unclustered* (label -1): a one-off fault is not
  forced into a family. A member far below its cluster's centroid cosines (Tukey's far-out fence, Q1 - 3·IQR)
  leaves it: HDBSCAN keeps a lone point inside the family it hung from when that family was born. Above ``fit_sample`` cases HDBSCAN is fitted on a random sample and the rest is assigned
  with the incremental rule below (a family then needs about ``min_cluster_size × n / fit_sample`` cases to be found:
  15 at 100k cases with the defaults; raise ``fit_sample`` for finer families at the cost of time).
* **Incremental assignment.** Each cluster keeps its centroid (mean of its members' unit vectors, re-normalised) and
  an admission threshold: the lowest member cosine to the centroid, less ``assign_margin``. A new case joins the
  cluster with the highest centroid cosine if it clears that cluster's threshold, else it stays unclustered (one
  matrix-vector product: well under 10 ms).
* **Per cluster**: size, product-line mix (flagged as *mixed* when a second product line holds at least
  ``mixed_min_share`` of the members), the members closest to the centroid (with a thumbnail), and distinguishing
  terms: the TF-IDF terms (``TfidfVectorizer`` over each case's embedded document) whose mean weight in the cluster
  most exceeds their mean weight in the rest of the knowledge base.
* **Merge candidates**: pairs of cases in the same cluster (or both unclustered) whose case vectors have cosine
  ``>= merge_threshold``: exact blocked products within a group; a group above ``EXACT_GROUP`` cases is screened in
  the PCA space first (a projection never lengthens a difference, so no pair is missed) and confirmed on the full
  vectors.
* **2-D map**: PCA to two dimensions (deterministic and fast at 100k cases; t-SNE would take minutes there and moves
  points between runs), drawn coloured by cluster and by product line (:func:`plot_map`).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from rag.fileio import atomic_writer, write_atomic
from rag.store import StoreMeta, VectorStore
from rag.store.base import PointArrays

__all__ = [
    "MODEL_DIR",
    "Assignment",
    "CaseVectors",
    "CentralCase",
    "ClusterError",
    "ClusterInfo",
    "ClusterModel",
    "ClusterReport",
    "ClusterSettings",
    "MergeCandidate",
    "assign_case",
    "case_vectors",
    "compute_clusters",
    "load_model",
    "MapText",
    "plot_map",
    "report_markdown",
    "save_model",
]

log = logging.getLogger(__name__)

#: Where the saved cluster model lives, under ``data_dir`` (never in the vector store).
MODEL_DIR = "clusters"
MODEL_FILE = "model.npz"
MODEL_META = "model.json"
CACHE_FILE = "case_vectors.npz"
UNCLUSTERED = -1


class ClusterError(ValueError):
    """Clustering cannot run on this knowledge base (empty, mixed embedders, no saved model...); the message says why."""


class ClusterSettings(BaseModel):
    """Knobs of :func:`compute_clusters`; the defaults suit a support knowledge base of tens to 100k cases."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_cluster_size: int = Field(default=3, ge=2, description="HDBSCAN: fewest cases that make a fault family")
    min_samples: int | None = Field(default=None, ge=1, description="HDBSCAN: density smoothing (default = min_cluster_size)")
    reduce_dims: int = Field(default=32, ge=0, description="PCA dimensions before HDBSCAN (0: none)")
    fit_sample: int = Field(default=20_000, ge=100, description="HDBSCAN is fitted on at most this many cases")
    outlier_fence: float | None = Field(default=3.0, ge=0.0, description="Tukey k of the member outlier fence (None: off)")
    assign_margin: float = Field(default=0.02, ge=0.0, le=1.0, description="cosine slack of the admission threshold")
    merge_threshold: float = Field(default=0.97, gt=0.0, le=1.0, description="case cosine from which cases are merge candidates")
    mixed_min_share: float = Field(default=0.1, gt=0.0, le=0.5, description="share of a second product line that flags a cluster")
    central: int = Field(default=3, ge=1, description="most central cases shown per cluster")
    terms: int = Field(default=8, ge=1, description="distinguishing terms per cluster")
    max_merge_pairs: int = Field(default=500, ge=0)
    seed: int = 0


@dataclass
class CaseVectors:
    """One unit vector per case plus what the report shows about it (rows in ``ids`` order)."""

    ids: list[str]
    vectors: np.ndarray  # (n, dim) float32, unit rows
    product_lines: list[str]
    titles: list[str]
    documents: list[str]
    thumbnails: list[str | None]
    media_counts: list[int]
    embedder_id: str
    dim: int
    skipped_orphans: int = 0
    #: cases whose vectors were read from the store (the others came from the cache)
    read_from_store: int = 0

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(slots=True)
class _Acc:
    row: int  # this case's row in the _CaseSums arrays
    text_id: str | None = None
    points: list[tuple[str, str]] = field(default_factory=list)  # (point id, content key or "")
    product_line: str = ""
    title: str = ""
    document: str = ""
    thumbnail: str | None = None

    def key(self) -> str | None:
        """What the case vector depends on: its points and their content hashes (None: a point without one)."""
        if any(not k for _, k in self.points):
            return None
        return hashlib.sha1("|".join(sorted(f"{i}:{k}" for i, k in self.points)).encode()).hexdigest()


class _CaseSums:
    """Per case row: its unit text vector and the sum of its unit media vectors, filled page by page (numpy, no
    per-point Python) so a cold read never holds every point vector at once. Rows grow by doubling."""

    def __init__(self, dim: int, capacity: int) -> None:
        cap = max(capacity, 16)
        self.text = np.zeros((cap, dim), dtype=np.float32)
        self.media = np.zeros((cap, dim), dtype=np.float32)
        self.used = 0  # rows filled so far

    def _ensure(self, rows: int) -> None:
        cap = len(self.text)
        if rows <= cap:
            return
        new = max(rows, 2 * cap)
        for name in ("text", "media"):
            old = getattr(self, name)
            grown = np.zeros((new, *old.shape[1:]), dtype=old.dtype)
            grown[:cap] = old
            setattr(self, name, grown)

    def add(self, vectors: np.ndarray, rows: np.ndarray, is_text: np.ndarray) -> None:
        """Add one page: ``rows[i]`` is the case row of ``vectors[i]`` (-1: skipped point). ``vectors`` is
        normalised in place (it is the page just read, used once)."""
        keep = rows >= 0
        if not keep.any():
            return
        self.used = max(self.used, int(rows[keep].max()) + 1)
        self._ensure(self.used)
        norms = _row_norms(vectors)
        np.divide(vectors, norms, out=vectors, where=norms > 0)  # _unit() row by row
        t = np.flatnonzero(keep & is_text)
        self.text[rows[t]] = vectors[t]
        m = np.flatnonzero(keep & ~is_text)
        if not len(m):
            return
        r = rows[m]
        if len(np.unique(r)) == len(r):  # one media point per case in this page: a plain scatter-add is exact
            self.media[r] += vectors[m]
            return
        order = m[np.argsort(r, kind="stable")]  # media points grouped by case, in page order
        r = rows[order]
        starts = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
        self.media[r[starts]] += np.add.reduceat(vectors[order], starts, axis=0)

    def case_vectors(self, rows: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """:func:`case_vector` of the given case rows, as ``(len(rows), dim)``. Computed in place, so the sums are
        spent afterwards (and released)."""
        for s in range(0, self.used, chunk):  # in place into self.text: no third (cases, dim) array
            t = self.text[s:min(s + chunk, self.used)]
            m = self.media[s:min(s + chunk, self.used)]
            mn = _row_norms(m)
            np.divide(m, mn, out=m, where=mn > 0)  # unit(mean) == unit(sum); no media (a zero sum) adds nothing
            t += m
            tn = _row_norms(t)
            np.divide(t, tn, out=t, where=tn > 0)
        dim = self.text.shape[1]
        self.media = np.zeros((0, dim), dtype=np.float32)  # released before the copy below: peak is two arrays
        out: np.ndarray = self.text[rows]
        self.text = np.zeros((0, dim), dtype=np.float32)
        return out


def _row_norms(x: np.ndarray) -> np.ndarray:
    """Euclidean norm of each row as a column, without a temporary of ``x``'s size."""
    norms: np.ndarray = np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
    return norms


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def case_vector(text: np.ndarray, media: Sequence[np.ndarray]) -> np.ndarray:
    """A case's vector: text and media (their mean) weighted equally; see the module docstring."""
    t = _unit(np.asarray(text, dtype=np.float32))
    if not media:
        return t.astype(np.float32)
    m = _unit(np.mean([_unit(np.asarray(x, dtype=np.float32)) for x in media], axis=0))
    return _unit(t + m).astype(np.float32)


@dataclass
class _Cache:
    """The saved case vectors: case id -> (key of its points, row of ``vectors``)."""

    rows: dict[str, tuple[str, int]]
    vectors: np.ndarray


def _load_cache(cache_dir: Path | None, meta: StoreMeta) -> _Cache | None:
    if cache_dir is None or not (cache_dir / CACHE_FILE).is_file():
        return None
    try:
        with np.load(cache_dir / CACHE_FILE) as z:
            if str(z["embedder_id"]) != meta.embedder_id or int(z["dim"]) != meta.dim:
                return None
            vecs = z["vectors"]
            ids, keys = z["case_ids"].tolist(), z["keys"].tolist()
        if vecs.shape != (len(ids), meta.dim) or len(keys) != len(ids):
            raise ValueError(f"vectors of shape {vecs.shape} for {len(ids)} cases of dim {meta.dim}")
        return _Cache(rows={str(c): (str(k), i) for i, (c, k) in enumerate(zip(ids, keys, strict=True))}, vectors=vecs)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        log.warning("case-vector cache unreadable (%s); reading every vector from the store", e)
        return None


def _save_cache(cache_dir: Path, meta: StoreMeta, ids: list[str], keys: list[str | None], vecs: np.ndarray) -> None:
    rows = [i for i, k in enumerate(keys) if k]
    with atomic_writer(cache_dir / CACHE_FILE) as f:
        np.savez(f, embedder_id=np.array(meta.embedder_id), dim=np.array(meta.dim),
                 case_ids=np.array([ids[i] for i in rows]), keys=np.array([keys[i] for i in rows]),
                 vectors=vecs if len(rows) == len(ids) else vecs[rows])


_gc_lock = threading.Lock()
_gc_pauses = 0
_gc_was_enabled = False


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection during a bulk read: each collection would walk every per-case record built so far
    again (about 15 % of a 100k-case payload read). Reference counting still frees everything meanwhile. The switch
    is process-wide, so overlapping reads (two admin threads) count: the last one out restores what the first found."""
    global _gc_pauses, _gc_was_enabled
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()


#: Payload fields the clustering reads (the report's title, document, thumbnail, product line; the cache keys).
_READ_KEYS = ["case_id", "kind", "product_line", "title", "document", "thumbnail", "embedder", "content_hash", "sha256"]


def _add_page(page: PointArrays, embedder_id: str, accs: dict[str, _Acc], foreign: Counter[str],
              sums: _CaseSums | None) -> None:
    """One page of points into the per-case records (payload fields, point ids and content keys) and sums."""
    rows = np.full(len(page), -1, dtype=np.int64)
    is_text = np.zeros(len(page), dtype=bool)
    for i, (pid, pl) in enumerate(zip(page.ids, page.payloads, strict=True)):
        cid = pl.get("case_id")
        if not isinstance(cid, str):
            continue
        emb = pl.get("embedder")
        if isinstance(emb, str) and emb and emb != embedder_id:
            foreign[emb] += 1
            continue
        acc = accs.get(cid)
        if acc is None:
            acc = accs[cid] = _Acc(row=len(accs))
        text = pl.get("kind") == "text"
        content = pl.get("content_hash") if text else pl.get("sha256")
        acc.points.append((pid, content if isinstance(content, str) else ""))
        rows[i], is_text[i] = acc.row, text
        if text:
            acc.text_id = pid
            acc.product_line = str(pl.get("product_line") or "")
            acc.title = str(pl.get("title") or "")
            acc.document = str(pl.get("document") or "")
        elif acc.thumbnail is None and isinstance(pl.get("thumbnail"), str):
            acc.thumbnail = pl["thumbnail"]
    if sums is not None:
        sums.add(page.vectors, rows, is_text)


def _read_points(store: VectorStore, *, with_vectors: bool, batch_size: int) -> tuple[dict[str, _Acc], _CaseSums | None]:
    """Every point's payload gathered per case, and (``with_vectors``) the per-case vector sums; refuses points of
    another embedder."""
    meta = store.meta
    accs: dict[str, _Acc] = {}
    foreign: Counter[str] = Counter()
    sums = _CaseSums(meta.dim, store.count({"kind": "text"})) if with_vectors else None
    with _gc_paused():
        for page in store.scroll_arrays(_READ_KEYS, batch_size=batch_size, with_vectors=with_vectors):
            _add_page(page, meta.embedder_id, accs, foreign, sums)
    if foreign:
        names = ", ".join(f"{k!r} ({v} points)" for k, v in foreign.most_common(3))
        raise ClusterError(f"the store holds vectors of {meta.embedder_id!r} but also points written by {names}; "
                           "their vectors are not comparable. Run `ragvqa kb check --fix` or `ragvqa kb reindex` first.")
    return accs, sums


def _from_cache(store: VectorStore, accs: dict[str, _Acc], ids: list[str], case_keys: list[str | None],
                cache: _Cache, batch_size: int) -> tuple[np.ndarray, list[int]]:
    """Case vectors from the cache where a case's points are unchanged; the others' points are read by id."""
    dim = store.meta.dim
    vecs = np.zeros((len(ids), dim), dtype=np.float32)
    need: list[int] = []
    hit_rows: list[int] = []
    cache_rows: list[int] = []
    for i, (c, k) in enumerate(zip(ids, case_keys, strict=True)):
        hit = cache.rows.get(c)
        if k is not None and hit is not None and hit[0] == k:
            hit_rows.append(i)
            cache_rows.append(hit[1])
        else:
            need.append(i)
    if hit_rows:
        vecs[hit_rows] = cache.vectors[cache_rows]
    step = max(1, batch_size // 2)
    for s in range(0, len(need), step):
        part = need[s:s + step]
        pids = [pid for i in part for pid, _ in accs[ids[i]].points]
        got = {p.id: p.vector for p in store.retrieve(pids, with_vectors=True) if p.vector is not None}
        for i in part:
            acc = accs[ids[i]]
            text = got.get(acc.text_id or "")
            if text is None:  # deleted between the two reads
                raise ClusterError(f"case {ids[i]!r} changed while it was read; run again")
            media = [got[pid] for pid, _ in acc.points if pid != acc.text_id and pid in got]
            vecs[i] = case_vector(text, media)
    return vecs, need


def case_vectors(store: VectorStore, batch_size: int = 1024, cache_dir: str | Path | None = None) -> CaseVectors:
    """Read every case and build one vector per case: one pass with the vectors when nothing is cached, else the
    payloads, then the vectors of the new or changed cases only.

    Reads the store only. ``cache_dir`` (the CLI and the admin view use ``data_dir/clusters``) keeps the case vectors
    keyed by their points' content hashes, so a later run reads only the vectors of new or changed cases: turning
    200k stored 2048-d vectors into numpy arrays is most of a cold 100k-case run. Raises :class:`ClusterError` when
    points were written by an embedder other than the store's (a half-finished change of model): their vectors are
    not comparable, so clustering them would mean nothing.
    """
    meta = store.meta
    folder = Path(cache_dir) if cache_dir is not None else None
    cache = _load_cache(folder, meta)
    # nothing cached: one pass with the vectors (a second pass by id reads them twice as slowly)
    cold = cache is None or not cache.rows
    accs, sums = _read_points(store, with_vectors=cold, batch_size=batch_size)
    ids = sorted(cid for cid, a in accs.items() if a.text_id is not None)
    orphans = len(accs) - len(ids)
    if orphans:
        log.warning("%d case(s) have media points but no text point (an interrupted write?); left out", orphans)
    case_keys = [accs[c].key() for c in ids]
    cached_ids = set(cache.rows) if cache is not None else set()
    if sums is not None:  # cold: every case from the vectors just read
        vecs = sums.case_vectors(np.fromiter((accs[c].row for c in ids), dtype=np.int64, count=len(ids)))
        del sums
        need = list(range(len(ids)))
    else:
        assert cache is not None
        vecs, need = _from_cache(store, accs, ids, case_keys, cache, batch_size)
    del cache
    if folder is not None and (need or cached_ids != set(ids)):
        _save_cache(folder, meta, ids, case_keys, vecs)
    log.info("case vectors: %d case(s), %d read from the store, %d from the cache", len(ids), len(need),
             len(ids) - len(need))
    return CaseVectors(ids=ids, vectors=vecs, product_lines=[accs[c].product_line for c in ids],
                       titles=[accs[c].title for c in ids], documents=[accs[c].document for c in ids],
                       thumbnails=[accs[c].thumbnail for c in ids],
                       media_counts=[len(accs[c].points) - 1 for c in ids],
                       embedder_id=meta.embedder_id, dim=meta.dim, skipped_orphans=orphans,
                       read_from_store=len(need))


# ------------------------------------------------------------------------------------------------ the model


class Assignment(BaseModel):
    """Where a case goes: a cluster id (``None``: unclustered), its centroid cosine and the cluster's threshold."""

    cluster: int | None
    similarity: float
    threshold: float | None = None


class ClusterModel:
    """What incremental assignment needs: cluster centroids and admission thresholds, for one embedder and dim."""

    def __init__(self, *, cluster_ids: np.ndarray, centroids: np.ndarray, thresholds: np.ndarray, embedder_id: str,
                 dim: int, created_at: str, n_cases: int, settings: ClusterSettings) -> None:
        self.cluster_ids = np.asarray(cluster_ids, dtype=np.int64)
        self.centroids = np.asarray(centroids, dtype=np.float32).reshape(len(self.cluster_ids), dim)
        self.thresholds = np.asarray(thresholds, dtype=np.float32)
        self.embedder_id, self.dim, self.created_at = embedder_id, dim, created_at
        self.n_cases, self.settings = n_cases, settings

    def check_store(self, meta: StoreMeta) -> None:
        """Refuse a store whose vectors are not comparable with the ones the model was built from."""
        if meta.embedder_id != self.embedder_id or meta.dim != self.dim:
            raise ClusterError(f"the saved cluster model was built from vectors of {self.embedder_id!r} (dim {self.dim}), "
                               f"the store holds {meta.embedder_id!r} (dim {meta.dim}): run `ragvqa kb clusters` again")

    def assign(self, vector: np.ndarray) -> Assignment:
        """The cluster a (unit-normalised here) case vector joins, or unclustered; one matrix-vector product."""
        v = np.asarray(vector, dtype=np.float32).reshape(-1)
        if v.shape[0] != self.dim:
            raise ClusterError(f"vector has length {v.shape[0]}, the cluster model expects dim {self.dim}")
        if not np.isfinite(v).all() or not np.any(v):
            raise ClusterError("vector is zero or not finite")
        if not len(self.cluster_ids):
            return Assignment(cluster=None, similarity=0.0)
        sims = self.centroids @ _unit(v)
        best = int(np.argmax(sims))
        sim, thr = float(sims[best]), float(self.thresholds[best])
        if sim >= thr:
            return Assignment(cluster=int(self.cluster_ids[best]), similarity=round(sim, 6), threshold=round(thr, 6))
        return Assignment(cluster=None, similarity=round(sim, 6), threshold=round(thr, 6))

    def assign_many(self, vectors: np.ndarray) -> np.ndarray:
        """Cluster id per row (``UNCLUSTERED`` when none admits it)."""
        if not len(self.cluster_ids) or not len(vectors):
            return np.full(len(vectors), UNCLUSTERED, dtype=np.int64)
        sims = np.asarray(vectors, dtype=np.float32) @ self.centroids.T
        best = np.argmax(sims, axis=1)
        ok = sims[np.arange(len(best)), best] >= self.thresholds[best]
        return np.where(ok, self.cluster_ids[best], UNCLUSTERED)


def save_model(model: ClusterModel, data_dir: str | Path) -> Path:
    """Write the model under ``data_dir/clusters/`` (atomic replace); returns the folder. Never touches the store."""
    folder = Path(data_dir) / MODEL_DIR
    with atomic_writer(folder / MODEL_FILE) as f:
        np.savez(f, cluster_ids=model.cluster_ids, centroids=model.centroids, thresholds=model.thresholds)
    meta = {"embedder_id": model.embedder_id, "dim": model.dim, "created_at": model.created_at,
            "n_cases": model.n_cases, "settings": model.settings.model_dump()}
    write_atomic(folder / MODEL_META, json.dumps(meta, indent=1))
    return folder


def load_model(data_dir: str | Path) -> ClusterModel:
    """The saved model; :class:`ClusterError` when there is none (run ``ragvqa kb clusters``) or it is unreadable."""
    folder = Path(data_dir) / MODEL_DIR
    try:
        meta = json.loads((folder / MODEL_META).read_text("utf-8"))
        with np.load(folder / MODEL_FILE) as z:
            arrays = {k: z[k] for k in ("cluster_ids", "centroids", "thresholds")}
        return ClusterModel(**arrays, embedder_id=str(meta["embedder_id"]), dim=int(meta["dim"]),
                            created_at=str(meta["created_at"]), n_cases=int(meta["n_cases"]),
                            settings=ClusterSettings.model_validate(meta["settings"]))
    except FileNotFoundError:
        raise ClusterError(f"no saved cluster model under {folder}: run `ragvqa kb clusters` first") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ClusterError(f"the saved cluster model under {folder} is unreadable ({e}); run `ragvqa kb clusters`") from None


def assign_case(store: VectorStore, model: ClusterModel, case_id: str) -> Assignment:
    """Assign a stored case (e.g. one just added) to an existing cluster from its stored points. Reads only."""
    model.check_store(store.meta)
    pts = list(store.scroll(filters={"case_id": case_id}, with_vectors=True, payload_keys=["kind"]))
    text = [p.vector for p in pts if p.payload.get("kind") == "text" and p.vector is not None]
    if not text:
        raise ClusterError(f"no case with id {case_id!r} in the knowledge base")
    media = [p.vector for p in pts if p.payload.get("kind") != "text" and p.vector is not None]
    return model.assign(case_vector(text[0], media))


# ------------------------------------------------------------------------------------------------ the report


class CentralCase(BaseModel):
    case_id: str
    title: str
    thumbnail: str | None
    similarity: float


class ClusterInfo(BaseModel):
    id: int
    size: int
    product_lines: dict[str, int]
    mixed_product_lines: bool
    central: list[CentralCase]
    terms: list[str]
    members: list[str]


class MergeCandidate(BaseModel):
    case_id: str
    other_case_id: str
    cosine: float
    cluster: int | None


class ClusterReport(BaseModel):
    """What ``ragvqa kb clusters`` and the admin view show (JSON-able)."""

    n_cases: int
    n_clusters: int
    n_unclustered: int
    embedder_id: str
    dim: int
    fitted_on: int
    clusters: list[ClusterInfo]
    unclustered: list[str]
    merge_candidates: list[MergeCandidate]
    #: case id -> cluster id (``None``: unclustered)
    assignments: dict[str, int | None]
    #: case id -> [x, y] of the 2-D map (PCA)
    map_xy: dict[str, list[float]]
    product_lines: dict[str, str]
    settings: ClusterSettings
    elapsed_s: float
    note: str = ""


def _reduce(x: np.ndarray, dims: int, seed: int, fit_rows: np.ndarray) -> np.ndarray:
    from sklearn.decomposition import PCA

    n, d = x.shape
    k = min(dims, len(fit_rows) - 1, d)
    if dims == 0 or k < 2:
        return x
    pca = PCA(n_components=k, svd_solver="randomized" if n > 2000 else "full", random_state=seed)
    pca.fit(x[fit_rows])
    return np.asarray(pca.transform(x), dtype=np.float32)


def labels_at(fit_labels: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, UNCLUSTERED, dtype=np.int64)
    out[rows] = fit_labels
    return out


def _trim_outliers(x: np.ndarray, labels: np.ndarray, cfg: ClusterSettings) -> np.ndarray:
    """Members far below their cluster's centroid cosines leave it (Tukey's far-out fence, Q1 - k·IQR).

    HDBSCAN labels a point with the cluster it was attached to when that cluster was born, so a singleton that is
    about as far from every family as the families are from each other can end up inside one. A cluster left with
    fewer than ``min_cluster_size`` members dissolves.
    """
    labels = labels.copy()
    if cfg.outlier_fence is None:
        return labels
    for c in sorted(set(labels.tolist()) - {UNCLUSTERED}):
        rows = np.flatnonzero(labels == c)
        cos = x[rows] @ _unit(x[rows].mean(axis=0))
        q1, q3 = np.percentile(cos, [25, 75])
        out = rows[cos < q1 - cfg.outlier_fence * (q3 - q1)]
        labels[out] = UNCLUSTERED
        if len(rows) - len(out) < cfg.min_cluster_size:
            labels[rows] = UNCLUSTERED
    return labels


def _centroids(x: np.ndarray, labels: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids = np.array(sorted(int(c) for c in set(labels.tolist()) if c != UNCLUSTERED), dtype=np.int64)
    cents = np.zeros((len(ids), x.shape[1]), dtype=np.float32)
    thr = np.zeros(len(ids), dtype=np.float32)
    for j, c in enumerate(ids):
        members = x[labels == c]
        cents[j] = _unit(members.mean(axis=0))
        thr[j] = float((members @ cents[j]).min()) - margin
    return ids, cents, thr


def _terms(docs: Sequence[str], labels: np.ndarray, ids: np.ndarray, k: int) -> dict[int, list[str]]:
    from sklearn.feature_extraction.text import TfidfVectorizer

    out: dict[int, list[str]] = {int(c): [] for c in ids}
    if not len(ids) or not any(d.strip() for d in docs):
        return out
    vec = TfidfVectorizer(stop_words="english", sublinear_tf=True, max_features=50_000,
                          token_pattern=r"(?u)\b[^\W_][\w-]*[^\W_]\b")
    try:
        m = vec.fit_transform(docs)
    except ValueError:  # only stop words / no tokens at all
        return out
    vocab = np.asarray(vec.get_feature_names_out())
    total = np.asarray(m.sum(axis=0)).ravel()
    n = m.shape[0]
    for c in ids:
        mask = labels == c
        inside = np.asarray(m[mask].sum(axis=0)).ravel()
        n_in = int(mask.sum())
        rest = (total - inside) / max(n - n_in, 1)
        score = inside / n_in - rest
        top = np.argsort(-score)[:k]
        out[int(c)] = [str(vocab[i]) for i in top if score[i] > 0]
    return out


#: Groups up to this size are searched exactly (blocked full-vector products); larger ones are screened in PCA space.
EXACT_GROUP = 6000
#: Candidate pairs verified per block of the screened search (keeps memory bounded on degenerate data).
MAX_SCREENED = 2_000_000


def _merge_candidates(x: np.ndarray, z: np.ndarray, labels: np.ndarray, ids: list[str], thr: float,
                      limit: int) -> list[MergeCandidate]:
    """Pairs within each cluster (and among the unclustered) with full-vector cosine >= ``thr``.

    A group of up to ``EXACT_GROUP`` cases is searched exactly with blocked products of the full vectors. A larger
    group is screened in PCA space first: ``|x_i - x_j|^2 = 2 - 2 cos`` and a projection never lengthens a difference,
    so the screen misses no pair; the survivors are confirmed on the full vectors.
    """
    max_d2 = 2.0 - 2.0 * thr + 1e-5
    found: list[tuple[float, int, int, int]] = []
    for c in sorted(set(labels.tolist())):
        rows = np.flatnonzero(labels == c)
        if len(rows) < 2:
            continue
        xs = x[rows]
        zs = z[rows] if len(rows) > EXACT_GROUP else None
        sq = (zs * zs).sum(axis=1) if zs is not None else None
        for s in range(0, len(rows), 1024):
            e = min(s + 1024, len(rows))
            if zs is None:
                cos = xs[s:e] @ xs[s:].T
                bi, bj = np.nonzero(cos >= thr)
                keep = bj > bi  # column j of this block is row s + j: keep each pair once
                bi, bj = bi[keep] + s, bj[keep] + s
                vals = cos[bi - s, bj - s]
            else:
                assert sq is not None
                d2 = sq[s:e, None] + sq[None, s:] - 2.0 * zs[s:e] @ zs[s:].T
                bi, bj = np.nonzero(d2 <= max_d2)
                keep = bj > bi
                bi, bj = bi[keep] + s, bj[keep] + s
                if len(bi) > MAX_SCREENED:
                    log.warning("merge candidates: %d screened pairs in one block of cluster %s; only the first %d "
                                "are checked", len(bi), c, MAX_SCREENED)
                    bi, bj = bi[:MAX_SCREENED], bj[:MAX_SCREENED]
                vals = np.einsum("ij,ij->i", xs[bi], xs[bj])
                ok = vals >= thr
                bi, bj, vals = bi[ok], bj[ok], vals[ok]
            found += [(float(v), int(rows[i]), int(rows[j]), int(c)) for v, i, j in zip(vals, bi, bj, strict=True)]
    found.sort(key=lambda t: -t[0])
    return [MergeCandidate(case_id=ids[i], other_case_id=ids[j], cosine=round(v, 6),
                           cluster=None if c == UNCLUSTERED else c) for v, i, j, c in found[:limit]]


def compute_clusters(store: VectorStore, settings: ClusterSettings | None = None, cases: CaseVectors | None = None,
                     cache_dir: str | Path | None = None) -> tuple[ClusterReport, ClusterModel]:
    """Cluster the knowledge base in ``store`` (read only); returns the report and the model to save.
    ``cache_dir``: see :func:`case_vectors`."""
    from sklearn.cluster import HDBSCAN
    from sklearn.decomposition import PCA

    cfg = settings or ClusterSettings()
    t0 = time.perf_counter()
    cv = cases if cases is not None else case_vectors(store, cache_dir=cache_dir)
    n = len(cv)
    if n == 0:
        raise ClusterError("the knowledge base has no cases: nothing to cluster (import cases first)")
    x = cv.vectors
    rng = np.random.default_rng(cfg.seed)
    fit_rows = np.sort(rng.choice(n, size=cfg.fit_sample, replace=False)) if n > cfg.fit_sample else np.arange(n)
    note = ""
    labels = np.full(n, UNCLUSTERED, dtype=np.int64)
    z = _reduce(x, cfg.reduce_dims, cfg.seed, fit_rows)
    if len(fit_rows) < cfg.min_cluster_size:
        note = (f"{n} case(s): fewer than min_cluster_size={cfg.min_cluster_size}, so no fault family can form; "
                "every case is unclustered")
    else:
        hdb = HDBSCAN(min_cluster_size=cfg.min_cluster_size, min_samples=cfg.min_samples, copy=True)
        fit_labels = np.asarray(hdb.fit_predict(z[fit_rows]), dtype=np.int64)
        labels[fit_rows] = _trim_outliers(x, labels_at(fit_labels, fit_rows, n), cfg)[fit_rows]
    cids, cents, thr = _centroids(x, labels, cfg.assign_margin)
    model = ClusterModel(cluster_ids=cids, centroids=cents, thresholds=thr, embedder_id=cv.embedder_id, dim=cv.dim,
                         created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), n_cases=n, settings=cfg)
    if n > len(fit_rows):  # the cases HDBSCAN did not see join by the incremental rule
        rest = np.setdiff1d(np.arange(n), fit_rows)
        for s in range(0, len(rest), 8192):
            labels[rest[s:s + 8192]] = model.assign_many(x[rest[s:s + 8192]])
    # distinguishing terms from the cases HDBSCAN was fitted on (all of them up to fit_sample): tokenising 100k
    # documents would cost more than the clustering, and a 20k sample gives the same top terms per family
    terms = _terms([cv.documents[i] for i in fit_rows], labels[fit_rows], cids, cfg.terms)
    clusters: list[ClusterInfo] = []
    for j, c in enumerate(cids):
        rows = np.flatnonzero(labels == c)
        sims = x[rows] @ cents[j]
        order = rows[np.argsort(-sims)]
        mix = Counter(cv.product_lines[i] for i in rows)
        shares = sorted(mix.values(), reverse=True)
        mixed = len(shares) > 1 and shares[1] / len(rows) >= cfg.mixed_min_share
        central = [CentralCase(case_id=cv.ids[i], title=cv.titles[i], thumbnail=cv.thumbnails[i],
                               similarity=round(float(x[i] @ cents[j]), 6)) for i in order[:cfg.central]]
        clusters.append(ClusterInfo(id=int(c), size=len(rows), product_lines=dict(mix.most_common()),
                                    mixed_product_lines=bool(mixed), central=central, terms=terms[int(c)],
                                    members=[cv.ids[i] for i in order]))
    clusters.sort(key=lambda ci: (-ci.size, ci.id))
    merges = _merge_candidates(x, z, labels, cv.ids, cfg.merge_threshold, cfg.max_merge_pairs)
    if z is not x and z.shape[1] >= 2:  # PCA components come by explained variance: the map is z's first two
        xy_all = z[:, :2]
    elif len(fit_rows) >= 2:
        xy_all = PCA(n_components=2, random_state=cfg.seed).fit(x[fit_rows]).transform(x)
    else:
        xy_all = np.zeros((n, 2))
    report = ClusterReport(
        n_cases=n, n_clusters=len(clusters), n_unclustered=int((labels == UNCLUSTERED).sum()),
        embedder_id=cv.embedder_id, dim=cv.dim, fitted_on=len(fit_rows), clusters=clusters,
        unclustered=[cv.ids[i] for i in np.flatnonzero(labels == UNCLUSTERED)], merge_candidates=merges,
        assignments={cid: (None if lab == UNCLUSTERED else int(lab)) for cid, lab in zip(cv.ids, labels.tolist(), strict=True)},
        map_xy={cid: [round(float(a), 5), round(float(b), 5)] for cid, (a, b) in zip(cv.ids, xy_all, strict=True)},
        product_lines=dict(zip(cv.ids, cv.product_lines, strict=True)), settings=cfg,
        elapsed_s=round(time.perf_counter() - t0, 3), note=note)
    return report, model


# ------------------------------------------------------------------------------------------------ output


class MapText(BaseModel):
    """The map's words: English for the CLI; the admin view passes them in the user's language."""

    title: str = "Knowledge-base map (PCA of the case vectors)"
    panel: str = "{n} cases by {what}"
    by_cluster: str = "cluster"
    by_line: str = "product line"
    cluster: str = "cluster {id}"
    unclustered: str = "unclustered"
    no_line: str = "(none)"


def plot_map(report: ClusterReport, path: str | Path, *, max_legend: int = 12,
             by: Sequence[str] = ("cluster", "product line"), text: MapText | None = None) -> Path:
    """The 2-D map (PCA) as a PNG, one panel per ``by``: coloured by cluster (unclustered grey) and/or product line."""
    words = text or MapText()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = list(report.map_xy)
    xy = np.asarray([report.map_xy[i] for i in ids], dtype=np.float64).reshape(-1, 2)
    panels = [b for b in by if b in ("cluster", "product line")] or ["cluster"]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5), dpi=100, squeeze=False)
    cmap = plt.get_cmap("tab20")
    for ax, what in zip(axes[0], panels, strict=True):
        groups: dict[str, list[int]] = {}
        for k, cid in enumerate(ids):
            if what == "cluster":
                c = report.assignments.get(cid)
                key = words.unclustered if c is None else words.cluster.format(id=c)
            else:
                key = report.product_lines.get(cid) or words.no_line
            groups.setdefault(key, []).append(k)
        keys = sorted(groups, key=lambda g: (g == words.unclustered, -len(groups[g]), g))
        for gi, key in enumerate(keys):
            rows = groups[key]
            colour = "#b0b0b0" if key == words.unclustered else cmap(gi % 20)
            ax.scatter(xy[rows, 0], xy[rows, 1], s=8 if len(ids) > 2000 else 22, color=colour, alpha=0.8,
                       label=key if gi < max_legend else None, linewidths=0)
        ax.set_title(words.panel.format(n=report.n_cases,
                                        what=words.by_cluster if what == "cluster" else words.by_line))
        ax.set_xticks([])
        ax.set_yticks([])
        if keys:
            ax.legend(fontsize=7, loc="best", markerscale=1.5)
    fig.suptitle(words.title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def report_markdown(report: ClusterReport, map_png: str | None = None) -> str:
    """The report as markdown (for the CLI's ``report.md`` and the admin view)."""
    lines = ["# Fault clusters", "",
             f"{report.n_cases} case(s), {report.n_clusters} cluster(s), {report.n_unclustered} unclustered · "
             f"embedder `{report.embedder_id}` (dim {report.dim}) · HDBSCAN min_cluster_size "
             f"{report.settings.min_cluster_size} on PCA-{report.settings.reduce_dims} "
             f"(fitted on {report.fitted_on} case(s)) · {report.elapsed_s:.2f} s", ""]
    if report.note:
        lines += [f"> {report.note}", ""]
    if map_png:
        lines += [f"![map]({map_png})", ""]
    if report.clusters:
        lines += ["| cluster | size | product lines | flag | central cases | distinguishing terms |", "|---:|---:|---|---|---|---|"]
        for c in report.clusters:
            mix = ", ".join(f"{k} ({v})" for k, v in c.product_lines.items())
            central = ", ".join(cc.case_id for cc in c.central)
            flag = "mixed product lines" if c.mixed_product_lines else ""
            lines.append(f"| {c.id} | {c.size} | {mix} | {flag} | {central} | {', '.join(c.terms)} |")
        lines.append("")
    if report.merge_candidates:
        lines += [f"**Merge candidates** (case cosine ≥ {report.settings.merge_threshold}):", ""]
        lines += [f"- {m.case_id} ≈ {m.other_case_id} (cosine {m.cosine:.4f})" for m in report.merge_candidates]
        lines.append("")
    if report.unclustered:
        shown = ", ".join(report.unclustered[:30]) + (" …" if len(report.unclustered) > 30 else "")
        lines += [f"**Unclustered** ({len(report.unclustered)}): {shown}", ""]
    return "\n".join(lines)
