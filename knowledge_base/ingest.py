"""Writing cases into the knowledge base: media files → media points → text point, in that order, in chunks.

Why this shape:

* **Crash safety by write order.** Media files are content-addressed and written atomically first, then the media
  points, then the case's text point *last*: a case exists iff its text point exists, so an interrupted run leaves
  at worst media points/files without a case, which ``check`` finds and a re-run overwrites (point ids are
  deterministic).
* **Idempotent, resumable.** The text point carries a ``content_hash`` of the input (case fields + media hashes);
  an unchanged case is skipped without touching the model, a changed one re-embeds only what changed (vectors of
  unchanged media and an unchanged case text are reused from the store). A media point whose vector is reused is not
  rewritten: left alone, or only its payload replaced when a case field it carries changed (fewer writes, and a
  stored vector never passes through the engine's normalisation twice).
* **Throughput.** Media of many cases go to the embedder in one call (it buckets by length), and the next chunk's
  file work (hashing, copying, PDF rendering, thumbnails) runs in a background thread while the model computes.
* **A rejected item writes nothing** that stays: files it created are removed at the end of the run unless
  another case uses them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

import numpy as np
from pydantic import Field, JsonValue, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from knowledge_base.archive import MediaSource, SourceCase, format_validation_error
from knowledge_base.dedup import NEAR_DUP_KINDS, Duplicate, MediaIndex, MediaRef, NearDupFinder
from knowledge_base.media_store import MediaError, MediaStore, StoredKind, StoredMedia
from knowledge_base.pdf import PdfError, is_pdf, render_pdf_pages
from knowledge_base.schema import Case, CaseInput, CaseLink, MediaItem
from rag.models.embedder import EmbeddingError
from rag.payload import MediaKind, MediaPointPayload, TextPointPayload
from rag.store import VectorPoint, VectorStore, point_id
from rag.store.base import check_payload
from rag.validation import InputRejected, Limits, check_pdf

__all__ = [
    "EmbedFn",
    "IngestContext",
    "IngestOptions",
    "IngestResult",
    "ItemReport",
    "case_content_hash",
    "ingest_records",
    "input_content_hash",
    "media_payload",
    "text_payload",
]

log = logging.getLogger(__name__)

Status = Literal["added", "updated", "skipped", "rejected"]
#: Bump when the way inputs become stored cases changes, so re-imports redo every case.
RECIPE_VERSION = 1


class IngestOptions(BaseSettings):
    """Knowledge-base import settings (``RAGVQA_KB_*`` environment variables)."""

    model_config = SettingsConfigDict(env_prefix="RAGVQA_KB_", extra="ignore")

    #: Exact and near-duplicate detection across cases (backups are restored as they are).
    dedup: bool = True
    #: Cosine similarity from which two images of different cases count as the same picture; None: exact only.
    near_dup_threshold: float | None = Field(default=0.95, gt=0.0, le=1.0)
    #: Exact (brute-force) search for near duplicates; HNSW is plenty at this threshold.
    near_dup_exact: bool = False
    pdf_long_side: int = Field(default=1600, ge=256, le=4096)
    #: Pages beyond this are not imported (and the report says so).
    pdf_max_pages: int = Field(default=50, ge=1)
    #: Cases per embed/write chunk: bigger batches amortise overhead, smaller ones lose less on a crash.
    chunk_cases: int = Field(default=16, ge=1)
    #: Embedder batch size; None: ``Settings.embed_batch_size``.
    embed_batch_size: int | None = Field(default=None, ge=1)
    #: Stage the next chunk's files in a background thread while the model embeds the current one.
    prefetch: bool = True
    thumbnails: bool = True
    max_zip_bytes: int = 2 << 30
    max_zip_files: int = 10_000


#: Document-side embedding of model inputs (``{"text": ...}``/``{"image": path}``/``{"video": path}``), one row each,
#: at the store's dimension.
EmbedFn = Callable[[Sequence[dict[str, Any]]], np.ndarray]


@dataclass(frozen=True)
class IngestContext:
    """Everything an import run needs from the knowledge base, and nothing more (ingestion never sees the façade).

    ``index`` is the caller's media index, rebuilt from the store for this run; the run keeps it current as it
    writes, so the caller can keep using it afterwards."""

    store: VectorStore
    media: MediaStore
    embed: EmbedFn
    embedder_id: str
    index: MediaIndex
    options: IngestOptions = field(default_factory=IngestOptions)


# ------------------------------------------------------------------------------------------------ reports


@dataclass
class ItemReport:
    """What happened to one input record."""

    where: str
    status: Status
    case_id: str | None = None
    reason: str = ""
    duplicates: list[Duplicate] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    media_embedded: int = 0
    media_reused: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "where": self.where, "status": self.status, "case_id": self.case_id, "reason": self.reason,
            "duplicates": [d.to_dict() for d in self.duplicates], "warnings": self.warnings,
            "media_embedded": self.media_embedded, "media_reused": self.media_reused,
        }


@dataclass
class IngestResult:
    """Summary of one import run; ``items`` has one report per input record, in input order."""

    source: str
    items: list[ItemReport] = field(default_factory=list)
    elapsed_s: float = 0.0
    embed_s: float = 0.0

    def count(self, status: Status) -> int:
        return sum(1 for i in self.items if i.status == status)

    @property
    def added(self) -> int:
        return self.count("added")

    @property
    def updated(self) -> int:
        return self.count("updated")

    @property
    def skipped(self) -> int:
        return self.count("skipped")

    @property
    def rejected(self) -> int:
        return self.count("rejected")

    @property
    def duplicates(self) -> list[Duplicate]:
        return [d for i in self.items for d in i.duplicates]

    @property
    def media_embedded(self) -> int:
        return sum(i.media_embedded for i in self.items)

    @property
    def case_ids(self) -> list[str]:
        return [i.case_id for i in self.items if i.case_id and i.status != "rejected"]

    def summary(self) -> str:
        return (f"{self.source}: {self.added} added, {self.updated} updated, {self.skipped} skipped, "
                f"{self.rejected} rejected, {len(self.duplicates)} duplicates ({self.media_embedded} media embedded, "
                f"{self.elapsed_s:.1f} s)")

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "added": self.added, "updated": self.updated, "skipped": self.skipped,
            "rejected": self.rejected, "duplicates": len(self.duplicates), "media_embedded": self.media_embedded,
            "errors": [f"{i.where}: {i.reason}" for i in self.items if i.status == "rejected"],
            "elapsed_s": round(self.elapsed_s, 3), "embed_s": round(self.embed_s, 3),
            "items": [i.to_dict() for i in self.items],
        }


# ------------------------------------------------------------------------------------------------ hashing/payloads


def _canon(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")


def input_content_hash(case: CaseInput, media: Sequence[tuple[str, str | None, str, int | None]],
                       pdf: dict[str, int] | None = None) -> str:
    """Hash of a submitted case: its fields, its media (sha256, kind, caption, page) and the PDF settings that
    shape its page images. Equal hash ⇒ re-importing would store the same thing."""
    fields = case.model_dump(mode="json", exclude={"media"})
    fields["id"] = case.resolved_id()
    body = {"v": RECIPE_VERSION, "fields": fields, "media": [list(m) for m in media], "pdf": pdf}
    return "sha256:" + hashlib.sha256(_canon(body)).hexdigest()


def case_content_hash(case: Case) -> str:
    """Hash of a stored case's content (what update/backup write; timestamps and version excluded)."""
    fields = case.model_dump(mode="json", exclude={"media", "created_at", "updated_at", "version"})
    media = [[m.sha256, m.kind, m.caption, m.page] for m in case.media]
    return "sha256:" + hashlib.sha256(_canon({"v": RECIPE_VERSION, "case": fields, "media": media})).hexdigest()


