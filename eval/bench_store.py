"""Vector-store benchmark: top-10 latency and recall of Qdrant Edge vs qdrant-client local mode.

Why this exists: the app's retrieval budget is a few milliseconds per query, and the store backend/index settings
(HNSW ef, int8 quantization + rescoring) trade latency against recall. The data are *clustered* synthetic vectors
(isotropic random vectors make HNSW look far worse than on real embeddings) with support-desk-like payloads, and
recall@10 is measured against exact numpy search with the same filter.

The Edge store is built from the app's own settings object (``rag.config.Settings`` -> ``open_store``, the
``RAGVQA_STORE_*`` variables included), so the row marked *shipped* is the configuration the app runs; the other
rows (exact, float32 HNSW, ACORN flipped) are baselines on the same shard. The report prints the store
configuration it measured, as the engine holds it.

Run: ``python -m eval.bench_store --sizes 100000 --dims 1024 --out bench-results/``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from eval.bench_report import write_bench_report
from rag.config import Settings
from rag.store import open_store
from rag.store.base import VECTOR_NAME, Hit, VectorPoint, check_query_vector, validate_filters
from rag.store.edge import EdgeStore, to_filter
from rag.store.server import ServerStore

log = logging.getLogger(__name__)

#: Goal from the design brief: filtered top-10 p95 <= 2 ms with recall@10 >= 0.99 at 100k x 1024 on Edge.
GOAL = {"n": 100_000, "dim": 1024, "p95_ms": 2.0, "recall": 0.99}

N_PRODUCT_LINES = 4
N_MODELS = 40


# ---------------------------------------------------------------------------------------------------- data
def make_dataset(
    n: int, dim: int, n_clusters: int = 200, spread: float = 0.5, seed: int = 0
) -> tuple[np.ndarray, list[dict[str, Any]], np.ndarray]:
    """Unit vectors around ``n_clusters`` gaussian centres, with payloads correlated to the cluster.

    Equipment models mostly follow the cluster (same fault family, same model) with 30 % noise, and product lines
    group models, so a product-line filter keeps ~25 % of points (HNSW filtered path) and a model filter ~2.5 %
    (payload-index path). Returns (vectors, payloads, cluster of each point).
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    cluster = rng.integers(0, n_clusters, size=n)
    x = centres[cluster] + rng.normal(scale=spread / np.sqrt(dim), size=(n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    model = np.where(rng.random(n) < 0.7, cluster % N_MODELS, rng.integers(0, N_MODELS, size=n))
    payloads = [
        {
            "case_id": f"c{i // 3:07d}",
            "media_id": None if i % 3 == 0 else f"m{i:08d}",
            "kind": "text" if i % 3 == 0 else "image",
            "product_line": f"PL{int(m) * N_PRODUCT_LINES // N_MODELS}",
            "equipment_model": f"EM{int(m):02d}",
            "tags": [],
        }
        for i, m in enumerate(model)
    ]
    return x.astype(np.float32), payloads, cluster


def make_queries(
    x: np.ndarray, n_queries: int, noise: float = 0.3, seed: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Queries near random members (a new photo of a known fault). Returns (queries, index of the member)."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(x.shape[0], size=n_queries, replace=False)
    q = x[idx] + rng.normal(scale=noise / np.sqrt(x.shape[1]), size=(n_queries, x.shape[1])).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q.astype(np.float32), idx


def _pid(i: int) -> str:
    return str(uuid.UUID(int=i + 1))


def _idx(pid: str) -> int:
    return uuid.UUID(pid).int - 1


def exact_topk(x: np.ndarray, q: np.ndarray, mask: np.ndarray | None, k: int) -> list[int]:
    """Ground truth: cosine top-k by brute force on the unit vectors (optionally within a filter mask)."""
    scores = x @ q
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
        k = min(k, int(mask.sum()))
    top = np.argpartition(-scores, k - 1)[:k]
    return top[np.argsort(-scores[top])].tolist()


# ---------------------------------------------------------------------------------------------------- timing
def _percentiles(ms: list[float]) -> dict[str, float]:
    s = sorted(ms)
    p95 = s[min(len(s) - 1, int(round(0.95 * (len(s) - 1))))]
    return {"p50_ms": round(statistics.median(s), 3), "p95_ms": round(p95, 3), "n": len(s)}


def _measure(
    search: Callable[[np.ndarray, dict[str, str] | None], list[str]],
    queries: np.ndarray,
    filters: list[dict[str, str] | None],
    truth: list[list[int]],
    k: int,
    warmup: int = 5,
) -> dict[str, float]:
    for i in range(min(warmup, len(queries))):
        search(queries[i], filters[i])
    times, cpu, recalls = [], [], []
    for q, f, t in zip(queries, filters, truth, strict=True):
        c0, t0 = time.process_time(), time.perf_counter()
        ids = search(q, f)
        times.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
        got = {_idx(i) for i in ids}
        recalls.append(len(got & set(t)) / max(1, min(k, len(t))))
    # CPU time of the process per query: unlike wall time it is not inflated by other processes competing for
    # the cores (it can exceed wall time when the engine searches segments in parallel).
    cpu_pct = _percentiles(cpu)
    return {
        **_percentiles(times),
        "cpu_p50_ms": cpu_pct["p50_ms"],
        "cpu_p95_ms": cpu_pct["p95_ms"],
        "recall@10": round(float(np.mean(recalls)), 4),
    }


def _filters_for(payloads: list[dict[str, Any]], members: np.ndarray, mode: str) -> list[dict[str, str] | None]:
    if mode == "unfiltered":
        return [None] * len(members)
    key = {"product_line": "product_line", "equipment_model": "equipment_model"}[mode]
    return [{key: payloads[int(i)][key]} for i in members]


def _masks(payloads: list[dict[str, Any]], key: str) -> dict[str, np.ndarray]:
    values = np.array([p[key] for p in payloads])
    return {v: values == v for v in np.unique(values)}


# ---------------------------------------------------------------------------------------------------- one run
#: Store settings the benchmark reports (and takes from the app's ``Settings``).
STORE_SETTINGS = ("store_quantization", "store_hnsw_ef", "store_hnsw_m", "store_hnsw_ef_construct",
                  "store_full_scan_threshold_kb", "store_oversampling", "store_acorn", "store_indexing_threshold_kb")


def store_settings(settings: Settings) -> dict[str, Any]:
    """The ``RAGVQA_STORE_*`` values of a settings object (what the app's store is built and searched with)."""
    return {k: getattr(settings, k) for k in STORE_SETTINGS}


def open_bench_store(settings: Settings, root: Path, dim: int) -> EdgeStore:
    """An Edge store under ``root`` built exactly as the app builds its store from ``settings``.

    Only the location changes: a Qdrant server URL in the settings is ignored (the benchmark never touches a
    deployed collection) and the data dir is ``root``.
    """
    config = settings.model_copy(update={"data_dir": root, "qdrant_url": None}).store_config()
    store = open_store(embedder_id="bench", dim=dim, config=config)
    assert isinstance(store, EdgeStore)
    return store


def measured_config(store: EdgeStore) -> dict[str, Any]:
    """What the benchmark measured: the index config as the engine holds it and the store's search parameters."""
    engine = store.engine_config()
    return {
        "engine": {"hnsw_config": engine.get("hnsw_config"), "quantization_config": engine.get("quantization_config"),
                   "optimizers": engine.get("optimizers")},
        "search": {"hnsw_ef": store.hnsw_ef, "quantization": store.meta.quantization,
                   "rescore": store.meta.quantization, "oversampling": store.oversampling, "acorn": store.acorn},
    }


def bench_one(
    n: int,
    dim: int,
    *,
    settings: Settings | None = None,
    n_queries: int = 200,
    n_queries_local: int = 20,
    k: int = 10,
    include_local: bool = True,
    work_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Benchmark one (size, dim) on the app's store configuration (``settings``, default: the app's ``Settings()``).

    Rows: Edge exact, the shipped search (``VectorStore.search`` as the app calls it), float32 HNSW on the same
    graph (int8 ignored; it is the shipped row when quantization is off), the shipped search with ACORN flipped,
    and qdrant-client local mode. One shard serves every Edge row, so they share one (expensive) index build.
    """
    settings = settings or Settings()
    x, payloads, _ = make_dataset(n, dim, seed=seed)
    queries, members = make_queries(x, n_queries, seed=seed + 1)
    modes = ("unfiltered", "product_line", "equipment_model")
    masks = {"product_line": _masks(payloads, "product_line"), "equipment_model": _masks(payloads, "equipment_model")}
    filters = {m: _filters_for(payloads, members, m) for m in modes}
    truth = {
        m: [
            exact_topk(x, q, None if f is None else masks[m][next(iter(f.values()))], k)
            for q, f in zip(queries, filters[m], strict=True)
        ]
        for m in modes
    }
    points = [VectorPoint(id=_pid(i), vector=x[i], payload=payloads[i]) for i in range(n)]
    out: dict[str, Any] = {"n": n, "dim": dim, "n_queries": n_queries, "engines": {}}

    with tempfile.TemporaryDirectory(dir=work_dir, prefix="bench_store_") as tmp:
        store = open_bench_store(settings, Path(tmp) / "edge", dim)
        meta = store.meta
        try:
            t0 = time.perf_counter()
            store.upsert(points, batch_size=512)
            store.flush()
            out["edge_upsert_s"] = round(time.perf_counter() - t0, 2)
            t0 = time.perf_counter()
            store.optimize()
            out["edge_optimize_s"] = round(time.perf_counter() - t0, 2)
            out["edge_info"] = store.info()
            out["store_config"] = measured_config(store)
            log.info("edge %dx%d: upsert %.1fs, optimize %.1fs", n, dim, out["edge_upsert_s"], out["edge_optimize_s"])

            quant = store.meta.quantization
            shipped = "edge_hnsw_int8_rescore" if quant else "edge_hnsw_f32"
            flipped = shipped + ("_no_acorn" if store.acorn else "_acorn")
            variants: dict[str, Callable[[np.ndarray, dict[str, str] | None], list[str]]] = {
                "edge_exact": lambda q, f: [h.id for h in store.search(q, k, f, exact=True)],
                shipped: lambda q, f: [h.id for h in store.search(q, k, f)],
            }
            if quant:
                variants["edge_hnsw_f32"] = lambda q, f: [h.id for h in _edge_float_search(store, q, k, f)]
            variants[flipped] = lambda q, f: _toggled_acorn(store, q, k, f)
            out["shipped_engine"] = shipped
            for name, fn in variants.items():
                nq = n_queries if name != "edge_exact" else min(n_queries, 50)
                out["engines"][name] = {
                    m: _measure(fn, queries[:nq], filters[m][:nq], truth[m][:nq], k) for m in modes
                }
                log.info("%s: %s", name, out["engines"][name])
        finally:
            store.close()

        if include_local:
            local = ServerStore.open(location=":memory:", collection="bench", meta=meta)
            try:
                t0 = time.perf_counter()
                local.upsert(points, batch_size=512)
                out["local_upsert_s"] = round(time.perf_counter() - t0, 2)

                def local_search(q: np.ndarray, f: dict[str, str] | None) -> list[str]:
                    return [h.id for h in local.search(q, k, f)]

                nq = min(n_queries, n_queries_local)
                out["engines"]["client_local_mode"] = {
                    m: _measure(local_search, queries[:nq], filters[m][:nq], truth[m][:nq], k, warmup=1)
                    for m in modes
                }
                log.info("client_local_mode: %s", out["engines"]["client_local_mode"])
            finally:
                local.close()
    return out


def _toggled_acorn(store: EdgeStore, q: np.ndarray, k: int, f: dict[str, str] | None) -> list[str]:
    """The shipped row again with ACORN flipped, to show what it costs/buys on filtered queries."""
    store.acorn = not store.acorn
    try:
        return [h.id for h in store.search(q, k, f)]
    finally:
        store.acorn = not store.acorn


def _edge_float_search(store: EdgeStore, q: np.ndarray, k: int, f: dict[str, str] | None) -> list[Hit]:
    """HNSW search on the same shard with int8 ignored (the float32 baseline), through the engine directly; the
    other search parameters (ef, ACORN) are the store's."""
    req = qe.QueryRequest(
        limit=k,
        query=qe.Query.Nearest(check_query_vector(q, store.dim), using=VECTOR_NAME),
        filter=to_filter(validate_filters(f)),
        with_payload=True,
        params=qe.SearchParams(
            hnsw_ef=store.hnsw_ef,
            quantization=qe.QuantizationSearchParams(ignore=True),
            acorn=qe.AcornSearchParams(enable=True) if f and store.acorn else None,
        ),
    )
    return [Hit(id=str(r.id), score=float(r.score), payload=r.payload or {}) for r in store.shard.query(req)]


# ---------------------------------------------------------------------------------------------------- suite
def _pkg(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def run_store_bench(
    sizes: Sequence[int] = (10_000, 100_000),
    dims: Sequence[int] = (1024, 2048),
    *,
    settings: Settings | None = None,
    n_queries: int = 200,
    n_queries_local: int = 20,
    include_local: bool = True,
    work_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Run :func:`bench_one` over sizes x dims on the app's store settings (``settings``, default ``Settings()``,
    i.e. the ``RAGVQA_STORE_*`` environment); returns a JSON-able dict (see :func:`render_markdown`)."""
    settings = settings or Settings()
    load_start = _loadavg()
    runs = []
    for n in sizes:
        for dim in dims:
            log.info("store bench: n=%d dim=%d", n, dim)
            runs.append(
                bench_one(
                    n, dim, settings=settings, n_queries=min(n_queries, n), n_queries_local=n_queries_local,
                    include_local=include_local, work_dir=work_dir, seed=seed,
                )
            )
    app_defaults = store_settings(Settings.model_construct())  # the code defaults, without the environment
    measured = store_settings(settings)
    result = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "env": {
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "qdrant_edge_py": _pkg("qdrant-edge-py"),
            "qdrant_client": _pkg("qdrant-client"),
            "numpy": np.__version__,
            # other processes on a small shared machine inflate p95: record how busy it was
            "loadavg_1m_start": load_start,
            "loadavg_1m_end": _loadavg(),
        },
        "params": {
            "k": 10, "n_queries": n_queries, "n_queries_local": n_queries_local,
            "data": "200 gaussian clusters (spread 0.5), queries = member + noise 0.3; "
                    "product_line: 4 values (~25 %), equipment_model: 40 values (~2.5 %)",
        },
        # the app's store settings this run used, and which of them differ from the shipped defaults
        "store_settings": measured,
        "differs_from_defaults": {k: {"measured": v, "default": app_defaults[k]}
                                  for k, v in measured.items() if v != app_defaults[k]},
        "runs": runs,
    }
    result["goal"] = check_goal(result)
    return result


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def check_goal(result: dict[str, Any]) -> dict[str, Any] | None:
    """Did Edge meet the filtered-latency goal at 100k x 1024? (None when that size was not run.)"""
    run = next((r for r in result["runs"] if r["n"] == GOAL["n"] and r["dim"] == GOAL["dim"]), None)
    if run is None:
        return None
    verdicts = {}
    for name in [e for e in run["engines"] if e.startswith("edge_hnsw")]:
        rows = run["engines"].get(name, {})
        filtered = [rows[m] for m in ("product_line", "equipment_model") if m in rows]
        verdicts[name] = {
            "filtered_p95_ms": max(r["p95_ms"] for r in filtered),
            "filtered_recall@10": min(r["recall@10"] for r in filtered),
            "filtered_cpu_p95_ms": max(r.get("cpu_p95_ms", float("nan")) for r in filtered),
        }
        verdicts[name]["met"] = (
            verdicts[name]["filtered_p95_ms"] <= GOAL["p95_ms"]
            and verdicts[name]["filtered_recall@10"] >= GOAL["recall"]
        )
    return {"target": GOAL, "engines": verdicts, "met": any(v["met"] for v in verdicts.values())}


# ---------------------------------------------------------------------------------------------------- report
def render_markdown(result: dict[str, Any]) -> str:
    """Human-readable tables (one per size x dim)."""
    env, params = result["env"], result["params"]
    lines = [
        "# Vector store benchmark",
        "",
        f"{result['created_at']} · Python {env['python']} · {env['cpu_count']} CPUs · "
        f"qdrant-edge-py {env['qdrant_edge_py']} · qdrant-client {env['qdrant_client']} · "
        f"load average {env.get('loadavg_1m_start')} → {env.get('loadavg_1m_end')}",
        "",
        f"top-{params['k']}. Data: {params['data']}. Latency is measured through `VectorStore.search` (includes "
        "validation and result conversion); CPU columns are the process CPU time per query, which other processes on "
        "a busy machine do not inflate. Recall@10 is against exact numpy search with the same filter.",
        "",
        "Store built from the app's settings (`RAGVQA_STORE_*`): "
        + ", ".join(f"{k}={v}" for k, v in result["store_settings"].items())
        + (". Differs from the shipped defaults: " + ", ".join(
            f"{k} ({d['measured']} vs default {d['default']})" for k, d in result["differs_from_defaults"].items())
           if result["differs_from_defaults"] else ". These are the shipped defaults."),
        "",
    ]
    for run in result["runs"]:
        lines += [
            f"## {run['n']:,} points × {run['dim']}",
            "",
            f"Edge upsert {run.get('edge_upsert_s')} s, optimize {run.get('edge_optimize_s')} s"
            + (f"; local-mode upsert {run['local_upsert_s']} s" if "local_upsert_s" in run else ""),
            "",
            f"Measured store (engine config): `{json.dumps(run['store_config']['engine'], sort_keys=True)}`; "
            f"search: `{json.dumps(run['store_config']['search'], sort_keys=True)}`. "
            f"The app's search path (the settings above): **{run['shipped_engine']}**.",
            "",
            "| engine | query | p50 ms | p95 ms | CPU p50 ms | CPU p95 ms | recall@10 | queries |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for engine, rows in run["engines"].items():
            for mode, r in rows.items():
                label = "unfiltered" if mode == "unfiltered" else f"filter {mode}"
                name = f"{engine} (app)" if engine == run.get("shipped_engine") else engine
                lines.append(
                    f"| {name} | {label} | {r['p50_ms']:.3f} | {r['p95_ms']:.3f} | {r.get('cpu_p50_ms', float('nan')):.3f} "
                    f"| {r.get('cpu_p95_ms', float('nan')):.3f} | {r['recall@10']:.4f} | {r['n']} |"
                )
        lines.append("")
    goal = result.get("goal")
    if goal:
        t = goal["target"]
        lines += [
            f"## Goal: filtered p95 ≤ {t['p95_ms']} ms with recall@10 ≥ {t['recall']} at {t['n']:,} × {t['dim']}",
            "",
        ]
        for name, v in goal["engines"].items():
            lines.append(
                f"- {name}: worst filtered p95 {v['filtered_p95_ms']:.3f} ms (CPU {v['filtered_cpu_p95_ms']:.3f} ms), "
                f"worst filtered recall "
                f"{v['filtered_recall@10']:.4f} → {'met' if v['met'] else 'NOT met'}"
            )
        lines.append("")
    return "\n".join(lines)


def write_report(result: dict[str, Any], out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``store_bench.json`` and ``store_bench.md`` into ``out_dir`` (atomically); returns both paths."""
    return write_bench_report(result, out_dir, "store_bench", render_markdown(result))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--dims", type=int, nargs="+", default=[1024, 2048])
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--queries-local", type=int, default=20)
    p.add_argument("--no-local", action="store_true", help="skip qdrant-client local mode")
    p.add_argument("--out", default="bench-results")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # store options come from the app's settings (RAGVQA_STORE_* variables), as in the app
    result = run_store_bench(args.sizes, args.dims, n_queries=args.queries, n_queries_local=args.queries_local,
                             include_local=not args.no_local)
    for path in write_report(result, args.out):
        log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
