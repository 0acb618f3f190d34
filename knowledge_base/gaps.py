"""Knowledge gaps: questions the app abstained on or whose answer got a thumbs-down, grouped into topics.

Input: the feedback log ``data_dir/feedback.sqlite3`` written by the chat (``ui/feedback.py``: the ``abstentions``
table, one row per abstained answer, and ``feedback`` rows with rating -1). It is read here through a read-only
SQLite connection (this layer may not import ``ui``; the two tables' columns are the contract). A thumbs-down on an
abstained answer is the same question as its abstention row, so only thumbs-down on answered questions are added.

Grouping (scikit-learn, no model): TF-IDF over each question's text (plus its product-line filter as a term), then
average-linkage agglomerative clustering on cosine distance with a distance threshold, so the number of topics
follows the data and a one-off question stays a topic of its own. Each topic: a label (its top TF-IDF terms), how
many questions, how many were abstentions / thumbs-down, the latest example queries with their kept media (paths
relative to ``data_dir``), the closest cases the app showed, and a pre-filled draft for a new case. Reads only:
nothing is written anywhere (the vector store is only read, the feedback log is opened read-only).

What the photo shows (given the vector store): a question alone says nothing about a photo-only query ("drop a
photo, ask what's wrong"), but the cases the app showed for it do: they were the query's nearest neighbours in the
knowledge base's embedding space. So each query is also placed there, without running any model, by its *shown-case
vector*: the L2-normalised mean of the stored (unit) text-point vectors of its first :data:`SHOWN_PER_QUERY` shown
cases (one batched ``retrieve`` for all queries). The pair distance used by the clustering is then, per pair,

* both have text and a shown-case vector: ``max(d_text, d_vec)`` (both signals must agree: the same generic text
  "what is wrong?" over two different photos stays two topics, and two different questions that only happened to
  show the same nearest cases stay two topics);
* only one of the two parts is present in both: that part's distance (a photo-only query joins a text query's topic
  through the shown-case vectors alone);
* no part in common (text-only vs photo-only): 1, the largest distance.

``d_text`` is the TF-IDF cosine distance, as without a store. ``d_vec`` is the shown-case vectors' cosine distance
rescaled so that it reaches the text threshold exactly at cosine ``vector_threshold`` (default
:data:`VECTOR_THRESHOLD`, 0.9) and clipped to [0, 1]: ``min(1, distance_threshold * (1 - cos) / (1 - vector_threshold))``.
Why 0.9: the means of three shown cases whose pairwise cosines are about 0.6 (cases of one product line) reach 0.94
when two of the three cases are the same, 0.88 with one in common and about 0.82 with none: at 0.9 two queries join
when they showed mostly the same cases (an estimate from that arithmetic, not measured on real weights; it is a
parameter). Because the combination is a ``max``, a too-loose vector threshold leaves text questions grouped as
without a store. Questions with neither text nor a shown-case vector are grouped by their product-line filter, as
before. Without a store, or when no shown case's vector can be read, or when the shown cases' points were written by
an embedder other than the store's (their vectors are not comparable), the grouping is exactly the text-only one (one
warning is logged for the last two).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, Field

from rag.store import StoreError, VectorStore, point_id

if TYPE_CHECKING:  # pragma: no cover
    from scipy.sparse import spmatrix

__all__ = ["FEEDBACK_DB", "SHOWN_PER_QUERY", "VECTOR_THRESHOLD", "GapError", "GapQuery", "GapReport", "GapTopic",
           "NewCaseDraft", "find_gaps", "gaps_markdown", "group_gaps", "read_gap_queries", "shown_case_vectors"]

log = logging.getLogger(__name__)

#: The feedback log under ``data_dir`` (ui/services.py opens it there).
FEEDBACK_DB = "feedback.sqlite3"
#: Shown cases (closest first) whose stored vectors place a query in the embedding space.
SHOWN_PER_QUERY = 3
#: Cosine of two queries' shown-case vectors at which they count as one topic (see the module docstring).
VECTOR_THRESHOLD = 0.9


class GapError(ValueError):
    """The feedback log cannot be read; the message says why."""


class GapQuery(BaseModel):
    """One question that ended in an abstention or a thumbs-down."""

    source: Literal["abstention", "thumbs_down"]
    id: int
    ts: float
    question: str
    #: kept copies of the query's media, relative to ``data_dir``
    media: list[str] = Field(default_factory=list)
    filters: dict[str, str | list[str] | None] = Field(default_factory=dict)
    #: case ids the app showed (closest first)
    shown_cases: list[str] = Field(default_factory=list)
    comment: str = ""

    @property
    def when(self) -> str:
        return datetime.fromtimestamp(self.ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")


class NewCaseDraft(BaseModel):
    """What "start a new case from this gap" pre-fills (the admin completes and saves it)."""

    title: str
    product_line: str
    symptom: str
    media: list[str]


class GapTopic(BaseModel):
    id: int
    label: str
    terms: list[str]
    size: int
    abstentions: int
    thumbs_down: int
    product_lines: dict[str, int]
    examples: list[GapQuery]
    shown_cases: list[str]
    draft: NewCaseDraft


class GapReport(BaseModel):
    n_queries: int
    n_topics: int
    topics: list[GapTopic]
    note: str = ""


def _json(value: str | None, default: object) -> object:
    try:
        return json.loads(value) if value else default
    except (TypeError, ValueError):
        return default


def read_gap_queries(db_path: str | Path, limit: int = 5000) -> list[GapQuery]:
    """Abstentions and thumbs-down answers from the feedback log, newest first (read-only; no log: none)."""
    path = Path(db_path)
    if not path.exists():
        return []
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as e:
        raise GapError(f"cannot open the feedback log {path}: {e}") from None
    out: list[GapQuery] = []
    with closing(con):
        con.row_factory = sqlite3.Row
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "abstentions" in tables:
                for r in con.execute("SELECT * FROM abstentions ORDER BY id DESC LIMIT ?", (limit,)):
                    out.append(_query("abstention", r))
            if "feedback" in tables:
                cols = {r[1] for r in con.execute("PRAGMA table_info(feedback)")}
                media = "media_files" if "media_files" in cols else "'[]'"
                sql = (f"SELECT id, ts, question, filters, cases, comment, {media} AS media_files FROM feedback "
                       "WHERE rating = -1 AND abstained = 0 ORDER BY id DESC LIMIT ?")
                for r in con.execute(sql, (limit,)):
                    out.append(_query("thumbs_down", r))
        except sqlite3.DatabaseError as e:
            raise GapError(f"the feedback log {path} is unreadable: {e}") from None
    out.sort(key=lambda q: -q.ts)
    return out


def _query(source: Literal["abstention", "thumbs_down"], r: sqlite3.Row) -> GapQuery:
    keys = r.keys()
    cases = _json(r["cases"], [])
    filters = _json(r["filters"], {})
    media = _json(r["media_files"], [])
    return GapQuery(
        source=source, id=int(r["id"]), ts=float(r["ts"]), question=str(r["question"] or ""),
        media=[m for m in media if isinstance(m, str)] if isinstance(media, list) else [],
        filters={k: v for k, v in filters.items() if isinstance(k, str) and isinstance(v, (str, list, type(None)))}
        if isinstance(filters, dict) else {},
        shown_cases=[c["case_id"] for c in cases if isinstance(c, dict) and isinstance(c.get("case_id"), str)]
        if isinstance(cases, list) else [],
        comment=str(r["comment"] or "") if "comment" in keys else "")


def _line(q: GapQuery) -> str:
    v = q.filters.get("product_line")
    if isinstance(v, list):
        return v[0] if v and isinstance(v[0], str) else ""
    return v or ""


def _tfidf(queries: Sequence[GapQuery], with_text: Sequence[int]) -> tuple[spmatrix | None, np.ndarray]:
    """TF-IDF rows of the questions with text (the product-line filter as one more term) and the vocabulary;
    ``None`` when nothing but stop words was asked."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    docs = [queries[i].question.strip() + (" " + _line(queries[i]).replace(" ", "_") if _line(queries[i]) else "")
            for i in with_text]
    vec = TfidfVectorizer(stop_words="english", sublinear_tf=True, token_pattern=r"(?u)\b[^\W_][\w-]*[^\W_]\b")
    try:
        m = vec.fit_transform(docs)
    except ValueError:  # nothing but stop words: one topic
        return None, np.array([], dtype=object)
    return m, np.asarray(vec.get_feature_names_out())


