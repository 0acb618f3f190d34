"""``KnowledgeBase``: the one object the CLI, the UI and the tests use to add, change, inspect, repair, back up and
re-embed the fault cases.

It owns the consistency rules between the three places a case lives: the media files (``data_dir/media``,
content-addressed), the vector store (one text point + one point per media) and the case record inside the text
point's payload (the source of truth). Writes go media → media points → text point; deletes go text point →
media points → unreferenced files; ``check`` finds and repairs anything an interruption left in between.

One writer at a time: methods that write hold a lock (the Gradio app calls them from worker threads), and Qdrant
Edge itself allows one process per store.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from pydantic import ValidationError

from knowledge_base.archive import (
    BACKUP_FORMAT,
    IngestInputError,
    MediaSource,
    SourceCase,
    clean_case_text,
    format_validation_error,
    normalise_media_field,
    load_source,
    read_jsonl,
)
from knowledge_base.dedup import NEAR_DUP_KINDS, Duplicate, MediaIndex
from knowledge_base.ingest import (
    IngestOptions,
    IngestResult,
    ItemReport,
    embed_item,
    ingest_records,
    media_payload,
    text_payload,
)
from knowledge_base.media_store import MediaError, MediaStore
from knowledge_base.schema import Case, CaseInput, MediaItem
from rag.config import Settings
from rag.errors import UserInputError
from rag.fileio import atomic_writer
from rag.store import EdgeStore, StoreError, StoreMeta, StoreMismatchError, VectorPoint, VectorStore, open_store, point_id, store_kwargs_from_settings
from rag.validation import InputRejected, confine_path

__all__ = [
    "CaseNotFoundError",
    "CasePage",
    "CaseRejectedError",
    "CheckReport",
    "KnowledgeBase",
    "ReindexResult",
]

log = logging.getLogger(__name__)

#: Filters ``list_cases`` accepts (the keyword-indexed case fields).
CASE_FILTERS = ("product_line", "equipment_model", "tags")
#: Temp files older than this are stale even where other processes may share the media folder (server mode).
TEMP_MAX_AGE_S = 3600.0
#: Case fields ``update`` may change.
UPDATABLE = ("title", "product_line", "equipment_model", "symptom", "cause", "solution", "error_codes", "tags",
             "severity", "source", "links")

MediaLike = MediaSource | str | os.PathLike[str] | bytes | tuple[str, bytes]
Progress = bool | Callable[[int, int], Any]


class CaseNotFoundError(UserInputError, KeyError):
    """No case with this id."""

    def __str__(self) -> str:
        return f"no case with id {self.args[0]!r}"


class CaseRejectedError(UserInputError, ValueError):
    """A single add/update was refused; ``report`` says why (and nothing was written)."""

    def __init__(self, report: ItemReport) -> None:
        super().__init__(f"{report.where}: {report.reason}")
        self.report = report


@dataclass
class CasePage:
    """One page of a case listing: ``total`` matching cases, ``cases`` from ``offset``."""

    total: int
    cases: list[Case]
    offset: int = 0


@dataclass
class ReindexResult:
    cases: int
    points: int
    skipped_media: list[str]
    embedder_id: str
    dim: int
    elapsed_s: float
    #: int8 scalar quantization of the new store (``RAGVQA_STORE_QUANTIZATION`` unless overridden).
    quantization: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"cases": self.cases, "points": self.points, "skipped_media": self.skipped_media,
                "embedder_id": self.embedder_id, "dim": self.dim, "quantization": self.quantization,
                "elapsed_s": round(self.elapsed_s, 3)}


@dataclass
class CheckReport:
    """Consistency problems between records, points and files; ``fixed`` counts repairs when run with fix=True."""

    cases: int = 0
    points: int = 0
    media_files: int = 0
    #: Media points whose case has no text point (interrupted import or delete).
    orphan_points: list[str] = field(default_factory=list)
    #: Media points of an existing case that its record no longer lists (interrupted update).
    stale_points: list[str] = field(default_factory=list)
    #: (case id, media id) listed by a case but without a point.
    missing_points: list[tuple[str, str]] = field(default_factory=list)
    #: (case id, media id, path) whose file is gone from the media store.
    missing_files: list[tuple[str, str, str]] = field(default_factory=list)
    #: Media files no case references.
    unreferenced_files: list[str] = field(default_factory=list)
    #: Points written by another embedder than the store's (their vectors are not comparable).
    embedder_mismatch: list[str] = field(default_factory=list)
    #: Media points whose payload disagrees with their case record (filters would be wrong).
    payload_mismatch: list[str] = field(default_factory=list)
    #: Text points whose case record does not parse.
    invalid_cases: list[str] = field(default_factory=list)
    #: Leftover temp files of interrupted writes.
    temp_files: int = 0
    #: Store built for another embedder/dimension than the one configured (needs ``kb reindex``).
    meta_problem: str | None = None
    fixed: dict[str, int] = field(default_factory=dict)

    @property
    def problems(self) -> int:
        return (len(self.orphan_points) + len(self.stale_points) + len(self.missing_points) + len(self.missing_files)
                + len(self.unreferenced_files) + len(self.embedder_mismatch) + len(self.payload_mismatch)
                + len(self.invalid_cases) + self.temp_files + (1 if self.meta_problem else 0))

    def counts(self) -> dict[str, int]:
        return {
            "orphan_points": len(self.orphan_points), "stale_points": len(self.stale_points),
            "missing_points": len(self.missing_points), "missing_files": len(self.missing_files),
            "unreferenced_files": len(self.unreferenced_files), "embedder_mismatch": len(self.embedder_mismatch),
            "payload_mismatch": len(self.payload_mismatch), "invalid_cases": len(self.invalid_cases),
            "temp_files": self.temp_files, "meta_problem": 1 if self.meta_problem else 0,
        }

    def summary(self) -> str:
        bad = {k: v for k, v in self.counts().items() if v}
        head = f"{self.cases} cases, {self.points} points, {self.media_files} media files: "
        body = "no problems" if not bad else ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in bad.items())
        tail = f" (fixed: {', '.join(f'{v} {k}' for k, v in self.fixed.items())})" if self.fixed else ""
        return head + body + tail + (f"; {self.meta_problem}" if self.meta_problem else "")

    def to_dict(self) -> dict[str, Any]:
        return {"cases": self.cases, "points": self.points, "media_files": self.media_files, "problems": self.problems,
                **self.counts(), "meta_problem_text": self.meta_problem, "fixed": self.fixed,
                "details": {"orphan_points": self.orphan_points, "stale_points": self.stale_points,
                            "missing_points": [list(x) for x in self.missing_points],
                            "missing_files": [list(x) for x in self.missing_files],
                            "unreferenced_files": self.unreferenced_files, "invalid_cases": self.invalid_cases}}


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


class KnowledgeBase:
    """Facade over the media store and the vector store; see the module docstring."""

    def __init__(self, *, settings: Settings, embedder: Any, store: VectorStore, media: MediaStore,
                 options: IngestOptions | None = None, embedder_id: str | None = None) -> None:
        """Prefer :meth:`open`."""
        self.settings = settings
        self.data_dir = Path(settings.data_dir)
        self.embedder = embedder
        self.store = store
        self.media = media
        self.options = options or IngestOptions()
        self.embedder_id = embedder_id or store.meta.embedder_id
        #: The vector size this KB writes (``Settings.embed_dim`` or the model's; a reindex may change it).
        self.embed_dim = (settings.embed_dim or int(embedder.dim)) if embedder is not None else store.dim
        self._lock = threading.RLock()
        self._index: MediaIndex | None = None

    # -- construction -------------------------------------------------------------------------------------------
    @staticmethod
    def embedder_id_of(embedder: Any, settings: Settings) -> str:
        """The id recorded in the store's meta: the embedder's name (model id or path), else the configured one."""
        return str(getattr(embedder, "name", "") or settings.embedder_model)

    @classmethod
    def open(cls, settings: Settings | None = None, embedder: Any = None, store: VectorStore | None = None, *,
             options: IngestOptions | None = None, strict: bool = True) -> KnowledgeBase:
        """Open (or create) the KB under ``settings.data_dir``; the store comes from the settings unless given.

        A store built with another embedder or dimension raises ``StoreMismatchError`` (run ``kb reindex``).
        ``strict=False`` opens such a store anyway, for maintenance only (``reindex``, ``check``, ``export``).
        """
        settings = settings or Settings()
        if embedder is None:
            if strict or store is not None:
                raise ValueError("an embedder is needed (see rag.models.factory.load_models); "
                                 "without one, open read-only with strict=False")
            store = open_store(embedder_id=None, dim=None, **store_kwargs_from_settings(settings))
            eid, dim = store.meta.embedder_id, store.dim
        else:
            eid = cls.embedder_id_of(embedder, settings)
            dim = settings.embed_dim or int(embedder.dim)
        if store is None:
            kwargs = store_kwargs_from_settings(settings)
            if strict:
                store = open_store(embedder_id=eid, dim=dim, **kwargs)
            else:
                try:
                    store = open_store(embedder_id=None, dim=None, **kwargs)
                except StoreError:  # nothing there yet: create it for this embedder
                    store = open_store(embedder_id=eid, dim=dim, **kwargs)
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
        return kb

    def clean_temp_files(self, max_age_s: float = 0.0) -> int:
        """Delete media temp files older than ``max_age_s`` (left by interrupted writes); returns how many."""
        tmp = self.media.root / ".tmp"
        if not tmp.is_dir():
            return 0
        now, n = time.time(), 0
        for f in tmp.iterdir():
            with contextlib.suppress(OSError):
                if now - f.stat().st_mtime >= max_age_s:
                    f.unlink()
                    n += 1
        if n:
            log.info("removed %d temp file(s) left by an interrupted write", n)
        return n

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

    # -- internals shared with the importer ---------------------------------------------------------------------
    def embed(self, items: Sequence[dict[str, Any]], embedder: Any = None, dim: int | None = None) -> np.ndarray:
        """Document-side embeddings (default instruction), at the store's dimension."""
        emb = embedder or self.embedder
        if emb is None:
            raise RuntimeError("this knowledge base was opened without an embedder (read-only maintenance)")
        if embedder is None and (self.embedder_id != self.store.meta.embedder_id or self.embed_dim != self.store.dim):
            raise StoreMismatchError(
                f"the store holds vectors of {self.store.meta.embedder_id!r} (dim {self.store.dim}) but the configured "
                f"embedder is {self.embedder_id!r} (dim {self.embed_dim}); run `ragvqa kb reindex` first")
        return emb.embed(list(items), instruction=None, dim=dim or self.dim,
                         batch_size=self.options.embed_batch_size or self.settings.embed_batch_size)

    def media_index(self, refresh: bool = False) -> MediaIndex:
        """Who owns which media content (rebuilt from the store when asked: another process may have written)."""
        if self._index is None or refresh:
            self._index = MediaIndex.build(self.store)
        return self._index

    # -- adding -------------------------------------------------------------------------------------------------
    def _sources(self, media: Iterable[MediaLike]) -> list[MediaSource]:
        out = []
        for i, m in enumerate(media):
            if isinstance(m, MediaSource):
                out.append(m)
            elif isinstance(m, (bytes, bytearray)):
                out.append(MediaSource(name=f"upload-{i + 1}", data=bytes(m)))
            elif isinstance(m, tuple) and len(m) == 2 and isinstance(m[1], (bytes, bytearray)):
                out.append(MediaSource(name=str(m[0]), data=bytes(m[1])))
            else:
                p = Path(m)  # type: ignore[arg-type]
                if not p.is_file():
                    raise MediaError(p.name, f"file not found ({p})")
                out.append(MediaSource(name=p.name, path=p))
        return out

    def add_case(self, case: CaseInput | Mapping[str, Any], media: Sequence[MediaLike] = (), *,
                 base_dir: str | os.PathLike[str] | None = None) -> ItemReport:
        """Add (or re-import) one case. ``case.media`` paths are resolved against ``base_dir`` (default: cwd);
        ``media`` adds files given as paths, bytes or ``(filename, bytes)``.

        Raises :class:`CaseRejectedError` (nothing written) when the case or a media file is refused.
        """
        where = "add"
        try:
            raw = case.model_dump() if isinstance(case, CaseInput) else dict(case)
            normalise_media_field(raw)
            ci = CaseInput.model_validate(clean_case_text(raw))
            where = f"add {ci.resolved_id()}"
            base = Path(base_dir) if base_dir is not None else Path.cwd()
            sources = []
            for m in ci.media:  # paths written in the case itself stay inside base_dir (the shared rule)
                p = confine_path(base, m.path)
                if not p.is_file():
                    raise MediaError(m.path, f"file not found ({p})")
                sources.append(MediaSource(name=p.name, path=p, kind=m.kind, caption=m.caption, page=m.page))
            sources += self._sources(media)
        except ValidationError as e:
            raise CaseRejectedError(ItemReport(where=where, status="rejected", reason=format_validation_error(e))) from None
        except (MediaError, InputRejected) as e:
            raise CaseRejectedError(ItemReport(where=where, status="rejected", reason=str(e))) from None
        result = self.import_records([SourceCase(where=where, case=ci, media=sources)], source=where)
        report = result.items[0]
        if report.status == "rejected":
            raise CaseRejectedError(report)
        return report

    def import_records(self, records: Sequence[SourceCase], *, source: str = "api", progress: Progress = False,
                       on_item: Callable[[ItemReport], None] | None = None) -> IngestResult:
        """Import parsed records (see :mod:`knowledge_base.archive`). ``progress``: True for a terminal bar, or a
        callable ``(done, total)`` (e.g. a Gradio progress), called after each record."""
        callback = on_item
        if callable(progress):
            total, done, fn = len(records), [0], progress

            def callback(report: ItemReport) -> None:
                done[0] += 1
                fn(done[0], total)
                if on_item is not None:
                    on_item(report)

        with self._lock:
            self.media.clear_stale_temp()  # left by a write that was killed; a re-run is how imports resume
            return ingest_records(self, records, source=source, progress=progress is True, on_item=callback)

    def import_path(self, path: str | os.PathLike[str], *, media_dir: str | os.PathLike[str] | None = None,
                    progress: Progress = False, on_item: Callable[[ItemReport], None] | None = None) -> IngestResult:
        """Import a JSONL/CSV file, a folder (one sub-folder per case), a zip of those, or an export zip.

        Re-running it is safe and resumes an interrupted run: unchanged cases are skipped.
        Raises :class:`IngestInputError` when the source as a whole is unusable.
        """
        md = Path(media_dir) if media_dir is not None else None
        with load_source(path, media_dir=md, max_zip_bytes=self.options.max_zip_bytes,
                         max_zip_files=self.options.max_zip_files) as bundle:
            if md is not None and bundle.kind == "jsonl":
                bundle.records = read_jsonl(bundle.path, base_dir=md)
            log.info("importing %d record(s) from %s (%s)", len(bundle.records), path, bundle.kind)
            return self.import_records(bundle.records, source=str(path), progress=progress, on_item=on_item)

    #: Alias for callers that think in "cases".
    import_cases = import_path

    # -- reading ------------------------------------------------------------------------------------------------
    def get(self, case_id: str) -> Case | None:
        """The stored case, or None."""
        pts = self.store.retrieve([point_id(case_id)])
        if not pts:
            return None
        return Case.model_validate(pts[0].payload["case"])

    def _text_payloads(self, filters: Mapping[str, Any] | None = None, keys: list[str] | None = None):
        flt = {**(filters or {}), "kind": "text"}
        return self.store.scroll(filters=flt, batch_size=512, payload_keys=keys)

    def count_cases(self) -> int:
        return self.store.count({"kind": "text"})

    def list_cases(self, filters: Mapping[str, str | Sequence[str] | None] | None = None, text: str | None = None,
                   limit: int = 50, offset: int = 0) -> CasePage:
        """Cases sorted by id; ``filters`` on product_line/equipment_model/tags (a value or any of a list);
        ``text``: case-insensitive substring of id, title, symptom, cause, solution, error codes or tags."""
        filters = dict(filters or {})
        bad = set(filters) - set(CASE_FILTERS)
        if bad:
            raise ValueError(f"unknown filter(s) {sorted(bad)}; allowed: {', '.join(CASE_FILTERS)}")
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must not be negative")
        needle = (text or "").strip().lower()
        cases = []
        for p in self._text_payloads(filters, ["case"]):
            try:
                c = Case.model_validate(p.payload["case"])
            except (ValidationError, KeyError):
                continue
            if needle:
                hay = "\n".join([c.id, c.title, c.equipment, c.symptom, c.cause, *c.solution, *c.error_codes, *c.tags])
                if needle not in hay.lower():
                    continue
            cases.append(c)
        cases.sort(key=lambda c: c.id)
        return CasePage(total=len(cases), cases=cases[offset:offset + limit], offset=offset)

    def stats(self) -> dict[str, Any]:
        """Counts for dashboards: cases, points, media by kind, cases per product line, files, store meta."""
        kinds: Counter[str] = Counter()
        lines: Counter[str] = Counter()
        for p in self.store.scroll(batch_size=1024, payload_keys=["kind", "product_line"]):
            kind = p.payload.get("kind", "?")
            kinds[kind] += 1
            if kind == "text":
                lines[p.payload.get("product_line") or "?"] += 1
        files = list(self.media.iter_files())
        size = sum((self.media.root / f).stat().st_size for f in files)
        return {
            "cases": kinds.pop("text", 0),
            "points": sum(kinds.values()) + sum(lines.values()),
            "media": dict(sorted(kinds.items())),
            "product_lines": dict(sorted(lines.items())),
            "media_files": len(files),
            "media_bytes": size,
            "store": self.store.meta.model_dump(mode="json"),
            "store_backend": type(self.store).__name__,
            "embedder": self.embedder_id,
            "data_dir": str(self.data_dir),
        }

    # -- changing -----------------------------------------------------------------------------------------------
    def update(self, case: str | CaseInput, changes: Mapping[str, Any] | None = None, *,
               add_media: Sequence[MediaLike] = (), remove_media: Sequence[str] = (),
               base_dir: str | os.PathLike[str] | None = None) -> ItemReport:
        """Change fields (``UPDATABLE``), add media, remove media (by media id or original file name).

        ``case`` is a case id, or a ``CaseInput`` whose fields replace the stored ones and whose media files are
        added (stored media are kept unless removed). Re-embeds only what changed (new media; the text vector
        only if the embedded text changed). Kept media points are not rewritten: left alone when their payload is
        unchanged, payload-only when a case field they carry for filtering changed (tags, product line, model,
        title); their stored vectors never pass through the store again. Bumps ``version`` and ``updated_at``.
        Raises :class:`CaseNotFoundError` / :class:`CaseRejectedError` (nothing written).
        """
        if isinstance(case, CaseInput):
            case_id = case.resolved_id()
            base = Path(base_dir) if base_dir is not None else Path.cwd()
            try:  # paths written in the case itself stay inside base_dir (the shared rule)
                extra = [MediaSource(name=Path(m.path).name, path=confine_path(base, m.path),
                                     kind=m.kind, caption=m.caption, page=m.page) for m in case.media]
            except InputRejected as e:
                raise CaseRejectedError(ItemReport(where=f"update {case_id}", status="rejected", case_id=case_id,
                                                   reason=str(e))) from None
            missing = [str(m.path) for m in extra if m.path is not None and not m.path.is_file()]
            if missing:
                raise CaseRejectedError(ItemReport(where=f"update {case_id}", status="rejected", case_id=case_id,
                                                   reason=f"media file(s) not found: {', '.join(missing)}"))
            # Only the fields the caller set: a form that does not edit links must not erase them.
            changes = {**case.model_dump(include=set(UPDATABLE) & case.model_fields_set), **dict(changes or {})}
            add_media = [*extra, *add_media]
        else:
            case_id = case
        changes = dict(changes or {})
        bad = set(changes) - set(UPDATABLE)
        if bad:
            raise ValueError(f"cannot update field(s) {sorted(bad)}; updatable: {', '.join(UPDATABLE)}")
        with self._lock:
            old = self.get(case_id)
            if old is None:
                raise CaseNotFoundError(case_id)
            where = f"update {case_id}"
            remove = set(remove_media)
            unknown = remove - {m.id for m in old.media} - {m.source_file for m in old.media if m.source_file}
            if unknown:
                raise CaseRejectedError(ItemReport(where=where, status="rejected", case_id=case_id,
                                                   reason=f"case has no media {sorted(unknown)}"))
            kept = [m for m in old.media if m.id not in remove and (m.source_file or "") not in remove]
            try:
                sources = self._sources(add_media)
                data = {**old.model_dump(), **clean_case_text(changes), "media": [m.model_dump() for m in kept]}
                new = Case.model_validate(data)
            except ValidationError as e:
                raise CaseRejectedError(ItemReport(where=where, status="rejected", case_id=case_id,
                                                   reason=format_validation_error(e))) from None
            except (MediaError, InputRejected) as e:
                raise CaseRejectedError(ItemReport(where=where, status="rejected", case_id=case_id, reason=str(e))) from None
            if not sources and new.model_dump(exclude={"updated_at"}) == old.model_dump(exclude={"updated_at"}):
                return ItemReport(where=where, status="skipped", case_id=case_id, reason="no change")
            now = _now()
            new = new.model_copy(update={"version": old.version + 1, "updated_at": max(now, old.created_at)})
            result = self.import_records([SourceCase(where=where, stored=new, media=sources)], source=where)
            report = result.items[0]
            if report.status == "rejected":
                raise CaseRejectedError(report)
            return report

    def delete(self, case_id: str) -> bool:
        """Delete a case: text point first (the case is gone), then its media points, then files no other case
        uses. Also cleans up after an interrupted delete or import of that id. Returns whether the case existed."""
        with self._lock:
            existed = self.get(case_id)
            self.store.delete_points([point_id(case_id)])
            shas = {m.sha256 for m in existed.media} if existed is not None else set()
            for p in self.store.scroll(filters={"case_id": case_id}, payload_keys=["sha256"]):
                if p.payload.get("sha256"):
                    shas.add(p.payload["sha256"])
            self.store.delete_case(case_id)
            index = self.media_index(refresh=True)
            for sha in shas:
                if not index.referenced(sha):
                    self.media.delete(sha)
            self.store.flush()
            if existed is not None:
                log.info("deleted case %s", case_id)
            return existed is not None

    def near_duplicates(self, threshold: float | None = None, *, limit: int = 1000) -> list[Duplicate]:
        """Pairs of images/PDF pages of different cases with cosine ≥ ``threshold`` (default: the import's), for an
        editor to review; each pair once, best first."""
        thr = threshold if threshold is not None else (self.options.near_dup_threshold or 0.95)
        pairs: dict[tuple[str, str], Duplicate] = {}
        for p in self.store.scroll(filters={"kind": list(NEAR_DUP_KINDS)}, with_vectors=True, batch_size=256,
                                   payload_keys=["case_id", "media_id", "source_file", "caption"]):
            if p.vector is None:
                continue
            cid, mid = p.payload.get("case_id"), p.payload.get("media_id")
            for h in self.store.search(p.vector, limit=8, filters={"kind": list(NEAR_DUP_KINDS)}):
                if h.score < thr:
                    break
                ocid, omid = h.payload.get("case_id"), h.payload.get("media_id")
                if not ocid or ocid == cid:
                    continue
                key = tuple(sorted([f"{cid}/{mid}", f"{ocid}/{omid}"]))
                if key not in pairs:
                    pairs[key] = Duplicate("near" if h.score < 0.99999 else "exact", cid, mid, ocid, omid, float(h.score))
        return sorted(pairs.values(), key=lambda d: -d.score)[:limit]

    # -- backup -------------------------------------------------------------------------------------------------
    def export(self, path: str | os.PathLike[str]) -> Path:
        """A zip backup: ``manifest.json`` + ``cases.jsonl`` (full case records) + ``media/<path>`` files.

        Import it with :meth:`import_path` (into this KB it is a no-op; into another, a restore). Written to a
        temp file and renamed, so a crash never leaves a truncated backup under the final name.
        """
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        cases, hashes = [], {}
        for p in self._text_payloads(keys=["case", "content_hash"]):
            try:
                c = Case.model_validate(p.payload["case"])
            except (ValidationError, KeyError):
                log.warning("export: skipping unreadable case record %s", p.id)
                continue
            cases.append(c)
            hashes[c.id] = p.payload.get("content_hash")
        cases.sort(key=lambda c: c.id)
        paths = sorted({m.path for c in cases for m in c.media})
        manifest = {"format": BACKUP_FORMAT, "version": 1, "exported_at": _now().isoformat(), "cases": len(cases),
                    "media_files": len(paths), "store": self.store.meta.model_dump(mode="json"),
                    "content_hashes": hashes}
        with atomic_writer(dest) as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("manifest.json", json.dumps(manifest, indent=2))
            zf.writestr("cases.jsonl", "".join(c.model_dump_json() + "\n" for c in cases))
            for rel in paths:
                src = self.media.path(rel)
                if not src.is_file():
                    log.warning("export: media file %s is missing; run `ragvqa kb check`", rel)
                    continue
                zf.write(src, f"media/{rel}", compress_type=zipfile.ZIP_STORED)
        log.info("exported %d cases and %d media files to %s", len(cases), len(paths), dest)
        return dest

    # -- consistency --------------------------------------------------------------------------------------------
    def check(self, fix: bool = False) -> CheckReport:
        """Find (and with ``fix``, repair) inconsistencies between case records, points and files.

        Repair assumes no import is running elsewhere (with a Qdrant server, other processes could be mid-write:
        their fresh files would look unreferenced)."""
        with self._lock:
            report, state = self._scan()
            if fix and report.problems:
                self._repair(report, state)
                self.store.flush()
            return report

    def _scan(self) -> tuple[CheckReport, dict[str, Any]]:
        r = CheckReport()
        eid = self.store.meta.embedder_id
        if eid != self.embedder_id or self.store.dim != self.embed_dim:
            r.meta_problem = (f"store built for {eid!r} (dim {self.store.dim}) but the configured embedder is "
                              f"{self.embedder_id!r} (dim {self.embed_dim}); run `ragvqa kb reindex`")
        cases: dict[str, Case] = {}
        media_pts: dict[str, dict[str, dict[str, Any]]] = {}
        for p in self.store.scroll(batch_size=256):
            r.points += 1
            pl = p.payload
            cid = pl.get("case_id")
            if pl.get("embedder") != eid:
                r.embedder_mismatch.append(p.id)
            if pl.get("kind") == "text":
                try:
                    cases[cid] = Case.model_validate(pl["case"])
                except (ValidationError, KeyError):
                    r.invalid_cases.append(str(cid))
            else:
                media_pts.setdefault(cid, {})[p.id] = pl
        r.cases = len(cases)
        referenced: set[str] = set()
        for cid, pts in media_pts.items():
            case = cases.get(cid)
            if case is None:
                if cid not in r.invalid_cases:
                    r.orphan_points += list(pts)
                continue
            items = {point_id(cid, m.id): m for m in case.media}
            for pid, pl in pts.items():
                item = items.get(pid)
                if item is None:
                    r.stale_points.append(pid)
                elif any(pl.get(k) != v for k, v in media_payload(case, item, eid).items() if k != "embedder"):
                    r.payload_mismatch.append(pid)
        for cid, case in cases.items():
            pts = media_pts.get(cid, {})
            for m in case.media:
                referenced.add(m.path)
                if not self.media.exists(m.path):
                    r.missing_files.append((cid, m.id, m.path))
                elif point_id(cid, m.id) not in pts:
                    r.missing_points.append((cid, m.id))
        files = list(self.media.iter_files())
        r.media_files = len(files)
        r.unreferenced_files = [f for f in files if f not in referenced]
        tmp = self.media.root / ".tmp"
        r.temp_files = sum(1 for _ in tmp.iterdir()) if tmp.is_dir() else 0
        return r, {"cases": cases}

    def _repair(self, r: CheckReport, state: dict[str, Any]) -> None:
        cases: dict[str, Case] = state["cases"]
        fixed: Counter[str] = Counter()
        dead = r.orphan_points + r.stale_points
        if dead:
            self.store.delete_points(dead)
            fixed["points_deleted"] += len(dead)
        # Cases to rewrite: drop media whose file is gone, re-embed missing/foreign points, rewrite payloads.
        rewrite: dict[str, set[str]] = {}
        if r.meta_problem:  # vectors from this embedder would not belong in this store: only deletions are safe
            log.warning("check --fix: %s; only deleting, no rewrites", r.meta_problem)
        for cid, mid, _ in ([] if r.meta_problem else r.missing_files):
            case = cases[cid]
            cases[cid] = case.model_copy(update={"media": [m for m in case.media if m.id != mid],
                                                 "version": case.version + 1, "updated_at": max(_now(), case.created_at)})
            self.store.delete_points([point_id(cid, mid)])
            rewrite.setdefault(cid, set())
            fixed["missing_media_removed"] += 1
        for cid, mid in [] if r.meta_problem else r.missing_points:
            rewrite.setdefault(cid, set()).add(point_id(cid, mid))
        by_id = {point_id(cid, m.id): cid for cid, c in cases.items() for m in c.media}
        by_id.update({point_id(cid): cid for cid in cases})
        for pid in [] if r.meta_problem else r.embedder_mismatch + r.payload_mismatch:
            if pid in by_id:
                rewrite.setdefault(by_id[pid], set()).add(pid)
        foreign = set(r.embedder_mismatch)
        for cid, need in rewrite.items():
            self._rewrite_case(cases[cid], need | foreign)
            fixed["cases_rewritten"] += 1
        if r.unreferenced_files:
            index = self.media_index(refresh=True)
            for rel in r.unreferenced_files:
                sha = PurePosixPath(rel).stem
                if not index.referenced(sha):
                    self.media.delete(rel)
                    fixed["files_deleted"] += 1
        if r.temp_files:
            fixed["temp_files_deleted"] += self.clean_temp_files(0.0)
        r.fixed = dict(fixed)
        log.info("check: repaired %s", r.fixed)

    def _rewrite_case(self, case: Case, reembed: set[str]) -> None:
        """Rewrite all points of ``case`` in write order, reusing stored vectors except for ids in ``reembed``."""
        eid = self.embedder_id
        ids = [point_id(case.id, m.id) for m in case.media] + [point_id(case.id)]
        have = {p.id: p for p in self.store.retrieve(ids, with_vectors=True)}
        vectors: dict[str, np.ndarray] = {}
        jobs: list[tuple[str, dict[str, Any]]] = []
        for m in case.media:
            pid = point_id(case.id, m.id)
            p = have.get(pid)
            if p is not None and p.vector is not None and pid not in reembed and p.payload.get("embedder") == eid:
                vectors[pid] = p.vector
            else:
                jobs.append((pid, embed_item(self.media, m, f"{case.id}: {m.source_file or m.id}")))
        tp = have.get(point_id(case.id))
        if tp is not None and tp.vector is not None and point_id(case.id) not in reembed and tp.payload.get("embedder") == eid:
            vectors[point_id(case.id)] = tp.vector
        else:
            jobs.append((point_id(case.id), {"text": case.embedding_text()}))
        if jobs:
            vecs = self.embed([j[1] for j in jobs])
            vectors.update({pid: v for (pid, _), v in zip(jobs, vecs)})
        content_hash = (tp.payload.get("content_hash") if tp is not None else None) or ""
        if not content_hash:
            from knowledge_base.ingest import case_content_hash

            content_hash = case_content_hash(case)
        self.store.upsert([VectorPoint(id=point_id(case.id, m.id), vector=vectors[point_id(case.id, m.id)],
                                       payload=media_payload(case, m, eid)) for m in case.media])
        self.store.upsert([VectorPoint(id=point_id(case.id), vector=vectors[point_id(case.id)],
                                       payload=text_payload(case, content_hash, eid))])

    # -- re-embedding ---------------------------------------------------------------------------------------------
    def reindex(self, new_embedder: Any, *, dim: int | None = None, embedder_id: str | None = None,
                quantization: bool | None = None, chunk_cases: int | None = None,
                progress: bool = False) -> ReindexResult:
        """Blue-green rebuild with ``new_embedder``: every case is re-embedded into a new store; the switch is
        atomic and the old store keeps serving (and is kept) until then. On any error the new store is dropped.

        The new store is built with the configured store settings, not the old store's: ``quantization`` defaults
        to ``settings.store_quantization`` (``RAGVQA_STORE_QUANTIZATION``), which is what the store's open-time
        warning promises a reindex applies; index options (HNSW m/ef_construct...) come from the settings the
        store was opened with."""
        t0 = time.perf_counter()
        eid = embedder_id or self.embedder_id_of(new_embedder, self.settings)
        new_dim = dim or int(new_embedder.dim)
        quant = bool(self.settings.store_quantization if quantization is None else quantization)
        meta = StoreMeta(embedder_id=eid, dim=new_dim, quantization=quant)
        n = chunk_cases or self.options.chunk_cases
        skipped: list[str] = []
        with self._lock:
            payloads = [p.payload for p in self._text_payloads(keys=["case", "content_hash"])]
            new = self.store.begin_reindex(meta)
            points = 0
            try:
                from tqdm import tqdm

                bar = tqdm(total=len(payloads), unit="case", desc="reindex", disable=not progress, leave=False)
                for start in range(0, len(payloads), n):
                    chunk: list[tuple[Case, str]] = []
                    for pl in payloads[start:start + n]:
                        try:
                            chunk.append((Case.model_validate(pl["case"]), pl.get("content_hash") or ""))
                        except (ValidationError, KeyError):
                            skipped.append(f"unreadable case record {pl.get('case_id')}")
                    jobs: list[tuple[Case, MediaItem | None, dict[str, Any]]] = []
                    for case, _ in chunk:
                        jobs.append((case, None, {"text": case.embedding_text()}))
                        for m in case.media:
                            if self.media.exists(m.path):
                                jobs.append((case, m, embed_item(self.media, m, f"{case.id}: {m.source_file or m.id}")))
                            else:
                                skipped.append(f"{case.id}: {m.path} (file missing)")
                    vecs = self.embed([j[2] for j in jobs], embedder=new_embedder, dim=new_dim)
                    media_points, text_points = [], []
                    hashes = {c.id: h for c, h in chunk}
                    for (case, m, _), v in zip(jobs, vecs):
                        if m is None:
                            text_points.append(VectorPoint(id=point_id(case.id), vector=v,
                                                           payload=text_payload(case, hashes[case.id], eid)))
                        else:
                            media_points.append(VectorPoint(id=point_id(case.id, m.id), vector=v,
                                                            payload=media_payload(case, m, eid)))
                    new.upsert(media_points)
                    new.upsert(text_points)
                    points += len(media_points) + len(text_points)
                    bar.update(len(chunk))
                bar.close()
                new.flush()
                self.store.commit_reindex(new)
            except BaseException:
                with contextlib.suppress(Exception):
                    self.store.abort_reindex(new)
                raise
            self.store = new
            self.embedder = new_embedder
            self.embedder_id = eid
            self.embed_dim = new_dim
            self._index = None
        res = ReindexResult(cases=len(payloads), points=points, skipped_media=skipped, embedder_id=eid, dim=new_dim,
                            elapsed_s=time.perf_counter() - t0, quantization=quant)
        log.info("reindexed %d cases (%d points) with %s (dim %d, quantization=%s)", res.cases, res.points, eid,
                 new_dim, quant)
        return res

    # -- first run ----------------------------------------------------------------------------------------------
    def ensure_sample(self, sample_dir: str | os.PathLike[str], *, progress: bool = False) -> IngestResult | None:
        """If the KB has no case yet, build the sample KB under ``sample_dir`` and import it (first ``serve``)."""
        with self._lock:
            if self.count_cases() > 0:
                return None
            try:
                from knowledge_base.sample import build_sample_kb  # type: ignore[attr-defined]
            except ImportError as e:
                raise IngestInputError(f"the sample knowledge base generator is not available ({e})") from e
            sample = build_sample_kb(Path(sample_dir))
            cases_jsonl = Path(sample.cases_jsonl)
            base = _guess_base(cases_jsonl, Path(getattr(sample, "media_dir", cases_jsonl.parent)))
            records = read_jsonl(cases_jsonl, base_dir=base)
            log.info("knowledge base is empty: importing the sample KB (%d cases)", len(records))
            return self.import_records(records, source=str(cases_jsonl), progress=progress)


def _guess_base(cases_jsonl: Path, media_dir: Path) -> Path:
    """Media paths in a JSONL are relative to its folder; fall back to ``media_dir`` if that is where they are."""
    for line in cases_jsonl.read_text(encoding="utf-8").splitlines():
        try:
            media = json.loads(line).get("media") or []
        except (json.JSONDecodeError, AttributeError):
            continue
        for m in media:
            rel = m if isinstance(m, str) else (m or {}).get("path")
            if rel and not Path(rel).is_absolute():
                if (cases_jsonl.parent / rel).is_file():
                    return cases_jsonl.parent
                if (media_dir / rel).is_file():
                    return media_dir
    return cases_jsonl.parent

