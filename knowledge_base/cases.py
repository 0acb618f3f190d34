"""Cases: add, change, delete, read and import fault cases (the part of :class:`~knowledge_base.kb.KnowledgeBase`
that editors and importers use).

Every write goes through :func:`knowledge_base.ingest.ingest_records` (media → media points → text point) under the
shared write lock; a refused add/update raises :class:`CaseRejectedError` and writes nothing.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from pydantic import ValidationError

from knowledge_base.archive import (
    IngestInputError,
    MediaSource,
    RecordHook,
    SourceCase,
    clean_case_text,
    format_validation_error,
    load_source,
    normalise_media_field,
    read_jsonl,
)
from knowledge_base.ingest import IngestResult, ItemReport, ingest_records
from knowledge_base.media_store import MediaError
from knowledge_base.schema import Case, CaseInput
from knowledge_base.state import KBState, now
from rag.errors import UserInputError
from rag.store import point_id
from rag.text import fold
from rag.validation import InputRejected, confine_path

__all__ = [
    "CASE_FILTERS",
    "UPDATABLE",
    "CaseNotFoundError",
    "CasePage",
    "CaseRejectedError",
    "Cases",
    "MediaLike",
    "Progress",
]

log = logging.getLogger(__name__)

#: Filters ``list_cases`` accepts (the keyword-indexed case fields).
CASE_FILTERS = ("product_line", "equipment_model", "tags")
#: Case fields ``update`` may change.
UPDATABLE = ("title", "product_line", "equipment_model", "symptom", "cause", "solution", "error_codes", "tags",
             "severity", "source", "links")

MediaLike = MediaSource | str | os.PathLike[str] | bytes | tuple[str, bytes]


class KBStats(TypedDict):
    """What :meth:`Cases.stats` reports (a dict, so the CLI prints it as JSON as it is)."""

    cases: int
    points: int
    #: Media points by kind (image, pdf_page, video).
    media: dict[str, int]
    #: Cases per product line ("?" for none).
    product_lines: dict[str, int]
    media_files: int
    media_bytes: int
    #: The store's meta (embedder id, dim, schema, quantization) as JSON.
    store: dict[str, object]
    store_backend: str
    embedder: str
    data_dir: str
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


class Cases:
    """Case CRUD and import over the shared :class:`~knowledge_base.state.KBState`."""

    def __init__(self, state: KBState) -> None:
        self.s = state

    @staticmethod
    def _sources(media: Iterable[MediaLike]) -> list[MediaSource]:
        out: list[MediaSource] = []
        for i, m in enumerate(media):
            if isinstance(m, MediaSource):
                out.append(m)
            elif isinstance(m, (bytes, bytearray)):
                out.append(MediaSource(name=f"upload-{i + 1}", data=bytes(m)))
            elif isinstance(m, tuple) and len(m) == 2 and isinstance(m[1], (bytes, bytearray)):
                out.append(MediaSource(name=str(m[0]), data=bytes(m[1])))
            else:
                p = Path(m)
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

        with self.s.lock:
            self.s.media.clear_stale_temp()  # left by a write that was killed; a re-run is how imports resume
            return ingest_records(self.s.ingest_context(), records, source=source, progress=progress is True, on_item=callback)

    def import_path(self, path: str | os.PathLike[str], *, media_dir: str | os.PathLike[str] | None = None,
                    progress: Progress = False, on_item: Callable[[ItemReport], None] | None = None,
                    prepare: RecordHook | None = None) -> IngestResult:
        """Import a JSONL/CSV file, a folder (one sub-folder per case), a zip of those, or an export zip.

        Re-running it is safe and resumes an interrupted run: unchanged cases are skipped. ``prepare`` sees each
        file's records before they are validated (:data:`knowledge_base.archive.RecordHook`).
        Raises :class:`IngestInputError` when the source as a whole is unusable.
        """
        md = Path(media_dir) if media_dir is not None else None
        with load_source(path, media_dir=md, max_zip_bytes=self.s.options.max_zip_bytes,
                         max_zip_files=self.s.options.max_zip_files, prepare=prepare) as bundle:
            log.info("importing %d record(s) from %s (%s)", len(bundle.records), path, bundle.kind)
            return self.import_records(bundle.records, source=str(path), progress=progress, on_item=on_item)

    # -- reading ------------------------------------------------------------------------------------------------
    def get(self, case_id: str) -> Case | None:
        """The stored case, or None."""
        return self.s.get(case_id)

    def count_cases(self) -> int:
        return self.s.count_cases()

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
        needle = fold((text or "").strip())  # NFKC + case-fold both sides: full-width Ｅ１３ finds E13
        cases = []
        for p in self.s.text_payloads(filters, ["case"]):
            try:
                c = Case.model_validate(p.payload["case"])
            except (ValidationError, KeyError):
                continue
            if needle:
                hay = "\n".join([c.id, c.title, c.equipment, c.symptom, c.cause, *c.solution, *c.error_codes, *c.tags])
                if needle not in fold(hay):
                    continue
            cases.append(c)
        cases.sort(key=lambda c: c.id)
        return CasePage(total=len(cases), cases=cases[offset:offset + limit], offset=offset)

    def stats(self) -> KBStats:
        """Counts for dashboards: cases, points, media by kind, cases per product line, files, store meta."""
        kinds: Counter[str] = Counter()
        lines: Counter[str] = Counter()
        for p in self.s.store.scroll(batch_size=1024, payload_keys=["kind", "product_line"]):
            kind = p.payload.get("kind", "?")
            kinds[kind] += 1
            if kind == "text":
                lines[p.payload.get("product_line") or "?"] += 1
        files = list(self.s.media.iter_files())
        size = sum((self.s.media.root / f).stat().st_size for f in files)
        return KBStats(**{
            "cases": kinds.pop("text", 0),
            "points": sum(kinds.values()) + sum(lines.values()),
            "media": dict(sorted(kinds.items())),
            "product_lines": dict(sorted(lines.items())),
            "media_files": len(files),
            "media_bytes": size,
            "store": self.s.store.meta.model_dump(mode="json"),
            "store_backend": type(self.s.store).__name__,
            "embedder": self.s.embedder_id,
            "data_dir": str(self.s.data_dir),
        })

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
        with self.s.lock:
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
            t = now()
            new = new.model_copy(update={"version": old.version + 1, "updated_at": max(t, old.created_at)})
            result = self.import_records([SourceCase(where=where, stored=new, media=sources)], source=where)
            report = result.items[0]
            if report.status == "rejected":
                raise CaseRejectedError(report)
            return report

    def delete(self, case_id: str) -> bool:
        """Delete a case: text point first (the case is gone), then its media points, then files no other case
        uses. Also cleans up after an interrupted delete or import of that id. Returns whether the case existed."""
        with self.s.lock:
            existed = self.get(case_id)
            self.s.store.delete_points([point_id(case_id)])
            shas = {m.sha256 for m in existed.media} if existed is not None else set()
            for p in self.s.store.scroll(filters={"case_id": case_id}, payload_keys=["sha256"]):
                if p.payload.get("sha256"):
                    shas.add(p.payload["sha256"])
            self.s.store.delete_case(case_id)
            index = self.s.media_index(refresh=True)
            for sha in shas:
                if not index.referenced(sha):
                    self.s.media.delete(sha)
            self.s.store.flush()
            if existed is not None:
                log.info("deleted case %s", case_id)
            return existed is not None

    # -- first run ----------------------------------------------------------------------------------------------
    def ensure_sample(self, sample_dir: str | os.PathLike[str], *, progress: bool = False) -> IngestResult | None:
        """If the KB has no case yet, build the sample KB under ``sample_dir`` and import it (first ``serve``)."""
        with self.s.lock:
            if self.count_cases() > 0:
                return None
            try:
                from knowledge_base.sample import build_sample_kb
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

