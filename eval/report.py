"""Reports of eval runs, comparisons and sweeps: results JSON, a markdown page and PNG plots (matplotlib, Agg).

The markdown is written for people who will paste it into an issue or a README: every number has its metric name,
every comparison its test and p-value, and plots sit next to it under ``plots/``.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display

import matplotlib.pyplot as plt  # noqa: E402

from eval.metrics import COMPARE_METRICS, METRICS, metric_label  # noqa: E402

logger = logging.getLogger(__name__)

TINY_NOTE = ("**These numbers come from random-weight tiny models**: they test the harness, not the models, and "
             "mean nothing about retrieval or answer quality.")


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        return f"{v:.{digits}f}"
    return str(v)


def _p(p: float | None) -> str:
    if p is None:
        return "– (all tied)"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def write_json(obj: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n", "utf-8")
    tmp.replace(path)
    return path


# -- plots ------------------------------------------------------------------------------------------------------------
def plot_recall_curves(curves: Mapping[str, Mapping[Any, float]], path: Path, title: str = "Recall@k") -> Path:
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for name, curve in curves.items():
        ks = sorted(int(k) for k in curve)
        ax.plot(ks, [curve[k] if k in curve else curve[str(k)] for k in ks], marker="o", ms=3, label=name)
    ax.set_xlabel("k")
    ax.set_ylabel("Recall@k")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_latency(latency: Mapping[str, Mapping[str, float]], path: Path) -> Path:
    stages = [s for s in latency if s != "total" and latency[s]["n"] and latency[s]["p95"] > 0]
    p50 = [latency[s]["p50"] for s in stages]
    p95 = [latency[s]["p95"] for s in stages]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    x = range(len(stages))
    ax.bar([i - 0.2 for i in x], p50, width=0.4, label="p50")
    ax.bar([i + 0.2 for i in x], p95, width=0.4, label="p95")
    ax.set_xticks(list(x), stages)
    ax.set_ylabel("ms")
    total = latency.get("total")
    ax.set_title("Latency per stage" + (f" (total p50 {total['p50']:.0f} ms, p95 {total['p95']:.0f} ms)" if total else ""))
    if p95 and max(p95) / max(min(v for v in p50 if v > 0) if any(v > 0 for v in p50) else 1, 1e-9) > 200:
        ax.set_yscale("log")
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_abstention(abst: Mapping[str, Any], path: Path) -> Path:
    kinds = [k for k in ("rerank", "retrieval") if k in abst]
    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4), dpi=110, squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=False):
        curve = abst[kind]["curve"]
        ts = [p["threshold"] for p in curve]
        for key in ("precision", "recall", "f1"):
            ax.plot(ts, [p[key] for p in curve], marker=".", label=key)
        best = abst[kind]["best"]
        ax.axvline(best["threshold"], color="k", ls="--", lw=1, label=f"best F1 @ {best['threshold']:.3f}")
        conf = abst[kind].get("configured")
        if conf is not None:
            ax.axvline(conf["threshold"], color="r", ls=":", lw=1, label=f"configured {conf['threshold']:.3f}")
        ax.set_xlabel(f"threshold on best {kind} score (abstain below)")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"Abstention ({kind} score)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_sweep(points: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Quality vs dimension (colour = metric, line style = vector type) and index size vs dimension (log scale)."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    colours = {"recall@10": "tab:blue", "recall@1": "tab:orange", "mrr@10": "tab:green"}
    for quant, style in ((False, "-"), (True, "--")):
        pts = sorted((p for p in points if p["quantization"] == quant), key=lambda p: p["dim"])
        if not pts:
            continue
        tag = "int8" if quant else "float32"
        dims = [p["dim"] for p in pts]
        for metric, colour in colours.items():
            ax1.plot(dims, [p["metrics"][metric] for p in pts], style, color=colour, marker="o", ms=4,
                     label=f"{metric_label(metric)} {tag}")
        ax2.plot(dims, [max(p["index_bytes"], 1) / 1e6 for p in pts], style, color="tab:purple", marker="o", label=f"on disk, {tag}")
        ax2.plot(dims, [max(p["vector_ram_bytes"], 1) / 1e6 for p in pts], style, color="tab:red", marker="x",
                 label=f"search vectors in RAM, {tag}")
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("embedding dimension (Matryoshka prefix)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax1.set_ylim(0, 1.02)
    ax1.set_title("Retrieval quality vs dimension")
    ax2.set_yscale("log")
    ax2.set_ylabel("MB (log)")
    ax2.set_title("Index size")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# -- markdown -------------------------------------------------------------------------------------------------------
def _metric_table(metrics: Mapping[str, Mapping[str, float]], names: Sequence[str] = METRICS) -> list[str]:
    cols = list(metrics)
    lines = ["| metric | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for m in names:
        lines.append(f"| {metric_label(m)} | " + " | ".join(_fmt(metrics[c].get(m)) for c in cols) + " |")
    return lines


def comparison_table(cmp: Mapping[str, Any]) -> list[str]:
    """Markdown rows of a ranx comparison: baseline, other, delta, p-value, significance, win/tie/loss."""
    lines = []
    test = {"student": "paired t-test", "fisher": "Fisher randomisation test", "tukey": "Tukey HSD"}.get(cmp["stat_test"], cmp["stat_test"])
    for other, rows in cmp["against"].items():
        lines += [f"`{other}` against `{cmp['baseline']}` on {cmp['n_queries']} queries ({test}, significant if p < {cmp['max_p']}):", "",
                  f"| metric | {cmp['baseline']} | {other} | Δ | p | sig. | W/T/L |", "|---|---:|---:|---:|---:|:-:|:-:|"]
        for m, r in rows.items():
            lines.append(f"| {metric_label(m)} | {_fmt(r['baseline'])} | {_fmt(r['value'])} | {r['delta']:+.3f} | {_p(r['p_value'])} | "
                         f"{'✓' if r['significant'] else ''} | {r['win']}/{r['tie']}/{r['loss']} |")
        lines.append("")
    return lines


#: What each per-language table groups by.
LANG_TABLES = (("query", "query language", "the question's text (`none`: a picture or clip without text)"),
               ("case", "case language", "the text of the query's most relevant case"),
               ("pair", "query → case", "cross-lingual pairs: e.g. `zh-CN → en` is a Chinese question about an English case"))


def language_tables(summary: Mapping[str, Any], *, tiny: bool) -> list[str]:
    """The per-language tables (query language, case language, query → case pairs) of a run's summary."""
    by_lang = summary.get("by_lang") or {}
    if not any(by_lang.values()):
        return []
    lines = ["## By language", ""]
    if tiny:
        lines += ["**Mechanics only**: tiny random-weight models; these numbers show that the per-language split works, "
                  "not how well Chinese and English retrieve each other.", ""]
    for key, title, what in LANG_TABLES:
        table = by_lang.get(key) or {}
        if not table:
            continue
        cols = [(r, m) for r in ("retrieval", "rerank") for m in ("recall@1", "mrr@10") if any(r in v for v in table.values())]
        lines += [f"### By {title}", "", f"Grouped by {what}.", "",
                  f"| {title} | n | " + " | ".join(f"{r} {metric_label(m)}" for r, m in cols) + " |",
                  "|---|---:|" + "---:|" * len(cols)]
        for lang, v in table.items():
            lines.append(f"| {lang} | {v['n']} | " + " | ".join(_fmt(v.get(r, {}).get(m)) for r, m in cols) + " |")
        lines.append("")
    return lines


