"""The RAG pipeline composed from its stages, as a plain Python API.

``retrieval`` (one :class:`Retrieval`: retrieved, scored, kept), ``stream`` (events), ``run``/``answer`` (the
:class:`Answer`); each takes the per-call overrides ``top_k``, ``top_n`` and ``rerank``. ``retrieve`` is the short
form that returns (kept cases, reranked).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Iterator

from rag.config import Settings
from rag.errors import UserInputError
from rag.models.budgets import QueryBudget, RunsOn, choose_query_budget, query_time_budget, runs_on_device
from rag.models.protocols import EmbeddingModel, GenerationModel, RerankingModel
from rag.pipeline.abstain import Abstain, abstention_text
from rag.pipeline.answer import finish
from rag.pipeline.fit import FitQuery
from rag.pipeline.generate import Generate
from rag.pipeline.rerank import Rerank
from rag.pipeline.retrieve import RETRIEVAL_INSTRUCTION, Retrieve
from rag.pipeline.types import Answer, CaseCandidate, Event, Query, Retrieval, Trace
from rag.store.base import VectorStore

logger = logging.getLogger(__name__)


class QueryError(UserInputError, ValueError):
    """A query the pipeline cannot run; the message says why."""

    code = "bad_query"


def runs_on(model: EmbeddingModel | RerankingModel | GenerationModel) -> RunsOn:
    """Where ``model`` computes: its torch device when it is a local wrapper, else a model server."""
    from rag.models.encoding import TokenizedModel
    from rag.models.generator import Generator

    if isinstance(model, TokenizedModel | Generator):
        return runs_on_device(model.device.type)
    return "remote"


def fit_choice(choice: QueryBudget, reranker: RerankingModel | None, generator: GenerationModel) -> QueryBudget:
    """The cap the pipeline resizes query photos to: the embedder's ``choice``, but only when no model server reads
    the query (a server applies its own, official budget to the photo as sent; the local roles cap themselves)."""
    if any(m is not None and runs_on(m) == "remote" for m in (reranker, generator)):
        return QueryBudget(max_pixels=None, reason="a model server reads the query: photos sent as uploaded")
    return choice


def query_view(embedder: EmbeddingModel, choice: QueryBudget) -> EmbeddingModel:
    """The embedder as the query sees it: a local one under the query-time cap (its query photo and video), sharing
    the weights; the knowledge base keeps being embedded at the embedder's own budget."""
    from rag.models.embedder import Embedder

    if isinstance(embedder, Embedder) and choice.max_pixels is not None:
        return embedder.with_budget(query_time_budget(embedder.budget, choice))
    return embedder


