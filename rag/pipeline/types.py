"""Typed inputs and outputs of the pipeline stages."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rag.payload import MediaKind

#: The store payloads the stages read are defined in ``rag.payload`` (text point, media point).
MAX_QUESTION_CHARS = 4000


class Turn(BaseModel):
    """One earlier exchange of a conversation."""

    question: str
    answer: str
    case_ids: list[str] = Field(default_factory=list)


class Query(BaseModel):
    """What the user asked: text and/or media, optional filters and the conversation so far."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    text: str = ""
    images: list[Any] = Field(default_factory=list, description="paths or PIL images")
    video: Any | None = None
    filters: dict[str, str | list[str]] = Field(default_factory=dict)
    history: list[Turn] = Field(default_factory=list)
    rerank: bool | None = None
    #: The UI language (a catalog tag, see :mod:`rag.i18n`): the answer's language when the question has no text.
    lang: str | None = None

    @property
    def answer_lang(self) -> str:
        """The language the answer is written in: the question's, else the UI's (:func:`rag.i18n.answer_lang`)."""
        from rag.i18n import answer_lang

        return answer_lang(self.text, self.lang)

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        from rag.validation import InputRejected, check_text

        v = v.strip()
        if len(v) > MAX_QUESTION_CHARS:
            raise ValueError(f"question is {len(v)} characters long; the limit is {MAX_QUESTION_CHARS}")
        try:  # the shared text rules: NFC, no control or bidirectional-override characters
            return check_text(v, "question", max_chars=MAX_QUESTION_CHARS)
        except InputRejected as e:
            raise ValueError(str(e)) from None

    @property
    def has_media(self) -> bool:
        return bool(self.images) or self.video is not None

    def is_empty(self) -> bool:
        return not self.text and not self.has_media

    def embed_item(self) -> dict[str, Any]:
        item: dict[str, Any] = {}
        if self.text:
            item["text"] = self.text
        if self.images:
            item["image"] = list(self.images)
        if self.video is not None:
            item["video"] = str(self.video) if isinstance(self.video, Path) else self.video
        return item


class CaseCandidate(BaseModel):
    """A case found for a query, with everything later stages and the UI need."""

    case_id: str
    title: str = ""
    retrieval_score: float
    rerank_score: float | None = None
    document: str = ""
    case: dict[str, Any] = Field(default_factory=dict)
    #: Best-matching media point of this case (absolute path), if any.
    media_path: str | None = None
    thumbnail: str | None = None
    media_kind: MediaKind | None = None
    matched: list[str] = Field(default_factory=list, description="ids of the points that matched")

    @property
    def score(self) -> float:
        return self.rerank_score if self.rerank_score is not None else self.retrieval_score


class Retrieved(BaseModel):
    """What :meth:`Retrieve.run` found: the top-k cases in retrieval order, each with its retrieval score."""

    candidates: list[CaseCandidate]


class Reranked(BaseModel):
    """What :meth:`Rerank.run` did: every (query, case) pair it scored and the top-n it kept."""

    #: The cases the reranker scored (the adaptive depth of the candidates), best rerank score first.
    scored: list[CaseCandidate]
    #: The top-n: the scored cases, then the unscored rest in retrieval order.
    kept: list[CaseCandidate]
    depth: int


class Retrieval(BaseModel):
    """One query's retrieval, in full: what was retrieved, what the reranker scored, what was kept.

    Evaluation reads the whole lists from here (the answer only sees ``kept``).
    """

    retrieved: list[CaseCandidate]
    #: The reranker's scored cases, best first; None when reranking was off for this query.
    scored: list[CaseCandidate] | None = None
    kept: list[CaseCandidate]

    @property
    def reranked(self) -> bool:
        return self.scored is not None


class Generated(BaseModel):
    """What :meth:`Generate.run` wrote (the pipeline streams the same text through :meth:`Generate.stream`)."""

    text: str
    first_token_ms: float | None = None
    ms: float


class StageTiming(BaseModel):
    stage: str
    ms: float
    detail: dict[str, Any] = Field(default_factory=dict)


class Trace(BaseModel):
    """Per-stage timings, scores and ids of one answer."""

    stages: list[StageTiming] = Field(default_factory=list)

    def add(self, stage: str, ms: float, **detail: Any) -> None:
        self.stages.append(StageTiming(stage=stage, ms=round(ms, 3), detail=detail))

    def ms(self, stage: str) -> float:
        return sum(s.ms for s in self.stages if s.stage == stage)

    @property
    def total_ms(self) -> float:
        return sum(s.ms for s in self.stages)


class Decision(BaseModel):
    abstain: bool
    best_score: float | None
    threshold: float
    score_kind: Literal["rerank", "retrieval"]
    reason: str


class Answer(BaseModel):
    """The pipeline's result: the text, the cases it rests on and how it got there."""

    text: str
    cases: list[CaseCandidate]
    cited: list[str] = Field(default_factory=list)
    abstained: bool = False
    decision: Decision | None = None
    trace: Trace = Field(default_factory=Trace)


class Event(BaseModel):
    """A streamed pipeline event: ``sources`` first, then ``token`` chunks, then ``done`` with the answer."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    type: Literal["sources", "token", "done"]
    text: str = ""
    cases: list[CaseCandidate] = Field(default_factory=list)
    abstained: bool = False
    answer: Answer | None = None
    #: On ``sources``: the query's full retrieval (retrieved, scored, kept), for callers that evaluate it.
    retrieval: Retrieval | None = None
