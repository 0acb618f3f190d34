"""``ragvqa eval kb``: how well the knowledge-base intelligence recovers the sample KB's ground truth.

The ground truth is in the sample catalog (``knowledge_base/sample/cases.json``): a fault ``family`` per case and a
list of known ``related_pairs``; the label fields are the cases' own product line, equipment model, severity and tags.
The sample KB is imported (through the real importer, with the given embedder) into its own store under the output
folder; everything below only reads that store.

* **Suggested labels, leave-one-out**: for every case, ``suggest_labels(kb, vectors=<its stored vectors>,
  exclude_case_id=<it>)``; the top suggestion per single-valued field (none below the confidence floor: counted as
  wrong), macro-F1 per field over the values present (``sklearn.metrics.f1_score``), plus coverage (share of cases
  given a suggestion) and accuracy where one was given; tags are multi-label (macro-F1 over the true tags).
  Zero-shot candidates are the values present in the store, so a value that only the left-out case carries can still
  be proposed by zero-shot: a small optimistic leak, stated in the report.
* **Clusters**: ``compute_clusters`` on the store; agreement with the families by NMI and ARI
  (``sklearn.metrics``), unclustered cases counted as singletons (HDBSCAN leaves one-off faults out by design).
* **Related cases**: for every case in a known pair, ``related_cases(kb, case_id, limit=k)``; precision@k and
  recall@k against its known partners, averaged over those cases.

With tiny random models the numbers only show that the harness runs ("mechanics only").
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from eval.report import write_json

if TYPE_CHECKING:
    from knowledge_base.kb import KnowledgeBase
    from rag.config import Settings
    from rag.models.protocols import EmbeddingModel

logger = logging.getLogger(__name__)

SINGLE_FIELDS = ("product_line", "equipment_model", "severity")
NONE = "(no suggestion)"
MECHANICS_NOTE = ("**Mechanics only**: these numbers come from random-weight tiny models; they show that the "
                  "evaluation runs end to end and mean nothing about label, cluster or related-case quality.")


class KBEvalError(RuntimeError):
    """The evaluation cannot run (no ground truth, empty KB...); the message says why."""


def ground_truth() -> tuple[dict[str, str], list[tuple[str, str]]]:
    """(case id -> family, related pairs) from the shipped sample catalog; cases without a family are left out."""
    from knowledge_base.sample.builder import sample_catalog
    from knowledge_base.sample.catalog import load_catalog

    en = load_catalog()
    both, _zh = sample_catalog()
    families = {c.id: c.family for c in en.cases if c.family}
    # A Chinese case names its family as "like:<English case id>": the family of that case.
    for c in both.cases:
        if c.id not in families and c.family:
            like = c.family.removeprefix("like:")
            families[c.id] = families.get(like, c.family) if c.family.startswith("like:") else c.family
    return families, [(a, b) for a, b in en.related_pairs]


def open_sample_kb(settings: Settings, embedder: EmbeddingModel, work_dir: Path) -> KnowledgeBase:
    """The sample KB imported into its own store under ``work_dir/kb`` (idempotent: a complete one is reused)."""
    from knowledge_base.kb import KnowledgeBase

    kb_settings = settings.model_copy(update={"data_dir": work_dir / "kb"})
    kb = KnowledgeBase.open(kb_settings, embedder)  # type: ignore[arg-type]
    if kb.count_cases() == 0:
        t0 = time.perf_counter()
        kb.ensure_sample(Path(settings.data_dir) / "sample")
        logger.info("sample KB imported for the KB eval in %.1f s", time.perf_counter() - t0)
    return kb


def _case_vectors(kb: KnowledgeBase, case_id: str) -> np.ndarray:
    pts = [p.vector for p in kb.store.scroll(filters={"case_id": case_id}, with_vectors=True, payload_keys=["kind"])
           if p.vector is not None]
    return np.stack(pts)


def eval_labels(kb: KnowledgeBase, case_ids: list[str]) -> dict[str, Any]:
    """Leave-one-out label suggestions: macro-F1, coverage and accuracy-when-suggested per field."""
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import MultiLabelBinarizer

    from knowledge_base.labels import suggest_labels

    truth: dict[str, list[str]] = {f: [] for f in SINGLE_FIELDS}
    pred: dict[str, list[str]] = {f: [] for f in SINGLE_FIELDS}
    true_tags: list[list[str]] = []
    pred_tags: list[list[str]] = []
    for cid in case_ids:
        case = kb.get(cid)
        if case is None:
            continue
        sugg = suggest_labels(kb, vectors=_case_vectors(kb, cid), exclude_case_id=cid)
        for f in SINGLE_FIELDS:
            value = getattr(case, f) or NONE
            truth[f].append(value)
            best = [s for s in sugg if s.field == f]
            pred[f].append(best[0].value if best else NONE)
        true_tags.append(list(case.tags))
        pred_tags.append([s.value for s in sugg if s.field == "tags"])
    out: dict[str, Any] = {}
    for f in SINGLE_FIELDS:
        labels = sorted(set(truth[f]) - {NONE})
        given = [i for i, p in enumerate(pred[f]) if p != NONE]
        out[f] = {
            "macro_f1": round(float(f1_score(truth[f], pred[f], labels=labels, average="macro", zero_division=0)), 4)
            if labels else None,
            "coverage": round(len(given) / len(pred[f]), 4) if pred[f] else None,
            "accuracy_when_suggested": round(sum(truth[f][i] == pred[f][i] for i in given) / len(given), 4)
            if given else None,
            "n": len(truth[f]), "n_labels": len(labels),
        }
    mlb = MultiLabelBinarizer()
    mlb.fit(true_tags + pred_tags)
    tags_true, tags_pred = mlb.transform(true_tags), mlb.transform(pred_tags)
    present = [j for j in range(tags_true.shape[1]) if tags_true[:, j].any()] if true_tags else []
    out["tags"] = {
        "macro_f1": round(float(f1_score(tags_true[:, present], tags_pred[:, present], average="macro",
                                         zero_division=0)), 4) if present else None,
        "coverage": round(sum(bool(p) for p in pred_tags) / len(pred_tags), 4) if pred_tags else None,
        "n": len(true_tags), "n_labels": len(present),
    }
    return out


def eval_clusters(kb: KnowledgeBase, families: dict[str, str], min_cluster_size: int,
                  map_png: Path | None = None) -> dict[str, Any]:
    """NMI / ARI of the clusters against the families (unclustered = singletons)."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    from knowledge_base.clusters import ClusterSettings, compute_clusters, plot_map

    report, _ = compute_clusters(kb.store, ClusterSettings(min_cluster_size=min_cluster_size))
    if map_png is not None:
        plot_map(report, map_png)
    ids = [c for c in report.assignments if c in families]
    if not ids:
        raise KBEvalError("no stored case has a ground-truth family: is this the sample knowledge base?")
    got = [f"c{report.assignments[c]}" if report.assignments[c] is not None else f"single:{c}" for c in ids]
    want = [families[c] for c in ids]
    return {"nmi": round(float(normalized_mutual_info_score(want, got)), 4),
            "ari": round(float(adjusted_rand_score(want, got)), 4),
            "n_cases": len(ids), "n_families": len(set(want)), "n_clusters": report.n_clusters,
            "n_unclustered": sum(report.assignments[c] is None for c in ids),
            "min_cluster_size": min_cluster_size}


