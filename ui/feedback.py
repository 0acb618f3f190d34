"""Thumbs up/down on answers, stored in SQLite under ``data_dir`` for the admin's feedback review.

SQLite rather than JSONL: several Gradio worker threads write concurrently, and the review wants counts and
"latest first" queries; one short connection per call keeps it thread-safe without a pool.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

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
"""

MAX_COMMENT = 2000


class FeedbackLog:
    """Append-only feedback records: the query, the answer, cited case ids and every shown case's score."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as con, con:
            con.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=10)
        con.row_factory = sqlite3.Row
        return con

    def record(self, *, rating: int, question: str, answer: str, cited: list[str], cases: list[dict[str, Any]],
               abstained: bool, comment: str = "", media: list[str] | None = None,
               filters: dict[str, Any] | None = None) -> int:
        """Store one vote; ``cases`` are ``{"case_id", "score", "retrieval_score", "rerank_score"}`` dicts."""
        if rating not in (-1, 1):
            raise ValueError(f"rating must be 1 or -1, got {rating!r}")
        row = (time.time(), rating, (comment or "")[:MAX_COMMENT], question, answer, json.dumps(cited),
               json.dumps(cases), int(bool(abstained)), json.dumps(media or []), json.dumps(filters or {}))
        with closing(self._connect()) as con, con:
            cur = con.execute("INSERT INTO feedback (ts, rating, comment, question, answer, cited, cases, abstained, "
                              "media, filters) VALUES (?,?,?,?,?,?,?,?,?,?)", row)
            fid = int(cur.lastrowid or 0)
        logger.info("feedback #%d recorded (rating %+d)", fid, rating)
        return fid

    def latest(self, limit: int = 200, rating: int | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM feedback" + (" WHERE rating = ?" if rating is not None else "") + " ORDER BY id DESC LIMIT ?"
        args: tuple[Any, ...] = (rating, limit) if rating is not None else (limit,)
        with closing(self._connect()) as con:
            rows = con.execute(sql, args).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            for key in ("cited", "cases", "media", "filters"):
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
