"""What the parts of the knowledge base share: the stores, the embedder, the write lock and a few reads.

:class:`~knowledge_base.kb.KnowledgeBase` is a façade over :mod:`knowledge_base.cases` (add, change, read, import)
and :mod:`knowledge_base.maintenance` (check/fix, reindex, export). Both work on one :class:`KBState`, so a change
one part makes (a reindex swaps the store and the embedder) is what the other part sees next.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np

from knowledge_base.dedup import MediaIndex
from knowledge_base.ingest import IngestContext, IngestOptions
from knowledge_base.media_store import MediaStore
from knowledge_base.schema import Case
from rag.config import Settings
from rag.models.protocols import EmbeddingModel, Item
from rag.store import StoredPoint, StoreMismatchError, VectorStore, point_id

__all__ = ["EmbedderLike", "KBState", "now"]

log = logging.getLogger(__name__)

#: The embedders a knowledge base writes with (local model or remote endpoint): the embedding contract.
EmbedderLike: TypeAlias = EmbeddingModel


def now() -> datetime:
    """UTC now to the second (what case records store)."""
    return datetime.now(timezone.utc).replace(microsecond=0)


class KBState:
    """The mutable state of one open knowledge base; the parts read it live (never copy ``store`` or ``embedder``)."""

    def __init__(self, *, settings: Settings, embedder: EmbedderLike | None, store: VectorStore, media: MediaStore,
                 options: IngestOptions | None = None, embedder_id: str | None = None) -> None:
        self.settings = settings
        self.data_dir = Path(settings.data_dir)
        self.embedder = embedder
        self.store = store
        self.media = media
        self.options = options or IngestOptions()
        self.embedder_id = embedder_id or store.meta.embedder_id
        #: The vector size this KB writes (``Settings.embed_dim`` or the model's; a reindex may change it).
        self.embed_dim = (settings.embed_dim or int(embedder.dim)) if embedder is not None else store.dim
        #: One writer at a time (the Gradio app calls from worker threads); re-entrant: parts call each other.
        self.lock = threading.RLock()
        self.index: MediaIndex | None = None

    @staticmethod
    def embedder_id_of(embedder: EmbedderLike, settings: Settings) -> str:
        """The id recorded in the store's meta: the embedder's name (model id or path), else the configured one."""
        return str(getattr(embedder, "name", "") or settings.embedder_model)

    # -- embedding ------------------------------------------------------------------------------------------------
    def embed(self, items: Sequence[Item], embedder: EmbedderLike | None = None,
              dim: int | None = None) -> np.ndarray:
        """Document-side embeddings (default instruction), at the store's dimension."""
        emb = embedder or self.embedder
        if emb is None:
            raise RuntimeError("this knowledge base was opened without an embedder (read-only maintenance)")
        if embedder is None and (why := self.store_mismatch()):
            raise StoreMismatchError(why)
        return emb.embed(list(items), instruction=None, dim=dim or self.store.dim,
                         batch_size=self.options.embed_batch_size or self.settings.embed_batch_size)

    def store_mismatch(self) -> str | None:
        """Why vectors the configured embedder makes now cannot be compared with the stored ones (the store was built
        by another embedder or at another dimension), or None. The one check every embedding reader uses."""
        if self.embedder_id == self.store.meta.embedder_id and self.embed_dim == self.store.dim:
            return None
        return (f"the store holds vectors of {self.store.meta.embedder_id!r} (dim {self.store.dim}) but the configured "
                f"embedder is {self.embedder_id!r} (dim {self.embed_dim}); run `ragvqa kb reindex` first")

    def ingest_context(self) -> IngestContext:
        """The narrow view an import run gets (with a media index rebuilt from the store: another process may
        have written)."""
        return IngestContext(store=self.store, media=self.media, embed=self.embed, embedder_id=self.embedder_id,
                             index=self.media_index(refresh=True), options=self.options)

    # -- shared reads -----------------------------------------------------------------------------------------------
    def media_index(self, refresh: bool = False) -> MediaIndex:
        """Who owns which media content (rebuilt from the store when asked: another process may have written)."""
        if self.index is None or refresh:
            self.index = MediaIndex.build(self.store)
        return self.index

    def text_payloads(self, filters: Mapping[str, Any] | None = None,
                      keys: list[str] | None = None) -> Iterator[StoredPoint]:
        """Every case's text point (the case record lives in its payload)."""
        flt = {**(filters or {}), "kind": "text"}
        return self.store.scroll(filters=flt, batch_size=512, payload_keys=keys)

    def get(self, case_id: str) -> Case | None:
        """The stored case, or None."""
        pts = self.store.retrieve([point_id(case_id)])
        if not pts:
            return None
        return Case.model_validate(pts[0].payload["case"])

    def count_cases(self) -> int:
        return self.store.count({"kind": "text"})

    def clean_temp_files(self, max_age_s: float = 0.0) -> int:
        """Delete media temp files older than ``max_age_s`` (left by interrupted writes); returns how many."""
        tmp = self.media.root / ".tmp"
        if not tmp.is_dir():
            return 0
        t, n = time.time(), 0
        for f in tmp.iterdir():
            with contextlib.suppress(OSError):
                if t - f.stat().st_mtime >= max_age_s:
                    f.unlink()
                    n += 1
        if n:
            log.info("removed %d temp file(s) left by an interrupted write", n)
        return n
