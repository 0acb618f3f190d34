"""Structured fault-case schema: the one data contract shared by ingest, indexing, retrieval, generation and eval.

A *case* is one solved (or documented) support incident: what the customer saw (symptom, error codes,
photos/screenshots/clips/manual pages), why it happened (cause) and the fix (solution steps).  Keeping the
fields separate — rather than one free-text blob — lets the indexer build a focused embedding text, lets the
retriever filter by product line/model/error code, and lets the generator cite the cause and steps verbatim.

Validation errors are written for humans (support engineers editing JSONL by hand): they name the field, the
limit and what to do.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from rag.payload import MediaKind

__all__ = [
    "CASE_ID_PATTERN",
    "LIMITS",
    "Case",
    "CaseInput",
    "CaseLink",
    "EvalQuery",
    "MediaInput",
    "MediaItem",
    "MediaKind",
    "Severity",
    "media_id",
    "slugify",
]

Severity = Literal["low", "medium", "high", "critical"]
LinkRelation = Literal["near_duplicate", "related", "supersedes", "superseded_by"]

#: Case ids appear in URLs, Qdrant payloads and citations like ``[case:prn-e204]``: keep them slug-like.
CASE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_CASE_ID_RE = re.compile(CASE_ID_PATTERN)
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_MEDIA_ID_RE = re.compile(r"^m-[0-9a-f]{16}(-p[1-9][0-9]{0,4})?$")

#: Text length caps (characters).  Generous for real cases, small enough to keep embedding/rerank inputs bounded.
LIMITS: dict[str, int] = {
    "title": 200,
    "product_line": 100,
    "equipment_model": 100,
    "symptom": 4000,
    "cause": 4000,
    "solution_step": 1000,
    "solution_steps": 40,
    "error_code": 40,
    "error_codes": 30,
    "tag": 40,
    "tags": 40,
    "source": 500,
    "caption": 1000,
    "source_file": 255,
    "media": 50,
    "links": 50,
    "note": 500,
}


# --------------------------------------------------------------------------------------------- helpers


def _clean(text: str) -> str:
    """Strip and collapse runs of spaces/tabs (keep newlines: symptoms may be multi-line)."""
    lines = [re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in text.strip().splitlines()]
    return "\n".join(lines).strip()


def _capped(field: str, *, required: bool = False) -> AfterValidator:
    """An ``AfterValidator`` that cleans whitespace and enforces ``LIMITS[field]`` with a readable message."""
    limit = LIMITS[field]

    def check(v: str) -> str:
        v = _clean(v)
        if required and not v:
            raise ValueError(f"{field} must not be empty")
        if len(v) > limit:
            raise ValueError(f"{field} is {len(v)} characters long; the limit is {limit} — shorten it")
        return v

    return AfterValidator(check)


L = TypeVar("L", bound=list[Any])


def _at_most(v: L, field: str) -> L:
    """``v`` unless it has more entries than ``LIMITS[field]`` (then a message naming both numbers)."""
    if len(v) > LIMITS[field]:
        raise ValueError(f"{field} has {len(v)} entries; the limit is {LIMITS[field]}")
    return v


def slugify(text: str, max_len: int = 64) -> str:
    """A case-id-safe slug (``"E-204 Paper jam!"`` -> ``"e-204-paper-jam"``); empty input gives ``"case"``."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")
    slug = re.sub(r"-{2,}", "-", slug)[:max_len].rstrip("-._")
    return slug or "case"


def media_id(sha256: str, page: int | None = None) -> str:
    """Stable media id: ``m-`` + 16 hex of the content hash (+ ``-pN`` for a PDF page).

    Derived from content, so re-ingesting the same file yields the same id and vector point.
    """
    base = f"m-{sha256[:16]}"
    return f"{base}-p{page}" if page is not None else base


