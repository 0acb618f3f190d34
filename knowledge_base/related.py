"""Related cases: for one case, the other cases whose text or media are closest to its text or media.

Association is cross-modal on purpose: a photo of one case may match another case's manual page or description,
because all points of the knowledge base live in one Qwen3-VL embedding space. Nothing is embedded here: the case's
*stored* vectors (its text point and one point per media item) are the queries, searched together in one batched
store query, so the cost does not depend on the size of the knowledge base beyond the engine's own search.

Score of another case = the best cosine similarity over all (point of this case, point of that case) pairs (the
"best score" rule of Qdrant's recommend API, with positives only). Reasons = the best pairs, e.g.
"photo 1 ↔ manual page 2". The per-point candidate lists are widened until the ranking is certified: a case not seen
in any list cannot score above the worst score of a full list (the threshold rule), so the result equals a brute-force
ranking over the engine's (exact or HNSW) search results.

A reason's points are typed parts (kind, number among the case's media of that kind, PDF page), so the UI can name
them in the user's language; ``PointRef.label`` and ``MatchReason.text`` are the English names (CLI and JSON).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, Field, ValidationError, computed_field

from knowledge_base.cases import CaseNotFoundError
from knowledge_base.ingest import ItemReport
from knowledge_base.schema import Case, CaseLink
from knowledge_base.semantic_search import CaseHit
from rag.errors import UserInputError
from rag.payload import POINT_KINDS, PointKind
from rag.store import Hit, StoredPoint, VectorStore, point_id

if TYPE_CHECKING:  # pragma: no cover
    from knowledge_base.kb import KnowledgeBase

__all__ = [
    "MatchReason",
    "PointRef",
    "RelatedCase",
    "RelatedInputError",
    "case_points",
    "confirm_related",
    "point_labels",
    "related_cases",
]

log = logging.getLogger(__name__)

#: Candidates fetched per query point and per requested case before widening (a case has a few points).
OVERFETCH = 4
#: Upper bound on candidates per query point (keeps a pathological store bounded).
MAX_FETCH = 4096
#: Reasons kept per related case.
MAX_REASONS = 3
#: Payload fields a candidate hit needs (no case record: hits stay small).
HIT_KEYS = ["case_id", "kind", "media_id", "page", "title", "embedder"]

_KIND_WORD: dict[str, str] = {"image": "photo", "video": "video", "pdf_page": "manual page", "text": "case text"}


class RelatedInputError(UserInputError, ValueError):
    """Related cases cannot be computed for this input (bad limit, same case twice, vectors of another embedder)."""


class PointRef(BaseModel):
    """One point of a case: its kind, media id (None for the case text), its number among the case's photos or videos
    ("photo 2"; None when the case record does not say), its PDF page, and its thumbnail."""

    kind: PointKind
    media_id: str | None = None
    number: int | None = None
    page: int | None = None
    thumbnail: str | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def label(self) -> str:
        """The English name: ``"photo 1"``, ``"manual page 2"``, ``"case text"``."""
        if self.kind == "pdf_page":
            return f"manual page {self.page}" if self.page is not None else "manual page"
        word = _KIND_WORD[self.kind]
        return f"{word} {self.number}" if self.number is not None and self.kind != "text" else word


class MatchReason(BaseModel):
    """A pair of points that matched: a point of the asked case and a point of the related case."""

    this: PointRef
    other: PointRef
    score: float

    @computed_field  # type: ignore[prop-decorator]
    @property
    def text(self) -> str:
        """``"photo 1 ↔ manual page 2"``."""
        return f"{self.this.label} ↔ {self.other.label}"


class RelatedCase(CaseHit):
    """Another case related to the asked one: its best pair score and the pairs that matched (best first)."""

    reasons: list[MatchReason] = Field(default_factory=list)


def _store(kb: KnowledgeBase | VectorStore) -> VectorStore:
    return kb if isinstance(kb, VectorStore) else kb.store


def point_labels(case: Case | None) -> dict[str | None, PointRef]:
    """Labels of a case's points by media id (``None`` = the case text): photos and videos numbered in the case's
    order ("photo 1"), PDF pages by their page number ("manual page 2")."""
    out: dict[str | None, PointRef] = {None: PointRef(kind="text")}
    counts: dict[str, int] = {}
    for m in case.media if case is not None else []:
        number = None
        if m.kind != "pdf_page":
            number = counts[m.kind] = counts.get(m.kind, 0) + 1
        out[m.id] = PointRef(kind=m.kind, media_id=m.id, number=number, page=m.page if m.kind == "pdf_page" else None,
                             thumbnail=m.thumbnail)
    return out


def _ref(payload: Mapping[str, object], labels: Mapping[str | None, PointRef]) -> PointRef:
    mid = payload.get("media_id")
    key = mid if isinstance(mid, str) else None
    if key in labels:
        return labels[key]
    raw_kind, page = payload.get("kind"), payload.get("page")
    kind: PointKind = next((k for k in POINT_KINDS if k == raw_kind), "text")
    return PointRef(kind=kind, media_id=key, page=page if kind == "pdf_page" and isinstance(page, int) else None)


def _parse_case(points: Sequence[StoredPoint]) -> Case | None:
    for p in points:
        if p.payload.get("kind") == "text" and isinstance(p.payload.get("case"), dict):
            try:
                return Case.model_validate(p.payload["case"])
            except ValidationError:
                return None
    return None


def case_points(store: VectorStore, case_id: str) -> tuple[list[StoredPoint], Case | None]:
    """A case's stored points with their vectors (one filtered scroll over the keyword index) and its record.

    Raises :class:`~knowledge_base.cases.CaseNotFoundError` if the store has no point of that case and
    :class:`RelatedInputError` if its vectors were made by another embedder than the store's (not comparable).
    """
    if not isinstance(case_id, str) or not case_id:
        raise CaseNotFoundError(case_id)
    pts = [p for p in store.scroll(filters={"case_id": case_id}, with_vectors=True,
                                   payload_keys=["case_id", "kind", "media_id", "page", "embedder", "case"])
           if p.vector is not None]
    if not pts:
        raise CaseNotFoundError(case_id)
    want = store.meta.embedder_id
    other = sorted({str(p.payload.get("embedder")) for p in pts if p.payload.get("embedder") not in (None, want)})
    if other:
        raise RelatedInputError(
            f"case {case_id!r} was embedded with {', '.join(other)} but the store holds {want!r} vectors: they are not "
            "comparable; run `ragvqa kb reindex`", code="store_mismatch")
    return pts, _parse_case(pts)


def _check_limit(limit: int) -> None:
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise RelatedInputError(f"limit must be a positive integer, got {limit!r}")


def _pairs_by_case(results: Sequence[Sequence[Hit]], skip: str, embedder: str) -> dict[str, list[tuple[float, int, Hit]]]:
    """(score, query index, hit) per other case, best first."""
    out: dict[str, list[tuple[float, int, Hit]]] = {}
    for qi, hits in enumerate(results):
        for h in hits:
            cid = h.payload.get("case_id")
            if not isinstance(cid, str) or cid == skip:
                continue
            if h.payload.get("embedder") not in (None, embedder):  # left over from an unfinished re-embedding
                continue
            out.setdefault(cid, []).append((h.score, qi, h))
    for pairs in out.values():
        pairs.sort(key=lambda t: -t[0])
    return out


def nearest_cases(store: VectorStore, vectors: Sequence[np.ndarray], limit: int, *, skip: str | None = None,
                  exact: bool = False, extra: int = 0) -> dict[str, list[tuple[float, int, Hit]]]:
    """The ``limit`` cases whose best (query vector, point) pair scores highest, with all pairs found, best first.

    One batched store query per round; rounds widen until the threshold rule certifies the ranking (see the module
    docstring). ``extra``: hits per list that may belong to ``skip`` (the asked case's own points).
    """
    fetch = min(MAX_FETCH, limit * OVERFETCH + extra)
    while True:
        results = store.search_batch(vectors, fetch, exact=exact, payload_keys=HIT_KEYS)
        groups = _pairs_by_case(results, skip or "", store.meta.embedder_id)
        full = [hits[-1].score for hits in results if len(hits) >= fetch]
        ranked = sorted(groups.items(), key=lambda kv: -kv[1][0][0])
        threshold = max(full) if full else None
        certified = threshold is None or (len(ranked) >= limit and ranked[limit - 1][1][0][0] >= threshold)
        if certified or fetch >= MAX_FETCH:
            if not certified:
                log.warning("related: stopped widening at %d candidates per point", fetch)
            return dict(ranked[:limit])
        fetch = min(MAX_FETCH, fetch * 2)


def related_cases(kb: KnowledgeBase | VectorStore, case_id: str, *, limit: int = 5,
                  exact: bool = False) -> list[RelatedCase]:
    """The ``limit`` cases most related to ``case_id`` (itself excluded), best first; pure read.

    Raises :class:`~knowledge_base.cases.CaseNotFoundError` for an unknown id and :class:`RelatedInputError` for a
    bad limit or a case whose vectors come from another embedder.
    """
    _check_limit(limit)
    store = _store(kb)
    own, case = case_points(store, case_id)
    labels = point_labels(case)
    own_refs = [_ref(p.payload, labels) for p in own]
    found = nearest_cases(store, [p.vector for p in own if p.vector is not None], limit, skip=case_id,
                          exact=exact, extra=len(own))
    # The related cases' records: titles and the numbering of their media ("photo 2"); one retrieve of `limit` points.
    records = {p.payload.get("case_id"): _parse_case([p]) for p in store.retrieve([point_id(c) for c in found])}
    out = []
    for cid, pairs in found.items():
        other = records.get(cid)
        other_labels = point_labels(other)
        reasons: list[MatchReason] = []
        seen: set[tuple[int, str]] = set()
        for score, qi, h in pairs:
            if (qi, h.id) in seen:
                continue
            seen.add((qi, h.id))
            reasons.append(MatchReason(this=own_refs[qi], other=_ref(h.payload, other_labels), score=score))
            if len(reasons) >= MAX_REASONS:
                break
        title = other.title if other is not None else str(pairs[0][2].payload.get("title") or cid)
        out.append(RelatedCase(case_id=cid, title=title, product_line=other.product_line if other else "",
                               score=pairs[0][0], reasons=reasons))
    return out


def confirm_related(kb: KnowledgeBase, case_id: str, other_id: str, *, note: str = "") -> ItemReport:
    """Add a ``related`` link from ``case_id`` to ``other_id`` through the normal update path (an admin action).

    Already linked as related → a ``skipped`` report, nothing written. Unknown ids raise ``CaseNotFoundError``.
    """
    if case_id == other_id:
        raise RelatedInputError(f"case {case_id!r} cannot be linked to itself")
    case = kb.get(case_id)
    if case is None:
        raise CaseNotFoundError(case_id)
    if kb.get(other_id) is None:
        raise CaseNotFoundError(other_id)
    if any(link.case_id == other_id and link.relation == "related" for link in case.links):
        return ItemReport(where=f"link {case_id}", status="skipped", case_id=case_id,
                          reason=f"already linked to {other_id}")
    links = [*case.links, CaseLink(case_id=other_id, relation="related", note=note)]
    with kb.audited("link-confirm", case_id, {"other": other_id, "note": note}) as ch:  # audited as what it is
        report = kb.cases.update(case_id, {"links": [link.model_dump() for link in links]})
        ch.changed = report.status in ("added", "updated")
        return report
