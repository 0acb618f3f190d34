"""Vector store: one interface (:class:`VectorStore`), two backends of the real Qdrant engine.

``open_store`` picks the backend from configuration: a Qdrant server when ``qdrant_url`` is set (several app
processes, big collections, replication), else Qdrant Edge in-process under ``data_dir/qdrant`` (single process,
nothing to deploy).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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

#: Settings read by :func:`store_kwargs_from_settings`, with their defaults (proposed ``RAGVQA_*`` fields).
SETTINGS_DEFAULTS: dict[str, Any] = {
    "qdrant_url": None,
    "qdrant_api_key": None,
    "qdrant_collection": "ragvqa",
    "qdrant_shard_number": 1,
    "qdrant_replication_factor": 1,
    "qdrant_write_consistency_factor": 1,
    "qdrant_on_disk_payload": True,
    "qdrant_timeout": None,
    "store_quantization": True,
    "store_hnsw_ef": 128,
    "store_hnsw_m": 16,
    "store_hnsw_ef_construct": 100,
    "store_full_scan_threshold_kb": 2000,
    "store_oversampling": 2.0,
    "store_acorn": False,
    "store_indexing_threshold_kb": None,
}


def open_store(
    *,
    embedder_id: str | None,
    dim: int | None,
    data_dir: str | os.PathLike[str] = "data",
    qdrant_url: str | None = None,
    qdrant_api_key: str | None = None,
    qdrant_collection: str = "ragvqa",
    qdrant_location: str | None = None,
    qdrant_shard_number: int = 1,
    qdrant_replication_factor: int = 1,
    qdrant_write_consistency_factor: int = 1,
    qdrant_on_disk_payload: bool = True,
    qdrant_timeout: int | None = None,
    store_quantization: bool = False,
    store_hnsw_ef: int | None = 128,
    store_hnsw_m: int = 16,
    store_hnsw_ef_construct: int = 100,
    store_full_scan_threshold_kb: int = 2000,
    store_oversampling: float = 2.0,
    store_acorn: bool = False,
    store_indexing_threshold_kb: int | None = None,
) -> VectorStore:
    """Open (or create) the app's vector store.

    ``embedder_id``/``dim`` describe the vectors the caller will write and query with; an existing store built
    with others raises :class:`StoreMismatchError`. Pass both as ``None`` to open whatever is there (read-only
    tools). ``qdrant_location=":memory:"`` (or a path) selects qdrant-client local mode, for tests only.
    """
    if (embedder_id is None) != (dim is None):
        raise ValueError("give both embedder_id and dim, or neither (to open an existing store as it is)")
    meta = (
        StoreMeta(embedder_id=embedder_id, dim=dim, quantization=store_quantization)
        if embedder_id is not None and dim is not None
        else None
    )
    if qdrant_url or qdrant_location:
        return ServerStore.open(
            url=qdrant_url or None,
            api_key=qdrant_api_key or None,
            location=None if qdrant_url else qdrant_location,
            collection=qdrant_collection,
            meta=meta,
            shard_number=qdrant_shard_number,
            replication_factor=qdrant_replication_factor,
            write_consistency_factor=qdrant_write_consistency_factor,
            on_disk_payload=qdrant_on_disk_payload,
            hnsw_m=store_hnsw_m,
            hnsw_ef_construct=store_hnsw_ef_construct,
            full_scan_threshold_kb=store_full_scan_threshold_kb,
            hnsw_ef=store_hnsw_ef,
            oversampling=store_oversampling,
            acorn=store_acorn,
            indexing_threshold_kb=store_indexing_threshold_kb,
            timeout=qdrant_timeout,
        )
    return EdgeStore.open(
        Path(data_dir) / "qdrant",
        meta,
        hnsw_ef=store_hnsw_ef,
        oversampling=store_oversampling,
        acorn=store_acorn,
        hnsw_m=store_hnsw_m,
        hnsw_ef_construct=store_hnsw_ef_construct,
        full_scan_threshold_kb=store_full_scan_threshold_kb,
        indexing_threshold_kb=store_indexing_threshold_kb,
    )


def store_kwargs_from_settings(settings: Any) -> dict[str, Any]:
    """``open_store`` keyword arguments from a settings object (missing fields fall back to the defaults)."""
    kwargs = {k: getattr(settings, k, default) for k, default in SETTINGS_DEFAULTS.items()}
    kwargs["data_dir"] = getattr(settings, "data_dir", "data")
    return kwargs


__all__ = [
    "FILTER_KEYS",
    "KINDS",
    "SCHEMA_VERSION",
    "SETTINGS_DEFAULTS",
    "CaseHit",
    "EdgeStore",
    "Filters",
    "Hit",
    "ServerStore",
    "StoreError",
    "StoreMeta",
    "StoreMismatchError",
    "StoredPoint",
    "VectorPoint",
    "VectorStore",
    "open_store",
    "point_id",
    "store_kwargs_from_settings",
]
