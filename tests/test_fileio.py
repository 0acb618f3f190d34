"""rag.fileio: atomic, durable writes: old or new content, never torn; leftovers that crash recovery can find."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from knowledge_base.media_store import MediaStore
from rag.fileio import atomic_writer, write_atomic


def _listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_write_creates_replaces_and_leaves_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "meta.json"
    write_atomic(target, "first ✓\n")
    assert target.read_bytes() == "first ✓\n".encode()
    write_atomic(target, b"\x00second")
    assert target.read_bytes() == b"\x00second"
    assert _listing(target.parent) == ["meta.json"]


def test_error_inside_the_block_keeps_the_old_file_and_removes_the_temp(tmp_path: Path) -> None:
    target = tmp_path / "snap.tar"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_writer(target) as f:
        f.write(b"half of the new")
        assert any(n.startswith(".snap.tar.") and n.endswith(".tmp") for n in _listing(tmp_path))
        raise RuntimeError("disk on fire")
    assert target.read_bytes() == b"old"
    assert _listing(tmp_path) == ["snap.tar"]


def test_caller_chosen_temp_must_be_new_and_keeps_the_usual_file_mode(tmp_path: Path) -> None:
    tmp_dir = tmp_path / ".tmp"
    tmp_dir.mkdir()
    taken = tmp_dir / "1-taken.part"
    taken.write_bytes(b"someone else's write")
    target = tmp_path / "thumbs" / "x.jpg"
    with pytest.raises(FileExistsError):
        write_atomic(target, b"new", tmp=taken)
    assert taken.read_bytes() == b"someone else's write" and not target.exists()

    write_atomic(target, b"new", tmp=tmp_dir / "1-fresh.part")
    assert target.read_bytes() == b"new" and _listing(tmp_dir) == ["1-taken.part"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # as open(path, "xb") made media files before


_KILLED_MID_WRITE = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from rag.fileio import atomic_writer
    target, tmp = Path(sys.argv[1]), (Path(sys.argv[2]) if len(sys.argv) > 2 else None)
    with atomic_writer(target, tmp=tmp) as f:
        f.write(b"torn")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    """
)


def _kill_mid_write(*args: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    r = subprocess.run([sys.executable, "-c", _KILLED_MID_WRITE, *map(str, args)], env=env, capture_output=True)
    assert r.returncode == -signal.SIGKILL, r.stderr.decode()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_killed_writer_leaves_the_old_file_and_a_hidden_temp(tmp_path: Path) -> None:
    target = tmp_path / "ACTIVE"
    target.write_text("v000001\n")
    _kill_mid_write(target)
    assert target.read_text() == "v000001\n"
    left = [n for n in _listing(tmp_path) if n != "ACTIVE"]
    assert len(left) == 1 and left[0].startswith(".ACTIVE.") and left[0].endswith(".tmp")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_killed_media_write_is_found_by_the_media_store_cleanup(tmp_path: Path) -> None:
    """A media-store temp (``.tmp/<pid>-<uuid>.part``) of a killed process is stale and gets deleted."""
    store = MediaStore(tmp_path / "media")
    (store.root / ".tmp").mkdir(exist_ok=True)
    # the child's pid is unknown before it starts: use a pid that is certainly dead (our own child, reaped)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tmp = store.root / ".tmp" / f"{dead.pid}-0123456789abcdef.part"
    target = store.root / "thumbs" / "t.jpg"
    _kill_mid_write(target, tmp)
    assert tmp.read_bytes() == b"torn" and not target.exists()
    assert store.clear_stale_temp(max_age_s=3600.0) == 1
    assert not tmp.exists()
