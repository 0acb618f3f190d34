"""Crash-safe file writes: readers (and a process restarted after a crash) see the old or the new file, never a
torn one.

The recipe is the POSIX one: write a temp file in the destination's file system, ``fsync`` it, ``os.replace`` it
over the final name, then ``fsync`` the directory so the rename itself survives a power cut. A crash leaves at
most a temp file, never a half file under a final name that later readers would trust.

Temp names (what crash recovery looks for):

- default: ``.<name>.<random>.tmp`` next to the destination (hidden, so listings and imports skip it);
- ``tmp=``: a caller-chosen path, e.g. the media store's ``.tmp/<pid>-<uuid>.part``, whose stale files
  ``MediaStore.clear_stale_temp`` and ``KnowledgeBase.clean_temp_files`` delete. It must be on the same file
  system as the destination (``os.replace`` does not cross devices) and must not exist yet.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Literal, TextIO, overload

__all__ = ["atomic_writer", "fsync_dir", "replace_durably", "temp_name_for", "write_atomic"]

TEMP_SUFFIX = ".tmp"


def temp_name_for(path: Path) -> tuple[str, str]:
    """``(prefix, suffix)`` of the default temp files for ``path``: ``.<name>.`` and ``.tmp``."""
    return f".{path.name}.", TEMP_SUFFIX


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Persist directory entries (a rename or a new file); POSIX needs the directory itself fsynced.

    Best effort: a no-op where directories cannot be opened or synced (Windows, some network file systems).
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_durably(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """``os.replace(src, dst)`` then fsync ``dst``'s directory; ``src`` must already be complete and fsynced."""
    os.replace(src, dst)
    fsync_dir(Path(dst).parent)


@overload
def atomic_writer(path: str | os.PathLike[str], mode: Literal["wb"] = ..., *,
                  tmp: Path | None = ...) -> contextlib.AbstractContextManager[BinaryIO]: ...
@overload
def atomic_writer(path: str | os.PathLike[str], mode: Literal["w"], *,
                  tmp: Path | None = ...) -> contextlib.AbstractContextManager[TextIO]: ...
def atomic_writer(path: str | os.PathLike[str], mode: Literal["wb", "w"] = "wb", *,
                  tmp: Path | None = None) -> contextlib.AbstractContextManager[BinaryIO | TextIO]:
    """Open a temp file for writing; on a clean exit it is fsynced and moved to ``path`` (directory fsynced too).

    On any exception (or ``KeyboardInterrupt``) the temp file is deleted and ``path`` is left as it was.
    ``mode="w"`` writes UTF-8 text. Parent directories of ``path`` are created.
    """
    return _atomic_writer(Path(path), mode, tmp)


@contextlib.contextmanager
def _atomic_writer(path: Path, mode: Literal["wb", "w"], tmp: Path | None) -> Iterator[BinaryIO | TextIO]:
    path.parent.mkdir(parents=True, exist_ok=True)
    if tmp is None:
        prefix, suffix = temp_name_for(path)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=suffix)
        tmp = Path(name)
    else:
        # 0o666 & umask, like open(tmp, "xb"): these files keep their mode when moved into place
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        f: BinaryIO | TextIO = os.fdopen(fd, "wb") if mode == "wb" else os.fdopen(fd, "w", encoding="utf-8")
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        replace_durably(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_atomic(path: str | os.PathLike[str], data: bytes | str, *, tmp: Path | None = None) -> None:
    """Write ``data`` (``str`` as UTF-8) to ``path`` atomically and durably; see ``atomic_writer``."""
    if isinstance(data, str):
        with atomic_writer(path, "w", tmp=tmp) as t:
            t.write(data)
    else:
        with atomic_writer(path, "wb", tmp=tmp) as b:
            b.write(data)
