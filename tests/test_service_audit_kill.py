"""SIGKILL during an audited admin change (update, add, delete) at seeded points — mid-append of the audit lines,
between the audit ``begin`` and the change, inside the change's store writes, between the change and the audit
``end`` — then reopen: the audit log and the knowledge base are consistent.

Consistent means: every audit line reads back (a torn one is ignored); no change stays "pending"; the interrupted
change is closed as "applied after a crash" exactly when the case's version moved (its ``after_version`` is the
version now), else "not applied (crash)"; every case version in the knowledge base is the ``after_version`` of some
audit entry (no unlogged change); and ``check --fix`` (itself audited) leaves no problem.

Same mechanism as test_crash_kill.py (tests/zygote_support.py): one helper process loads the tiny embedder once and forks a child per kill
point; the child opens a copy of a prepared data dir, installs the kill point and makes the change.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path
from typing import Iterator

import pytest
from conftest import case_picture
from kb_support import make_source, open_kb
from zygote_support import Zygote

pytestmark = pytest.mark.slow

BODY = '''
    from kb_support import open_kb, case_dict
    from knowledge_base.audit import AuditLog, acting_as


    def child(job, started_w):
        data, point, op = job["data"], job["point"], job["op"]
        kb = open_kb("edge", Path(data), emb)
        real_append = AuditLog._append

        def append(self, record):
            kind = record.get("rec")
            if point == f"{kind}-torn":
                line = (json.dumps(record) + "\\n").encode()
                with open(self.path, "ab") as f:
                    f.write(line[: len(line) // 2])
                    f.flush()
                    os.fsync(f.fileno())
                die()
            if point == "before-end" and kind == "end":
                die()
            real_append(self, record)
            if point == "after-begin" and kind == "begin":
                die()

        AuditLog._append = append
        if point.startswith(("text-", "media-")):
            kind_text = point.startswith("text-")
            when = point.split("-", 1)[1]
            real_upsert = kb.store.upsert

            def upsert(points, batch_size=256):
                points = list(points)
                if points and (points[0].payload["kind"] == "text") == kind_text:
                    if when == "before":
                        die()
                    out = real_upsert(points, batch_size)
                    die()
                    return out
                return real_upsert(points, batch_size)

            kb.store.upsert = upsert
        if point.startswith("delete-"):
            real_delete = kb.store.delete_points

            def delete(*a, **kw):
                real_delete(*a, **kw)
                die()  # the first delete landed (the text point: deletes go text point first)

            kb.store.delete_points = delete
        os.write(started_w, b"S")
        with acting_as("cli:killer"):
            if op == "update":
                kb.update("case-00", {"title": "Changed title of case zero"}, add_media=[job["media"]])
            elif op == "add":
                kb.add_case(case_dict(7, []), media=[job["media"]])
            elif op == "delete":
                kb.delete("case-01")
        kb.close()
'''

#: (operation, kill point, what the interrupted change must be closed as: True applied, False not applied)
POINTS: list[tuple[str, str, bool]] = [
    ("update", "begin-torn", False),
    ("update", "after-begin", False),
    ("update", "media-before", False),
    ("update", "media-after", False),
    ("update", "text-before", False),
    ("update", "text-after", True),
    ("update", "before-end", True),
    ("update", "end-torn", True),
    ("add", "after-begin", False),
    ("add", "media-after", False),
    ("add", "text-after", True),
    ("add", "end-torn", True),
    ("delete", "after-begin", False),
    ("delete", "delete-first", True),
    ("delete", "before-end", True),
]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, embedder) -> tuple[Path, Path]:
    """A data dir with 3 imported cases (closed), and a picture for the changes."""
    root = tmp_path_factory.mktemp("audit-kill")
    kb = open_kb("edge", root / "data", embedder)
    try:
        kb.import_path(make_source(root / "src", 3, seed0=40))
    finally:
        kb.close()
    pic = root / "extra.png"
    case_picture(11, (30, 160, 90)).save(pic)
    return root / "data", pic


@pytest.fixture(scope="module")
def zygote(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Zygote]:
    z = Zygote(tmp_path_factory.mktemp("audit-zygote"), tiny_model_dir, BODY)
    yield z
    z.close()


CASE = {"update": "case-00", "add": "case-07", "delete": "case-01"}


@pytest.mark.parametrize(("op", "point", "applied"), POINTS, ids=[f"{o}-{p}" for o, p, _ in POINTS])
def test_kill_during_audited_change(op: str, point: str, applied: bool, zygote: Zygote,
                                    base: tuple[Path, Path], tmp_path: Path, embedder) -> None:
    base_data, pic = base
    data, log = tmp_path / "data", tmp_path / "child.log"
    shutil.copytree(base_data, data)
    before = open_kb("edge", data, embedder)
    try:
        case = before.get(CASE[op])
        before_version = None if case is None else case.version
        n_before = len(before.audit.entries())
    finally:
        before.close()
    rc = zygote.run({"op": op, "point": point, "data": str(data), "media": str(pic), "log": str(log)})
    assert not log.exists(), log.read_text()
    assert rc == -signal.SIGKILL, rc

    kb = open_kb("edge", data, embedder)  # the reopen closes the interrupted change
    try:
        entries = kb.audit.entries()
        assert all(e.status != "pending" for e in entries), [(e.action, e.status) for e in entries]
        raw = kb.audit.path.read_bytes()
        assert raw.endswith(b"\n") and all(json.loads(x) for x in raw.splitlines())  # torn tail cut off
        now = kb.get(CASE[op])
        now_version = None if now is None else now.version
        assert (now_version != before_version) == applied, (before_version, now_version)
        mine = [e for e in entries[n_before:] if e.actor == "cli:killer"]
        if point == "begin-torn":  # the begin never landed whole: no entry, and no change either
            assert mine == [] and not applied
        else:
            assert len(mine) == 1, mine
            e = mine[0]
            assert (e.action, e.case_id, e.before_version) == (op, CASE[op], before_version)
            expected = "applied after a crash" if applied else "not applied (crash)"
            assert e.status == expected, (e.status, expected)
            assert e.after_version == now_version
        # no unlogged change: every version in the KB is the outcome of some audit entry
        logged = {(e.case_id, e.after_version) for e in entries if e.case_id}
        for c in kb.list_cases(limit=100).cases:
            assert (c.id, c.version) in logged, (c.id, c.version, sorted(logged, key=str))
        # the knowledge base repairs itself, audited
        kb.check(fix=True)
        assert kb.check().problems == 0
        assert kb.audit.entries()[-1].action == "check --fix" and kb.audit.entries()[-1].status == "done"
    finally:
        kb.close()