def eval_related(kb: KnowledgeBase, pairs: list[tuple[str, str]], k: int) -> dict[str, Any]:
    """Precision@k and recall@k of ``related_cases`` against the known pairs."""
    from knowledge_base.related import related_cases

    partners: dict[str, set[str]] = {}
    for a, b in pairs:
        partners.setdefault(a, set()).add(b)
        partners.setdefault(b, set()).add(a)
    stored = kb.store.case_ids()
    prec, rec, per_case = [], [], {}
    for cid in sorted(partners):
        if cid not in stored:
            continue
        got = [r.case_id for r in related_cases(kb, cid, limit=k)]
        hits = len(set(got[:k]) & partners[cid])
        prec.append(hits / k)
        rec.append(hits / len(partners[cid]))
        per_case[cid] = {"related": got, "known": sorted(partners[cid]), "hits": hits}
    if not prec:
        raise KBEvalError("none of the known related pairs is in the knowledge base")
    ideal = float(np.mean([min(len(p), k) / k for c, p in partners.items() if c in stored]))
    return {"k": k, "precision_at_k": round(float(np.mean(prec)), 4), "recall_at_k": round(float(np.mean(rec)), 4),
            "best_possible_precision_at_k": round(ideal, 4), "n_cases": len(prec), "per_case": per_case}


