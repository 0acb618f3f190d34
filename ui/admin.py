"""The admin tab: case editing, bulk import, duplicates, maintenance and feedback review — login required.

Every handler here is registered through :meth:`AdminTab.on`, which wraps it with :func:`ui.auth.admin_only`
(server-side token check) and hides it from the API docs. Nothing admin-only is rendered into the page at build
time: tables are filled by authorised calls only.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import gradio as gr

from rag.errors import UserInputError
from ui.admin_audit import AuditPanel
from ui.admin_clusters import AdminClusters
from ui.auth import AuthError, admin_only
from ui.i18n import L, headers, localized, table, tr
from ui.services import Services
from ui.show import esc, plain, server_error_text, user_error_text

if TYPE_CHECKING:
    from knowledge_base.kb import KnowledgeBase

logger = logging.getLogger(__name__)

LIST_LIMIT = 200
#: Table headers as catalog keys, shown in the request's language by :func:`table`.
CASE_HEADERS = ["ui.admin.col.id", "ui.admin.col.title", "ui.admin.col.product_line", "ui.admin.col.model",
                "ui.admin.col.media", "ui.admin.col.updated"]
FEEDBACK_HEADERS = ["ui.admin.col.number", "ui.admin.col.time", "ui.admin.col.rating", "ui.admin.col.question",
                    "ui.admin.col.answer", "ui.admin.col.cited", "ui.admin.col.top_cases", "ui.admin.col.comment"]
DUP_HEADERS = ["ui.admin.col.kind", "ui.admin.col.case", "ui.admin.col.media", "ui.admin.col.duplicate_of",
               "ui.admin.col.its_media", "ui.admin.col.score"]
#: The import report's counters, by their key in the report.
IMPORT_FIELDS = {"added": "ui.admin.import.added", "updated": "ui.admin.import.updated",
                 "skipped": "ui.admin.import.skipped", "rejected": "ui.admin.import.rejected",
                 "duplicates": "ui.admin.import.duplicates", "media_embedded": "ui.admin.import.media_embedded",
                 "elapsed_s": "ui.admin.import.elapsed_s"}


def _lines(text: str | None) -> list[str]:
    return [x.strip() for x in (text or "").splitlines() if x.strip()]


def _csv(text: str | None) -> list[str]:
    return [x.strip() for x in (text or "").replace("\n", ",").split(",") if x.strip()]


def shown_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn what an admin handler raises into what the page shows: ``gr.Error`` as it is, a
    :class:`rag.errors.UserInputError` as its message, anything else as a server error with a reference id (logged
    with the traceback; its message never reaches the page). Works for plain and generator handlers; the wrapped
    signature is kept so Gradio still injects ``gr.Progress``."""

    def _server_error(e: Exception) -> gr.Error:
        ref = uuid.uuid4().hex[:8]
        logger.error("admin request failed (ref %s)", ref, exc_info=e)
        return gr.Error(server_error_text(ref))

    @contextlib.contextmanager
    def shown() -> Iterator[None]:
        try:
            yield
        except gr.Error:
            raise
        except UserInputError as e:
            raise gr.Error(plain(user_error_text(e), 600)) from None
        except Exception as e:  # noqa: BLE001 - the UI boundary: anything else is a server error, logged with its traceback
            raise _server_error(e) from None

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
            with shown():
                yield from fn(*args, **kwargs)

        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with shown():
            return fn(*args, **kwargs)

    return wrapper


