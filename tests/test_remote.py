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
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conftest import populate_store
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


# -- a vLLM-shaped model server on the local tiny models ------------------------------------------------------------
class ModelServer:
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

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="fake-vllm", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "ModelServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
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
