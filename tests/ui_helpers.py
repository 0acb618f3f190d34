"""Shared by the UI tests: a real app (tiny models, real Qdrant Edge + KB ingestion) served on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import httpx
import pytest
from conftest import case_picture

ADMIN = ("admin", "correct-horse-battery")

#: (id, title, product line, model, symptom, colour). One case carries markup that must stay inert in the browser.
UI_CASES = [
    ("prn-e13", "Fuser error E13 on laser printer", "printers", "LP-500", "Display shows E13 after warm-up.", (200, 40, 40)),
    ("prn-jam2", "Paper jam in tray 2", "printers", "LP-500", "Paper jams at the tray 2 pick roller.", (40, 200, 40)),
    ("hvac-f3", "Rooftop unit fault F3: high pressure", "hvac", "RTU-20", "Unit trips on F3 in hot weather.", (40, 40, 200)),
    ("pump-seal", "Pump seal leak, pressure drops to 0 bar", "pumps", "CP-7", "Water under the pump, gauge at 0.", (200, 200, 40)),
    ("xss-case", "<img src=x onerror=\"window.__xss=1\">Evil title", "printers", "LP-500",
     "<script>window.__xss=2</script> Toner <b>smears</b> [click](javascript:window.__xss=3)", (90, 90, 90)),
]


@dataclass
class RecordingGenerator:
    """A pass-through spy on the real generator: every call goes to it unchanged; the messages it was given are kept
    so a test can read the prompt the generator actually received."""

    inner: Any
    calls: list[list[dict[str, Any]]] = field(default_factory=list)

    def stream(self, messages: Sequence[dict[str, Any]], *args: Any, **kwargs: Any) -> Iterator[str]:
        self.calls.append(list(messages))
        return self.inner.stream(messages, *args, **kwargs)

    def generate(self, messages: Sequence[dict[str, Any]], *args: Any, **kwargs: Any) -> str:
        self.calls.append(list(messages))
        return self.inner.generate(messages, *args, **kwargs)

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass
class Served:
    url: str
    services: Any
    demo: Any
    images: dict[str, Path]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_app(root: Path, embedder: Any, reranker: Any, generator: Any, **settings_overrides: Any) -> Served:
    """Build services on ``root`` (KB ingestion of UI_CASES), launch the app, return once it answers HTTP."""
    from knowledge_base.schema import CaseInput
    from rag.config import Settings
    from rag.models.factory import LoadedModels
    from ui.app import launch
    from ui.services import build_services

    opts = dict(data_dir=root / "data", max_new_tokens=8, abstain_rerank_threshold=0.0,
                abstain_retrieval_threshold=1.5, rerank_top_n=5)
    opts.update(settings_overrides)
    services = build_services(Settings(**opts), models="tiny", credentials=ADMIN, load_sample=False,
                              loaded=LoadedModels(which="tiny", embedder=embedder, reranker=reranker,
                                                  generator=generator))
    images: dict[str, Path] = {}
    (root / "src").mkdir(exist_ok=True)
    for i, (cid, title, line, model, symptom, colour) in enumerate(UI_CASES):
        p = root / "src" / f"{cid}.png"
        case_picture(i, colour).save(p)
        images[cid] = p
        services.kb.add_case(CaseInput(id=cid, title=title, product_line=line, equipment_model=model, symptom=symptom,
                                       cause="Worn part.", solution=["Power off.", "Replace the part.", "Test."]),
                             media=[str(p)])
    demo, url = launch(services, host="127.0.0.1", port=free_port(), block=False)
    for _ in range(100):
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    return Served(url=url.rstrip("/"), services=services, demo=demo, images=images)


def stop_app(s: Served) -> None:
    s.demo.close()
    s.services.close()


def served_app(label: str) -> Any:
    """A module-scoped ``app`` fixture: the app served with the session's tiny models under a fresh tmp dir named
    ``label``, closed after the module. Use as ``app = served_app("health")`` in a test module."""

    @pytest.fixture(scope="module")
    def app(tmp_path_factory: pytest.TempPathFactory, embedder: Any, reranker: Any, generator: Any) -> Iterator[Served]:
        s = serve_app(tmp_path_factory.mktemp(label), embedder, reranker, generator)
        yield s
        stop_app(s)

    return app


def component_id(config: dict[str, Any], elem_id: str) -> int:
    return next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == elem_id)


def fn_index_for(config: dict[str, Any], elem_id: str, event: str = "click") -> int:
    """Index of the first event handler bound to the component with ``elem_id`` (what the browser would call)."""
    cid = component_id(config, elem_id)
    for i, dep in enumerate(config["dependencies"]):
        if [cid, event] in [list(t) for t in dep.get("targets", [])] and dep.get("backend_fn", True):
            return dep.get("id", i)
    raise KeyError(f"no {event} handler on #{elem_id}")


def raw_call(url: str, fn_index: int, data: list[Any], session_hash: str | None = None, trigger_id: int | None = None,
             timeout: float = 60) -> dict[str, Any]:
    """Call an event over Gradio's HTTP queue protocol exactly as the browser does; returns the completion message."""
    session_hash = session_hash or uuid.uuid4().hex[:11]
    with httpx.Client(base_url=url, timeout=timeout) as c:
        r = c.post("/gradio_api/queue/join", json={"data": data, "fn_index": fn_index, "session_hash": session_hash,
                                                   "event_data": None, "trigger_id": trigger_id})
        if r.status_code != 200:
            return {"msg": "http_error", "status": r.status_code, "text": r.text}
        with c.stream("GET", "/gradio_api/queue/data", params={"session_hash": session_hash}) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_completed":
                    return msg
    raise AssertionError("no process_completed message")
