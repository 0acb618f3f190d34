"""The contracts every embedder, reranker and generator keeps, local (transformers) or remote (a model server).

The pipeline, the knowledge base, the app's services and the eval runner are typed against these protocols, not
against a class, so a deployment swaps one role between :mod:`rag.models` and :mod:`rag.models.remote` (or a
wrapper such as the eval's embedding cache) without touching its callers. The shapes follow sentence-transformers'
``encode``/``CrossEncoder.rank`` (a batch in, one vector or score per input, in input order) and Haystack's
embedder protocols; each lists only what the callers use.

The protocols are ``runtime_checkable`` for tests and assertions. ``isinstance`` on Python 3.11 reads every member,
so it evaluates :attr:`EmbeddingModel.dim`, which on a remote embedder that has not answered yet costs one request:
do not ``isinstance``-check remote models on a hot path.

This module does not import torch or transformers: typing a caller against it loads no model code.
"""

from __future__ import annotations

import threading
from typing import Any, Iterable, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np

__all__ = ["EmbeddingModel", "GenerationModel", "Item", "Message", "RerankingModel"]

#: One input: ``{"text": ..., "image": ..., "video": ..., "instruction": ...}`` (any subset; see rag.models.encoding).
Item = dict[str, Any]
#: One chat message, OpenAI/Qwen style: ``{"role": ..., "content": str | list of parts}``.
Message = dict[str, Any]


@runtime_checkable
class EmbeddingModel(Protocol):
    """Texts, images and videos to unit vectors in one space (Qwen3-VL-Embedding: last-token pooling, MRL)."""

    #: Identity of the vectors (the store records it and refuses to mix embedders): the model id or path.
    name: str

    @property
    def dim(self) -> int:
        """Full vector size (before any Matryoshka truncation)."""
        ...

    def embed(self, items: Iterable[Item | str], instruction: str | None = None, dim: int | None = None,
              batch_size: int | None = None, progress: bool = False, window: int = 64) -> np.ndarray:
        """An (n, dim or :attr:`dim`) float32 array of L2-normalised rows, in input order; plain strings are text."""
        ...


@runtime_checkable
class RerankingModel(Protocol):
    """A cross-encoder: relevance of each document to one query (Qwen3-VL-Reranker: P(yes) of the judgement)."""

    name: str

    def score(self, query: Item, documents: Sequence[Item], instruction: str | None = None,
              batch_size: int | None = None, share_prefix: bool = True) -> list[float]:
        """Scores in (0, 1), one per document, in input order (empty for no documents)."""
        ...


@runtime_checkable
class GenerationModel(Protocol):
    """A chat model answering from messages with text, image and video parts (Qwen3-VL-Instruct)."""

    name: str

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` (exact with a tokenizer; a remote model without one may estimate high)."""
        ...

    def generate(self, messages: Sequence[Message], max_new_tokens: int = 512, temperature: float = 0.0,
                 top_p: float = 0.9, stop: Sequence[str] | None = None) -> str:
        """The whole answer (greedy at temperature 0), cut at the first stop string."""
        ...

    def stream(self, messages: Sequence[Message], max_new_tokens: int = 512, temperature: float = 0.0,
               top_p: float = 0.9, stop: Sequence[str] | None = None,
               cancel: threading.Event | None = None) -> Iterator[str]:
        """Text chunks as they are produced; joined, they equal :meth:`generate`'s text. Setting ``cancel`` stops."""
        ...
