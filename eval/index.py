"""Index a benchmark corpus (BEIR/ViDoRe documents) into a store with the pipeline's payload contract.

Benchmark documents are not support cases, so they do not go through the knowledge-base importer; each becomes a
"case" whose id is the corpus id: a text point (``media_id`` None) carrying ``document``/``case`` as the pipeline
expects, plus an image point when the document has both text and an image. An image-only page (ViDoRe) is one
point whose vector is the image's, so every document has exactly the points it needs and scores are not diluted.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

from eval.data import CorpusDoc
from rag.models.protocols import EmbeddingModel
from rag.store import VectorPoint, VectorStore, point_id

logger = logging.getLogger(__name__)

IMAGE_MEDIA_ID = "image"


def _doc_text(d: CorpusDoc) -> str:
    return "\n".join(p for p in (d.title, d.text) if p)


def index_corpus(store: VectorStore, embedder: EmbeddingModel, corpus: Sequence[CorpusDoc], *, media_root: Path | None = None,
                 progress: bool = False, batch_size: int = 8, chunk: int = 256) -> int:
    """Embed and upsert the corpus (documents with the embedder's default instruction, as in the official usage).

    Idempotent: point ids are deterministic, and a store that already holds every document is left alone. Media
    paths in payloads are relative to ``media_root`` (default: :func:`corpus_media_root`).
    """
    media_root = (media_root or corpus_media_root(corpus) or Path(".")).resolve()
    expected = sum(1 + (1 if d.image is not None and _doc_text(d) else 0) for d in corpus)
    if store.count() >= expected:
        logger.info("corpus already indexed (%d points)", store.count())
        return 0
    written = 0
    chunks = [corpus[i:i + chunk] for i in range(0, len(corpus), chunk)]
    iterator: Any = chunks
    if progress:
        from tqdm import tqdm

        iterator = tqdm(chunks, desc="indexing corpus", unit="chunk")
    for part in iterator:
        items: list[dict[str, Any]] = []
        slots: list[tuple[CorpusDoc, str]] = []
        for d in part:
            text = _doc_text(d)
            if text:
                items.append({"text": text})
                slots.append((d, "text"))
            if d.image is not None:
                items.append({"image": str(d.image)})
                slots.append((d, "image"))
        vecs = embedder.embed(items, dim=store.dim, batch_size=batch_size)
        points = []
        for (d, what), vec in zip(slots, vecs, strict=False):
            text = _doc_text(d)
            media_root_rel = d.image.resolve().relative_to(media_root).as_posix() if d.image is not None else None
            case = {"id": d.id, "title": d.title, "media": ([{"id": IMAGE_MEDIA_ID, "kind": "image", "path": media_root_rel,
                                                              "thumbnail": media_root_rel}] if d.image is not None else [])}
            common = {"case_id": d.id, "title": d.title, "tags": []}
            if what == "text" or not text:  # the case point: text vector, or the image vector of an image-only page
                points.append(VectorPoint(id=point_id(d.id, None), vector=vec, payload={
                    **common, "media_id": None, "kind": "text" if what == "text" else "image",
                    "document": text, "case": case}))
            else:
                points.append(VectorPoint(id=point_id(d.id, IMAGE_MEDIA_ID), vector=vec, payload={
                    **common, "media_id": IMAGE_MEDIA_ID, "kind": "image", "media_path": media_root_rel,
                    "thumbnail": media_root_rel}))
        written += store.upsert(points)
    store.flush()
    logger.info("indexed %d documents (%d points)", len(corpus), written)
    return written


def corpus_media_root(corpus: Sequence[CorpusDoc]) -> Path | None:
    """The deepest folder holding every corpus image (payload media paths are relative to it)."""
    parents = sorted({str(d.image.resolve().parent) for d in corpus if d.image is not None})
    return Path(os.path.commonpath(parents)) if parents else None
