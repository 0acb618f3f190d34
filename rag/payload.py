"""The point payload contract: what ingestion writes next to each vector and what retrieval and the UI read back.

A case is stored as one *text point* (its record and the document that was embedded) and one *media point* per
picture, PDF page or clip. Both carry the case's filter fields (``case_id``, ``product_line``,
``equipment_model``, ``tags``) so a search can filter and group on any point. The JSON layout is the one stores
already hold: field names and order are fixed here, and changing them needs a ``SCHEMA_VERSION`` bump (reindex).

It lives in ``rag`` (the lowest layer) because the store and the pipeline read it; ``knowledge_base`` builds it.
Searches fetch only some fields: ``MediaFields`` and ``CaseTextFields`` are those read views, checked to be
subsets of the full models so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter

__all__ = [
    "MEDIA_KINDS",
    "PICTURE_KINDS",
    "POINT_KINDS",
    "CaseTextFields",
    "MediaFields",
    "MediaKind",
    "MediaPointPayload",
    "PointKind",
    "PointPayload",
    "TextPointPayload",
    "parse_payload",
]

#: What a stored media item is: a picture, one rendered page of a PDF (stored as an image), or a video clip.
MediaKind = Literal["image", "video", "pdf_page"]
#: ``payload["kind"]``: the text point of a case, or one of its media.
PointKind = Literal["text", "image", "video", "pdf_page"]
MEDIA_KINDS: tuple[MediaKind, ...] = get_args(MediaKind)
POINT_KINDS: tuple[PointKind, ...] = get_args(PointKind)
#: Media shown (and sent to image models) as a still picture.
PICTURE_KINDS: frozenset[MediaKind] = frozenset({"image", "pdf_page"})

JsonObject = dict[str, JsonValue]


class _Payload(BaseModel):
    """Fields every point of a case carries (filters and grouping work on any point)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    case_id: str = Field(min_length=1)
    product_line: str
    equipment_model: str
    tags: list[str]
    title: str


class TextPointPayload(_Payload):
    """A case's text point: the full case record (``Case`` as JSON) and the document text that was embedded."""

    media_id: None = None
    kind: Literal["text"] = "text"
    case: JsonObject
    document: str
    #: ``sha256:<hex>`` of the case content: unchanged hash => a re-import is skipped.
    content_hash: str
    #: Embedder id that produced the vector (a different one means the point needs re-embedding).
    embedder: str


class MediaPointPayload(_Payload):
    """One media item of a case; paths are relative to the media root (``data_dir/media``)."""

    media_id: str = Field(min_length=1)
    kind: MediaKind
    media_path: str
    thumbnail: str | None
    caption: str
    #: 1-based page number for ``pdf_page``, else None.
    page: int | None
    sha256: str
    embedder: str


PointPayload = Annotated[TextPointPayload | MediaPointPayload, Field(discriminator="kind")]
_POINT_PAYLOAD: TypeAdapter[TextPointPayload | MediaPointPayload] = TypeAdapter(PointPayload)


def parse_payload(payload: object) -> TextPointPayload | MediaPointPayload:
    """Validate a whole stored payload into its model (``kind`` picks which); raises ``pydantic.ValidationError``."""
    return _POINT_PAYLOAD.validate_python(payload)


class _View(BaseModel):
    """A read view: the fields one search fetches (``payload_keys``); other fields are ignored, missing ones default."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class MediaFields(_View):
    """Where a matched point's media is: what retrieval fetches for every hit."""

    media_id: str | None = None
    kind: PointKind | None = None
    media_path: str | None = None
    thumbnail: str | None = None

    @classmethod
    def keys(cls) -> list[str]:
        """``payload_keys`` of a search that reads this view (``case_id`` first: hits are grouped by case)."""
        return ["case_id", *cls.model_fields]


class CaseTextFields(_View):
    """What retrieval reads from a case's text point to build a candidate."""

    title: str = ""
    document: str = ""
    case: JsonObject = Field(default_factory=dict)

    def first_picture(self) -> MediaFields | None:
        """The case record's first picture (image or PDF page), shown when the text matched best."""
        media = self.case.get("media")
        for m in media if isinstance(media, list) else []:
            if isinstance(m, dict) and m.get("kind") in PICTURE_KINDS:
                return MediaFields.model_validate({"media_path": m.get("path"), "thumbnail": m.get("thumbnail"),
                                                   "kind": m.get("kind")})
        return None

    def case_title(self) -> str:
        """The point's title, else the record's."""
        record_title = self.case.get("title")
        return self.title or (record_title if isinstance(record_title, str) else "")