def _check_rel_path(v: str, field: str) -> str:
    """Relative POSIX path that cannot escape its base (no absolute, no ``..``, no backslashes, no drive)."""
    if not v or v.strip() != v:
        raise ValueError(f"{field} must be a non-empty relative path without surrounding spaces")
    if "\\" in v or "\x00" in v or ":" in v:
        raise ValueError(f"{field} {v!r} must be a POSIX relative path (no backslash, colon or NUL)")
    p = PurePosixPath(v)
    if p.is_absolute() or any(part in ("..", "") for part in v.split("/")) or v.startswith("./"):
        raise ValueError(f"{field} {v!r} must be relative and must not contain '..' or empty segments")
    return v


def _norm_list(values: list[str], *, field: str, item_field: str, lower: bool) -> list[str]:
    """Strip, collapse spaces, optionally lower-case; drop empties and case-insensitive duplicates; enforce caps."""
    out: list[str] = []
    seen: set[str] = set()
    item_limit, count_limit = LIMITS[item_field], LIMITS[field]
    for raw in values:
        v = re.sub(r"\s+", " ", raw).strip()
        if lower:
            v = v.lower()
        if not v:
            continue
        if len(v) > item_limit:
            raise ValueError(f"{field}: {v[:30]!r}… is {len(v)} characters; each entry may have at most {item_limit}")
        if v.casefold() not in seen:
            seen.add(v.casefold())
            out.append(v)
    if len(out) > count_limit:
        raise ValueError(f"{field} has {len(out)} entries; the limit is {count_limit}")
    return out


def _to_utc(v: datetime) -> datetime:
    """Naive datetimes are taken as UTC (exports often drop the zone); aware ones are converted to UTC."""
    if v.tzinfo is None:
        return v.replace(tzinfo=timezone.utc)
    return v.astimezone(timezone.utc)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


Title = Annotated[str, _capped("title", required=True)]
ProductLine = Annotated[str, _capped("product_line", required=True)]
EquipmentModel = Annotated[str, _capped("equipment_model")]
Symptom = Annotated[str, _capped("symptom", required=True)]
Cause = Annotated[str, _capped("cause")]
Source = Annotated[str, _capped("source")]
Caption = Annotated[str, _capped("caption")]
Note = Annotated[str, _capped("note")]


def _check_case_id(v: str) -> str:
    if not _CASE_ID_RE.match(v):
        raise ValueError(
            f"case id {v!r} is invalid: use 1–64 characters, letters/digits/'.'/'_'/'-', "
            "starting with a letter or digit (e.g. 'prn-e204-tray2-jam')"
        )
    return v


CaseId = Annotated[str, AfterValidator(_check_case_id)]


# --------------------------------------------------------------------------------------------- media