def _common(case: Case) -> dict[str, str | list[str]]:
    return {"case_id": case.id, "product_line": case.product_line, "equipment_model": case.equipment_model,
            "tags": list(case.tags), "title": case.title}


def text_payload(case: Case, content_hash: str, embedder_id: str) -> dict[str, JsonValue]:
    """Payload of a case's text point (``rag.payload.TextPointPayload`` as stored JSON)."""
    return TextPointPayload.model_validate({
        **_common(case), "case": case.model_dump(mode="json"), "document": case.document_text(),
        "content_hash": content_hash, "embedder": embedder_id,
    }).model_dump(mode="json")


def media_payload(case: Case, item: MediaItem, embedder_id: str) -> dict[str, JsonValue]:
    """Payload of a media point (``rag.payload.MediaPointPayload``); paths are relative to the media root."""
    return MediaPointPayload.model_validate({
        **_common(case), "media_id": item.id, "kind": item.kind, "media_path": item.path,
        "thumbnail": item.thumbnail, "caption": item.caption, "page": item.page, "sha256": item.sha256,
        "embedder": embedder_id,
    }).model_dump(mode="json")


def same_payload(stored: Mapping[str, Any], payload: Mapping[str, Any]) -> bool:
    """Whether a payload read back from the store equals ``payload`` once stored (JSON round trip)."""
    return bool(dict(stored) == json.loads(json.dumps(payload)))


