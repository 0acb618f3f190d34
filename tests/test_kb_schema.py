"""Fault-case schema and content-addressed media store."""

from __future__ import annotations

import hashlib
import io
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from PIL import Image
from pydantic import ValidationError

from knowledge_base.media_store import MediaError, MediaStore
from knowledge_base.schema import LIMITS, Case, CaseInput, EvalQuery, MediaInput, MediaItem, media_id, slugify

SHA = "ab" * 32


def _case(**kw) -> dict:
    base = {
        "id": "prn-e204",
        "title": "E-204 paper jam at tray 2",
        "product_line": "Office laser printers",
        "equipment_model": "Printek LX-4200",
        "symptom": "Jam at tray 2 pickup.",
        "cause": "Worn pickup roller.",
        "solution": ["Remove the sheet.", "Replace the roller kit."],
        "error_codes": ["E-204"],
        "tags": ["Paper Jam", "tray 2"],
        "severity": "medium",
    }
    base.update(kw)
    return base


def _errors(exc: pytest.ExceptionInfo[ValidationError]) -> str:
    return " | ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.value.errors())


# ============================================================================================ schema


def test_valid_case_normalises_fields() -> None:
    c = Case.model_validate(_case(tags=[" Paper  Jam ", "paper jam", "TRAY 2", ""], error_codes=["E-204", "e-204", " E 13 "],
                                  severity="HIGH", title="  E-204   paper jam  "))
    assert c.tags == ["paper jam", "tray 2"]
    assert c.error_codes == ["E-204", "E 13"]  # case kept as shown on the device, duplicates ignore case
    assert c.severity == "high"
    assert c.title == "E-204 paper jam"
    assert c.version == 1 and c.created_at.tzinfo is not None
    assert Case.model_validate_json(c.model_dump_json()) == c


@pytest.mark.parametrize("bad", ["", "-starts-with-dash", "has space", "a/b", "x" * 65, "ümlaut"])
def test_bad_case_id_is_explained(bad: str) -> None:
    with pytest.raises(ValidationError) as e:
        Case.model_validate(_case(id=bad))
    msg = _errors(e)
    assert msg.startswith("id:") and "case id" in msg and "letters/digits" in msg


def test_too_long_text_names_field_and_limit() -> None:
    with pytest.raises(ValidationError) as e:
        Case.model_validate(_case(title="x" * 201))
    assert f"the limit is {LIMITS['title']}" in _errors(e) and "title is 201 characters" in _errors(e)
    with pytest.raises(ValidationError) as e:
        Case.model_validate(_case(solution=["ok", "y" * 1001]))
    assert "solution step 2 is 1001 characters" in _errors(e)
    with pytest.raises(ValidationError) as e:
        Case.model_validate(_case(tags=["t" * 41]))
    assert "each entry may have at most 40" in _errors(e)


def test_required_text_must_not_be_blank() -> None:
    with pytest.raises(ValidationError) as e:
        Case.model_validate(_case(symptom="   "))
    assert "symptom must not be empty" in _errors(e)


def test_bad_severity_lists_allowed_values() -> None:
    with pytest.raises(ValidationError) as e:
        Case.model_validate(_case(severity="urgent"))
    assert "low, medium, high, critical" in _errors(e)
    assert Case.model_validate(_case(severity="")).severity is None


def test_unknown_field_rejected() -> None:
    with pytest.raises(ValidationError) as e:
        Case.model_validate(_case(colour="red"))
    assert "colour" in _errors(e)


def test_timestamps_are_utc_and_ordered() -> None:
    naive = datetime(2024, 5, 1, 12, 0)
    c = Case.model_validate(_case(created_at=naive, updated_at=naive))
    assert c.created_at.tzinfo == timezone.utc and c.created_at.hour == 12
    cet = timezone(timedelta(hours=2))
    c = Case.model_validate(_case(created_at=datetime(2024, 5, 1, 14, 0, tzinfo=cet), updated_at=naive))
    assert c.created_at == datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    with pytest.raises(ValidationError, match="updated_at must not be earlier"):
        Case.model_validate(_case(created_at=naive, updated_at=naive - timedelta(days=1)))


