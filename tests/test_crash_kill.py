"""SIGKILL an import at 20 seeded random points (media-file writes, media-point upserts, text-point upserts, and
random delays from outside), then resume it by re-running it: ``check()`` finds nothing wrong and the knowledge base
is exactly what an uninterrupted import writes (same case ids, content hashes, points, vectors, media files).

Starting Python + torch + the model for each kill would dominate the run, so one helper process loads them once and
forks a fresh child per kill point (tests/zygote_support.py; the child opens the store, imports, and dies where it is
told); the resume runs in this process on the session's tiny model. Builds on test_kb_crash.py (same source and state helpers, same
write-order contract) with many more, and randomly placed, kill points.
"""

from __future__ import annotations

import random
import signal
from pathlib import Path
from typing import Any, Iterator

import pytest
from kb_support import assert_same_state, kb_state, make_source, open_kb
from zygote_support import Zygote

pytestmark = pytest.mark.slow

N_CASES = 8
KILLS = 20
SEED = 20240917
PHASES = ("media-write", "media-upsert", "text-upsert", "delay")

BODY = '''
    from kb_support import OPTIONS, open_kb
    import knowledge_base.media_store as media_store


    def child(job, started_w):
        data, src, phase = Path(job["data"]), job["source"], job["phase"]
        log = open(job["log"], "a", buffering=1)
        kb = open_kb("edge", data, emb, options=OPTIONS.model_copy(update={"chunk_cases": job["chunk"]}))
        nth, when, calls = job.get("nth", 0), job.get("when", "before"), [0]
        if phase == "media-write":  # every atomic rename into the media store (files and thumbnails)
            real = media_store.os.replace
            root = str(kb.media.root)

            def replace(a, b, *args, **kw):
                if str(b).startswith(root):
                    calls[0] += 1
                    if calls[0] == nth and when == "before":
                        die()  # the temp file is written, the final name is not
                    real(a, b, *args, **kw)
                    if calls[0] == nth:
                        die()  # the file is there, no point refers to it
                    return
                return real(a, b, *args, **kw)

            media_store.os.replace = replace
        elif phase in ("media-upsert", "text-upsert"):
            kind_text = phase == "text-upsert"
            real_upsert = kb.store.upsert

            def upsert(points, batch_size=256):
                points = list(points)
                if points and (points[0].payload["kind"] == "text") == kind_text:
                    calls[0] += 1
                    if calls[0] == nth and when == "before":
                        die()
                    out = real_upsert(points, batch_size)
                    if calls[0] == nth:
                        die()
                    return out
                return real_upsert(points, batch_size)

            kb.store.upsert = upsert
        os.write(started_w, b"S")
        kb.import_path(src, on_item=lambda r: log.write(f"DONE {r.case_id} {r.status}\\n"))
        log.write("FINISHED\\n")
        kb.close()


    def watch(job, pid, started):
        """Phase "delay": once ``after`` cases are reported done, wait ``delay`` s and kill from outside."""
        if job["phase"] != "delay" or not started:
            return None
        while True:
            done = open(job["log"]).read().count("DONE") if os.path.exists(job["log"]) else 0
            if done >= job["after"]:
                time.sleep(job["delay"])
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                return None
            wpid, st = os.waitpid(pid, os.WNOHANG)
            if wpid:
                return st
            time.sleep(0.005)
'''


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_source(tmp_path_factory.mktemp("kill-src"), N_CASES, seed0=100)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, source: Path, embedder) -> dict[str, Any]:
    """What an uninterrupted import writes, plus the case ids and content hashes to compare explicitly."""
    kb = open_kb("edge", tmp_path_factory.mktemp("kill-ref") / "data", embedder)
    try:
        res = kb.import_path(source)
        assert res.added == N_CASES and kb.check().problems == 0, res.to_dict()
        return {"state": kb_state(kb), "hashes": _hashes(kb)}
    finally:
        kb.close()


def _hashes(kb) -> dict[str, str]:
    return {p.payload["case_id"]: p.payload["content_hash"]
            for p in kb.store.scroll(filters={"kind": "text"}, payload_keys=["case_id", "content_hash"])}


