"""One validation layer for every entry point (chat upload, admin form, bulk import, CLI, Python API).

Files are typed by their content (magic bytes), never by their name; sizes are checked before anything is read
whole; every rejection is an :class:`InputRejected` that says what was wrong (``code`` + message) and where
(file, row, page, archive member). Checks only read: nothing is written for a rejected input.
"""

from __future__ import annotations

import os
import stat
import unicodedata
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Iterable, Literal

from rag.errors import ParamValue, UserInputError

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

Kind = Literal["image", "video", "pdf", "zip", "text", "unknown"]

#: Smallest side, in pixels, of an image or video frame that can show a fault. Qwen3-VL sees an image as 32×32-pixel
#: cells (16-px patches merged 2×2, one visual token each): a side shorter than one cell holds less than one token of
#: detail, and the official resize would only blow it up (to at least 64×64, four tokens) with nothing in it.
MIN_IMAGE_SIDE = 32


class InputRejected(UserInputError, ValueError):
    """An input refused by validation. ``code`` names the rule, ``where`` the place (file, row, page); ``params``
    holds both (with the problem) for callers that should not parse the message."""

    def __init__(self, code: str, problem: str, where: str = "", **values: ParamValue) -> None:
        self.problem, self.where, self.values = problem, where, values
        super().__init__(f"{where}: {problem}" if where else problem, code=code,
                         params={"problem": problem, "where": where, **values})

    def at(self, where: str) -> "InputRejected":
        """The same rejection, located more precisely (e.g. an archive member inside a zip)."""
        return InputRejected(self.code, self.problem, f"{where} › {self.where}" if self.where else where, **self.values)


@dataclass(frozen=True)
class Limits:
    """Caps applied by every entry point; defaults suit a support desk (photos, short clips, manuals)."""

    max_file_bytes: int = 200 * 1024 * 1024
    max_image_pixels: int = 64_000_000
    max_video_seconds: float = 600.0
    #: Frames in a video (a 10-minute clip at 60 fps is 36 000): caps decoding work on absurd frame rates.
    max_video_frames: int = 100_000
    max_pdf_pages: int = 200
    max_text_chars: int = 20_000
    max_archive_members: int = 10_000
    max_archive_bytes: int = 2 * 1024 * 1024 * 1024
    max_archive_ratio: float = 200.0


# -- content sniffing ---------------------------------------------------------------------------------------------
_MAGIC: list[tuple[bytes, int, Kind, str]] = [
    (b"\x89PNG\r\n\x1a\n", 0, "image", "png"),
    (b"\xff\xd8\xff", 0, "image", "jpeg"),
    (b"GIF87a", 0, "image", "gif"),
    (b"GIF89a", 0, "image", "gif"),
    (b"BM", 0, "image", "bmp"),
    (b"II*\x00", 0, "image", "tiff"),
    (b"MM\x00*", 0, "image", "tiff"),
    (b"%PDF-", 0, "pdf", "pdf"),
    (b"PK\x03\x04", 0, "zip", "zip"),
    (b"PK\x05\x06", 0, "zip", "zip"),
    (b"\x1a\x45\xdf\xa3", 0, "video", "matroska"),
    (b"ftyp", 4, "video", "mp4"),
]


def sniff(head: bytes) -> tuple[Kind, str]:
    """(kind, format) from the first bytes of a file."""
    for magic, offset, kind, fmt in _MAGIC:
        if head[offset:offset + len(magic)] == magic:
            if fmt == "mp4" and head[8:12] in (b"heic", b"heix", b"avif", b"mif1"):
                return "image", "heif"
            return kind, fmt
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image", "webp"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "video", "avi"
    if len(head) >= 189 and head[0] == 0x47 and head[188] == 0x47:
        return "video", "mpegts"
    if head.startswith((b"\x84\x31\x95\x33", b"\xff\xfe", b"\xfe\xff")):  # GB18030 / UTF-16 byte-order marks
        return "text", "text"
    try:
        head.decode("utf-8")
        if b"\x00" not in head:
            return "text", "text"
    except UnicodeDecodeError:
        # A multi-byte character cut at the end of the sample is still text.
        try:
            head[:-3].decode("utf-8")
            if b"\x00" not in head:
                return "text", "text"
        except UnicodeDecodeError:
            pass
    return "unknown", "unknown"