def embed_item(media: MediaStore, item: MediaItem, label: str) -> dict[str, Any]:
    """Embedder input for a stored media item (PDF pages are stored as images)."""
    key = "video" if item.kind == "video" else "image"
    return {key: str(media.path(item.path)), "id": label}


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


# ------------------------------------------------------------------------------------------------ staging


@dataclass
class _Existing:
    case: Case | None
    content_hash: str | None
    vector: np.ndarray | None
    embedder: str | None


@dataclass
class _Work:
    """One record on its way through the chunk pipeline."""

    src: SourceCase
    report: ItemReport
    case_id: str
    existing: _Existing | None = None
    content_hash: str = ""
    unchanged: bool = False
    items: list[MediaItem] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    created: list[tuple[str, str]] = field(default_factory=list)  # (sha256, rel path) of files this record created
    new_ids: set[str] = field(default_factory=set)
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    reused: dict[str, dict[str, Any]] = field(default_factory=dict)  # media id -> payload of its reused stored point
    text_vector: np.ndarray | None = None
    links: list[CaseLink] = field(default_factory=list)
    case: Case | None = None
    failed: bool = False

    def reject(self, reason: str) -> None:
        self.failed = True
        self.report.status = "rejected"
        self.report.reason = reason


class _Stager:
    """File work for one record: hash inputs, store media files, render PDF pages, make thumbnails."""

    def __init__(self, media: MediaStore, options: IngestOptions) -> None:
        self.media, self.options = media, options

    def pdf_opts(self) -> dict[str, int]:
        return {"long_side": self.options.pdf_long_side, "max_pages": self.options.pdf_max_pages}

    def content_hash(self, w: _Work) -> str:
        src = w.src
        if src.stored is not None:
            return src.content_hash or ""  # computed from the final case later
        assert src.case is not None
        media, has_pdf = [], False
        for m in src.media:
            pdf = m.kind == "pdf_page" or is_pdf(m.head())
            has_pdf |= pdf
            media.append((m.sha256(), "pdf" if pdf else m.kind, m.caption, m.page))
        return input_content_hash(src.case, media, self.pdf_opts() if has_pdf else None)

    def stage(self, w: _Work) -> None:
        """Decide skip or store the record's media; errors reject the record."""
        try:
            w.content_hash = self.content_hash(w)
        except OSError as e:
            w.reject(f"cannot read media ({e})")
            return
        ex = w.existing
        if ex is not None and ex.case is not None and w.content_hash and ex.content_hash == w.content_hash:
            w.unchanged = True
            return
        try:
            self._store_media(w)
        except (MediaError, PdfError, InputRejected) as e:
            w.reject(str(e))
        except OSError as e:
            w.reject(f"media could not be stored ({e})")
        except Exception as e:  # noqa: BLE001 - one odd file must not abort a bulk import; the report names it
            log.exception("%s: unexpected error while storing media", w.src.where)
            w.reject(f"unexpected error while storing media ({type(e).__name__}: {e})")

    def _store_media(self, w: _Work) -> None:
        src = w.src
        old_ids = {m.id for m in ex.case.media} if (ex := w.existing) is not None and ex.case is not None else set()
        restore = {id(m.item) for m in src.media if m.item is not None}
        items: list[MediaItem] = []
        if src.stored is not None:  # kept items of an update: already in the store
            for m in src.stored.media:
                if id(m) in restore:
                    continue
                if not self.media.exists(m.path):
                    raise MediaError(m.source_file or m.id, f"is missing from the media store ({m.path})")
                items.append(m)
                w.labels[m.id] = m.source_file or m.id
        for ms in src.media:
            items.extend(self._store_one(w, ms))
        seen: set[str] = set()
        for it in items:
            if it.id in seen:
                w.report.warnings.append(f"{w.labels.get(it.id, it.id)}: attached twice; kept once")
                continue
            seen.add(it.id)
            w.items.append(it)
            if it.id not in old_ids:
                w.new_ids.add(it.id)

    def _put(self, w: _Work, ms: MediaSource, data: bytes | None, hint: StoredKind | MediaKind | None) -> StoredMedia:
        if data is None and ms.path is None and ms.data is None:
            raise MediaError(ms.name, "has neither a file nor data")
        stored = (self.media.put_bytes(data, hint, name=ms.name) if data is not None
                  else self.media.put_file(ms.path, hint) if ms.path is not None
                  else self.media.put_bytes(ms.data or b"", hint, name=ms.name))
        if stored.created:
            w.created.append((stored.sha256, stored.rel_path))
        return stored

    def _thumb(self, w: _Work, rel: str, label: str) -> str | None:
        if not self.options.thumbnails:
            return None
        try:
            return self.media.thumbnail(rel)
        except Exception as e:  # noqa: BLE001 - a preview is optional; the media itself was validated
            w.report.warnings.append(f"{label}: no thumbnail ({e})")
            return None

    def _store_one(self, w: _Work, ms: MediaSource) -> list[MediaItem]:
        if ms.item is not None:  # backup restore: same content, same metadata
            stored = self._put(w, ms, None, "image" if ms.item.kind == "pdf_page" else ms.item.kind)
            if stored.sha256 != ms.item.sha256:
                raise MediaError(ms.name, f"content does not match its recorded sha256 {ms.item.sha256[:12]}… (damaged backup?)")
            item = ms.item.model_copy(update={"path": stored.rel_path, "thumbnail": self._thumb(w, stored.rel_path, ms.name)})
            w.labels[item.id] = ms.name
            return [item]
        if ms.kind == "pdf_page" or is_pdf(ms.head()):
            return self._store_pdf(w, ms)
        stored = self._put(w, ms, None, ms.kind)
        if stored.kind == "pdf":  # pragma: no cover - PDFs are caught by the magic check above
            raise MediaError(ms.name, "PDF content not recognised up front")
        if stored.frames > 1:
            w.report.warnings.append(f"{ms.name}: animated image ({stored.frames} frames); only the first frame is used")
        item = stored.to_media_item(caption=ms.caption, source_file=ms.name,
                                    thumbnail=self._thumb(w, stored.rel_path, ms.name))
        w.labels[item.id] = ms.name
        return [item]

    def _store_pdf(self, w: _Work, ms: MediaSource) -> list[MediaItem]:
        src = ms.path if ms.path is not None else ms.data
        if ms.path is not None:  # the shared rules: content type, size, encryption, hard page cap
            check_pdf(ms.path, Limits(max_file_bytes=self.media.max_bytes), where=ms.name)
        pages, total = render_pdf_pages(src, name=ms.name, long_side=self.options.pdf_long_side,  # type: ignore[arg-type]
                                        max_pages=self.options.pdf_max_pages, pages=[ms.page] if ms.page else None)
        if not ms.page and total > len(pages):
            w.report.warnings.append(f"{ms.name}: {total} pages; only the first {len(pages)} were imported "
                                     "(RAGVQA_KB_PDF_MAX_PAGES)")
        items = []
        for pg in pages:
            stored = self.media.put_bytes(pg.png, "image", name=f"{ms.name} page {pg.page}")
            if stored.created:
                w.created.append((stored.sha256, stored.rel_path))
            label = f"{ms.name} page {pg.page}"
            item = MediaItem(kind="pdf_page", sha256=stored.sha256, path=stored.rel_path, mime=stored.mime,
                             caption=ms.caption, source_file=ms.name, page=pg.page, width=pg.width, height=pg.height,
                             thumbnail=self._thumb(w, stored.rel_path, label))
            w.labels[item.id] = label
            items.append(item)
        return items


