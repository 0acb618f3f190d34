"""The Gradio app: a public chat tab and an admin tab whose every handler checks a server-side login.

``build_app(services)`` lays out each tab, then wires its components to the handlers; ``launch(...)`` adds the queue limits, the file-serving
allow-list (the media store and derived uploads, nothing else under ``data_dir``) and the CSS.
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from rag.i18n import languages, t
from ui.admin import AdminTab
from ui.chat import ChatTab
from ui.health import Readiness, health_routes
from ui.i18n import CURRENT, SESSIONS, L, i18n, relabel, request_lang, switch_choices, translatable
from ui.services import Services

logger = logging.getLogger(__name__)

CSS = """
.ragvqa-tiny-banner {background:#fff4e5;border:2px solid #e8590c;color:#7c2d12;padding:8px 12px;border-radius:8px;
  font-weight:600;margin-bottom:6px}
.ragvqa-abstain {background:#fff8db;border-left:6px solid #f59f00;color:#5c3c00;padding:10px 14px;border-radius:6px}
.ragvqa-abstain ul {margin:4px 0 4px 18px}
.ragvqa-muted {color:#6b7280;font-size:0.9em}
.ragvqa-case h3 {margin:0 0 6px 0}
.ragvqa-case code {font-size:0.85em}
.ragvqa-doc {white-space:pre-wrap;font-size:0.9em}
.ragvqa-tag {display:inline-block;background:#eef2ff;border-radius:4px;padding:0 6px;margin:0 3px 3px 0;font-size:0.85em}
"""

#: The smoke-test banner (HTML from the catalog's ``ui.app.tiny_banner``; the catalog text is trusted markup).
TINY_BANNER = "ui.app.tiny_banner"


def build_app(services: Services) -> gr.Blocks:
    """The whole UI for one :class:`Services` (models, store, KB, feedback log, admin auth)."""
    chat = ChatTab(services)
    admin = AdminTab(services)
    # the browser tab's title is one for every user: each language's name of the app
    with gr.Blocks(title=" · ".join(dict.fromkeys(t("ui.app.title", lang) for lang in languages())),
                   analytics_enabled=False) as demo:
        with gr.Row(equal_height=False):
            gr.Markdown(L("ui.app.intro"), elem_id="app-intro")
            switch = gr.Radio(switch_choices(), value=None, label=L("ui.app.language"), elem_id="lang-switch",
                              scale=0, min_width=220)
        if services.models == "tiny":
            gr.HTML(L(TINY_BANNER), elem_id="tiny-banner-box", elem_classes=["ragvqa-tiny-banner"])
        with gr.Tabs():  # layout first, then the events (each tab's wire() connects what its build() laid out)
            with gr.Tab(L("ui.app.tab_chat"), id="chat", elem_id="tab-chat"):
                chat_view = chat.build()
            with gr.Tab(L("ui.app.tab_admin"), id="admin", elem_id="tab-admin"):
                admin.build()
        chat.wire(chat_view)
        admin.wire()
        texts = translatable(demo)
        text_blocks = [b for b, _ in texts]

        def on_page_load(request: gr.Request) -> dict[Any, Any]:
            """The page's language (the browser's, as gr.I18n shows it) on the switch, and the filter choices."""
            code = request_lang(request)
            token = CURRENT.set(code)
            try:
                line_upd, model_upd = chat.on_load()
            finally:
                CURRENT.reset(token)
            return {switch: code, chat.load_outputs[0]: line_upd, chat.load_outputs[1]: model_upd}

        def on_switch(code: str | None, request: gr.Request) -> dict[Any, Any]:
            """The visible switch: the session's language for server-made text, every static text and the filter
            choices again in it."""
            code = code or "en"
            SESSIONS.set(getattr(request, "session_hash", None), code)
            token = CURRENT.set(code)
            try:
                line_upd, model_upd = chat.on_load()
            finally:
                CURRENT.reset(token)
            updates = relabel(texts, code)
            for comp, upd in zip(chat.load_outputs, (line_upd, model_upd), strict=True):
                updates[comp] = {**updates.get(comp, {}), "choices": upd["choices"]}
            return updates

        demo.load(on_page_load, None, [switch, *chat.load_outputs], api_visibility="private")
        switch_outputs = list(dict.fromkeys([*text_blocks, *chat.load_outputs]))
        switch.input(on_switch, [switch], switch_outputs, api_visibility="private")
        demo.unload(chat.on_stop)  # a closed page stops the answer it was waiting for
    demo.queue(default_concurrency_limit=8, max_size=services.ui.queue_max_size)
    return demo


def launch_kwargs(services: Services) -> dict[str, Any]:
    """Keyword arguments for ``Blocks.launch`` shared by ``ragvqa serve`` and the tests."""
    return {
        "allowed_paths": [str(services.media_root), str(services.upload_dir)],
        "max_file_size": services.ui.max_file_size,
        "css": CSS,
        "i18n": i18n(),  # static texts in the browser's language (gr.I18n); the switch re-sends them
        "ssr_mode": False,
        "mcp_server": False,
        "run_history": False,
        "footer_links": ["api"],
        "show_error": False,
        "quiet": True,
    }


def launch(services: Services, *, host: str | None = None, port: int | None = None, block: bool = True,
           readiness: Readiness | None = None) -> tuple[gr.Blocks, str]:
    """Build and start the app; returns (blocks, local URL). ``block=False`` returns right after start (tests).

    ``/healthz`` and ``/readyz`` answer from ``readiness`` (default: ready as soon as the app listens).
    """
    services.media_root.mkdir(parents=True, exist_ok=True)
    demo = build_app(services)
    if readiness is None:
        readiness = Readiness()
        readiness.set(True, "ready")
    _, url, _ = demo.launch(server_name=host or services.ui.host, server_port=port or services.ui.port,
                            prevent_thread_lock=True, app_kwargs={"routes": health_routes(readiness)},
                            **launch_kwargs(services))
    if block:
        demo.block_thread()
    return demo, url
