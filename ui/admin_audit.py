"""The admin tab's "Audit log" sub-tab: who changed which case, when, versions before/after — read-only.

There is deliberately no handler that writes: the log (``knowledge_base.audit``) is append-only and only the
knowledge base's change methods append to it. Filters: case id, actor, action, since (ISO date/time).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import gradio as gr

from rag.errors import UserInputError
from ui.i18n import L, headers, table, tr
from ui.show import plain

if TYPE_CHECKING:
    from ui.admin import AdminTab

#: Table headers as catalog keys, shown in the request's language.
AUDIT_HEADERS = ["ui.admin.audit.col.when", "ui.admin.audit.col.who", "ui.admin.audit.col.action",
                 "ui.admin.audit.col.case", "ui.admin.audit.col.before", "ui.admin.audit.col.after",
                 "ui.admin.audit.col.status", "ui.admin.audit.col.detail"]
AUDIT_LIMIT = 500
ACTIONS = ["", "add", "update", "delete", "import", "check --fix", "reindex", "link-confirm"]


class AuditPanel:
    """Laid out by :meth:`build` inside the admin panel, wired by :meth:`wire` through the admin tab's guard."""

    def __init__(self, admin: AdminTab) -> None:
        self.admin = admin

    def build(self) -> None:
        with gr.Row():
            self.case = gr.Textbox(label=L("ui.admin.case_id"), elem_id="audit-case", scale=2)
            self.actor = gr.Textbox(label=L("ui.admin.audit.who"), elem_id="audit-actor", scale=2)
            self.action = gr.Dropdown(ACTIONS, value="", label=L("ui.admin.audit.action"), elem_id="audit-action", scale=1)
            self.since = gr.Textbox(label=L("ui.admin.audit.since"), elem_id="audit-since",
                                    scale=2)
            self.btn = gr.Button(L("ui.admin.audit.show"), elem_id="audit-show", scale=0)
        self.msg = gr.Markdown(elem_id="audit-msg")
        self.table = gr.Dataframe(headers=headers(AUDIT_HEADERS), interactive=False, wrap=True, elem_id="audit-table",
                                  max_height=480)

    def wire(self) -> None:
        self.admin.on(self.btn.click, self.show, [self.case, self.actor, self.action, self.since],
                      [self.table, self.msg])

    def show(self, token: str, case: str, actor: str, action: str, since: str) -> tuple[dict[str, Any], str]:
        when = None
        if (since or "").strip():
            try:
                when = datetime.fromisoformat(since.strip())
            except ValueError:
                raise UserInputError(f"'Since' is not a date or time: {since.strip()!r} (e.g. 2026-11-29)",
                                     code="bad_since", params={"value": since.strip()}) from None
            when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
        entries = self.admin.kb.audit.query(since=when, case_id=(case or "").strip() or None,
                                            actor=(actor or "").strip() or None, action=action or None)
        newest = list(reversed(entries))[:AUDIT_LIMIT]
        rows = [[e.ts.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"), plain(e.actor, 80), plain(e.action, 40),
                 plain(e.case_id or "", 64), "" if e.before_version is None else e.before_version,
                 "" if e.after_version is None else e.after_version, e.status,
                 plain(", ".join(f"{k}={v}" for k, v in e.detail.items()), 200)] for e in newest]
        more = tr("ui.admin.audit.more", limit=AUDIT_LIMIT) if len(entries) > AUDIT_LIMIT else ""
        return table(AUDIT_HEADERS, rows), tr("ui.admin.audit.count", n=len(entries), more=more)