def _run_header(summary: Mapping[str, Any]) -> list[str]:
    run = summary.get("run", {})
    lines = [f"# Eval run: {summary.get('mode')} on {run.get('eval_set', '?')}", ""]
    if run.get("models") == "tiny":
        lines += [TINY_NOTE, ""]
    lines += [f"- data: `{run.get('source', '')}` — {summary['n_queries']} queries ({summary['n_answerable']} with relevant cases, "
              f"{summary['n_abstain']} out-of-KB)",
              f"- embedder: `{run.get('embedder_name', '')}` (fingerprint `{run.get('embedder', '')}`); "
              f"queries resumed from earlier: {run.get('resumed', 0)}, run now: {run.get('ran', 0)}"]
    cache = run.get("cache")
    if cache:
        imp, qs = cache.get("import", {}), cache.get("queries", {})
        lines.append(f"- embedding cache: import {imp.get('hits', 0)} hits / {imp.get('misses', 0)} embedded; "
                     f"queries {qs.get('hits', 0)} hits / {qs.get('misses', 0)} embedded ({cache.get('entries', 0)} entries)")
    if summary.get("errors"):
        lines.append(f"- **{len(summary['errors'])} queries failed** (scored as misses): "
                     + ", ".join(f"{e['id']} ({e['error'][:80]})" for e in summary["errors"][:5]))
    return [*lines, ""]