class MediaItem(BaseModel):
    """One stored media file (or one page of a stored PDF) attached to a case.

    ``path`` is relative to the media store root and content-addressed, so it never carries a user-chosen
    filename; ``source_file`` keeps the original name for display only.
    """

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default="", description="m-<16 hex of sha256>[-p<page>]; derived when omitted")
    kind: MediaKind
    sha256: str
    path: str = Field(description="Relative path inside the media store (ab/cd/<sha256><ext>)")
    mime: str
    caption: Caption = ""
    source_file: str | None = Field(default=None, description="Original file name, for display only")
    page: int | None = Field(default=None, ge=1, description="1-based page number (pdf_page only)")
    width: int | None = Field(default=None, ge=1)
    height: int | None = Field(default=None, ge=1)
    duration_s: float | None = Field(default=None, ge=0)
    thumbnail: str | None = Field(default=None, description="Relative path of a ≤256 px preview in the store")

    @field_validator("sha256")
    @classmethod
    def _sha(cls, v: str) -> str:
        v = v.lower()
        if not _SHA256_RE.match(v):
            raise ValueError(f"sha256 must be 64 lower-case hex characters, got {v[:70]!r}")
        return v

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        return _check_rel_path(v, "path")

    @field_validator("thumbnail")
    @classmethod
    def _thumb(cls, v: str | None) -> str | None:
        return None if v is None else _check_rel_path(v, "thumbnail")

    @field_validator("mime")
    @classmethod
    def _mime(cls, v: str) -> str:
        if not re.match(r"^[a-z]+/[a-z0-9.+-]+$", v):
            raise ValueError(f"mime {v!r} is not a media type like 'image/png'")
        return v

    @field_validator("source_file")
    @classmethod
    def _source_file(cls, v: str | None) -> str | None:
        """Keep only the base name: a display label must not leak client directory layouts."""
        if v is None:
            return None
        name = re.split(r"[\\/]", v)[-1].replace("\x00", "").strip()
        return name[: LIMITS["source_file"]] or None

    @model_validator(mode="after")
    def _consistency(self) -> MediaItem:
        if self.kind == "pdf_page" and self.page is None:
            raise ValueError("a pdf_page media item needs 'page' (1-based)")
        if self.kind != "pdf_page" and self.page is not None:
            raise ValueError(f"'page' is only allowed for pdf_page media, not {self.kind}")
        if self.duration_s is not None and self.kind != "video":
            raise ValueError("'duration_s' is only allowed for video media")
        expected = media_id(self.sha256, self.page)
        if not self.id:
            self.id = expected
        elif not _MEDIA_ID_RE.match(self.id):
            raise ValueError(f"media id {self.id!r} must look like {expected!r}")
        return self


class MediaInput(BaseModel):
    """Media as a user or a JSONL import submits it: a file path (relative to the import's base dir)."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="File path, relative to the JSONL/import base directory (or absolute)")
    kind: MediaKind | None = Field(default=None, description="Sniffed from content when omitted")
    caption: Caption = ""
    page: int | None = Field(default=None, ge=1, description="1-based PDF page; required for pdf_page")

    @model_validator(mode="after")
    def _consistency(self) -> MediaInput:
        if self.kind == "pdf_page" and self.page is None:
            raise ValueError(f"media {self.path!r}: kind 'pdf_page' needs 'page' (1-based)")
        if self.page is not None and self.kind not in (None, "pdf_page"):
            raise ValueError(f"media {self.path!r}: 'page' is only allowed for pdf_page media")
        if self.page is not None and self.kind is None:
            self.kind = "pdf_page"
        return self


# --------------------------------------------------------------------------------------------- cases


class CaseLink(BaseModel):
    """A typed link to another case (near duplicates help dedup results and graded relevance)."""

    model_config = ConfigDict(extra="forbid")

    case_id: CaseId
    relation: LinkRelation = "related"
    note: Note = ""


class _CaseFields(BaseModel):
    """Fields shared by a submitted case and a stored case."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    title: Title
    product_line: ProductLine
    equipment_model: EquipmentModel = ""
    symptom: Symptom
    cause: Cause = ""
    solution: list[str] = Field(default_factory=list, description="Ordered fix steps")
    error_codes: list[str] = Field(default_factory=list, description="As shown on the device; deduplicated ignoring case")
    tags: list[str] = Field(default_factory=list, description="Lower-cased, deduplicated")
    severity: Severity | None = None
    source: Source = ""
    links: list[CaseLink] = Field(default_factory=list)

    @field_validator("severity", mode="before")
    @classmethod
    def _severity(cls, v: Any) -> Any:
        if isinstance(v, str):
            norm = v.strip().lower()
            if norm == "":
                return None
            if norm not in ("low", "medium", "high", "critical"):
                raise ValueError(f"severity {v!r} is not one of: low, medium, high, critical (or leave it empty)")
            return norm
        return v

    @field_validator("solution")
    @classmethod
    def _solution(cls, v: list[str]) -> list[str]:
        steps = [_clean(s) for s in v]
        steps = [s for s in steps if s]
        lim = LIMITS["solution_step"]
        for i, s in enumerate(steps, 1):
            if len(s) > lim:
                raise ValueError(f"solution step {i} is {len(s)} characters long; the limit is {lim} — split it")
        if len(steps) > LIMITS["solution_steps"]:
            raise ValueError(f"solution has {len(steps)} steps; the limit is {LIMITS['solution_steps']}")
        return steps

    @field_validator("error_codes")
    @classmethod
    def _codes(cls, v: list[str]) -> list[str]:
        return _norm_list(v, field="error_codes", item_field="error_code", lower=False)

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: list[str]) -> list[str]:
        return _norm_list(v, field="tags", item_field="tag", lower=True)

    @field_validator("links")
    @classmethod
    def _links(cls, v: list[CaseLink]) -> list[CaseLink]:
        return _at_most(v, "links")


