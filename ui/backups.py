"""Scheduled backups while serving: ``RAGVQA_BACKUP_EVERY`` (e.g. ``6h``, ``30m``, ``1d``, or seconds; unset = off),
``RAGVQA_BACKUP_KEEP`` (newest N kept, default 7), ``RAGVQA_BACKUP_DIR`` (default ``data_dir/backups``).

Each backup is ``kb export`` (the same zip format; ``ragvqa kb restore FILE`` or ``kb import FILE`` restore it),
taken under the knowledge base's write lock so no change is half in it, written to a temp name and renamed (a crash
never leaves a truncated backup under a final name). Retention deletes only files this scheduler names
(``ragvqa-backup-<UTC time>.zip``), oldest first.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from knowledge_base.kb import KnowledgeBase

logger = logging.getLogger(__name__)

__all__ = ["BackupScheduler", "parse_interval"]

NAME_RE = re.compile(r"^ragvqa-backup-\d{8}T\d{6}\.\d{6}Z\.zip$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_interval(text: str) -> float:
    """``"90"`` / ``"90s"`` / ``"30m"`` / ``"6h"`` / ``"1d"`` → seconds; a clear error otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text.lower())
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"RAGVQA_BACKUP_EVERY must be a positive duration like 6h, 30m, 1d or 3600, got {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


@dataclass
class BackupScheduler:
    kb: KnowledgeBase
    directory: Path
    every_s: float
    keep: int = 7
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.keep < 1:
            raise ValueError(f"RAGVQA_BACKUP_KEEP must be at least 1, got {self.keep}")

    @classmethod
    def from_env(cls, kb: KnowledgeBase, data_dir: Path) -> BackupScheduler | None:
        every = os.environ.get("RAGVQA_BACKUP_EVERY", "").strip()
        if not every:
            return None
        keep_s = os.environ.get("RAGVQA_BACKUP_KEEP", "7").strip() or "7"
        try:
            keep = int(keep_s)
        except ValueError:
            raise ValueError(f"RAGVQA_BACKUP_KEEP must be a whole number, got {keep_s!r}") from None
        directory = Path(os.environ.get("RAGVQA_BACKUP_DIR", "").strip() or data_dir / "backups")
        return cls(kb=kb, directory=directory, every_s=parse_interval(every), keep=keep)

    def backups(self) -> list[Path]:
        """This scheduler's backups, oldest first (the name sorts by time)."""
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.iterdir() if NAME_RE.match(p.name))

    def run_once(self) -> Path:
        """One consistent backup now, then retention; returns the new file."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        dest = self.directory / f"ragvqa-backup-{stamp}.zip"
        with self.kb.state.lock:  # no change can land half in the backup
            self.kb.export(dest)
        for old in self.backups()[: -self.keep]:
            try:
                old.unlink()
                logger.info("backup retention: deleted %s", old.name)
            except OSError as e:
                logger.warning("backup retention: cannot delete %s: %s", old, e)
        logger.info("backup written: %s", dest)
        return dest

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - a failed backup is logged; the next one is tried on schedule
                logger.exception("scheduled backup failed")

    def start(self) -> BackupScheduler:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._loop, name="ragvqa-backups", daemon=True)
        self._thread.start()
        logger.info("backups every %.0f s into %s, keeping %d", self.every_s, self.directory, self.keep)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=600)