class RagPipeline:
    """retrieve → rerank → abstain? → generate, traced per stage.

    Every stage is an object you can swap or call alone; ``stream`` yields the sources before the first token so
    a UI can show them while the answer is being written.
    """

    def __init__(self, retrieve: Retrieve, rerank: Rerank | None, abstain: Abstain, generate: Generate,
                 *, rerank_enabled: bool = True, carry_cases: int = 3, fit: FitQuery | None = None) -> None:
        self.retrieve_stage, self.rerank_stage, self.abstain_stage, self.generate_stage = retrieve, rerank, abstain, generate
        self.rerank_enabled = rerank_enabled and rerank is not None
        self.carry_cases = carry_cases
        #: Query images resized to the query-time budget first (None: the models' own budgets).
        self.fit_stage = fit

    @classmethod
    def from_components(cls, *, embedder: EmbeddingModel, reranker: RerankingModel | None, generator: GenerationModel,
                        store: VectorStore,
                        settings: Settings | None = None, media_root: Path | None = None,
                        retrieve_instruction: str | None = None) -> "RagPipeline":
        """The pipeline on ``settings``; ``retrieve_instruction`` replaces the query instruction (benchmark corpora)."""
        s = settings or Settings()
        media_root = media_root or (Path(s.data_dir) / "media")
        instruction = retrieve_instruction or RETRIEVAL_INSTRUCTION
        embed_choice = choose_query_budget(s.query_max_pixels, runs_on(embedder))
        fit = FitQuery(fit_choice(embed_choice, reranker, generator), s.vision)
        return cls(
            Retrieve(query_view(embedder, embed_choice), store, media_root=media_root, top_k=s.retrieve_top_k,
                     dim=store.dim, instruction=instruction),
            Rerank(reranker, top_n=s.rerank_top_n, batch_size=s.rerank_batch_size,
                   adaptive_margin=s.rerank_adaptive_margin) if reranker is not None else None,
            Abstain(s.abstain_rerank_threshold, s.abstain_retrieval_threshold),
            Generate(generator, max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                     history_token_budget=s.history_token_budget, case_images=s.context_case_images),
            rerank_enabled=s.rerank_enabled,
            fit=fit if fit.choice.max_pixels is not None else None,
        )

    def fit(self, query: Query, trace: Trace | None = None) -> Query:
        """``query`` with its images at the query-time budget (itself when there is none)."""
        return query if self.fit_stage is None else self.fit_stage.run(query, trace).query

    # -- stages before generation -------------------------------------------------------------------------------
    def retrieval(self, query: Query, trace: Trace | None = None, *, top_k: int | None = None,
                  top_n: int | None = None, rerank: bool | None = None) -> Retrieval:
        """Retrieve ``top_k`` cases, rerank them (``rerank``, else ``query.rerank``, else as configured) and keep
        ``top_n``; the overrides default to the stages' settings."""
        trace = trace if trace is not None else Trace()
        return self._retrieval(self._prepared(query, trace), trace, top_k=top_k, top_n=top_n, rerank=rerank)

    def _prepared(self, query: Query, trace: Trace) -> Query:
        """The query checked (not empty) and fitted: what every stage reads."""
        if query.is_empty():
            raise QueryError("empty query: attach an image, video or PDF page, or type a question", code="empty_query")
        return self.fit(query, trace)

    def _retrieval(self, query: Query, trace: Trace, *, top_k: int | None, top_n: int | None,
                   rerank: bool | None) -> Retrieval:
        retrieved = self.retrieve_stage.run(query, trace, top_k=top_k).candidates
        wanted = query.rerank if rerank is None else rerank
        use_rerank = self.rerank_enabled if wanted is None else (wanted and self.rerank_stage is not None)
        if use_rerank and self.rerank_stage is not None:
            r = self.rerank_stage.run(query, retrieved, trace, top_n=top_n)
            return Retrieval(retrieved=retrieved, scored=r.scored, kept=r.kept)
        n = top_n if top_n is not None else (self.rerank_stage.top_n if self.rerank_stage is not None else 5)
        return Retrieval(retrieved=retrieved, scored=None, kept=retrieved[:n])

    def retrieve(self, query: Query, trace: Trace | None = None) -> tuple[list[CaseCandidate], bool]:
        """Top cases for ``query`` (reranked unless switched off); returns (cases, reranked)."""
        r = self.retrieval(query, trace)
        return r.kept, r.reranked

    def _with_history_cases(self, query: Query, cases: list[CaseCandidate]) -> list[CaseCandidate]:
        """A follow-up keeps the cases of the previous turn in context."""
        if not query.history:
            return cases
        have = {c.case_id for c in cases}
        prev = [cid for cid in query.history[-1].case_ids if cid not in have][: self.carry_cases]
        return cases + self.retrieve_stage.fetch(prev) if prev else cases

    # -- public API ---------------------------------------------------------------------------------------------
    def stream(self, query: Query, cancel: threading.Event | None = None, *, top_k: int | None = None,
               top_n: int | None = None, rerank: bool | None = None) -> Iterator[Event]:
        """``sources`` (with the full :class:`Retrieval`), then ``token`` chunks, then ``done`` with the answer."""
        trace = Trace()
        t0 = time.perf_counter()
        query = self._prepared(query, trace)
        retrieval = self._retrieval(query, trace, top_k=top_k, top_n=top_n, rerank=rerank)
        cases, reranked = retrieval.kept, retrieval.reranked
        decision = self.abstain_stage.run(cases, reranked, trace)
        if decision.abstain:
            text = abstention_text(cases, decision, query.answer_lang)
            yield Event(type="sources", cases=cases, abstained=True, retrieval=retrieval)
            yield Event(type="token", text=text)
            answer = finish(text, cases, decision, trace)
            answer.cited = []
            yield Event(type="done", answer=answer, cases=cases, abstained=True, text=text)
            return
        context = self._with_history_cases(query, cases)
        yield Event(type="sources", cases=context, retrieval=retrieval)
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

    def run(self, query: Query, cancel: threading.Event | None = None, *, top_k: int | None = None,
            top_n: int | None = None, rerank: bool | None = None) -> Answer:
        """The whole answer (:meth:`stream`, collected)."""
        result: Answer | None = None
        for event in self.stream(query, cancel, top_k=top_k, top_n=top_n, rerank=rerank):
            if event.type == "done":
                result = event.answer
        assert result is not None
        return result

    def answer(self, query: Query) -> Answer:
        return self.run(query)
