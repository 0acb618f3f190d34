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

from ui.chat_intel import reason_text
from ui.i18n import L, headers, localized, table, tr
from ui.show import esc, plain

if TYPE_CHECKING:  # pragma: no cover
    from ui.admin import AdminTab

logger = logging.getLogger(__name__)

#: Table headers as catalog keys, shown in the request's language (as :data:`ui.admin.CASE_HEADERS`).
RELATED_HEADERS = ["ui.admin.col.score", "ui.admin.col.case", "ui.admin.col.title", "ui.admin.col.product_line",
                   "ui.admin.intel.col.why"]
SEARCH_CASE_HEADERS = ["ui.admin.col.score", "ui.admin.col.case", "ui.admin.col.title", "ui.admin.col.product_line",
                       "ui.admin.intel.col.best_match"]
#: "Look in" choices: (catalog key of the label, point kind).
KIND_CHOICES = [("ui.admin.intel.kinds.text", "text"), ("ui.admin.intel.kinds.image", "image"),
                ("ui.admin.intel.kinds.pdf_page", "pdf_page"), ("ui.admin.intel.kinds.video", "video")]
#: One point's kind in a caption or a table cell (``{page}``: the PDF page).
KIND_NAMES = {"text": "ui.admin.intel.kind.text", "image": "ui.admin.intel.kind.image",
              "pdf_page": "ui.admin.intel.kind.pdf_page", "video": "ui.admin.intel.kind.video"}
#: The case form's label fields: (form label key, field name key) — the label gets a "(suggested)" mark.
LABEL_FIELDS = {"product_line": ("ui.admin.f_line", "ui.admin.intel.field.product_line"),
                "equipment_model": ("ui.admin.f_model", "ui.admin.intel.field.equipment_model"),
                "tags": ("ui.admin.f_tags", "ui.admin.intel.field.tags"),
                "severity": ("ui.admin.f_severity", "ui.admin.intel.field.severity")}
SUGGESTION_SOURCES = {"neighbours": "ui.admin.intel.source.neighbours", "zero-shot": "ui.admin.intel.source.zero_shot"}


def kind_name(kind: str, page: int | None = None) -> str:
    """A point's kind in the request's language ("photo", "page 3")."""
    key = KIND_NAMES.get(kind)
    return tr(key, page=page if page is not None else "") if key else kind


