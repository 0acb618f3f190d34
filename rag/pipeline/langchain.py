"""The pipeline as langchain-core objects: a ``BaseRetriever`` of case ``Document``s and a ``Runnable`` chain."""

from __future__ import annotations

from typing import Any, Callable, Iterator

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableConfig, RunnableGenerator, RunnableLambda
from pydantic import ConfigDict

from rag.pipeline.pipeline import RagPipeline
from rag.pipeline.types import Answer, CaseCandidate, Query


def to_query(value: Any) -> Query:
    """Accept a Query, a dict with Query fields, or a plain question string."""
    if isinstance(value, Query):
        return value
    if isinstance(value, str):
        return Query(text=value)
    if isinstance(value, dict):
        return Query(**value)
    raise TypeError(f"expected a Query, dict or str, got {type(value).__name__}")


def to_document(c: CaseCandidate) -> Document:
    return Document(
        page_content=c.document or c.title,
        metadata={
            "case_id": c.case_id, "title": c.title, "retrieval_score": c.retrieval_score,
            "rerank_score": c.rerank_score, "score": c.score, "media_path": c.media_path,
            "thumbnail": c.thumbnail, "case": c.case,
        },
        id=c.case_id,
    )


class CaseRetriever(BaseRetriever):
    """Retrieval (+ reranking) as a langchain retriever; ``invoke`` takes a question or a Query/dict."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    pipeline: RagPipeline

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> list[Document]:
        if isinstance(input, (Query, dict)):
            cases, _ = self.pipeline.retrieve(to_query(input))
            return [to_document(c) for c in cases]
        return super().invoke(input, config, **kwargs)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        cases, _ = self.pipeline.retrieve(Query(text=query))
        return [to_document(c) for c in cases]


def as_runnable(pipeline: RagPipeline) -> RunnableLambda[Any, Answer]:
    """The whole chain: ``invoke`` → :class:`Answer`; ``stream`` → text chunks."""

    def _invoke(value: Any) -> Answer:
        return pipeline.answer(to_query(value))

    def _stream(values: Iterator[Any]) -> Iterator[str]:
        for value in values:
            for event in pipeline.stream(to_query(value)):
                if event.type == "token":
                    yield event.text

    return _Chain(_invoke, _stream)


class _Chain(RunnableLambda[Any, Answer]):
    """``RunnableLambda`` whose ``stream`` yields answer tokens as they are generated."""

    def __init__(self, invoke_fn: Callable[[Any], Answer], stream_fn: Callable[[Iterator[Any]], Iterator[str]]) -> None:
        super().__init__(invoke_fn, name="ragvqa")
        self._streamer = RunnableGenerator(stream_fn, name="ragvqa-stream")

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:
        yield from self._streamer.stream(input, config, **kwargs)
