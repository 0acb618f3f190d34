"""``ragvqa serve`` as a service: probes from the first second, the app, the admin channel, then the sample import.

Order (each step visible on ``/readyz``):

1. the probes listen on the app's port (``ui.health.StartupServer``): alive, not ready, "loading models";
2. models load and the knowledge base opens; a store built by another embedder stops here, and the probes keep
   answering not ready with the reason (the process stays up so the reason can be read, instead of a restart loop);
3. the Gradio app takes the port (same ``/healthz``/``/readyz``), the admin channel (``ui.control``) starts;
4. an empty store gets the sample knowledge base ("importing the sample knowledge base", still not ready);
5. ready. SIGTERM/SIGINT (or ``stop``) closes the channel, the app and the store, in that order.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass, field
from typing import Literal

from rag.config import Settings
from rag.models.factory import LoadedModels, ModelChoice
from ui.health import Readiness, StartupServer
from ui.settings import UISettings

logger = logging.getLogger(__name__)

__all__ = ["ServeHandle", "serve"]


@dataclass
class ServeHandle:
    """What a running :func:`serve` shares with its caller (tests run it in a thread)."""

    readiness: Readiness = field(default_factory=lambda: Readiness("loading models"))
    stop: threading.Event = field(default_factory=threading.Event)
    #: Set once the Gradio app listens (its local URL).
    url: str | None = None
    started: threading.Event = field(default_factory=threading.Event)
    services: object | None = None
    #: Probes already listening on the app's port (``ragvqa serve`` starts them before its heavy imports).
    early: StartupServer | None = None


def _store_problem(services: object) -> str | None:
    """Why the running app is no longer ready (the store closed or swapped to another embedder), else None."""
    from ui.services import Services

    assert isinstance(services, Services)
    kb = services.kb
    if getattr(kb.store, "_closed", False):
        return "the vector store is closed"
    if kb.store.meta.embedder_id != kb.embedder_id:
        return (f"the store was built by {kb.store.meta.embedder_id!r}, the app embeds with {kb.embedder_id!r}: "
                f"run `ragvqa kb reindex`")
    return None


def serve(settings: Settings, *, models: ModelChoice, ui: UISettings, sample: bool = True, host: str | None = None,
          port: int | None = None, loaded: LoadedModels | None = None,
          credentials: tuple[str, str] | None | Literal["env"] = "env", handle: ServeHandle | None = None,
          signals: bool = True) -> int:
    """Run until stopped; returns the process exit code (2: never got ready, e.g. the store's embedder differs)."""
    from rag.store import StoreMismatchError
    from ui.app import launch
    from ui.backups import BackupScheduler
    from ui.control import ControlServer
    from ui.metrics import AppMetrics
    from ui.services import build_services, load_sample_kb

    h = handle or ServeHandle()
    if signals and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: h.stop.set())
    host, port = host or ui.host, port or ui.port
    early = h.early or StartupServer(host, port, h.readiness).start()
    try:
        services = build_services(settings, models=models, ui=ui, credentials=credentials, load_sample=False,
                                  loaded=loaded)
    except StoreMismatchError as e:
        reason = f"store built by another embedder: {e}"
        logger.error("not ready: %s", reason)
        h.readiness.set(False, reason)
        h.started.set()
        while not h.stop.wait(0.5):
            pass
        early.stop()
        return 2
    except BaseException:
        early.stop()
        raise
    h.services = services
    control: ControlServer | None = None
    metrics: AppMetrics | None = None
    backups: BackupScheduler | None = None
    demo = None
    try:
        h.readiness.set(False, "starting the web app")
        early.stop()
        demo, h.url = launch(services, host=host, port=port, block=False, readiness=h.readiness)
        assert services.kb is not None
        metrics = AppMetrics.from_env(services, demo, host)
        control = ControlServer(services.kb, services.data_dir, on_change=services.invalidate_choices).start()
        backups = BackupScheduler.from_env(services.kb, services.data_dir)
        if backups is not None:
            backups.start()
        h.started.set()
        if sample and services.kb.count_cases() == 0:
            h.readiness.set(False, "importing the sample knowledge base")
            load_sample_kb(services.kb, services.data_dir)
            services.invalidate_choices()
        h.readiness.check = lambda: _store_problem(services)
        h.readiness.set(True, "ready")
        while not h.stop.wait(0.5):
            pass
        return 0
    finally:
        h.readiness.set(False, "stopping")
        if backups is not None:
            backups.stop()
        if control is not None:
            control.stop()
        if metrics is not None:
            metrics.close()
        if demo is not None:
            demo.close()
        services.close()