def test_self_link_rejected() -> None:
    with pytest.raises(ValidationError, match="must not link to itself"):
        Case.model_validate(_case(links=[{"case_id": "prn-e204", "relation": "related"}]))


def test_media_item_derives_id_and_checks_consistency() -> None:
    m = MediaItem(kind="image", sha256=SHA.upper(), path=f"ab/ab/{SHA}.png", mime="image/png", source_file="C:\\Users\\bob\\IMG_1.png")
    assert m.sha256 == SHA and m.id == "m-" + SHA[:16] and m.source_file == "IMG_1.png"
    p = MediaItem(kind="pdf_page", sha256=SHA, path=f"ab/ab/{SHA}.pdf", mime="application/pdf", page=3)
    assert p.id == media_id(SHA, 3) == f"m-{SHA[:16]}-p3"
    with pytest.raises(ValidationError, match="needs 'page'"):
        MediaItem(kind="pdf_page", sha256=SHA, path="a.pdf", mime="application/pdf")
    with pytest.raises(ValidationError, match="only allowed for pdf_page"):
        MediaItem(kind="image", sha256=SHA, path="a.png", mime="image/png", page=1)
    for bad in ("../etc/passwd", "/abs.png", "a//b.png", "a\\b.png", "C:x.png"):
        with pytest.raises(ValidationError, match="path"):
            MediaItem(kind="image", sha256=SHA, path=bad, mime="image/png")
    with pytest.raises(ValidationError, match="sha256 must be 64"):
        MediaItem(kind="image", sha256="xyz", path="a.png", mime="image/png")


def test_duplicate_media_in_case_rejected() -> None:
    m = {"kind": "image", "sha256": SHA, "path": f"ab/ab/{SHA}.png", "mime": "image/png"}
    with pytest.raises(ValidationError, match="duplicated"):
        Case.model_validate(_case(media=[m, m]))


def test_embedding_and_document_text() -> None:
    c = Case.model_validate(_case(symptom="Long symptom. " * 250, media=[
        {"kind": "image", "sha256": SHA, "path": f"ab/ab/{SHA}.png", "mime": "image/png", "caption": "LCD with E-204"}]))
    emb = c.embedding_text()
    assert emb.splitlines()[0] == "E-204 paper jam at tray 2"
    assert "Error codes: E-204" in emb and "Cause: Worn pickup roller." in emb and "2. Replace the roller kit." in emb
    assert "LCD with E-204" not in emb  # captions live with the media vectors
    doc = c.document_text(600)
    assert len(doc) <= 600
    assert doc.startswith("[case:prn-e204] E-204 paper jam at tray 2")
    # a huge symptom must not push out cause and fix
    assert "Cause: Worn pickup roller." in doc and "2) Replace the roller kit." in doc and "Media: LCD with E-204" in doc
    assert "…" in doc
    short = Case.model_validate(_case()).document_text(2000)
    assert "…" not in short and "Severity: medium" in short
    with pytest.raises(ValueError):
        c.document_text(10)


def test_case_input_to_case() -> None:
    ci = CaseInput.model_validate({k: v for k, v in _case().items() if k != "id"} | {
        "media": [{"path": "media/a.png", "caption": "front"}, {"path": "manual.pdf", "page": 2}],
        "created_at": "2024-01-15T09:00:00Z"})
    assert ci.resolved_id() == "printek-lx-4200-e-204-paper-jam-at-tray-2"
    assert ci.media[1].kind == "pdf_page"
    case = ci.to_case([], now=datetime(2025, 1, 1, tzinfo=timezone.utc))
    assert case.id == ci.resolved_id() and case.version == 1
    assert case.created_at == datetime(2024, 1, 15, 9, tzinfo=timezone.utc) and case.updated_at.year == 2025
    with pytest.raises(ValidationError, match="only allowed for pdf_page"):
        MediaInput(path="x.png", kind="image", page=1)


def test_slugify() -> None:
    assert slugify("E-204 Paper jam!") == "e-204-paper-jam"
    assert slugify("???") == "case"
    assert len(slugify("x" * 200)) == 64