def _kind_table(by_kind: Mapping[str, Any]) -> list[str]:
    cols = [(r, m) for r in ("retrieval", "rerank") for m in ("recall@1", "mrr@10") if any(r in v for v in by_kind.values())]
    lines = ["## By query kind", "", "| kind | n | " + " | ".join(f"{r} {metric_label(m)}" for r, m in cols) + " |",
             "|---|---:|" + "---:|" * len(cols)]
    for kind, v in by_kind.items():
        lines.append(f"| {kind} | {v['n']} | " + " | ".join(_fmt(v.get(r, {}).get(m)) for r, m in cols) + " |")
    return [*lines, ""]


def _abstention_section(abst: Mapping[str, Any], plots: Mapping[str, Path]) -> list[str]:
    lines = ["## Abstention (out-of-KB queries)", "",
             f"{abst['n_out_of_kb']} out-of-KB and {abst['n_in_kb']} in-KB queries; positive class = should abstain; "
             "the app abstains when the best score is below the threshold.", "",
             "| score | threshold | precision | recall | F1 | abstain rate |", "|---|---:|---:|---:|---:|---:|"]
    for kind in ("rerank", "retrieval"):
        if kind not in abst:
            continue
        for label, p in (("configured", abst[kind]["configured"]), ("best F1", abst[kind]["best"])):
            if p is not None:
                lines.append(f"| {kind} ({label}) | {p['threshold']:.4f} | {_fmt(p['precision'])} | {_fmt(p['recall'])} | "
                             f"{_fmt(p['f1'])} | {_fmt(p['abstain_rate'])} |")
    best = abst[abst["decision_kind"]]["best"]
    lines += ["", f"Threshold that maximises F1 on this set: **{best['threshold']:.4f}** ({abst['decision_kind']} score; "
              f"set `RAGVQA_ABSTAIN_{abst['decision_kind'].upper()}_THRESHOLD` to use it — tune it on a held-out set).", ""]
    if "abstention" in plots:
        lines += ["![abstention](plots/" + plots["abstention"].name + ")", ""]
    return lines


def _answers_section(ans: Mapping[str, Any]) -> list[str]:
    lines = ["## Answers", "", "| metric | value |", "|---|---:|",
             f"| answered (in-KB queries not abstained) | {_fmt(ans['answered_rate'])} |",
             f"| citation precision (cited cases that are relevant) | {_fmt(ans['citation_precision'])} |",
             f"| citation recall (top-graded cases cited) | {_fmt(ans['citation_recall'])} |",
             f"| key-fact recall (normalised substring) | {_fmt(ans['key_fact_recall'])} |",
             f"| answers citing anything | {_fmt(ans['cited_any_rate'])} |"]
    if ans.get("judged"):
        lines.append(f"| LLM judge mean (1–5, {ans['judged']} answers) | {_fmt(ans['judge_mean'], 2)} |")
    return [*lines, ""]


def _latency_section(lat: Mapping[str, Any], plots: Mapping[str, Path]) -> list[str]:
    lines = ["## Latency (ms per query)", "", "| stage | n | p50 | p95 | mean |", "|---|---:|---:|---:|---:|"]
    for stage, v in lat.items():
        lines.append(f"| {stage} | {v['n']} | {_fmt(v['p50'], 1)} | {_fmt(v['p95'], 1)} | {_fmt(v['mean'], 1)} |")
    lines.append("")
    if "latency" in plots:
        lines += ["![latency](plots/" + plots["latency"].name + ")", ""]
    return lines


