"""Metrics: ranking metrics and significance tests through ranx, abstention, answers and latency.

Ranking metrics are never re-implemented here: per-query records become ranx ``Qrels``/``Run`` objects and ranx
computes the numbers (``hit_rate@k`` is what the reports call Hit@k). Everything else (abstention, citations,
key facts, latency) is small arithmetic that ranx does not cover.
"""

from __future__ import annotations

import logging
import math
import re
import unicodedata
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

logger = logging.getLogger(__name__)

#: The metrics of every report (ranx names). nDCG@5 is what ViDoRe publishes; the rest is the issue's list.
METRICS: tuple[str, ...] = ("recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@5", "ndcg@10",
                            "hit_rate@1", "hit_rate@5", "hit_rate@10")
#: Metrics the statistical comparisons report (the headline subset).
COMPARE_METRICS: tuple[str, ...] = ("recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10")
RANKINGS = ("retrieval", "rerank", "final")


def metric_label(name: str) -> str:
    """``hit_rate@5`` -> ``Hit@5``, ``mrr@10`` -> ``MRR@10``, ``ndcg@10`` -> ``nDCG@10``."""
    base, _, k = name.partition("@")
    label = {"recall": "Recall", "mrr": "MRR", "ndcg": "nDCG", "hit_rate": "Hit", "precision": "P", "map": "MAP"}.get(base, base)
    return f"{label}@{k}" if k else label


def _ranx() -> Any:
    import ranx

    return ranx


# -- ranking metrics ---------------------------------------------------------------------------------------------
def build_qrels(records: Iterable[Mapping[str, Any]]) -> Any:
    """ranx ``Qrels`` from records that have graded relevance (out-of-KB queries have none and are left out)."""
    data = {r["id"]: {d: int(g) for d, g in r["relevant"].items() if g > 0} for r in records if r.get("relevant")}
    data = {q: rel for q, rel in data.items() if rel}
    if not data:
        raise ValueError("no query with relevance judgements: nothing to score")
    return _ranx().Qrels(data, name="qrels")


def ranking_of(record: Mapping[str, Any], which: str) -> list[list[Any]] | None:
    """A record's ranking as ``[[doc_id, score], ...]``: ``final`` is the reranked one when there is one."""
    if which == "final":
        return record.get("rerank") or record.get("retrieval")
    return record.get(which)


def build_run(records: Iterable[Mapping[str, Any]], which: str = "final", name: str | None = None) -> Any:
    """ranx ``Run`` from the records' rankings (queries with an empty ranking get no entry: ranx scores them 0)."""
    if which not in RANKINGS:
        raise ValueError(f"ranking must be one of {RANKINGS}, got {which!r}")
    data: dict[str, dict[str, float]] = {}
    for r in records:
        ranking = ranking_of(r, which)
        if ranking:
            # ranx orders by score; equal scores would lose our order, so break ties by a vanishing rank term.
            data[r["id"]] = {doc: float(score) - i * 1e-9 for i, (doc, score) in enumerate(ranking)}
    return _ranx().Run(data, name=name or which)


def evaluate(qrels: Any, run: Any, metrics: Sequence[str] = METRICS) -> dict[str, float]:
    """Mean metric values (ranx), with queries missing from the run scored 0 and extra ones ignored."""
    ranx = _ranx()
    if not run.keys():
        return {m: 0.0 for m in metrics}
    out = ranx.evaluate(qrels, run, list(metrics), make_comparable=True)
    if isinstance(out, (float, np.floating)):
        out = {metrics[0]: out}
    return {m: float(v) for m, v in out.items()}


def recall_curve(qrels: Any, run: Any, max_k: int) -> dict[int, float]:
    """Recall@k for k = 1..max_k (one ranx call)."""
    ks = list(range(1, max_k + 1))
    vals = evaluate(qrels, run, [f"recall@{k}" for k in ks])
    return {k: vals[f"recall@{k}"] for k in ks}


def compare_runs(qrels: Any, runs: Sequence[Any], metrics: Sequence[str] = COMPARE_METRICS,
                 stat_test: str = "student", max_p: float = 0.05) -> dict[str, Any]:
    """ranx ``compare`` of run 0 (baseline) against the others: scores, deltas, p-values, win/tie/loss.

    ``student`` is the two-sided paired t-test, ``fisher`` the randomisation test (ranx's names).
    """
    ranx = _ranx()
    if len(runs) < 2:
        raise ValueError("compare needs at least two runs")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"runs need distinct names to be compared, got {names}")
    report = ranx.compare(qrels, list(runs), list(metrics), stat_test=stat_test, max_p=max_p,
                          make_comparable=True, rounding_digits=4)
    d = report.to_dict()
    base = names[0]
    out: dict[str, Any] = {"stat_test": stat_test, "max_p": max_p, "baseline": base, "n_queries": len(qrels.keys()),
                           "scores": {n: {m: float(d[n]["scores"][m]) for m in metrics} for n in names}, "against": {}}
    for other in names[1:]:
        rows = {}
        for m in metrics:
            a, b = float(d[base]["scores"][m]), float(d[other]["scores"][m])
            p: float | None = float(d[base]["comparisons"][other][m])
            if p is not None and math.isnan(p):  # every query tied: the test is undefined, nothing to reject
                p = None
            wtl = d[other]["win_tie_loss"][base][m]
            rows[m] = {"baseline": a, "value": b, "delta": b - a, "p_value": p, "significant": bool(p is not None and p < max_p),
                       "win": int(wtl["W"]), "tie": int(wtl["T"]), "loss": int(wtl["L"])}
        out["against"][other] = rows
    return out


