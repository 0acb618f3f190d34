"""Fit: the query's images resized once to the query-time pixel budget, before any model sees them.

On a CPU the query photo dominates every stage's cost (:mod:`rag.models.budgets`); resizing it here, the official way,
gives the embedder, the reranker and the generator the same smaller picture and decodes it once. Nothing happens
when the budget is the official one.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from pydantic import BaseModel, ConfigDict

from rag.config import VisionBudget
from rag.models.budgets import QueryBudget, fit_image, query_time_budget
from rag.models.query_image import load_query_image
from rag.pipeline.timing import Timer
from rag.pipeline.types import Query, Trace

__all__ = ["FitQuery", "Fitted"]


class Fitted(BaseModel):
    """The query with its images fitted, and what was resized: ``(width, height)`` before and after."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    query: Query
    resized: list[tuple[tuple[int, int], tuple[int, int]]]


class FitQuery:
    """Resize the query's images to ``choice`` (official resize rule); a no-op when the choice keeps the official
    budget. Paths are decoded and validated like an upload (:func:`rag.models.query_image.load_query_image`)."""

    def __init__(self, choice: QueryBudget, budget: VisionBudget | None = None) -> None:
        self.choice = choice
        self.budget = query_time_budget(budget or VisionBudget(), choice)

    def run(self, query: Query, trace: Trace | None = None) -> Fitted:
        if self.choice.max_pixels is None or not query.images:
            return Fitted(query=query, resized=[])
        with Timer() as t:
            images: list[object] = []
            resized: list[tuple[tuple[int, int], tuple[int, int]]] = []
            for src in query.images:
                img = src if isinstance(src, Image.Image) else load_query_image(Path(str(src)), self.budget)
                out = fit_image(img, self.budget)
                if out.size != img.size:
                    resized.append((img.size, out.size))
                images.append(out)
            fitted = query.model_copy(update={"images": images})
        if trace is not None and resized:  # the trace says when the models saw a smaller picture than was sent
            trace.add("fit", t.ms, max_pixels=self.choice.max_pixels,
                      resized=[f"{a[0]}x{a[1]}→{b[0]}x{b[1]}" for a, b in resized])
        return Fitted(query=fitted, resized=resized)
