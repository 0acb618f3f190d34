"""The audit log: admin changes from the admin tab and the CLI recorded with who/when/what/versions, shown read-only in
the admin tab with filters, exported as JSON Lines by ``ragvqa kb audit``; a torn last line is ignored and cut off.

(The SIGKILL test is in test_service_audit_kill.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from gradio_client import Client
from kb_support import case_dict, make_source, open_kb
from ui_helpers import ADMIN, Served, fn_index_for, served_app

ROOT = Path(__file__).resolve().parents[1]


def test_torn_last_line_is_ignored_then_cut_off(tmp_path: Path) -> None:
    from knowledge_base.audit import AuditLog

    log = AuditLog(tmp_path / "audit.jsonl")
    log.record("add", "c1", None, 1)
    with log.change("update", "c1", 1) as ch:
        ch.after_version = 2
    good = log.path.read_bytes()
    # a crash in the middle of an append: half a JSON object, no newline
    half = json.dumps({"rec": "begin", "id": "x" * 32, "ts": "2026-11-29T00:00:00+00:00", "actor": "a",
                       "action": "delete", "case_id": "c1"})[:40]
    with open(log.path, "ab") as f:
        f.write(half.encode())
    got = [(e.action, e.case_id, e.before_version, e.after_version, e.status) for e in log.entries()]
    assert got == [("add", "c1", None, 1, "done"), ("update", "c1", 1, 2, "done")]
    log.record("delete", "c1", 2, None)
    data = log.path.read_bytes()
    assert data.startswith(good) and half.encode() not in data and data.endswith(b"\n")
    assert all(json.loads(line) for line in data.splitlines())  # every line is whole JSON again
    assert [e.action for e in log.entries()] == ["add", "update", "delete"]


def _pending(log_path: Path, case_id: str, pid: int) -> str:
    """A ``begin`` line as a process ``pid`` that never ended its change writes it (written here, not by AuditLog)."""
    eid = os.urandom(16).hex()
    with open(log_path, "ab") as f:
        f.write((json.dumps({"rec": "begin", "id": eid, "ts": "2026-11-29T00:00:00+00:00", "actor": "a",
                             "action": "update", "case_id": case_id, "before_version": 1, "pid": pid}) + "\n").encode())
    return eid


def test_recovery_reads_only_what_it_has_not_checked(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Every KB open recovers; after one recovery, lines before the checked offset are not parsed again, a change a
    live process is still making stays pending (and is closed once that process is gone), and a replaced log is read
    from the start."""
    import logging

    from knowledge_base.audit import AuditLog

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # a process that has exited
    log = AuditLog(tmp_path / "audit.jsonl")
    log.record("add", "c1", None, 1)
    first = _pending(log.path, "c1", dead_pid)
    assert [e.id for e in log.recover(lambda cid: 1)] == [first]
    with open(log.path, "ab") as f:  # a corrupt line before the checked offset would warn if it were read again
        f.write(b"{not json}\n")
    assert [e.id for e in log.recover(lambda cid: 1)] == []
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="knowledge_base.audit"):
        assert log.recover(lambda cid: 1) == []
    assert "not JSON" not in caplog.text
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        mine = _pending(log.path, "c2", live.pid)
        later = _pending(log.path, "c3", dead_pid)
        assert [e.id for e in log.recover(lambda cid: 1)] == [later]  # the live one stays pending
        assert [e.status for e in log.entries() if e.id == mine] == ["pending"]
    finally:
        live.kill()
        live.wait()
    assert [e.id for e in log.recover(lambda cid: 2)] == [mine]  # its process is gone: closed now
    assert {e.id: e.status for e in log.entries()}[mine] == "applied after a crash"
    # the log replaced by another file (another inode): read from the start
    other = tmp_path / "other.jsonl"
    other.write_bytes(log.path.read_bytes())
    again = _pending(other, "c4", dead_pid)
    os.replace(other, log.path)
    assert [e.id for e in log.recover(lambda cid: 1)] == [again]


def test_recovery_never_checks_past_a_line_still_being_appended(tmp_path: Path) -> None:
    """Recovery reads the log without the writers' lock, so another process's append may be seen half-written: the
    offset recovery may mark as checked is the end of the last whole line, never the file size."""
    from knowledge_base.audit import AuditLog

    log = AuditLog(tmp_path / "audit.jsonl")
    log.record("add", "c1", None, 1)
    whole = log.path.stat().st_size
    line = (json.dumps({"rec": "begin", "id": "f" * 32, "ts": "2026-11-29T00:00:00+00:00", "actor": "a",
                        "action": "update", "case_id": "c1", "before_version": 1, "pid": 1}) + "\n")
    with open(log.path, "ab") as f:
        f.write(line[:30].encode())  # the other writer is mid-append
    entries, end = log._entries_from(0)
    assert [e.action for _, e in entries] == ["add"] and end == whole < log.path.stat().st_size


