"""Admin tab, knowledge-base intelligence: semantic (cross-modal) search with thumbnails, a case's related cases with
a "confirm link" button, and suggested labels for the case form (marked "suggested", never saved unasked).

Built by :class:`ui.admin.AdminTab` (two hooks: a tab of its own and a row under the case form); every handler is
registered through :meth:`AdminTab.on`, so it is admin-only (server-side token check) and hidden from the API docs.
Computing search results, related cases and suggestions never writes; only "Confirm link" does, through the normal
case update path.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from ui.render import esc, plain

if TYPE_CHECKING:  # pragma: no cover
    from ui.admin import AdminTab

logger = logging.getLogger(__name__)

RELATED_HEADERS = ["score", "case", "title", "product line", "why (this ↔ that)"]
SEARCH_CASE_HEADERS = ["score", "case", "title", "product line", "best match"]
KIND_CHOICES = [("case texts", "text"), ("photos", "image"), ("PDF pages", "pdf_page"), ("videos", "video")]
SUGGESTED = " (suggested)"


def _form_text(title: str, symptom: str, cause: str) -> str:
    """What a new case's text would be embedded from (the fields present so far)."""
    parts = [(title or "").strip()]
    if (symptom or "").strip():
        parts.append(f"Symptom: {symptom.strip()}")
    if (cause or "").strip():
        parts.append(f"Cause: {cause.strip()}")
    return "\n".join(p for p in parts if p)


