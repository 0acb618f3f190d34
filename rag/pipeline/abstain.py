"""Abstain: refuse to diagnose when even the best case is a poor match, and say so."""

from __future__ import annotations

import logging
from typing import Literal, Sequence

from rag.pipeline.types import CaseCandidate, Decision, Trace

logger = logging.getLogger(__name__)

class Abstain:
    """Refuse to diagnose when even the best case is a poor match: show "possibly related" cases instead."""

    def __init__(self, rerank_threshold: float = 0.5, retrieval_threshold: float = 0.35) -> None:
        self.rerank_threshold, self.retrieval_threshold = rerank_threshold, retrieval_threshold

    def run(self, candidates: Sequence[CaseCandidate], reranked: bool, trace: Trace | None = None, *,
            threshold: float | None = None) -> Decision:
        """Abstain when the best score of ``candidates`` (rerank scores if ``reranked``) is below ``threshold``
        (default: the stage's threshold for that kind of score)."""
        trace = trace if trace is not None else Trace()
        kind: Literal["rerank", "retrieval"] = "rerank" if reranked else "retrieval"
        if threshold is None:
            threshold = self.rerank_threshold if reranked else self.retrieval_threshold
        best = max((c.score for c in candidates), default=None)
        if best is None:
            d = Decision(abstain=True, best_score=None, threshold=threshold, score_kind=kind, reason="no case in the knowledge base matches the filters")
        elif best < threshold:
            d = Decision(abstain=True, best_score=best, threshold=threshold, score_kind=kind,
                         reason=f"best {kind} score {best:.3f} is below the threshold {threshold:.3f}")
        else:
            d = Decision(abstain=False, best_score=best, threshold=threshold, score_kind=kind, reason="a similar case was found")
        trace.add("abstain", 0.0, abstain=d.abstain, best=best, threshold=threshold)
        return d


def abstention_text(candidates: Sequence[CaseCandidate], decision: Decision) -> str:
    lines = ["No similar case was found in the knowledge base, so I can't give a reliable diagnosis."]
    if candidates:
        lines.append("Possibly related cases (low confidence):")
        lines += [f"- [{c.case_id}] {c.title} (score {c.score:.2f})" for c in candidates[:3]]
    lines.append("Please add more detail (error code, LED pattern, model) or escalate to second-line support.")
    return "\n".join(lines)
