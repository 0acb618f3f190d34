"""``KnowledgeBase``: the one object the CLI, the UI and the tests use to add, change, inspect, repair, back up and
re-embed the fault cases.

It owns the consistency rules between the three places a case lives: the media files (``data_dir/media``,
content-addressed), the vector store (one text point + one point per media) and the case record inside the text
point's payload (the source of truth). Writes go media → media points → text point; deletes go text point →
media points → unreferenced files; ``check`` finds and repairs anything an interruption left in between.

This class is a façade: opening and the shared state are here; the work is in two parts behind it, both on one
:class:`~knowledge_base.state.KBState`:

* :mod:`knowledge_base.cases`: add/update/delete/read cases, import files and folders (through
  :mod:`knowledge_base.ingest`, which gets a narrow :class:`~knowledge_base.ingest.IngestContext`, not this class);
* :mod:`knowledge_base.maintenance`: ``check`` (and fix), ``reindex``, ``export``, near-duplicate review.

One writer at a time: methods that write hold a lock (the Gradio app calls them from worker threads), and Qdrant
Edge itself allows one process per store.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar, cast, overload

import numpy as np
from pydantic import JsonValue

from knowledge_base.archive import RecordHook, SourceCase
from knowledge_base.audit import AUDIT_FILE, AuditLog, Change
from knowledge_base.cases import (
    CASE_FILTERS,
    UPDATABLE,
    CaseNotFoundError,
    CasePage,
    CaseRejectedError,
    Cases,
    KBStats,
    MediaLike,
    Progress,
)
from knowledge_base.dedup import Duplicate, MediaIndex
from knowledge_base.ingest import IngestOptions, IngestResult, ItemReport
from knowledge_base.maintenance import CheckReport, Maintenance, ReindexResult
from knowledge_base.media_store import MediaStore
from knowledge_base.schema import Case, CaseInput
from knowledge_base.state import EmbedderLike, KBState
from rag.config import Settings
from rag.models.protocols import Item
from rag.store import EdgeStore, StoreError, StoreMeta, VectorStore, open_store

__all__ = [
    "CASE_FILTERS",
    "TEMP_MAX_AGE_S",
    "UPDATABLE",
    "CaseNotFoundError",
    "CasePage",
    "CaseRejectedError",
    "CheckReport",
    "KnowledgeBase",
    "MediaLike",
    "Progress",
    "ReindexResult",
]

#: Temp files older than this are stale even where other processes may share the media folder (server mode).
TEMP_MAX_AGE_S = 3600.0

T = TypeVar("T")


class _Shared(Generic[T]):
    """A façade attribute that lives in the shared state, so the parts see a change (e.g. a test swapping the store)."""

    def __init__(self, attr: str) -> None:
        self.attr = attr

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> _Shared[T]: ...
    @overload
    def __get__(self, obj: KnowledgeBase, owner: type | None = None) -> T: ...
    def __get__(self, obj: KnowledgeBase | None, owner: type | None = None) -> T | _Shared[T]:
        return self if obj is None else cast(T, getattr(obj.state, self.attr))

    def __set__(self, obj: KnowledgeBase, value: T) -> None:
        setattr(obj.state, self.attr, value)


class KnowledgeBase:
    """Façade over the cases and maintenance parts; see the module docstring."""

    settings: _Shared[Settings] = _Shared("settings")
    data_dir: _Shared[Path] = _Shared("data_dir")
    embedder: _Shared[EmbedderLike | None] = _Shared("embedder")
    store: _Shared[VectorStore] = _Shared("store")
    media: _Shared[MediaStore] = _Shared("media")
    options: _Shared[IngestOptions] = _Shared("options")
    embedder_id: _Shared[str] = _Shared("embedder_id")
    #: The vector size this KB writes (``Settings.embed_dim`` or the model's; a reindex may change it).
    embed_dim: _Shared[int] = _Shared("embed_dim")
    #: The write lock (re-entrant), shared by both parts.
    _lock: _Shared[threading.RLock] = _Shared("lock")

    def __init__(self, *, settings: Settings, embedder: EmbedderLike | None, store: VectorStore, media: MediaStore,
                 options: IngestOptions | None = None, embedder_id: str | None = None) -> None:
        """Prefer :meth:`open`."""
        self.state = KBState(settings=settings, embedder=embedder, store=store, media=media, options=options,
                             embedder_id=embedder_id)
        self.cases = Cases(self.state)
        self.maintenance = Maintenance(self.state)
        #: Who changed what (``knowledge_base.audit``); every change method below writes to it.
        self.audit = AuditLog(Path(settings.data_dir) / AUDIT_FILE)

    # -- construction -------------------------------------------------------------------------------------------
    @staticmethod
    def embedder_id_of(embedder: EmbedderLike, settings: Settings) -> str:
        """The id recorded in the store's meta: the embedder's name (model id or path), else the configured one."""
        return KBState.embedder_id_of(embedder, settings)

    @classmethod
    def open(cls, settings: Settings | None = None, embedder: EmbedderLike | None = None,
             store: VectorStore | None = None, *, options: IngestOptions | None = None,
             strict: bool = True) -> KnowledgeBase:
        """Open (or create) the KB under ``settings.data_dir``; the store comes from the settings unless given.

        A store built with another embedder or dimension raises ``StoreMismatchError`` (run ``kb reindex``).
        ``strict=False`` opens such a store anyway, for maintenance only (``reindex``, ``check``, ``export``).
        """
        settings = settings or Settings()
        if embedder is None:
            if strict or store is not None:
                raise ValueError("an embedder is needed (see rag.models.factory.load_models); "
                                 "without one, open read-only with strict=False")
            store = open_store(embedder_id=None, dim=None, config=settings.store_config())
            eid, dim = store.meta.embedder_id, store.dim
        else:
            eid = cls.embedder_id_of(embedder, settings)
            dim = settings.embed_dim or int(embedder.dim)
        if store is None:
            config = settings.store_config()
            if strict:
                store = open_store(embedder_id=eid, dim=dim, config=config)
            else:
                try:
                    store = open_store(embedder_id=None, dim=None, config=config)
                except StoreError:  # nothing there yet: create it for this embedder
                    store = open_store(embedder_id=eid, dim=dim, config=config)
        elif strict:
            StoreMeta(embedder_id=eid, dim=dim).check_compatible(store.meta, repr(store))
        vb = settings.vision
        media = MediaStore(Path(settings.data_dir) / "media", max_bytes=vb.max_file_bytes,
                           max_image_pixels=vb.max_image_pixels, min_image_side=vb.min_image_side,
                           max_video_seconds=vb.max_video_seconds,
                           max_video_frames=vb.max_video_frames)
        if options is None:
            options = IngestOptions()
        if options.embed_batch_size is None:
            options = options.model_copy(update={"embed_batch_size": settings.embed_batch_size})
        kb = cls(settings=settings, embedder=embedder, store=store, media=media, options=options, embedder_id=eid)
        # Temp files are what an interrupted write leaves. Qdrant Edge locks the store to this process, so every
        # temp file of this data dir is stale; with a server, other processes may be writing: only old ones are.
        kb.clean_temp_files(max_age_s=0.0 if isinstance(store, EdgeStore) else TEMP_MAX_AGE_S)
        kb.audit.recover(kb._version_of)
        return kb

    # -- audit (knowledge_base.audit) -------------------------------------------------------------------------------
    def _version_of(self, case_id: str) -> int | None:
        case = self.get(case_id)
        return None if case is None else case.version

    @contextlib.contextmanager
    def audited(self, action: str, case_id: str | None = None,
                detail: dict[str, JsonValue] | None = None) -> Iterator[Change]:
        """Run a change of ``case_id`` (None: many cases) under the write lock with its audit entry: the version
        before is read now, the version after when the block ends; a crash in between is closed on the next open.
        For changes made outside this class (e.g. confirming a related-case link)."""
        with self._lock:
            before = None if case_id is None else self._version_of(case_id)
            after = None if case_id is None else (lambda: self._version_of(case_id))
            with self.audit.change(action, case_id, before, detail, after=after) as ch:
                yield ch

    def _audit_item(self, report: ItemReport, action: str = "import") -> None:
        """One case of a bulk import, logged once it is stored."""
        if report.case_id and report.status in ("added", "updated"):
            after = self._version_of(report.case_id)
            before = None if report.status == "added" or after is None else after - 1
            self.audit.record(action, report.case_id, before, after, {"status": report.status, "where": report.where})

    def _audited_import(self, source: str, run: Callable[[Callable[[ItemReport], None]], IngestResult],
                        on_item: Callable[[ItemReport], None] | None) -> IngestResult:
        def item(r: ItemReport) -> None:
            self._audit_item(r)
            if on_item is not None:
                on_item(r)

        with self._lock, self.audit.change("import", None, None, {"source": source}) as ch:
            res = run(item)
            ch.detail.update(added=res.added, updated=res.updated, skipped=res.skipped, rejected=res.rejected)
            ch.changed = bool(res.added or res.updated)
            return res

    def clean_temp_files(self, max_age_s: float = 0.0) -> int:
        """Delete media temp files older than ``max_age_s`` (left by interrupted writes); returns how many."""
        return self.state.clean_temp_files(max_age_s)

    @property
    def dim(self) -> int:
        return self.store.dim

    @property
    def media_root(self) -> Path:
        """What the pipeline resolves ``media_path``/``thumbnail`` payloads against."""
        return self.media.root

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> KnowledgeBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- shared internals ---------------------------------------------------------------------------------------
    def embed(self, items: Sequence[Item], embedder: EmbedderLike | None = None,
              dim: int | None = None) -> np.ndarray:
        """Document-side embeddings (default instruction), at the store's dimension."""
        return self.state.embed(items, embedder, dim)

    def media_index(self, refresh: bool = False) -> MediaIndex:
        """Who owns which media content (rebuilt from the store when asked: another process may have written)."""
        return self.state.media_index(refresh)

    # -- cases (knowledge_base.cases) -----------------------------------------------------------------------------
    def add_case(self, case: CaseInput | Mapping[str, Any], media: Sequence[MediaLike] = (), *,
                 base_dir: str | os.PathLike[str] | None = None) -> ItemReport:
        """Add (or re-import) one case; see :meth:`Cases.add_case`."""
        cid = case.id if isinstance(case, CaseInput) else case.get("id") if isinstance(case, Mapping) else None
        cid = cid if isinstance(cid, str) and cid else None
        with self.audited("add", cid) as ch:
            report = self.cases.add_case(case, media, base_dir=base_dir)
            ch.changed = report.status in ("added", "updated")
            if cid is None and report.case_id:
                ch.case_id, ch.after_version = report.case_id, self._version_of(report.case_id)
            return report

    def import_records(self, records: Sequence[SourceCase], *, source: str = "api", progress: Progress = False,
                       on_item: Callable[[ItemReport], None] | None = None) -> IngestResult:
        """Import parsed records; see :meth:`Cases.import_records`."""
        return self._audited_import(source, lambda item: self.cases.import_records(
            records, source=source, progress=progress, on_item=item), on_item)

    def import_path(self, path: str | os.PathLike[str], *, media_dir: str | os.PathLike[str] | None = None,
                    progress: Progress = False, on_item: Callable[[ItemReport], None] | None = None,
                    prepare: RecordHook | None = None) -> IngestResult:
        """Import a JSONL/CSV file, a folder, a zip or an export zip; see :meth:`Cases.import_path`."""
        return self._audited_import(str(path), lambda item: self.cases.import_path(
            path, media_dir=media_dir, progress=progress, on_item=item, prepare=prepare), on_item)

    #: Alias for callers that think in "cases".
    import_cases = import_path

    def get(self, case_id: str) -> Case | None:
        """The stored case, or None."""
        return self.state.get(case_id)

    def count_cases(self) -> int:
        return self.state.count_cases()

    def list_cases(self, filters: Mapping[str, str | Sequence[str] | None] | None = None, text: str | None = None,
                   limit: int = 50, offset: int = 0) -> CasePage:
        """Cases sorted by id, filtered; see :meth:`Cases.list_cases`."""
        return self.cases.list_cases(filters, text, limit, offset)

    def stats(self) -> KBStats:
        """Counts for dashboards; see :meth:`Cases.stats`."""
        return self.cases.stats()

    def update(self, case: str | CaseInput, changes: Mapping[str, Any] | None = None, *,
               add_media: Sequence[MediaLike] = (), remove_media: Sequence[str] = (),
               base_dir: str | os.PathLike[str] | None = None) -> ItemReport:
        """Change fields, add or remove media; see :meth:`Cases.update`."""
        cid = case if isinstance(case, str) else case.id
        fields: list[JsonValue] = [*sorted(changes or {})]
        removed: list[JsonValue] = [*remove_media]
        with self.audited("update", cid, {"fields": fields, "add_media": len(add_media),
                                          "remove_media": removed}) as ch:
            report = self.cases.update(case, changes, add_media=add_media, remove_media=remove_media,
                                       base_dir=base_dir)
            ch.changed = report.status in ("added", "updated")
            return report

    def delete(self, case_id: str) -> bool:
        """Delete a case and what only it used; see :meth:`Cases.delete`."""
        with self.audited("delete", case_id) as ch:
            existed = self.cases.delete(case_id)
            ch.changed = existed
            return existed

    def ensure_sample(self, sample_dir: str | os.PathLike[str], *, progress: bool = False) -> IngestResult | None:
        """Import the sample KB if the KB is empty; see :meth:`Cases.ensure_sample`."""
        if self.count_cases():
            return None
        from knowledge_base.audit import acting_as

        with acting_as("system:sample"), self.audited("import", None, {"source": "sample"}) as ch:
            res = self.cases.ensure_sample(sample_dir, progress=progress)
            ch.changed = res is not None and bool(res.added)
            if res is not None:
                ch.detail.update(added=res.added, rejected=res.rejected)
            return res

    # -- maintenance (knowledge_base.maintenance) -----------------------------------------------------------------
    def near_duplicates(self, threshold: float | None = None, *, limit: int = 1000) -> list[Duplicate]:
        """Near-duplicate media pairs across cases; see :meth:`Maintenance.near_duplicates`."""
        return self.maintenance.near_duplicates(threshold, limit=limit)

    def export(self, path: str | os.PathLike[str]) -> Path:
        """A zip backup; see :meth:`Maintenance.export`."""
        return self.maintenance.export(path)

    def check(self, fix: bool = False) -> CheckReport:
        """Find (and with ``fix``, repair) inconsistencies; see :meth:`Maintenance.check`."""
        if not fix:
            return self.maintenance.check(False)
        with self.audited("check --fix") as ch:
            rep = self.maintenance.check(True)
            ch.detail.update(problems=rep.problems, summary=rep.summary())
            ch.changed = bool(rep.problems)
            return rep

    def reindex(self, new_embedder: EmbedderLike, *, dim: int | None = None, embedder_id: str | None = None,
                quantization: bool | None = None, chunk_cases: int | None = None,
                progress: bool = False) -> ReindexResult:
        """Blue-green re-embedding with ``new_embedder``; see :meth:`Maintenance.reindex`."""
        with self.audited("reindex", None, {"from": self.embedder_id}) as ch:
            res = self.maintenance.reindex(new_embedder, dim=dim, embedder_id=embedder_id,
                                           quantization=quantization, chunk_cases=chunk_cases, progress=progress)
            ch.detail.update(to=res.embedder_id, dim=res.dim, cases=res.cases)
            return res
