"""Import sources → :class:`SourceCase` records: JSONL, CSV (+ media folder), a folder per case, a zip of any of
these, and the zip backups written by :meth:`KnowledgeBase.export`.

Readers only parse and locate files; they never write to the knowledge base. Row-level problems become a
rejected record naming the file and row (the rest of the import goes on); structural problems (unknown CSV
columns, an unsafe zip, an unknown layout) raise :class:`IngestInputError` before anything is written.

Every reader turns rows into field dicts first (:class:`RawRecord`), then validates them; an optional ``prepare``
hook sees each file's field dicts in between, all at once (``kb import --suggest`` fills missing labels there, with
one embedding batch instead of one model call per record), so every format goes through this one parser.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import ValidationError

from knowledge_base.schema import CASE_ID_PATTERN, Case, CaseInput, MediaItem, MediaKind, slugify
from rag.text import TextDecodeError, declared_encoding, decode_text
from rag.validation import InputRejected, Limits, check_file, check_text, check_tree, confine_path, safe_extract

__all__ = [
    "BACKUP_FORMAT",
    "CASE_FILE",
    "MEDIA_EXTENSIONS",
    "IngestInputError",
    "MediaSource",
    "RawRecord",
    "RecordHook",
    "SourceBundle",
    "SourceCase",
    "format_validation_error",
    "load_source",
    "read_backup",
    "read_csv",
    "read_folder",
    "read_jsonl",
    "safe_extract_zip",
]

log = logging.getLogger(__name__)

#: ``format`` value in the manifest of an export zip.
BACKUP_FORMAT = "ragvqa-kb-backup"
#: Name of the case description inside a per-case folder.
CASE_FILE = "case.json"
#: Files picked up from a case folder when its case.json lists no media.
MEDIA_EXTENSIONS = {
    ".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff",
    ".mp4", ".mov", ".mkv", ".webm", ".avi", ".ts", ".pdf",
}
_CASE_ID_RE = re.compile(CASE_ID_PATTERN)

SourceKind = Literal["jsonl", "csv", "folder", "backup"]


class IngestInputError(InputRejected):
    """The import source itself is unusable (layout, columns, unsafe archive); nothing was written.

    A kind of :class:`rag.validation.InputRejected` (the shared validation error), so callers catch one type.
    """

    def __init__(self, problem: str, where: str = "", code: str = "bad_import") -> None:
        super().__init__(code, problem, where)


@dataclass
class MediaSource:
    """One media file to attach: a path or bytes, with what the submitter said about it.

    ``item`` is set for backup restores (the stored ``MediaItem`` to recreate; its sha256 is verified).
    """

    name: str
    path: Path | None = None
    data: bytes | None = None
    kind: MediaKind | None = None
    caption: str = ""
    page: int | None = None
    item: MediaItem | None = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.data is None):
            raise ValueError(f"media {self.name!r}: give exactly one of path or data")

    def head(self, n: int = 1024) -> bytes:
        if self.data is not None:
            return self.data[:n]
        assert self.path is not None
        with open(self.path, "rb") as f:
            return f.read(n)

    def sha256(self) -> str:
        """Content hash of the source (streamed for files)."""
        if self.data is not None:
            return hashlib.sha256(self.data).hexdigest()
        assert self.path is not None
        h = hashlib.sha256()
        with open(self.path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()


@dataclass
class SourceCase:
    """One case to import, or the reason it cannot be (``error``), with where it came from (file:row)."""

    where: str
    case: CaseInput | None = None
    stored: Case | None = None
    media: list[MediaSource] = field(default_factory=list)
    #: Backups carry the content hash the case had when exported, so restoring into the same KB is a no-op.
    content_hash: str | None = None
    error: str | None = None
    #: Compare this record's media with other cases' (off for backup restores, which reproduce a KB as it was).
    dedup: bool = True

    @property
    def case_id(self) -> str | None:
        if self.stored is not None:
            return self.stored.id
        if self.case is not None:
            return self.case.resolved_id()
        return None


@dataclass
class SourceBundle:
    """The parsed records of one import source."""

    kind: SourceKind
    path: Path
    records: list[SourceCase]


@dataclass
class RawRecord:
    """One record's fields as read (media normalised, default id set, text screened), before schema validation;
    media paths are relative to ``base``. A ``prepare`` hook may change ``data`` in place."""

    where: str
    data: dict[str, Any]
    base: Path


#: Called once per source file with its readable records (in file order) before they are validated.
RecordHook = Callable[[Sequence[RawRecord]], None]


# ------------------------------------------------------------------------------------------------ helpers


def format_validation_error(e: ValidationError) -> str:
    """``field.sub: message; ...`` — short enough for a report line, precise enough to fix the row."""
    parts = []
    for err in e.errors(include_url=False):
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "__root__")
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def _resolve_media(base: Path, rel: str, confine: bool = True) -> Path:
    """Media path of a record, resolved against ``base`` with the shared rule (:func:`rag.validation.confine_path`):
    absolute paths, ``..`` and symbolic links are refused for every source, so a JSONL, CSV, case.json or backup
    can only name files inside its own import folder (``confine`` is kept for callers; it is always on)."""
    try:
        full = confine_path(base, rel)
    except InputRejected as e:
        raise ValueError(e.problem) from None
    if not full.is_file():
        raise ValueError(f"media file {rel!r} not found (looked for {full})")
    return full


def _sources_for(case: CaseInput, base: Path, confine: bool) -> list[MediaSource]:
    out = []
    for m in case.media:
        path = _resolve_media(base, m.path, confine)
        out.append(MediaSource(name=path.name, path=path, kind=m.kind, caption=m.caption, page=m.page))
    return out


def normalise_media_field(data: dict[str, Any]) -> None:
    """Accept ``"media": ["a.jpg", {"path": ...}]``: bare strings are paths."""
    media = data.get("media")
    if isinstance(media, list):
        data["media"] = [{"path": m} if isinstance(m, str) else m for m in media]


#: Free-text fields screened by the shared text rules (control/bidi characters, NFC) before schema validation.
TEXT_FIELDS = ("title", "product_line", "equipment_model", "symptom", "cause", "source")
TEXT_LIST_FIELDS = ("solution", "error_codes", "tags")


def clean_case_text(data: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Apply :func:`rag.validation.check_text` to a case's text fields (raises ``InputRejected`` naming the field)."""
    out = dict(data)
    for key in TEXT_FIELDS:
        if isinstance(out.get(key), str):
            out[key] = check_text(out[key], key, where=where)
    for key in TEXT_LIST_FIELDS:
        if isinstance(out.get(key), list):
            out[key] = [check_text(v, f"{key}[{i}]", where=where) if isinstance(v, str) else v
                        for i, v in enumerate(out[key])]
    if isinstance(out.get("media"), list):
        out["media"] = [{**m, "caption": check_text(m["caption"], f"media[{i}].caption", where=where)}
                        if isinstance(m, dict) and isinstance(m.get("caption"), str) else m
                        for i, m in enumerate(out["media"])]
    return out


