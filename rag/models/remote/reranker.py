"""Qwen3-VL-Reranker served by vLLM, behind the same ``score()`` as the local reranker — with the images.

vLLM serves the reranker as ``Qwen3VLForSequenceClassification`` (``--runner pooling``, ``--hf-overrides`` with
``classifier_from_token: ["no", "yes"]``), whose single output is sigmoid(logit_yes − logit_no): the official score.
Its ``/score`` and ``/rerank`` endpoints build the prompt from a score template, and the stock one is text-only, so
image documents all score ≈0.5 (vllm-project/vllm#33885, QwenLM/Qwen3-VL-Embedding#66).

So this client does not use them: it renders the *official* pair conversation itself — system judge prompt, user turn
``<Instruct>: …``, ``<Query>:``, query videos/images/texts, ``\\n<Document>:``, document videos/images/texts — and
sends it as chat ``messages`` (media as ``image_url``/``video_url`` data URLs) to vLLM's classification endpoint
(``POST /classify``, ``add_generation_prompt: true``). The server applies the model's own Qwen3-VL chat template, so
the token sequence, the vision inputs and the scored last position are the ones of the official reranker. One request
per (query, document) pair, sent concurrently; vLLM batches them (and caches the shared query prefix).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from rag.models.encoding import Item, item_name
from rag.models.remote.http import RemoteError
from rag.models.remote.media import Part, WireMessage, item_parts, text_part
from rag.models.remote.pooling import PoolingClient
from rag.models.reranker import DEFAULT_INSTRUCTION, SYSTEM_PROMPT, RerankError
from rag.models.vision import VisionInputError

logger = logging.getLogger(__name__)

CLASSIFY_PATH = "/classify"


class RemoteReranker(PoolingClient):
    """Drop-in for :class:`rag.models.reranker.Reranker` backed by a vLLM pooling server."""

    DEFAULT_INSTRUCTION = DEFAULT_INSTRUCTION

    @property
    def batch_size(self) -> int:
        """Pairs in flight at once (the pipeline's rerank stage reads it)."""
        return self.max_concurrency

    def _parts(self, item: Item, what: str) -> list[Part]:
        if not isinstance(item, dict):
            raise RerankError(f"{what}: must be a dict with 'text', 'image' and/or 'video'")
        try:
            return item_parts(item, self.budget, self.image_format, self.max_upload_bytes)
        except VisionInputError as e:
            raise RerankError(f"{what}: {e}") from e

    def messages(self, query_parts: list[Part], doc_parts: list[Part], instruction: str | None = None) -> list[WireMessage]:
        """The official pair conversation (same content items, same order as the local reranker)."""
        user = [
            text_part("<Instruct>: " + (instruction or self.default_instruction)),
            text_part("<Query>:"),
            *query_parts,
            text_part("\n<Document>:"),
            *doc_parts,
        ]
        return [{"role": "system", "content": [text_part(SYSTEM_PROMPT)]}, {"role": "user", "content": user}]

    def _score_pair(self, query_parts: list[Part], doc: Item, instruction: str | None, index: int) -> float:
        name = item_name(doc, index).replace("item", "document", 1) if isinstance(doc, dict) else f"document {index}"
        body = self.payload(self.messages(query_parts, self._parts(doc, name), instruction))
        url = self.endpoint.url(CLASSIFY_PATH)
        answer = self.post(CLASSIFY_PATH, body, lambda e: RerankError(f"{name}: the reranker server refused the pair: {e}"))
        try:
            probs = [float(p) for p in answer["data"][0]["probs"]]
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise RemoteError(f"reranker server at {url} sent no classification probs: {str(answer)[:200]}",
                              url=url) from e
        if len(probs) == 1:  # classifier_from_token ["no", "yes"] → one logit, sigmoid(yes − no)
            return probs[0]
        if len(probs) == 2:  # a two-label head in ["no", "yes"] order
            return probs[1]
        raise RemoteError(f"reranker server at {url} returned {len(probs)} classes; serve the reranker with "
                          '--hf-overrides classifier_from_token ["no", "yes"]', url=url)

    def score(self, query: Item, documents: Sequence[Item], instruction: str | None = None,
              batch_size: int | None = None, share_prefix: bool = True) -> list[float]:
        """Scores in (0, 1), one per document, in input order.

        ``batch_size``/``share_prefix`` are accepted for API parity: the server batches concurrent requests and
        caches the shared query prefix itself. The query's media are encoded once for all pairs.
        """
        if not documents:
            return []
        query_parts = self._parts(query, item_name(query).replace("item", "query", 1) if isinstance(query, dict) else "query")
        workers = max(1, min(self.max_concurrency, len(documents)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="remote-rerank") as pool:
            futures = [pool.submit(self._score_pair, query_parts, d, instruction, i) for i, d in enumerate(documents)]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise


__all__ = ["CLASSIFY_PATH", "RemoteReranker"]
