"""Inert rendering of case text and model output for the browser.

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
from rag.pipeline.types import Answer, CaseCandidate, Trace

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
        return f"rerank {c.rerank_score:.2f} · retrieval {c.retrieval_score:.2f}"
    if c.retrieval_score:
        return f"retrieval {c.retrieval_score:.2f}"
    return "from the conversation"


def caption(c: CaseCandidate, cited: Iterable[str] = ()) -> str:
    mark = "★ " if c.case_id in set(cited) else ""
    return f"{mark}{plain(c.title, 80)} [{plain(c.case_id, 64)}] · {c.score:.2f}"


def case_detail_html(c: CaseCandidate | None) -> str:
    """The full case as escaped HTML (no Markdown: nothing in a case can become markup)."""
    if c is None:
        return "<p class='ragvqa-muted'>Select a source to see the full case.</p>"
    case = c.case or {}
    rows: list[str] = [f"<h3>{esc(c.title or case.get('title', ''))} <code>{esc(c.case_id)}</code></h3>"]
    equip = " / ".join(str(x) for x in (case.get("product_line"), case.get("equipment_model")) if x)
    meta = []
    if equip:
        meta.append(f"<b>Equipment:</b> {esc(equip)}")
    if case.get("severity"):
        meta.append(f"<b>Severity:</b> {esc(case['severity'])}")
    if case.get("error_codes"):
        meta.append(f"<b>Error codes:</b> {esc(', '.join(map(str, case['error_codes'])))}")
    meta.append(f"<b>Score:</b> {esc(score_text(c))}")
    rows.append("<p>" + " &nbsp;|&nbsp; ".join(meta) + "</p>")
    for label, key in (("Symptom", "symptom"), ("Cause", "cause")):
        if case.get(key):
            rows.append(f"<p><b>{label}:</b> {esc(case[key])}</p>")
    steps = case.get("solution") or []
    if isinstance(steps, str):
        steps = [steps]
    if steps:
        rows.append("<p><b>Solution:</b></p><ol>" + "".join(f"<li>{esc(s)}</li>" for s in steps) + "</ol>")
    if not any(case.get(k) for k in ("symptom", "cause", "solution")) and c.document:
        rows.append(f"<pre class='ragvqa-doc'>{esc(c.document)}</pre>")
    if case.get("tags"):
        rows.append("<p><b>Tags:</b> " + " ".join(f"<span class='ragvqa-tag'>{esc(t)}</span>" for t in case["tags"]) + "</p>")
    media = case.get("media") or []
    if media:
        kinds: dict[str, int] = {}
        for m in media:
            kinds[str(m.get("kind"))] = kinds.get(str(m.get("kind")), 0) + 1
        rows.append("<p><b>Media:</b> " + esc(", ".join(f"{n} {k}" for k, n in kinds.items())) + "</p>")
    if case.get("source"):
        rows.append(f"<p><b>Source:</b> {esc(case['source'])}</p>")
    return "<div class='ragvqa-case'>" + "\n".join(rows) + "</div>"


def abstain_banner_html(cases: Sequence[CaseCandidate], reason: str = "") -> str:
    items = "".join(f"<li>{esc(c.title)} <code>{esc(c.case_id)}</code> — {esc(f'{c.score:.2f}')}</li>" for c in cases[:3])
    body = f"<ul>{items}</ul>" if items else "<p>No case matches the current filters.</p>"
    why = f"<p class='ragvqa-muted'>{esc(reason)}</p>" if reason else ""
    return (f"<div class='ragvqa-abstain' role='alert'><b>⚠ No similar case found — possibly related:</b>{body}{why}"
            "<p>Add detail (error code, LED pattern, model) or escalate to second-line support.</p></div>")


def citations_md(answer: Answer) -> str:
    """A footer under the answer listing the cited cases (or the cases used, when none was cited)."""
    by_id = {c.case_id: c for c in answer.cases}
    ids = answer.cited or []
    label = "Cited cases" if ids else "Cases used"
    if not ids:
        ids = [c.case_id for c in answer.cases[:3]]
    if not ids:
        return ""
    lines = [f"- {inert_md('[' + cid + ']')} {inert_md(by_id[cid].title if cid in by_id else '')}" for cid in ids]
    return f"\n\n**{label}:**\n" + "\n".join(lines)


def timings_md(trace: Trace | None, extra: dict[str, float] | None = None, notes: Sequence[str] = ()) -> str:
    """Per-stage timings as a Markdown table (numbers and fixed stage names only)."""
    rows = [("upload handling", ms) for ms in [(extra or {}).get("uploads", 0.0)] if ms]
    if trace is not None:
        for s in trace.stages:
            if s.stage == "total":
                rows.append(("total (pipeline wall)", float(s.detail.get("wall_ms", 0.0))))
                continue
            label = s.stage
            if s.stage == "generate" and s.detail.get("first_token_ms") is not None:
                label = f"generate (first token {s.detail['first_token_ms']:.0f} ms)"
            rows.append((label, s.ms))
    if not rows and not notes:
        return "_No timings yet._"
    out = ["| stage | ms |", "|---|---:|"] + [f"| {esc(k)} | {v:.1f} |" for k, v in rows]
    if notes:
        out.append("")
        out += [f"- {inert_md(n)}" for n in notes]
    return "\n".join(out)


def user_error_text(e: BaseException, limit: int = 500) -> str:
    """The message of a user-facing error (:class:`rag.errors.UserInputError`) without internal paths, trimmed."""
    msg = _PATH_RE.sub(lambda m: m.group(0).rsplit("/", 1)[-1], str(e))
    return msg if len(msg) <= limit else msg[: limit - 3] + "…"


def server_error_text(ref: str) -> str:
    """What the user sees for any error that is not theirs: no detail, a reference to find it in the server log."""
    return (f"Something went wrong on the server (reference {ref}). "
            "Please try again; if it persists, tell the administrator this reference.")
