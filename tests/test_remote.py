"""Remote model backends against a model server started here on 127.0.0.1, backed by the app's own tiny models.

The server speaks the documented vLLM/OpenAI shapes (``/v1/embeddings`` and ``/classify`` with chat ``messages``,
``/v1/chat/completions`` with SSE) and, like vLLM, renders the received messages with the model's chat template and
decodes the data URLs. So equal outputs prove that the client sends what the local models see: layout, roles,
instruction and pixels.
"""

from __future__ import annotations

import json
import logging
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path
from typing import Any, Self

import numpy as np
import pytest
from conftest import populate_store
from PIL import Image

from rag.config import Settings, VisionBudget
from rag.models.encoding import Vision, encode, truncate
from rag.models.remote import (
    HttpEndpoint,
    RemoteEmbedder,
    RemoteError,
    RemoteGenerator,
    RemoteReranker,
    RemoteSettings,
    RemoteTimeoutError,
    RemoteUnavailableError,
    load_remote_or_none,
)
from rag.models.remote.media import decode_data_url
from rag.models.reranker import TEMPLATE_TAIL
from rag.models.vision import prepare_image, prepare_video

log = logging.getLogger(__name__)

INSTRUCTION = "Retrieve past support cases for this fault"


class LoopbackServer:
    """A ``ThreadingHTTPServer`` on a free loopback port, served from a daemon thread inside ``with``."""

    def _serve(self, handler: type[BaseHTTPRequestHandler], thread_name: str) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name=thread_name, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# -- a vLLM-shaped model server on the local tiny models ------------------------------------------------------------
