"""``ragvqa kb …`` while ``ragvqa serve`` holds the data dir: every command goes through the app's local channel
(``ui.control``) with the same output and exit codes, the chat sees the change at once, and the channel refuses a
wrong or missing token and anything a browser could send.

The app is the real ``ui.serving.serve`` flow (tiny models, Edge store, Gradio) in a thread of this process; the CLI
runs as separate processes, as a user would run it.
"""

from __future__ import annotations

import http.client
import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import case_picture
from gradio_client import Client
from kb_support import case_dict, write_jsonl
from ui_helpers import ADMIN, free_port

ROOT = Path(__file__).resolve().parents[1]


class Running:
    def __init__(self, data: Path, url: str, handle: Any, thread: threading.Thread) -> None:
        self.data, self.url, self.handle, self.thread = data, url, handle, thread

    def kb(self, *args: str, cwd: Path | None = None, stdin: str | None = None,
           module: str = "knowledge_base.cli") -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", module, *(["kb"] if module == "ui.cli" else []), *args, "--data-dir",
                str(self.data)]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", "COLUMNS": "200"}
        return subprocess.run(argv, cwd=cwd or ROOT, env=env, input=stdin or "", capture_output=True, text=True,
                              timeout=300)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, embedder, reranker, generator):
    from rag.config import Settings
    from rag.models.factory import LoadedModels
    from ui.serving import ServeHandle, serve
    from ui.settings import UISettings

    data = tmp_path_factory.mktemp("svc-cli") / "data"
    port = free_port()
    h = ServeHandle()
    settings = Settings(data_dir=data, max_new_tokens=4, abstain_rerank_threshold=0.0, rerank_top_n=5)
    loaded = LoadedModels(which="tiny", embedder=embedder, reranker=reranker, generator=generator)
    t = threading.Thread(target=serve, kwargs=dict(settings=settings, models="tiny", ui=UISettings(), sample=False,
                                                   host="127.0.0.1", port=port, loaded=loaded, credentials=ADMIN,
                                                   handle=h, signals=False), daemon=True)
    t.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    else:
        raise AssertionError("app never got ready")
    yield Running(data, url, h, t)
    h.stop.set()
    t.join(timeout=60)


def _source(tmp: Path) -> tuple[Path, Path]:
    """A case.json (relative media path) and a 2-case JSONL, with their pictures, under ``tmp``."""
    tmp.mkdir(parents=True, exist_ok=True)
    case_picture(1, (10, 120, 200)).save(tmp / "kiosk.png")
    (tmp / "case.json").write_text(json.dumps(case_dict(1, ["kiosk.png"], id="svc-kiosk", product_line="kiosks",
                                                        equipment_model="K-9")))
    case_picture(2, (200, 120, 10)).save(tmp / "a.png")
    case_picture(3, (120, 10, 200)).save(tmp / "b.png")
    src = write_jsonl(tmp / "tickets.jsonl", [case_dict(2, ["a.png"], id="svc-a"), case_dict(3, ["b.png"], id="svc-b")])
    return tmp / "case.json", src


def _chat_gallery_ids(url: str, line: str) -> set[str]:
    client = Client(url, verbose=False, download_files=False)
    job = client.submit({"text": "what is wrong?", "files": []}, [], line, "", True, 1, None, api_name="/chat")
    out = job.result()
    gallery = out[2]
    return {g["caption"].split("[", 1)[1].split("]", 1)[0] for g in gallery}