def _dense_rows(m: spmatrix) -> np.ndarray:
    """Dense TF-IDF rows; an empty row (only stop words) gets a tiny first term, so cosine is defined and such
    questions end up together."""
    dense = np.asarray(m.toarray())
    dense[~dense.any(axis=1), 0] = 1e-6
    return dense


def _query_vectors(queries: Sequence[GapQuery], case_vectors: Mapping[str, np.ndarray],
                   per_query: int) -> tuple[np.ndarray, np.ndarray]:
    """Each query's shown-case vector (the normalised mean of its first ``per_query`` shown cases' unit vectors that
    the map holds) and a mask of the queries that have one."""
    dim = len(next(iter(case_vectors.values())))
    out = np.zeros((len(queries), dim), dtype=np.float64)
    has = np.zeros(len(queries), dtype=bool)
    for i, q in enumerate(queries):
        vs = [np.asarray(case_vectors[c], dtype=np.float64) for c in q.shown_cases[:per_query] if c in case_vectors]
        vs = [v / n for v in vs if (n := float(np.linalg.norm(v))) > 0]
        if not vs:
            continue
        mean = np.mean(vs, axis=0)
        norm = float(np.linalg.norm(mean))
        if norm > 1e-9:
            out[i], has[i] = mean / norm, True
    return out, has


