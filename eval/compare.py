"""Compare two finished runs: ranking metric deltas with ranx's paired significance test, plus the other measures.

Only queries both runs answered are compared (a paired test needs pairs); relevance comes from run A.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from eval import metrics as M
from eval.runner import RESULTS_FILE, read_results
from rag.errors import UserInputError

logger = logging.getLogger(__name__)


class CompareError(UserInputError, ValueError):
    """Runs that cannot be compared; the message says why."""

    code = "incomparable_runs"


def _load(path: Path) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
    path = Path(path)
    res = path if path.is_file() else path / RESULTS_FILE
    if not res.is_file():
        raise CompareError(f"{path}: no {RESULTS_FILE} (is this an eval run folder?)")
    records = read_results(res)
    if not records:
        raise CompareError(f"{res}: no results")
    summary_path = res.parent / "results.json"
    summary = json.loads(summary_path.read_text("utf-8")) if summary_path.is_file() else {}
    return res.parent.name, records, summary


def _get(d: dict[str, Any], *keys: str) -> float | None:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d if isinstance(d, (int, float)) else None


def compare_run_dirs(run_a: Path, run_b: Path, *, ranking: str = "final", stat_test: str = "student",
                     max_p: float = 0.05) -> dict[str, Any]:
    """``{"comparison": ranx comparison of B against A, "extra": {measure: (A, B)}, "queries": n}``."""
    if ranking not in M.RANKINGS:
        raise CompareError(f"ranking must be one of {', '.join(M.RANKINGS)}, got {ranking!r}")
    name_a, recs_a, sum_a = _load(run_a)
    name_b, recs_b, sum_b = _load(run_b)
    if name_a == name_b:
        name_a, name_b = f"A:{name_a}", f"B:{name_b}"
    by_b = {r["id"]: r for r in recs_b}
    common = [r for r in recs_a if r["id"] in by_b and r.get("relevant")]
    only = len({r["id"] for r in recs_a} ^ set(by_b))
    if only:
        logger.warning("%d queries are in only one of the runs; comparing the %d common ones", only, len(common))
    if len(common) < 2:
        raise CompareError(f"the runs share {len(common)} scorable queries; a paired test needs at least 2")
    if ranking == "rerank" and not all(r.get("rerank") for r in common + [by_b[r["id"]] for r in common]):
        raise CompareError("ranking 'rerank' needs both runs to have reranked results (use --ranking final)")
    qrels = M.build_qrels(common)
    run_a_obj = M.build_run(common, ranking, name=name_a)
    run_b_obj = M.build_run([by_b[r["id"]] for r in common], ranking, name=name_b)
    cmp = M.compare_runs(qrels, [run_a_obj, run_b_obj], stat_test=stat_test, max_p=max_p)
    extra: dict[str, tuple[float | None, float | None]] = {}
    for label, keys in (("answers: key-fact recall", ("answers", "key_fact_recall")),
                        ("answers: citation precision", ("answers", "citation_precision")),
                        ("answers: citation recall", ("answers", "citation_recall")),
                        ("latency: total p50 ms", ("latency", "total", "p50")),
                        ("latency: total p95 ms", ("latency", "total", "p95"))):
        a, b = _get(sum_a, *keys), _get(sum_b, *keys)
        if a is not None or b is not None:
            extra[label] = (a, b)
    abst_a, abst_b = sum_a.get("abstention") or {}, sum_b.get("abstention") or {}
    if abst_a or abst_b:
        ka, kb = abst_a.get("decision_kind"), abst_b.get("decision_kind")
        extra["abstention: best F1"] = (_get(abst_a, ka, "best", "f1") if ka else None, _get(abst_b, kb, "best", "f1") if kb else None)
        extra["abstention: F1 at configured threshold"] = (_get(abst_a, ka, "configured", "f1") if ka else None,
                                                          _get(abst_b, kb, "configured", "f1") if kb else None)
    return {"comparison": cmp, "extra": extra, "queries": len(common), "runs": [str(run_a), str(run_b)], "ranking": ranking}
