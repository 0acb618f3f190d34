"""Knowledge gaps: questions the app abstained on or whose answer got a thumbs-down, grouped into topics.

Input: the feedback log ``data_dir/feedback.sqlite3`` written by the chat (``ui/feedback.py``: the ``abstentions``
table, one row per abstained answer, and ``feedback`` rows with rating -1). It is read here through a read-only
SQLite connection (this layer may not import ``ui``; the two tables' columns are the contract). A thumbs-down on an
abstained answer is the same question as its abstention row, so only thumbs-down on answered questions are added.

Grouping (scikit-learn, no model): TF-IDF over each question's text (plus its product-line filter as a term), then
average-linkage agglomerative clustering on cosine distance with a distance threshold, so the number of topics
follows the data and a one-off question stays a topic of its own. Questions without text (a photo alone) are grouped
by their product-line filter. Each topic: a label (its top TF-IDF terms), how many questions, how many were
abstentions / thumbs-down, the latest example queries with their kept media (paths relative to ``data_dir``), the
closest cases the app showed, and a pre-filled draft for a new case. Reads only: nothing is written anywhere.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections import Counter
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

__all__ = ["FEEDBACK_DB", "GapError", "GapQuery", "GapReport", "GapTopic", "NewCaseDraft", "find_gaps",
           "gaps_markdown", "group_gaps", "read_gap_queries"]

log = logging.getLogger(__name__)

#: The feedback log under ``data_dir`` (ui/services.py opens it there).
FEEDBACK_DB = "feedback.sqlite3"


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


def group_gaps(queries: list[GapQuery], *, distance_threshold: float = 0.8, examples: int = 5,
               terms: int = 5) -> GapReport:
    """Group the questions into topics (see the module docstring); largest topics first."""
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.feature_extraction.text import TfidfVectorizer

    if not queries:
        return GapReport(n_queries=0, n_topics=0, topics=[],
                         note="no abstentions or thumbs-down answers logged yet: no knowledge gaps to show")
    texts = [q.question.strip() for q in queries]
    labels = np.full(len(queries), -1, dtype=np.int64)
    with_text = [i for i, t in enumerate(texts) if t]
    vocab: np.ndarray = np.array([], dtype=object)
    m = None
    if with_text:
        docs = [texts[i] + (" " + _line(queries[i]).replace(" ", "_") if _line(queries[i]) else "") for i in with_text]
        vec = TfidfVectorizer(stop_words="english", sublinear_tf=True, token_pattern=r"(?u)\b[^\W_][\w-]*[^\W_]\b")
        try:
            m = vec.fit_transform(docs)
            vocab = np.asarray(vec.get_feature_names_out())
        except ValueError:  # nothing but stop words: one topic
            m = None
        if m is None or len(with_text) == 1:
            labels[with_text] = 0
        else:
            dense = m.toarray()
            empty = ~dense.any(axis=1)
            dense[empty, 0] = 1e-6  # cosine needs a non-zero row; such questions end up together
            agg = AgglomerativeClustering(n_clusters=None, metric="cosine", linkage="average",
                                          distance_threshold=distance_threshold)
            labels[with_text] = agg.fit_predict(dense)
    nxt = int(labels.max()) + 1
    by_line: dict[str, int] = {}
    for i, t in enumerate(texts):  # photo-only questions: one topic per product-line filter
        if not t:
            key = _line(queries[i])
            if key not in by_line:
                by_line[key], nxt = nxt, nxt + 1
            labels[i] = by_line[key]
    row_of = {i: r for r, i in enumerate(with_text)}
    topics: list[GapTopic] = []
    for c in sorted(set(labels.tolist())):
        idx = [i for i in range(len(queries)) if labels[i] == c]
        qs = [queries[i] for i in idx]
        rows = [row_of[i] for i in idx if i in row_of]
        top_terms: list[str] = []
        if m is not None and rows:
            w = np.asarray(m[rows].sum(axis=0)).ravel()
            top_terms = [str(vocab[j]).replace("_", " ") for j in np.argsort(-w)[:terms] if w[j] > 0]
        line = Counter(_line(q) for q in qs if _line(q)).most_common(1)
        label = ", ".join(top_terms[:3]) if top_terms else f"photo-only questions ({line[0][0] if line else 'any product'})"
        shown = Counter(c for q in qs for c in q.shown_cases[:3])
        media = list(dict.fromkeys(p for q in qs for p in q.media))[:10]
        questions = list(dict.fromkeys(q.question for q in qs if q.question))
        draft = NewCaseDraft(
            title=(questions[0][:120] if questions else label[:120]) or "New case",
            product_line=line[0][0] if line else "",
            symptom="\n".join(f"- {t}" for t in questions[:5]) or "(photo only; describe what the photo shows)",
            media=media)
        topics.append(GapTopic(id=0, label=label, terms=top_terms, size=len(qs),
                               abstentions=sum(q.source == "abstention" for q in qs),
                               thumbs_down=sum(q.source == "thumbs_down" for q in qs),
                               product_lines=dict(Counter(_line(q) or "(any)" for q in qs).most_common()),
                               examples=qs[:examples], shown_cases=[c for c, _ in shown.most_common(5)], draft=draft))
    topics.sort(key=lambda t: (-t.size, -max(q.ts for q in t.examples)))
    for k, topic in enumerate(topics):
        topic.id = k
    return GapReport(n_queries=len(queries), n_topics=len(topics), topics=topics)


def find_gaps(data_dir: str | Path, *, distance_threshold: float = 0.8) -> GapReport:
    """:func:`group_gaps` over the feedback log under ``data_dir``."""
    return group_gaps(read_gap_queries(Path(data_dir) / FEEDBACK_DB), distance_threshold=distance_threshold)


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