def _raw(where: str, data: Any, base: Path, default_id: str | None = None) -> RawRecord | SourceCase:
    """A row's fields ready for validation, or the rejected record saying why not."""
    if not isinstance(data, dict):
        return SourceCase(where=where, error=f"expected a JSON object, got {type(data).__name__}")
    data = dict(data)
    normalise_media_field(data)
    if default_id and not data.get("id"):
        data["id"] = default_id
    try:
        data = clean_case_text(data)
    except InputRejected as e:
        return SourceCase(where=where, error=str(e))
    return RawRecord(where, data, base)


def _finish(rows: Sequence[RawRecord | SourceCase], confine: bool, prepare: RecordHook | None) -> list[SourceCase]:
    """Run ``prepare`` on a file's readable rows, then validate each row (rejected rows pass through, in order)."""
    if prepare is not None:
        prepare([r for r in rows if isinstance(r, RawRecord)])
    return [_record(r.where, r.data, r.base, confine) if isinstance(r, RawRecord) else r for r in rows]


def _record(where: str, data: dict[str, Any], base: Path, confine: bool) -> SourceCase:
    try:
        case = CaseInput.model_validate(data)
    except ValidationError as e:
        return SourceCase(where=where, error=format_validation_error(e))
    try:
        media = _sources_for(case, base, confine)
    except ValueError as e:
        return SourceCase(where=where, case=case, error=str(e))
    return SourceCase(where=where, case=case, media=media)