class CaseInput(_CaseFields):
    """A case as submitted (UI form or JSONL import): media are file paths, no version/updated_at.

    ``id`` may be omitted (a slug of the title is used); ``created_at`` may be given when importing
    historic cases so their original date survives.
    """

    id: CaseId | None = None
    media: list[MediaInput] = Field(default_factory=list)
    created_at: datetime | None = None

    @field_validator("created_at")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        return None if v is None else _to_utc(v)

    @field_validator("media")
    @classmethod
    def _media_count(cls, v: list[MediaInput]) -> list[MediaInput]:
        return _at_most(v, "media")

    def resolved_id(self) -> str:
        """The given id, else a slug of the equipment model and title."""
        return self.id or slugify(f"{self.equipment_model} {self.title}")

    def to_case(self, media: list[MediaItem], *, now: datetime | None = None) -> Case:
        """Build the stored ``Case`` once the media were put in the store (version 1)."""
        now = _to_utc(now) if now is not None else _utcnow()
        data = self.model_dump(exclude={"media", "created_at", "id"})
        return Case(
            id=self.resolved_id(),
            media=media,
            created_at=self.created_at or now,
            updated_at=max(now, self.created_at or now),
            version=1,
            **data,
        )


class Case(_CaseFields):
    """A stored fault case (what the index, the retriever and the generator see)."""

    id: CaseId
    media: list[MediaItem] = Field(default_factory=list)
    created_at: datetime = Field(default_factory=_utcnow)
    updated_at: datetime = Field(default_factory=_utcnow)
    version: int = Field(default=1, ge=1)

    @field_validator("created_at", "updated_at")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        return _to_utc(v)

    @field_validator("media")
    @classmethod
    def _media(cls, v: list[MediaItem]) -> list[MediaItem]:
        _at_most(v, "media")
        ids = [m.id for m in v]
        dups = sorted({i for i in ids if ids.count(i) > 1})
        if dups:
            raise ValueError(f"media ids must be unique within a case; duplicated: {', '.join(dups)}")
        return v

    @model_validator(mode="after")
    def _checks(self) -> Case:
        if self.updated_at < self.created_at:
            raise ValueError("updated_at must not be earlier than created_at")
        if any(link.case_id == self.id for link in self.links):
            raise ValueError(f"case {self.id!r} must not link to itself")
        return self

    # ---- texts for models

    @property
    def equipment(self) -> str:
        """``"product line / model"`` for headers."""
        return " / ".join(p for p in (self.product_line, self.equipment_model) if p)

    def embedding_text(self) -> str:
        """Text for the case-text vector: the fields a query is likely to match, most specific first.

        Error codes go near the top because engineers often type just the code.  Media captions are left
        out on purpose: media get their own vectors, and captions often describe pixels, not the fault.
        """
        parts = [self.title, f"Equipment: {self.equipment}"]
        if self.error_codes:
            parts.append("Error codes: " + ", ".join(self.error_codes))
        parts.append(f"Symptom: {self.symptom}")
        if self.cause:
            parts.append(f"Cause: {self.cause}")
        if self.solution:
            parts.append("Solution: " + " ".join(f"{i}. {s}" for i, s in enumerate(self.solution, 1)))
        return "\n".join(parts)

    def document_text(self, max_chars: int = 2000) -> str:
        """Compact text for reranking and generation context, at most ``max_chars`` characters.

        The header (id, title, equipment, codes) is always kept; the remaining budget is shared fairly among
        symptom, cause, solution and media captions so a long symptom cannot push out the fix.
        """
        if max_chars < 80:
            raise ValueError(f"max_chars must be at least 80, got {max_chars}")
        head = f"[case:{self.id}] {self.title}\nEquipment: {self.equipment}"
        if self.severity:
            head += f" | Severity: {self.severity}"
        if self.error_codes:
            head += "\nError codes: " + ", ".join(self.error_codes)
        head = _truncate(head, max_chars)
        sections: list[tuple[str, str]] = [("Symptom: ", self.symptom)]
        if self.cause:
            sections.append(("Cause: ", self.cause))
        if self.solution:
            sections.append(("Solution: ", " ".join(f"{i}) {s}" for i, s in enumerate(self.solution, 1))))
        captions = [m.caption for m in self.media if m.caption]
        if captions:
            sections.append(("Media: ", "; ".join(captions)))
        budget = max_chars - len(head)
        # Each section costs "\n" + label + body: share the leftover fairly (water-filling by body length).
        overhead = {i: 1 + len(lbl) for i, (lbl, _) in enumerate(sections)}
        alloc: dict[int, int] = {}
        order = sorted(range(len(sections)), key=lambda i: len(sections[i][1]))
        remaining = budget
        for n, i in enumerate(order):
            share = remaining // (len(order) - n)
            need = overhead[i] + len(sections[i][1])
            give = min(need, share)
            alloc[i] = give
            remaining -= give
        out = [head]
        for i, (label, body) in enumerate(sections):
            room = alloc[i] - overhead[i]
            if room < len(body) and room < 12:  # a cut this short says nothing useful; a short body fits whole
                continue
            out.append(label + _truncate(body, room))
        text = "\n".join(out)
        return text if len(text) <= max_chars else _truncate(text, max_chars)


