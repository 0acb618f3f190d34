"""``ragvqa bench kb``: speed of the knowledge-base intelligence at 1k and 100k cases (issue 13's Speed goals).

Data: synthetic planted vectors (``N_CLUSTERS`` fault families, a text point and an image point per case, payloads
shaped like ingestion's, with a full case record) written through the real Qdrant Edge store at the real dimension
(2048, the 2B embedder's full size) and optimised (HNSW + int8, the app's store defaults) unless ``--no-optimize``.
Timed, all on stored vectors (no model call):

* ``related``: ``knowledge_base.related.related_cases(store, case_id, limit=5)`` for random cases — goal p95 ≤ 20 ms;
* ``labels``: ``knowledge_base.labels.suggest_labels(store, vectors=<the case's stored vectors>,
  exclude_case_id=...)``: the neighbour vote beyond the one embedding (zero-shot needs the query embedding and a few
  cached label vectors, not measured here) — goal p95 ≤ 10 ms;
* ``clusters``: ``compute_clusters`` on the whole store in a child process so its peak RSS is its own: cold (every
  vector read from the store) and warm (the case-vector cache of the cold run; payloads still read) — goal ≤ 60 s;
* ``assign``: ``ClusterModel.assign`` of one case vector (goal ≤ 10 ms) and ``assign_case`` (its stored points read
  first).

Run: ``ragvqa bench kb --size 1000 --size 100000`` (JSON + markdown into ``bench-results/``). The 100k store build
(upsert + HNSW at 2048 dims) takes many minutes on 2 cores: ``--work-dir`` keeps it for the next run.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import platform
import resource
import shutil
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from eval.bench_report import write_bench_report

logger = logging.getLogger(__name__)

GOALS = {"n_cases": 100_000, "related_p95_ms": 20.0, "labels_p95_ms": 10.0, "clusters_s": 60.0, "clusters_warm_s": 60.0,
         "assign_ms": 10.0}
STORE_FORMAT = 1
N_CLUSTERS = 200
FAKE_IMAGES = [(f"img/case-{i:03d}.jpg", f"thumbs/case-{i:03d}.jpg") for i in range(24)]


def _percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms, dtype=np.float64)
    return {"p50": round(float(np.percentile(a, 50)), 3), "p95": round(float(np.percentile(a, 95)), 3),
            "max": round(float(a.max()), 3), "n": len(ms)}


def build_store(root: Path, n_cases: int, dim: int, *, optimize: bool = True, seed: int = 0,
                batch: int = 1024) -> dict[str, Any]:
    """Write (or reuse) the planted store under ``root``; returns build info. The store is closed afterwards."""
    from eval.bench_pipeline import N_MODELS, case_payloads
    from rag.store import point_id
    from rag.store.base import StoreMeta, VectorPoint
    from rag.store.edge import EdgeStore

    marker = root / "complete.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        if info.get("format") == STORE_FORMAT and info.get("n_cases") == n_cases and info.get("dim") == dim \
                and info.get("optimized") == optimize:
            return {**info, "reused": True}
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(N_CLUSTERS, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    cluster = rng.integers(0, N_CLUSTERS, size=n_cases)
    model = np.where(rng.random(n_cases) < 0.8, cluster % N_MODELS, rng.integers(0, N_MODELS, size=n_cases))
    store = EdgeStore.open(root / "qdrant", StoreMeta(embedder_id="bench", dim=dim))
    prng = np.random.default_rng(seed + 1)
    t0 = time.perf_counter()
    try:
        for s in range(0, n_cases, batch):
            idx = np.arange(s, min(s + batch, n_cases))
            noise = np.random.default_rng(seed * 7919 + s).normal(scale=0.6 / np.sqrt(dim), size=(2, len(idx), dim))
            text = centres[cluster[idx]] + noise[0].astype(np.float32)
            img = centres[cluster[idx]] + noise[1].astype(np.float32)
            pts = []
            for j, i in enumerate(idx):
                tp, mp_ = case_payloads(int(i), int(model[i]), prng, FAKE_IMAGES)
                pts.append(VectorPoint(id=point_id(tp["case_id"]), vector=text[j], payload=tp))
                pts.append(VectorPoint(id=point_id(tp["case_id"], mp_["media_id"]), vector=img[j], payload=mp_))
            store.upsert(pts, batch_size=len(pts))
        upsert_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        if optimize:
            store.optimize()
        store.flush()
        info = {"format": STORE_FORMAT, "n_cases": n_cases, "points": 2 * n_cases, "dim": dim, "optimized": optimize,
                "upsert_s": round(upsert_s, 1), "optimize_s": round(time.perf_counter() - t0, 1)}
    finally:
        store.close()
    marker.write_text(json.dumps(info))
    return {**info, "reused": False}


def _cluster_child(store_dir: str, cache_dir: str, queue: Any) -> None:
    """Child process: open the store, cluster it cold (no case-vector cache) then warm (cache from the cold run);
    report seconds, phase split, peak RSS and the model."""
    from knowledge_base.clusters import case_vectors, compute_clusters
    from rag.store.edge import EdgeStore

    shutil.rmtree(cache_dir, ignore_errors=True)
    store = EdgeStore.open(Path(store_dir))
    load_before = [round(x, 2) for x in os.getloadavg()]
    try:
        t0 = time.perf_counter()
        cv = case_vectors(store, cache_dir=cache_dir)
        t1 = time.perf_counter()
        report, model = compute_clusters(store, cases=cv)
        t2 = time.perf_counter()
        peak_cold = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        del cv
        t3 = time.perf_counter()
        cv = case_vectors(store, cache_dir=cache_dir)
        t4 = time.perf_counter()
        compute_clusters(store, cases=cv)
        t5 = time.perf_counter()
    finally:
        store.close()
    queue.put({"seconds": round(t2 - t0, 2), "read_s": round(t1 - t0, 2), "compute_s": round(t2 - t1, 2),
               "warm_seconds": round(t5 - t3, 2), "warm_read_s": round(t4 - t3, 2),
               "warm_read_from_store": cv.read_from_store,
               "peak_rss_mb": round(peak_cold, 1),
               "peak_rss_mb_after_warm": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
               "n_clusters": report.n_clusters, "n_unclustered": report.n_unclustered,
               "fitted_on": report.fitted_on, "merge_candidates": len(report.merge_candidates),
               "load_average": {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]},
               "model": {"cluster_ids": model.cluster_ids.tolist(), "centroids": model.centroids.tolist(),
                         "thresholds": model.thresholds.tolist()}})


def bench_size(n_cases: int, *, dim: int, n_queries: int, work_dir: Path, optimize: bool = True,
               seed: int = 0) -> dict[str, Any]:
    from knowledge_base.clusters import ClusterModel, ClusterSettings, assign_case, case_vector
    from knowledge_base.labels import suggest_labels
    from knowledge_base.related import related_cases
    from rag.store.edge import EdgeStore

    root = work_dir / f"kb-{n_cases}-{dim}-{'hnsw' if optimize else 'flat'}"
    info = build_store(root, n_cases, dim, optimize=optimize, seed=seed)
    logger.info("store %s: %s", root, info)
    # clustering first, in its own process (Edge allows one process per store: the parent has it closed now)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    child = ctx.Process(target=_cluster_child, args=(str(root / "qdrant"), str(root / "cluster-cache"), q))
    child.start()
    clusters = q.get()
    child.join()
    m = clusters.pop("model")
    model = ClusterModel(cluster_ids=np.asarray(m["cluster_ids"]), centroids=np.asarray(m["centroids"], dtype=np.float32),
                         thresholds=np.asarray(m["thresholds"], dtype=np.float32), embedder_id="bench", dim=dim,
                         created_at="", n_cases=n_cases, settings=ClusterSettings())
    store = EdgeStore.open(root / "qdrant")
    try:
        rng = np.random.default_rng(seed + 5)
        ids = [f"case-{int(i):07d}" for i in rng.integers(0, n_cases, size=n_queries + 10)]
        for _ in store.scroll(batch_size=1024, with_vectors=True):  # page cache warm, as in a running server
            pass
        related_ms, labels_ms, assign_ms, assign_case_ms = [], [], [], []
        for k, cid in enumerate(ids):
            t0 = time.perf_counter()
            related_cases(store, cid, limit=5)
            t1 = time.perf_counter()
            vecs = np.stack([p.vector for p in store.scroll(filters={"case_id": cid}, with_vectors=True,
                                                           payload_keys=["kind"]) if p.vector is not None])
            t2 = time.perf_counter()
            suggest_labels(store, vectors=vecs, exclude_case_id=cid)
            t3 = time.perf_counter()
            model.assign(case_vector(vecs[0], list(vecs[1:])))
            t4 = time.perf_counter()
            assign_case(store, model, cid)
            t5 = time.perf_counter()
            if k >= 10:
                related_ms.append((t1 - t0) * 1000)
                labels_ms.append((t3 - t2) * 1000)
                assign_ms.append((t4 - t3) * 1000)
                assign_case_ms.append((t5 - t4) * 1000)
    finally:
        store.close()
    return {"n_cases": n_cases, "points": 2 * n_cases, "dim": dim, "build": info,
            "related_ms": _percentiles(related_ms), "labels_ms": _percentiles(labels_ms),
            "assign_ms": _percentiles(assign_ms), "assign_case_ms": _percentiles(assign_case_ms),
            "clusters": clusters}


def run_kb_bench(sizes: Sequence[int] = (1_000, 100_000), *, dim: int = 2048, n_queries: int = 200,
                 work_dir: str | os.PathLike[str] | None = None, optimize: bool = True) -> dict[str, Any]:
    tmp = tempfile.TemporaryDirectory(prefix="ragvqa-bench-kb-") if work_dir is None else None
    wd = Path(tmp.name if tmp else work_dir)  # type: ignore[arg-type]
    wd.mkdir(parents=True, exist_ok=True)
    try:
        runs = [bench_size(n, dim=dim, n_queries=n_queries, work_dir=wd, optimize=optimize) for n in sizes]
    finally:
        if tmp is not None:
            tmp.cleanup()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    result = {"created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "env": {"python": platform.python_version(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
                      "load_average": load},
              "params": {"dim": dim, "n_queries": n_queries, "optimize": optimize, "families": N_CLUSTERS,
                         "related_limit": 5},
              "runs": runs}
    result["goal"] = check_goal(result)
    return result


def check_goal(result: dict[str, Any]) -> dict[str, Any] | None:
    run = next((r for r in result["runs"] if r["n_cases"] == GOALS["n_cases"]), None)
    if run is None:
        return None
    got = {"related_p95_ms": run["related_ms"]["p95"], "labels_p95_ms": run["labels_ms"]["p95"],
           "clusters_s": run["clusters"]["seconds"], "clusters_warm_s": run["clusters"]["warm_seconds"],
           "assign_ms": run["assign_ms"]["p95"]}
    return {k: {"goal": GOALS[k], "measured": v, "met": v <= GOALS[k]} for k, v in got.items()}


def render_markdown(result: dict[str, Any]) -> str:
    p = result["params"]
    lines = ["# Knowledge-base intelligence speed (stored vectors, no model call)", "",
             f"{result['created_at']} · {result['env']['cpu_count']} CPUs (load {result['env']['load_average']}) · "
             f"dim {p['dim']} · {p['n_queries']} timed calls per size · store "
             f"{'HNSW + int8 (optimised)' if p['optimize'] else 'not optimised (flat scan)'}", "",
             "| cases | related p50/p95 ms | labels p50/p95 ms | assign p50/p95 ms | assign_case p50/p95 ms | "
             "clustering cold s (read + compute) | clustering warm s (read) | peak RSS MB | clusters / unclustered |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["runs"]:
        c = r["clusters"]
        cells = [f"{r[k]['p50']:.2f} / {r[k]['p95']:.2f}" for k in ("related_ms", "labels_ms", "assign_ms", "assign_case_ms")]
        lines.append(f"| {r['n_cases']:,} | " + " | ".join(cells) + f" | {c['seconds']:.1f} ({c['read_s']:.1f} + "
                     f"{c['compute_s']:.1f}) | {c['warm_seconds']:.1f} ({c['warm_read_s']:.1f}) | {c['peak_rss_mb']:.0f} | "
                     f"{c['n_clusters']} / {c['n_unclustered']} |")
    lines.append("")
    for r in result["runs"]:
        b = r["build"]
        how = "reused" if b.get("reused") else f"upsert {b.get('upsert_s')} s + optimize {b.get('optimize_s')} s"
        la = r["clusters"].get("load_average")
        load = f"; load average {la['before']} → {la['after']} around the clustering" if la else ""
        lines.append(f"- {r['n_cases']:,} cases = {r['points']:,} points × {r['dim']}: store {how}; HDBSCAN fitted on "
                     f"{r['clusters']['fitted_on']:,} cases{load}")
    g = result.get("goal")
    if g:
        lines += ["", "**Goals at 100k cases:** " + "; ".join(
            f"{k} ≤ {v['goal']} → {v['measured']} ({'met' if v['met'] else 'NOT met'})" for k, v in g.items())]
    lines += ["", "related = related_cases(limit=5) on the case's stored points; labels = suggest_labels' neighbour "
              "vote from the case's stored vectors (the query embedding is not timed); assign = ClusterModel.assign of "
              "one case vector; assign_case = the same after reading the case's points from the store; clustering = "
              "compute_clusters on the whole store in a child process: cold = every vector read from the store, warm = "
              "a rerun with the case-vector cache under data_dir/clusters (only payloads read); peak RSS is that "
              "process's (it counts the store's memory-mapped files it touched, so it moves with the page cache)."]
    return "\n".join(lines) + "\n"


def write_report(result: dict[str, Any], out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    return write_bench_report(result, out_dir, "kb_bench", render_markdown(result))
