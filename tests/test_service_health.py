"""``/healthz`` and ``/readyz`` of the served app: not ready while it starts and imports the sample KB, ready after;
a store built by another embedder keeps it not ready with the reason (the real ``ui.serving.serve`` flow, tiny models,
real Edge store and Gradio)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
from ui_helpers import ADMIN, Served, free_port, served_app

app = served_app("health")


def test_served_app_answers_probes(app: Served) -> None:
    r = httpx.get(app.url + "/healthz", timeout=10)
    assert r.status_code == 200 and r.json() == {"status": "alive"}
    r = httpx.get(app.url + "/readyz", timeout=10)
    assert r.status_code == 200 and r.json()["ready"] is True, r.text
    assert r.headers["content-type"].startswith("application/json")


def _settings(data: Path):
    from rag.config import Settings

    return Settings(data_dir=data, max_new_tokens=4)


def _run(data: Path, port: int, loaded, *, sample: bool):
    from ui.serving import ServeHandle, serve
    from ui.settings import UISettings

    h = ServeHandle()
    result: dict[str, object] = {}

    def target() -> None:
        try:
            result["code"] = serve(_settings(data), models="tiny", ui=UISettings(), sample=sample, host="127.0.0.1",
                                   port=port, loaded=loaded, credentials=ADMIN, handle=h, signals=False)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            result["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return h, t, result


def _poll(url: str, until: float, stop_when_ready: bool = True) -> list[tuple[int, str]]:
    seen: list[tuple[int, str]] = []
    while time.monotonic() < until:
        try:
            r = httpx.get(url + "/readyz", timeout=5)
            body = r.json()
            seen.append((r.status_code, body["reason"]))
            if stop_when_ready and r.status_code == 200:
                return seen
        except (httpx.HTTPError, ValueError):
            seen.append((0, "no answer"))
        time.sleep(0.02)
    return seen


def test_not_ready_during_start_and_sample_import_then_ready(tmp_path: Path, embedder, reranker, generator) -> None:
    from rag.models.factory import LoadedModels

    port = free_port()
    loaded = LoadedModels(which="tiny", embedder=embedder, reranker=reranker, generator=generator)
    h, t, result = _run(tmp_path / "data", port, loaded, sample=True)
    url = f"http://127.0.0.1:{port}"
    try:
        seen = _poll(url, time.monotonic() + 600)
        assert "error" not in result, result
        assert seen and seen[-1][0] == 200, seen[-5:]
        not_ready = [reason for code, reason in seen if code == 503]
        assert any("importing the sample" in r for r in not_ready), sorted(set(not_ready))
        # the probe answered before the sample import finished, and the sample is in the store once ready
        assert h.services is not None and h.services.kb.count_cases() > 0  # type: ignore[attr-defined]
        assert httpx.get(url + "/healthz", timeout=5).json() == {"status": "alive"}
        # the app serves the UI on the same port
        assert httpx.get(url + "/", timeout=10).status_code == 200
    finally:
        h.stop.set()
        t.join(timeout=60)
    assert result.get("code") == 0, result


def test_store_of_another_embedder_stays_not_ready_with_reason(tmp_path: Path, embedder, reranker, generator) -> None:
    from rag.models.factory import LoadedModels
    from rag.store import open_store

    data = tmp_path / "data"
    other = open_store(embedder_id="someone/else-embedder", dim=32, config=_settings(data).store_config())
    other.close()
    port = free_port()
    loaded = LoadedModels(which="tiny", embedder=embedder, reranker=reranker, generator=generator)
    h, t, result = _run(data, port, loaded, sample=False)
    url = f"http://127.0.0.1:{port}"
    try:
        assert h.started.wait(120), result
        r = httpx.get(url + "/readyz", timeout=5)
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["ready"] is False and "another embedder" in body["reason"]
        assert "someone/else-embedder" in body["reason"] and "reindex" in body["reason"], body
        time.sleep(1.0)  # it stays so (no restart loop, no silent switch)
        r = httpx.get(url + "/readyz", timeout=5)
        assert r.status_code == 503 and "someone/else-embedder" in r.json()["reason"]
        assert httpx.get(url + "/healthz", timeout=5).status_code == 200
    finally:
        h.stop.set()
        t.join(timeout=60)
    assert result.get("code") == 2, result
