"""Thumbs up/down on answers, stored in SQLite under ``data_dir`` for the admin's feedback review.

SQLite rather than JSONL: several Gradio worker threads write concurrently, and the review wants counts and
"latest first" queries; one short connection per call keeps it thread-safe without a pool.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from rag.fileio import atomic_writer

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    rating INTEGER NOT NULL CHECK (rating IN (-1, 1)),
    comment TEXT NOT NULL DEFAULT '',
    question TEXT NOT NULL DEFAULT '',
    answer TEXT NOT NULL DEFAULT '',
    cited TEXT NOT NULL DEFAULT '[]',
    cases TEXT NOT NULL DEFAULT '[]',
    abstained INTEGER NOT NULL DEFAULT 0,
    media TEXT NOT NULL DEFAULT '[]',
    filters TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS feedback_ts ON feedback (ts);
CREATE TABLE IF NOT EXISTS abstentions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    question TEXT NOT NULL DEFAULT '',
    media_files TEXT NOT NULL DEFAULT '[]',
    filters TEXT NOT NULL DEFAULT '{}',
    cases TEXT NOT NULL DEFAULT '[]',
    reason TEXT NOT NULL DEFAULT ''
);
"""
#: Query media of abstentions and thumbs-down answers are copied here (uploads are pruned after a day; a knowledge
#: gap is reviewed later): ``data_dir/gap_media/<sha256>.<ext>``, content-addressed, so a repeated photo is kept once.
GAP_MEDIA = "gap_media"
MAX_KEPT_MEDIA_BYTES = 50 * 1024 * 1024

MAX_COMMENT = 2000


class FeedbackLog:
    """Append-only feedback records: the query, the answer, cited case ids and every shown case's score."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as con, con:
            con.executescript(_SCHEMA)
            cols = {r[1] for r in con.execute("PRAGMA table_info(feedback)")}
            if "media_files" not in cols:  # logs written before knowledge gaps: add the column, keep the rows
                con.execute("ALTER TABLE feedback ADD COLUMN media_files TEXT NOT NULL DEFAULT '[]'")

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=10)
        con.row_factory = sqlite3.Row
        return con

    def record(self, *, rating: int, question: str, answer: str, cited: list[str], cases: list[dict[str, Any]],
               abstained: bool, comment: str = "", media: list[str] | None = None,
               filters: dict[str, Any] | None = None, media_files: list[str] | None = None) -> int:
        """Store one vote; ``cases`` are ``{"case_id", "score", "retrieval_score", "rerank_score"}`` dicts.
        ``media_files``: the query's media files, kept (copied) for the knowledge-gap review when the vote is 👎."""
        if rating not in (-1, 1):
            raise ValueError(f"rating must be 1 or -1, got {rating!r}")
        kept = self.keep_media(media_files or []) if rating < 0 else []
        row = (time.time(), rating, (comment or "")[:MAX_COMMENT], question, answer, json.dumps(cited),
               json.dumps(cases), int(bool(abstained)), json.dumps(media or []), json.dumps(filters or {}),
               json.dumps(kept))
        with closing(self._connect()) as con, con:
            cur = con.execute("INSERT INTO feedback (ts, rating, comment, question, answer, cited, cases, abstained, "
                              "media, filters, media_files) VALUES (?,?,?,?,?,?,?,?,?,?,?)", row)
            fid = int(cur.lastrowid or 0)
        logger.info("feedback #%d recorded (rating %+d)", fid, rating)
        return fid

    def record_abstention(self, *, question: str, media_files: list[str], filters: dict[str, Any] | None,
                          cases: list[dict[str, Any]], reason: str = "") -> int:
        """Log a question the app abstained on (no vote needed): the input of ``ragvqa kb gaps``."""
        kept = self.keep_media(media_files)
        row = (time.time(), question, json.dumps(kept), json.dumps(filters or {}), json.dumps(cases), reason)
        with closing(self._connect()) as con, con:
            cur = con.execute("INSERT INTO abstentions (ts, question, media_files, filters, cases, reason) "
                              "VALUES (?,?,?,?,?,?)", row)
            aid = int(cur.lastrowid or 0)
        logger.info("abstention #%d logged", aid)
        return aid

    def keep_media(self, files: list[str]) -> list[str]:
        """Copy query media under ``gap_media/`` (content-addressed); returns paths relative to the log's folder.
        A missing or oversized file is left out with a log line: a gap is still worth recording without its photo."""
        out: list[str] = []
        folder = self.path.parent / GAP_MEDIA
        for f in files:
            src = Path(f)
            try:
                if src.stat().st_size > MAX_KEPT_MEDIA_BYTES:
                    logger.warning("query media %s not kept for the gap review: larger than %d bytes", src.name,
                                   MAX_KEPT_MEDIA_BYTES)
                    continue
                with open(src, "rb") as fh:  # streamed: a kept video is never held in memory whole
                    name = hashlib.file_digest(fh, "sha256").hexdigest() + src.suffix.lower()[:8]
                dest = folder / name
                if not dest.exists():  # a temp file per writer, fsynced, renamed: two chats keeping one photo is safe
                    with open(src, "rb") as fh, atomic_writer(dest) as w:
                        shutil.copyfileobj(fh, w, 1 << 20)
                out.append(f"{GAP_MEDIA}/{name}")
            except OSError as e:
                logger.warning("query media %s not kept for the gap review: %s", src.name, e)
        return out

    def latest(self, limit: int = 200, rating: int | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM feedback" + (" WHERE rating = ?" if rating is not None else "") + " ORDER BY id DESC LIMIT ?"
        args: tuple[Any, ...] = (rating, limit) if rating is not None else (limit,)
        with closing(self._connect()) as con:
            rows = con.execute(sql, args).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            for key in ("cited", "cases", "media", "filters", "media_files"):
                d[key] = json.loads(d[key])
            d["abstained"] = bool(d["abstained"])
            out.append(d)
        return out

    def summary(self) -> dict[str, Any]:
        with closing(self._connect()) as con:
            up, down, abst = con.execute(
                "SELECT COALESCE(SUM(rating = 1), 0), COALESCE(SUM(rating = -1), 0), COALESCE(SUM(abstained), 0) "
                "FROM feedback").fetchone()
        total = up + down
        return {"total": total, "up": up, "down": down, "abstained": abst,
                "satisfaction": round(up / total, 3) if total else None}
