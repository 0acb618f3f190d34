"""The point payload contract (rag.payload): payloads written by the old dict-building code still validate, the
writers produce them unchanged, and retrieval reads them into candidates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from knowledge_base.ingest import media_payload, text_payload
from knowledge_base.schema import Case
from rag.payload import (
    MEDIA_KINDS,
    POINT_KINDS,
    CaseTextFields,
    MediaFields,
    MediaPointPayload,
    TextPointPayload,
    parse_payload,
)

#: ``store.scroll()`` of an Edge store filled by ``KnowledgeBase.import_path`` before the payload model existed
#: (commit 7e5e245), kept as data in tests/data/old_payloads.json: one case with a picture, page 2 of a PDF and a
#: clip. Only ``embedder`` was edited (it held a temp path of the tiny test checkpoint).
_OLD = json.loads((Path(__file__).parent / "data" / "old_payloads.json").read_text(encoding="utf-8"))
OLD_TEXT = _OLD["text"]
OLD_MEDIA = _OLD["media"]


def test_old_payloads_validate_into_the_models_and_dump_unchanged() -> None:
    text = parse_payload(OLD_TEXT)
    assert isinstance(text, TextPointPayload) and text.case_id == "case-01" and text.media_id is None
    assert text.model_dump(mode="json") == OLD_TEXT
    assert list(text.model_dump(mode="json")) == list(OLD_TEXT)  # same field order as the stores hold
    for old in OLD_MEDIA:
        media = parse_payload(old)
        assert isinstance(media, MediaPointPayload) and media.kind == old["kind"]
        assert media.model_dump(mode="json") == old and list(media.model_dump(mode="json")) == list(old)
    assert {parse_payload(m).kind for m in OLD_MEDIA} == set(MEDIA_KINDS)


def test_writers_produce_the_old_payloads() -> None:
    """Ingestion's payload builders, fed the stored case record, write exactly what the old code wrote."""
    case = Case.model_validate(OLD_TEXT["case"])
    eid = OLD_TEXT["embedder"]
    assert text_payload(case, OLD_TEXT["content_hash"], eid) == OLD_TEXT
    by_id = {m.id: m for m in case.media}
    for old in OLD_MEDIA:
        assert media_payload(case, by_id[old["media_id"]], eid) == old


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"kind": "gif"}, "kind"),
        ({"media_path": None}, "media_path"),
        ({"page": "two"}, "page"),
        ({"case_id": ""}, "case_id"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_media_payload_names_the_field(change: dict, field: str) -> None:
    with pytest.raises(ValidationError) as e:
        parse_payload({**OLD_MEDIA[0], **change})
    assert field in str(e.value)


def test_text_payload_needs_its_record_and_document() -> None:
    for missing in ("case", "document", "content_hash"):
        with pytest.raises(ValidationError, match=missing):
            parse_payload({k: v for k, v in OLD_TEXT.items() if k != missing})
    with pytest.raises(ValidationError, match="media_id"):
        parse_payload({**OLD_TEXT, "media_id": "m-0123456789abcdef"})


def test_read_views_are_subsets_of_the_written_payloads() -> None:
    """Retrieval fetches only some fields: every one of them is a field the writers write."""
    from rag.pipeline.retrieve import SEARCH_PAYLOAD

    assert SEARCH_PAYLOAD == ["case_id", "media_id", "kind", "media_path", "thumbnail"]
    assert set(SEARCH_PAYLOAD) <= set(MediaPointPayload.model_fields)
    assert set(CaseTextFields.model_fields) <= set(TextPointPayload.model_fields)
    assert set(MediaFields.model_fields) <= set(TextPointPayload.model_fields) | set(MediaPointPayload.model_fields)


def test_one_kind_vocabulary() -> None:
    import knowledge_base.schema as schema
    from rag.store.base import KINDS

    assert schema.MediaKind is __import__("rag.payload", fromlist=["MediaKind"]).MediaKind
    assert KINDS == POINT_KINDS == ("text", "image", "video", "pdf_page")


def test_retrieve_reads_old_payloads_from_a_real_store(tmp_path: Path) -> None:
    from rag.pipeline.retrieve import Retrieve
    from rag.pipeline.types import Trace
    from rag.store import VectorPoint, open_store, point_id

    dim = 16
    media_root = tmp_path / "media"
    for p in OLD_MEDIA:
        for rel in (p["media_path"], p["thumbnail"]):
            (media_root / rel).parent.mkdir(parents=True, exist_ok=True)
            (media_root / rel).write_bytes(b"x")
    rng = np.random.default_rng(0)
    vectors = {pid: rng.standard_normal(dim) for pid in ["text", *(m["media_id"] for m in OLD_MEDIA)]}
    store = open_store(embedder_id="e", dim=dim, data_dir=tmp_path / "data")
    try:
        store.upsert([VectorPoint(id=point_id("case-01", None), vector=vectors["text"], payload=OLD_TEXT)]
                     + [VectorPoint(id=point_id("case-01", m["media_id"]), vector=vectors[m["media_id"]], payload=m)
                        for m in OLD_MEDIA])
        retrieve = Retrieve(None, store, media_root=media_root)

        (fetched,) = retrieve.fetch(["case-01"])  # no hit of its own: the record's first picture is shown
        assert (fetched.title, fetched.document, fetched.case) == (OLD_TEXT["title"], OLD_TEXT["document"], OLD_TEXT["case"])
        first = OLD_TEXT["case"]["media"][0]
        assert fetched.media_kind == "image" and fetched.media_path == str(media_root / first["path"])
        assert fetched.thumbnail == str(media_root / first["thumbnail"])

        video = OLD_MEDIA[2]
        (found,) = retrieve.search(vectors[video["media_id"]], None, Trace())
        assert found.media_kind == "video" and found.media_path == str(media_root / video["media_path"])
        assert point_id("case-01", video["media_id"]) == found.matched[0]
    finally:
        store.close()
