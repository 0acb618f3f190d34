"""Matryoshka dimension × int8 quantization sweep: retrieval quality against index size.

Each point is a retrieval-only :class:`eval.runner.EvalRunner` run on its own eval store (dimension and quantization
are store properties), so points are resumable and reuse their stores. The embedding cache holds full-size vectors,
so the whole sweep embeds the KB and the queries once; every other dimension is a cut of the same vectors.

Every point's store gets its HNSW (and int8) index built however small it is: below Qdrant's indexing threshold a
store is searched by exact float scans, and an "int8" point would silently measure float32. A reused store built
without that index (by a plain eval run) is rebuilt, and each point records what the engine holds.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

from eval.cache import CachedEmbedder, EmbeddingCache
from eval.report import plot_sweep, sweep_markdown, write_json
from eval.runner import EvalRunner, RunConfig, dir_size
from rag.config import Settings
from rag.models.protocols import EmbeddingModel

logger = logging.getLogger(__name__)

SWEEP_METRICS = ("recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10")

#: Index every segment of a sweep store (vector KB), so the int8 arm searches int8 vectors even on a small KB.
SWEEP_INDEXING_THRESHOLD_KB = 1


def default_dims(full: int) -> list[int]:
    """Powers of two from 64 (the smallest trained Matryoshka prefix) below the full size, then the full size."""
    return [d for d in (64, 128, 256, 512, 1024, 2048, 4096) if d < full] + [full]


def parse_dims(text: str | None, full: int) -> list[int]:
    if not text or text == "auto":
        return default_dims(full)
    dims = sorted({full if t.strip() == "full" else int(t) for t in text.split(",") if t.strip()})
    bad = [d for d in dims if d < 64 or d > full]
    if bad:
        raise ValueError(f"dimensions must be between 64 and the model's {full}: {bad}")
    return dims


def run_sweep(settings: Settings, *, embedder: EmbeddingModel, out_dir: Path, base: RunConfig | None = None,
              dims: Sequence[int] | None = None, quantizations: Sequence[bool] = (False, True),
              cache: EmbeddingCache | None = None) -> dict[str, Any]:
    """Run every (dim, quantization) point; write ``sweep.json``, ``sweep.md`` and ``mrl_sweep.png`` to ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = cache or EmbeddingCache(Path(settings.data_dir) / "cache" / "embeddings.sqlite3")
    cached = embedder if isinstance(embedder, CachedEmbedder) else CachedEmbedder(embedder, cache)
    full = int(cached.dim)
    dims = list(dims or default_dims(full))
    base = base or RunConfig()
    points: list[dict[str, Any]] = []
    meta: dict[str, Any] = {"models": base.models}
    point_settings = settings.model_copy(update={"store_indexing_threshold_kb": SWEEP_INDEXING_THRESHOLD_KB})
    for dim in dims:
        for quant in quantizations:
            tag = f"d{dim}-{'int8' if quant else 'float32'}"
            cfg = base.model_copy(update={"mode": "retrieval", "embed_dim": None if dim == full else dim, "quantization": quant})
            fresh = False
            while True:
                runner = EvalRunner(cfg, point_settings, embedder=cached, run_dir=out_dir / "points" / tag, cache=cache,
                                    optimize_store=True, write_report=False, fresh_store=fresh, restart=fresh)
                try:
                    res = runner.run()
                    n_points = runner.store.count()
                    runner.store.flush()
                    index = _index_state(runner.store)
                    size = dir_size(runner.store_dir / "qdrant")
                    es = runner.eval_set
                finally:
                    runner.close()
                if fresh or _index_ok(index, n_points, quant):
                    break
                logger.warning("sweep %s: the reused store %s has no built %s index (%s); rebuilding it", tag,
                               res.summary["run"]["store_dir"], "int8" if quant else "HNSW", index)
                fresh = True
            if not _index_ok(index, n_points, quant):
                raise RuntimeError(f"sweep point {tag}: the store's index was not built as asked: {index}")
            metrics = res.summary["metrics"].get("retrieval", {})
            point = {"dim": dim, "quantization": quant, "metrics": {m: metrics.get(m) for m in SWEEP_METRICS},
                     "n_points": n_points, "index_bytes": size, "vector_ram_bytes": n_points * dim * (1 if quant else 4),
                     "query_latency_p50_ms": res.summary["latency"].get("total", {}).get("p50"),
                     "cache": res.summary["run"]["cache"], "index": index}
            points.append(point)
            meta.update(source=es.source if es else "", n_queries=res.summary["n_answerable"], n_points=n_points)
            logger.info("sweep %s: recall@10 %.3f, mrr@10 %.3f, %d bytes on disk", tag, metrics.get("recall@10", 0.0),
                        metrics.get("mrr@10", 0.0), size)
    result = {"meta": meta, "points": points, "dims": dims, "quantizations": list(quantizations)}
    write_json(result, out_dir / "sweep.json")
    plot_sweep(points, out_dir / "mrl_sweep.png")
    (out_dir / "sweep.md").write_text(sweep_markdown(points, meta) + "\n", "utf-8")
    logger.info("sweep report written to %s", out_dir / "sweep.md")
    return result


def _index_state(store: Any) -> dict[str, Any]:
    """What the engine holds for a sweep store: indexed vectors and the quantization of its config."""
    info = store.info()
    config = store.engine_config()
    return {"indexed_vectors": info["indexed_vectors"], "quantization_config": config.get("quantization_config")}


def _index_ok(index: dict[str, Any], n_points: int, quant: bool) -> bool:
    scalar = (index.get("quantization_config") or {}).get("scalar") or {}
    return index["indexed_vectors"] >= n_points and (scalar.get("type") == "int8") == quant


def load_sweep(out_dir: Path) -> dict[str, Any]:
    return json.loads((Path(out_dir) / "sweep.json").read_text("utf-8"))
