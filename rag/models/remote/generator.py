"""Qwen3-VL Instruct behind any OpenAI-compatible chat-completions server (vLLM, SGLang, hosted Qwen).

Same ``generate()``/``stream()``/``count_tokens()`` as the local generator, so the pipeline does not know where the
model runs. Images travel as ``image_url`` data URLs, loaded and resized locally with the official budget (the server
sees the pixels the local model would); videos as the clip itself (``video_url`` data URL) or, in ``frames`` mode,
as the locally sampled frames (see :mod:`rag.models.remote.media`). Streaming uses server-sent events; a request is
retried only before its first byte arrives.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from rag.config import VisionBudget
from rag.models.generator import GenerationError, checked_turns
from rag.models.remote.http import HttpEndpoint, RemoteError
from rag.models.remote.media import ImageFormat, Part, VideoMode, image_part, text_part, video_parts
from rag.models.vision import VisionInputError

logger = logging.getLogger(__name__)

CHAT_PATH = "/v1/chat/completions"
#: Most OpenAI-compatible servers accept at most four stop sequences; longer lists are cut client-side only.
MAX_SERVER_STOPS = 4

Message = dict[str, Any]


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    cut = min((text.find(s) for s in stop if s and s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class RemoteGenerator:
    """Drop-in for :class:`rag.models.generator.Generator` over ``POST /v1/chat/completions``."""

    def __init__(self, endpoint: HttpEndpoint, model: str, *, name: str | None = None,
                 budget: VisionBudget | None = None, video_mode: VideoMode = "video_url",
                 image_format: ImageFormat = "png", max_upload_bytes: int = 64 << 20,
                 tokenizer: Any | None = None) -> None:
        self.endpoint = endpoint
        self.model = model
        self.name = name or model
        self.budget = budget or VisionBudget()
        self.video_mode: VideoMode = video_mode
        self.image_format: ImageFormat = image_format
        self.max_upload_bytes = max_upload_bytes
        self._tokenizer = tokenizer

    @property
    def tokenizer(self) -> Any | None:
        return self._tokenizer

    def count_tokens(self, text: str) -> int:
        """Exact with a local tokenizer; otherwise ⌈UTF-8 bytes / 3⌉, which over-counts (history is cut early, never late)."""
        if self._tokenizer is not None:
            return len(self._tokenizer.encode(text, add_special_tokens=False))
        return math.ceil(len(text.encode("utf-8")) / 3)

    # -- messages -----------------------------------------------------------------------------------------------
    def to_openai_messages(self, messages: Sequence[Message]) -> list[Message]:
        """The app's messages (``{"type": "image", "image": path|bytes|PIL}``, videos, texts) in OpenAI form."""
        out: list[Message] = []
        for m_i, role, content in checked_turns(messages):
            if isinstance(content, str):
                out.append({"role": role, "content": content})
                continue
            parts: list[Part] = []
            for c_i, item in enumerate(content or []):
                kind = item.get("type") or next((k for k in ("image", "video", "text") if k in item), None)
                try:
                    if kind == "image":
                        parts.append(image_part(item["image"], self.budget, self.image_format, self.max_upload_bytes))
                    elif kind == "video":
                        parts.extend(video_parts(item["video"], self.budget, self.video_mode, self.image_format,
                                                 self.max_upload_bytes))
                    elif kind == "text":
                        parts.append(text_part(str(item["text"])))
                    else:
                        raise GenerationError(f"message {m_i} item {c_i}: unknown content type {kind!r}")
                except VisionInputError as e:
                    raise GenerationError(f"message {m_i} item {c_i}: {e}") from e
            out.append({"role": role, "content": parts})
        return out

    def payload(self, messages: Sequence[Message], max_new_tokens: int, temperature: float, top_p: float,
                stop: Sequence[str] | None, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": self.to_openai_messages(messages),
            "max_tokens": max_new_tokens,
            "temperature": max(0.0, float(temperature or 0.0)),
            "stream": stream,
        }
        if temperature and temperature > 0:
            body["top_p"] = top_p
        stops = [s for s in stop or [] if s]
        if stops:
            body["stop"] = stops[:MAX_SERVER_STOPS]
        return body

    # -- generation ---------------------------------------------------------------------------------------------
    def generate(self, messages: Sequence[Message], max_new_tokens: int = 512, temperature: float = 0.0,
                 top_p: float = 0.9, stop: Sequence[str] | None = None) -> str:
        """The whole answer (greedy by default), cut at the first stop string."""
        body = self.payload(messages, max_new_tokens, temperature, top_p, stop, stream=False)
        answer = self.endpoint.post_json(CHAT_PATH, body)
        try:
            text = answer["choices"][0]["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError) as e:
            url = self.endpoint.url(CHAT_PATH)
            raise RemoteError(f"generator server at {url} sent no choices: {str(answer)[:200]}", url=url) from e
        return cut_at_stop(text, stop or [])[0]

    def stream(self, messages: Sequence[Message], max_new_tokens: int = 512, temperature: float = 0.0,
               top_p: float = 0.9, stop: Sequence[str] | None = None,
               cancel: threading.Event | None = None) -> Iterator[str]:
        """Yield text chunks as the server streams them; joined, they equal :meth:`generate`'s text.

        Text that could be the start of a stop string is held back until it is known not to be one (servers that
        cap the number of stop strings still stop where the local generator would). Setting ``cancel`` closes the
        connection, which makes vLLM abort the request.
        """
        stops = [s for s in stop or [] if s]
        body = self.payload(messages, max_new_tokens, temperature, top_p, stops, stream=True)
        hold = max((len(s) for s in stops), default=1) - 1
        text, sent, finished = "", 0, False
        events = self.endpoint.stream_events(CHAT_PATH, body)
        try:
            for event in events:
                if cancel is not None and cancel.is_set():
                    return
                choices = event.get("choices") or []
                finished = finished or bool(choices and choices[0].get("finish_reason"))
                chunk = (choices[0].get("delta") or {}).get("content") if choices else None
                if not chunk:
                    continue
                text += chunk
                cut, stopped = cut_at_stop(text, stops)
                safe = len(cut) if stopped else max(sent, len(text) - hold)
                if safe > sent:
                    yield text[sent:safe]
                    sent = safe
                if stopped:
                    return
            if not finished:  # a proxy or server that died quietly: never pass a truncated answer off as whole
                url = self.endpoint.url(CHAT_PATH)
                raise RemoteError(f"generator server at {url} ended the stream without finishing the answer "
                                  f"(no finish_reason after {len(text)} characters); not retried", url=url)
            final = cut_at_stop(text, stops)[0]
            if len(final) > sent:
                yield final[sent:]
        finally:
            events.close()  # closes the HTTP response: the server stops generating for a reader that left

    def close(self) -> None:
        self.endpoint.close()

    def __repr__(self) -> str:
        return f"RemoteGenerator({self.model!r} at {self.endpoint.base_url})"


__all__ = ["CHAT_PATH", "RemoteGenerator", "cut_at_stop"]