def test_kb_commands_run_through_the_serving_app(running: Running, tmp_path: Path) -> None:
    case_json, src = _source(tmp_path / "src")
    # relative paths are resolved against the caller's directory, not the app's
    r = running.kb("add", "--file", "case.json", "--json", cwd=case_json.parent)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "added"
    # the chat sees it at once: the new product line filters the retrieval to the new case
    assert _chat_gallery_ids(running.url, "kiosks") == {"svc-kiosk"}

    r = running.kb("import", "tickets.jsonl", "--json", cwd=src.parent)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["added"] == 2 and res["rejected"] == 0, res

    r = running.kb("list", "--json")
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)
    assert listed["total"] == 3 and [c["id"] for c in listed["cases"]] == ["svc-a", "svc-b", "svc-kiosk"]

    r = running.kb("show", "svc-kiosk", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["product_line"] == "kiosks"

    r = running.kb("update", "svc-a", "--set", "product_line=vending", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "updated"
    assert running.handle.services.kb.get("svc-a").product_line == "vending"
    assert _chat_gallery_ids(running.url, "vending") == {"svc-a"}

    r = running.kb("stats", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["cases"] == 3

    r = running.kb("check", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["remaining"] == 0, r.stdout

    r = running.kb("export", "backup.zip", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "backup.zip").is_file() and "exported 3 case(s)" in r.stdout

    # the error paths keep their exit codes and messages
    r = running.kb("show", "no-such-case")
    assert r.returncode == 1 and "no case with id 'no-such-case'" in r.stderr
    r = running.kb("update", "svc-a", "--set", "nonsense")
    assert r.returncode == 2 and "expected FIELD=VALUE" in r.stderr

    r = running.kb("duplicates", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == [], r.stderr
    r = running.kb("audit", "--json", "--case", "svc-a")  # the audit log, read through the app as well
    assert r.returncode == 0 and [json.loads(x)["action"] for x in r.stdout.splitlines()] == ["import", "update"]
    # reindex swaps the app's embedder and store: refused with what to do instead (the admin tab), store untouched
    r = running.kb("reindex", "--yes")
    assert r.returncode == 2 and "admin tab" in " ".join(r.stderr.split()), r.stderr
    # delete asks: piped "y" answers the prompt in the app; --yes skips it
    r = running.kb("delete", "svc-b", stdin="n\n")
    assert r.returncode == 1 and running.handle.services.kb.get("svc-b") is not None
    r = running.kb("delete", "svc-b", stdin="y\n")
    assert r.returncode == 0 and "deleted" in r.stdout, (r.stdout, r.stderr)
    r = running.kb("delete", "svc-kiosk", "--yes", module="ui.cli")  # through `ragvqa kb` too
    assert r.returncode == 0, r.stderr
    assert running.handle.services.kb.get("svc-kiosk") is None
    assert "svc-kiosk" not in _chat_gallery_ids(running.url, "")

    # the audit log names the CLI user for each change
    entries = running.handle.services.kb.audit.entries()
    mine = [(e.action, e.case_id) for e in entries if e.actor.startswith("cli:") and e.status == "done"]
    for want in [("add", "svc-kiosk"), ("import", "svc-a"), ("import", "svc-b"), ("update", "svc-a"),
                 ("delete", "svc-b"), ("delete", "svc-kiosk")]:
        assert want in mine, (want, mine)


def _post(port: int, headers: dict[str, str], body: bytes = b"{}", method: str = "POST") -> tuple[int, dict[str, str], str]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request(method, "/v1/kb", body=body, headers=headers)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode()
    finally:
        c.close()


@pytest.fixture()
def channel(running: Running) -> tuple[int, str]:
    if running.handle.stop.is_set():
        pytest.skip("app stopped by an earlier test")
    info = json.loads((running.data / ".ragvqa-control.json").read_text())
    token = (running.data / ".ragvqa-control.token").read_text().strip()
    return int(info["port"]), token


def test_token_file_is_owner_only(running: Running, channel: tuple[int, str]) -> None:
    mode = stat.S_IMODE((running.data / ".ragvqa-control.token").stat().st_mode)
    assert mode == 0o600, oct(mode)


def test_wrong_or_missing_token_is_refused(running: Running, channel: tuple[int, str]) -> None:
    port, token = channel
    body = json.dumps({"argv": ["delete", "svc-a", "--yes"], "cwd": "/", "actor": "cli:x"}).encode()
    before = len(running.handle.services.kb.audit.entries())
    for headers in ({"Content-Type": "application/json"},
                    {"Content-Type": "application/json", "X-Ragvqa-Token": "wrong-" + token},
                    {"Content-Type": "application/json", "X-Ragvqa-Token": ""}):
        status, _, text = _post(port, headers, body)
        assert status == 401, (headers, status, text)
    assert len(running.handle.services.kb.audit.entries()) == before  # nothing ran (no delete attempted)


def test_browser_requests_cannot_reach_the_channel(running: Running, channel: tuple[int, str]) -> None:
    port, token = channel
    body = json.dumps({"argv": ["delete", "svc-a", "--yes"], "cwd": "/", "actor": "cli:x"}).encode()
    before = len(running.handle.services.kb.audit.entries())
    # even with the token, a request carrying a browser's Origin / Sec-Fetch-Site headers is refused
    for extra in ({"Origin": f"http://127.0.0.1:{port}"}, {"Origin": "null"}, {"Sec-Fetch-Site": "same-origin"}):
        status, _, _ = _post(port, {"Content-Type": "application/json", "X-Ragvqa-Token": token, **extra}, body)
        assert status == 403, extra
    # a CORS preflight is never granted, so a page cannot send the custom token header at all
    status, headers, _ = _post(port, {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST",
                                      "Access-Control-Request-Headers": "x-ragvqa-token"}, b"", method="OPTIONS")
    assert status == 403 and "access-control-allow-origin" not in headers
    # a form post (no custom header possible) is refused
    status, _, _ = _post(port, {"Content-Type": "application/x-www-form-urlencoded"}, b"argv=delete")
    assert status == 401
    # the public app has no such route: a browser session on the app's origin cannot reach it either
    r = httpx.post(running.url + "/v1/kb", content=body,
                   headers={"Content-Type": "application/json", "X-Ragvqa-Token": token}, timeout=10)
    assert r.status_code in (404, 405)
    # the channel listens on loopback only
    info = json.loads((running.data / ".ragvqa-control.json").read_text())
    assert info["host"] == "127.0.0.1" and info["pid"] == os.getpid()
    assert len(running.handle.services.kb.audit.entries()) == before  # nothing ran


def test_idle_open_stdin_does_not_hang(running: Running, channel: tuple[int, str]) -> None:
    """A caller that leaves stdin an open, silent pipe (cron wrappers, supervisors) still gets its answer."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    p = subprocess.Popen([sys.executable, "-m", "knowledge_base.cli", "stats", "--json", "--data-dir",
                          str(running.data)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env, cwd=ROOT)
    try:
        assert p.wait(timeout=60) == 0
        assert "cases" in json.loads(p.stdout.read() if p.stdout else "{}")
    finally:
        if p.stdin:
            p.stdin.close()
        if p.poll() is None:
            p.kill()


def test_lock_message_names_the_holder(running: Running, channel: tuple[int, str]) -> None:
    """Without the channel (its files gone, e.g. an app of an older version), the CLI opens the store itself and the
    lock error names the holder and what to do, without the old "nothing imported yet?" hint."""
    ctl = running.data / ".ragvqa-control.json"
    hidden = ctl.with_name("hidden-control.json")
    ctl.rename(hidden)
    try:
        r = running.kb("list", "--json")
    finally:
        hidden.rename(ctl)
    assert r.returncode == 1
    msg = " ".join(r.stderr.split())
    assert f"in use by process {os.getpid()}" in msg and " since 20" in msg, msg
    assert "stop that process" in msg and "nothing imported yet" not in msg, msg


def test_same_output_as_run_alone(running: Running, tmp_path: Path) -> None:
    """`kb list --json` and `kb stats --json` through the app print what the same command prints on the same data
    when no app runs (run alone after the app stopped)."""
    through = [running.kb("list", "--json"), running.kb("show", "svc-a", "--json")]
    assert all(r.returncode == 0 for r in through), [r.stderr for r in through]
    running.handle.stop.set()
    running.thread.join(timeout=60)
    assert not (running.data / ".ragvqa-control.json").exists()
    alone = [running.kb("list", "--json"), running.kb("show", "svc-a", "--json")]
    for a, b in zip(through, alone, strict=True):
        assert b.returncode == a.returncode
        assert json.loads(a.stdout) == json.loads(b.stdout)
