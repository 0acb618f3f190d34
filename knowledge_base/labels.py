"""Suggested labels (classification): product line, equipment model, tags and severity for a new, edited or imported
case, from its labelled neighbours in the knowledge base, else from label descriptions (zero-shot).

Neighbours (k-NN vote). The query's vectors (a stored case's text + media vectors, or freshly embedded text/media)
find the ``k`` nearest other cases by their best (query vector, case point) pair: the same batched store query as
related cases, so the store is the index and nothing is scanned. Each neighbour votes with weight
``max(similarity, 0)`` among the neighbours that have the field labelled; a value's confidence is its share of the
vote (what scikit-learn's ``KNeighborsClassifier(weights=...).predict_proba`` computes when the neighbours are given;
sklearn itself is not used at query time because it needs every training vector in memory). Tags are multi-label:
each tag's share is computed on its own.

Low confidence → no suggestion: a value is suggested only when it carries at least ``MIN_CONFIDENCE`` (0.5) of the
vote, i.e. a weighted majority (below that the neighbours disagree and the top value is little better than its
runner-up), and at least ``MIN_VOTERS`` (3) labelled neighbours voted (one or two neighbours are anecdote, not
evidence: in a one- or two-case knowledge base every vote would otherwise be "100 %").

Zero-shot. Where the neighbours give no suggestion (too few examples of the field, or disagreement), the candidate
values (those known in the knowledge base plus those described in ``data_dir/labels.json``; severity has built-in
descriptions) are embedded as text ("Product line: printer. <description>") and compared with the query vectors:
confidence = softmax of the best cosines at temperature ``ZERO_SHOT_TEMPERATURE`` (0.02, a CLIP-style logit scale
of 50), suggested when ≥ ``MIN_CONFIDENCE``. Label embeddings are cached per embedder and text, and ``labels.json``
is parsed once per version of the file (its size and modification time). Tags get no zero-shot suggestion (a
multi-label softmax has no meaningful threshold).

Suggestions never write to the store.
"""

from __future__ import annotations

import json
import logging
import stat
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from knowledge_base.media_store import VIDEO_SUFFIXES
from knowledge_base.related import case_points, nearest_cases
from knowledge_base.schema import Case
from rag.errors import UserInputError
from rag.store import VectorStore, point_id

if TYPE_CHECKING:  # pragma: no cover
    from knowledge_base.kb import KnowledgeBase

__all__ = [
    "DEFAULT_K",
    "LABEL_FIELDS",
    "MIN_CONFIDENCE",
    "MIN_VOTERS",
    "embed_items",
    "LabelField",
    "LabelSuggestion",
    "LabelsInputError",
    "known_values",
    "label_descriptions",
    "neighbour_votes",
    "suggest_labels",
    "zero_shot",
]

log = logging.getLogger(__name__)

LabelField = Literal["product_line", "equipment_model", "tags", "severity"]
LABEL_FIELDS: tuple[LabelField, ...] = get_args(LabelField)
#: Neighbouring cases that vote.
DEFAULT_K = 10
#: A suggestion needs this share of the (similarity-weighted) vote: a weighted majority.
MIN_CONFIDENCE = 0.5
#: ... and this many labelled neighbours voting (else zero-shot is tried).
MIN_VOTERS = 3
#: Softmax temperature of zero-shot confidences (cosines differ by a few hundredths between close labels).
ZERO_SHOT_TEMPERATURE = 0.02
#: Optional label descriptions under the data dir: ``{"product_line": {"printer": "laser printers, toner..."}}``.
DESCRIPTIONS_FILE = "labels.json"

SEVERITY_DESCRIPTIONS: dict[str, str] = {
    "low": "a cosmetic or minor fault; the equipment keeps working normally",
    "medium": "degraded operation; the equipment works with a workaround",
    "high": "the equipment stops working or cannot be used; no workaround",
    "critical": "a safety hazard: smoke, fire, burning smell, electric shock, leak or data loss",
}
_FIELD_WORD: dict[str, str] = {"product_line": "Product line", "equipment_model": "Equipment model",
                               "severity": "Severity", "tags": "Tag"}


