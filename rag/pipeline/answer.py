"""The finished answer: which of the context cases the text cites ([case-id])."""

from __future__ import annotations

import logging
import re
from typing import Sequence

from rag.pipeline.types import Answer, CaseCandidate, Decision, Trace

logger = logging.getLogger(__name__)

CITATION_RE = re.compile(r"\[([A-Za-z0-9][A-Za-z0-9._-]{0,63})\]")


def citations(text: str, cases: Sequence[CaseCandidate]) -> list[str]:
    """Case ids cited in ``text`` that belong to the context (anything else is not a citation)."""
    known = {c.case_id for c in cases}
    seen: list[str] = []
    for cid in CITATION_RE.findall(text):
        if cid in known and cid not in seen:
            seen.append(cid)
    return seen


def finish(text: str, cases: Sequence[CaseCandidate], decision: Decision, trace: Trace) -> Answer:
    return Answer(text=text, cases=list(cases), cited=citations(text, cases), abstained=decision.abstain,
                  decision=decision, trace=trace)
