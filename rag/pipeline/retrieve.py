"""Retrieve: embed the query with a retrieval instruction, search the store with filters, group hits per case.

The first stage of retrieve → rerank → abstain → generate; media paths are resolved by
:class:`rag.pipeline.media.MediaResolver`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from pydantic import ValidationError

from rag.models.protocols import EmbeddingModel
from rag.payload import CaseTextFields, MediaFields
from rag.pipeline.media import MediaResolver
from rag.pipeline.timing import Timer
from rag.pipeline.types import CaseCandidate, Query, Retrieved, Trace
from rag.store.base import Filters, VectorStore, point_id

logger = logging.getLogger(__name__)

#: Query-side instruction (documents are embedded with the model's default instruction, as in the official usage).
RETRIEVAL_INSTRUCTION = (
    "Given a photo, video or description of faulty equipment, retrieve past support cases that diagnose the same fault"
)


#: Payload fields the search needs from each hit (the case itself comes from its text point).
SEARCH_PAYLOAD = MediaFields.keys()


class Retrieve:
    """Embed the query (with a fault-case retrieval instruction), search with filters, group per case, top-k."""

    def __init__(self, embedder: EmbeddingModel, store: VectorStore, *, media_root: Path | None, top_k: int = 20,
                 instruction: str = RETRIEVAL_INSTRUCTION, dim: int | None = None) -> None:
        self.embedder, self.store, self.media = embedder, store, MediaResolver(media_root)
        self.top_k, self.instruction, self.dim = top_k, instruction, dim

    @property
    def media_root(self) -> Path | None:
        return self.media.root

    def embed(self, query: Query) -> Any:
        return self.embedder.embed([query.embed_item()], instruction=self.instruction, dim=self.dim)[0]

    def search(self, vector: Any, filters: Filters | None, trace: Trace, *, top_k: int | None = None) -> list[CaseCandidate]:
        with Timer() as t:
            groups = self.store.search_cases(vector, limit_cases=self.top_k if top_k is None else top_k, filters=filters or None,
                                              payload_keys=SEARCH_PAYLOAD)
        trace.add("search", t.ms, cases=len(groups))
        with Timer() as t:
            out = self.candidates([(g.case_id, g.score, [h.payload for h in g.hits], [h.id for h in g.hits]) for g in groups])
        trace.add("fetch", t.ms, ids=[c.case_id for c in out])
        return out

    def fetch(self, case_ids: Sequence[str]) -> list[CaseCandidate]:
        """Cases by id (e.g. those of earlier turns), with no retrieval score of their own."""
        return self.candidates([(cid, 0.0, [], []) for cid in case_ids])

    def candidates(self, groups: Sequence[tuple[str, float, list[dict[str, Any]], list[str]]]) -> list[CaseCandidate]:
        texts = {p.payload.get("case_id"): p.payload for p in self.store.retrieve([point_id(g[0], None) for g in groups])}
        out = []
        for case_id, score, payloads, ids in groups:
            try:
                doc = CaseTextFields.model_validate(texts[case_id])
                hit = next((MediaFields.model_validate(p) for p in payloads if p.get("media_id")), None)
            except KeyError:
                logger.warning("case %s has no text point; skipped", case_id)
                continue
            except ValidationError as e:
                logger.warning("case %s has an unreadable payload; skipped (%s)", case_id, e.errors()[0]["msg"])
                continue
            # the text matched best: show the case's first picture, if it has one
            media = hit or doc.first_picture() or MediaFields()
            out.append(CaseCandidate(
                case_id=case_id,
                title=doc.case_title(),
                retrieval_score=score,
                document=doc.document,
                case=doc.case,
                media_path=self.media.resolve(media.media_path),
                thumbnail=self.media.resolve(media.thumbnail),
                media_kind=media.kind if media.kind != "text" else None,
                matched=ids,
            ))
        return out

    def run(self, query: Query, trace: Trace | None = None, *, top_k: int | None = None) -> Retrieved:
        """The ``top_k`` (default: the stage's) best cases for ``query``, in retrieval order."""
        trace = trace if trace is not None else Trace()
        with Timer() as t:
            vector = self.embed(query)
        trace.add("embed", t.ms)
        return Retrieved(candidates=self.search(vector, query.filters, trace, top_k=top_k))
