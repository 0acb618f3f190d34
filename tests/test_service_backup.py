"""Scheduled backups (``ui.backups``) and ``ragvqa kb restore``: a backup taken while the KB is in use, retention,
and a restore into an empty data dir giving the same cases, media files, vectors and payloads (compared one by one).

Vectors are re-computed by the same embedder on restore, so they are compared with a tolerance (max abs difference
1e-4 per component on unit vectors) rather than bit for bit; everything else must be equal (case records including
versions and dates, payloads, media bytes).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import case_picture
from kb_support import make_source, open_kb

ROOT = Path(__file__).resolve().parents[1]
VECTOR_TOL = 1e-4


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and ".tmp" not in p.parts}


def _points(kb) -> dict[str, tuple[dict[str, Any], np.ndarray]]:
    return {p.id: (dict(p.payload), np.asarray(p.vector, dtype=np.float64)) for p in kb.store.scroll(with_vectors=True)}


def test_parse_interval() -> None:
    from ui.backups import parse_interval

    assert [parse_interval(x) for x in ("90", "90s", "30m", "6h", "1d", "0.5h")] == [90, 90, 1800, 21600, 86400, 1800]
    for bad in ("", "0", "-5m", "6 hours", "h"):
        with pytest.raises(ValueError, match="RAGVQA_BACKUP_EVERY"):
            parse_interval(bad)


def test_scheduled_backup_retention_and_restore_gives_the_same_kb(tmp_path: Path, embedder) -> None:
    from knowledge_base.cli import restore_backup
    from ui.backups import NAME_RE, BackupScheduler

    src = make_source(tmp_path / "src", 4, seed0=70)
    kb = open_kb("edge", tmp_path / "data", embedder)
    try:
        kb.import_path(src)
        pic = tmp_path / "more.png"
        case_picture(5, (90, 30, 200)).save(pic)
        kb.update("case-01", {"title": "Edited before the backups"}, add_media=[str(pic)])
        sched = BackupScheduler(kb=kb, directory=tmp_path / "backups", every_s=3600, keep=2)
        # a backup while another thread changes the KB: it holds the write lock, so it has all of a change or none
        changer = threading.Thread(target=lambda: kb.update("case-02", {"cause": "Changed during the backup."}))
        changer.start()
        first = sched.run_once()
        changer.join()
        second, third = sched.run_once(), sched.run_once()
        kept = sched.backups()
        assert kept == [second, third] and not first.exists() and all(NAME_RE.match(p.name) for p in kept)
        # the thread form runs on its schedule too
        ticking = BackupScheduler(kb=kb, directory=tmp_path / "ticking", every_s=0.2, keep=1).start()
        try:
            for _ in range(100):
                if ticking.backups():
                    break
                threading.Event().wait(0.1)
        finally:
            ticking.stop()
        assert len(ticking.backups()) == 1
        want_cases = {c.id: c.model_dump(mode="json") for c in kb.list_cases(limit=100).cases}
        want_points = _points(kb)
        want_files = _files(kb.media_root)
    finally:
        kb.close()

    target = open_kb("edge", tmp_path / "restored", embedder)
    try:
        res, rep = restore_backup(target, third)
        assert res.added == 4 and res.rejected == 0 and rep.problems == 0, res.to_dict()
        got_cases = {c.id: c.model_dump(mode="json") for c in target.list_cases(limit=100).cases}
        assert got_cases == want_cases  # records: fields, media, versions, created/updated dates
        assert got_cases["case-02"]["cause"] == "Changed during the backup."
        assert got_cases["case-01"]["version"] == 2
        got_points = _points(target)
        assert got_points.keys() == want_points.keys()
        for pid, (payload, vec) in want_points.items():
            assert got_points[pid][0] == payload, pid
            assert got_points[pid][1].shape == vec.shape
            assert np.max(np.abs(got_points[pid][1] - vec)) <= VECTOR_TOL, pid
        assert _files(target.media_root) == want_files
        with pytest.raises(ValueError, match="empty data dir"):
            restore_backup(target, third)
    finally:
        target.close()

    # the CLI refuses a non-empty data dir and a file that is not a backup, before loading any model
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "knowledge_base.cli", "restore", *args], env=env,
                              capture_output=True, text=True, timeout=300)

    r = cli(str(third), "--data-dir", str(tmp_path / "restored"))
    assert r.returncode == 2 and "already has 4 case(s)" in " ".join(r.stderr.split()), r.stderr
    r = cli(str(src), "--data-dir", str(tmp_path / "empty"))
    assert r.returncode == 2 and "not a ragvqa backup" in " ".join(r.stderr.split()), r.stderr
    assert json.loads(__import__("zipfile").ZipFile(third).read("manifest.json"))["cases"] == 4