def run_kb_eval(settings: Settings, embedder: EmbeddingModel, out_dir: Path, *, k: int = 5,
                min_cluster_size: int = 2, models: str = "real") -> dict[str, Any]:
    """Run the three parts on the sample KB; writes results.json, report.md and plots/ under ``out_dir``."""
    families, pairs = ground_truth()
    if not families:
        raise KBEvalError("the sample catalog has no fault families (cases.json 'family')")
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = out_dir / "plots"
    plots.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    with open_sample_kb(settings, embedder, out_dir) as kb:
        ids = sorted(kb.store.case_ids())
        if not ids:
            raise KBEvalError("the sample knowledge base is empty after import")
        t_labels = time.perf_counter()
        labels = eval_labels(kb, ids)
        t_clusters = time.perf_counter()
        clusters = eval_clusters(kb, families, min_cluster_size, plots / "kb_map.png")
        t_related = time.perf_counter()
        related = eval_related(kb, pairs, k)
        t_end = time.perf_counter()
        embedder_id = kb.store.meta.embedder_id
    result = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "models": models, "embedder": embedder_id, "n_cases": len(ids),
        "families": dict(Counter(families.values())), "n_related_pairs": len(pairs),
        "labels": labels, "clusters": clusters, "related": related,
        "seconds": {"import": round(t_labels - t0, 2), "labels": round(t_clusters - t_labels, 2),
                    "clusters": round(t_related - t_clusters, 2), "related": round(t_end - t_related, 2)},
    }
    write_json(result, out_dir / "results.json")
    _plot(result, plots / "kb_eval.png")
    (out_dir / "report.md").write_text(render_markdown(result), "utf-8")
    return result


def _plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, values = [], []
    for f in (*SINGLE_FIELDS, "tags"):
        names.append(f"F1 {f}")
        values.append(result["labels"][f]["macro_f1"] or 0.0)
    names += ["NMI", "ARI", f"P@{result['related']['k']}", f"R@{result['related']['k']}"]
    values += [result["clusters"]["nmi"], max(0.0, result["clusters"]["ari"]), result["related"]["precision_at_k"],
               result["related"]["recall_at_k"]]
    fig, ax = plt.subplots(figsize=(8, 4), dpi=110)
    ax.bar(range(len(names)), values, color=["#4c78a8"] * 4 + ["#f58518"] * 2 + ["#54a24b"] * 2)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylim(0, 1.02)
    ax.set_title("Knowledge-base intelligence on the sample KB" + (" (mechanics only)" if result["models"] == "tiny" else ""))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _f(v: Any) -> str:
    return "–" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def render_markdown(result: dict[str, Any]) -> str:
    lines = ["# Knowledge-base evaluation (sample KB)", ""]
    if result["models"] == "tiny":
        lines += [MECHANICS_NOTE, ""]
    lines += [f"{result['created_at']} · embedder `{result['embedder']}` · {result['n_cases']} cases · "
              f"{len(result['families'])} fault families · {result['n_related_pairs']} known related pairs", "",
              "## Suggested labels (leave-one-out)", "",
              "| field | macro-F1 | coverage | accuracy when suggested | labels |", "|---|---:|---:|---:|---:|"]
    for f in (*SINGLE_FIELDS, "tags"):
        r = result["labels"][f]
        lines.append(f"| {f} | {_f(r['macro_f1'])} | {_f(r['coverage'])} | {_f(r.get('accuracy_when_suggested'))} | "
                     f"{r['n_labels']} |")
    c, rel = result["clusters"], result["related"]
    lines += ["", "Zero-shot candidates include values only the left-out case carries (a small optimistic leak).", "",
              "## Fault clusters vs families", "",
              f"NMI **{c['nmi']:.3f}**, ARI **{c['ari']:.3f}** over {c['n_cases']} cases ({c['n_families']} families; "
              f"{c['n_clusters']} clusters, {c['n_unclustered']} unclustered, counted as singletons; HDBSCAN "
              f"min_cluster_size {c['min_cluster_size']}).", "",
              "## Related cases vs known pairs", "",
              f"precision@{rel['k']} **{rel['precision_at_k']:.3f}** (best possible {rel['best_possible_precision_at_k']:.3f}: "
              f"most cases have one or two known partners), recall@{rel['k']} **{rel['recall_at_k']:.3f}** over "
              f"{rel['n_cases']} cases.", "",
              "![scores](plots/kb_eval.png)", "", "![map](plots/kb_map.png)", "",
              "Seconds: " + ", ".join(f"{k} {v}" for k, v in result["seconds"].items())]
    return "\n".join(lines) + "\n"