def test_kb_changes_are_audited_with_versions_and_cli_export(tmp_path: Path, embedder) -> None:
    from knowledge_base.audit import acting_as

    data = tmp_path / "data"
    src = make_source(tmp_path / "src", 2)
    kb = open_kb("edge", data, embedder)
    try:
        with acting_as("cli:tester"):
            kb.import_path(src)
            kb.update("case-00", {"title": "A new title for case zero"})
            kb.add_case(case_dict(5, []))
            kb.delete("case-01")
            kb.check(fix=True)
        with acting_as("alice"):
            kb.update("case-00", {"cause": "Another cause."})
        with acting_as("bob"):  # the related-cases helper's confirmation, audited as a link confirmation
            from knowledge_base.related import confirm_related

            confirm_related(kb, "case-00", "case-05", note="same fuser")
            assert [link.case_id for link in kb.get("case-00").links] == ["case-05"]
    finally:
        kb.close()
    # the CLI export (run alone: no app serves this data dir)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "knowledge_base.cli", "audit", "--data-dir", str(data), *args],
                              env=env, capture_output=True, text=True, timeout=120)

    r = cli("--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    got = [(x["actor"], x["action"], x["case_id"], x["before_version"], x["after_version"], x["status"]) for x in rows]
    assert got == [
        ("cli:tester", "import", None, None, None, "done"),  # the import as a whole (begun first, ended last)
        ("cli:tester", "import", "case-00", None, 1, "done"),  # then each case as it was stored
        ("cli:tester", "import", "case-01", None, 1, "done"),
        ("cli:tester", "update", "case-00", 1, 2, "done"),
        ("cli:tester", "add", "case-05", None, 1, "done"),
        ("cli:tester", "delete", "case-01", 1, None, "done"),
        ("cli:tester", "check --fix", None, None, None, "done"),
        ("alice", "update", "case-00", 2, 3, "done"),
        ("bob", "link-confirm", "case-00", 3, 4, "done"),
    ], got
    assert rows[-1]["detail"]["other"] == "case-05"
    assert rows[0]["detail"]["added"] == 2
    for x in rows:
        ts = datetime.fromisoformat(x["ts"])
        assert ts.tzinfo is not None and abs(datetime.now(timezone.utc) - ts) < timedelta(minutes=10)
    r = cli("--json", "--case", "case-00")
    assert [json.loads(line)["action"] for line in r.stdout.splitlines()] == ["import", "update", "update",
                                                                              "link-confirm"]
    future = (datetime.now(timezone.utc) + timedelta(days=1)).date().isoformat()
    r = cli("--json", "--since", future)
    assert r.returncode == 0 and r.stdout == ""
    r = cli("--since", "yesterday-ish")
    assert r.returncode == 2 and "--since" in r.stderr
    r = cli()
    assert r.returncode == 0 and "9 change(s)" in r.stdout


app = served_app("audit-ui")


def test_admin_tab_changes_are_audited_and_shown_read_only(app: Served) -> None:
    c = Client(app.url, verbose=False, download_files=False)
    c.predict(*ADMIN, api_name="/admin_login")
    idx = {e: fn_index_for(c.config, e) for e in ("admin-del-btn", "audit-show")}
    for i in idx.values():
        c.endpoints[i].is_valid = True
    msg = c.predict("pump-seal", True, fn_index=idx["admin-del-btn"])
    assert "pump-seal" in msg
    rows, summary = c.predict("pump-seal", "", "", "", fn_index=idx["audit-show"])
    data = rows["data"]
    assert "2 change(s)" in summary, (data, summary)  # newest first: the admin's delete, then the set-up's add
    assert [tuple(r[1:7]) for r in data] == [(ADMIN[0], "delete", "pump-seal", 1, "", "done"),
                                             (data[1][1], "add", "pump-seal", "", 1, "done")]
    assert data[1][1].startswith("cli:")
    # filters: by actor and action; the serve_app set-up added its cases as the process user (cli:…)
    rows, _ = c.predict("", ADMIN[0], "", "", fn_index=idx["audit-show"])
    assert {r[2] for r in rows["data"]} == {"delete"}
    rows, _ = c.predict("", "", "add", "", fn_index=idx["audit-show"])
    assert {r[3] for r in rows["data"]} >= {"prn-e13", "prn-jam2", "hvac-f3"}
    # read-only: the audit sub-tab has no event that writes, and the log is not editable from the page
    cfg = c.config
    audit_ids = {comp["id"] for comp in cfg["components"]
                 if str(comp.get("props", {}).get("elem_id", "")).startswith("audit-")}
    table = next(comp for comp in cfg["components"] if comp.get("props", {}).get("elem_id") == "audit-table")
    assert table["props"].get("interactive") is False
    handlers = [d for d in cfg["dependencies"] if any(t[0] in audit_ids for t in d.get("targets", []))]
    assert len(handlers) == 1  # only "Show"
    # without login: refused
    c2 = Client(app.url, verbose=False, download_files=False)
    c2.endpoints[idx["audit-show"]].is_valid = True
    with pytest.raises(Exception, match="Admin login required"):
        c2.predict("", "", "", "", fn_index=idx["audit-show"])