class ModelServer(LoopbackServer):
    """Threaded HTTP server; records every request; can fail, hang or cut streams on demand."""

    def __init__(self, embedder: Any = None, reranker: Any = None, generator: Any = None) -> None:
        self.embedder, self.reranker, self.generator = embedder, reranker, generator
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.fail: dict[str, list[int]] = {}
        self.hang_s = 0.0
        self.cut_stream = False
        self.budget = VisionBudget()
        self._tmp = tempfile.TemporaryDirectory(prefix="fake-vllm-")
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()
        state = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt: str, *args: Any) -> None:  # quiet test output
                log.debug(fmt, *args)

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with state._lock:
                    state.requests.append((self.path, body))
                    pending = state.fail.get(self.path) or []
                    status = pending.pop(0) if pending else None
                if state.hang_s:
                    time.sleep(state.hang_s)
                    return
                if status is not None:
                    return self.send_json(status, {"error": {"message": "server busy", "code": status}},
                                          {"Retry-After": "0"})
                try:
                    if self.path == "/v1/embeddings":
                        return self.send_json(200, state.embeddings(body))
                    if self.path == "/classify":
                        return self.send_json(200, state.classify(body))
                    if self.path == "/v1/chat/completions":
                        if body.get("stream"):
                            return self.send_stream(state.chat_chunks(body))
                        return self.send_json(200, state.chat(body))
                    return self.send_json(404, {"detail": "Not Found"})
                except ValueError as e:
                    return self.send_json(400, {"object": "error", "message": str(e), "code": 400})

            def send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def send_stream(self, events: Iterator[dict[str, Any]]) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                for i, ev in enumerate(events):
                    if state.cut_stream and i == 2:
                        self.wfile.flush()
                        return  # the connection closes without finish_reason / [DONE]
                    self.wfile.write(b"data: " + json.dumps(ev).encode() + b"\n\n")
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

        self._serve(Handler, "fake-vllm")

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self._tmp.cleanup()

    def paths(self) -> list[str]:
        return [p for p, _ in self.requests]

    # -- what vLLM does with chat messages: decode media, apply the model's chat template ---------------------------
    def _media(self, part: dict[str, Any]) -> Any:
        kind = part["type"]
        url = part[kind]["url"]
        if kind == "image_url":
            mime, data = decode_data_url(url)
            assert mime.startswith("image/")
            return Image.open(BytesIO(data))
        if url.startswith("data:video/jpeg;base64,"):  # vLLM's multi-frame form
            import base64

            return [Image.open(BytesIO(base64.b64decode(f))) for f in url.split(",", 1)[1].split(",")]
        mime, data = decode_data_url(url)
        path = Path(self._tmp.name) / f"v{len(self.requests)}-{threading.get_ident()}.mp4"
        path.write_bytes(data)
        return str(path)

    def conversation(self, messages: list[dict[str, Any]]) -> tuple[list[dict], Vision]:
        vision = Vision([], [])
        conv = []
        for m in messages:
            content = m["content"]
            if isinstance(content, str):
                conv.append({"role": m["role"], "content": [{"type": "text", "text": content}]})
                continue
            items = []
            for part in content:
                if part["type"] == "text":
                    items.append({"type": "text", "text": part["text"]})
                elif part["type"] == "image_url":
                    vision.images.append(prepare_image(self._media(part), self.budget))
                    items.append({"type": "image"})
                elif part["type"] == "video_url":
                    video = prepare_video(self._media(part), self.budget)
                    if isinstance(video, Image.Image):
                        raise ValueError("a video needs at least 2 frames (t:1 must be larger than temporal_factor:2)")
                    vision.videos.append(video)
                    items.append({"type": "video"})
                else:
                    raise ValueError(f"unknown content part {part['type']!r}")
            conv.append({"role": m["role"], "content": items})
        return conv, vision

    def embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        conv, vision = self.conversation(body["messages"])
        enc = encode(self.embedder.processor, conv, vision)
        with self._model_lock:
            vec = self.embedder.forward_batch([enc])[0].cpu().numpy()
        return {"object": "list", "model": body.get("model"), "usage": {"prompt_tokens": enc.length},
                "data": [{"index": 0, "object": "embedding", "embedding": vec.tolist()}]}

    def classify(self, body: dict[str, Any]) -> dict[str, Any]:
        conv, vision = self.conversation(body["messages"])
        rr = self.reranker
        enc = truncate(encode(rr.processor, conv, vision), rr.max_length, rr.protected_ids, TEMPLATE_TAIL)
        with self._model_lock:
            p = rr.score_encoded([enc])[0]
        return {"object": "list", "model": body.get("model"), "usage": {"prompt_tokens": enc.length},
                "data": [{"index": 0, "label": "LABEL_0", "probs": [p], "num_classes": 1}]}

    def _gen_messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for m in messages:
            if isinstance(m["content"], str):
                out.append(m)
                continue
            items = []
            for part in m["content"]:
                if part["type"] == "text":
                    items.append(part)
                elif part["type"] == "image_url":
                    items.append({"type": "image", "image": self._media(part)})
                else:
                    items.append({"type": "video", "video": self._media(part)})
            out.append({"role": m["role"], "content": items})
        return out

    def _gen_kwargs(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(max_new_tokens=body["max_tokens"], temperature=body.get("temperature", 1.0),
                    top_p=body.get("top_p", 1.0), stop=body.get("stop"))

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._model_lock:
            text = self.generator.generate(self._gen_messages(body["messages"]), **self._gen_kwargs(body))
        return {"object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}

    def chat_chunks(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        base = {"object": "chat.completion.chunk", "model": body.get("model")}
        yield {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
        with self._model_lock:
            for chunk in self.generator.stream(self._gen_messages(body["messages"]), **self._gen_kwargs(body)):
                yield {**base, "choices": [{"index": 0, "delta": {"content": chunk}, "finish_reason": None}]}
        yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}


def endpoint(url: str, role: str, **kw: Any) -> HttpEndpoint:
    kw = {"timeout": 30.0, "retries": 2, "backoff_s": 0.01, "max_backoff_s": 0.05, **kw}
    return HttpEndpoint(url, role=role, **kw)


@pytest.fixture(scope="module")
def server(embedder, reranker, generator) -> Iterator[ModelServer]:
    with ModelServer(embedder, reranker, generator) as s:
        yield s


@pytest.fixture()
def fresh(server: ModelServer) -> ModelServer:
    server.requests.clear()
    server.fail.clear()
    server.hang_s, server.cut_stream = 0.0, False
    return server


def close(a: np.ndarray, b: np.ndarray, tol: float = 1e-5) -> bool:
    return bool(np.max(np.abs(np.asarray(a) - np.asarray(b))) <= tol)


# -- embedder --------------------------------------------------------------------------------------------------------
def test_remote_embedder_equals_local(fresh: ModelServer, embedder, media_dir: Path) -> None:
    items = [
        "fuser error E13 on the display",
        {"image": str(media_dir / "a.png")},
        {"image": str(media_dir / "b.jpg"), "text": "paper jam"},
        {"video": str(media_dir / "clip.mp4"), "text": "noise at start-up"},
        {"video": str(media_dir / "one_frame.mp4"), "image": str(media_dir / "a.png"), "text": "mixed"},
        {},
        {"text": "pump seal", "instruction": "Find the matching spare part"},
    ]
    remote = RemoteEmbedder(endpoint(fresh.url, "embedder"), "tiny-embedder", max_concurrency=3)
    local = embedder.embed(items, instruction=INSTRUCTION, batch_size=1)
    got = remote.embed(items, instruction=INSTRUCTION)
    assert got.shape == local.shape and got.dtype == np.float32
    assert close(got, local), np.abs(got - local).max()
    assert close(remote.embed(items[:3], instruction=INSTRUCTION, window=2), local[:3])  # submitted a few at a time
    assert remote.dim == embedder.dim
    # Matryoshka prefix + re-normalisation, client-side like the local embedder
    assert close(remote.embed(items[:3], instruction=INSTRUCTION, dim=64), embedder.embed(items[:3], instruction=INSTRUCTION, dim=64, batch_size=1))

    bodies = [b for p, b in fresh.requests if p == "/v1/embeddings"]
    assert all(b["add_generation_prompt"] is True and b["model"] == "tiny-embedder" for b in bodies)
    by_text = {json.dumps(b["messages"][1]["content"][-1]): b for b in bodies}
    mixed = by_text[json.dumps({"type": "text", "text": "mixed"})]["messages"]
    assert [m["role"] for m in mixed] == ["system", "user"]
    assert mixed[0]["content"] == [{"type": "text", "text": INSTRUCTION + "."}]  # official punctuation rule
    # one-frame video → an image before the item's image, then the text: the official order
    assert [p["type"] for p in mixed[1]["content"]] == ["image_url", "image_url", "text"]
    assert all(p["image_url"]["url"].startswith("data:image/png;base64,") for p in mixed[1]["content"][:2])
    clip = by_text[json.dumps({"type": "text", "text": "noise at start-up"})]["messages"][1]["content"]
    assert clip[0]["type"] == "video_url" and clip[0]["video_url"]["url"].startswith("data:video/mp4;base64,")
    assert any(b["messages"][1]["content"] == [{"type": "text", "text": "NULL"}] for b in bodies)
    assert any(b["messages"][0]["content"][0]["text"] == "Find the matching spare part." for b in bodies)


def test_remote_embedder_names_bad_items(fresh: ModelServer, media_dir: Path) -> None:
    from rag.models.embedder import EmbeddingError

    remote = RemoteEmbedder(endpoint(fresh.url, "embedder"), "tiny-embedder")
    with pytest.raises(EmbeddingError, match="item 1.*corrupt.png"):
        remote.embed(["ok", {"image": str(media_dir / "corrupt.png")}])
    with pytest.raises(EmbeddingError, match="unknown keys"):
        remote.embed([{"txt": "typo"}])
    assert fresh.paths().count("/v1/embeddings") <= 1  # bad media never leave the app


# -- reranker --------------------------------------------------------------------------------------------------------
def test_remote_reranker_equals_local_and_sees_images(fresh: ModelServer, reranker, media_dir: Path) -> None:
    query = {"image": str(media_dir / "a.png"), "text": "fuser error"}
    docs = [
        {"text": "Fuser fault E13: replace the fuser unit."},
        {"image": str(media_dir / "b.jpg")},
        {"text": "Fuser fault E13: replace the fuser unit.", "image": str(media_dir / "b.jpg")},
        {"video": str(media_dir / "clip.mp4"), "text": "belt noise"},
        {},
    ]
    remote = RemoteReranker(endpoint(fresh.url, "reranker"), "tiny-reranker", max_concurrency=3)
    got = remote.score(query, docs, instruction=INSTRUCTION)
    want = reranker.score(query, docs, instruction=INSTRUCTION, share_prefix=False)
    assert close(got, want), (got, want)
    assert close(got, reranker.score(query, docs, instruction=INSTRUCTION), tol=1e-4)  # the fast local path too
    assert abs(got[0] - got[2]) > 1e-4  # the document image changes the score: it reached the model
    assert remote.score(query, []) == []

    bodies = [b for p, b in fresh.requests if p == "/classify"]
    assert len(bodies) == len(docs) and all(b["add_generation_prompt"] is True for b in bodies)
    msgs = next(b["messages"] for b in bodies if b["messages"][1]["content"][-1].get("text") == "belt noise")
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert msgs[0]["content"][0]["text"].startswith("Judge whether the Document meets the requirements")
    user = msgs[1]["content"]
    assert user[0] == {"type": "text", "text": "<Instruct>: " + INSTRUCTION}
    assert user[1] == {"type": "text", "text": "<Query>:"}
    assert user[2]["type"] == "image_url" and user[2]["image_url"]["url"].startswith("data:image/png;base64,")
    assert user[3] == {"type": "text", "text": "fuser error"}
    assert user[4] == {"type": "text", "text": "\n<Document>:"}
    assert user[5]["type"] == "video_url" and user[6] == {"type": "text", "text": "belt noise"}


# -- generator -------------------------------------------------------------------------------------------------------
def chat(media_dir: Path, video: bool = False) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = []
    if video:
        content.append({"type": "video", "video": str(media_dir / "clip.mp4")})
    content += [{"type": "image", "image": str(media_dir / "b.jpg")}, {"type": "text", "text": "What is wrong?"}]
    return [{"role": "system", "content": "You are a support assistant."},
            {"role": "user", "content": "Printer shows E13"}, {"role": "assistant", "content": "Check the fuser."},
            {"role": "user", "content": content}]


def test_remote_generator_streams_the_local_greedy_text(fresh: ModelServer, generator, media_dir: Path) -> None:
    remote = RemoteGenerator(endpoint(fresh.url, "generator"), "tiny-generator")
    msgs = chat(media_dir)
    want = generator.generate(msgs, max_new_tokens=24)
    chunks = list(remote.stream(msgs, max_new_tokens=24))
    assert "".join(chunks) == want and want
    assert len(chunks) > 1  # really streamed, not one final block
    assert remote.generate(msgs, max_new_tokens=24) == want

    body = fresh.requests[0][1]
    assert body["stream"] is True and body["max_tokens"] == 24 and body["temperature"] == 0.0
    assert body["model"] == "tiny-generator" and "top_p" not in body  # greedy
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
    assert body["messages"][0]["content"] == "You are a support assistant."
    last = body["messages"][-1]["content"]
    assert last[0]["type"] == "image_url" and last[0]["image_url"]["url"].startswith("data:image/png;base64,")
    # the image was resized client-side to the official budget (multiples of 32), so the server does not resize
    _, png = decode_data_url(last[0]["image_url"]["url"])
    assert all(s % 32 == 0 for s in Image.open(BytesIO(png)).size)
    assert last[1] == {"type": "text", "text": "What is wrong?"}

    stop = want[3:6]
    assert "".join(remote.stream(msgs, max_new_tokens=24, stop=[stop])) == generator.generate(msgs, max_new_tokens=24, stop=[stop])


def test_remote_generator_video(fresh: ModelServer, generator, media_dir: Path) -> None:
    remote = RemoteGenerator(endpoint(fresh.url, "generator"), "tiny-generator")
    msgs = chat(media_dir, video=True)
    assert "".join(remote.stream(msgs, max_new_tokens=12)) == generator.generate(msgs, max_new_tokens=12)
    parts = fresh.requests[-1][1]["messages"][-1]["content"]
    assert parts[0]["type"] == "video_url" and parts[0]["video_url"]["url"].startswith("data:video/mp4;base64,")

    frames = RemoteGenerator(endpoint(fresh.url, "generator"), "tiny-generator", video_mode="frames")
    parts = frames.to_openai_messages(msgs)[-1]["content"]
    kinds = [p["type"] for p in parts]
    assert "video_url" not in kinds and kinds.count("image_url") > 2  # sampled frames + the photo


def test_remote_generator_cancel_and_broken_stream(fresh: ModelServer, media_dir: Path) -> None:
    remote = RemoteGenerator(endpoint(fresh.url, "generator"), "tiny-generator")
    cancel = threading.Event()
    got = []
    for chunk in remote.stream(chat(media_dir), max_new_tokens=24, cancel=cancel):
        got.append(chunk)
        cancel.set()
    assert len(got) == 1

    fresh.requests.clear()
    fresh.cut_stream = True
    with pytest.raises(RemoteError, match="without finishing"):
        list(remote.stream(chat(media_dir), max_new_tokens=24))
    assert len(fresh.requests) == 1  # never retried once the stream started


# -- transport: retries, timeouts, unreachable servers ----------------------------------------------------------------
def test_retries_503_then_succeeds(fresh: ModelServer, embedder) -> None:
    fresh.fail["/v1/embeddings"] = [503, 503]
    remote = RemoteEmbedder(endpoint(fresh.url, "embedder", retries=2), "tiny-embedder")
    assert close(remote.embed(["retry me"]), embedder.embed(["retry me"]))
    assert fresh.paths() == ["/v1/embeddings"] * 3

    fresh.requests.clear()
    fresh.fail["/v1/chat/completions"] = [429]
    gen = RemoteGenerator(endpoint(fresh.url, "generator", retries=1), "tiny-generator")
    assert "".join(gen.stream([{"role": "user", "content": "hi"}], max_new_tokens=4)) is not None
    assert fresh.paths() == ["/v1/chat/completions"] * 2  # a 429 before the stream started is retried

    fresh.requests.clear()
    fresh.fail["/classify"] = [503, 503]
    rr = RemoteReranker(endpoint(fresh.url, "reranker", retries=1), "tiny-reranker")
    with pytest.raises(RemoteError, match=r"reranker server at http://127\.0\.0\.1:\d+/classify answered HTTP 503") as e:
        rr.score({"text": "q"}, [{"text": "d"}])
    assert e.value.status == 503


def test_hanging_server_times_out_clearly(fresh: ModelServer) -> None:
    fresh.hang_s = 3.0
    remote = RemoteEmbedder(endpoint(fresh.url, "embedder", timeout=0.5), "tiny-embedder")
    t0 = time.monotonic()
    with pytest.raises(RemoteTimeoutError, match=r"embedder server at http://127\.0\.0\.1:\d+/v1/embeddings did not answer within 0\.5 s"):
        remote.embed(["hello"])
    assert time.monotonic() - t0 < 2.5  # a read timeout is not retried
    assert len(fresh.requests) == 1


def test_unreachable_server_is_named() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    remote = RemoteGenerator(endpoint(f"http://127.0.0.1:{port}/v1", "generator", retries=1), "m")
    with pytest.raises(RemoteUnavailableError, match=rf"cannot reach the generator server at http://127\.0\.0\.1:{port}/v1/chat/completions after 2 attempt"):
        remote.generate([{"role": "user", "content": "hi"}])


# -- settings and the pipeline ----------------------------------------------------------------------------------------
def test_load_remote_or_none(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for var in ("RAGVQA_GENERATOR_BACKEND", "RAGVQA_EMBEDDER_BACKEND", "RAGVQA_RERANKER_BACKEND"):
        monkeypatch.delenv(var, raising=False)
    assert load_remote_or_none("generator", Settings()) is None
    monkeypatch.setenv("RAGVQA_EMBEDDER_BACKEND", "vllm")
    monkeypatch.setenv("RAGVQA_EMBEDDER_URL", "http://127.0.0.1:9/v1/")
    monkeypatch.setenv("RAGVQA_REMOTE_RETRIES", "5")
    emb = load_remote_or_none("embedder", Settings(embedder_model="Qwen/Qwen3-VL-Embedding-8B"))
    assert isinstance(emb, RemoteEmbedder) and emb.endpoint.base_url == "http://127.0.0.1:9"
    assert emb.name == emb.model == "Qwen/Qwen3-VL-Embedding-8B" and emb.endpoint.retries == 5
    rs = RemoteSettings(reranker_backend="vllm")
    with pytest.raises(ValueError, match="RAGVQA_RERANKER_URL"):
        load_remote_or_none("reranker", Settings(), rs)
    gen = load_remote_or_none("generator", RemoteSettings(generator_backend="openai", generator_url="http://127.0.0.1:9",
                                                          generator_served_model="qwen-vl"))
    assert isinstance(gen, RemoteGenerator) and gen.model == "qwen-vl" and gen.count_tokens("abcdef") == 2


def test_factory_picks_the_server_per_role(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``load_models(..., "real")`` (serve, ask, kb, eval) uses the model server where the settings name one."""
    from rag.models.factory import load_models
    from rag.models.loading import ModelNotAvailableError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAGVQA_EMBEDDER_BACKEND", "vllm")
    monkeypatch.setenv("RAGVQA_EMBEDDER_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("RAGVQA_RERANKER_BACKEND", raising=False)
    models = load_models(Settings(), "real", need=("embedder",))
    assert isinstance(models.embedder, RemoteEmbedder)
    with pytest.raises(ModelNotAvailableError):  # the reranker is still local, and its weights are not here
        load_models(Settings(), "real", need=("reranker",))


def test_pipeline_runs_unchanged_on_remote_models(fresh: ModelServer, tmp_path: Path, embedder, reranker, generator) -> None:
    from rag.pipeline import Query, RagPipeline
    from rag.store import open_store

    store = open_store(embedder_id="tiny", dim=embedder.dim, data_dir=tmp_path)
    try:
        paths = populate_store(store, embedder, tmp_path / "media")
        settings = Settings(data_dir=tmp_path, max_new_tokens=12, abstain_rerank_threshold=0.0, rerank_top_n=2)
        remote = dict(embedder=RemoteEmbedder(endpoint(fresh.url, "embedder"), "e"),
                      reranker=RemoteReranker(endpoint(fresh.url, "reranker"), "r"),
                      generator=RemoteGenerator(endpoint(fresh.url, "generator"), "g"))
        query = Query(text="What is wrong?", images=[str(paths["hvac-f3"])])
        local_answer = RagPipeline.from_components(embedder=embedder, reranker=reranker, generator=generator,
                                                   store=store, settings=settings).answer(query)
        remote_answer = RagPipeline.from_components(store=store, settings=settings, **remote).answer(query)
        assert [c.case_id for c in remote_answer.cases] == [c.case_id for c in local_answer.cases]
        assert remote_answer.text == local_answer.text
        assert {"/v1/embeddings", "/classify", "/v1/chat/completions"} <= set(fresh.paths())
    finally:
        store.close()


def test_a_model_server_gets_the_query_photo_as_uploaded(fresh: ModelServer, tmp_path: Path, embedder,
                                                         reranker) -> None:
    """Local CPU embedder and reranker, generator on a server: the pipeline does not shrink the query photo (the
    server applies its own, official budget); the local roles still cap what they read themselves."""
    import base64
    import io

    from PIL import Image

    from rag.pipeline import Query, RagPipeline
    from rag.store import open_store

    store = open_store(embedder_id="tiny", dim=embedder.dim, data_dir=tmp_path)
    try:
        populate_store(store, embedder, tmp_path / "media")
        settings = Settings(data_dir=tmp_path, max_new_tokens=4, abstain_rerank_threshold=0.0, rerank_top_n=1,
                            context_case_images=0)
        pipe = RagPipeline.from_components(embedder=embedder, reranker=reranker, store=store, settings=settings,
                                           generator=RemoteGenerator(endpoint(fresh.url, "generator"), "g"))
        assert pipe.fit_stage is None
        assert pipe.retrieve_stage.embedder.budget.max_pixels == 256 * 1024  # the local query embedder is capped
        photo = Image.fromarray((np.random.RandomState(0).rand(960, 1280, 3) * 255).astype("uint8"))
        pipe.answer(Query(text="What is wrong?", images=[photo]))
        (body,) = [b for p, b in fresh.requests if p == "/v1/chat/completions"]
        urls = [part["image_url"]["url"] for m in body["messages"] if isinstance(m["content"], list)
                for part in m["content"] if part["type"] == "image_url"]
        assert len(urls) == 1
        sent = Image.open(io.BytesIO(base64.b64decode(urls[0].split(",", 1)[1])))
        assert sent.size == (1280, 960)
    finally:
        store.close()


# -- wire format: requests checked against the documented schemas, answers written by hand -------------------------
# The ModelServer above computes its answers with the app's own code, so equality there holds by construction. Here
# a server that knows nothing of the app records each request and replies with bodies written below, in the shapes
# the vLLM and OpenAI documentation give (read with the project's search tool):
#
# - vLLM chat embeddings, ``POST /v1/embeddings`` with ``messages``: request model ``EmbeddingChatRequest``
#   https://docs.vllm.ai/en/v0.14.0/api/vllm/entrypoints/pooling/embed/protocol/ and the client example
#   https://docs.vllm.ai/en/v0.9.2/examples/online_serving/openai_chat_embedding_client_for_multimodal.html
#   (content parts ``{"type": "image_url", "image_url": {"url": ...}}`` / ``{"type": "text", "text": ...}``,
#   ``encoding_format: "float"``, answer ``data[0].embedding``), the OpenAI embeddings object
#   https://platform.openai.com/docs/api-reference/embeddings/object
# - vLLM classification, ``POST /classify``: ``ClassificationChatRequest`` and ``ClassificationData`` (index, label,
#   probs, num_classes) https://docs.vllm.ai/en/v0.16.0/api/vllm/entrypoints/pooling/classify/protocol/, example
#   https://docs.vllm.ai/en/latest/examples/pooling/classify/, full response body as shown in SGLang's vLLM-compatible
#   page https://docs.sglang.io/docs/supported-models/classify_models
# - OpenAI chat completions and streaming chunks (``object: "chat.completion.chunk"``, ``choices[0].delta.content``,
#   ``finish_reason``, an empty ``choices`` usage chunk, ``data: [DONE]``):
#   https://platform.openai.com/docs/api-reference/chat/create, https://platform.openai.com/docs/api-reference/chat-streaming
#   (typed in https://v03.api.js.langchain.com/interfaces/_langchain_openai.OpenAIClient.Chat.Completions.ChatCompletionChunk.Choice-1.html)
# - error bodies: OpenAI's envelope ``{"error": {"message", "type", "param", "code"}}``
#   https://platform.openai.com/docs/guides/error-codes (as reproduced in https://docs.llmgateway.io/resources/error-handling);
#   vLLM's older bare ``ErrorResponse`` ``{"object": "error", "message", "type", "param", "code"}`` (quoted in
#   https://github.com/openai/openai-agents-python/issues/2129 and https://github.com/vllm-project/vllm/pull/10463);
#   FastAPI request validation ``{"detail": [{"type", "loc", "msg", "input"}]}`` (HTTP 422).
import base64 as _b64  # noqa: E402
import re as _re  # noqa: E402

#: Fields of vLLM's EmbeddingChatRequest (the doc above); a client field outside it would be ignored or refused.
EMBED_CHAT_FIELDS = {"model", "messages", "encoding_format", "dimensions", "user", "truncate_prompt_tokens",
                     "add_generation_prompt", "continue_final_message", "add_special_tokens", "chat_template",
                     "chat_template_kwargs", "mm_processor_kwargs", "priority", "request_id", "normalize"}
#: ClassificationChatRequest: the pooling basics plus the chat mixin (same chat fields as above) and activation.
CLASSIFY_CHAT_FIELDS = EMBED_CHAT_FIELDS - {"encoding_format", "dimensions"} | {"use_activation"}
#: OpenAI chat-completions request fields this client may use.
CHAT_FIELDS = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stream", "stop",
               "stream_options", "seed", "n", "presence_penalty", "frequency_penalty", "user"}
DATA_URL = _re.compile(r"^data:(image/png|image/jpeg|video/mp4);base64,([A-Za-z0-9+/]+={0,2})$")
JUDGE = 'Judge whether the Document meets the requirements based on the Query and the Instruct provided. ' \
        'Note that the answer can only be "yes" or "no".'  # the official reranker's system prompt


class ScriptedServer(LoopbackServer):
    """Loopback HTTP server that records requests (method, path, headers, JSON body) and answers each path with
    the next reply scripted for it: ``(status, content_type, body bytes)``."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.replies: dict[str, list[tuple[int, str, bytes]]] = {}
        state = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug(fmt, *args)

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                state.requests.append({"method": "POST", "path": self.path, "body": json.loads(raw),
                                       "headers": {k.lower(): v for k, v in self.headers.items()}})
                queue = state.replies.get(self.path) or []
                status, ctype, data = queue.pop(0) if queue else (404, "application/json", b'{"detail": "Not Found"}')
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                if ctype == "text/event-stream":
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()

        self._serve(Handler, "scripted-server")

    def reply(self, path: str, status: int, body: Any, ctype: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.replies.setdefault(path, []).append((status, ctype, data))

    def reply_sse(self, path: str, events: list[Any]) -> None:
        """Server-sent events as servers write them: ``data: <json>`` + blank line, ending with ``data: [DONE]``."""
        lines = [f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events]
        self.reply(path, 200, "".join(lines).encode(), "text/event-stream")


@pytest.fixture()
def scripted() -> Iterator[ScriptedServer]:
    with ScriptedServer() as s:
        yield s


def parts_of(content: Any) -> list[tuple[str, Any]]:
    """Check every content part against the documented shapes; returns (kind, text | (format, size)) per part."""
    assert isinstance(content, list) and content, content
    out: list[tuple[str, Any]] = []
    for part in content:
        assert isinstance(part, dict) and isinstance(part.get("type"), str), part
        kind = part["type"]
        assert set(part) == {"type", kind}, part  # a part carries its type and one field named after it
        if kind == "text":
            assert isinstance(part["text"], str)
            out.append(("text", part["text"]))
            continue
        assert kind in ("image_url", "video_url") and set(part[kind]) == {"url"}, part
        m = DATA_URL.match(part[kind]["url"])
        assert m, part[kind]["url"][:60]
        data = _b64.b64decode(m.group(2), validate=True)
        if kind == "image_url":
            img = Image.open(BytesIO(data))
            assert img.format == m.group(1).split("/")[1].upper(), (img.format, m.group(1))
            out.append(("image", (img.format, img.size)))
        else:
            assert data[4:8] == b"ftyp"  # an MP4 file, as its MIME type says
            out.append(("video", len(data)))
    return out


def _usage() -> dict[str, Any]:
    return {"prompt_tokens": 41, "total_tokens": 41, "completion_tokens": 0, "prompt_tokens_details": None}


def test_wire_embeddings_request_and_answer(scripted: ScriptedServer) -> None:
    """``POST /v1/embeddings``: the documented chat-embeddings request; a hand-written answer gives a hand-computed
    vector (128 dims, 3 at 0, 4 at 1, 12 at 100: norm 13 → 3/13, 4/13, 12/13; its 64-dim Matryoshka prefix has norm
    5 → 0.6, 0.8)."""
    from conftest import noise_image

    raw = [0.0] * 128
    raw[0], raw[1], raw[100] = 3.0, 4.0, 12.0
    full = np.zeros((1, 128))
    full[0, [0, 1, 100]] = [3 / 13, 4 / 13, 12 / 13]
    prefix = np.zeros((1, 64))
    prefix[0, [0, 1]] = [0.6, 0.8]
    answer = {"id": "embd-7f3a", "object": "list", "created": 1764400000, "model": "Qwen/Qwen3-VL-Embedding-2B",
              "data": [{"index": 0, "object": "embedding", "embedding": raw}], "usage": _usage()}
    scripted.reply("/v1/embeddings", 200, answer)
    scripted.reply("/v1/embeddings", 200, answer)
    remote = RemoteEmbedder(endpoint(scripted.url, "embedder", api_key="sk-test-123"), "Qwen/Qwen3-VL-Embedding-2B")
    v = remote.embed([{"image": noise_image(1, 160, 120), "text": "E13 on the display"}], instruction="Find the case")
    np.testing.assert_allclose(v, full, rtol=0, atol=1e-7)  # float32 vectors: 1e-7 is a few ulps at these values
    np.testing.assert_allclose(remote.embed(["pump leaks"], dim=64), prefix, rtol=0, atol=1e-7)

    req = scripted.requests[0]
    assert req["method"] == "POST" and req["path"] == "/v1/embeddings"
    assert req["headers"]["content-type"] == "application/json"
    assert req["headers"]["authorization"] == "Bearer sk-test-123"
    body = req["body"]
    assert set(body) <= EMBED_CHAT_FIELDS, set(body) - EMBED_CHAT_FIELDS
    assert body["model"] == "Qwen/Qwen3-VL-Embedding-2B" and body["encoding_format"] == "float"
    assert body["add_generation_prompt"] is True  # the pooled token is the "\n" after "assistant"
    msgs = body["messages"]
    assert [m["role"] for m in msgs] == ["system", "user"] and all(set(m) == {"role", "content"} for m in msgs)
    assert parts_of(msgs[0]["content"]) == [("text", "Find the case.")]
    # images before texts; 160×120 is snapped to multiples of 32 by the official resize: 160×128
    assert parts_of(msgs[1]["content"]) == [("image", ("PNG", (160, 128))), ("text", "E13 on the display")]
    second = scripted.requests[1]["body"]["messages"]
    assert parts_of(second[0]["content"]) == [("text", "Represent the user's input.")]  # the official default
    assert parts_of(second[1]["content"]) == [("text", "pump leaks")]


def test_wire_classify_request_and_answer(scripted: ScriptedServer, media_dir: Path) -> None:
    """``POST /classify``: the official pair as chat ``messages``; the score is the documented ``probs`` (one label:
    the value; two labels ["no", "yes"]: the second); another head is refused with the fix named."""
    def answer(probs: list[float]) -> dict[str, Any]:
        return {"id": "classify-9bf1", "object": "list", "created": 1764400000, "model": "Qwen/Qwen3-VL-Reranker-2B",
                "data": [{"index": 0, "label": "LABEL_0", "probs": probs, "num_classes": len(probs)}],
                "usage": _usage()}

    for probs in ([0.73], [0.2, 0.8], [0.1, 0.2, 0.7]):
        scripted.reply("/classify", 200, answer(probs))
    rr = RemoteReranker(endpoint(scripted.url, "reranker"), "Qwen/Qwen3-VL-Reranker-2B", image_format="jpeg")
    assert rr.score({"text": "pump leaks"}, [{"image": str(media_dir / "a.png"), "text": "seal worn"}]) == [0.73]
    assert rr.score({"text": "pump leaks"}, [{"text": "seal worn"}]) == [0.8]
    with pytest.raises(RemoteError, match=r"/classify returned 3 classes; serve the reranker with --hf-overrides "
                                          r"classifier_from_token \[\"no\", \"yes\"\]"):
        rr.score({"text": "q"}, [{"text": "d"}])

    req = scripted.requests[0]
    assert req["path"] == "/classify" and req["headers"]["content-type"] == "application/json"
    body = req["body"]
    assert set(body) <= CLASSIFY_CHAT_FIELDS, set(body) - CLASSIFY_CHAT_FIELDS
    assert body["model"] == "Qwen/Qwen3-VL-Reranker-2B" and body["add_generation_prompt"] is True
    system, user = body["messages"]
    assert system["role"] == "system" and parts_of(system["content"]) == [("text", JUDGE)]
    assert user["role"] == "user"
    assert parts_of(user["content"]) == [
        ("text", "<Instruct>: Given a search query, retrieve relevant candidates that answer the query."),
        ("text", "<Query>:"), ("text", "pump leaks"), ("text", "\n<Document>:"),
        ("image", ("JPEG", (160, 128))), ("text", "seal worn")]


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-42", "object": "chat.completion.chunk", "created": 1764400000,
            "model": "Qwen/Qwen3-VL-2B-Instruct",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


def test_wire_chat_completions_stream_and_whole(scripted: ScriptedServer, media_dir: Path) -> None:
    """``POST /v1/chat/completions``: the documented request; SSE chunks (role chunk, content deltas, a finish
    chunk, a usage chunk with no choices, ``[DONE]``) join to the hand-written text; a whole answer is
    ``choices[0].message.content``."""
    scripted.reply_sse("/v1/chat/completions", [
        _chunk({"role": "assistant", "content": ""}),
        _chunk({"content": "Replace "}),
        _chunk({"content": "the fuser [prn-e13]."}),
        _chunk({}, "stop"),
        {"id": "chatcmpl-42", "object": "chat.completion.chunk", "created": 1764400000,
         "model": "Qwen/Qwen3-VL-2B-Instruct", "choices": [], "usage": {**_usage(), "completion_tokens": 7}},
        "[DONE]"])
    scripted.reply("/v1/chat/completions", 200, {
        "id": "chatcmpl-43", "object": "chat.completion", "created": 1764400000, "model": "Qwen/Qwen3-VL-2B-Instruct",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Check the seal."}, "logprobs": None,
                     "finish_reason": "stop"}], "usage": {**_usage(), "completion_tokens": 4}})
    gen = RemoteGenerator(endpoint(scripted.url, "generator", api_key="sk-gen"), "Qwen/Qwen3-VL-2B-Instruct")
    messages = [{"role": "system", "content": "You are a support assistant."},
                {"role": "user", "content": [{"type": "image", "image": str(media_dir / "a.png")},
                                             {"type": "text", "text": "What is wrong?"}]}]
    chunks = list(gen.stream(messages, max_new_tokens=64))
    assert "".join(chunks) == "Replace the fuser [prn-e13]." and len(chunks) >= 2
    assert gen.generate(messages, max_new_tokens=32, temperature=0.7, top_p=0.8, stop=["\n\n"]) == "Check the seal."

    streamed, whole = scripted.requests
    assert streamed["headers"]["accept"] == "text/event-stream" and streamed["headers"]["authorization"] == "Bearer sk-gen"
    for req in (streamed, whole):
        assert req["path"] == "/v1/chat/completions" and req["headers"]["content-type"] == "application/json"
        body = req["body"]
        assert set(body) <= CHAT_FIELDS, set(body) - CHAT_FIELDS
        assert body["model"] == "Qwen/Qwen3-VL-2B-Instruct" and isinstance(body["max_tokens"], int)
        assert isinstance(body["temperature"], float) and isinstance(body["stream"], bool)
        system, user = body["messages"]
        assert system == {"role": "system", "content": "You are a support assistant."}  # a string content is valid
        assert user["role"] == "user"
        assert parts_of(user["content"]) == [("image", ("PNG", (160, 128))), ("text", "What is wrong?")]
    assert streamed["body"]["stream"] is True and streamed["body"]["max_tokens"] == 64
    assert streamed["body"]["temperature"] == 0.0 and "top_p" not in streamed["body"]  # greedy: no sampling knobs
    assert whole["body"]["stream"] is False and whole["body"]["max_tokens"] == 32
    assert whole["body"]["temperature"] == 0.7 and whole["body"]["top_p"] == 0.8 and whole["body"]["stop"] == ["\n\n"]


OPENAI_400 = {"error": {"message": "Invalid 'max_tokens': integer below minimum value. Expected a value >= 1, but got 0 "
                                   "instead.", "type": "invalid_request_error", "param": "max_tokens",
                        "code": "integer_below_min_value"}}
VLLM_400 = {"object": "error", "message": "This model's maximum context length is 8192 tokens. However, you requested "
                                          "9000 tokens in the input for embedding generation. Please reduce the length "
                                          "of the input.", "type": "BadRequestError", "param": None, "code": 400}
FASTAPI_422 = {"detail": [{"type": "missing", "loc": ["body", "messages"], "msg": "Field required", "input": None},
                          {"type": "float_type", "loc": ["body", "temperature"], "msg": "Input should be a valid number",
                           "input": "hot"}]}
VLLM_500 = {"error": {"message": "EngineCore encountered an issue. See stack trace (above) for the root cause.",
                      "type": "InternalServerError", "param": None, "code": 500}}


@pytest.mark.parametrize("role, status, body, ctype, error, pattern, attempts", [
    ("generator", 400, OPENAI_400, "application/json", RemoteError,
     r"generator server at http://127\.0\.0\.1:\d+/v1/chat/completions answered HTTP 400: Invalid 'max_tokens': "
     r"integer below minimum value", 1),
    ("embedder", 400, VLLM_400, "application/json", "EmbeddingError",
     r"item 0 \(text='a very long manual'\): the embedding server refused it: .*answered HTTP 400: This model's "
     r"maximum context length is 8192 tokens", 1),
    ("reranker", 422, FASTAPI_422, "application/json", "RerankError",
     r"document 0 \(text='d'\): the reranker server refused the pair: .*/classify answered HTTP 422: "
     r"body\.messages: Field required; body\.temperature: Input should be a valid number$", 1),
    ("generator", 500, VLLM_500, "application/json", RemoteError,
     r"/v1/chat/completions answered HTTP 500: EngineCore encountered an issue", 2),
    ("embedder", 503, "upstream connect error or disconnect/reset before headers. reset reason: overflow",
     "text/plain", RemoteError, r"/v1/embeddings answered HTTP 503: upstream connect error or disconnect/reset", 2),
], ids=["openai-400", "vllm-400-old-shape", "fastapi-422", "vllm-500-retried", "proxy-503-text"])
def test_wire_error_bodies_name_the_problem(scripted: ScriptedServer, role: str, status: int, body: Any, ctype: str,
                                            error: Any, pattern: str, attempts: int) -> None:
    """Documented error bodies become errors that carry the server's own explanation (and the item); client
    errors (4xx) are not retried, server errors (5xx) are, up to the configured retries."""
    from rag.models.embedder import EmbeddingError
    from rag.models.reranker import RerankError

    exc = {"EmbeddingError": EmbeddingError, "RerankError": RerankError}.get(error, error) if isinstance(error, str) else error
    path = {"generator": "/v1/chat/completions", "embedder": "/v1/embeddings", "reranker": "/classify"}[role]
    for _ in range(attempts):
        scripted.reply(path, status, body, ctype)
    ep = endpoint(scripted.url, role, retries=1)
    with pytest.raises(exc) as e:
        if role == "generator":
            RemoteGenerator(ep, "m").generate([{"role": "user", "content": "hi"}], max_new_tokens=8)
        elif role == "embedder":
            RemoteEmbedder(ep, "m").embed(["a very long manual"])
        else:
            RemoteReranker(ep, "m").score({"text": "q"}, [{"text": "d"}])
    assert _re.search(pattern, str(e.value)), str(e.value)
    cause = e.value if isinstance(e.value, RemoteError) else e.value.__cause__
    assert isinstance(cause, RemoteError) and cause.status == status
    assert len(scripted.requests) == attempts


@pytest.mark.parametrize("error_event", [
    {"error": {"message": "CUDA out of memory while decoding", "type": "InternalServerError", "param": None,
               "code": 500}},
    {"object": "error", "message": "CUDA out of memory while decoding", "type": "InternalServerError", "param": None,
     "code": 500},
], ids=["error-envelope", "vllm-bare-error-response"])
def test_wire_error_inside_the_stream(scripted: ScriptedServer, error_event: dict[str, Any]) -> None:
    """A failure reported inside an SSE stream (after some text) ends the stream with the server's message, in both
    the enveloped and vLLM's bare ``ErrorResponse`` shape, and is not retried (part of the answer was shown)."""
    scripted.reply_sse("/v1/chat/completions", [_chunk({"role": "assistant", "content": ""}),
                                                _chunk({"content": "Replace the "}), error_event, "[DONE]"])
    gen = RemoteGenerator(endpoint(scripted.url, "generator", retries=2), "m")
    got: list[str] = []
    with pytest.raises(RemoteError, match=r"generator server at http://127\.0\.0\.1:\d+/v1/chat/completions failed "
                                          r"mid-stream: CUDA out of memory while decoding") as e:
        for chunk in gen.stream([{"role": "user", "content": "hi"}], max_new_tokens=16):
            got.append(chunk)
    assert e.value.status == 500
    assert "".join(got) == "Replace the "  # the text received before the error, and nothing invented after it
    assert len(scripted.requests) == 1


@pytest.mark.parametrize("event", [["not", "an", "object"], 42, "\"text\""], ids=["list", "number", "string"])
def test_wire_stream_event_that_is_not_an_object(scripted: ScriptedServer, event: Any) -> None:
    """Every OpenAI stream event is a JSON object: any other JSON value ends the stream with a RemoteError naming the
    server and the event (not an AttributeError from deep inside the generator)."""
    scripted.reply_sse("/v1/chat/completions", [_chunk({"content": "Replace the "}), event, "[DONE]"])
    gen = RemoteGenerator(endpoint(scripted.url, "generator", retries=0), "m")
    got: list[str] = []
    with pytest.raises(RemoteError, match=r"generator server at http://127\.0\.0\.1:\d+/v1/chat/completions sent an "
                                          r"event that is not a JSON object"):
        for chunk in gen.stream([{"role": "user", "content": "hi"}], max_new_tokens=16):
            got.append(chunk)
    assert "".join(got) == "Replace the "
