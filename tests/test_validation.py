"""The shared validation layer: content typing, caps, text, archives, PDFs — each rejection names its rule and place."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from rag.validation import (
    InputRejected,
    Limits,
    check_file,
    check_pdf,
    check_text,
    check_tree,
    check_zip,
    safe_extract,
    sniff,
)


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, format="PNG")
    return buf.getvalue()


def test_sniff_by_content_not_name(tmp_path: Path) -> None:
    fake = tmp_path / "photo.png"
    fake.write_text("#!/bin/sh\necho not an image\n")
    with pytest.raises(InputRejected) as e:
        check_file(fake, ("image",))
    assert e.value.code == "wrong_type" and "content is text" in str(e.value) and "photo.png" in str(e.value)
    real = tmp_path / "upload.bin"
    real.write_bytes(_png())
    assert check_file(real, ("image",)) == ("image", "png")
    assert sniff(b"%PDF-1.7\n") == ("pdf", "pdf")
    assert sniff(b"\x00\x00\x00\x18ftypmp42") == ("video", "mp4")
    assert sniff(b"\x00\x01\x02\xff\xfe") == ("unknown", "unknown")


@pytest.mark.parametrize("case, code", [("missing", "missing_file"), ("empty", "empty_file"), ("dir", "not_a_file"),
                                        ("big", "file_too_large"), ("link", "symlink")])
def test_file_rules(tmp_path: Path, case: str, code: str) -> None:
    p = tmp_path / "f.png"
    if case == "empty":
        p.write_bytes(b"")
    elif case == "dir":
        p.mkdir()
    elif case == "big":
        p.write_bytes(_png() + b"\x00" * 2000)
    elif case == "link":
        (tmp_path / "target.png").write_bytes(_png())
        os.symlink(tmp_path / "target.png", p)
    with pytest.raises(InputRejected) as e:
        check_file(p, ("image",), Limits(max_file_bytes=1000))
    assert e.value.code == code and str(p) in str(e.value)


@pytest.mark.parametrize("text, code", [("a\x00b", "bad_character"), ("evil\u202etxt.exe", "bad_character"),
                                        ("x" * 101, "text_too_long"), (42, "bad_text")])
def test_text_rules(text: object, code: str) -> None:
    with pytest.raises(InputRejected) as e:
        check_text(text, "symptom", max_chars=100, where="row 7")
    assert e.value.code == code and "row 7 field 'symptom'" in str(e.value)


def test_text_normalised() -> None:
    assert check_text("  Cafe\u0301\tE13\n ", "title") == "Café\tE13"
    with pytest.raises(InputRejected, match="is required"):
        check_text("   ", "title", required=True)


def _zip(path: Path, members: dict[str, bytes], symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return path


@pytest.mark.parametrize("members, symlink, code", [
    ({"../../evil.txt": b"x"}, None, "zip_slip"),
    ({"/etc/cron.d/evil": b"x"}, None, "zip_absolute_path"),
    ({"ok.txt": b"x"}, "link", "zip_symlink"),
    ({"bomb.txt": b"\x00" * 5_000_000}, None, "zip_bomb"),
])
def test_zip_rules(tmp_path: Path, members: dict, symlink: str | None, code: str) -> None:
    z = _zip(tmp_path / "in.zip", members, symlink)
    with pytest.raises(InputRejected) as e:
        safe_extract(z, tmp_path / "out")
    assert e.value.code == code
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*")), "nothing may be written"


def test_zip_extracts_safely(tmp_path: Path) -> None:
    z = _zip(tmp_path / "in.zip", {"cases.jsonl": b"{}\n", "media/a.png": _png()})
    files = safe_extract(z, tmp_path / "out")
    assert sorted(f.relative_to(tmp_path / "out").as_posix() for f in files) == ["cases.jsonl", "media/a.png"]
    assert len(check_zip(z)) == 2


def test_tree_refuses_symlinks(tmp_path: Path) -> None:
    (tmp_path / "case1").mkdir()
    (tmp_path / "case1" / "a.png").write_bytes(_png())
    assert len(check_tree(tmp_path)) == 1
    os.symlink("/etc/passwd", tmp_path / "case1" / "passwd.png")
    with pytest.raises(InputRejected) as e:
        check_tree(tmp_path)
    assert e.value.code == "symlink" and "passwd.png" in str(e.value)


def test_pdf_rules(tmp_path: Path) -> None:
    pdf = tmp_path / "manual.pdf"
    Image.new("RGB", (100, 100), "white").save(pdf, save_all=True,
                                                append_images=[Image.new("RGB", (100, 100), "gray")] * 2)
    assert check_pdf(pdf) == 3
    with pytest.raises(InputRejected) as e:
        check_pdf(pdf, Limits(max_pdf_pages=2))
    assert e.value.code == "pdf_too_many_pages"
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4\n" + b"garbage" * 50)
    with pytest.raises(InputRejected) as e:
        check_pdf(broken)
    assert e.value.code == "pdf_broken"


# Qwen3-VL's smallest visual unit: 16-px patches merged 2×2 (the published architecture), i.e. a 32×32-pixel cell.
MODEL_CELL = 16 * 2


@pytest.mark.parametrize("w, h, ok", [(1, 1, False), (31, 400, False), (400, 31, False), (MODEL_CELL, MODEL_CELL, True),
                                      (4032, 3024, True)])
def test_min_image_side(w: int, h: int, ok: bool) -> None:
    """Images too small to show a fault are refused by one rule, with the size and the limit in the message."""
    from rag.validation import MIN_IMAGE_SIDE, check_image_size

    assert MIN_IMAGE_SIDE == MODEL_CELL
    if ok:
        check_image_size(w, h, where="photo.png")
        return
    with pytest.raises(InputRejected) as e:
        check_image_size(w, h, where="photo.png")
    assert e.value.code == "image_too_small"
    assert str(e.value) == (f"photo.png: image is {w}×{h} pixels, too small to show a fault; both sides must be at least "
                            f"{MODEL_CELL} pixels")


def test_min_image_side_is_a_vision_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """``RAGVQA_VISION_MIN_IMAGE_SIDE`` moves the limit for the model path as for the store (one setting)."""
    from rag.config import VisionBudget
    from rag.models.vision import VisionInputError, load_image

    assert VisionBudget().min_image_side == MODEL_CELL
    monkeypatch.setenv("RAGVQA_VISION_MIN_IMAGE_SIDE", "64")
    budget = VisionBudget()
    assert budget.min_image_side == 64
    with pytest.raises(VisionInputError, match=r"48×48 pixels.*at least 64 pixels"):
        load_image(Image.new("RGB", (48, 48)), budget)
    assert load_image(Image.new("RGB", (64, 64)), budget).size == (64, 64)
    monkeypatch.setenv("RAGVQA_VISION_MIN_IMAGE_SIDE", "0")
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        VisionBudget()
