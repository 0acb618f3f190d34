"""``kb import --suggest``: fill the missing label fields of a bulk import's records from suggestions, and say so.

Each JSONL record that lacks a product line, equipment model, tags or severity is embedded once (its text and its
images) and gets :func:`knowledge_base.labels.suggest_labels`; confident suggestions fill the empty fields (a value
the record has is never replaced) and every filled field is reported as *suggested*. A record whose product line
cannot be suggested stays as it was, and the import refuses it with its usual message. The filled records are
imported from a temporary copy; the source file is not modified.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from knowledge_base.labels import LABEL_FIELDS, LabelField, suggest_labels
from knowledge_base.media_store import VIDEO_SUFFIXES
from rag.errors import UserInputError

if TYPE_CHECKING:  # pragma: no cover
    from knowledge_base.kb import KnowledgeBase

__all__ = ["FilledField", "SuggestInputError", "filled_source", "record_query"]



class SuggestInputError(UserInputError, ValueError):
    """``--suggest`` cannot handle this source."""


@dataclass
class FilledField:
    """One field of one record filled from a suggestion."""

    where: str
    case_id: str | None
    field: LabelField
    value: str | list[str]
    confidence: float
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"where": self.where, "case_id": self.case_id, "field": self.field, "value": self.value,
                "confidence": round(self.confidence, 4), "source": self.source, "suggested": True}


def _missing(data: dict[str, Any]) -> list[LabelField]:
    return [f for f in LABEL_FIELDS if not data.get(f)]


def _record_text(data: dict[str, Any]) -> str:
    parts = [str(data.get("title") or "").strip()]
    for label, key in (("Symptom", "symptom"), ("Cause", "cause")):
        if str(data.get(key) or "").strip():
            parts.append(f"{label}: {str(data[key]).strip()}")
    return "\n".join(p for p in parts if p)


def _record_media(data: dict[str, Any], base: Path) -> list[Path]:
    out = []
    for m in data.get("media") or []:
        rel = m if isinstance(m, str) else (m or {}).get("path") if isinstance(m, dict) else None
        kind = (m or {}).get("kind") if isinstance(m, dict) else None
        if not isinstance(rel, str) or kind == "pdf_page" or rel.lower().endswith(".pdf"):
            continue
        p = Path(rel) if Path(rel).is_absolute() else base / rel
        if p.is_file() and p.resolve().is_relative_to(base.resolve()) and not rel.lower().endswith(VIDEO_SUFFIXES):
            out.append(p)
    return out[:4]


def fill_record(kb: KnowledgeBase, data: dict[str, Any], base: Path, where: str) -> list[FilledField]:
    """Fill ``data``'s empty label fields in place from suggestions; returns what was filled."""
    missing = _missing(data)
    text, media = _record_text(data), _record_media(data, base)
    if not missing or not (text or media):
        return []
    found = suggest_labels(kb, text=text or None, media=media, fields=missing)
    filled: list[FilledField] = []
    for field in missing:
        picks = [s for s in found if s.field == field]
        if not picks:
            continue
        value: str | list[str] = [s.value for s in picks] if field == "tags" else picks[0].value
        data[field] = value
        filled.append(FilledField(where=where, case_id=data.get("id") if isinstance(data.get("id"), str) else None,
                                  field=field, value=value, confidence=min(s.confidence for s in picks),
                                  source=picks[0].source))
    return filled


def record_query(path: Path) -> tuple[str, list[Path]]:
    """The text and pictures of one case record in a ``.json`` file (media relative to the file), to classify it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SuggestInputError(f"{path.name} is not a readable JSON case record ({e})") from None
    if not isinstance(data, dict):
        raise SuggestInputError(f"{path.name} must hold one case record (a JSON object)")
    text, media = _record_text(data), _record_media(data, path.parent)
    if not text and not media:
        raise SuggestInputError(f"{path.name} has no title, symptom, cause or picture to classify")
    return text, media


@contextmanager
def filled_source(kb: KnowledgeBase, path: Path, media_dir: Path | None = None) -> Iterator[tuple[Path, Path,
                                                                                                   list[FilledField]]]:
    """A temporary copy of the JSONL ``path`` with suggested labels filled in: ``(copy, media base, filled)``.

    Import the copy with ``media_dir=`` the returned base so relative media paths still resolve.
    """
    if path.suffix.lower() != ".jsonl" or not path.is_file():
        raise SuggestInputError(f"--suggest works on a .jsonl file; {path} is not one (import it without --suggest, "
                                "or convert it)")
    base = media_dir or path.parent
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise SuggestInputError(f"{path.name} cannot be read as UTF-8 text ({e})") from None
    filled: list[FilledField] = []
    out_lines = []
    for lineno, line in enumerate(lines, 1):
        try:
            data = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict):
            filled += fill_record(kb, data, base, f"{path.name}:{lineno}")
            line = json.dumps(data, ensure_ascii=False)
        out_lines.append(line)  # blank and broken lines kept as they are: the import reports them, same numbering
    with tempfile.TemporaryDirectory(prefix="ragvqa-suggest-") as tmp:
        copy = Path(tmp) / path.name
        copy.write_text("\n".join(out_lines) + "\n", encoding="utf-8")
        yield copy, base, filled