class AdminIntel:
    """The intelligence part of the admin tab (components + handlers); see the module docstring."""

    def __init__(self, tab: AdminTab) -> None:
        self.tab = tab

    @property
    def kb(self) -> Any:
        return self.tab.kb

    def _thumb(self, rel: str | None) -> str | None:
        if not rel:
            return None
        p = Path(self.tab.s.media_root) / rel
        return str(p) if p.is_file() else None

    # -- handlers (token first: AdminTab.on checks it) ---------------------------------------------------------------
    def search(self, token: str, text: str, image: str | None, kinds: list[str] | None,
               line: str) -> tuple[list[tuple[str, str]], list[list[Any]], str]:
        from knowledge_base.semantic_search import semantic_search

        if not (text or "").strip() and not image:
            raise gr.Error("Type what to look for, or add an image (or both).")
        filters = {"product_line": line.strip()} if (line or "").strip() else None
        res = semantic_search(self.kb, text=text, image=image, limit=24, kinds=kinds or None, filters=filters)
        gallery = []
        for p in res.points:
            thumb = self._thumb(p.thumbnail) or self._thumb(p.media_path if p.kind != "video" else None)
            if thumb is None:
                continue
            what = p.kind.replace("pdf_page", f"page {p.page}").replace("image", "photo")
            gallery.append((thumb, plain(f"{p.case_id} · {what} · {p.score:.3f}", 120)))
        rows = [[round(c.score, 4), plain(c.case_id, 64), plain(c.title, 120), plain(c.product_line, 60),
                 c.points[0].kind + (f" p{c.points[0].page}" if c.points[0].page else "")] for c in res.cases]
        return gallery, rows, f"{len(res.cases)} case(s), {len(res.points)} matching text(s)/media (best first)."

    def related(self, token: str, case_id: str) -> tuple[list[list[Any]], Any, str]:
        from knowledge_base.related import related_cases

        case_id = (case_id or "").strip()
        if not case_id:
            raise gr.Error("Enter a case id first.")
        found = related_cases(self.kb, case_id, limit=8)
        linked = {lk.case_id for lk in (self.kb.get(case_id).links if self.kb.get(case_id) else [])}
        rows = [[round(r.score, 4), plain(r.case_id, 64) + (" 🔗" if r.case_id in linked else ""), plain(r.title, 120),
                 plain(r.product_line, 60), plain("; ".join(x.text for x in r.reasons), 200)] for r in found]
        choices = [r.case_id for r in found if r.case_id not in linked]
        msg = (f"{len(found)} related case(s) of **{esc(case_id)}** (🔗 = already linked). Pick one and confirm to "
               "add a 'related' link." if found else f"No other case to relate **{esc(case_id)}** to.")
        return rows, gr.update(choices=choices, value=choices[0] if choices else None), msg

    def confirm(self, token: str, case_id: str, other_id: str | None) -> str:
        from knowledge_base.related import confirm_related

        if not other_id:
            raise gr.Error("Pick a related case to link first.")
        report = confirm_related(self.kb, (case_id or "").strip(), other_id)
        if report.status == "skipped":
            return f"Already linked: **{esc(case_id)}** → **{esc(other_id)}**."
        return f"🔗 Linked **{esc(case_id)}** → **{esc(other_id)}** as related (version bumped)."

    def suggest(self, token: str, title: str, symptom: str, cause: str, line: str, model: str, tags: str,
                severity: str, files: list[str] | None) -> tuple[Any, Any, Any, Any, str]:
        """Fill the *empty* label fields with suggestions, each marked "(suggested)"; nothing is saved."""
        from knowledge_base.labels import suggest_labels

        text = _form_text(title, symptom, cause)
        media = [f for f in (files or []) if Path(f).suffix.lower() != ".pdf"]
        if not text and not media:
            raise gr.Error("Write a title or symptom, or attach a photo, to get suggestions.")
        found = suggest_labels(self.kb, text=text or None, media=media)
        best: dict[str, Any] = {}
        for s in found:
            best.setdefault(s.field, []).append(s)
        updates: dict[str, Any] = {}
        notes = []
        current = {"product_line": line, "equipment_model": model, "tags": tags, "severity": severity}
        for field in ("product_line", "equipment_model", "tags", "severity"):
            picks = best.get(field) or []
            if not picks:
                continue
            value = ", ".join(s.value for s in picks) if field == "tags" else picks[0].value
            notes.append(f"- {field.replace('_', ' ')}: **{esc(value)}** "
                         f"({', '.join(f'{s.confidence:.0%} {s.source}' for s in picks)})"
                         + ("" if not (current[field] or "").strip() else " — kept what you typed"))
            if not (current[field] or "").strip():
                updates[field] = value
        labels = {"product_line": "Product line *", "equipment_model": "Equipment model", "tags":
                  "Tags (comma-separated)", "severity": "Severity"}
        outs = tuple(gr.update(value=updates[f], label=labels[f] + SUGGESTED) if f in updates else gr.update()
                     for f in ("product_line", "equipment_model", "tags", "severity"))
        msg = ("✨ **Suggested** (check before saving):\n" + "\n".join(notes)) if notes else \
            "No confident suggestion: the knowledge base has too few similar, consistently labelled cases."
        return (*outs, msg)  # type: ignore[return-value]

    def clear_marks(self, token: str) -> tuple[Any, Any, Any, Any, str]:
        """A loaded case's values are stored ones: drop the "(suggested)" marks."""
        labels = ("Product line *", "Equipment model", "Tags (comma-separated)", "Severity")
        return (*(gr.update(label=lb) for lb in labels), "")  # type: ignore[return-value]

    # -- layout ------------------------------------------------------------------------------------------------------
    def build_tab(self) -> None:
        """Inside the admin panel's "Search & related" tab."""
        gr.Markdown("#### Semantic search — by words, by image, or both (the substring search is on the Cases tab)")
        with gr.Row():
            self.s_text = gr.Textbox(label="Text", placeholder="e.g. toner smears on the left edge", elem_id="intel-text")
            self.s_image = gr.Image(label="Image", type="filepath", sources=["upload"], height=140, elem_id="intel-image")
        with gr.Row():
            self.s_kinds = gr.CheckboxGroup(KIND_CHOICES, label="Look in (none = all)", elem_id="intel-kinds")
            self.s_line = gr.Textbox(label="Product line (exact, optional)", elem_id="intel-line")
            self.s_btn = gr.Button("Search", variant="primary", elem_id="intel-search-btn")
        self.s_msg = gr.Markdown(elem_id="intel-search-msg")
        self.s_gallery = gr.Gallery(label="Matching media", columns=6, height=260, elem_id="intel-gallery")
        self.s_cases = gr.Dataframe(headers=SEARCH_CASE_HEADERS, interactive=False, wrap=True,
                                    elem_id="intel-case-table", max_height=300)
        gr.Markdown("#### Related cases")
        with gr.Row():
            self.r_id = gr.Textbox(label="Case id", elem_id="intel-related-id")
            self.r_btn = gr.Button("Show related cases", elem_id="intel-related-btn")
        self.r_msg = gr.Markdown(elem_id="intel-related-msg")
        self.r_table = gr.Dataframe(headers=RELATED_HEADERS, interactive=False, wrap=True, elem_id="intel-related-table")
        with gr.Row():
            self.r_other = gr.Dropdown(label="Related case to link", choices=[], allow_custom_value=True,
                                       elem_id="intel-link-other")  # checked server-side by confirm_related
            self.r_confirm = gr.Button("Confirm link", variant="secondary", elem_id="intel-link-btn")
        self.r_link_msg = gr.Markdown(elem_id="intel-link-msg")

    def build_form(self) -> None:
        """Under the case form: the "Suggest labels" button and what it suggested."""
        self.f_suggest = gr.Button("✨ Suggest product line, model, tags, severity", size="sm",
                                   elem_id="case-suggest")
        self.f_suggest_msg = gr.Markdown(elem_id="case-suggest-msg")

    def wire(self) -> None:
        t = self.tab
        models = dict(concurrency_id="models", concurrency_limit=t.s.ui.concurrency_limit)
        search_in = [self.s_text, self.s_image, self.s_kinds, self.s_line]
        search_out = [self.s_gallery, self.s_cases, self.s_msg]
        t.on(self.s_btn.click, self.search, search_in, search_out, **models)
        t.on(self.s_text.submit, self.search, search_in, search_out, **models)
        t.on(self.r_btn.click, self.related, [self.r_id], [self.r_table, self.r_other, self.r_msg])
        t.on(self.r_confirm.click, self.confirm, [self.r_id, self.r_other], [self.r_link_msg])
        t.on(self.f_suggest.click, self.suggest,
             [t.f_title, t.f_symptom, t.f_cause, t.f_line, t.f_model, t.f_tags, t.f_sev, t.f_files],
             [t.f_line, t.f_model, t.f_tags, t.f_sev, self.f_suggest_msg], **models)
        marks = [t.f_line, t.f_model, t.f_tags, t.f_sev, self.f_suggest_msg]
        t.on(t.load_btn.click, self.clear_marks, [], marks)