# -- abstention ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AbstentionPoint:
    """Abstention quality at one threshold; the positive class is "should abstain" (out-of-KB query)."""

    threshold: float
    precision: float
    recall: float
    f1: float
    abstain_rate: float
    tp: int
    fp: int
    fn: int
    tn: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _score(s: float | None) -> float:
    return -math.inf if s is None or (isinstance(s, float) and math.isnan(s)) else float(s)


def abstention_at(scores: Sequence[float | None], expect: Sequence[bool], threshold: float) -> AbstentionPoint:
    """The app abstains when the best score is below ``threshold`` (no candidate at all: it always abstains)."""
    if len(scores) != len(expect):
        raise ValueError("scores and labels differ in length")
    pred = [_score(s) < threshold for s in scores]
    tp = sum(p and e for p, e in zip(pred, expect, strict=False))
    fp = sum(p and not e for p, e in zip(pred, expect, strict=False))
    fn = sum((not p) and e for p, e in zip(pred, expect, strict=False))
    tn = len(pred) - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return AbstentionPoint(float(threshold), precision, recall, f1, (tp + fp) / len(pred) if pred else 0.0, tp, fp, fn, tn)


def candidate_thresholds(scores: Sequence[float | None]) -> list[float]:
    """Every threshold that changes a decision: the lowest score (abstain on none), the midpoints between
    neighbouring scores, and just above the highest (abstain on all).

    Midpoints put the chosen threshold in the middle of the gap, not on a score, so it is not overfitted to one.
    """
    vals = sorted({_score(s) for s in scores if math.isfinite(_score(s))})
    if not vals:
        return [0.0]
    mids = [(a + b) / 2 for a, b in zip(vals, vals[1:], strict=False)]
    return [vals[0], *mids, float(np.nextafter(vals[-1], math.inf))]


def threshold_sweep(scores: Sequence[float | None], expect: Sequence[bool]) -> tuple[list[AbstentionPoint], AbstentionPoint]:
    """All candidate thresholds and the F1-best one (ties: the lowest threshold, i.e. the fewest abstentions)."""
    points = [abstention_at(scores, expect, t) for t in candidate_thresholds(scores)]
    best = points[0]
    for p in points[1:]:
        if p.f1 > best.f1 + 1e-12:
            best = p
    return points, best


# -- answers ------------------------------------------------------------------------------------------------------
def normalise_text(text: str) -> str:
    """NFKC, case-folded, punctuation to spaces, spaces collapsed: "E-204," and "e 204" compare equal."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"[^\w]+", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def key_fact_recall(answer: str, facts: Sequence[str]) -> float | None:
    """Share of key facts found in the answer by normalised substring match (None when there are no facts)."""
    if not facts:
        return None
    ans = f" {normalise_text(answer)} "
    hits = sum(1 for f in facts if normalise_text(f) and f" {normalise_text(f)} " in ans)
    return hits / len(facts)


def citation_scores(cited: Sequence[str], relevant: Mapping[str, int]) -> tuple[float | None, float | None]:
    """(precision, recall) of cited case ids.

    Precision counts a citation as right when the case is relevant at any grade (citing a near duplicate is not
    wrong); recall asks for the top-graded cases only (the answer must rest on *the* case). Precision is None
    when nothing was cited, recall None when the query has no relevant case.
    """
    rel = {d: g for d, g in relevant.items() if g > 0}
    cited = list(dict.fromkeys(cited))
    precision = (sum(1 for c in cited if c in rel) / len(cited)) if cited else None
    if not rel:
        return precision, None
    top = max(rel.values())
    gold = {d for d, g in rel.items() if g == top}
    return precision, len(gold & set(cited)) / len(gold)


JUDGE_PROMPT = (
    "You grade answers of a support-desk assistant. Compare the ANSWER with the REFERENCE answer. "
    "Reply with one digit from 1 to 5 and nothing else: 5 = same diagnosis and fix, 3 = partly right, "
    "1 = wrong or no diagnosis."
)


def judge_messages(question: str, reference: str, answer: str) -> list[dict[str, Any]]:
    """Chat messages asking the generator for a 1-5 grade of ``answer`` against ``reference``."""
    return [
        {"role": "system", "content": JUDGE_PROMPT},
        {"role": "user", "content": f"QUESTION:\n{question or '(photo only)'}\n\nREFERENCE:\n{reference}\n\nANSWER:\n{answer}\n\nGrade:"},
    ]


def parse_judge_score(text: str) -> int | None:
    """The first grade 1-5 of the judge's reply: a digit standing alone, so "10" or "2024" is no grade of 1 or 2
    (None when it gave none)."""
    m = re.search(r"(?<!\d)[1-5](?!\d)", text)
    return int(m.group()) if m else None


# -- latency -------------------------------------------------------------------------------------------------------
def percentiles(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    if arr.size == 0:
        return {"n": 0, "p50": float("nan"), "p95": float("nan"), "mean": float("nan")}
    return {"n": int(arr.size), "p50": float(np.percentile(arr, 50)), "p95": float(np.percentile(arr, 95)),
            "mean": float(arr.mean())}


def latency_summary(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """p50/p95/mean per pipeline stage (ms) over the records' traces, stages in pipeline order."""
    by_stage: dict[str, list[float]] = {}
    for r in records:
        for stage, ms in (r.get("latency_ms") or {}).items():
            by_stage.setdefault(stage, []).append(float(ms))
    order = ["embed", "search", "fetch", "rerank", "abstain", "generate", "first_token", "total"]
    stages = sorted(by_stage, key=lambda s: (order.index(s) if s in order else len(order), s))
    return {s: percentiles(by_stage[s]) for s in stages}


def mean_of(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None