class AdminTab:
    """Builds the admin components; owns their (authorised) handlers."""

    def __init__(self, services: Services) -> None:
        self.s = services
        self.auth = services.auth
        self.guard = admin_only(services.auth)
        from ui.admin_intel import AdminIntel

        self.intel = AdminIntel(self)

    # -- plumbing ----------------------------------------------------------------------------------------------
    @property
    def kb(self) -> KnowledgeBase:
        return self.s.kb

    def on(self, trigger: Callable[..., Any], fn: Callable[..., Any], inputs: Sequence[Any], outputs: Sequence[Any],
           **kwargs: Any) -> Any:
        """Register an admin handler: token state first in the inputs, checked server-side on every call; errors
        shown as :func:`shown_errors` says."""
        kwargs.setdefault("api_visibility", "private")
        return trigger(localized(self.guard(shown_errors(fn))), [self.token, *inputs], list(outputs), **kwargs)

    # -- login -------------------------------------------------------------------------------------------------
    def login(self, user: str, password: str) -> dict[gr.components.Component, Any]:
        try:
            token = self.auth.login(user, password)
        except AuthError as e:
            return self._session_view(None, f"⛔ {esc(user_error_text(e))}", "")
        return self._session_view(token, "", tr("ui.admin.logged_in", user=esc(user)))

    def logout(self, token: str | None) -> dict[gr.components.Component, Any]:
        self.auth.logout(token)
        return self._session_view(None, tr("ui.admin.logged_out"), "")

    @staticmethod
    def _fb_choices() -> list[tuple[str, str]]:
        return [(tr("ui.admin.fb_all"), "all"), (tr("ui.admin.fb_up"), "👍 only"), (tr("ui.admin.fb_down"), "👎 only")]

    def _session_view(self, token: str | None, login_msg: str, who: str) -> dict[gr.components.Component, Any]:
        """Login box or admin panel for ``token`` (None: logged out); the password box is always cleared."""
        return {self.token: token, self.login_box: gr.update(visible=token is None),
                self.panel: gr.update(visible=token is not None), self.login_msg: login_msg, self.who: who,
                self.password: "", self.fb_which: gr.update(choices=self._fb_choices())}

    # -- cases -------------------------------------------------------------------------------------------------
    def list_cases(self, token: str, text: str, product_line: str) -> tuple[dict[str, Any], str]:
        filters = {"product_line": product_line.strip()} if (product_line or "").strip() else None
        page = self.kb.list_cases(filters=filters, text=(text or "").strip() or None, limit=LIST_LIMIT)
        rows = [[plain(c.id, 64), plain(c.title, 120), plain(c.product_line, 60), plain(c.equipment_model, 60),
                 len(c.media), c.updated_at.strftime("%Y-%m-%d %H:%M")] for c in page.cases]
        more = tr("ui.admin.showing_first", n=len(rows)) if page.total > len(rows) else ""
        return table(CASE_HEADERS, rows), tr("ui.admin.n_cases", n=page.total, more=more)

    def load_case(self, token: str, case_id: str) -> dict[gr.components.Component, Any]:
        case_id = (case_id or "").strip()
        case = self.kb.get(case_id) if case_id else None
        if case is None:
            raise gr.Error(tr("ui.admin.no_case_id", id=repr(plain(case_id, 64))))
        c = case.model_dump(mode="json")
        media = c.get("media") or []
        return {self.f_id: c.get("id", case_id), self.f_title: c.get("title", ""),
                self.f_line: c.get("product_line", ""), self.f_model: c.get("equipment_model", ""),
                self.f_symptom: c.get("symptom", ""), self.f_cause: c.get("cause", ""),
                self.f_solution: "\n".join(c.get("solution") or []), self.f_codes: ", ".join(c.get("error_codes") or []),
                self.f_tags: ", ".join(c.get("tags") or []), self.f_sev: c.get("severity") or "",
                self.f_source: c.get("source", ""),
                self.save_msg: tr("ui.admin.loaded", id=esc(case_id), version=esc(c.get("version", 1)), n=len(media))}

    def save_case(self, token: str, case_id: str, title: str, product_line: str, equipment_model: str, symptom: str,
                  cause: str, solution: str, error_codes: str, tags: str, severity: str, source: str,
                  files: list[str] | None, progress: gr.Progress = gr.Progress()) -> tuple[str, str]:
        """Add a case, or update it when the id exists (its stored media are kept; attached files are added)."""
        from pydantic import ValidationError

        from knowledge_base.kb import CaseNotFoundError, CaseRejectedError
        from knowledge_base.schema import CaseInput

        data = {"title": title, "product_line": product_line, "equipment_model": equipment_model or "",
                "symptom": symptom, "cause": cause or "", "solution": _lines(solution), "error_codes": _csv(error_codes),
                "tags": _csv(tags), "severity": severity or None, "source": source or ""}
        cid = (case_id or "").strip() or None
        try:
            ci = CaseInput(id=cid, **data)
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'case'}: {err['msg']}" for err in e.errors())
            raise gr.Error(tr("ui.admin.case_invalid", problems=problems)) from None
        paths = [str(f) for f in (files or [])]
        progress(0.1, desc=tr("ui.admin.progress_saving"))
        t0 = time.perf_counter()
        try:
            if cid is not None and self.kb.get(ci.resolved_id()) is not None:
                report, verb = self.kb.update(ci, add_media=paths), "ui.admin.saved_updated"
            else:
                report, verb = self.kb.add_case(ci, media=paths), "ui.admin.saved_added"
        except CaseRejectedError as e:
            raise gr.Error(tr("ui.admin.case_refused", reason=plain(e.report.reason, 600))) from None
        except CaseNotFoundError as e:
            raise gr.Error(user_error_text(e)) from None
        self.s.invalidate_choices()
        new_id = report.case_id or ci.resolved_id()
        if report.status == "skipped":
            return new_id, tr("ui.admin.no_change", id=esc(new_id))
        notes = [*report.warnings, *(d.describe() for d in report.duplicates)]
        extra = ("\n\n" + "\n".join(f"- {esc(w)}" for w in notes)) if notes else ""
        return new_id, tr(verb, id=esc(new_id), n=report.media_embedded, s=f"{time.perf_counter() - t0:.1f}") + extra

    def delete_case(self, token: str, case_id: str, confirm: bool) -> str:
        case_id = (case_id or "").strip()
        if not case_id:
            raise gr.Error(tr("ui.admin.delete_need_id"))
        if not confirm:
            raise gr.Error(tr("ui.admin.delete_need_confirm"))
        ok = self.kb.delete(case_id)
        self.s.invalidate_choices()
        if not ok:
            return tr("ui.admin.delete_missing", id=esc(case_id))
        return tr("ui.admin.deleted", id=esc(case_id))

    # -- bulk import -------------------------------------------------------------------------------------------
    def bulk_import(self, token: str, path: str | None, progress: gr.Progress = gr.Progress()) -> tuple[str, Any]:
        if not path:
            raise gr.Error(tr("ui.admin.import_need_file"))
        progress(0, desc=tr("ui.admin.progress_reading"))

        def cb(done: int, total: int) -> None:
            progress((done, total), desc=tr("ui.admin.progress_importing"), unit=tr("ui.admin.unit_cases"))

        try:
            result = self.kb.import_path(Path(path), progress=cb)
        except UserInputError as e:  # the source as a whole is unusable (IngestInputError and kin)
            raise gr.Error(tr("ui.admin.import_refused", reason=plain(user_error_text(e), 600))) from None
        self.s.invalidate_choices()
        data = result.to_dict()
        return self._import_summary(data), data

    @staticmethod
    def _import_summary(data: Any) -> str:
        if not isinstance(data, dict):
            return tr("ui.admin.import_finished", data=esc(data))
        keys = [k for k in IMPORT_FIELDS if k in data]
        parts = []
        for k in keys:
            v = data[k]
            parts.append(f"**{tr(IMPORT_FIELDS[k])}**: {len(v) if isinstance(v, (list, dict)) else esc(v)}")
        lines = [tr("ui.admin.import_summary"), " · ".join(parts) if parts else ""]
        errors = data.get("errors") or []
        if errors:
            lines.append(tr("ui.admin.import_rejected"))
            lines += [f"- {esc(plain(x, 400))}" for x in errors[:50]]
            if len(errors) > 50:
                lines.append(tr("ui.admin.import_more", n=len(errors) - 50))
        return "\n".join(lines)

    # -- duplicates, maintenance, feedback -----------------------------------------------------------------------
    def duplicates(self, token: str, threshold: float) -> tuple[dict[str, Any], str]:
        rows = []
        for d in (x.to_dict() for x in self.kb.near_duplicates(threshold=float(threshold))):
            rows.append([d.get("kind", ""), plain(d.get("case_id"), 64), plain(d.get("media"), 64),
                         plain(d.get("other_case_id"), 64), plain(d.get("other_media_id"), 64),
                         round(float(d.get("score", 0.0)), 4)])
        return table(DUP_HEADERS, rows), tr("ui.admin.dup_pairs", n=len(rows), threshold=f"{threshold:.2f}")

    def stats(self, token: str) -> Any:
        return {**self.kb.stats(), "feedback": self.s.feedback.summary()}

    def check(self, token: str, fix: bool) -> tuple[str, Any]:
        report = self.kb.check(fix=bool(fix))
        if fix:
            self._refresh_pipeline_store()
        return esc(report.summary()), report.to_dict()

    def reindex(self, token: str, confirm: bool, progress: gr.Progress = gr.Progress()) -> tuple[str, Any]:
        if not confirm:
            raise gr.Error(tr("ui.admin.reindex_need_confirm"))
        progress(0, desc=tr("ui.admin.progress_reindex"))
        t0 = time.perf_counter()

        result = self.kb.reindex(self.s.embedder, dim=self.s.settings.embed_dim)
        self._refresh_pipeline_store()
        return tr("ui.admin.reindexed", n=result.cases, s=f"{time.perf_counter() - t0:.1f}"), result.to_dict()

    def _refresh_pipeline_store(self) -> None:
        """A blue-green reindex may swap the live store object: point the pipeline at the KB's current one."""
        store = getattr(self.s.kb, "store", None)
        if store is not None and store is not self.s.store:
            self.s.store = store
            self.s.pipeline.retrieve_stage.store = store
        self.s.invalidate_choices()

    def feedback(self, token: str, which: str) -> tuple[dict[str, Any], str]:
        rating = {"👍 only": 1, "👎 only": -1, "up": 1, "down": -1}.get(which)
        rows = []
        for r in self.s.feedback.latest(limit=300, rating=rating):
            top = ", ".join(f"{c.get('case_id')} ({c.get('score')})" for c in (r.get("cases") or [])[:3])
            rows.append([r["id"], time.strftime("%Y-%m-%d %H:%M", time.gmtime(r["ts"])), "👍" if r["rating"] > 0 else "👎",
                         plain(r["question"], 200), plain(r["answer"], 300), plain(", ".join(r["cited"]), 200),
                         plain(top, 200), plain(r["comment"], 300)])
        s = self.s.feedback.summary()
        sat = f"{s['satisfaction']:.0%}" if s["satisfaction"] is not None else "–"
        return table(FEEDBACK_HEADERS, rows), tr("ui.admin.fb_summary", total=s["total"], up=s["up"], down=s["down"],
                                                 sat=sat, abstained=s["abstained"])

    # -- layout ------------------------------------------------------------------------------------------------
    def build(self) -> None:
        """Lay out the admin tab: a login box, and the panel shown after login (no events: :meth:`wire`)."""
        self.token = gr.State(None)
        self._build_login()
        with gr.Column(visible=False, elem_id="admin-panel") as self.panel:
            with gr.Row():
                self.who = gr.Markdown(elem_id="admin-who")
                self.logout_btn = gr.Button(L("ui.admin.logout"), size="sm", elem_id="admin-logout", scale=0)
            with gr.Tabs():
                with gr.Tab(L("ui.admin.tab_cases"), elem_id="admin-cases"):
                    self._build_cases()
                with gr.Tab(L("ui.admin.tab_edit"), elem_id="admin-edit"):
                    self._build_case_form()
                    self.intel.build_form()
                with gr.Tab(L("ui.admin.tab_intel"), elem_id="admin-intel"):
                    self.intel.build_tab()
                with gr.Tab(L("ui.admin.tab_import"), elem_id="admin-import"):
                    self._build_import()
                with gr.Tab(L("ui.admin.tab_dups"), elem_id="admin-dups"):
                    self._build_duplicates()
                with gr.Tab(L("ui.admin.tab_maint"), elem_id="admin-maint"):
                    self._build_maintenance()
                with gr.Tab(L("ui.admin.tab_feedback"), elem_id="admin-feedback"):
                    self._build_feedback()
                self.kb_views = AdminClusters(self)
                self.kb_views.build()
                with gr.Tab(L("ui.admin.tab_audit"), elem_id="admin-audit"):
                    self.audit = AuditPanel(self)
                    self.audit.build()

    def _build_login(self) -> None:
        with gr.Column(visible=True, elem_id="admin-login") as self.login_box:
            gr.Markdown(L("ui.admin.login_title" if self.auth.enabled else "ui.admin.login_disabled"))
            self.user = gr.Textbox(label=L("ui.admin.user"), elem_id="admin-user", max_length=200)
            self.password = gr.Textbox(label=L("ui.admin.password"), type="password", elem_id="admin-password", max_length=500)
            self.login_btn = gr.Button(L("ui.admin.login"), variant="primary", elem_id="admin-login-btn")
            self.login_msg = gr.Markdown(elem_id="admin-login-msg")

    def _build_cases(self) -> None:
        with gr.Row():
            self.q = gr.Textbox(label=L("ui.admin.search"), placeholder=L("ui.admin.search_placeholder"), elem_id="admin-search")
            self.q_line = gr.Textbox(label=L("ui.admin.search_line"), elem_id="admin-search-line")
            self.list_btn = gr.Button(L("ui.admin.list"), elem_id="admin-list-btn")
        self.table = gr.Dataframe(headers=headers(CASE_HEADERS), datatype=["str"] * 5 + ["str"], interactive=False,
                                  elem_id="admin-case-table", wrap=True, max_height=360)
        self.list_msg = gr.Markdown()
        with gr.Row():
            self.del_id = gr.Textbox(label=L("ui.admin.case_id"), elem_id="admin-case-id")
            self.load_btn = gr.Button(L("ui.admin.load"), elem_id="admin-load-btn")
            self.del_confirm = gr.Checkbox(label=L("ui.admin.confirm_delete"), elem_id="admin-del-confirm")
            self.del_btn = gr.Button(L("ui.admin.delete"), variant="stop", elem_id="admin-del-btn")
        self.del_msg = gr.Markdown(elem_id="admin-del-msg")

    def _build_case_form(self) -> None:
        with gr.Row():
            self.f_id = gr.Textbox(label=L("ui.admin.f_id"), elem_id="case-id")
            self.f_title = gr.Textbox(label=L("ui.admin.f_title"), elem_id="case-title")
        with gr.Row():
            self.f_line = gr.Textbox(label=L("ui.admin.f_line"), elem_id="case-line")
            self.f_model = gr.Textbox(label=L("ui.admin.f_model"), elem_id="case-model")
            self.f_sev = gr.Dropdown(label=L("ui.admin.f_severity"), choices=["", "low", "medium", "high", "critical"], value="",
                                     elem_id="case-severity")
        self.f_symptom = gr.Textbox(label=L("ui.admin.f_symptom"), lines=3, elem_id="case-symptom")
        self.f_cause = gr.Textbox(label=L("ui.admin.f_cause"), lines=2, elem_id="case-cause")
        self.f_solution = gr.Textbox(label=L("ui.admin.f_solution"), lines=4, elem_id="case-solution")
        with gr.Row():
            self.f_codes = gr.Textbox(label=L("ui.admin.f_codes"), elem_id="case-codes")
            self.f_tags = gr.Textbox(label=L("ui.admin.f_tags"), elem_id="case-tags")
            self.f_source = gr.Textbox(label=L("ui.admin.f_source"), elem_id="case-source")
        self.f_files = gr.File(label=L("ui.admin.f_files"), file_count="multiple",
                               file_types=["image", "video", ".pdf"], type="filepath", elem_id="case-files")
        self.save_btn = gr.Button(L("ui.admin.save"), variant="primary", elem_id="case-save")
        self.save_msg = gr.Markdown(elem_id="case-save-msg")

    def _build_import(self) -> None:
        gr.Markdown(L("ui.admin.import_help"))
        self.imp_file = gr.File(label=L("ui.admin.import_file"), file_types=[".zip", ".jsonl", ".csv"], type="filepath",
                                elem_id="import-file")
        self.imp_btn = gr.Button(L("ui.admin.import_btn"), variant="primary", elem_id="import-btn")
        self.imp_msg = gr.Markdown(elem_id="import-msg")
        self.imp_json = gr.JSON(label=L("ui.admin.import_report"), elem_id="import-report")

    def _build_duplicates(self) -> None:
        self.dup_thr = gr.Slider(0.80, 1.0, value=0.95, step=0.01, label=L("ui.admin.dup_threshold"), elem_id="dup-thr")
        self.dup_btn = gr.Button(L("ui.admin.dup_find"), elem_id="dup-btn")
        self.dup_msg = gr.Markdown()
        self.dup_table = gr.Dataframe(headers=headers(DUP_HEADERS), interactive=False, elem_id="dup-table")

    def _build_maintenance(self) -> None:
        with gr.Row():
            self.stats_btn = gr.Button(L("ui.admin.stats"), elem_id="stats-btn")
            self.check_btn = gr.Button(L("ui.admin.check"), elem_id="check-btn")
            self.check_fix = gr.Checkbox(label=L("ui.admin.repair"), elem_id="check-fix")
            self.rx_confirm = gr.Checkbox(label=L("ui.admin.confirm_reindex"), elem_id="reindex-confirm")
            self.rx_btn = gr.Button(L("ui.admin.reindex"), variant="stop", elem_id="reindex-btn")
        self.maint_msg = gr.Markdown(elem_id="maint-msg")
        self.maint_json = gr.JSON(label=L("ui.admin.result"), elem_id="maint-json")

    def _build_feedback(self) -> None:
        with gr.Row():
            # choice labels are server text: set in the session's language on login (see _session_view)
            self.fb_which = gr.Radio(self._fb_choices(), value="all", label=L("ui.admin.fb_show"), elem_id="fb-which")
            self.fb_btn = gr.Button(L("ui.admin.fb_refresh"), elem_id="fb-refresh")
        self.fb_msg = gr.Markdown(elem_id="fb-summary")
        self.fb_table = gr.Dataframe(headers=headers(FEEDBACK_HEADERS), interactive=False, wrap=True, elem_id="fb-table",
                                     max_height=420)

    # -- events ------------------------------------------------------------------------------------------------
    def wire(self) -> None:
        """Connect the laid-out components to the handlers (inside the same ``gr.Blocks``, after :meth:`build`)."""
        session = [self.token, self.login_box, self.panel, self.login_msg, self.who, self.password, self.fb_which]
        login_ev = dict(fn=localized(self.login), inputs=[self.user, self.password], outputs=session)
        self.login_btn.click(**login_ev, api_name="admin_login", concurrency_limit=4)
        self.password.submit(**login_ev, api_visibility="private", concurrency_limit=4)
        self.logout_btn.click(localized(self.logout), [self.token], session, api_visibility="private")

        models = dict(concurrency_id="models", concurrency_limit=self.s.ui.concurrency_limit)
        form = [self.f_id, self.f_title, self.f_line, self.f_model, self.f_symptom, self.f_cause, self.f_solution,
                self.f_codes, self.f_tags, self.f_sev, self.f_source]
        self.on(self.list_btn.click, self.list_cases, [self.q, self.q_line], [self.table, self.list_msg])
        self.on(self.q.submit, self.list_cases, [self.q, self.q_line], [self.table, self.list_msg])
        self.on(self.load_btn.click, self.load_case, [self.del_id], form + [self.save_msg])
        self.on(self.del_btn.click, self.delete_case, [self.del_id, self.del_confirm], [self.del_msg])
        self.on(self.save_btn.click, self.save_case, form + [self.f_files], [self.f_id, self.save_msg], **models)
        self.on(self.imp_btn.click, self.bulk_import, [self.imp_file], [self.imp_msg, self.imp_json], **models)
        self.on(self.dup_btn.click, self.duplicates, [self.dup_thr], [self.dup_table, self.dup_msg])
        self.on(self.stats_btn.click, self.stats, [], [self.maint_json])
        self.on(self.check_btn.click, self.check, [self.check_fix], [self.maint_msg, self.maint_json])
        self.on(self.rx_btn.click, self.reindex, [self.rx_confirm], [self.maint_msg, self.maint_json], **models)
        self.on(self.fb_btn.click, self.feedback, [self.fb_which], [self.fb_table, self.fb_msg])
        self.intel.wire()
        self.kb_views.wire()
        self.audit.wire()
