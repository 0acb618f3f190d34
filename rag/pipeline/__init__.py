"""retrieve → rerank → abstain? → generate, each stage a small typed class; see :class:`RagPipeline`."""

from rag.pipeline.abstain import Abstain
from rag.pipeline.generate import Generate
from rag.pipeline.pipeline import QueryError, RagPipeline
from rag.pipeline.rerank import Rerank
from rag.pipeline.retrieve import Retrieve
from rag.pipeline.types import Answer, CaseCandidate, Decision, Event, Query, Trace, Turn

__all__ = ["Abstain", "Answer", "CaseCandidate", "Decision", "Event", "Generate", "Query", "QueryError", "RagPipeline",
           "Rerank", "Retrieve", "Trace", "Turn"]