def check_file(path: str | os.PathLike[str], allowed: Iterable[Kind], limits: Limits = Limits(),
               where: str | None = None) -> tuple[Kind, str]:
    """A regular, non-empty, not-too-large file whose content is one of ``allowed``; returns (kind, format)."""
    p = Path(path)
    where = where or str(p)
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        raise InputRejected("missing_file", "file not found", where) from None
    except OSError as e:
        raise InputRejected("unreadable_file", f"cannot read file ({e.strerror})", where) from None
    if stat.S_ISLNK(st.st_mode):
        raise InputRejected("symlink", "symbolic links are not accepted", where)
    if not stat.S_ISREG(st.st_mode):
        raise InputRejected("not_a_file", "not a regular file", where)
    if st.st_size == 0:
        raise InputRejected("empty_file", "file is empty", where, name=Path(where).name)
    if st.st_size > limits.max_file_bytes:
        raise InputRejected("file_too_large", f"file is {st.st_size / 1e6:.1f} MB; the limit is "
                            f"{limits.max_file_bytes / 1e6:.0f} MB", where, name=Path(where).name,
                            mb=round(st.st_size / 1e6, 1), limit_mb=round(limits.max_file_bytes / 1e6))
    with open(p, "rb") as f:
        head = f.read(512)
    kind, fmt = sniff(head)
    allowed = tuple(allowed)
    if kind not in allowed:
        shown = fmt if kind != "unknown" else "an unrecognised format"
        raise InputRejected("wrong_type", f"content is {shown}, expected {' or '.join(allowed)} "
                            "(the type is read from the content, not the file name)", where)
    return kind, fmt


# -- text -------------------------------------------------------------------------------------------------------------
_BIDI_CONTROLS = {"\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069"}


def check_text(text: object, field: str, limits: Limits = Limits(), *, max_chars: int | None = None,
               where: str = "", required: bool = False) -> str:
    """NFC-normalised, stripped text without control or bidirectional-override characters, within its cap."""
    loc = f"{where} field '{field}'" if where else f"field '{field}'"
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise InputRejected("bad_text", f"must be text, got {type(text).__name__}", loc)
    cap = max_chars or limits.max_text_chars
    if len(text) > 4 * cap:  # refuse before normalising megabytes
        raise InputRejected("text_too_long", f"is {len(text):,} characters; the limit is {cap:,}", loc,
                            field=field, chars=len(text), limit=cap)
    text = unicodedata.normalize("NFC", text).strip()
    bad = next((c for c in text if (unicodedata.category(c) == "Cc" and c not in "\t\n\r") or c in _BIDI_CONTROLS
                or unicodedata.category(c) == "Cs"), None)
    if bad is not None:
        raise InputRejected("bad_character", f"contains the control character U+{ord(bad):04X} at position "
                            f"{text.index(bad)}", loc)
    if len(text) > cap:  # characters (code points after NFC): a CJK character counts one, like a Latin letter
        raise InputRejected("text_too_long", f"is {len(text):,} characters; the limit is {cap:,}", loc,
                            field=field, chars=len(text), limit=cap)
    if required and not text:
        raise InputRejected("missing_text", "is required", loc)
    return text


# -- user-given paths -------------------------------------------------------------------------------------------------
def confine_path(base: str | os.PathLike[str], rel: str, where: str = "", *, what: str = "media path") -> Path:
    """``base / rel`` for a path written by a user (a JSONL/CSV cell, a case.json, an archive), refusing anything
    that could reach outside ``base``: absolute paths, drive letters, ``..``, NUL, and symbolic links on the way."""
    loc = where or str(base)
    if not isinstance(rel, str) or not rel.strip() or "\x00" in rel:
        raise InputRejected("bad_path", f"{what} {rel!r} is empty or invalid", loc)
    norm = rel.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        raise InputRejected("absolute_path", f"{what} {rel!r} is absolute; it must be relative and stay inside the import folder", loc)
    if ".." in PurePosixPath(norm).parts:
        raise InputRejected("path_escape", f"{what} {rel!r} uses '..'; it must stay inside the import folder", loc)
    root = Path(base).resolve()
    full = Path(base) / norm
    # A link anywhere below the base could lead out of it: refuse links, then check where the path really goes.
    cur = Path(base)
    for part in PurePosixPath(norm).parts:
        cur = cur / part
        if cur.is_symlink():
            raise InputRejected("symlink", f"{what} {rel!r} is or goes through a symbolic link; refusing it", loc)
    if not full.resolve().is_relative_to(root):
        raise InputRejected("path_escape", f"{what} {rel!r} leads outside the import folder; it must stay inside the import folder", loc)
    return full


# -- archives and folders ---------------------------------------------------------------------------------------------
def safe_member_name(name: str, where: str) -> PurePosixPath:
    """An archive member path that stays inside the extraction folder."""
    if "\x00" in name:
        raise InputRejected("zip_bad_name", "member name contains a NUL byte", where)
    norm = name.replace("\\", "/")
    p = PurePosixPath(norm)
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        raise InputRejected("zip_absolute_path", f"member '{name}' has an absolute path", where)
    if any(part == ".." for part in p.parts):
        raise InputRejected("zip_slip", f"member '{name}' points outside the archive folder (..)", where)
    return p