def kind_choices() -> list[tuple[str, str]]:
    """The "Look in" choices in the request's language (server text: set on page build and on login)."""
    return [(tr(key), kind) for key, kind in KIND_CHOICES]


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
               line: str) -> tuple[list[tuple[str, str]], dict[str, Any], str]:
        from knowledge_base.semantic_search import semantic_search

        if not (text or "").strip() and not image:
            raise gr.Error(tr("ui.admin.intel.search_need_input"))
        filters = {"product_line": line.strip()} if (line or "").strip() else None
        res = semantic_search(self.kb, text=text, image=image, limit=24, kinds=kinds or None, filters=filters)
        gallery = []
        for p in res.points:
            thumb = self._thumb(p.thumbnail) or self._thumb(p.media_path if p.kind != "video" else None)
            if thumb is None:
                continue
            gallery.append((thumb, plain(f"{p.case_id} · {kind_name(p.kind, p.page)} · {p.score:.3f}", 120)))
        rows = [[round(c.score, 4), plain(c.case_id, 64), plain(c.title, 120), plain(c.product_line, 60),
                 kind_name(c.points[0].kind, c.points[0].page)] for c in res.cases]
        return (gallery, table(SEARCH_CASE_HEADERS, rows),
                tr("ui.admin.intel.search_found", cases=len(res.cases), points=len(res.points)))

    def related(self, token: str, case_id: str) -> tuple[dict[str, Any], Any, str]:
        from knowledge_base.related import related_cases

        case_id = (case_id or "").strip()
        if not case_id:
            raise gr.Error(tr("ui.admin.intel.related_need_id"))
        found = related_cases(self.kb, case_id, limit=8)
        linked = {lk.case_id for lk in (self.kb.get(case_id).links if self.kb.get(case_id) else [])}
        rows = [[round(r.score, 4), plain(r.case_id, 64) + (" 🔗" if r.case_id in linked else ""), plain(r.title, 120),
                 plain(r.product_line, 60), plain("; ".join(reason_text(x) for x in r.reasons), 200)] for r in found]
        choices = [r.case_id for r in found if r.case_id not in linked]
        msg = (tr("ui.admin.intel.related_found", n=len(found), id=esc(case_id)) if found
               else tr("ui.admin.intel.related_none", id=esc(case_id)))
        return table(RELATED_HEADERS, rows), gr.update(choices=choices, value=choices[0] if choices else None), msg

    def confirm(self, token: str, case_id: str, other_id: str | None) -> str:
        from knowledge_base.related import confirm_related

        if not other_id:
            raise gr.Error(tr("ui.admin.intel.link_need_other"))
        report = confirm_related(self.kb, (case_id or "").strip(), other_id)
        if report.status == "skipped":
            return tr("ui.admin.intel.already_linked", id=esc(case_id), other=esc(other_id))
        return tr("ui.admin.intel.linked", id=esc(case_id), other=esc(other_id))

    def suggest(self, token: str, title: str, symptom: str, cause: str, line: str, model: str, tags: str,
                severity: str, files: list[str] | None) -> tuple[Any, Any, Any, Any, str]:
        """Fill the *empty* label fields with suggestions, each marked "(suggested)"; nothing is saved."""
        from knowledge_base.labels import suggest_labels

        text = _form_text(title, symptom, cause)
        media = [f for f in (files or []) if Path(f).suffix.lower() != ".pdf"]
        if not text and not media:
            raise gr.Error(tr("ui.admin.intel.suggest_need_input"))
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
            why = ", ".join(f"{s.confidence:.0%} {tr(SUGGESTION_SOURCES[s.source])}" for s in picks)
            note = tr("ui.admin.intel.suggest_note", field=tr(LABEL_FIELDS[field][1]), value=esc(value), why=why)
            notes.append(note + (tr("ui.admin.intel.suggest_kept") if (current[field] or "").strip() else ""))
            if not (current[field] or "").strip():
                updates[field] = value
        outs = tuple(gr.update(value=updates[f], label=tr("ui.admin.intel.suggested_label",
                                                          label=tr(LABEL_FIELDS[f][0])))
                     if f in updates else gr.update() for f in LABEL_FIELDS)
        msg = (tr("ui.admin.intel.suggested") + "\n" + "\n".join(notes)) if notes else tr("ui.admin.intel.suggest_none")
        return (*outs, msg)  # type: ignore[return-value]

    def clear_marks(self, token: str) -> tuple[Any, Any, Any, Any, str]:
        """A loaded case's values are stored ones: drop the "(suggested)" marks."""
        return (*(gr.update(label=tr(label)) for label, _ in LABEL_FIELDS.values()), "")  # type: ignore[return-value]

    # -- layout ------------------------------------------------------------------------------------------------------
    def build_tab(self) -> None:
        """Inside the admin panel's "Search & related" tab."""
        gr.Markdown(L("ui.admin.intel.search_title"))
        with gr.Row():
            self.s_text = gr.Textbox(label=L("ui.admin.intel.text"), placeholder=L("ui.admin.intel.text_placeholder"),
                                     elem_id="intel-text")
            self.s_image = gr.Image(label=L("ui.admin.intel.image"), type="filepath", sources=["upload"], height=140,
                                    elem_id="intel-image")
        with gr.Row():
            # choice labels are server text: set in the session's language on login (see wire)
            self.s_kinds = gr.CheckboxGroup(kind_choices(), label=L("ui.admin.intel.look_in"), elem_id="intel-kinds")
            self.s_line = gr.Textbox(label=L("ui.admin.intel.line"), elem_id="intel-line")
            self.s_btn = gr.Button(L("ui.admin.intel.search"), variant="primary", elem_id="intel-search-btn")
        self.s_msg = gr.Markdown(elem_id="intel-search-msg")
        self.s_gallery = gr.Gallery(label=L("ui.admin.intel.gallery"), columns=6, height=260, elem_id="intel-gallery")
        self.s_cases = gr.Dataframe(headers=headers(SEARCH_CASE_HEADERS), interactive=False, wrap=True,
                                    elem_id="intel-case-table", max_height=300)
        gr.Markdown(L("ui.admin.intel.related_title"))
        with gr.Row():
            self.r_id = gr.Textbox(label=L("ui.admin.case_id"), elem_id="intel-related-id")
            self.r_btn = gr.Button(L("ui.admin.intel.related"), elem_id="intel-related-btn")
        self.r_msg = gr.Markdown(elem_id="intel-related-msg")
        self.r_table = gr.Dataframe(headers=headers(RELATED_HEADERS), interactive=False, wrap=True,
                                    elem_id="intel-related-table")
        with gr.Row():
            self.r_other = gr.Dropdown(label=L("ui.admin.intel.link_other"), choices=[], allow_custom_value=True,
                                       elem_id="intel-link-other")  # checked server-side by confirm_related
            self.r_confirm = gr.Button(L("ui.admin.intel.link"), variant="secondary", elem_id="intel-link-btn")
        self.r_link_msg = gr.Markdown(elem_id="intel-link-msg")

    def build_form(self) -> None:
        """Under the case form: the "Suggest labels" button and what it suggested."""
        self.f_suggest = gr.Button(L("ui.admin.intel.suggest"), size="sm", elem_id="case-suggest")
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
        # the "Look in" labels in the session's language once logged in (not admin data: no token needed)
        for login in (t.login_btn.click, t.password.submit):
            login(localized(lambda: gr.update(choices=kind_choices())), None, [self.s_kinds], api_visibility="private",
                  queue=False)
