"""Show: inert rendering of case text and model output for the browser (the last step of a question).

Case text comes from imports and admins, model output can echo it: both may contain ``<script>``, ``<img onerror>``
or ``[x](javascript:…)``. Everything shown as HTML is escaped here; text shown as Markdown is HTML-escaped and its
link/image syntax defused (:func:`rag.pipeline.render.inert_md`, shared with the stream renderer), on top of
Gradio's own sanitiser (defence in depth, not instead of it).
"""

from __future__ import annotations

import html
import re
from typing import Any, Iterable, Sequence

from rag.pipeline.render import CONTROL_CHARS, inert_md
from rag.pipeline.types import Answer, CaseCandidate, Decision, Trace
from ui.i18n import error_text, tr

_PATH_RE = re.compile(r"(?:/[^\s'\"/]+){2,}")


def esc(value: Any) -> str:
    """HTML-escape any value (quotes too, so it is safe inside attributes)."""
    return html.escape(CONTROL_CHARS.sub("", "" if value is None else str(value)), quote=True)


def plain(text: Any, limit: int = 200) -> str:
    """One-line text for captions/tables: control characters and angle brackets removed, trimmed."""
    s = CONTROL_CHARS.sub("", "" if text is None else str(text)).replace("<", "‹").replace(">", "›")
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def score_text(c: CaseCandidate) -> str:
    if c.rerank_score is not None:
        return tr("ui.case.score_reranked", rerank=f"{c.rerank_score:.2f}", retrieval=f"{c.retrieval_score:.2f}")
    if c.retrieval_score:
        return tr("ui.case.score_retrieval", retrieval=f"{c.retrieval_score:.2f}")
    return tr("ui.case.from_conversation")


def caption(c: CaseCandidate, cited: Iterable[str] = ()) -> str:
    mark = "★ " if c.case_id in set(cited) else ""
    return f"{mark}{plain(c.title, 80)} [{plain(c.case_id, 64)}] · {c.score:.2f}"


def case_detail_html(c: CaseCandidate | None) -> str:
    """The full case as escaped HTML (no Markdown: nothing in a case can become markup)."""
    if c is None:
        return f"<p class='ragvqa-muted'>{esc(tr('ui.case.select'))}</p>"
    case = c.case or {}
    rows: list[str] = [f"<h3>{esc(c.title or case.get('title', ''))} <code>{esc(c.case_id)}</code></h3>"]
    equip = " / ".join(str(x) for x in (case.get("product_line"), case.get("equipment_model")) if x)
    meta = []
    if equip:
        meta.append(f"<b>{esc(tr('ui.case.equipment'))}</b> {esc(equip)}")
    if case.get("severity"):
        meta.append(f"<b>{esc(tr('ui.case.severity'))}</b> {esc(case['severity'])}")
    if case.get("error_codes"):
        meta.append(f"<b>{esc(tr('ui.case.error_codes'))}</b> {esc(', '.join(map(str, case['error_codes'])))}")
    meta.append(f"<b>{esc(tr('ui.case.score'))}</b> {esc(score_text(c))}")
    rows.append("<p>" + " &nbsp;|&nbsp; ".join(meta) + "</p>")
    for label, key in ((tr("ui.case.symptom"), "symptom"), (tr("ui.case.cause"), "cause")):
        if case.get(key):
            rows.append(f"<p><b>{esc(label)}</b> {esc(case[key])}</p>")
    steps = case.get("solution") or []
    if isinstance(steps, str):
        steps = [steps]
    if steps:
        rows.append(f"<p><b>{esc(tr('ui.case.solution'))}</b></p><ol>" + "".join(f"<li>{esc(s)}</li>" for s in steps) + "</ol>")
    if not any(case.get(k) for k in ("symptom", "cause", "solution")) and c.document:
        rows.append(f"<pre class='ragvqa-doc'>{esc(c.document)}</pre>")
    if case.get("tags"):
        rows.append(f"<p><b>{esc(tr('ui.case.tags'))}</b> " + " ".join(f"<span class='ragvqa-tag'>{esc(t)}</span>" for t in case["tags"]) + "</p>")
    media = case.get("media") or []
    if media:
        kinds: dict[str, int] = {}
        for m in media:
            kinds[str(m.get("kind"))] = kinds.get(str(m.get("kind")), 0) + 1
        rows.append(f"<p><b>{esc(tr('ui.case.media'))}</b> " + esc(", ".join(f"{n} {k}" for k, n in kinds.items())) + "</p>")
    if case.get("source"):
        rows.append(f"<p><b>{esc(tr('ui.case.source'))}</b> {esc(case['source'])}</p>")
    return "<div class='ragvqa-case'>" + "\n".join(rows) + "</div>"


