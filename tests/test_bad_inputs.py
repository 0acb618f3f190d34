"""A generated corpus of bad inputs (no committed binaries): every kind is refused by the one validation layer with
an error that says what was wrong and where (file, row, page), through the Python API and the ``ragvqa kb`` CLI,
and leaves the knowledge base exactly as it was (points, case ids, media files, ``check()`` clean).

Odd-but-valid inputs (CMYK, 16-bit, palette with transparency, grey+alpha, EXIF-rotated, animated) are accepted and
converted correctly. User-written paths never reach outside their import folder or the media store.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from conftest import write_video
from kb_support import OPTIONS, case_dict, open_kb, scene, write_jsonl
from PIL import Image
from pydantic import ValidationError
from typer.testing import CliRunner

from knowledge_base.archive import BACKUP_FORMAT
from knowledge_base.kb import CaseRejectedError, KnowledgeBase
from knowledge_base.media_store import MediaError
from knowledge_base.pdf import images_to_pdf
from rag.config import VisionBudget
from rag.models.embedder import EmbeddingError
from rag.models.vision import VisionInputError, load_image, prepare_video
from rag.pipeline.media import MediaResolver, resolve_media
from rag.pipeline.retrieve import Retrieve
from rag.pipeline.types import Query
from rag.validation import InputRejected, confine_path

#: Small caps so "too large/long/many" inputs stay tiny and fast to generate.
VISION = VisionBudget(max_file_bytes=2_000_000, max_video_seconds=5, max_video_frames=30)
KB_OPTIONS = OPTIONS.model_copy(update={"max_zip_files": 40})
GOOD = case_dict(0, ["good.png"])  # the baseline case: re-importing it is "skipped", so a bulk file reports per item


# ------------------------------------------------------------------------------------------------ generators


def png(seed: int = 1, w: int = 64, h: int = 48) -> bytes:
    buf = io.BytesIO()
    scene(seed, w, h).save(buf, "PNG")
    return buf.getvalue()


def jpeg(seed: int = 1, w: int = 64, h: int = 48) -> bytes:
    buf = io.BytesIO()
    scene(seed, w, h).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def bomb_png(w: int = 30_000, h: int = 30_000) -> bytes:
    """A few hundred bytes whose header claims 900 MP: must be refused before anything is decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def raw_pdf(objects: list[bytes], trailer: bytes = b"") -> bytes:
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, obj in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + obj + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R " % (len(objects) + 1) + trailer + b">>\nstartxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


def encrypted_pdf() -> bytes:
    """Standard security handler with a user password nobody knows."""
    return raw_pdf([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                    b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 100 100] >>",
                    b"<< /Filter /Standard /V 1 /R 2 /Length 40 /O <" + b"11" * 32 + b"> /U <" + b"22" * 32 + b"> /P -4 >>"],
                   b"/Encrypt 4 0 R /ID [<" + b"33" * 16 + b"> <" + b"33" * 16 + b">] ")


def pdf_pages(n: int) -> bytes:
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument.new()
    for _ in range(n):
        doc.new_page(50, 50)
    buf = io.BytesIO()
    doc.save(buf)
    doc.close()
    return buf.getvalue()


def two_page_pdf(d: Path) -> bytes:
    return images_to_pdf([scene(11), scene(12)], d / "_two.pdf").read_bytes()


def video(d: Path, n: int, fps: int, size: int = 32) -> bytes:
    p = write_video(d / f"_v{n}_{fps}_{size}.mp4", n_frames=n, fps=fps, size=size)
    return p.read_bytes()


def broken_avi(d: Path) -> bytes:
    """A real AVI container whose frame data is scrambled: the header parses, no frame decodes."""
    import av

    p = d / "_ok.avi"
    with av.open(str(p), "w") as out:
        s = out.add_stream("mpeg4", rate=4)
        s.width = s.height = 32
        s.pix_fmt = "yuv420p"
        for i in range(6):
            for pkt in s.encode(av.VideoFrame.from_ndarray(np.full((32, 32, 3), i * 40, np.uint8), format="rgb24")):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)
    b = bytearray(p.read_bytes())
    i, end = b.find(b"movi") + 4, b.find(b"idx1")
    while i < end:  # scramble the payload of every frame chunk ('00dc' + size)
        tag, size = bytes(b[i:i + 4]), int.from_bytes(b[i + 4:i + 8], "little")
        if tag == b"00dc":
            b[i + 8:i + 8 + size] = bytes((x * 7 + 3) % 256 for x in b[i + 8:i + 8 + size])
        i += 8 + size + (size & 1)
    return bytes(b)


def ppm() -> bytes:
    buf = io.BytesIO()
    scene(5, 32, 32).save(buf, "PPM")
    return buf.getvalue()


def wide_png() -> bytes:
    """Aspect ratio 300 with both sides above the minimum size (so the ratio, not the size, is what is refused)."""
    buf = io.BytesIO()
    Image.new("RGB", (9600, 32), "red").save(buf, "PNG")
    return buf.getvalue()


def tiny_png(w: int = 1, h: int = 1) -> bytes:
    """A valid PNG too small to show anything (the held-out run's 1×1 case photo)."""
    buf = io.BytesIO()
    Image.new("RGB", (w, h), "red").save(buf, "PNG")
    return buf.getvalue()


def tiny_page_pdf(d: Path) -> bytes:
    """A readable one-page PDF whose page is 3×3 pt: rendered at the maximum scale (8×) it is still 24×24 px."""
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument.new()
    doc.new_page(3, 3)
    buf = io.BytesIO()
    doc.save(buf)
    doc.close()
    return buf.getvalue()