class LabelsInputError(UserInputError, ValueError):
    """Suggestions cannot be computed for this input (nothing to classify, bad k, unreadable labels.json)."""


class LabelSuggestion(BaseModel):
    """One suggested value of a case field, with its confidence and where it came from."""

    field: LabelField
    value: str
    confidence: float = Field(ge=0.0, le=1.0)
    source: Literal["neighbours", "zero-shot"]


def _store(kb: KnowledgeBase | VectorStore) -> VectorStore:
    return kb if isinstance(kb, VectorStore) else kb.store


def _labels_of(case: Case, field: LabelField) -> list[str]:
    if field == "tags":
        return list(case.tags)
    value = getattr(case, field)
    return [value] if isinstance(value, str) and value else []


def neighbour_votes(neighbours: Sequence[tuple[Case, float]], field: LabelField) -> tuple[dict[str, float], int]:
    """Each value's share of the similarity-weighted vote of the neighbours labelled in ``field``, and how many voted.

    Weights are ``max(similarity, 0)``; with all weights 0 every voter counts equally.
    """
    voters = [(_labels_of(c, field), max(s, 0.0)) for c, s in neighbours]
    voters = [(v, w) for v, w in voters if v]
    if not voters:
        return {}, 0
    if sum(w for _, w in voters) <= 0:
        voters = [(v, 1.0) for v, _ in voters]
    total = sum(w for _, w in voters)
    acc: dict[str, float] = {}
    for values, w in voters:
        for v in values:
            acc[v] = acc.get(v, 0.0) + w
    return {v: float(w / total) for v, w in acc.items()}, len(voters)


def zero_shot(query: np.ndarray, labels: Mapping[str, np.ndarray],
              temperature: float = ZERO_SHOT_TEMPERATURE) -> dict[str, float]:
    """Softmax over candidate labels of their best cosine with any query vector (rows of ``query``)."""
    if not labels:
        return {}
    names = list(labels)
    q = np.atleast_2d(np.asarray(query, dtype=np.float64))
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    m = np.stack([np.asarray(labels[n], dtype=np.float64) for n in names])
    m = m / np.linalg.norm(m, axis=1, keepdims=True)
    best = (q @ m.T).max(axis=0) / temperature
    p = np.exp(best - best.max())
    p /= p.sum()
    return dict(zip(names, (float(x) for x in p), strict=True))


# -- label descriptions and their embeddings ---------------------------------------------------------------------

_EMBED_CACHE: dict[tuple[str, int, str], np.ndarray] = {}
_CACHE_LOCK = threading.Lock()
#: Parsed ``labels.json`` per path, with the (size, mtime_ns, inode) it was read at: an edit is seen at once.
_DESCRIPTIONS_CACHE: dict[Path, tuple[tuple[int, int, int], dict[str, dict[str, str]]]] = {}


def label_descriptions(data_dir: Path | None) -> dict[str, dict[str, str]]:
    """Descriptions per field and value: the built-in severity ones, overridden/extended by ``labels.json``.

    The file is parsed again only when its size, modification time or inode changed (a bulk import asks for every
    record)."""
    path = data_dir / DESCRIPTIONS_FILE if data_dir is not None else None
    try:
        st = path.stat() if path is not None else None
    except OSError:  # no labels.json: the built-in descriptions only
        st = None
    if path is None or st is None or not stat.S_ISREG(st.st_mode):
        return {"severity": dict(SEVERITY_DESCRIPTIONS)}
    version = (st.st_size, st.st_mtime_ns, st.st_ino)
    with _CACHE_LOCK:
        hit = _DESCRIPTIONS_CACHE.get(path)
    if hit is None or hit[0] != version:
        hit = (version, _read_descriptions(path))
        with _CACHE_LOCK:
            _DESCRIPTIONS_CACHE[path] = hit
    return {field: dict(values) for field, values in hit[1].items()}


