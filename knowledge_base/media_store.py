"""Content-addressed media store: ``root/ab/cd/<sha256><ext>`` plus cached thumbnails under ``root/thumbs``.

Why content addressing: the same photo uploaded twice (or attached to two cases) is stored once and keeps a
stable id; file names come from the content hash and the extension from content sniffing, so a user-chosen
name (``../../etc/passwd.png``, ``invoice.pdf.exe``) never reaches the file system.  Writes are atomic
(temp file + fsync + ``os.replace``): a crash leaves at most a stray temp file, never a half file under a
final name that later readers would trust.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import re
import stat
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Literal

from PIL import Image, ImageOps, UnidentifiedImageError

from knowledge_base.schema import MediaItem, MediaKind
from rag.fileio import replace_durably, write_atomic
from rag.validation import MIN_IMAGE_SIDE, InputRejected, check_image_size, display_size, to_8bit

__all__ = ["MediaError", "MediaStore", "StoredKind", "StoredMedia", "THUMB_DIR"]

log = logging.getLogger(__name__)

StoredKind = Literal["image", "video", "pdf"]

THUMB_DIR = "thumbs"
_TMP_DIR = ".tmp"
_CHUNK = 1 << 20
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_FILE_RE = re.compile(r"^([0-9a-f]{64})(\.[a-z0-9]{2,5})$")

#: PIL format -> (extension, mime).  Anything else is refused: we only keep formats every consumer decodes.
_IMAGE_FORMATS: dict[str, tuple[str, str]] = {
    "PNG": (".png", "image/png"),
    "JPEG": (".jpg", "image/jpeg"),
    "MPO": (".jpg", "image/jpeg"),
    "WEBP": (".webp", "image/webp"),
    "GIF": (".gif", "image/gif"),
    "BMP": (".bmp", "image/bmp"),
    "TIFF": (".tif", "image/tiff"),
}
#: FFmpeg demuxer names we accept (FFmpeg also "detects" text files as video, so a whitelist is needed).
_VIDEO_DEMUXERS = {"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "avi", "mpegts"}


class MediaError(InputRejected):
    """A media file was refused or could not be processed; the message names the file and the problem.

    A kind of :class:`rag.validation.InputRejected` (``code`` names the rule, ``where`` is the file name).
    """

    def __init__(self, name: str, problem: str, code: str = "bad_media") -> None:
        super().__init__(code, problem, name)
        self.name = name


@dataclass(frozen=True)
class StoredMedia:
    """What the store knows about one stored file."""

    sha256: str
    rel_path: str
    kind: StoredKind
    mime: str
    size: int
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None
    pages: int | None = None
    #: False when identical content was already stored (deduplicated).
    created: bool = True
    #: Frames of an animated image (GIF/WebP/APNG/TIFF); only the first one is embedded.
    frames: int = 1

    @property
    def ext(self) -> str:
        return PurePosixPath(self.rel_path).suffix

    def to_media_item(
        self,
        *,
        caption: str = "",
        source_file: str | None = None,
        page: int | None = None,
        thumbnail: str | None = None,
    ) -> MediaItem:
        """The schema ``MediaItem`` for this file (for a PDF, ``page`` selects the page; 1 by default)."""
        kind: MediaKind
        if self.kind == "pdf":
            kind, page = "pdf_page", page or 1
            if self.pages is not None and page > self.pages:
                raise MediaError(source_file or self.rel_path, f"page {page} requested but the PDF has {self.pages}")
        else:
            if page is not None:
                raise MediaError(source_file or self.rel_path, f"a page number only applies to PDFs, not {self.kind}")
            kind = self.kind
        return MediaItem(
            kind=kind,
            sha256=self.sha256,
            path=self.rel_path,
            mime=self.mime,
            caption=caption,
            source_file=source_file,
            page=page,
            width=self.width if kind != "pdf_page" else None,
            height=self.height if kind != "pdf_page" else None,
            duration_s=self.duration_s,
            thumbnail=thumbnail,
        )


@dataclass(frozen=True)
class _Probe:
    kind: StoredKind
    ext: str
    mime: str
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None
    pages: int | None = None
    frames: int = 1


class MediaStore:
    """Content-addressed files under ``root``; see the module docstring for the layout and guarantees."""

    def __init__(
        self,
        root: Path | str,
        *,
        max_bytes: int = 200 * 1024 * 1024,
        max_image_pixels: int = 64_000_000,
        min_image_side: int = MIN_IMAGE_SIDE,
        thumb_size: int = 256,
        max_video_seconds: float = 600.0,
        max_video_frames: int = 100_000,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._real_root = self.root.resolve()
        self.max_bytes = max_bytes
        self.max_image_pixels = max_image_pixels
        self.min_image_side = min_image_side
        self.max_video_seconds = max_video_seconds
        self.max_video_frames = max_video_frames
        self.thumb_size = thumb_size

    # ----------------------------------------------------------------------------------- writing

    def put_bytes(self, data: bytes, kind_hint: StoredKind | MediaKind | None = None, *, name: str = "<upload>") -> StoredMedia:
        """Store ``data`` (deduplicated by sha256) and describe it; ``name`` only labels errors."""
        if len(data) > self.max_bytes:
            raise MediaError(name, f"is {_mb(len(data))}; the limit is {_mb(self.max_bytes)}", "file_too_large")
        if not data:
            raise MediaError(name, "is empty", "empty_file")
        sha = hashlib.sha256(data).hexdigest()
        tmp = self._tmp_path()
        try:
            with open(tmp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            return self._commit(tmp, sha, len(data), name, kind_hint)
        finally:
            _unlink_quiet(tmp)

    def put_file(self, path: Path | str, kind_hint: StoredKind | MediaKind | None = None) -> StoredMedia:
        """Store a file by streaming it (hashing while copying); refuses symlinks and oversize files up front."""
        path = Path(path)
        name = path.name or str(path)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise MediaError(name, "file not found", "missing_file") from None
        if stat.S_ISLNK(st.st_mode):
            raise MediaError(name, "is a symbolic link; refusing it (copy the real file instead)", "symlink")
        if not stat.S_ISREG(st.st_mode):
            raise MediaError(name, "is not a regular file", "not_a_file")
        if st.st_size > self.max_bytes:
            raise MediaError(name, f"is {_mb(st.st_size)}; the limit is {_mb(self.max_bytes)}", "file_too_large")
        if st.st_size == 0:
            raise MediaError(name, "is empty", "empty_file")
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        except OSError as e:
            if e.errno == errno.ELOOP:  # swapped for a symlink after lstat
                raise MediaError(name, "is a symbolic link; refusing it") from None
            raise MediaError(name, f"cannot be opened ({e.strerror})") from None
        tmp = self._tmp_path()
        try:
            with os.fdopen(fd, "rb") as src:
                sha, size = self._copy_hashing(src, tmp, name)
            return self._commit(tmp, sha, size, name, kind_hint)
        finally:
            _unlink_quiet(tmp)

    def _copy_hashing(self, src: BinaryIO, tmp: Path, name: str) -> tuple[str, int]:
        h = hashlib.sha256()
        size = 0
        with open(tmp, "xb") as dst:
            while chunk := src.read(_CHUNK):
                size += len(chunk)
                if size > self.max_bytes:  # the file grew after lstat
                    raise MediaError(name, f"is larger than the limit of {_mb(self.max_bytes)}")
                h.update(chunk)
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        return h.hexdigest(), size

    def _commit(self, tmp: Path, sha: str, size: int, name: str, kind_hint: str | None) -> StoredMedia:
        """Sniff the temp file, then move it atomically to its content address (or drop it if already there)."""
        probe = self._sniff(tmp, name)
        hint = "pdf" if kind_hint == "pdf_page" else kind_hint
        if hint is not None and hint != probe.kind:
            raise MediaError(name, f"expected {hint} content but the file is {probe.mime}", "wrong_type")
        if probe.kind in ("image", "video") and probe.width and probe.height:  # new files only: probe() re-reads old ones
            try:
                check_image_size(probe.width, probe.height, self.min_image_side,
                                 what="the image" if probe.kind == "image" else "each video frame")
            except InputRejected as e:
                raise MediaError(name, e.problem, e.code) from None
        rel = f"{sha[:2]}/{sha[2:4]}/{sha}{probe.ext}"
        final = self.root / rel
        created = not final.is_file()
        if created:
            final.parent.mkdir(parents=True, exist_ok=True)
            replace_durably(tmp, final)
            log.info("stored %s as %s (%s, %s)", name, rel, probe.mime, _mb(size))
        else:
            log.debug("%s already stored as %s", name, rel)
        return StoredMedia(
            sha256=sha,
            rel_path=rel,
            kind=probe.kind,
            mime=probe.mime,
            size=size,
            width=probe.width,
            height=probe.height,
            duration_s=probe.duration_s,
            pages=probe.pages,
            created=created,
            frames=probe.frames,
        )

    def _tmp_path(self) -> Path:
        d = self.root / _TMP_DIR
        d.mkdir(exist_ok=True)
        return d / f"{os.getpid()}-{uuid.uuid4().hex}.part"  # the writer's pid: see clear_stale_temp

    def clear_stale_temp(self, max_age_s: float = 3600.0) -> int:
        """Delete temp files of writes that can no longer finish: their process is gone (killed mid-write), or
        they are older than ``max_age_s``. In-flight writes of live processes are left alone. Returns the count."""
        d = self.root / _TMP_DIR
        if not d.is_dir():
            return 0
        n = 0
        now = time.time()
        for f in d.iterdir():
            pid_s = f.name.split("-", 1)[0]
            try:
                stale = now - f.lstat().st_mtime > max_age_s
                if not stale and pid_s.isdigit() and int(pid_s) != os.getpid():
                    stale = not pid_alive(int(pid_s))
                if stale:
                    f.unlink()
                    n += 1
            except FileNotFoundError:  # finished meanwhile
                continue
        if n:
            log.info("removed %d temp file(s) left by interrupted writes", n)
        return n

    def _write_atomic(self, rel: str, data: bytes) -> None:
        write_atomic(self.root / rel, data, tmp=self._tmp_path())

    # ----------------------------------------------------------------------------------- sniffing

    def _sniff(self, path: Path, name: str) -> _Probe:
        """Identify content by its bytes: PDF magic, then Pillow, then a whitelisted FFmpeg demuxer."""
        with open(path, "rb") as f:
            head = f.read(4096)
        if b"%PDF-" in head[:1024]:
            return self._sniff_pdf(path, name)
        image = self._sniff_image(path, name)
        if image is not None:
            return image
        video = self._sniff_video(path, name, head)
        if video is not None:
            return video
        raise MediaError(name, "is not a supported image (PNG/JPEG/WebP/GIF/BMP/TIFF), video (MP4/MOV/MKV/WebM/AVI/TS) "
                         "or PDF (the type is read from the content, not the file name)", "wrong_type")

    def _sniff_pdf(self, path: Path, name: str) -> _Probe:
        import pypdfium2 as pdfium

        try:
            pdf = pdfium.PdfDocument(str(path))
        except pdfium.PdfiumError as e:
            code = "pdf_encrypted" if "password" in str(e).lower() else "pdf_broken"
            raise MediaError(name, f"looks like a PDF but cannot be opened ({e})", code) from None
        try:
            pages = len(pdf)
        finally:
            pdf.close()
        if pages < 1:
            raise MediaError(name, "is a PDF without pages", "pdf_empty")
        return _Probe("pdf", ".pdf", "application/pdf", pages=pages)

    def _sniff_image(self, path: Path, name: str) -> _Probe | None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as im:
                    fmt, (w, h) = im.format or "", im.size
                    if w * h > self.max_image_pixels:
                        raise MediaError(name, f"is {w}×{h} = {w * h / 1e6:.0f} MP; the limit is "
                                         f"{self.max_image_pixels / 1e6:.0f} MP (possible decompression bomb)", "too_many_pixels")
                    if w < 1 or h < 1:
                        raise MediaError(name, f"is {w}×{h}: an image without pixels", "bad_image")
                    if fmt not in _IMAGE_FORMATS:
                        raise MediaError(name, f"is a {fmt or 'unknown'} image; supported: PNG, JPEG, WebP, GIF, BMP, TIFF",
                                         "wrong_type")
                    im.verify()
                with Image.open(path) as im:  # verify() leaves the image unusable: reopen for frames and EXIF
                    frames = int(getattr(im, "n_frames", 1) or 1)
                    w, h = display_size(im)  # what viewers show once the EXIF orientation is applied
        except MediaError:
            raise
        except UnidentifiedImageError:
            return None
        except Image.DecompressionBombError as e:
            raise MediaError(name, f"has too many pixels ({e}); the limit is {self.max_image_pixels / 1e6:.0f} MP",
                             "too_many_pixels") from None
        except Exception as e:  # noqa: BLE001 - truncated/corrupt files raise assorted errors from the decoders
            raise MediaError(name, f"is a damaged image ({type(e).__name__}: {e})", "bad_image") from None
        ext, mime = _IMAGE_FORMATS[fmt]
        return _Probe("image", ext, mime, width=w, height=h, frames=frames)

    def _sniff_video(self, path: Path, name: str, head: bytes) -> _Probe | None:
        import av

        try:
            container = av.open(str(path), mode="r")
        except (av.FFmpegError, ValueError, OSError):
            return None
        try:
            fmt = container.format.name
            if fmt not in _VIDEO_DEMUXERS or not container.streams.video:
                return None
            stream = container.streams.video[0]
            w, h = stream.codec_context.width or None, stream.codec_context.height or None
            duration: float | None = None
            if container.duration:
                duration = container.duration / av.time_base
            elif stream.duration and stream.time_base:
                duration = float(stream.duration * stream.time_base)
            label = fmt.split(",")[0]
            if w and h and w * h > self.max_image_pixels:
                raise MediaError(name, f"is a {w}×{h} video; frames may have at most {self.max_image_pixels / 1e6:.0f} MP",
                                 "too_many_pixels")
            if duration is not None and duration > self.max_video_seconds:
                raise MediaError(name, f"lasts {duration:.0f} s; the limit is {self.max_video_seconds:.0f} s "
                                 "(trim it to the moment that shows the fault)", "video_too_long")
            n_frames = int(stream.frames or 0)
            if not n_frames and duration and stream.average_rate:
                n_frames = int(duration * float(stream.average_rate))
            if n_frames > self.max_video_frames:
                raise MediaError(name, f"has {n_frames:,} frames; the limit is {self.max_video_frames:,}", "video_too_many_frames")
            try:  # make sure at least one frame decodes: a header alone is not a usable video
                next(container.decode(stream))
            except (StopIteration, av.FFmpegError) as e:
                raise MediaError(name, f"is a {label} file whose video does not decode ({e or 'no frames'})",
                                 "video_undecodable") from None
        finally:
            container.close()
        if fmt.startswith("mov"):
            ext, mime = (".mov", "video/quicktime") if head[8:12] == b"qt  " else (".mp4", "video/mp4")
        elif fmt.startswith("matroska"):
            ext, mime = (".webm", "video/webm") if b"webm" in head[:64] else (".mkv", "video/x-matroska")
        elif fmt == "avi":
            ext, mime = ".avi", "video/x-msvideo"
        else:
            ext, mime = ".ts", "video/mp2t"
        return _Probe("video", ext, mime, width=w, height=h, duration_s=round(duration, 3) if duration else None)

    # ----------------------------------------------------------------------------------- reading

    def path(self, rel: str) -> Path:
        """Absolute path of a stored file; refuses anything that would resolve outside the store root."""
        if not rel or "\x00" in rel or "\\" in rel:
            raise MediaError(repr(rel), "is not a valid store path")
        p = PurePosixPath(rel)
        if p.is_absolute() or ".." in p.parts:
            raise MediaError(rel, "points outside the media store")
        full = (self.root / p).resolve()
        if not full.is_relative_to(self._real_root):
            raise MediaError(rel, "points outside the media store")
        return full

    def find(self, sha256: str) -> str | None:
        """Relative path of the file with this hash, if stored."""
        sha = sha256.lower()
        if not _SHA_RE.match(sha):
            raise MediaError(sha256, "is not a sha256 hex digest")
        d = self.root / sha[:2] / sha[2:4]
        if not d.is_dir():
            return None
        for child in sorted(d.iterdir()):
            m = _FILE_RE.match(child.name)
            if m and m.group(1) == sha and child.is_file():
                return f"{sha[:2]}/{sha[2:4]}/{child.name}"
        return None

    def exists(self, ref: str) -> bool:
        """True if ``ref`` (a sha256 or a relative path) names a stored file."""
        if _SHA_RE.match(ref):
            return self.find(ref) is not None
        try:
            return self.path(ref).is_file()
        except MediaError:
            return False

    def resolve_ref(self, ref: str) -> str:
        """A sha256 or relative path -> the relative path of a stored media file (``MediaError`` if absent)."""
        rel = self.find(ref) if _SHA_RE.match(ref) else ref
        if rel is None or not self.path(rel).is_file():
            raise MediaError(ref, "is not in the media store")
        if not _FILE_RE.match(PurePosixPath(rel).name) or rel.startswith(THUMB_DIR + "/"):
            raise MediaError(ref, "is not a content-addressed media file")
        return rel

    def read_bytes(self, ref: str) -> bytes:
        """Whole content of a stored file (by sha256 or relative path)."""
        return self.path(self.resolve_ref(ref)).read_bytes()

    def probe(self, ref: str) -> StoredMedia:
        """Re-describe a stored file (e.g. to rebuild ``MediaItem``s after a schema change)."""
        rel = self.resolve_ref(ref)
        full = self.path(rel)
        p = self._sniff(full, rel)
        return StoredMedia(
            sha256=PurePosixPath(rel).stem,
            rel_path=rel,
            kind=p.kind,
            mime=p.mime,
            size=full.stat().st_size,
            width=p.width,
            height=p.height,
            duration_s=p.duration_s,
            pages=p.pages,
            created=False,
        )

    def iter_files(self) -> Iterator[str]:
        """Relative paths of all stored media files (not thumbnails or temp files), sorted."""
        for a in sorted(self.root.glob("[0-9a-f][0-9a-f]")):
            for b in sorted(a.glob("[0-9a-f][0-9a-f]")):
                for f in sorted(b.iterdir()):
                    if _FILE_RE.match(f.name) and f.is_file() and not f.is_symlink():
                        yield f"{a.name}/{b.name}/{f.name}"

    def delete(self, ref: str) -> bool:
        """Remove a stored file and its thumbnails; False if it was not there.

        The caller must make sure no case still references it (content is shared between cases).
        """
        try:
            rel = self.resolve_ref(ref)
        except MediaError:
            return False
        sha = PurePosixPath(rel).stem
        self.path(rel).unlink()
        tdir = self.root / THUMB_DIR / sha[:2] / sha[2:4]
        if tdir.is_dir():
            for t in tdir.glob(f"{sha}*"):
                t.unlink()
        log.info("deleted %s", rel)
        return True

    # ----------------------------------------------------------------------------------- thumbnails

    def thumbnail(self, ref: str, *, page: int = 1, size: int | None = None) -> str:
        """Relative path of a cached preview (≤ ``size`` px; first frame of a video, ``page`` of a PDF).

        JPEG unless the image has transparency (PNG keeps it).  Generated on first request, then reused.
        """
        size = size or self.thumb_size
        rel = self.resolve_ref(ref)
        sha = PurePosixPath(rel).stem
        suffix = f"-p{page}" if rel.endswith(".pdf") else ""
        base = f"{THUMB_DIR}/{sha[:2]}/{sha[2:4]}/{sha}{suffix}-{size}"
        for ext in (".jpg", ".png"):
            if (self.root / (base + ext)).is_file():
                return base + ext
        im = to_8bit(self._first_frame(rel, page))  # 16-bit greyscale: scaled, not clipped to white
        im = ImageOps.exif_transpose(im)
        im.thumbnail((size, size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            im.save(buf, "PNG", optimize=True)
            ext = ".png"
        else:
            im.convert("RGB").save(buf, "JPEG", quality=85, optimize=True)
            ext = ".jpg"
        self._write_atomic(base + ext, buf.getvalue())
        return base + ext

    def _first_frame(self, rel: str, page: int) -> Image.Image:
        full = self.path(rel)
        if rel.endswith(".pdf"):
            import pypdfium2 as pdfium

            pdf = pdfium.PdfDocument(str(full))
            try:
                if not 1 <= page <= len(pdf):
                    raise MediaError(rel, f"has {len(pdf)} pages; page {page} does not exist")
                pg = pdf[page - 1]
                w, h = pg.get_size()
                scale = min(4.0, 2 * self.thumb_size / max(w, h, 1))
                thumb: Image.Image = pg.render(scale=scale).to_pil().copy()  # pypdfium2 ships no types
                return thumb
            finally:
                pdf.close()
        if PurePosixPath(rel).suffix in VIDEO_SUFFIXES:
            import av

            with av.open(str(full)) as c:
                for frame in c.decode(video=0):
                    first: Image.Image = frame.to_image()  # av leaves to_image unannotated
                    return first
            raise MediaError(rel, "video has no decodable frame")
        with Image.open(full) as im:
            im.seek(0)
            im.load()
            return im.copy()


#: File suffixes read as video (thumbnails here; label suggestion and `import --suggest` embed them as video).
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".ts")


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (one owned by another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else
        return True
    return True


def _unlink_quiet(p: Path) -> None:
    try:
        p.unlink()
    except FileNotFoundError:
        pass