def _pair_distances(text_rows: np.ndarray | None, has_text: np.ndarray, vecs: np.ndarray, has_vec: np.ndarray,
                    distance_threshold: float, vector_threshold: float) -> np.ndarray:
    """The per-pair distance of the module docstring (rows: the queries with text or a shown-case vector); float32
    and built in place: 10k questions make a 400 MB matrix."""
    n = len(has_text)
    d = np.ones((n, n), dtype=np.float32)
    ti, vi = np.flatnonzero(has_text), np.flatnonzero(has_vec)
    if text_rows is not None and len(ti):
        r = (text_rows[ti] / np.linalg.norm(text_rows[ti], axis=1, keepdims=True)).astype(np.float32)
        sim = r @ r.T
        np.subtract(1.0, sim, out=sim)
        d[np.ix_(ti, ti)] = np.clip(sim, 0.0, 1.0, out=sim)
        del sim
    if len(vi):
        v = vecs[vi].astype(np.float32)
        dv = v @ v.T
        np.subtract(1.0, dv, out=dv)
        dv *= np.float32(distance_threshold / (1.0 - vector_threshold))
        np.clip(dv, 0.0, 1.0, out=dv)
        both = np.flatnonzero(has_text[vi])  # both parts present: the larger distance (both signals must agree)
        if len(both):
            dv[np.ix_(both, both)] = np.maximum(dv[np.ix_(both, both)], d[np.ix_(vi[both], vi[both])])
        d[np.ix_(vi, vi)] = dv
        del dv
    np.fill_diagonal(d, 0.0)
    return d


