"""Rerank: Qwen3-VL-Reranker scores the retrieved cases against the query; the best top-n are kept."""

from __future__ import annotations

import logging
from typing import Any, Sequence

from rag.models.protocols import RerankingModel
from rag.payload import PICTURE_KINDS
from rag.pipeline.timing import Timer
from rag.pipeline.types import CaseCandidate, Query, Reranked, Trace

logger = logging.getLogger(__name__)

RERANK_INSTRUCTION = (
    "Given a photo, video or description of faulty equipment, judge whether the support case describes the same "
    "fault on the same kind of equipment"
)


class Rerank:
    """Qwen3-VL-Reranker over the top-k: the query's media + text against each case's text and best media.

    ``batch_size`` None uses the reranker model's own default (4 on CPU, 16 on CUDA; ``RAGVQA_RERANK_BATCH_SIZE``).
    """

    def __init__(self, reranker: RerankingModel, *, top_n: int = 5, instruction: str = RERANK_INSTRUCTION,
                 batch_size: int | None = None, adaptive_margin: float | None = None) -> None:
        self.reranker, self.top_n, self.instruction, self.batch_size = reranker, top_n, instruction, batch_size
        #: Adaptive depth (issue 16): rerank only the candidates within this retrieval-score margin of the best one
        #: (at least top_n); None reranks all. The rest keep their retrieval order after the reranked ones.
        self.adaptive_margin, self.min_depth = adaptive_margin, top_n

    @staticmethod
    def adaptive_depth(retrieval_scores: Sequence[float], margin: float | None, min_depth: int) -> int:
        """How many of the retrieval-ordered candidates to rerank: those scoring ≥ best − margin, at least min_depth."""
        if margin is None or not retrieval_scores:
            return len(retrieval_scores)
        best = max(retrieval_scores)
        return min(len(retrieval_scores), max(min_depth, sum(1 for s in retrieval_scores if s >= best - margin)))

    @staticmethod
    def document(c: CaseCandidate) -> dict[str, Any]:
        doc: dict[str, Any] = {"text": c.document or c.title}
        if c.media_path and (c.media_kind is None or c.media_kind in PICTURE_KINDS):
            doc["image"] = c.media_path
        elif c.media_path and c.media_kind == "video":
            doc["video"] = c.media_path
        return doc

    def run(self, query: Query, candidates: Sequence[CaseCandidate], trace: Trace | None = None, *,
            top_n: int | None = None) -> Reranked:
        """Score the head of ``candidates`` (the adaptive depth, at least the stage's ``top_n``) and keep ``top_n``
        (default: the stage's): the scored cases best first, then the unscored rest in retrieval order."""
        trace = trace if trace is not None else Trace()
        top_n = self.top_n if top_n is None else top_n
        if not candidates:
            trace.add("rerank", 0.0, scores={})
            return Reranked(scored=[], kept=[], depth=0)
        depth = self.adaptive_depth([c.retrieval_score for c in candidates], self.adaptive_margin, self.min_depth)
        todo, rest = list(candidates)[:depth], list(candidates)[depth:]
        with Timer() as t:
            scores = self.reranker.score(query.embed_item(), [self.document(c) for c in todo],
                                         instruction=self.instruction, batch_size=self.batch_size)
        ranked = sorted((c.model_copy(update={"rerank_score": s}) for c, s in zip(todo, scores, strict=False)),
                        key=lambda c: -(c.rerank_score or 0.0))
        trace.add("rerank", t.ms, scores={c.case_id: round(c.rerank_score or 0.0, 4) for c in ranked},
                  depth=depth, candidates=len(candidates))
        return Reranked(scored=ranked, kept=(ranked + rest)[:top_n], depth=depth)