# ------------------------------------------------------------------------------------------------ the run


class _Run:
    """One import run over a list of records (see the module docstring for the order of writes)."""

    def __init__(self, ctx: IngestContext, source: str, *, progress: bool,
                 on_item: Callable[[ItemReport], None] | None) -> None:
        self.ctx = ctx
        self.store: VectorStore = ctx.store
        self.options: IngestOptions = ctx.options
        self.stager = _Stager(ctx.media, ctx.options)
        self.result = IngestResult(source=source)
        self.progress, self.on_item = progress, on_item
        self.index: MediaIndex = ctx.index
        thr = self.options.near_dup_threshold if self.options.dedup else None
        self.finder = NearDupFinder(self.store, thr, self.index, exact=self.options.near_dup_exact) if thr else None
        self.cleanup: set[str] = set()  # sha256 of files that may have lost their last reference
        self.seen_ids: dict[str, str] = {}

    # -- driver -------------------------------------------------------------------------------------------------
    def run(self, records: Sequence[SourceCase]) -> IngestResult:
        t0 = time.perf_counter()
        from tqdm import tqdm

        bar = tqdm(total=len(records), unit="case", desc="import", disable=not self.progress, leave=False)
        n = self.options.chunk_cases
        chunks = [list(records[i:i + n]) for i in range(0, len(records), n)]
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kb-stage") if self.options.prefetch else None
        try:
            pending: Future[None] | None = None
            nxt: list[_Work] | None = None
            if chunks:
                nxt = self._prepare(chunks[0])
                pending = self._submit(pool, nxt)
            for k in range(len(chunks)):
                work = nxt
                assert work is not None and pending is not None
                pending.result()
                if k + 1 < len(chunks):
                    nxt = self._prepare(chunks[k + 1])
                    pending = self._submit(pool, nxt)
                self._process(work)
                for w in work:
                    self.result.items.append(w.report)
                    if self.on_item is not None:
                        self.on_item(w.report)
                bar.update(len(work))
                bar.set_postfix(added=self.result.added, updated=self.result.updated, skipped=self.result.skipped,
                                rejected=self.result.rejected, refresh=False)
        finally:
            bar.close()
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        self._cleanup_files()
        self.store.flush()
        self.result.elapsed_s = time.perf_counter() - t0
        log.info("%s", self.result.summary())
        return self.result

    def _submit(self, pool: ThreadPoolExecutor | None, work: list[_Work]) -> Future[None]:
        def stage_all() -> None:
            for w in work:
                if not w.failed:
                    self.stager.stage(w)

        if pool is None:
            f: Future[None] = Future()
            try:
                stage_all()
                f.set_result(None)
            except BaseException as e:  # noqa: BLE001 - pragma: no cover - surfaced by f.result()
                f.set_exception(e)
            return f
        return pool.submit(stage_all)

    # -- step 1: ids and existing state (main thread: the store is used from one thread) -------------------------
    def _prepare(self, records: list[SourceCase]) -> list[_Work]:
        work: list[_Work] = []
        for src in records:
            report = ItemReport(where=src.where, status="rejected", case_id=src.case_id)
            w = _Work(src=src, report=report, case_id=src.case_id or "")
            if src.error:
                w.reject(src.error)
            elif not w.case_id:
                w.reject("no case id")
            elif w.case_id in self.seen_ids:
                w.reject(f"case id {w.case_id!r} already used in this import at {self.seen_ids[w.case_id]}")
            else:
                self.seen_ids[w.case_id] = src.where
            work.append(w)
        ids = [w.case_id for w in work if not w.failed]
        found = {p.payload.get("case_id"): p for p in self.store.retrieve([point_id(c) for c in ids], with_vectors=True)}
        for w in work:
            p = found.get(w.case_id)
            if p is None:
                continue
            try:
                case = Case.model_validate(p.payload.get("case"))
            except ValidationError:
                log.warning("stored case %s is unreadable; it will be rewritten", w.case_id)
                case = None
            w.existing = _Existing(case, p.payload.get("content_hash"), p.vector, p.payload.get("embedder"))
        return work

    # -- steps 3+: dedup, vectors, write (main thread) ------------------------------------------------------------
    def _process(self, work: list[_Work]) -> None:
        try:
            self._process_live(work)
        finally:
            for w in work:
                if w.failed:
                    self.cleanup.update(sha for sha, _ in w.created)

    def _process_live(self, work: list[_Work]) -> None:
        live = [w for w in work if not w.failed]
        for w in live:
            if w.unchanged:
                self._check_unchanged(w)
        todo = [w for w in live if not w.failed and not w.unchanged]
        if not todo:
            return
        if self.options.dedup:
            self._exact_pass([w for w in todo if w.src.dedup])
        self._reuse_vectors(todo)
        self._embed(todo)
        todo = [w for w in todo if not w.failed]
        if self.finder is not None:
            self._near_pass(todo, [w for w in todo if w.src.dedup])
        for w in todo:
            self._build_case(w)
        self._write([w for w in todo if not w.failed])

    def _check_unchanged(self, w: _Work) -> None:
        """A skipped case must also be complete: an interrupted update can leave stale or missing media points."""
        ex = w.existing
        assert ex is not None and ex.case is not None
        have = self.index.case_media(w.case_id)
        want = {m.id for m in ex.case.media}
        same_embedder = ex.embedder == self.ctx.embedder_id and all(r.embedder == self.ctx.embedder_id for r in have.values())
        if set(have) == want and same_embedder:
            w.report.status = "skipped"
            w.report.reason = "unchanged"
            return
        log.info("case %s: unchanged input but incomplete points; repairing", w.case_id)
        w.unchanged = False
        w.items = list(ex.case.media)
        w.labels = {m.id: m.source_file or m.id for m in ex.case.media}
        w.report.warnings.append("repaired points left by an interrupted run")
        w.src = SourceCase(where=w.src.where, stored=ex.case, content_hash=ex.content_hash, dedup=False)
        w.content_hash = ex.content_hash or ""

    def _link(self, w: _Work, other: str, note: str) -> None:
        if other != w.case_id and all(link.case_id != other for link in w.links):
            w.links.append(CaseLink(case_id=other, relation="near_duplicate", note=note[:500]))

    def _drop(self, w: _Work, media_id: str, dup: Duplicate) -> None:
        w.items = [m for m in w.items if m.id != media_id]
        w.new_ids.discard(media_id)
        w.vectors.pop(media_id, None)
        w.report.duplicates.append(dup)
        self._link(w, dup.other_case_id, dup.describe())
        log.info("case %s: %s", w.case_id, dup.describe())

    def _exact_pass(self, todo: list[_Work]) -> None:
        chunk_owner: dict[str, tuple[str, str]] = {}
        for w in todo:
            for m in list(w.items):
                if m.id not in w.new_ids:
                    continue
                owner = self.index.owner(m.sha256, exclude_case=w.case_id)
                other = (owner.case_id, owner.media_id) if owner is not None else chunk_owner.get(m.sha256)
                if other is not None and other[0] != w.case_id:
                    self._drop(w, m.id, Duplicate("exact", w.case_id, w.labels.get(m.id, m.id), other[0], other[1], 1.0))
                else:
                    chunk_owner.setdefault(m.sha256, (w.case_id, m.id))

    def _reuse_vectors(self, todo: list[_Work]) -> None:
        """Vectors already in the store for the same case/media/content/embedder are reused, not recomputed."""
        want = {point_id(w.case_id, m.id): (w, m) for w in todo for m in w.items}
        if not want:
            return
        for p in self.store.retrieve(list(want), with_vectors=True):
            w, m = want[p.id]
            if p.vector is not None and p.payload.get("sha256") == m.sha256 and p.payload.get("embedder") == self.ctx.embedder_id:
                w.vectors[m.id] = p.vector
                w.reused[m.id] = p.payload
                w.report.media_reused += 1

    def _case_text(self, w: _Work) -> str:
        if w.src.stored is not None:
            return w.src.stored.embedding_text()
        assert w.src.case is not None
        fields = w.src.case.model_dump(exclude={"media", "created_at", "id"})
        return Case.model_construct(id=w.case_id, **fields).embedding_text()

    def _embed(self, todo: list[_Work]) -> None:
        """One embedder call for the whole chunk; on a bad item, per record, so only that record is rejected."""
        jobs: list[tuple[_Work, str | None, dict[str, Any]]] = []
        for w in todo:
            try:
                text = self._case_text(w)
            except Exception:  # noqa: BLE001 - a case that cannot render is rejected by validation later
                text = ""
            ex = w.existing
            if (ex is not None and ex.case is not None and ex.vector is not None and ex.embedder == self.ctx.embedder_id
                    and ex.case.embedding_text() == text):
                w.text_vector = ex.vector
            else:
                jobs.append((w, None, {"text": text, "id": f"{w.case_id} (case text)"}))
            for m in w.items:
                if m.id not in w.vectors:
                    jobs.append((w, m.id, embed_item(self.ctx.media, m, f"{w.case_id}: {w.labels.get(m.id, m.id)}")))
        if not jobs:
            return
        t0 = time.perf_counter()
        try:
            vecs = self.ctx.embed([j[2] for j in jobs])
            self._assign(jobs, vecs)
        except EmbeddingError:
            by_case: dict[int, list[tuple[_Work, str | None, dict[str, Any]]]] = {}
            for j in jobs:
                by_case.setdefault(id(j[0]), []).append(j)
            for group in by_case.values():
                try:
                    self._assign(group, self.ctx.embed([j[2] for j in group]))
                except EmbeddingError as e:
                    group[0][0].reject(f"cannot embed: {e}")
        finally:
            self.result.embed_s += time.perf_counter() - t0

    @staticmethod
    def _assign(jobs: list[tuple[_Work, str | None, dict[str, Any]]], vecs: np.ndarray) -> None:
        for (w, mid, _), v in zip(jobs, vecs, strict=False):
            if mid is None:
                w.text_vector = v
            else:
                w.vectors[mid] = v
                w.report.media_embedded += 1

    def _near_pass(self, written: list[_Work], todo: list[_Work]) -> None:
        """``written``: this chunk's cases about to be (re)written; ``todo``: those of them to check."""
        finder = self.finder
        assert finder is not None
        # Their points in the store are old or orphaned: compare with what they will hold instead. Their kept media
        # were there first; new media are added as they are accepted, in input order.
        finder.exclude = {w.case_id for w in written}
        for w in written:
            for m in w.items:
                if m.kind in NEAR_DUP_KINDS and m.id in w.vectors and (m.id not in w.new_ids or not w.src.dedup):
                    finder.add_pending(w.case_id, m.id, w.vectors[m.id])
        for w in todo:
            for m in list(w.items):
                if m.kind not in NEAR_DUP_KINDS or m.id not in w.new_ids or m.id not in w.vectors:
                    continue
                hit = finder.find(w.vectors[m.id], w.case_id)
                if hit is not None:
                    self._drop(w, m.id, Duplicate("near", w.case_id, w.labels.get(m.id, m.id), hit[0], hit[1], hit[2]))
                else:
                    finder.add_pending(w.case_id, m.id, w.vectors[m.id])
        finder.clear_pending()

    def _build_case(self, w: _Work) -> None:
        src, ex = w.src, w.existing
        old = ex.case if ex is not None else None
        try:
            if src.stored is not None:
                links = list(src.stored.links) + [lk for lk in w.links if all(x.case_id != lk.case_id for x in src.stored.links)]
                case = Case.model_validate({**src.stored.model_dump(), "media": [m.model_dump() for m in w.items],
                                            "links": [lk.model_dump() for lk in links]})
            else:
                assert src.case is not None
                now = _now()
                case = src.case.to_case(w.items, now=now)
                created = src.case.created_at or (old.created_at if old is not None else case.created_at)
                links = list(case.links) + [lk for lk in w.links if all(x.case_id != lk.case_id for x in case.links)]
                case = Case.model_validate({
                    **case.model_dump(), "links": [lk.model_dump() for lk in links], "created_at": created,
                    "updated_at": max(now, created), "version": (old.version + 1) if old is not None else 1,
                })
        except ValidationError as e:
            w.reject(format_validation_error(e))
            return
        missing = [m.id for m in case.media if m.id not in w.vectors]
        if w.text_vector is None or missing:
            w.reject(f"internal: no vector for {missing or 'case text'}")
            return
        w.case = case
        if not w.content_hash:
            w.content_hash = case_content_hash(case)

    def _write(self, todo: list[_Work]) -> None:
        if not todo:
            return
        eid = self.ctx.embedder_id
        ids = [w.case_id for w in todo]
        # Every point these cases have now (also ones an interrupted run left behind), to remove the stale ones.
        before: dict[str, dict[str, str]] = {}
        for p in self.store.scroll(filters={"case_id": ids}, payload_keys=["case_id", "media_id", "sha256"]):
            if p.payload.get("media_id"):
                before.setdefault(p.payload["case_id"], {})[p.id] = p.payload.get("sha256") or ""
        media_points, text_points, stale = [], [], []
        payload_only: dict[str, dict[str, Any]] = {}
        for w in todo:
            case = w.case
            assert case is not None and w.text_vector is not None
            for m in case.media:
                payload = media_payload(case, m, eid)
                stored = w.reused.get(m.id)
                if stored is None:
                    media_points.append(VectorPoint(id=point_id(case.id, m.id), vector=w.vectors[m.id], payload=payload))
                elif not same_payload(stored, payload):  # e.g. new tags: the vector it has stays as it is
                    payload_only[point_id(case.id, m.id)] = check_payload(payload)  # checked before any write
            text_points.append(VectorPoint(id=point_id(case.id), vector=w.text_vector,
                                           payload=text_payload(case, w.content_hash, eid)))
            keep = {point_id(case.id, m.id) for m in case.media}
            for pid, sha in before.get(case.id, {}).items():
                if pid not in keep:
                    stale.append(pid)
                    self.cleanup.add(sha)
            if w.existing is not None and w.existing.case is not None:
                self.cleanup.update(m.sha256 for m in w.existing.case.media)
            self.cleanup.update(sha for sha, _ in w.created)
        # The order is the crash-safety contract: media points, then text points, then removals. A media point whose
        # vector was reused is not rewritten: unchanged, it is left alone; with new case fields, only its payload.
        self.store.upsert(media_points)
        if payload_only:
            self.store.overwrite_payload(payload_only)
        self.store.upsert(text_points)
        if stale:
            self.store.delete_points(stale)
        for w in todo:
            case = w.case
            assert case is not None
            self.index.remove_case(case.id)
            for m in case.media:
                self.index.add(MediaRef(case.id, m.id, m.sha256, m.kind, eid))
            w.report.case_id = case.id
            w.report.status = "updated" if w.existing is not None and w.existing.case is not None else "added"

    def _cleanup_files(self) -> None:
        """Delete files no case references any more (rejected records, dropped duplicates, removed media)."""
        for sha in self.cleanup:
            if sha and not self.index.referenced(sha):
                try:
                    self.ctx.media.delete(sha)
                except OSError as e:  # pragma: no cover - reported by check
                    log.warning("could not delete media %s…: %s", sha[:12], e)


def ingest_records(ctx: IngestContext, records: Sequence[SourceCase], *, source: str = "import",
                   progress: bool = False, on_item: Callable[[ItemReport], None] | None = None) -> IngestResult:
    """Write ``records`` through ``ctx`` (see the module docstring); the caller holds the KB's write lock."""
    return _Run(ctx, source, progress=progress, on_item=on_item).run(records)