def test_eval_query_consistency() -> None:
    EvalQuery(id="q1", kind="text", text="hi", relevant={"a": 2})
    EvalQuery(id="q2", kind="text", text="hi", expect_abstain=True)
    with pytest.raises(ValidationError, match="abstain query must have no relevant"):
        EvalQuery(id="q3", kind="text", text="hi", relevant={"a": 2}, expect_abstain=True)
    with pytest.raises(ValidationError, match="needs text, image or video"):
        EvalQuery(id="q4", kind="image", relevant={"a": 2})


# ============================================================================================ media store


def _png(color=(200, 30, 30), size=(64, 48), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "PNG")
    return buf.getvalue()


def _tiny_mp4(path: Path) -> Path:
    from knowledge_base.sample.builder import _mp4

    frames = [Image.new("RGB", (64, 48), (i * 40, 80, 160)) for i in range(4)]
    path.write_bytes(_mp4(frames, 10))
    return path


def _pdf(pages: int = 2) -> bytes:
    ims = [Image.new("RGB", (200, 280), (255, 255, 255 - i * 40)) for i in range(pages)]
    buf = io.BytesIO()
    ims[0].save(buf, "PDF", save_all=True, append_images=ims[1:])
    return buf.getvalue()


@pytest.fixture
def store(tmp_path: Path) -> MediaStore:
    return MediaStore(tmp_path / "media")


def test_content_addressed_layout_and_dedup(store: MediaStore, tmp_path: Path) -> None:
    data = _png()
    sha = hashlib.sha256(data).hexdigest()
    a = store.put_bytes(data, "image", name="upload.jpg")
    assert a.rel_path == f"{sha[:2]}/{sha[2:4]}/{sha}.png"  # extension from content, not the name
    assert (store.root / a.rel_path).read_bytes() == data
    assert (a.kind, a.mime, a.width, a.height, a.created) == ("image", "image/png", 64, 48, True)
    src = tmp_path / "evil name.pdf"
    src.write_bytes(data)
    b = store.put_file(src)
    assert b.rel_path == a.rel_path and b.created is False
    assert list(store.iter_files()) == [a.rel_path]
    assert store.exists(sha) and store.exists(a.rel_path) and store.find(sha) == a.rel_path
    item = a.to_media_item(caption="front", source_file="../../IMG.png")
    assert item.id == "m-" + sha[:16] and item.path == a.rel_path and item.source_file == "IMG.png"


def test_sniffs_jpeg_pdf_and_video(store: MediaStore, tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(buf, "JPEG")
    assert store.put_bytes(buf.getvalue()).rel_path.endswith(".jpg")
    pdf = store.put_bytes(_pdf(3), "pdf_page", name="manual.png")
    assert (pdf.kind, pdf.mime, pdf.pages) == ("pdf", "application/pdf", 3) and pdf.rel_path.endswith(".pdf")
    page = pdf.to_media_item(page=2)
    assert page.kind == "pdf_page" and page.page == 2 and page.id.endswith("-p2")
    with pytest.raises(MediaError, match="has 3"):
        pdf.to_media_item(page=4)
    vid = store.put_file(_tiny_mp4(tmp_path / "clip.bin"), "video")
    assert (vid.kind, vid.mime, vid.width, vid.height) == ("video", "video/mp4", 64, 48) and vid.rel_path.endswith(".mp4")
    assert vid.duration_s is not None and 0.2 <= vid.duration_s <= 1.0


def test_refuses_wrong_or_unknown_content(store: MediaStore) -> None:
    with pytest.raises(MediaError, match=r"^notes\.png: is not a supported"):
        store.put_bytes(b"just some text, not an image", name="notes.png")
    with pytest.raises(MediaError, match="expected video content but the file is image/png"):
        store.put_bytes(_png(), "video", name="clip.mp4")
    with pytest.raises(MediaError, match="damaged image"):
        store.put_bytes(_png()[:60], name="cut.png")
    with pytest.raises(MediaError, match="empty"):
        store.put_bytes(b"", name="empty.png")
    assert list(store.iter_files()) == []
    assert list((store.root / ".tmp").iterdir()) == []


def test_refuses_decompression_bomb(tmp_path: Path) -> None:
    store = MediaStore(tmp_path / "m", max_image_pixels=1000)
    with pytest.raises(MediaError, match="MP; the limit"):
        store.put_bytes(_png(size=(100, 100)), name="big.png")


def test_path_refuses_escape(store: MediaStore, tmp_path: Path) -> None:
    rel = store.put_bytes(_png()).rel_path
    assert store.path(rel) == (store.root / rel).resolve()
    for bad in ("../outside.png", "/etc/passwd", "ab/../../x", "", "a\\b", "a\x00b"):
        with pytest.raises(MediaError):
            store.path(bad)
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    (store.root / "link").symlink_to(outside)
    with pytest.raises(MediaError, match="outside the media store"):
        store.path("link")
    assert not store.exists("../secret.txt")


def test_put_file_refuses_symlinks_and_oversize_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = MediaStore(tmp_path / "m", max_bytes=1000)
    real = tmp_path / "real.png"
    real.write_bytes(_png(size=(400, 400)))
    assert real.stat().st_size > 1000
    link = tmp_path / "link.png"
    link.symlink_to(real)
    opened: list[str] = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda p, *a, **k: opened.append(str(p)) or real_open(p, *a, **k))
    with pytest.raises(MediaError, match=r"^link\.png: is a symbolic link"):
        store.put_file(link)
    with pytest.raises(MediaError, match=r"^real\.png: is .* MB; the limit is"):
        store.put_file(real)
    assert not any(p.endswith(("real.png", "link.png")) for p in opened)  # refused on lstat, never opened
    with pytest.raises(MediaError, match="file not found"):
        store.put_file(tmp_path / "missing.png")
    with pytest.raises(MediaError, match="not a regular file"):
        store.put_file(tmp_path)