def run_markdown(summary: Mapping[str, Any], plots: Mapping[str, Path]) -> str:
    """The run's report: header, retrieval metrics, ablation, per kind and language, abstention, answers, latency."""
    lines = _run_header(summary)
    if summary.get("metrics"):
        lines += ["## Retrieval", "", *_metric_table(summary["metrics"]), ""]
        if "recall" in plots:
            lines += ["![recall@k](plots/" + plots["recall"].name + ")", ""]
    if summary.get("ablation"):
        lines += ["## Rerank ablation (ranx compare)", "", *comparison_table(summary["ablation"])]
    if summary.get("by_kind"):
        lines += _kind_table(summary["by_kind"])
    lines += language_tables(summary, tiny=summary.get("run", {}).get("models") == "tiny")
    if summary.get("abstention"):
        lines += _abstention_section(summary["abstention"], plots)
    if summary.get("answers"):
        lines += _answers_section(summary["answers"])
    if summary.get("latency"):
        lines += _latency_section(summary["latency"], plots)
    return "\n".join(lines)


def write_run_report(summary: dict[str, Any], records: Sequence[Mapping[str, Any]], run_dir: Path) -> dict[str, Path]:
    """``results.json``, ``report.md`` and ``plots/*.png`` of one run."""
    run_dir = Path(run_dir)
    plots_dir = run_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    plots: dict[str, Path] = {}
    if summary.get("recall_curve"):
        plots["recall"] = plot_recall_curves(summary["recall_curve"], plots_dir / "recall_at_k.png")
    if summary.get("latency"):
        plots["latency"] = plot_latency(summary["latency"], plots_dir / "latency.png")
    if summary.get("abstention"):
        plots["abstention"] = plot_abstention(summary["abstention"], plots_dir / "abstention.png")
    files = {"json": write_json(summary, run_dir / "results.json")}
    md = run_markdown(summary, plots)
    (run_dir / "report.md").write_text(md + "\n", "utf-8")
    files["markdown"] = run_dir / "report.md"
    files.update({f"plot_{k}": v for k, v in plots.items()})
    logger.info("report written to %s", run_dir / "report.md")
    return files


# -- compare / sweep -----------------------------------------------------------------------------------------------
def compare_markdown(cmp: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> str:
    lines = ["# Run comparison", "", *comparison_table(cmp)]
    if extra:
        lines += ["| other measure (whole runs, no test) | A | B | Δ |", "|---|---:|---:|---:|"]
        for name, (a, b) in extra.items():
            d = (b - a) if a is not None and b is not None else None
            lines.append(f"| {name} | {_fmt(a)} | {_fmt(b)} | {('%+.3f' % d) if d is not None else '–'} |")
        lines.append("")
    return "\n".join(lines)


def sweep_markdown(points: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> str:
    lines = ["# MRL dimension × quantization sweep", ""]
    if meta.get("models") == "tiny":
        lines += [TINY_NOTE, ""]
    lines += [f"- data: `{meta.get('source', '')}`, {meta.get('n_queries', '?')} queries with relevant cases; retrieval only (no rerank)",
              f"- documents: {meta.get('n_points', '?')} vectors per store; sizes are the store folders on disk after "
              "optimisation (allocated bytes) and the bytes of the vectors that searches scan in RAM (float32: 4·d, "
              "int8: d per vector; int8 keeps the float originals on disk for rescoring). Collections below Qdrant's "
              "indexing threshold (a few thousand vectors) are searched exactly and build no int8 copy, so there the "
              "two rows differ only in the RAM estimate.", "",
              "| dim | vectors | " + " | ".join(metric_label(m) for m in COMPARE_METRICS) + " | on disk (MB) | search RAM (MB) |",
              "|---:|---|" + "---:|" * (len(COMPARE_METRICS) + 2)]
    for p in sorted(points, key=lambda p: (p["dim"], p["quantization"])):
        lines.append(f"| {p['dim']} | {'int8' if p['quantization'] else 'float32'} | "
                     + " | ".join(_fmt(p["metrics"].get(m)) for m in COMPARE_METRICS)
                     + f" | {p['index_bytes'] / 1e6:.2f} | {p['vector_ram_bytes'] / 1e6:.3f} |")
    lines += ["", "![MRL sweep](mrl_sweep.png)", ""]
    return "\n".join(lines)