def reason_text(decision: Decision | None) -> str:
    """Why the pipeline abstained, in the request's language (built from the decision's numbers, not its English
    ``reason``, which is for logs)."""
    if decision is None or not decision.abstain:
        return ""
    if decision.best_score is None:
        return tr("ui.abstain.reason_no_case")
    kind = tr("ui.abstain.kind_rerank" if decision.score_kind == "rerank" else "ui.abstain.kind_retrieval")
    return tr("ui.abstain.reason_below", kind=kind, best=f"{decision.best_score:.3f}",
              threshold=f"{decision.threshold:.3f}")


def abstain_banner_html(cases: Sequence[CaseCandidate], decision: Decision | None = None) -> str:
    items = "".join(f"<li>{esc(c.title)} <code>{esc(c.case_id)}</code> — {esc(f'{c.score:.2f}')}</li>" for c in cases[:3])
    body = f"<ul>{items}</ul>" if items else f"<p>{esc(tr('ui.abstain.no_match'))}</p>"
    reason = reason_text(decision)
    why = f"<p class='ragvqa-muted'>{esc(reason)}</p>" if reason else ""
    return (f"<div class='ragvqa-abstain' role='alert'><b>{esc(tr('ui.abstain.title'))}</b>{body}{why}"
            f"<p>{esc(tr('ui.abstain.advice'))}</p></div>")


def citations_md(answer: Answer) -> str:
    """A footer under the answer listing the cited cases (or the cases used, when none was cited)."""
    by_id = {c.case_id: c for c in answer.cases}
    ids = answer.cited or []
    label = tr("ui.answer.cited") if ids else tr("ui.answer.used")
    if not ids:
        ids = [c.case_id for c in answer.cases[:3]]
    if not ids:
        return ""
    lines = [f"- {inert_md('[' + cid + ']')} {inert_md(by_id[cid].title if cid in by_id else '')}" for cid in ids]
    return f"\n\n**{label}:**\n" + "\n".join(lines)


def timings_md(trace: Trace | None, extra: dict[str, float] | None = None, notes: Sequence[str] = ()) -> str:
    """Per-stage timings as a Markdown table (numbers and fixed stage names only)."""
    rows = [(tr("ui.timings.uploads"), ms) for ms in [(extra or {}).get("uploads", 0.0)] if ms]
    if trace is not None:
        for s in trace.stages:
            if s.stage == "total":
                rows.append((tr("ui.timings.total"), float(s.detail.get("wall_ms", 0.0))))
                continue
            label = s.stage
            if s.stage == "generate" and s.detail.get("first_token_ms") is not None:
                label = tr("ui.timings.generate", first=f"{s.detail['first_token_ms']:.0f}")
            rows.append((label, s.ms))
    if not rows and not notes:
        return tr("ui.timings.none")
    out = [f"| {esc(tr('ui.timings.stage'))} | ms |", "|---|---:|"] + [f"| {esc(k)} | {v:.1f} |" for k, v in rows]
    if notes:
        out.append("")
        out += [f"- {inert_md(n)}" for n in notes]
    return "\n".join(out)


def user_error_text(e: BaseException, limit: int = 500) -> str:
    """The message of a user-facing error (:class:`rag.errors.UserInputError`) in the request's language (its
    ``code`` + ``params`` through the catalog, else its English message), without internal paths, trimmed."""
    msg = _PATH_RE.sub(lambda m: m.group(0).rsplit("/", 1)[-1], error_text(e, str(e)))
    return msg if len(msg) <= limit else msg[: limit - 3] + "…"


def server_error_text(ref: str) -> str:
    """What the user sees for any error that is not theirs: no detail, a reference to find it in the server log."""
    return tr("ui.error.server", ref=ref)