# ------------------------------------------------------------------------------------------------ JSONL


#: Largest JSONL/CSV/case.json read (they are read whole).
MAX_TEXT_SOURCE_BYTES = 256 * 1024 * 1024


def _check_text_file(path: Path, label: str, encoding: str | None = None) -> None:
    """The shared file rules before a text source is read whole: a regular file, not a link, within the size cap,
    and text by content (a spreadsheet or an image renamed .csv is refused, not parsed). Content sniffing knows
    UTF-8 and byte-order marks; a file that declares another encoding (``encoding``, or its name) is text when its
    bytes decode in it."""
    try:
        check_file(path, ("text",), Limits(max_file_bytes=MAX_TEXT_SOURCE_BYTES), where=label)
    except InputRejected as e:
        if e.code == "empty_file":
            return  # an empty JSONL is zero records; an empty CSV says it needs a header
        declared = encoding or declared_encoding(path.name)
        if e.code == "wrong_type" and declared and _decodes_as_text(path, declared):
            return
        hint = ("; save it as UTF-8 text, or declare GB18030 (a byte-order mark or a name like cases.gb18030.csv)"
                if e.code == "wrong_type" else "")
        raise IngestInputError(e.problem + hint, e.where, e.code) from None


def _decodes_as_text(path: Path, encoding: str) -> bool:
    try:
        with path.open("rb") as f:
            head = f.read(64 * 1024)
        text = decode_text(head, encoding)[0] if len(head) < 64 * 1024 else decode_text(head[:-4], encoding)[0]
    except (OSError, TextDecodeError):
        return False
    return "\x00" not in text


def _join(label: str, name: str) -> str:
    return f"{label}{name}" if label.endswith("!") else f"{label}/{name}"




