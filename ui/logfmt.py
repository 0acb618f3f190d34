"""``RAGVQA_LOG_FORMAT=json``: one JSON object per log line (time, level, logger, message, structured extras such as
the per-answer ``answer`` record of ``ui.metrics``, exception text), for log collectors."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

__all__ = ["JsonLogFormatter", "json_handler"]

#: Structured extras passed with ``logger.info(..., extra={...})`` that are copied into the JSON object.
EXTRA_KEYS = ("answer",)


class JsonLogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in EXTRA_KEYS:
            if hasattr(record, key):
                obj[key] = getattr(record, key)
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        return json.dumps(obj, ensure_ascii=False, default=str)


def json_handler() -> logging.Handler:
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(JsonLogFormatter())
    return h