def group_gaps(queries: list[GapQuery], *, distance_threshold: float = 0.8, examples: int = 5,
               terms: int = 5, case_vectors: Mapping[str, np.ndarray] | None = None,
               vector_threshold: float = VECTOR_THRESHOLD, shown_per_query: int = SHOWN_PER_QUERY) -> GapReport:
    """Group the questions into topics (see the module docstring); largest topics first.

    ``case_vectors``: stored vectors of shown cases by case id (:func:`shown_case_vectors`); without it, or when no
    query has one of its first ``shown_per_query`` shown cases in it, the questions are grouped by their text alone.
    """
    from sklearn.cluster import AgglomerativeClustering

    if not 0.0 < vector_threshold < 1.0:
        raise ValueError(f"vector_threshold must be a cosine between 0 and 1 (exclusive), got {vector_threshold!r}")
    if not queries:
        return GapReport(n_queries=0, n_topics=0, topics=[],
                         note="no abstentions or thumbs-down answers logged yet: no knowledge gaps to show")
    texts = [q.question.strip() for q in queries]
    labels = np.full(len(queries), -1, dtype=np.int64)
    with_text = [i for i, t in enumerate(texts) if t]
    vocab: np.ndarray = np.array([], dtype=object)
    m = None
    if with_text:
        m, vocab = _tfidf(queries, with_text)
    vecs, has_vec = (_query_vectors(queries, case_vectors, shown_per_query) if case_vectors
                     else (np.zeros((len(queries), 0)), np.zeros(len(queries), dtype=bool)))
    if has_vec.any():  # text and shown-case vectors
        has_text = np.array([bool(t) for t in texts])
        rows = np.flatnonzero(has_text | has_vec)
        text_rows = None
        if with_text:
            text_rows = np.zeros((len(queries), 1 if m is None else len(vocab)), dtype=np.float64)
            text_rows[with_text] = 1.0 if m is None else _dense_rows(m)
            text_rows = text_rows[rows]
        if len(rows) == 1:
            labels[rows] = 0
        else:
            dist = _pair_distances(text_rows, has_text[rows], vecs[rows], has_vec[rows], distance_threshold,
                                   vector_threshold)
            agg = AgglomerativeClustering(n_clusters=None, metric="precomputed", linkage="average",
                                          distance_threshold=distance_threshold)
            labels[rows] = agg.fit_predict(dist)
    elif with_text:  # text only: exactly as before shown-case vectors were used
        if m is None or len(with_text) == 1:
            labels[with_text] = 0
        else:
            agg = AgglomerativeClustering(n_clusters=None, metric="cosine", linkage="average",
                                          distance_threshold=distance_threshold)
            labels[with_text] = agg.fit_predict(_dense_rows(m))
    nxt = int(labels.max()) + 1
    by_line: dict[str, int] = {}
    for i in range(len(queries)):  # neither text nor a shown-case vector: one topic per product-line filter
        if labels[i] < 0:
            key = _line(queries[i])
            if key not in by_line:
                by_line[key], nxt = nxt, nxt + 1
            labels[i] = by_line[key]
    row_of = {i: r for r, i in enumerate(with_text)}
    topics: list[GapTopic] = []
    members = _members(labels)
    for c in sorted(members):
        idx = members[c]
        qs = [queries[i] for i in idx]
        rows_c = [row_of[i] for i in idx if i in row_of]
        top_terms: list[str] = []
        if m is not None and rows_c:
            w = np.asarray(m[rows_c].sum(axis=0)).ravel()
            top_terms = [str(vocab[j]).replace("_", " ") for j in np.argsort(-w)[:terms] if w[j] > 0]
        topics.append(_topic(qs, top_terms, examples, by_vector=bool(has_vec[idx].any())))
    topics.sort(key=lambda t: (-t.size, -max(q.ts for q in t.examples)))
    for k, topic in enumerate(topics):
        topic.id = k
    return GapReport(n_queries=len(queries), n_topics=len(topics), topics=topics)


def _members(labels: np.ndarray) -> dict[int, list[int]]:
    """Row indexes per label, in one pass (a scan per topic is quadratic: 10k one-off questions took 11 s)."""
    out: dict[int, list[int]] = {}
    for i, c in enumerate(labels.tolist()):
        out.setdefault(c, []).append(i)
    return out


