"""The Gradio app: a public chat tab and an admin tab whose every handler checks a server-side login.

``build_app(services)`` lays out each tab, then wires its components to the handlers; ``launch(...)`` adds the queue limits, the file-serving
allow-list (the media store and derived uploads, nothing else under ``data_dir``) and the CSS.
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from ui.admin import AdminTab
from ui.chat import ChatTab
from ui.health import Readiness, health_routes
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

TINY_BANNER = ("<div class='ragvqa-tiny-banner' id='tiny-banner' role='status'>Smoke-test mode: tiny random models are "
               "loaded — answers and scores are meaningless. Start without <code>--models tiny</code> for real "
               "answers.</div>")


def build_app(services: Services) -> gr.Blocks:
    """The whole UI for one :class:`Services` (models, store, KB, feedback log, admin auth)."""
    chat = ChatTab(services)
    admin = AdminTab(services)
    with gr.Blocks(title="Support desk visual QA", analytics_enabled=False) as demo:
        gr.Markdown("## Support desk visual QA\nDrop a photo, screenshot, short video or PDF page of the faulty "
                    "equipment and ask what is wrong; the answer cites similar solved cases.")
        if services.models == "tiny":
            gr.HTML(TINY_BANNER, elem_id="tiny-banner-box")
        with gr.Tabs():  # layout first, then the events (each tab's wire() connects what its build() laid out)
            with gr.Tab("Chat", id="chat", elem_id="tab-chat"):
                chat_view = chat.build()
            with gr.Tab("Admin", id="admin", elem_id="tab-admin"):
                admin.build()
        chat.wire(chat_view)
        admin.wire()
        demo.load(chat.on_load, None, chat.load_outputs, api_visibility="private")
        demo.unload(chat.on_stop)  # a closed page stops the answer it was waiting for
    demo.queue(default_concurrency_limit=8, max_size=services.ui.queue_max_size)
    return demo


def launch_kwargs(services: Services) -> dict[str, Any]:
    """Keyword arguments for ``Blocks.launch`` shared by ``ragvqa serve`` and the tests."""
    return {
        "allowed_paths": [str(services.media_root), str(services.upload_dir)],
        "max_file_size": services.ui.max_file_size,
        "css": CSS,
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