def _truncate(text: str, limit: int) -> str:
    """Cut at a word boundary and mark the cut with an ellipsis (result length ≤ limit)."""
    if len(text) <= limit:
        return text
    cut = text[: max(limit - 1, 0)]
    space = cut.rfind(" ")
    if space > limit * 0.6:
        cut = cut[:space]
    return cut.rstrip(" ,;:.") + "…"


# --------------------------------------------------------------------------------------------- eval


class EvalQuery(BaseModel):
    """One evaluation query (a row of ``eval.jsonl``); media paths are relative to the JSONL's directory.

    ``relevant`` maps case id -> graded relevance (2 = the answer, 1 = related/near duplicate); an empty
    mapping with ``expect_abstain`` means the KB does not cover the question and the app should say so.
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    kind: Literal["image", "image+text", "text", "video"]
    text: str | None = None
    image: str | None = None
    video: str | None = None
    filters: dict[str, str] | None = None
    relevant: dict[str, int] = Field(default_factory=dict)
    reference_answer: str | None = None
    key_facts: list[str] = Field(default_factory=list)
    expect_abstain: bool = False
    variant: str | None = Field(default=None, description="How the query media differ from the KB media")

    @model_validator(mode="after")
    def _consistency(self) -> EvalQuery:
        if not (self.text or self.image or self.video):
            raise ValueError(f"query {self.id}: needs text, image or video")
        if self.expect_abstain and self.relevant:
            raise ValueError(f"query {self.id}: an abstain query must have no relevant cases")
        if not self.expect_abstain and not self.relevant:
            raise ValueError(f"query {self.id}: list relevant cases or set expect_abstain")
        for p in (self.image, self.video):
            if p is not None:
                _check_rel_path(p, "media path")
        return self