def _topic(qs: list[GapQuery], top_terms: list[str], examples: int, *, by_vector: bool) -> GapTopic:
    """One topic's summary and new-case draft; a photo-only topic grouped by its shown cases is labelled with the
    case they showed most (two such topics of one product line would otherwise read the same)."""
    line = Counter(_line(q) for q in qs if _line(q)).most_common(1)
    shown = Counter(c for q in qs for c in q.shown_cases[:3])
    label = ", ".join(top_terms[:3]) if top_terms else f"photo-only questions ({line[0][0] if line else 'any product'})"
    if not top_terms and by_vector and shown:
        label += f" near {shown.most_common(1)[0][0]}"
    media = list(dict.fromkeys(p for q in qs for p in q.media))[:10]
    questions = list(dict.fromkeys(q.question for q in qs if q.question))
    draft = NewCaseDraft(
        title=(questions[0][:120] if questions else label[:120]) or "New case",
        product_line=line[0][0] if line else "",
        symptom="\n".join(f"- {t}" for t in questions[:5]) or "(photo only; describe what the photo shows)",
        media=media)
    return GapTopic(id=0, label=label, terms=top_terms, size=len(qs),
                    abstentions=sum(q.source == "abstention" for q in qs),
                    thumbs_down=sum(q.source == "thumbs_down" for q in qs),
                    product_lines=dict(Counter(_line(q) or "(any)" for q in qs).most_common()),
                    examples=qs[:examples], shown_cases=[c for c, _ in shown.most_common(5)], draft=draft)


def shown_case_vectors(store: VectorStore, queries: Sequence[GapQuery],
                       per_query: int = SHOWN_PER_QUERY) -> dict[str, np.ndarray] | None:
    """The stored text-point vectors of the queries' first ``per_query`` shown cases, by case id (one batched
    ``retrieve``; reads only). Cases no longer in the store are left out.

    ``None``, with one warning, when they cannot be used: the store cannot be read, none of the shown cases is in it,
    or their points were written by an embedder other than the store's (not comparable). ``{}``: no query showed a
    case.
    """
    ids = list(dict.fromkeys(c for q in queries for c in q.shown_cases[:per_query] if c))
    if not ids:
        return {}
    try:
        meta = store.meta
        points = store.retrieve([point_id(c) for c in ids], with_vectors=True)
    except (StoreError, OSError, RuntimeError, ValueError) as e:
        log.warning("knowledge gaps grouped by question text only: the vector store cannot be read (%s)", e)
        return None
    foreign = sorted({str(p.payload.get("embedder")) for p in points
                      if p.payload.get("embedder") not in (None, meta.embedder_id)})
    if foreign:
        log.warning("knowledge gaps grouped by question text only: the shown cases' vectors were written by %s but "
                    "the store holds %r vectors (not comparable; run `ragvqa kb reindex`)", ", ".join(foreign),
                    meta.embedder_id)
        return None
    out: dict[str, np.ndarray] = {}
    for p in points:
        cid = p.payload.get("case_id")
        if (isinstance(cid, str) and p.payload.get("kind") == "text" and p.vector is not None
                and np.shape(p.vector) == (meta.dim,)):
            out[cid] = np.asarray(p.vector, dtype=np.float32)
    if not out:
        log.warning("knowledge gaps grouped by question text only: none of the %d case(s) shown for them is in the "
                    "vector store any more", len(ids))
        return None
    return out


def find_gaps(data_dir: str | Path, store: VectorStore | None = None, *, distance_threshold: float = 0.8,
              vector_threshold: float = VECTOR_THRESHOLD) -> GapReport:
    """:func:`group_gaps` over the feedback log under ``data_dir``; with ``store``, what the photos show counts too
    (the shown cases' stored vectors, see the module docstring). Reads only."""
    queries = read_gap_queries(Path(data_dir) / FEEDBACK_DB)
    vectors = shown_case_vectors(store, queries) if store is not None and queries else None
    return group_gaps(queries, distance_threshold=distance_threshold, case_vectors=vectors,
                      vector_threshold=vector_threshold)


def gaps_markdown(report: GapReport) -> str:
    lines = ["# Knowledge gaps", "", f"{report.n_queries} question(s) in {report.n_topics} topic(s) "
             "(abstentions and thumbs-down answers)", ""]
    if report.note:
        lines += [f"> {report.note}", ""]
    for t in report.topics:
        lines.append(f"## {t.id}. {t.label} — {t.size} question(s) ({t.abstentions} abstained, {t.thumbs_down} 👎)")
        for q in t.examples:
            media = f" [{', '.join(q.media)}]" if q.media else ""
            lines.append(f"- {q.when} {q.source}: {q.question or '(photo only)'}{media}")
        if t.shown_cases:
            lines.append(f"- closest cases shown: {', '.join(t.shown_cases)}")
        lines.append("")
    return "\n".join(lines)
