"""Everything the app and the CLI need at run time, built once: models, store, knowledge base, pipeline, feedback, auth.

``build_app`` takes a :class:`Services` instead of building it, so tests (tiny checkpoint, tmp store) and the
server (real models, data_dir) share one app definition.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from rag.config import Settings
from rag.models.factory import LoadedModels, ModelChoice
from rag.models.protocols import EmbeddingModel
from rag.pipeline import RagPipeline
from rag.store.base import VectorStore
from ui.auth import AdminAuth
from ui.feedback import FeedbackLog
from ui.settings import AdminCredentials, UISettings

if TYPE_CHECKING:
    from knowledge_base.kb import KnowledgeBase

logger = logging.getLogger(__name__)


@dataclass
class Services:
    """Shared, long-lived objects of one app process (one Edge store: Edge allows one process per store)."""

    settings: Settings
    ui: UISettings
    pipeline: RagPipeline
    store: VectorStore
    embedder: EmbeddingModel
    feedback: FeedbackLog
    auth: AdminAuth
    #: The admin operations on the same store (``build_services`` always opens it).
    kb: KnowledgeBase
    models: ModelChoice = "real"
    _choices: tuple[float, list[str], dict[str, list[str]]] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def data_dir(self) -> Path:
        return Path(self.settings.data_dir)

    @property
    def media_root(self) -> Path:
        return self.data_dir / "media"

    @property
    def upload_dir(self) -> Path:
        """Derived query images (rendered PDF pages, crops): served back to the chat, so kept apart from data."""
        d = self.data_dir / "uploads"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def prune_uploads(self, max_age_s: float = 24 * 3600) -> int:
        """Delete derived query images older than ``max_age_s`` (they only matter to live conversations)."""
        cutoff, n = time.time() - max_age_s, 0
        for p in self.upload_dir.glob("*.png"):
            try:
                if p.name != "no-image.png" and p.stat().st_mtime < cutoff:
                    p.unlink()
                    n += 1
            except OSError:
                pass
        return n

    # -- filter pickers -------------------------------------------------------------------------------------------
    def filter_choices(self, max_age_s: float = 60.0) -> tuple[list[str], dict[str, list[str]]]:
        """(product lines, line -> equipment models) from the store's case points, cached for ``max_age_s``."""
        with self._lock:
            if self._choices is not None and time.monotonic() - self._choices[0] < max_age_s:
                return self._choices[1], self._choices[2]
        by_line: dict[str, set[str]] = {}
        try:
            for p in self.store.scroll(filters={"kind": "text"}, batch_size=1024,
                                       payload_keys=["product_line", "equipment_model"]):
                line = p.payload.get("product_line")
                if isinstance(line, str) and line:
                    models = by_line.setdefault(line, set())
                    model = p.payload.get("equipment_model")
                    if isinstance(model, str) and model:
                        models.add(model)
        except Exception:  # a broken store must not break page load; the chat reports store errors itself
            logger.exception("could not read filter values from the store")
        lines = sorted(by_line)
        models = {k: sorted(v) for k, v in by_line.items()}
        with self._lock:
            self._choices = (time.monotonic(), lines, models)
        return lines, models

    def invalidate_choices(self) -> None:
        with self._lock:
            self._choices = None

    def close(self) -> None:
        for obj in (self.kb, self.store):
            close = getattr(obj, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    logger.exception("error while closing %s", type(obj).__name__)


def open_knowledge_base(settings: Settings, embedder: EmbeddingModel) -> KnowledgeBase:
    """The ``KnowledgeBase`` façade (admin operations) on the store under ``settings.data_dir``.

    The knowledge base opens the store itself, recorded for ``embedder`` (its name is the store's embedder id), and
    refuses a store built with another embedder or dimension (``ragvqa kb reindex``).
    """
    from knowledge_base.kb import KnowledgeBase

    return KnowledgeBase.open(settings, embedder)


def build_services(settings: Settings, *, models: ModelChoice = "real", ui: UISettings | None = None,
                   credentials: tuple[str, str] | None | Literal["env"] = "env", load_sample: bool = True,
                   loaded: LoadedModels | None = None) -> Services:
    """Load models (``rag.models.factory``: the one loading policy of every tool), open the KB and its store under
    ``settings.data_dir``, load the sample KB into an empty store. ``loaded`` skips loading (tests)."""
    from rag.models.factory import load_models

    ui = ui or UISettings()
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    if models == "tiny":
        settings = settings.model_copy(update={"device": "cpu", "dtype": "float32"})
    m = loaded or load_models(settings, models)
    embedder, generator = m.require_embedder(), m.require_generator()
    kb = open_knowledge_base(settings, embedder)
    store = kb.store
    if load_sample and store.count() == 0:
        load_sample_kb(kb, data_dir)
    pipeline = RagPipeline.from_components(embedder=embedder, reranker=m.reranker, generator=generator, store=store,
                                           settings=settings, media_root=data_dir / "media")
    creds = AdminCredentials().resolved() if credentials == "env" else credentials
    auth = AdminAuth(creds, session_seconds=ui.admin_session_minutes * 60, max_failures=ui.admin_max_failures,
                     lockout_seconds=ui.admin_lockout_seconds)
    if not auth.enabled and credentials == "env":
        logger.warning("admin tab disabled: set RAGVQA_ADMIN_USER and RAGVQA_ADMIN_PASSWORD (or _FILE)")
    services = Services(settings=settings, ui=ui, pipeline=pipeline, store=store, embedder=embedder,
                        feedback=FeedbackLog(data_dir / "feedback.sqlite3"), auth=auth, kb=kb, models=models)
    services.prune_uploads()
    return services


def load_sample_kb(kb: KnowledgeBase, data_dir: Path) -> None:
    """First run: build the bundled sample KB and ingest it (the store was empty)."""
    t0 = time.perf_counter()
    sample_dir = data_dir / "sample"
    try:
        result = kb.ensure_sample(sample_dir)
    except Exception:
        logger.exception("could not load the sample knowledge base; the store stays empty")
        return
    summary = result.summary() if hasattr(result, "summary") else result
    logger.info("sample knowledge base loaded into the empty store in %.1f s: %s", time.perf_counter() - t0, summary)


def env_flag(name: str, default: bool = False) -> bool:
    v = os.environ.get(name)
    return default if v is None else v.strip().lower() in ("1", "true", "yes", "on")
