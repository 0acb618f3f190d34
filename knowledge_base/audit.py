"""The audit log: who changed which case, when, how, and the case version before and after.

``data_dir/audit.jsonl``, append-only, one JSON object per line, written with the knowledge base's crash discipline:
each change writes a ``begin`` line (fsynced) *before* it touches the knowledge base and an ``end`` line (fsynced)
after it, so a crash can never leave a change in the knowledge base that the log does not mention. A ``begin``
without an ``end`` is an interrupted change: the next open of the knowledge base (:meth:`AuditLog.recover`) looks at
the case (its record is the source of truth) and appends a ``recovered`` end saying whether the change landed and
the version it left. A torn last line (a crash in the middle of an append) is ignored on read and cut off before
the next append. Nothing here rewrites or deletes lines; the admin tab only reads. ``audit.jsonl.checked`` holds the
offset before which recovery found every change closed, so an open reads only the log's new part.

Who: :func:`acting_as` sets the actor for the current thread/task (the admin tab: the logged-in admin's name; the
admin channel and a CLI run: ``cli:<os user>``; the app itself: ``system:<what>``).
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import getpass
import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, JsonValue

from knowledge_base.media_store import pid_alive
from rag.fileio import fsync_dir, write_atomic

logger = logging.getLogger(__name__)

__all__ = ["AUDIT_FILE", "AuditEntry", "AuditLog", "Change", "acting_as", "current_actor", "os_actor"]

AUDIT_FILE = "audit.jsonl"

Status = Literal["pending", "done", "failed", "applied after a crash", "not applied (crash)"]


def os_actor() -> str:
    """``cli:<os user>`` of this process (what a CLI run is recorded as)."""
    return _default_actor()


def _default_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (containers with an arbitrary uid)
        return f"cli:uid{os.getuid()}"


_ACTOR: contextvars.ContextVar[str | None] = contextvars.ContextVar("ragvqa_audit_actor", default=None)


def current_actor() -> str:
    return _ACTOR.get() or _default_actor()


@contextlib.contextmanager
def acting_as(actor: str) -> Iterator[None]:
    """Changes made inside are recorded as made by ``actor``."""
    token = _ACTOR.set(actor)
    try:
        yield
    finally:
        _ACTOR.reset(token)


class AuditEntry(BaseModel):
    """One change, as read back (its ``begin`` and ``end`` lines merged)."""

    id: str
    ts: datetime
    actor: str
    action: str
    case_id: str | None = None
    before_version: int | None = None
    after_version: int | None = None
    status: Status = "pending"
    ended: datetime | None = None
    detail: dict[str, JsonValue] = {}
    pid: int | None = None


@dataclass
class Change:
    """What an audited operation fills in while it runs (``after_version``, details)."""

    entry_id: str
    case_id: str | None
    before_version: int | None
    after_version: int | None = None
    detail: dict[str, JsonValue] = field(default_factory=dict)
    #: Set to False when the operation turned out to change nothing (e.g. an unchanged re-import).
    changed: bool = True


def _now() -> datetime:
    return datetime.now(timezone.utc)


class AuditLog:
    """Append and read ``audit.jsonl`` (thread-safe; ``flock`` against other processes sharing a server store)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    # -- writing ----------------------------------------------------------------------------------------------------
    def _append(self, record: dict[str, JsonValue] | None) -> None:
        """Append one line (None: only cut off a torn last line), fsynced, under the file lock."""
        line = b"" if record is None else (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode()
        with self._lock:
            if record is None and not self.path.exists():
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            new = not self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o640)
            cut = False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                end = os.lseek(fd, 0, os.SEEK_END)
                if end:
                    os.lseek(fd, end - 1, os.SEEK_SET)
                    if os.read(fd, 1) != b"\n":  # a torn last line (crash mid-append): cut it off
                        keep = self._last_newline(fd, end)
                        os.ftruncate(fd, keep)
                        logger.warning("audit log %s: dropped a torn last line (%d bytes)", self.path, end - keep)
                        end, cut = keep, True
                os.lseek(fd, end, os.SEEK_SET)
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view):]
                if line or cut:  # an open with nothing to cut (every KB open) costs no fsync
                    os.fsync(fd)
            finally:
                os.close(fd)
            if new:
                fsync_dir(self.path.parent)

    @staticmethod
    def _last_newline(fd: int, end: int) -> int:
        """Offset just after the last ``\\n`` before ``end`` (0 if none)."""
        pos = end
        while pos > 0:
            start = max(0, pos - 65536)
            os.lseek(fd, start, os.SEEK_SET)
            chunk = os.read(fd, pos - start)
            i = chunk.rfind(b"\n")
            if i >= 0:
                return start + i + 1
            pos = start
        return 0

    def begin(self, action: str, case_id: str | None, before_version: int | None,
              detail: dict[str, JsonValue] | None = None) -> Change:
        entry_id = uuid.uuid4().hex
        self._append({"rec": "begin", "id": entry_id, "ts": _now().isoformat(), "actor": current_actor(),
                      "action": action, "case_id": case_id, "before_version": before_version,
                      "detail": detail or {}, "pid": os.getpid()})
        return Change(entry_id=entry_id, case_id=case_id, before_version=before_version)

    def end(self, change: Change, status: Status, detail: dict[str, JsonValue] | None = None) -> None:
        self._append({"rec": "end", "id": change.entry_id, "ts": _now().isoformat(), "status": status,
                      "case_id": change.case_id, "after_version": change.after_version,
                      "detail": {**change.detail, **(detail or {})}})

    def record(self, action: str, case_id: str | None, before_version: int | None, after_version: int | None,
               detail: dict[str, JsonValue] | None = None) -> None:
        """A change that already happened, in one line (e.g. one case of an import, reported after it is stored)."""
        self._append({"rec": "op", "id": uuid.uuid4().hex, "ts": _now().isoformat(), "actor": current_actor(),
                      "action": action, "case_id": case_id, "before_version": before_version,
                      "after_version": after_version, "status": "done", "detail": detail or {}, "pid": os.getpid()})

    @contextlib.contextmanager
    def change(self, action: str, case_id: str | None, before_version: int | None,
               detail: dict[str, JsonValue] | None = None,
               after: Callable[[], int | None] | None = None) -> Iterator[Change]:
        """``begin`` now, ``end`` when the block exits: ``done`` (``after_version`` from ``after()`` unless the block
        set it) or ``failed`` with the error. An operation that changed nothing (``changed`` False) still gets its
        end, so the log shows it was tried."""
        ch = self.begin(action, case_id, before_version, detail)
        try:
            yield ch
        except BaseException as e:
            with contextlib.suppress(Exception):
                if after is not None and ch.after_version is None:
                    ch.after_version = after()
            self.end(ch, "failed", {"error": f"{type(e).__name__}: {e}"[:500]})
            raise
        if after is not None and ch.after_version is None:
            ch.after_version = after()
        self.end(ch, "done", {} if ch.changed else {"changed": False})

    # -- reading ----------------------------------------------------------------------------------------------------
    def _records(self, start: int = 0) -> tuple[list[tuple[int, dict[str, JsonValue]]], int]:
        """(byte offset, record) of each whole line from ``start`` on, and the offset just past the last whole line
        (a line still being appended by another process is neither read nor counted)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(start)
                data = f.read()
        except FileNotFoundError:
            return [], start
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        elif lines:  # no newline at the end: a torn (or still growing) last line, never trusted
            logger.warning("audit log %s: ignoring a torn last line", self.path)
            lines.pop()
        out: list[tuple[int, dict[str, JsonValue]]] = []
        pos = start
        for raw in lines:
            at, pos = pos, pos + len(raw) + 1
            try:
                rec = json.loads(raw)
            except ValueError:
                logger.warning("audit log %s: the line at byte %d is not JSON; skipped", self.path, at)
                continue
            if isinstance(rec, dict):
                out.append((at, rec))
        return out, pos

    def entries(self) -> list[AuditEntry]:
        """Every change, oldest first (begin/end merged; a begin alone is ``pending``: running or interrupted)."""
        return [e for _, e in self._entries_from(0)[0]]

    def _entries_from(self, start: int) -> tuple[list[tuple[int, AuditEntry]], int]:
        """The changes whose ``begin`` lies at or after ``start``, with that line's offset; and the offset just past
        the last whole line read."""
        by_id: dict[str, AuditEntry] = {}
        at_of: dict[str, int] = {}
        order: list[str] = []
        records, end = self._records(start)
        for at, rec in records:
            kind, eid = rec.get("rec"), str(rec.get("id"))
            try:
                if kind in ("begin", "op"):
                    e = AuditEntry.model_validate({k: v for k, v in rec.items() if k != "rec"})
                    if kind == "op":
                        e.ended = e.ts
                    by_id[eid] = e
                    at_of[eid] = at
                    order.append(eid)
                elif kind == "end" and eid in by_id:
                    e = by_id[eid]
                    e.status = rec["status"]  # type: ignore[assignment]
                    e.ended = datetime.fromisoformat(str(rec["ts"]))
                    cid = rec.get("case_id")
                    e.case_id = cid if isinstance(cid, str) else e.case_id
                    av = rec.get("after_version")
                    e.after_version = av if isinstance(av, int) else e.after_version
                    extra = rec.get("detail")
                    if isinstance(extra, dict):
                        e.detail = {**e.detail, **extra}
            except (ValueError, KeyError, TypeError):
                logger.warning("audit log %s: unreadable record %s; skipped", self.path, eid)
        return [(at_of[i], by_id[i]) for i in order], end

    def query(self, *, since: datetime | None = None, case_id: str | None = None, actor: str | None = None,
              action: str | None = None) -> list[AuditEntry]:
        out = []
        for e in self.entries():
            if since is not None and e.ts < since:
                continue
            if case_id and e.case_id != case_id:
                continue
            if actor and e.actor != actor:
                continue
            if action and e.action != action:
                continue
            out.append(e)
        return out

    # -- recovery -----------------------------------------------------------------------------------------------------
    def recover(self, version_of: Callable[[str], int | None]) -> list[AuditEntry]:
        """Close the changes a crash interrupted: compare the case's version now with the one before the change.

        Only entries of processes that are gone (or of this process's pid from an earlier life) are closed; a change
        another live process is making (server store) stays pending. Returns the closed entries.
        """
        self._append(None)  # a torn last line goes now, not at the next change
        start, ino = self._checked()
        closed = []
        still_open: list[int] = []  # offsets of changes another live process is making
        entries, end = self._entries_from(start)
        for at, e in entries:
            if e.status != "pending":
                continue
            if e.pid is not None and e.pid != os.getpid() and pid_alive(e.pid):
                still_open.append(at)
                continue
            if e.case_id is None:  # a bulk operation: its cases were logged one by one as they were stored
                self.end(Change(e.id, None, None), "not applied (crash)",
                         {"note": "interrupted; cases stored before the crash are logged one by one"})
                closed.append(e)
                continue
            now = version_of(e.case_id)
            ch = Change(e.id, e.case_id, e.before_version, after_version=now)
            landed = now != e.before_version
            self.end(ch, "applied after a crash" if landed else "not applied (crash)")
            closed.append(e)
        if closed:
            logger.warning("audit log: %d change(s) interrupted by a crash were closed", len(closed))
        checked = min(still_open, default=end)  # never past a line another process is still appending
        if ino is not None and checked != start:
            self._check_up_to(checked, ino)
        return closed

    # -- what recovery has already looked at ------------------------------------------------------------------------
    @property
    def _checked_path(self) -> Path:
        return self.path.with_name(self.path.name + ".checked")

    def _checked(self) -> tuple[int, int | None]:
        """(offset before which every change is closed, the log's inode); (0, inode) when unknown or for another
        file (a replaced or shortened log is read from the start). Every KB open recovers, so without this it would
        parse the whole log each time."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return 0, None
        try:
            mark = json.loads(self._checked_path.read_text())
            offset, ino = int(mark["offset"]), int(mark["ino"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0, st.st_ino
        return (offset if ino == st.st_ino and 0 <= offset <= st.st_size else 0), st.st_ino

    def _check_up_to(self, offset: int, ino: int) -> None:
        try:
            write_atomic(self._checked_path, json.dumps({"offset": offset, "ino": ino}))
        except OSError as e:  # only a speed-up: the next open reads from the start again
            logger.warning("audit log: cannot write %s (%s)", self._checked_path, e)


