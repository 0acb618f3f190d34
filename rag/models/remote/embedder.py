"""Qwen3-VL-Embedding served by vLLM (``--runner pooling``), behind the same ``embed()`` as the local embedder.

Each item is sent to vLLM's chat-style embeddings endpoint (``POST /v1/embeddings`` with ``messages``) as the very
conversation the local embedder renders: a system turn with the normalised instruction, a user turn with the item's
videos, images and texts (``"NULL"`` when empty), and ``add_generation_prompt: true`` so the pooled last token is the
same "\\n" after ``assistant``. Full vectors come back; Matryoshka truncation and L2 re-normalisation happen here, as
locally. Same layout + same pixels ⇒ local and remote vectors are interchangeable in one store.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from rag.models.embedder import DEFAULT_INSTRUCTION, EmbeddingError, mrl_truncate, normalise_instruction
from rag.models.encoding import Item, as_items, item_name
from rag.models.remote.http import RemoteError
from rag.models.remote.media import WireMessage, item_parts, text_part
from rag.models.remote.pooling import PoolingClient
from rag.models.vision import VisionInputError

logger = logging.getLogger(__name__)

EMBEDDINGS_PATH = "/v1/embeddings"


class RemoteEmbedder(PoolingClient):
    """Drop-in for :class:`rag.models.embedder.Embedder` backed by a vLLM server."""

    DEFAULT_INSTRUCTION = DEFAULT_INSTRUCTION
    _dim: int | None = None  # learnt from the first answer

    @property
    def dim(self) -> int:
        """Full vector size; asked from the server once (one tiny request) and cached."""
        if self._dim is None:
            self.embed(["NULL"])
        assert self._dim is not None
        return self._dim

    def messages(self, item: Item, instruction: str | None = None, index: int | None = None) -> list[WireMessage]:
        """The official conversation for one item, with media as data URLs (raises EmbeddingError naming it)."""
        name = item_name(item, index) if isinstance(item, dict) else f"item {index}"
        if not isinstance(item, dict):
            raise EmbeddingError(f"{name}: an item must be a dict with 'text', 'image' and/or 'video'")
        unknown = set(item) - {"text", "image", "video", "instruction", "id"}
        if unknown:
            raise EmbeddingError(f"{name}: unknown keys {sorted(unknown)}; allowed: text, image, video, instruction, id")
        system = normalise_instruction(item.get("instruction") or instruction, self.default_instruction)
        try:
            content = item_parts(item, self.budget, self.image_format, self.max_upload_bytes)
        except VisionInputError as e:
            raise EmbeddingError(f"{name}: {e}") from e
        return [{"role": "system", "content": [text_part(system)]}, {"role": "user", "content": content}]

    def _embed_one(self, item: Item, instruction: str | None, index: int) -> np.ndarray:
        body = self.payload(self.messages(item, instruction, index), encoding_format="float")
        answer = self.post(EMBEDDINGS_PATH, body,
                           lambda e: EmbeddingError(f"{item_name(item, index)}: the embedding server refused it: {e}"))
        try:
            vec = np.asarray(answer["data"][0]["embedding"], dtype=np.float32)
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise RemoteError(f"embedder server at {self.endpoint.url(EMBEDDINGS_PATH)} sent no float embedding "
                              f"({str(answer)[:200]}); use encoding_format=float", url=self.endpoint.url(EMBEDDINGS_PATH)) from e
        if vec.ndim != 1 or vec.size == 0 or not np.isfinite(vec).all():
            raise RemoteError(f"embedder server returned an invalid vector of shape {vec.shape}",
                              url=self.endpoint.url(EMBEDDINGS_PATH))
        return vec / max(float(np.linalg.norm(vec)), 1e-12)

    def embed(self, items: Iterable[Item | str], instruction: str | None = None, dim: int | None = None,
              batch_size: int | None = None, progress: bool = False, window: int = 64) -> np.ndarray:
        """Embed items into an (n, dim) float32 array, in input order.

        One request per item, ``max_concurrency`` in flight (vLLM batches concurrent requests itself, so
        ``batch_size`` is accepted for API parity only); items are submitted ``window`` at a time, so a bulk import
        neither queues thousands of requests nor goes on long after the first failing item, which is named.
        """
        items = as_items(items)
        if not items:
            return np.zeros((0, dim or self.dim), dtype=np.float32)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(items), desc="embedding (remote)", unit="item")
        workers = max(1, min(self.max_concurrency, len(items)))
        window = max(1, window, workers)
        vectors: list[np.ndarray] = []
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="remote-embed") as pool:
            try:
                for w0 in range(0, len(items), window):
                    futures: list[Future[np.ndarray]] = [
                        pool.submit(self._embed_one, items[i], instruction, i)
                        for i in range(w0, min(w0 + window, len(items)))
                    ]
                    try:
                        for f in futures:
                            vectors.append(f.result())
                            if bar is not None:
                                bar.update(1)
                    except BaseException:
                        for f in futures:
                            f.cancel()
                        raise
            finally:
                if bar is not None:
                    bar.close()
        sizes = {v.shape[0] for v in vectors}
        if len(sizes) != 1:
            raise RemoteError(f"embedder server returned vectors of different sizes {sorted(sizes)}",
                              url=self.endpoint.url(EMBEDDINGS_PATH))
        out = np.stack(vectors).astype(np.float32)
        self._dim = out.shape[1]
        return mrl_truncate(out, dim)


__all__ = ["EMBEDDINGS_PATH", "RemoteEmbedder"]
