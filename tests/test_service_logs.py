"""``RAGVQA_LOG_FORMAT=json``: every log line of a ``ragvqa`` command is one JSON object; the per-answer line carries
its stage timings and case ids as fields and the question only with ``RAGVQA_LOG_QUESTIONS=1``."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ragvqa(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ui.cli", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **env})


def test_json_log_lines_from_a_command(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    good = json.dumps({"rec": "op", "id": "a" * 32, "ts": "2026-11-29T10:00:00+00:00", "actor": "cli:x",
                       "action": "add", "case_id": "c1", "before_version": None, "after_version": 1,
                       "status": "done", "detail": {}})
    (data / "audit.jsonl").write_text(good + "\n" + good[:30])  # a torn last line: the reader logs a warning
    r = _ragvqa("kb", "audit", "--json", "--data-dir", str(data), RAGVQA_LOG_FORMAT="json")
    assert r.returncode == 0, r.stderr
    assert [json.loads(x)["case_id"] for x in r.stdout.splitlines()] == ["c1"]
    logs = [json.loads(x) for x in r.stderr.splitlines() if x.strip()]
    assert logs, r.stderr
    warn = [x for x in logs if x["logger"] == "knowledge_base.audit"]
    assert warn and warn[0]["level"] == "warning" and "torn last line" in warn[0]["message"]
    assert all({"ts", "level", "logger", "message"} <= x.keys() for x in logs)
    r = _ragvqa("kb", "audit", "--data-dir", str(data), RAGVQA_LOG_FORMAT="xml")
    assert r.returncode == 2 and "RAGVQA_LOG_FORMAT" in r.stderr


def test_answer_line_fields_and_question_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    from rag.pipeline.types import Answer, CaseCandidate, Trace
    from ui.logfmt import JsonLogFormatter
    from ui.metrics import log_answer

    trace = Trace()
    trace.add("embed", 12.5)
    trace.add("search", 3.0)
    trace.add("rerank", 40.0)
    trace.add("generate", 900.0, first_token_ms=150.0)
    answer = Answer.model_construct(text="x", cases=[CaseCandidate(case_id="c1", title="t", retrieval_score=0.5)],
                                    cited=["c1"], abstained=False, trace=trace)
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    log = logging.getLogger("ragvqa.answers")
    h = Keep()
    log.addHandler(h)
    old = log.level
    log.setLevel(logging.INFO)
    try:
        monkeypatch.delenv("RAGVQA_LOG_QUESTIONS", raising=False)
        log_answer(answer, 1.2, "my private question", "answered")
        monkeypatch.setenv("RAGVQA_LOG_QUESTIONS", "1")
        log_answer(answer, 1.2, "my private question", "answered")
    finally:
        log.removeHandler(h)
        log.setLevel(old)
    first, second = (json.loads(JsonLogFormatter().format(r)) for r in records)
    assert first["answer"] == {"outcome": "answered", "total_ms": 1200.0, "cited": ["c1"], "cases": ["c1"],
                               "stages_ms": {"embed": 12.5, "search": 3.0, "rerank": 40.0, "first_token": 150.0}}
    assert "my private question" not in json.dumps(first)
    assert second["answer"]["question"] == "my private question"