def _read_descriptions(path: Path) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {"severity": dict(SEVERITY_DESCRIPTIONS)}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LabelsInputError(f"{path} is not readable JSON ({e})") from None
    if not isinstance(raw, dict):
        raise LabelsInputError(f"{path} must hold an object like {{\"product_line\": {{\"printer\": \"...\"}}}}")
    for field, values in raw.items():
        if field not in ("product_line", "equipment_model", "severity"):
            raise LabelsInputError(f"{path}: unknown field {field!r}; describe product_line, equipment_model or severity")
        if not isinstance(values, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in values.items()):
            raise LabelsInputError(f"{path}: {field!r} must map each value to a description string")
        if field == "severity" and set(values) - set(SEVERITY_DESCRIPTIONS):
            raise LabelsInputError(f"{path}: severity values are {', '.join(SEVERITY_DESCRIPTIONS)}")
        out.setdefault(field, {}).update(values)
    return out


def _label_text(field: str, value: str, description: str) -> str:
    return f"{_FIELD_WORD[field]}: {value}." + (f" {description}" if description else "")


def _label_vectors(kb: KnowledgeBase, texts: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Embeddings of label texts (value -> text), cached per embedder and dimension."""
    key = (kb.embedder_id, kb.store.dim)
    with _CACHE_LOCK:
        todo = [v for v, t in texts.items() if (*key, t) not in _EMBED_CACHE]
    if todo:
        vecs = embed_items(kb, [{"text": texts[v]} for v in todo])
        with _CACHE_LOCK:
            for v, vec in zip(todo, vecs, strict=True):
                _EMBED_CACHE[(*key, texts[v])] = np.asarray(vec, dtype=np.float32)
    with _CACHE_LOCK:
        return {v: _EMBED_CACHE[(*key, t)] for v, t in texts.items()}


_KNOWN_CACHE: dict[tuple[int, int], dict[str, set[str]]] = {}


def known_values(store: VectorStore) -> dict[str, set[str]]:
    """Values of product line and equipment model present in the store (cached until the case count changes)."""
    key = (id(store), store.count({"kind": "text"}))
    hit = _KNOWN_CACHE.get(key)
    if hit is not None:
        return hit
    out: dict[str, set[str]] = {"product_line": set(), "equipment_model": set()}
    for p in store.scroll(filters={"kind": "text"}, batch_size=1024, payload_keys=["product_line", "equipment_model"]):
        for f in out:
            v = p.payload.get(f)
            if isinstance(v, str) and v:
                out[f].add(v)
    _KNOWN_CACHE.clear()
    _KNOWN_CACHE[key] = out
    return out


# -- the entry point ---------------------------------------------------------------------------------------------


def _query_vectors(kb: KnowledgeBase | VectorStore, vectors: np.ndarray | Sequence[np.ndarray] | None,
                   case_id: str | None, text: str | None, media: Sequence[str | Path]) -> np.ndarray:
    given = sum(x is not None for x in (vectors, case_id)) + (1 if (text or media) else 0)
    if given != 1:
        raise LabelsInputError("give exactly one of: vectors, case_id, or text/media of a new case")
    store = _store(kb)
    if case_id is not None:
        pts, _ = case_points(store, case_id)
        return np.stack([p.vector for p in pts if p.vector is not None])
    if vectors is not None:
        arr = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] != store.dim:
            raise LabelsInputError(f"vectors must be (n, {store.dim}); got shape {arr.shape}")
        return arr
    if isinstance(kb, VectorStore):
        raise LabelsInputError("classifying text or media needs a knowledge base with an embedder")
    items: list[dict[str, str]] = [{"text": text}] if text else []
    for m in media:
        p = Path(m)
        if not p.is_file():
            raise LabelsInputError(f"media file not found: {p}")
        kind = "video" if p.suffix.lower() in VIDEO_SUFFIXES else "image"
        items.append({kind: str(p)})
    return embed_items(kb, items)


def embed_items(kb: KnowledgeBase, items: Sequence[Mapping[str, str]]) -> np.ndarray:
    """``kb.embed`` (document side, one row per item), with a store of another embedder reported as the user's
    problem (run a reindex)."""
    if why := kb.state.store_mismatch():
        raise LabelsInputError(why, code="store_mismatch")
    return np.asarray(kb.embed([dict(i) for i in items]), dtype=np.float32)


def suggest_labels(kb: KnowledgeBase | VectorStore, *, vectors: np.ndarray | Sequence[np.ndarray] | None = None,
                   case_id: str | None = None, text: str | None = None, media: Sequence[str | Path] = (),
                   exclude_case_id: str | None = None, k: int = DEFAULT_K, min_confidence: float = MIN_CONFIDENCE,
                   fields: Sequence[LabelField] = LABEL_FIELDS, zero_shot_fallback: bool = True,
                   exact: bool = False) -> list[LabelSuggestion]:
    """Suggested labels for one case, best first per field; pure read.

    The case is given as stored ``vectors`` (e.g. leave-one-out evaluation), a stored ``case_id`` (its own labels
    are excluded: it never votes for itself), or the ``text``/``media`` of a new case (embedded once).
    ``exclude_case_id`` leaves that case out of the neighbours. Zero-shot needs a ``KnowledgeBase`` with an embedder;
    with a bare store only neighbour votes are made.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise LabelsInputError(f"k must be a positive integer, got {k!r}")
    if not 0.0 < min_confidence <= 1.0:
        raise LabelsInputError(f"min_confidence must be in (0, 1], got {min_confidence!r}")
    bad = set(fields) - set(LABEL_FIELDS)
    if bad:
        raise LabelsInputError(f"unknown field(s) {sorted(bad)}; fields: {', '.join(LABEL_FIELDS)}")
    store = _store(kb)
    q = _query_vectors(kb, vectors, case_id, text, media)
    skip = exclude_case_id if exclude_case_id is not None else case_id
    found = nearest_cases(store, list(q), k, skip=skip, exact=exact, extra=len(q) if skip else 0)
    records = {}
    for p in store.retrieve([point_id(c) for c in found]):
        try:
            records[p.payload.get("case_id")] = Case.model_validate(p.payload.get("case"))
        except ValidationError:
            log.warning("case record of point %s is unreadable; it does not vote", p.id)
    neighbours = [(records[c], pairs[0][0]) for c, pairs in found.items() if c in records]
    out: list[LabelSuggestion] = []
    need_zero_shot: list[LabelField] = []
    for field in fields:
        shares, voters = neighbour_votes(neighbours, field)
        ranked = sorted(shares.items(), key=lambda kv: (-kv[1], kv[0]))
        picks = [(v, s) for v, s in ranked if s >= min_confidence] if voters >= MIN_VOTERS else []
        if field != "tags":
            picks = picks[:1]
        out += [LabelSuggestion(field=field, value=v, confidence=min(1.0, s), source="neighbours") for v, s in picks]
        if not picks and field != "tags":
            need_zero_shot.append(field)
    if need_zero_shot and zero_shot_fallback and not isinstance(kb, VectorStore) and kb.embedder is not None:
        why = kb.state.store_mismatch()
        if why is None:
            out += _zero_shot_suggestions(kb, q, need_zero_shot, min_confidence)
        else:  # label texts embedded now would not be comparable with the stored vectors
            log.warning("zero-shot labels skipped: %s", why)
    return out


def _zero_shot_suggestions(kb: KnowledgeBase, q: np.ndarray, fields: Sequence[LabelField],
                           min_confidence: float) -> list[LabelSuggestion]:
    descriptions = label_descriptions(kb.data_dir)
    known = known_values(kb.store)
    out = []
    for field in fields:
        described = descriptions.get(field, {})
        values = sorted(set(described) | known.get(field, set()))
        if len(values) < 2:  # one candidate: a softmax over it says nothing
            continue
        vecs = _label_vectors(kb, {v: _label_text(field, v, described.get(v, "")) for v in values})
        shares = zero_shot(q, vecs)
        value, conf = max(shares.items(), key=lambda kv: (kv[1], kv[0]))
        if conf >= min_confidence:
            out.append(LabelSuggestion(field=field, value=value, confidence=min(1.0, conf), source="zero-shot"))
    return out