@pytest.fixture(scope="module")
def zygote(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Zygote]:
    z = Zygote(tmp_path_factory.mktemp("zygote"), tiny_model_dir, BODY)
    yield z
    z.close()


def kill_points() -> list[dict[str, Any]]:
    """20 seeded kill points, five per phase: the N-th write of that phase (before or after it lands), or a random
    delay after the import started; random chunk sizes change how many cases each write holds."""
    rng = random.Random(SEED)
    points = []
    for i in range(KILLS):
        phase = PHASES[i % len(PHASES)]
        chunk = rng.choice([1, 2, 3, 4])
        chunks = -(-N_CASES // chunk)
        # Each phase is hit both just before its write lands and just after it (alternating).
        p: dict[str, Any] = {"phase": phase, "chunk": chunk, "when": ("before", "after")[(i // len(PHASES)) % 2]}
        if phase == "media-write":
            p["nth"] = rng.randint(1, 2 * N_CASES)  # a file and a thumbnail per case
        elif phase in ("media-upsert", "text-upsert"):
            p["nth"] = rng.randint(1, chunks)
        else:  # from outside: after a random number of finished cases, plus a random delay
            p["after"] = rng.randint(0, N_CASES - 2)
            p["delay"] = round(rng.uniform(0.0, 0.15), 3)
        points.append(p)
    return points


POINTS = kill_points()
survived: list[str] = []
ran: list[str] = []


def _point_id(i: int, p: dict[str, Any]) -> str:
    where = f"call{p['nth']}-{p['when']}" if "nth" in p else f"after{p['after']}+{p['delay']}s"
    return f"{i:02d}-{p['phase']}-{where}-chunk{p['chunk']}"


@pytest.mark.parametrize("point", POINTS, ids=[_point_id(i, p) for i, p in enumerate(POINTS)])
def test_kill_then_resume(point: dict[str, Any], zygote: Zygote, source: Path, reference: dict[str, Any],
                          tmp_path: Path, embedder) -> None:
    data, log = tmp_path / "data", tmp_path / "progress.log"
    rc = zygote.run({**point, "data": str(data), "source": str(source), "log": str(log)})
    progress = log.read_text() if log.exists() else ""
    assert "ERROR" not in progress, progress
    done = progress.count("DONE")
    if point["phase"] != "delay":
        assert rc == -signal.SIGKILL and "FINISHED" not in progress, (rc, progress)
    elif rc != -signal.SIGKILL:  # the delay outlasted this import: still a valid resume (of a finished one)
        assert rc == 0 and "FINISHED" in progress, (rc, progress)

    kb = open_kb("edge", data, embedder)
    try:
        res = kb.import_path(source)  # the resume is the same import again
        assert res.rejected == 0 and res.skipped >= done and res.added + res.updated + res.skipped == N_CASES, res.to_dict()
        after = kb.check()
        assert after.problems == 0, after.summary()
        assert _hashes(kb) == reference["hashes"]  # same case ids, same content hashes
        assert_same_state(kb_state(kb), reference["state"])  # same points, payloads, vectors and media files
    finally:
        kb.close()
    ran.append(point["phase"])
    if rc == -signal.SIGKILL:
        survived.append(point["phase"])


def test_kill_points_cover_every_phase() -> None:
    """Runs last: every write phase was hit by real kills (reported in the summary with ``-rA``).

    The 15 in-process kill points must all land; an outside kill whose delay outlasted the import is a valid resume
    of a finished import but not a kill, so it is counted separately.
    """
    if len(ran) < KILLS:
        pytest.skip(f"only {len(ran)} of {KILLS} kill points were selected (run the whole module)")
    inside = [p for p in survived if p != "delay"]
    assert len(inside) == KILLS - KILLS // len(PHASES), survived
    assert {"media-write", "media-upsert", "text-upsert"} <= set(survived)
    print(f"kill points survived: {len(survived)} ({', '.join(f'{p}={survived.count(p)}' for p in PHASES)})")
