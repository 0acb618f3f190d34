"""The RAG pipeline composed from its stages, as a plain Python API (``answer``/``stream``/``retrieve``)."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Iterator

from rag.config import Settings
from rag.errors import UserInputError
from rag.models.protocols import EmbeddingModel, GenerationModel, RerankingModel
from rag.pipeline.stages import Abstain, Generate, Rerank, Retrieve, abstention_text, finish
from rag.pipeline.types import Answer, CaseCandidate, Event, Query, Trace
from rag.store.base import VectorStore

logger = logging.getLogger(__name__)


class QueryError(UserInputError, ValueError):
    """A query the pipeline cannot run; the message says why."""

    code = "bad_query"


class RagPipeline:
    """retrieve → rerank → abstain? → generate, traced per stage.

    Every stage is an object you can swap or call alone; ``stream`` yields the sources before the first token so
    a UI can show them while the answer is being written.
    """

    def __init__(self, retrieve: Retrieve, rerank: Rerank | None, abstain: Abstain, generate: Generate,
                 *, rerank_enabled: bool = True, carry_cases: int = 3) -> None:
        self.retrieve_stage, self.rerank_stage, self.abstain_stage, self.generate_stage = retrieve, rerank, abstain, generate
        self.rerank_enabled = rerank_enabled and rerank is not None
        self.carry_cases = carry_cases

    @classmethod
    def from_components(cls, *, embedder: EmbeddingModel, reranker: RerankingModel | None, generator: GenerationModel,
                        store: VectorStore,
                        settings: Settings | None = None, media_root: Path | None = None) -> "RagPipeline":
        s = settings or Settings()
        media_root = media_root or (Path(s.data_dir) / "media")
        return cls(
            Retrieve(embedder, store, media_root=media_root, top_k=s.retrieve_top_k, dim=store.dim),
            Rerank(reranker, top_n=s.rerank_top_n, batch_size=s.rerank_batch_size,
                   adaptive_margin=s.rerank_adaptive_margin) if reranker is not None else None,
            Abstain(s.abstain_rerank_threshold, s.abstain_retrieval_threshold),
            Generate(generator, max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                     history_token_budget=s.history_token_budget, case_images=s.context_case_images),
            rerank_enabled=s.rerank_enabled,
        )

    # -- stages before generation -------------------------------------------------------------------------------
    def retrieve(self, query: Query, trace: Trace | None = None) -> tuple[list[CaseCandidate], bool]:
        """Top cases for ``query`` (reranked unless switched off); returns (cases, reranked)."""
        if query.is_empty():
            raise QueryError("empty query: attach an image, video or PDF page, or type a question")
        trace = trace if trace is not None else Trace()
        cands = self.retrieve_stage.run(query, trace)
        use_rerank = self.rerank_enabled if query.rerank is None else (query.rerank and self.rerank_stage is not None)
        if use_rerank and self.rerank_stage is not None:
            return self.rerank_stage.run(query, cands, trace), True
        n = self.rerank_stage.top_n if self.rerank_stage is not None else 5
        return cands[:n], False

    def _with_history_cases(self, query: Query, cases: list[CaseCandidate]) -> list[CaseCandidate]:
        """A follow-up keeps the cases of the previous turn in context."""
        if not query.history:
            return cases
        have = {c.case_id for c in cases}
        prev = [cid for cid in query.history[-1].case_ids if cid not in have][: self.carry_cases]
        return cases + self.retrieve_stage.fetch(prev) if prev else cases

    # -- public API ---------------------------------------------------------------------------------------------
    def stream(self, query: Query, cancel: threading.Event | None = None) -> Iterator[Event]:
        trace = Trace()
        t0 = time.perf_counter()
        cases, reranked = self.retrieve(query, trace)
        decision = self.abstain_stage.run(cases, reranked, trace)
        if decision.abstain:
            text = abstention_text(cases, decision)
            yield Event(type="sources", cases=cases, abstained=True)
            yield Event(type="token", text=text)
            answer = finish(text, cases, decision, trace)
            answer.cited = []
            yield Event(type="done", answer=answer, cases=cases, abstained=True, text=text)
            return
        context = self._with_history_cases(query, cases)
        yield Event(type="sources", cases=context)
        t_gen = time.perf_counter()
        first_ms: float | None = None
        chunks: list[str] = []
        for chunk in self.generate_stage.stream(query, context, cancel=cancel):
            if first_ms is None:
                first_ms = (time.perf_counter() - t_gen) * 1000
            chunks.append(chunk)
            yield Event(type="token", text=chunk)
        text = "".join(chunks)
        trace.add("generate", (time.perf_counter() - t_gen) * 1000, first_token_ms=first_ms, chars=len(text))
        trace.add("total", 0.0, wall_ms=round((time.perf_counter() - t0) * 1000, 3))
        answer = finish(text, context, decision, trace)
        yield Event(type="done", answer=answer, cases=context, text=text)

    def answer(self, query: Query) -> Answer:
        result: Answer | None = None
        for event in self.stream(query):
            if event.type == "done":
                result = event.answer
        assert result is not None
        return result