def noise_png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.random.RandomState(0).rand(h, w, 3) * 255).astype("uint8")).save(buf, "PNG", compress_level=0)
    return buf.getvalue()


def make_zip(path: Path, members: list[tuple[str, bytes, int | None]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if mode is not None:
                info.external_attr = mode << 16
            zf.writestr(info, data)
    return path


def flag_encrypted(path: Path) -> Path:
    """Set the 'encrypted' bit of every member (local and central headers)."""
    b = bytearray(path.read_bytes())
    for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        i = b.find(sig)
        while i >= 0:
            b[i + off] |= 1
            i = b.find(sig, i + 4)
    path.write_bytes(bytes(b))
    return path


# ------------------------------------------------------------------------------------------------ corpus


def _src(d: Path, rows: list[Any], files: dict[str, bytes] | None = None) -> Path:
    """A JSONL import folder: the good baseline row first, then ``rows`` (dicts or raw lines)."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "good.png").write_bytes(png(0))
    for name, data in (files or {}).items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(data)
    lines = [json.dumps(GOOD)] + [r if isinstance(r, str) else json.dumps(r) for r in rows]
    (d / "cases.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return d / "cases.jsonl"


def _bad(i: int, media: list[Any] | None = None, **kw: Any) -> dict[str, Any]:
    return case_dict(50 + i, media if media is not None else [], **kw)


@dataclass
class Row:
    """A JSONL row kind: ``build(dir)`` returns (extra rows, files); the rejection must match ``pattern``."""

    kind: str
    rows: Callable[[Path], tuple[list[Any], dict[str, bytes]]]
    pattern: str
    #: Row number of the rejected record in cases.jsonl (the good row is line 1).
    line: int = 2


def _m(name: str, data_fn: Callable[[Path], bytes], **media_kw: Any) -> Callable[[Path], tuple[list[Any], dict[str, bytes]]]:
    """A case with one media file built by ``data_fn``."""
    def build(d: Path) -> tuple[list[Any], dict[str, bytes]]:
        entry: Any = {"path": name, **media_kw} if media_kw else name
        return [_bad(1, [entry])], {name: data_fn(d)}
    return build


def _fields(**kw: Any) -> Callable[[Path], tuple[list[Any], dict[str, bytes]]]:
    return lambda d: ([_bad(1, **kw)], {})


def _without(field: str) -> Callable[[Path], tuple[list[Any], dict[str, bytes]]]:
    return lambda d: ([{k: v for k, v in _bad(1).items() if k != field}], {})


def _symlinked(d: Path) -> tuple[list[Any], dict[str, bytes]]:
    outside = d.parent / f"{d.name}-outside.png"
    outside.write_bytes(png(7))
    d.mkdir(parents=True, exist_ok=True)
    os.symlink(outside, d / "link.png")
    return [_bad(1, ["link.png"])], {}


def _a_dir(d: Path) -> tuple[list[Any], dict[str, bytes]]:
    (d / "sub").mkdir(parents=True, exist_ok=True)
    return [_bad(1, ["sub"])], {}


ROW_KINDS: list[Row] = [
    Row("invalid_json", lambda d: (['{"id": "x", "title": '], {}), r"invalid JSON"),
    Row("not_an_object", lambda d: (["[1, 2, 3]"], {}), r"expected a JSON object, got list"),
    Row("missing_required_field", _without("symptom"), r"symptom: Field required"),
    Row("wrong_type_title", _fields(title=123), r"title: Input should be a valid string"),
    Row("wrong_type_list", _fields(tags="a,b"), r"tags: Input should be a valid list"),
    Row("unknown_field", _fields(colour="red"), r"colour: Extra inputs are not permitted"),
    Row("bad_case_id", _fields(id="bad id!"), r"case id 'bad id!' is invalid"),
    Row("duplicate_id", lambda d: ([_bad(1, id="case-00", title="Same id again")], {}),
        r"case id 'case-00' already used in this import at cases\.jsonl:1"),
    Row("text_too_long", _fields(title="x" * 201), r"title is 201 characters long; the limit is 200"),
    Row("control_char", _fields(symptom="Display shows \x1b[31m garbage"), r"field 'symptom'.*U\+001B"),
    Row("bidi_override", _fields(title="Invoice \u202egnp.exe"), r"field 'title'.*U\+202E"),
    Row("nul_char", _fields(cause="a\x00b"), r"field 'cause'.*U\+0000"),
    Row("lone_surrogate", lambda d: (['{"id": "case-51", "title": "bad \\ud800", "product_line": "p", "symptom": "s"}'], {}),
        r"field 'title'.*U\+D800"),
    Row("control_char_in_list", _fields(tags=["ok", "bell\x07"]), r"field 'tags\[1\]'.*U\+0007"),
    Row("control_char_in_caption", lambda d: ([_bad(1, [{"path": "good.png", "caption": "a\x08b"}])], {}),
        r"field 'media\[0\]\.caption'.*U\+0008"),
    Row("bad_enum", _fields(severity="urgent"), r"severity 'urgent' is not one of"),
    Row("bad_datetime", _fields(created_at="yesterday"), r"created_at: Input should be a valid datetime"),
    Row("too_many_media", lambda d: ([_bad(1, [f"m{i}.png" for i in range(51)])], {}), r"media has 51 entries; the limit is 50"),
    Row("media_missing", lambda d: ([_bad(1, ["nowhere.png"])], {}), r"media file 'nowhere\.png' not found"),
    Row("media_dotdot", lambda d: ([_bad(1, ["../../etc/passwd"])], {}), r"'\.\./\.\./etc/passwd' uses '\.\.'; it must stay inside"),
    Row("media_absolute", lambda d: ([_bad(1, ["/etc/passwd"])], {}), r"'/etc/passwd' is absolute; it must be relative"),
    Row("media_windows_drive", lambda d: ([_bad(1, ["C:\\Windows\\win.ini"])], {}), r"is absolute"),
    Row("media_symlink", _symlinked, r"'link\.png' is or goes through a symbolic link"),
    Row("media_is_a_folder", _a_dir, r"media file 'sub' not found"),
    Row("text_renamed_png", _m("photo.png", lambda d: b"#!/bin/sh\nrm -rf /\n"), r"photo\.png: is not a supported image.*not the file name"),
    Row("html_renamed_jpg", _m("x.jpg", lambda d: b"<html><script>alert(1)</script></html>"), r"x\.jpg: is not a supported image"),
    Row("empty_file", _m("empty.png", lambda d: b""), r"empty\.png: is empty"),
    Row("file_too_large", _m("big.png", lambda d: noise_png(900, 800)), r"big\.png: is 2\.\d MB; the limit is 1\.9 MB"),
    Row("truncated_png", _m("cut.png", lambda d: png(3)[:200]), r"cut\.png: is a damaged image"),
    Row("truncated_jpeg", _m("cut.jpg", lambda d: jpeg(3)[:400]), r"cut\.jpg.*(damaged|truncated)"),
    Row("decompression_bomb", _m("bomb.png", lambda d: bomb_png()), r"bomb\.png: .*900,?000,?000 pixels.*decompression bomb"),
    Row("unsupported_image_format", _m("x.ppm", lambda d: ppm()), r"x\.ppm: is a PPM image; supported"),
    Row("extreme_aspect_ratio", _m("wide.png", lambda d: wide_png()), r"wide\.png.*aspect ratio 300"),
    # Too small to show a fault: refused with the limit in the message (rag.validation.MIN_IMAGE_SIDE = 32 px).
    Row("image_1x1", _m("dot.png", lambda d: tiny_png()), r"dot\.png: the image is 1×1 pixels.*at least 32 pixels"),
    Row("image_too_narrow", _m("strip.png", lambda d: tiny_png(640, 31)), r"strip\.png: the image is 640×31 pixels.*at least 32"),
    Row("video_frames_too_small", _m("small.mp4", lambda d: video(d, 6, 4, size=16)),
        r"small\.mp4: each video frame is 16×16 pixels.*at least 32"),
    Row("pdf_page_too_small", _m("stamp.pdf", tiny_page_pdf), r"stamp\.pdf page 1: the image is 24×24 pixels.*at least 32"),
    Row("wrong_kind_hint", _m("a.png", lambda d: png(4), kind="video"), r"a\.png: expected video content but the file is image/png"),
    Row("page_on_an_image", _m("a.png", lambda d: png(4), page=2), r"a\.png: content is png, expected pdf"),
    Row("pdf_encrypted", _m("secret.pdf", lambda d: encrypted_pdf()), r"secret\.pdf: PDF is password-protected"),
    Row("pdf_broken", _m("broken.pdf", lambda d: b"%PDF-1.7\n" + b"\x00garbage" * 50), r"broken\.pdf: PDF cannot be read"),
    Row("pdf_truncated", _m("half.pdf", lambda d: two_page_pdf(d)[:600]), r"half\.pdf: PDF cannot be read"),
    Row("pdf_too_many_pages", _m("manual.pdf", lambda d: pdf_pages(201)), r"manual\.pdf: PDF has 201 pages; the limit is 200"),
    Row("pdf_page_out_of_range", _m("two.pdf", two_page_pdf, page=5), r"two\.pdf.*page 5.*2"),
    Row("video_too_long", _m("long.mp4", lambda d: video(d, 8, 1)), r"long\.mp4: lasts 8 s; the limit is 5 s"),
    Row("video_too_many_frames", _m("fast.mp4", lambda d: video(d, 40, 20)), r"fast\.mp4: has 40 frames; the limit is 30"),
    Row("video_undecodable", _m("broken.avi", broken_avi), r"broken\.avi: is a avi file whose video does not decode"),
    Row("video_header_only", _m("head.mp4", lambda d: video(d, 6, 4)[:48]), r"head\.mp4: is not a supported"),
]


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def kb(tmp_path_factory: pytest.TempPathFactory, embedder):
    """One KB for the module (Qdrant Edge, tiny model) holding the baseline case."""
    root = tmp_path_factory.mktemp("bad-inputs")
    kb = open_kb("edge", root / "data", embedder, options=KB_OPTIONS, vision=VISION)
    res = kb.import_path(_src(root / "base", []))
    assert res.added == 1, res.to_dict()
    yield kb
    kb.close()


def snapshot(kb: KnowledgeBase) -> dict[str, Any]:
    """Points, case ids and every file under the media root (thumbnails included)."""
    ids = sorted(p.payload["case_id"] for p in kb.store.scroll(filters={"kind": "text"}, payload_keys=["case_id"]))
    files = sorted(str(f.relative_to(kb.media.root)) for f in kb.media.root.rglob("*") if f.is_file())
    return {"points": kb.store.count(), "cases": ids, "files": files}


@pytest.fixture
def unchanged(kb: KnowledgeBase):
    """Asserts the test left the KB exactly as it found it, and consistent."""
    before = snapshot(kb)
    yield
    assert snapshot(kb) == before
    rep = kb.check()
    assert rep.problems == 0, rep.summary()


# ------------------------------------------------------------------------------------------------ row kinds (API)


@pytest.mark.parametrize("row", ROW_KINDS, ids=[r.kind for r in ROW_KINDS])
def test_bad_row_rejected_where_and_why(row: Row, kb: KnowledgeBase, tmp_path: Path, unchanged: None) -> None:
    d = tmp_path / "src"
    d.mkdir()
    rows, files = row.rows(d)
    res = kb.import_path(_src(d, rows, files))
    by_where = {i.where: i for i in res.items}
    assert by_where["cases.jsonl:1"].status == "skipped", res.to_dict()  # the good row: per-item report
    bad = by_where[f"cases.jsonl:{row.line}"]
    assert bad.status == "rejected" and re.search(row.pattern, bad.reason), bad.reason
    assert res.added == res.updated == 0


# ------------------------------------------------------------------------------------------------ source kinds (API)


def _csv(d: Path, text: str, files: dict[str, bytes] | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for name, data in (files or {}).items():
        (d / name).write_bytes(data)
    (d / "cases.csv").write_text(text, encoding="utf-8")
    return d / "cases.csv"


HEAD = "id,title,product_line,symptom,media\n"


def _csv_bad_cells(d: Path) -> Path:
    return _csv(d, HEAD + "c2,Title,pumps,Leaks,x.png,extra\n")


def _csv_captions(d: Path) -> Path:
    return _csv(d, "id,title,product_line,symptom,media,captions\nc1,T,p,S,a.png,one|two\n", {"a.png": png(1)})


def _csv_dotdot(d: Path) -> Path:
    return _csv(d, HEAD + "c1,T,p,S,../../etc/passwd\n")


def _folder(d: Path, cases: dict[str, Any], files: dict[str, bytes] | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for name, data in cases.items():
        (d / name).mkdir(parents=True, exist_ok=True)
        if data is not None:
            (d / name / "case.json").write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    for name, data in (files or {}).items():
        (d / name).write_bytes(data)
    return d


def _folder_symlink(d: Path) -> Path:
    _folder(d, {"c1": _bad(1)})
    os.symlink("/etc", d / "c1" / "etc")
    return d


def _backup(d: Path, *, version: int = 1, tamper: bool = False, path: str | None = None, raw: str | None = None) -> Path:
    """An export zip made by hand: one stored case with one image."""
    data = png(21)
    import hashlib

    sha = hashlib.sha256(data).hexdigest()
    rel = path or f"{sha[:2]}/{sha[2:4]}/{sha}.png"
    case = {**{k: v for k, v in _bad(1).items() if k != "media"},
            "media": [{"kind": "image", "sha256": sha, "path": rel, "mime": "image/png", "width": 64, "height": 48}]}
    manifest = {"format": BACKUP_FORMAT, "version": version, "content_hashes": {}}
    members = [("manifest.json", json.dumps(manifest).encode(), None),
               ("cases.jsonl", (raw if raw is not None else json.dumps(case)).encode() + b"\n", None)]
    if path is None:
        members.append((f"media/{rel}", png(22) if tamper else data, None))
    d.mkdir(parents=True, exist_ok=True)
    return make_zip(d / "backup.zip", members)


@dataclass
class Source:
    """A kind refused for the whole source (``code``), or per record (``where`` + pattern)."""

    kind: str
    build: Callable[[Path], Path]
    pattern: str
    code: str | None = None
    where: str | None = None


SOURCE_KINDS: list[Source] = [
    # CSV
    Source("csv_wrong_column_count", _csv_bad_cells, r"has 6 cells but the header has 5", where="cases.csv:row 2"),
    Source("csv_unknown_column", lambda d: _csv(d, "id,title,product_line,symptom,colour\n1,a,b,c,d\n"),
           r"unknown column\(s\) 'colour'", code="bad_import"),
    Source("csv_missing_required_column", lambda d: _csv(d, "id,title,product_line\n1,a,b\n"),
           r"missing required column\(s\) symptom", code="bad_import"),
    Source("csv_duplicate_column", lambda d: _csv(d, "id,title,title,product_line,symptom\n1,a,a,b,c\n"),
           r"column\(s\) title appear more than once", code="bad_import"),
    Source("csv_captions_mismatch", _csv_captions, r"2 captions for 1 media files", where="cases.csv:row 2"),
    Source("csv_media_dotdot", _csv_dotdot, r"uses '\.\.'; it must stay inside", where="cases.csv:row 2"),
    Source("csv_empty", lambda d: _csv(d, ""), r"the file is empty \(a header row is needed\)", code="bad_import"),
    Source("csv_spreadsheet_renamed", lambda d: make_zip(_mk(d) / "x.csv", [("xl/workbook.xml", b"<x/>", None)]),
           r"content is zip, expected text", code="wrong_type"),
    Source("csv_not_utf8", lambda d: _write(d / "cases.csv", b"id,title,product_line,symptom\n1,Caf\xe9,b\xe9,c\xe9\xe9\xe9\n"),
           r"expected text.*save it as UTF-8", code="wrong_type"),
    # JSONL as a whole
    Source("jsonl_binary", lambda d: _write(d / "cases.jsonl", png(1)),
           r"content is png, expected text", code="wrong_type"),
    Source("jsonl_symlink", lambda d: (d.mkdir(), write_jsonl(d / "real.txt", [_bad(1)]),
                                       os.symlink(d / "real.txt", d / "cases.jsonl"))[0] or d / "cases.jsonl",
           r"symbolic links are not accepted", code="symlink"),
    # folders
    Source("folder_with_symlink", _folder_symlink, r"symbolic links are not accepted in import folders", code="symlink"),
    Source("folder_case_without_case_json", lambda d: _folder(d, {"c1": _bad(1, colour="red"), "c2": None}),
           r"folder has no case\.json", where="c2/case.json"),
    Source("folder_invalid_case_json", lambda d: _folder(d, {"c1": '{"title": '}), r"invalid JSON", where="c1/case.json"),
    Source("folder_media_dotdot", lambda d: _folder(d, {"c1": _bad(1, ["../../secret.png"])}),
           r"uses '\.\.'; it must stay inside", where="c1/case.json"),
    Source("folder_nothing_importable", lambda d: _folder(d, {}, {"notes.txt": b"hello"}),
           r"don't know how to import this folder", code="bad_import"),
    # zips
    Source("zip_slip", lambda d: make_zip(_mk(d) / "k.zip", [("../evil.png", png(1), None)]),
           r"member '\.\./evil\.png' points outside", code="zip_slip"),
    Source("zip_slip_backslash", lambda d: make_zip(_mk(d) / "k.zip", [("..\\..\\evil.png", png(1), None)]),
           r"points outside", code="zip_slip"),
    Source("zip_absolute_path", lambda d: make_zip(_mk(d) / "k.zip", [("/tmp/evil.png", png(1), None)]),
           r"member '/tmp/evil\.png' has an absolute path", code="zip_absolute_path"),
    Source("zip_symlink_member", lambda d: make_zip(_mk(d) / "k.zip", [("link.png", b"/etc/passwd", 0o120777)]),
           r"member 'link\.png' is a symbolic link", code="zip_symlink"),
    Source("zip_encrypted", lambda d: flag_encrypted(make_zip(_mk(d) / "k.zip", [("cases.jsonl", b"{}", None)])),
           r"member 'cases\.jsonl' is encrypted", code="zip_encrypted"),
    Source("zip_bomb", lambda d: make_zip(_mk(d) / "k.zip", [("zeros.png", b"\x00" * 3_000_000, None)]),
           r"member 'zeros\.png' expands \d+× \(possible zip bomb\)", code="zip_bomb"),
    Source("zip_too_many_members", lambda d: make_zip(_mk(d) / "k.zip", [(f"f{i}.txt", b"x", None) for i in range(41)]),
           r"41 members; the limit is 40", code="zip_too_many_members"),
    Source("zip_corrupt", lambda d: (_mk(d) / "k.zip").write_bytes(b"PK\x03\x04" + b"\x13garbage" * 40) and d / "k.zip",
           r"not a readable zip archive|damaged archive", code="bad_zip"),
    Source("zip_not_a_zip", lambda d: (_mk(d) / "k.zip").write_text("just text") and d / "k.zip",
           r"content is text, expected zip", code="wrong_type"),
    Source("zip_media_escapes_archive", lambda d: make_zip(_mk(d) / "k.zip", [
        ("cases.jsonl", json.dumps(_bad(1, ["../secret.png"])).encode(), None)]),
        r"uses '\.\.'; it must stay inside", where="k.zip!cases.jsonl:1"),
    # backups
    Source("backup_unsupported_version", lambda d: _backup(d, version=2), r"backup format version 2 is not supported",
           code="bad_import"),
    Source("backup_tampered_media", lambda d: _backup(d, tamper=True), r"content does not match its recorded sha256",
           where="cases.jsonl:1"),
    Source("backup_media_path_escape", lambda d: _backup(d, path="../../etc/passwd.png"),
           r"media\.0\.path: .*must be relative and must not contain '\.\.'", where="cases.jsonl:1"),
    Source("backup_invalid_record", lambda d: _backup(d, raw='{"id": "x"}'), r"title: Field required", where="cases.jsonl:1"),
]


def _mk(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    return d


def _write(path: Path, data: bytes) -> Path:
    _mk(path.parent).joinpath(path.name).write_bytes(data)
    return path


@pytest.mark.parametrize("src", SOURCE_KINDS, ids=[s.kind for s in SOURCE_KINDS])
def test_bad_source_rejected(src: Source, kb: KnowledgeBase, tmp_path: Path, unchanged: None) -> None:
    path = src.build(tmp_path / "src")
    if src.code is not None:
        with pytest.raises(InputRejected) as e:
            kb.import_path(path)
        assert e.value.code == src.code and re.search(src.pattern, str(e.value)), (e.value.code, str(e.value))
        assert path.name in str(e.value), "the rejection names the file"
        return
    res = kb.import_path(path)
    bad = [i for i in res.items if i.where.endswith(src.where or "")]
    assert bad and bad[0].status == "rejected" and re.search(src.pattern, bad[0].reason), res.to_dict()
    assert res.added == res.updated == 0


# ------------------------------------------------------------------------------------------------ single case (API)


@pytest.mark.parametrize("kind", ["missing_title", "garbage_bytes_upload", "case_media_dotdot", "case_media_absolute",
                                  "control_char_in_error_code", "pdf_upload_encrypted", "tiny_image_upload",
                                  "tiny_image_file"])
def test_add_case_rejected(kind: str, kb: KnowledgeBase, tmp_path: Path, unchanged: None) -> None:
    (tmp_path / "inside").mkdir()
    (tmp_path / "outside.png").write_bytes(png(31))
    case, media, pattern = _bad(2), [], ""
    if kind == "missing_title":
        case.pop("title")
        pattern = r"title: Field required"
    elif kind == "garbage_bytes_upload":
        media, pattern = [("upload.png", b"\x00\x01garbage" * 10)], r"upload\.png: is not a supported image"
    elif kind == "case_media_dotdot":
        case["media"], pattern = ["../outside.png"], r"uses '\.\.'; it must stay inside"
    elif kind == "case_media_absolute":
        case["media"], pattern = [str(tmp_path / "outside.png")], r"is absolute"
    elif kind == "control_char_in_error_code":
        case["error_codes"], pattern = ["E\x0c12"], r"field 'error_codes\[0\]'.*U\+000C"
    elif kind == "tiny_image_upload":  # the admin tab's upload: bytes with a name
        media, pattern = [("dot.png", tiny_png())], r"dot\.png: the image is 1×1 pixels.*at least 32 pixels"
    elif kind == "tiny_image_file":
        (tmp_path / "inside" / "thin.png").write_bytes(tiny_png(31, 400))
        case["media"], pattern = ["thin.png"], r"thin\.png: the image is 31×400 pixels.*at least 32 pixels"
    elif kind == "pdf_upload_encrypted":
        (tmp_path / "inside" / "m.pdf").write_bytes(encrypted_pdf())
        case["media"], pattern = ["m.pdf"], r"m\.pdf: PDF is password-protected"
    with pytest.raises(CaseRejectedError) as e:
        kb.add_case(case, media=media, base_dir=tmp_path / "inside")
    assert e.value.report.status == "rejected" and re.search(pattern, e.value.report.reason), e.value.report.reason


# ------------------------------------------------------------------------------------------------ query path


def test_query_inputs_rejected(embedder, tmp_path: Path) -> None:
    """Chat/API query media and text go through the same rules; errors name the input."""
    (tmp_path / "notes.png").write_text("not a picture")
    (tmp_path / "bomb.png").write_bytes(bomb_png())
    (tmp_path / "cut.png").write_bytes(noise_png(64, 48)[:4000])
    (tmp_path / "broken.avi").write_bytes(broken_avi(tmp_path))
    (tmp_path / "long.mp4").write_bytes(video(tmp_path, 8, 1))
    (tmp_path / "small.mp4").write_bytes(video(tmp_path, 6, 4, size=16))
    (tmp_path / "dot.png").write_bytes(tiny_png())
    checks: list[tuple[Callable[[], Any], type[Exception], str]] = [
        (lambda: embedder.embed([{"image": str(tmp_path / "notes.png")}]), EmbeddingError, r"content is text, expected image.*notes\.png"),
        (lambda: embedder.embed([{"image": str(tmp_path / "bomb.png")}]), EmbeddingError, r"bomb\.png.*900,?000,?000 pixels.*decompression bomb"),
        (lambda: embedder.embed([{"text": "ok", "image": str(tmp_path / "cut.png")}]), EmbeddingError, r"cut\.png"),
        (lambda: embedder.embed([{"video": str(tmp_path / "broken.avi")}]), EmbeddingError, r"broken\.avi"),
        (lambda: prepare_video(tmp_path / "long.mp4", VisionBudget(max_video_seconds=5)), VisionInputError, r"long\.mp4' lasts 8 s"),
        (lambda: prepare_video(tmp_path / "long.mp4", VisionBudget(max_video_frames=4)), VisionInputError, r"has 8 frames, more than the limit of 4"),
        (lambda: load_image(b""), VisionInputError, r"image is empty"),
        # too small to show a fault: bytes, PIL images, frame lists, video files and the embedder all refuse it
        (lambda: load_image(tiny_png()), VisionInputError, r"1×1 pixels.*at least 32 pixels"),
        (lambda: load_image(Image.new("RGB", (31, 32))), VisionInputError, r"31×32 pixels.*at least 32 pixels"),
        (lambda: prepare_video([Image.new("RGB", (8, 8))] * 4), VisionInputError, r"frame list.*8×8 pixels.*at least 32"),
        (lambda: prepare_video(tmp_path / "small.mp4"), VisionInputError, r"small\.mp4': each frame is 16×16 pixels.*at least 32"),
        (lambda: embedder.embed([{"image": str(tmp_path / "dot.png")}]), EmbeddingError, r"dot\.png.*1×1 pixels.*at least 32"),
        (lambda: Query(text="why \x1b[2J this"), ValidationError, r"field 'question'.*U\+001B"),
        (lambda: Query(text="abc\u202edef"), ValidationError, r"U\+202E"),
        (lambda: Query(text="x" * 4001), ValidationError, r"4001 characters long; the limit is 4000"),
    ]
    for fn, exc, pattern in checks:
        with pytest.raises(exc) as e:
            fn()
        assert re.search(pattern, str(e.value), re.S), str(e.value)
    assert Query(text="Cafe\u0301 fault").text == "Caf\u00e9 fault"  # NFC


def test_chat_upload_too_small_refused(tmp_path: Path) -> None:
    """The chat's upload path (its own decoder, not load_image) applies the same minimum size, for photos, PDF pages,
    videos and the cropped region, and says the limit; the smallest accepted size (32×32) still goes through."""
    from rag.models.query_image import QueryImageError, load_query_image
    from ui.upload import UploadError, prepare_uploads

    budget = VisionBudget()
    (tmp_path / "dot.png").write_bytes(tiny_png())
    (tmp_path / "stamp.pdf").write_bytes(tiny_page_pdf(tmp_path))
    (tmp_path / "small.mp4").write_bytes(video(tmp_path, 6, 4, size=16))
    (tmp_path / "ok.png").write_bytes(tiny_png(32, 32))
    out = tmp_path / "out"
    for name, pattern in (("dot.png", r"'dot\.png' is 1×1 pixels, too small to show a fault; both sides must be at least 32"),
                          ("stamp.pdf", r"'stamp\.pdf page 1' is 3×3 pixels, too small to show a fault; both sides must be at least 32"),
                          ("small.mp4", r"each frame of 'small\.mp4' is 16×16 pixels.*at least 32")):
        with pytest.raises(UploadError, match=pattern):
            prepare_uploads([str(tmp_path / name)], pdf_page=1, out_dir=out, budget=budget, dpi=72)
    with pytest.raises(QueryImageError, match=r"cropped region.*5×4 pixels.*at least 32"):
        load_query_image(Image.new("RGB", (5, 4)), budget)
    assert prepare_uploads([str(tmp_path / "ok.png")], pdf_page=1, out_dir=out, budget=budget).images
    # The limit is a deployment setting (RAGVQA_VISION_MIN_IMAGE_SIDE): a stricter one refuses 32×32 too.
    with pytest.raises(UploadError, match=r"at least 48 pixels"):
        prepare_uploads([str(tmp_path / "ok.png")], pdf_page=1, out_dir=out, budget=VisionBudget(min_image_side=48))


# ------------------------------------------------------------------------------------------------ paths


def test_paths_never_leave_their_folder(kb: KnowledgeBase, tmp_path: Path, unchanged: None) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    for rel in ("../../etc/passwd", "/etc/passwd", "ab/../../x", "a\\..\\..\\b", "", "a\x00b"):
        with pytest.raises(MediaError) as e:
            kb.media.path(rel)
        assert e.value.code == "bad_media" and ("outside the media store" in str(e.value) or "not a valid store path" in str(e.value))
    # A link planted inside the store that points out of it is refused too.
    os.symlink(tmp_path, kb.media.root / "zz")
    try:
        with pytest.raises(MediaError, match="outside the media store"):
            kb.media.path("zz/secret.txt")
        assert not kb.media.exists("zz/secret.txt")
    finally:
        (kb.media.root / "zz").unlink()
    # The pipeline resolves stored payload paths against the media root and drops escapes.
    assert resolve_media(kb.media.root, "../../etc/passwd") is None
    assert resolve_media(kb.media.root, str(secret)) is None
    assert resolve_media(kb.media.root, "img/a\x00b.jpg") is None
    os.symlink(tmp_path, kb.media.root / "out")  # a link below the root that leads out of it
    os.symlink(kb.media.root, kb.media.root / "self")  # ... and one that stays inside
    try:
        assert resolve_media(kb.media.root, "out/secret.txt") is None
        assert resolve_media(kb.media.root, "self/x/y.jpg") == str(kb.media.root.resolve() / "x" / "y.jpg")
    finally:
        (kb.media.root / "out").unlink()
        (kb.media.root / "self").unlink()
    assert resolve_media(kb.media.root, "x/./y.jpg") == str(kb.media.root.resolve() / "x" / "y.jpg")
    # One resolver, holding its root, is what the retrieve stage uses; no root resolves nothing.
    resolver = MediaResolver(kb.media.root)
    assert resolver.resolve("../../etc/passwd") is None and MediaResolver(None).resolve("x/y.jpg") is None
    assert resolver.resolve("x/y.jpg") == str(kb.media.root.resolve() / "x" / "y.jpg")
    assert Retrieve(None, kb.store, media_root=kb.media.root).media.root == kb.media.root
    # The shared rule for user-written paths.
    base = tmp_path / "import"
    (base / "sub").mkdir(parents=True)
    os.symlink(tmp_path, base / "sub" / "up")
    for rel, code in (("../secret.txt", "path_escape"), ("sub/../../secret.txt", "path_escape"), (str(secret), "absolute_path"),
                      ("C:/x", "absolute_path"), ("\\\\server\\share", "absolute_path"), ("sub/up/secret.txt", "symlink"),
                      ("", "bad_path"), ("a\x00", "bad_path")):
        with pytest.raises(InputRejected) as e:
            confine_path(base, rel, "cases.jsonl:7")
        assert e.value.code == code and e.value.where == "cases.jsonl:7", (rel, e.value.code)
    assert confine_path(base, "sub/x.png") == base / "sub" / "x.png"


# ------------------------------------------------------------------------------------------------ odd but valid


def test_odd_images_accepted_and_converted(kb: KnowledgeBase, embedder, tmp_path: Path) -> None:
    d = tmp_path / "odd"
    d.mkdir()
    base = np.asarray(scene(40, 80, 60))
    Image.fromarray(base).convert("CMYK").save(d / "cmyk.jpg", quality=95)
    grey16 = (np.linspace(0, 65535, 80 * 60).reshape(60, 80)).astype(np.uint16)
    Image.fromarray(grey16).save(d / "grey16.png")
    assert Image.open(d / "grey16.png").mode in ("I;16", "I")
    pal = Image.fromarray(base).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(d / "palette.png", transparency=0)
    Image.fromarray(base).convert("LA").save(d / "grey_alpha.png")
    upright = scene(41, 60, 80)  # portrait as the camera saw it
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # landscape pixels + "rotate 270 CW on display" tag (6)
    exif = stored.getexif()
    exif[0x0112] = 6
    stored.save(d / "rotated.jpg", exif=exif, quality=95)
    frames = [scene(42 + i, 80, 60) for i in range(3)]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    names = ["cmyk.jpg", "grey16.png", "palette.png", "grey_alpha.png", "rotated.jpg", "anim.gif"]
    cases = [case_dict(70 + i, [n], title=f"Odd image {n}") for i, n in enumerate(names)]
    cases.append(case_dict(79, [], title="Cafe\u0301 machine fault"))  # NFD text: stored as NFC
    res = kb.import_path(write_jsonl(d / "cases.jsonl", cases))
    assert res.added == len(cases) and res.rejected == 0, res.to_dict()
    warn = [w for i in res.items for w in i.warnings]
    assert any("anim.gif: animated image (3 frames); only the first frame is used" in w for w in warn), warn
    assert kb.get("case-79").title == "Caf\u00e9 machine fault"  # type: ignore[union-attr]

    def stored_vector(case_id: str) -> np.ndarray:
        case = kb.get(case_id)
        assert case is not None
        from rag.store import point_id

        return kb.store.retrieve([point_id(case_id, case.media[0].id)], with_vectors=True)[0].vector

    def same(v: np.ndarray, im: Image.Image) -> float:
        plain = Image.fromarray(np.asarray(im.convert("RGB")))  # pixels only: no EXIF left to apply twice
        return float(np.dot(v, kb.embed([{"image": plain}])[0]))

    rot = kb.get("case-74")
    assert rot is not None and (rot.media[0].width, rot.media[0].height) == (60, 80)  # displayed size
    assert same(stored_vector("case-74"), Image.open(d / "rotated.jpg").transpose(Image.Transpose.ROTATE_270)) > 0.999
    ramp = (grey16.astype(np.float64) * 255 / grey16.max()).astype(np.uint8)
    assert same(stored_vector("case-71"), Image.fromarray(ramp).convert("RGB")) > 0.999  # scaled, not clipped
    assert same(stored_vector("case-75"), frames[0]) > 0.999  # the first frame
    # Transparent pixels composite on white (palette index 0 and the LA alpha).
    white = Image.new("RGB", (80, 60), "white")
    la = Image.open(d / "grey_alpha.png").convert("RGBA")
    white.paste(la, mask=la.split()[3])
    assert same(stored_vector("case-73"), white) > 0.999
    # Thumbnails are viewable: the 16-bit one is not blown out to white, the rotated one is upright.
    t16 = np.asarray(Image.open(kb.media.path(kb.get("case-71").media[0].thumbnail)).convert("L"))  # type: ignore[union-attr, arg-type]
    assert 100 < t16.mean() < 155
    assert Image.open(kb.media.path(rot.media[0].thumbnail)).size == (60, 80)  # type: ignore[arg-type]
    rep = kb.check()
    assert rep.problems == 0, rep.summary()
    for i in range(len(cases)):
        kb.delete(f"case-{70 + i:02d}" if i < 6 else "case-79")
    assert kb.check().problems == 0


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_reports_every_bad_row_and_writes_nothing(tmp_path: Path, tiny_model_dir: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """``ragvqa kb import/add/check`` on the same corpus: per-row reasons in the JSON report, exit codes, clean KB."""
    from knowledge_base.cli import kb_app

    for key in ("max_file_bytes", "max_video_seconds", "max_video_frames"):  # the same caps, set the deployment way
        monkeypatch.setenv(f"RAGVQA_VISION_{key.upper()}", str(getattr(VISION, key)))

    data = tmp_path / "data"
    shutil.copytree(tiny_model_dir, data / "models" / "tiny")
    run = CliRunner().invoke
    common = ["--data-dir", str(data), "--models", "tiny"]
    d = tmp_path / "src"
    d.mkdir()
    rows: list[Any] = []
    files: dict[str, bytes] = {}
    expect: dict[int, str] = {}
    for k, row in enumerate(r for r in ROW_KINDS if r.kind != "duplicate_id"):
        extra, fs = row.rows(d)  # one folder for all kinds: their file names are distinct
        files.update(fs)
        for e in extra:
            if isinstance(e, dict) and row.kind != "bad_case_id":
                e = {**e, "id": f"cli-{k}"}
            rows.append(e)
            expect[len(rows) + 1] = row.pattern  # line numbers: the good row is line 1
    src = _src(d, rows, files)
    r = run(kb_app, ["import", str(src), "--json", "--strict", *common])
    assert r.exit_code == 1, r.output  # --strict: rejected rows fail the command
    report = json.loads(r.stdout)
    assert report["added"] == 1 and report["rejected"] == len(rows), [i for i in report["items"] if i["status"] != "rejected"]
    by_where = {i["where"]: i for i in report["items"]}
    for line, pattern in expect.items():
        item = by_where[f"cases.jsonl:{line}"]
        assert item["status"] == "rejected" and re.search(pattern, item["reason"]), (line, pattern, item["reason"])
    r = run(kb_app, ["import", str(make_zip(tmp_path / "z.zip", [("../evil.png", png(1), None)])), *common])
    assert r.exit_code == 1 and "points outside the archive folder" in r.output and "z.zip" in r.output
    r = run(kb_app, ["add", "--title", "Bell\x07", "--product-line", "pumps", "--symptom", "Noise", *common])
    assert r.exit_code == 1 and "field 'title'" in r.output and "U+0007" in r.output, r.output
    (tmp_path / "case.json").write_text(json.dumps(_bad(3, ["../../etc/passwd"])))
    r = run(kb_app, ["add", "--file", str(tmp_path / "case.json"), *common])
    assert r.exit_code == 1 and "must stay inside" in r.output, r.output
    (tmp_path / "fake.png").write_text("hello")
    r = run(kb_app, ["add", "--title", "T", "--product-line", "p", "--symptom", "s", "--media", str(tmp_path / "fake.png"), *common])
    assert r.exit_code == 1 and "fake.png: is not a supported image" in r.output, r.output
    (tmp_path / "dot.png").write_bytes(tiny_png())
    media_before = sorted(str(f.relative_to(data)) for f in (data / "media").rglob("*") if f.is_file())
    r = run(kb_app, ["add", "--title", "T", "--product-line", "p", "--symptom", "s", "--media", str(tmp_path / "dot.png"), *common])
    assert r.exit_code == 1 and re.search(r"dot\.png: the image is 1×1 pixels.*at least 32 pixels", " ".join(r.output.split())), r.output
    assert sorted(str(f.relative_to(data)) for f in (data / "media").rglob("*") if f.is_file()) == media_before
    r = run(kb_app, ["check", "--json", *common])
    assert r.exit_code == 0 and json.loads(r.stdout)["problems"] == 0, r.output
    r = run(kb_app, ["stats", "--json", *common])
    assert json.loads(r.stdout)["cases"] == 1, r.stdout