def test_atomic_write_leaves_no_partial_file(store: MediaStore, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _png((1, 2, 3))
    sha = hashlib.sha256(data).hexdigest()

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        store.put_bytes(data)
    monkeypatch.undo()
    assert store.find(sha) is None and list(store.iter_files()) == []
    assert list((store.root / ".tmp").iterdir()) == []  # temp file cleaned up
    assert store.put_bytes(data).created  # and a retry works


def test_thumbnails(store: MediaStore, tmp_path: Path) -> None:
    big = store.put_bytes(_png(size=(1200, 600)))
    t = store.thumbnail(big.sha256)
    assert t.startswith("thumbs/") and t.endswith(".jpg")
    with Image.open(store.path(t)) as im:
        assert max(im.size) <= 256 and im.format == "JPEG"
    assert store.thumbnail(big.rel_path) == t  # cached
    alpha = store.put_bytes(_png(color=(0, 0, 0, 0), mode="RGBA"))
    assert store.thumbnail(alpha.rel_path).endswith(".png")
    vid = store.put_file(_tiny_mp4(tmp_path / "v.mp4"))
    with Image.open(store.path(store.thumbnail(vid.rel_path))) as im:
        assert im.size == (64, 48)
    pdf = store.put_bytes(_pdf(2))
    t2 = store.thumbnail(pdf.rel_path, page=2)
    assert "-p2-" in t2
    with Image.open(store.path(t2)) as im:
        assert max(im.size) <= 256
    with pytest.raises(MediaError, match="page 5 does not exist"):
        store.thumbnail(pdf.rel_path, page=5)
    assert t not in list(store.iter_files())  # thumbnails are not media files


def test_delete_and_probe(store: MediaStore) -> None:
    m = store.put_bytes(_png())
    t = store.thumbnail(m.rel_path)
    p = store.probe(m.sha256)
    assert (p.rel_path, p.kind, p.width, p.created) == (m.rel_path, "image", 64, False)
    assert store.delete(m.rel_path) is True
    assert not store.exists(m.sha256) and not (store.root / t).exists()
    assert store.delete(m.rel_path) is False
    with pytest.raises(MediaError, match="not in the media store"):
        store.read_bytes(m.sha256)


def test_document_text_keeps_short_sections() -> None:
    from knowledge_base.schema import Case

    case = Case(id="c1", title="Short", product_line="printers", symptom="E13 shown", cause="worn", solution=["reset"])
    text = case.document_text(400)
    assert "Symptom: E13 shown" in text and "Cause: worn" in text and "Solution: 1) reset" in text
