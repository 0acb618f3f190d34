"""Cross-modal search for admins: a text and/or an image query against the cases and their individual media.

"Search images by text, text by image": the query is embedded once with the retrieval instruction (the same query
side as the chat), and searched over every point of the knowledge base (case texts, photos, PDF pages, video clips).
Results come in two views from the same vector: the best individual points (a media browser, with thumbnails) and
the best cases (hits grouped by case, best point first). The substring filter of the admin list is separate and
stays; this is the semantic one. Pure read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, Field

from rag.errors import UserInputError
from rag.payload import POINT_KINDS, CaseTextFields, PointKind
from rag.store import Hit, VectorStore

if TYPE_CHECKING:  # pragma: no cover
    from knowledge_base.kb import KnowledgeBase

__all__ = ["CaseHit", "CaseResult", "PointResult", "SearchInputError", "SearchResults", "embed_query", "semantic_search"]

#: Payload fields a result needs (``case.media`` only for the first picture of a case whose text matched).
RESULT_KEYS = ["case_id", "kind", "media_id", "media_path", "thumbnail", "page", "caption", "title", "product_line",
               "equipment_model", "case.media"]
MAX_LIMIT = 200


class SearchInputError(UserInputError, ValueError):
    """The search cannot run on this input (no query, bad limit or kind, missing image, another embedder's store)."""


class PointResult(BaseModel):
    """One matching point: a case text or one media item, with where its file and thumbnail are (media-root
    relative; for a case text, the case's first picture if it has one)."""

    case_id: str
    title: str
    product_line: str = ""
    equipment_model: str = ""
    kind: PointKind
    media_id: str | None = None
    page: int | None = None
    caption: str = ""
    media_path: str | None = None
    thumbnail: str | None = None
    score: float


class CaseHit(BaseModel):
    """A case found by similarity: which case, its title and product line, and its best score (higher is closer).

    Shared by search results and related cases, so both list cases with the same fields in the same order."""

    case_id: str
    title: str
    product_line: str = ""
    score: float


class CaseResult(CaseHit):
    """One matching case: its best point's score and its matching points, best first."""

    points: list[PointResult] = Field(default_factory=list)


class SearchResults(BaseModel):
    """Both views of one query: cases and individual points."""

    cases: list[CaseResult] = Field(default_factory=list)
    points: list[PointResult] = Field(default_factory=list)


def _point(h: Hit) -> PointResult:
    p = h.payload
    raw_kind = p.get("kind")
    kind: PointKind = next((k for k in POINT_KINDS if k == raw_kind), "text")
    media_path, thumb = p.get("media_path"), p.get("thumbnail")
    if kind == "text":  # show the case's first picture next to a matched case text (as the chat's retrieval does)
        first = CaseTextFields.model_validate(p).first_picture()
        if first is not None:
            media_path, thumb = first.media_path, first.thumbnail
    page = p.get("page")
    return PointResult(case_id=str(p.get("case_id")), title=str(p.get("title") or p.get("case_id")),
                       product_line=str(p.get("product_line") or ""),
                       equipment_model=str(p.get("equipment_model") or ""), kind=kind,
                       media_id=p.get("media_id") if isinstance(p.get("media_id"), str) else None,
                       page=page if isinstance(page, int) else None, caption=str(p.get("caption") or ""),
                       media_path=media_path if isinstance(media_path, str) else None,
                       thumbnail=thumb if isinstance(thumb, str) else None, score=h.score)


def embed_query(kb: KnowledgeBase, *, text: str | None = None, image: str | Path | None = None) -> np.ndarray:
    """One query vector for text and/or an image (both in one multimodal input), with the retrieval instruction."""
    from rag.pipeline.retrieve import RETRIEVAL_INSTRUCTION

    text = (text or "").strip() or None
    if text is None and image is None:
        raise SearchInputError("give a text, an image, or both to search")
    if kb.embedder is None:
        raise SearchInputError("semantic search needs the embedding model (the knowledge base was opened without it)")
    if why := kb.state.store_mismatch():
        raise SearchInputError(why, code="store_mismatch")
    item: dict[str, str] = {}
    if text is not None:
        item["text"] = text
    if image is not None:
        p = Path(image)
        if not p.is_file():
            raise SearchInputError(f"image not found: {p}")
        item["image"] = str(p)
    return np.asarray(kb.embedder.embed([item], instruction=RETRIEVAL_INSTRUCTION, dim=kb.store.dim)[0],
                      dtype=np.float32)


def semantic_search(kb: KnowledgeBase | VectorStore, *, text: str | None = None, image: str | Path | None = None,
                    vector: np.ndarray | Sequence[float] | None = None, limit: int = 10,
                    kinds: Sequence[PointKind] | None = None,
                    filters: Mapping[str, str | Sequence[str] | None] | None = None,
                    exact: bool = False) -> SearchResults:
    """The ``limit`` best cases and the ``limit`` best points (only ``kinds`` if given) for a text and/or image
    query (or an already embedded ``vector``), within ``filters`` (product_line, equipment_model, tags)."""
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
        raise SearchInputError(f"limit must be an integer from 1 to {MAX_LIMIT}, got {limit!r}")
    bad = set(kinds or ()) - set(POINT_KINDS)
    if bad:
        raise SearchInputError(f"unknown kind(s) {sorted(bad)}; kinds: {', '.join(POINT_KINDS)}")
    flt = dict(filters or {})
    if set(flt) - {"product_line", "equipment_model", "tags"}:
        raise SearchInputError(f"unknown filter(s) {sorted(set(flt) - {'product_line', 'equipment_model', 'tags'})}")
    store = kb if isinstance(kb, VectorStore) else kb.store
    if vector is None:
        if isinstance(kb, VectorStore):
            raise SearchInputError("searching by text or image needs a knowledge base with an embedder")
        vector = embed_query(kb, text=text, image=image)
    elif text or image is not None:
        raise SearchInputError("give either a vector or a text/image query, not both")
    v = np.asarray(vector, dtype=np.float32)
    if v.shape != (store.dim,):
        raise SearchInputError(f"query vector must have {store.dim} values, got shape {v.shape}")
    point_flt = {**flt, "kind": list(kinds)} if kinds else flt
    points = [_point(h) for h in store.search(v, limit=limit, filters=point_flt, exact=exact, payload_keys=RESULT_KEYS)]
    cases = []
    for g in store.search_cases(v, limit_cases=limit, filters=flt, exact=exact, payload_keys=RESULT_KEYS):
        pts = [_point(h) for h in g.hits]
        cases.append(CaseResult(case_id=g.case_id, title=pts[0].title, product_line=pts[0].product_line,
                                score=g.score, points=pts))
    return SearchResults(cases=cases, points=points)