def check_zip(path: str | os.PathLike[str], limits: Limits = Limits(), where: str | None = None) -> list[zipfile.ZipInfo]:
    """The members of a zip that is safe to extract: no absolute paths, no '..', no links, no bomb."""
    where = where or str(path)
    check_file(path, ("zip",), limits, where)
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise InputRejected("bad_zip", f"not a readable zip archive ({e})", where) from None
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_archive_members:
            raise InputRejected("zip_too_many_members", f"{len(infos):,} members; the limit is "
                                f"{limits.max_archive_members:,}", where)
        total = 0
        for info in infos:
            safe_member_name(info.filename, where)
            mode = (info.external_attr >> 16) & 0o170000
            if mode == stat.S_IFLNK:
                raise InputRejected("zip_symlink", f"member '{info.filename}' is a symbolic link", where)
            if info.flag_bits & 0x1:
                raise InputRejected("zip_encrypted", f"member '{info.filename}' is encrypted", where)
            total += info.file_size
            if info.compress_size and info.file_size / info.compress_size > limits.max_archive_ratio and info.file_size > 1_000_000:
                raise InputRejected("zip_bomb", f"member '{info.filename}' expands {info.file_size / info.compress_size:.0f}× "
                                    "(possible zip bomb)", where)
        if total > limits.max_archive_bytes:
            raise InputRejected("zip_too_large", f"expands to {total / 1e9:.1f} GB; the limit is "
                                f"{limits.max_archive_bytes / 1e9:.1f} GB", where)
    return infos


def safe_extract(path: str | os.PathLike[str], dest: str | os.PathLike[str], limits: Limits = Limits()) -> list[Path]:
    """Extract a checked zip into ``dest`` counting real bytes (headers can lie); returns the files written."""
    infos = check_zip(path, limits)
    dest_p = Path(dest).resolve()
    written: list[Path] = []
    budget = limits.max_archive_bytes
    with zipfile.ZipFile(path) as zf:
        for info in infos:
            rel = safe_member_name(info.filename, str(path))
            target = (dest_p / rel).resolve()
            if dest_p not in target.parents and target != dest_p:
                raise InputRejected("zip_slip", f"member '{info.filename}' points outside the archive folder", str(path))
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                while chunk := src.read(1 << 20):
                    budget -= len(chunk)
                    if budget < 0:
                        raise InputRejected("zip_too_large", "archive expands beyond the size limit", str(path))
                    out.write(chunk)
            written.append(target)
    return written


def check_tree(folder: str | os.PathLike[str], limits: Limits = Limits()) -> list[Path]:
    """Files under a folder, refusing symbolic links anywhere in it (they could point outside)."""
    root = Path(folder)
    if root.is_symlink():
        raise InputRejected("symlink", "the folder itself is a symbolic link", str(root))
    if not root.is_dir():
        raise InputRejected("not_a_folder", "not a folder", str(root))
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                raise InputRejected("symlink", "symbolic links are not accepted in import folders", str(p))
        files += [Path(dirpath) / n for n in filenames]
        if len(files) > limits.max_archive_members:
            raise InputRejected("too_many_files", f"more than {limits.max_archive_members:,} files", str(root))
    return sorted(files)


# -- images --------------------------------------------------------------------------------------------------------
def to_8bit(img: "Image.Image") -> "Image.Image":
    """16-bit and float greyscale (``I;16``, ``I``, ``F``) scaled to 8-bit ``L`` (a plain ``convert`` clips them to
    white); every other mode is returned as is, for the caller's RGB/RGBA conversion."""
    import numpy as np
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.size else 0
        scale = 255.0 / hi if hi > 255 else 1.0
        return Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), mode="L")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.astype(np.uint8), mode="L")
    return img


#: EXIF orientations that swap width and height (rotated by 90° or 270°, possibly mirrored).
EXIF_TRANSPOSED = {5, 6, 7, 8}


def display_size(img: "Image.Image") -> tuple[int, int]:
    """(width, height) as the picture is shown once its EXIF orientation is applied."""
    w, h = img.size
    try:
        orientation = img.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - unreadable EXIF: the stored orientation is all we know
        orientation = None
    return (h, w) if orientation in EXIF_TRANSPOSED else (w, h)


def check_image_size(width: int, height: int, min_side: int = MIN_IMAGE_SIDE, where: str = "", *,
                     what: str = "image") -> None:
    """Refuse an image (or video frame) too small to show a fault: the one rule every entry point applies."""
    if width < min_side or height < min_side:
        raise InputRejected("image_too_small", f"{what} is {width}×{height} pixels, too small to show a fault; both "
                            f"sides must be at least {min_side} pixels", where, width=width, height=height,
                            min_side=min_side)


# -- media --------------------------------------------------------------------------------------------------------------
def check_pdf(path: str | os.PathLike[str], limits: Limits = Limits(), where: str | None = None) -> int:
    """Number of pages of a readable, unencrypted PDF within the page cap."""
    import pypdfium2 as pdfium

    where = where or str(path)
    check_file(path, ("pdf",), limits, where)
    try:
        doc = pdfium.PdfDocument(str(path))
    except pdfium.PdfiumError as e:
        msg = str(e).lower()
        if "password" in msg:
            raise InputRejected("pdf_encrypted", "PDF is password-protected", where) from None
        raise InputRejected("pdf_broken", f"PDF cannot be read ({e})", where) from None
    try:
        n = len(doc)
    finally:
        doc.close()
    if n == 0:
        raise InputRejected("pdf_empty", "PDF has no pages", where)
    if n > limits.max_pdf_pages:
        raise InputRejected("pdf_too_many_pages", f"PDF has {n} pages; the limit is {limits.max_pdf_pages}", where)
    return n
