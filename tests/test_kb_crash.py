"""Crash safety: an import SIGKILLed mid-way (in a real subprocess, on Qdrant Edge) is resumed by re-running it, and
ends in exactly the state of an uninterrupted import, with no orphan points or files.

Two kills: one at the worst moment by construction (a chunk's media points written, its text points not: the
subprocess wraps the real store's ``upsert`` and kills itself), one from outside after N cases were reported done
(the parent polls the child's progress lines).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from kb_support import OPTIONS, assert_same_state, kb_state, make_source, open_kb

pytestmark = pytest.mark.slow

N_CASES = 16
CHUNK = 2
ROOT = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent('''
    import os, signal, sys
    from pathlib import Path
    sys.path[:0] = [{root!r}, {tests!r}]
    from kb_support import OPTIONS, open_kb
    from rag.models.embedder import Embedder

    model_dir, data_dir, src, mode = sys.argv[1:5]
    emb = Embedder.from_pretrained(model_dir, dtype="float32", device="cpu")
    kb = open_kb("edge", Path(data_dir), emb, options=OPTIONS.model_copy(update={{"chunk_cases": {chunk}}}))
    if mode.startswith("kill-at-text-upsert:"):
        target, calls, real = int(mode.split(":")[1]), [0], kb.store.upsert

        def upsert(points, batch_size=256):
            points = list(points)
            if points and points[0].payload["kind"] == "text":
                calls[0] += 1
                if calls[0] == target:  # this chunk's media points are in the store, its text points are not
                    print("KILLING", flush=True)
                    os.kill(os.getpid(), signal.SIGKILL)
            return real(points, batch_size)

        kb.store.upsert = upsert
    kb.import_path(src, on_item=lambda r: print("DONE", r.case_id, r.status, flush=True))
    print("FINISHED", flush=True)
    kb.close()
''').format(root=str(ROOT), tests=str(ROOT / "tests"), chunk=CHUNK)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_source(tmp_path_factory.mktemp("crash-src"), N_CASES)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, source: Path, embedder) -> dict:
    """The state an uninterrupted import produces."""
    kb = open_kb("edge", tmp_path_factory.mktemp("crash-ref") / "data", embedder,
                 options=OPTIONS.model_copy(update={"chunk_cases": CHUNK}))
    try:
        res = kb.import_path(source)
        assert res.added == N_CASES and kb.check().problems == 0
        return kb_state(kb)
    finally:
        kb.close()


def _child(tmp_path: Path, tiny_model_dir: Path, data: Path, source: Path, mode: str) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(script), str(tiny_model_dir), str(data), str(source), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=env)


def _resume_and_compare(data: Path, source: Path, embedder, reference: dict, done_before: int) -> None:
    kb = open_kb("edge", data, embedder, options=OPTIONS.model_copy(update={"chunk_cases": CHUNK}))
    try:
        before = kb.check()
        res = kb.import_path(source)  # the resume is just the same import again
        assert res.rejected == 0 and res.skipped >= done_before and res.added + res.updated + res.skipped == N_CASES
        after = kb.check()
        assert after.problems == 0, after.summary()
        assert_same_state(kb_state(kb), reference)
    finally:
        kb.close()
    return before


def test_kill_between_media_and_text_points_then_resume(tmp_path: Path, tiny_model_dir: Path, source: Path,
                                                        reference: dict, embedder) -> None:
    data = tmp_path / "data"
    proc = _child(tmp_path, tiny_model_dir, data, source, "kill-at-text-upsert:3")
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == -signal.SIGKILL and "KILLING" in out and "FINISHED" not in out, out
    done = sum(1 for line in out.splitlines() if line.startswith("DONE"))
    assert done == 2 * CHUNK  # two chunks completed before the kill
    before = _resume_and_compare(data, source, embedder, reference, done)
    # The kill left exactly the third chunk's media points without cases (and their files unreferenced).
    assert len(before.orphan_points) == CHUNK and len(before.unreferenced_files) >= CHUNK, before.summary()


def test_sigkill_after_progress_then_resume(tmp_path: Path, tiny_model_dir: Path, source: Path, reference: dict,
                                            embedder) -> None:
    data = tmp_path / "data"
    proc = _child(tmp_path, tiny_model_dir, data, source, "run")
    done, deadline = 0, time.monotonic() + 240
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("DONE"):
            done += 1
            if done >= 6:
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait(timeout=60)
    rest = proc.stdout.read()
    assert proc.returncode == -signal.SIGKILL and "FINISHED" not in rest, (done, rest)
    assert 6 <= done < N_CASES
    _resume_and_compare(data, source, embedder, reference, done)
