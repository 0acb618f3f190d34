"""``kb import --suggest``: fill the missing label fields of a bulk import's records from suggestions, and say so.

Every source the import reads goes through the import's own parser (:func:`knowledge_base.archive.load_source`):
JSONL, CSV (UTF-8 with or without a BOM, or declared GB18030), a case folder or ``case.json``, and a zip of any of
these. The parser hands each file's records to :class:`SuggestFiller` as field dicts before it validates them
(:data:`knowledge_base.archive.RecordHook`). A record that lacks a product line, equipment model, tags or severity
gets :func:`knowledge_base.labels.suggest_labels` on its text and pictures; confident suggestions fill the empty
fields (a value the record has is never replaced) and every filled field is reported as *suggested*. A record whose
product line cannot be suggested stays as it was, and the import refuses it with its usual message. Backups are
restored as they are (their cases are complete).

No copy of the source is written: the filled records go from the parser straight into the import, so the source is
never modified, and media paths resolve exactly as in a plain import (next to the CSV/JSONL or under
``--media-dir``; inside the unpacked zip). A broken source fails with the import's own error before anything is
suggested or written.

The records that need suggestions are embedded together: one embedder call per :data:`SUGGEST_BATCH` records (the
embedder batches inside it). If a batch holds an item the model cannot read, its records are embedded one by one so
that only the bad one goes without suggestions (the import then rejects it for its media, as usual).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from knowledge_base.archive import RawRecord
from knowledge_base.labels import LABEL_FIELDS, LabelField, LabelSuggestion, embed_items, suggest_labels
from knowledge_base.media_store import VIDEO_SUFFIXES
from rag.errors import UserInputError
from rag.models.embedder import EmbeddingError

if TYPE_CHECKING:  # pragma: no cover
    from knowledge_base.kb import KnowledgeBase

__all__ = ["SUGGEST_BATCH", "FilledField", "SuggestFiller", "SuggestInputError", "record_query"]

log = logging.getLogger(__name__)

#: Records embedded per embedder call while suggesting (bounds the vectors held at once, not the model's batch).
SUGGEST_BATCH = 64
#: Pictures of a record used to classify it (its text is always used).
MAX_PICTURES = 4


class SuggestInputError(UserInputError, ValueError):
    """``kb classify FILE`` cannot read this case record."""


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


def _missing(data: Mapping[str, Any]) -> list[LabelField]:
    return [f for f in LABEL_FIELDS if not data.get(f)]


def _record_text(data: Mapping[str, Any]) -> str:
    parts = [str(data.get("title") or "").strip()]
    for label, key in (("Symptom", "symptom"), ("Cause", "cause")):
        if str(data.get(key) or "").strip():
            parts.append(f"{label}: {str(data[key]).strip()}")
    return "\n".join(p for p in parts if p)


def _record_media(data: Mapping[str, Any], base: Path) -> list[Path]:
    """The record's pictures (no PDFs, no videos: too slow to embed twice), resolved under ``base``."""
    out = []
    for m in data.get("media") or []:
        rel = m if isinstance(m, str) else (m or {}).get("path") if isinstance(m, dict) else None
        kind = (m or {}).get("kind") if isinstance(m, dict) else None
        if not isinstance(rel, str) or kind == "pdf_page" or rel.lower().endswith(".pdf"):
            continue
        p = Path(rel) if Path(rel).is_absolute() else base / rel
        if p.is_file() and p.resolve().is_relative_to(base.resolve()) and not rel.lower().endswith(VIDEO_SUFFIXES):
            out.append(p)
    return out[:MAX_PICTURES]


def _items(text: str, media: Sequence[Path]) -> list[dict[str, str]]:
    """Embedder inputs of one record: its text, then each picture (one vector each, as a stored case has)."""
    items = [{"text": text}] if text else []
    return items + [{"image": str(p)} for p in media]


def _fill(data: dict[str, Any], where: str, missing: Sequence[LabelField],
          found: Sequence[LabelSuggestion]) -> list[FilledField]:
    """Write the confident suggestions into ``data``'s empty fields; returns what was filled."""
    filled: list[FilledField] = []
    cid = data.get("id") if isinstance(data.get("id"), str) else None
    for name in missing:
        picks = [s for s in found if s.field == name]
        if not picks:
            continue
        value: str | list[str] = [s.value for s in picks] if name == "tags" else picks[0].value
        data[name] = value
        filled.append(FilledField(where=where, case_id=cid, field=name, value=value,
                                  confidence=min(s.confidence for s in picks), source=picks[0].source))
    return filled


@dataclass
class _Todo:
    record: RawRecord
    missing: list[LabelField]
    items: list[dict[str, str]]


@dataclass
class SuggestFiller:
    """The import's :data:`~knowledge_base.archive.RecordHook` for ``--suggest``: fills each file's records in place
    and keeps what it filled in ``filled`` (in input order)."""

    kb: KnowledgeBase
    batch: int = SUGGEST_BATCH
    filled: list[FilledField] = field(default_factory=list)

    def __call__(self, records: Sequence[RawRecord]) -> None:
        todo = []
        for r in records:
            missing = _missing(r.data)
            items = _items(_record_text(r.data), _record_media(r.data, r.base)) if missing else []
            if items:
                todo.append(_Todo(r, missing, items))
        if todo:
            log.info("suggesting labels for %d of %d record(s)", len(todo), len(records))
        for start in range(0, len(todo), max(1, self.batch)):
            chunk = todo[start:start + max(1, self.batch)]
            for t, vecs in zip(chunk, self._embed(chunk), strict=True):
                if vecs is None:
                    continue
                found = suggest_labels(self.kb, vectors=vecs, fields=t.missing)
                self.filled += _fill(t.record.data, t.record.where, t.missing, found)

    def _embed(self, chunk: Sequence[_Todo]) -> list[np.ndarray | None]:
        """Each record's vectors (its rows of one embedder call); ``None`` for a record the model cannot read."""
        try:
            vecs = embed_items(self.kb, [it for t in chunk for it in t.items])
        except EmbeddingError:
            if len(chunk) == 1:
                log.warning("%s: cannot embed it to suggest labels; left as it is", chunk[0].record.where)
                return [None]
            return [v for t in chunk for v in self._embed([t])]
        out: list[np.ndarray | None] = []
        at = 0
        for t in chunk:
            out.append(vecs[at:at + len(t.items)])
            at += len(t.items)
        return out


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
