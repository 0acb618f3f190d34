"""Vector store: one interface (:class:`VectorStore`), two backends of the real Qdrant engine.

``open_store`` picks the backend from configuration: a Qdrant server when ``qdrant_url`` is set (several app
processes, big collections, replication), else Qdrant Edge in-process under ``data_dir/qdrant`` (single process,
nothing to deploy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rag.config import StoreConfig
from rag.store.base import (
    FILTER_KEYS,
    KINDS,
    SCHEMA_VERSION,
    CaseHit,
    Filters,
    Hit,
    StoredPoint,
    StoreError,
    StoreMeta,
    StoreMismatchError,
    VectorPoint,
    VectorStore,
    point_id,
)
from rag.store.edge import EdgeStore
from rag.store.server import ServerStore


def open_store(
    *,
    embedder_id: str | None,
    dim: int | None,
    config: StoreConfig | None = None,
    **options: Any,
) -> VectorStore:
    """Open (or create) the app's vector store as ``config`` (default: :class:`StoreConfig`'s defaults) says.

    ``options`` are :class:`StoreConfig` fields that override ``config`` for this call (``data_dir=``,
    ``store_quantization=`` …); an unknown name is an error. ``embedder_id``/``dim`` describe the vectors the caller
    will write and query with; an existing store built with others raises :class:`StoreMismatchError`. Pass both as
    ``None`` to open whatever is there (read-only tools).
    """
    if (embedder_id is None) != (dim is None):
        raise ValueError("give both embedder_id and dim, or neither (to open an existing store as it is)")
    cfg = config or StoreConfig()
    if options:
        cfg = StoreConfig.model_validate({**cfg.model_dump(), **options})
    meta = (
        StoreMeta(embedder_id=embedder_id, dim=dim, quantization=cfg.store_quantization)
        if embedder_id is not None and dim is not None
        else None
    )
    if cfg.qdrant_url or cfg.qdrant_location:
        return ServerStore.open(
            url=cfg.qdrant_url or None,
            api_key=cfg.qdrant_api_key or None,
            location=None if cfg.qdrant_url else cfg.qdrant_location,
            meta=meta,
            config=cfg,
        )
    return EdgeStore.open(Path(cfg.data_dir) / "qdrant", meta, config=cfg)


__all__ = [
    "FILTER_KEYS",
    "KINDS",
    "SCHEMA_VERSION",
    "CaseHit",
    "EdgeStore",
    "Filters",
    "Hit",
    "ServerStore",
    "StoreConfig",
    "StoreError",
    "StoreMeta",
    "StoreMismatchError",
    "StoredPoint",
    "VectorPoint",
    "VectorStore",
    "open_store",
    "point_id",
]