def _read_text(path: Path, label: str, encoding: str | None) -> str:
    """The file's text: UTF-8 (with or without a BOM), or GB18030/UTF-16 when a BOM, ``encoding`` or the file name
    (``cases.gb18030.csv``) declares it (:func:`rag.text.decode_text`)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise IngestInputError(f"{label}: cannot be read ({e.strerror})") from None
    try:
        return decode_text(raw, encoding or declared_encoding(path.name))[0]
    except TextDecodeError as e:
        raise IngestInputError(f"{label}: {e}") from None


def read_jsonl(path: Path, *, base_dir: Path | None = None, confine: bool = False, label: str | None = None,
               encoding: str | None = None, prepare: RecordHook | None = None) -> list[SourceCase]:
    """One ``CaseInput`` JSON object per line; media paths relative to ``base_dir`` (default: the file's folder).
    ``encoding``: see :func:`_read_text` (UTF-8 unless declared); ``prepare``: see :data:`RecordHook`."""
    base = base_dir or path.parent
    label = label or path.name
    out: list[RawRecord | SourceCase] = []
    _check_text_file(path, label, encoding)
    text = _read_text(path, label, encoding)
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{label}:{lineno}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            out.append(SourceCase(where=where, error=f"invalid JSON ({e.msg} at column {e.colno})"))
            continue
        out.append(_raw(where, data, base))
    return _finish(out, confine, prepare)


# ------------------------------------------------------------------------------------------------ CSV

#: Column name (lower-cased, spaces/dashes → underscores) → CaseInput field.
CSV_ALIASES: dict[str, str] = {
    "case_id": "id",
    "model": "equipment_model",
    "equipment": "equipment_model",
    "product": "product_line",
    "steps": "solution",
    "solution_steps": "solution",
    "fix": "solution",
    "error_code": "error_codes",
    "codes": "error_codes",
    "tag": "tags",
    "images": "media",
    "files": "media",
    "media_files": "media",
    "caption": "captions",
    "media_captions": "captions",
    "related": "links",
    "related_cases": "links",
}
CSV_FIELDS = {
    "id", "title", "product_line", "equipment_model", "symptom", "cause", "solution", "error_codes", "tags",
    "severity", "source", "created_at", "media", "captions", "links",
}
CSV_LIST_FIELDS = {"solution", "error_codes", "tags", "media", "captions", "links"}
CSV_REQUIRED = {"title", "product_line", "symptom"}


def _split_list(value: str, delimiter: str) -> list[str]:
    """``a | b`` or ``a; b`` (``|`` wins when present, so steps may contain ``;``)."""
    sep = "|" if "|" in value or delimiter == ";" else ";"
    return [v.strip() for v in value.split(sep) if v.strip()]


def read_csv(path: Path, *, media_dir: Path | None = None, confine: bool = False, label: str | None = None,
             encoding: str | None = None, prepare: RecordHook | None = None) -> list[SourceCase]:
    """A header row with CaseInput field names (aliases allowed); list cells split on ``|`` or ``;``.

    Media cells name files in ``media_dir`` (default: the CSV's folder); an optional ``captions`` column gives
    one caption per media file, in the same order.
    """
    base = media_dir or path.parent
    label = label or path.name
    _check_text_file(path, label, encoding)
    text = _read_text(path, label, encoding)
    first = text.split("\n", 1)[0]
    delimiter = max([",", ";", "\t"], key=first.count)
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise IngestInputError(f"{label}: the file is empty (a header row is needed)") from None
    columns = []
    for raw in header:
        key = re.sub(r"[\s-]+", "_", raw.strip().lower())
        columns.append(CSV_ALIASES.get(key, key))
    unknown = [h for h, c in zip(header, columns, strict=False) if c not in CSV_FIELDS]
    if unknown:
        raise IngestInputError(
            f"{label}: unknown column(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(CSV_FIELDS))}"
        )
    missing = CSV_REQUIRED - set(columns)
    if missing:
        raise IngestInputError(f"{label}: missing required column(s) {', '.join(sorted(missing))}")
    dup = sorted({c for c in columns if columns.count(c) > 1})
    if dup:
        raise IngestInputError(f"{label}: column(s) {', '.join(dup)} appear more than once")
    out: list[RawRecord | SourceCase] = []
    row_start = reader.line_num + 1
    for row in reader:
        where = f"{label}:row {row_start}"
        row_start = reader.line_num + 1
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(columns):
            out.append(SourceCase(where=where, error=f"has {len(row)} cells but the header has {len(columns)}"))
            continue
        data: dict[str, Any] = {}
        for col, cell in zip(columns, row, strict=False):
            cell = cell.strip()
            if not cell:
                continue
            data[col] = _split_list(cell, delimiter) if col in CSV_LIST_FIELDS else cell
        captions = data.pop("captions", [])
        media = data.get("media", [])
        if captions and len(captions) != len(media):
            out.append(SourceCase(where=where, error=f"{len(captions)} captions for {len(media)} media files"))
            continue
        data["media"] = [{"path": m, "caption": c} for m, c in zip(media, captions or [""] * len(media), strict=False)]
        if "links" in data:
            data["links"] = [{"case_id": cid, "relation": "related"} for cid in data["links"]]
        out.append(_raw(where, data, base))
    return _finish(out, confine, prepare)


# ------------------------------------------------------------------------------------------------ folders


def read_folder(root: Path, *, confine: bool = False, label: str | None = None,
                prepare: RecordHook | None = None) -> list[SourceCase]:
    """One sub-folder per case: ``case.json`` (CaseInput fields) + media files.

    Without a ``media`` list in case.json every media file of the folder is attached (sorted by name); the case
    id defaults to the folder name. A ``case.json`` directly in ``root`` makes ``root`` a single case.
    """
    label = label or root.name
    try:
        check_tree(root)
    except InputRejected as e:
        raise IngestInputError(e.problem, e.where or label, e.code) from None
    dirs = [root] if (root / CASE_FILE).is_file() else sorted(
        d for d in root.iterdir() if d.is_dir() and not d.name.startswith((".", "__"))
    )
    out: list[RawRecord | SourceCase] = []
    for d in dirs:
        rel = d.relative_to(root).as_posix()
        where = _join(label, CASE_FILE if rel == "." else f"{rel}/{CASE_FILE}")
        cf = d / CASE_FILE
        if cf.is_symlink() or not cf.is_file():
            out.append(SourceCase(where=where, error=f"folder has no {CASE_FILE}"))
            continue
        try:
            data = json.loads(cf.read_text(encoding="utf-8-sig"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            out.append(SourceCase(where=where, error=f"invalid JSON ({e})"))
            continue
        if isinstance(data, dict) and "media" not in data:
            data["media"] = [
                f.name for f in sorted(d.iterdir())
                if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in MEDIA_EXTENSIONS
            ]
        default_id = d.name if _CASE_ID_RE.match(d.name) else slugify(d.name)
        out.append(_raw(where, data, d, default_id=default_id))
    if not out:
        raise IngestInputError(f"{label}: no case folders (sub-folders with {CASE_FILE}) found")
    return _finish(out, confine, prepare)


# ------------------------------------------------------------------------------------------------ backups


def read_backup(root: Path, *, label: str | None = None) -> list[SourceCase]:
    """An unpacked export: ``manifest.json``, ``cases.jsonl`` (stored ``Case`` records) and ``media/<path>``."""
    label = label or root.name
    try:
        manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise IngestInputError(f"{label}: unreadable manifest.json ({e})") from None
    if manifest.get("format") != BACKUP_FORMAT:
        raise IngestInputError(f"{label}: manifest.json is not a {BACKUP_FORMAT} manifest")
    if int(manifest.get("version", 0)) != 1:
        raise IngestInputError(f"{label}: backup format version {manifest.get('version')} is not supported (expected 1)")
    hashes: dict[str, str] = manifest.get("content_hashes") or {}
    media_root = root / "media"
    out: list[SourceCase] = []
    text = (root / "cases.jsonl").read_text(encoding="utf-8") if (root / "cases.jsonl").is_file() else ""
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{_join(label, 'cases.jsonl')}:{lineno}"
        try:
            case = Case.model_validate_json(line)
        except ValidationError as e:
            out.append(SourceCase(where=where, error=format_validation_error(e)))
            continue
        try:
            media = [
                MediaSource(name=m.source_file or PurePosixPath(m.path).name,
                            path=_resolve_media(media_root, m.path, confine=True), kind=m.kind,
                            caption=m.caption, page=m.page, item=m)
                for m in case.media
            ]
        except ValueError as e:
            out.append(SourceCase(where=where, stored=case, error=str(e)))
            continue
        out.append(SourceCase(where=where, stored=case, media=media, content_hash=hashes.get(case.id), dedup=False))
    return out


# ------------------------------------------------------------------------------------------------ zip


def safe_extract_zip(path: Path, dest: Path, *, max_bytes: int = 2 << 30, max_files: int = 10_000) -> None:
    """Unpack with the shared rules (:func:`rag.validation.safe_extract`): no absolute names, ``..``, links,
    encrypted members or bombs; real bytes are counted, so a lying header cannot get past the cap."""
    limits = Limits(max_archive_bytes=max_bytes, max_archive_members=max_files, max_file_bytes=max(max_bytes, 1))
    try:
        safe_extract(path, dest, limits)
    except InputRejected as e:
        raise IngestInputError(e.problem, e.where or path.name, e.code) from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise IngestInputError(f"damaged archive ({e})", path.name, "bad_zip") from None


# ------------------------------------------------------------------------------------------------ detection


def _unwrap(root: Path) -> Path:
    """A zip often holds one top-level folder: look inside it."""
    entries = [p for p in root.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    if len(entries) == 1 and entries[0].is_dir() and not (entries[0] / CASE_FILE).is_file():
        return entries[0]
    return root


def _is_backup(manifest: Path) -> bool:
    """Other tools write manifest.json too (the sample KB does): only ours marks a backup."""
    try:
        return bool(json.loads(manifest.read_text(encoding="utf-8")).get("format") == BACKUP_FORMAT)
    except (OSError, ValueError, AttributeError):
        return False


def _detect_dir(root: Path, label: str, media_dir: Path | None, confine: bool,
                prepare: RecordHook | None = None) -> SourceBundle:
    if (root / "manifest.json").is_file() and _is_backup(root / "manifest.json"):
        return SourceBundle("backup", root, read_backup(root, label=label))
    jsonl = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in (".jsonl", ".ndjson"))
    if (root / "cases.jsonl").is_file():
        jsonl = [root / "cases.jsonl"]
    if len(jsonl) == 1:
        return SourceBundle("jsonl", jsonl[0], read_jsonl(jsonl[0], base_dir=media_dir, confine=confine,
                                                          label=_join(label, jsonl[0].name), prepare=prepare))
    csvs = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() == ".csv")
    if not jsonl and len(csvs) == 1:
        return SourceBundle("csv", csvs[0], read_csv(csvs[0], media_dir=media_dir, confine=confine,
                                                     label=_join(label, csvs[0].name), prepare=prepare))
    if (root / CASE_FILE).is_file() or any((d / CASE_FILE).is_file() for d in root.iterdir() if d.is_dir()):
        return SourceBundle("folder", root, read_folder(root, confine=confine, label=label, prepare=prepare))
    found = ", ".join(p.name for p in (jsonl + csvs)) or "nothing importable"
    raise IngestInputError(
        f"{label}: don't know how to import this folder (found {found}); expected one cases.jsonl, one .csv, "
        f"sub-folders with {CASE_FILE}, or an export's manifest.json"
    )


@contextlib.contextmanager
def load_source(path: str | os.PathLike[str], *, media_dir: Path | None = None, max_zip_bytes: int = 2 << 30,
                max_zip_files: int = 10_000, prepare: RecordHook | None = None) -> Iterator[SourceBundle]:
    """Parse an import source; a zip is unpacked (safely) into a temp dir that lives as long as the context.

    ``media_dir``: where a JSONL's or CSV's media paths point (default: next to it; a zip carries its own media).
    ``prepare``: see :data:`RecordHook` (backups are restored as they are and do not call it)."""
    path = Path(path)
    if path.is_symlink() and path.suffix.lower() == ".zip":
        raise IngestInputError(f"{path.name}: is a symbolic link; refusing it")
    if not path.exists():
        raise IngestInputError(f"{path}: not found")
    suffix = path.suffix.lower()
    if path.is_dir():
        yield _detect_dir(path, path.name, media_dir, confine=False, prepare=prepare)
    elif suffix in (".jsonl", ".ndjson"):
        yield SourceBundle("jsonl", path, read_jsonl(path, base_dir=media_dir, prepare=prepare))
    elif suffix == ".csv":
        yield SourceBundle("csv", path, read_csv(path, media_dir=media_dir, prepare=prepare))
    elif suffix == ".json":
        # A single case.json (with its media next to it).
        yield SourceBundle("folder", path.parent, read_folder(path.parent, prepare=prepare))
    elif suffix == ".zip" or zipfile.is_zipfile(path):
        tmp = Path(tempfile.mkdtemp(prefix="ragvqa-import-"))
        try:
            safe_extract_zip(path, tmp, max_bytes=max_zip_bytes, max_files=max_zip_files)
            root = _unwrap(tmp)
            yield _detect_dir(root, path.name + "!", None, confine=True, prepare=prepare)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        raise IngestInputError(f"{path.name}: unsupported import source (use .jsonl, .csv, .zip or a folder)")
