"""Qwen3-VL Instruct answers, whole or streamed, from chat messages with images and videos."""

from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from rag.config import VisionBudget
from rag.errors import UserInputError
from rag.models.encoding import to_device
from rag.models.loading import load_model, resolve_device, resolve_model_path
from rag.models.vision import PreparedVideo, VisionInputError, prepare_image, prepare_video

logger = logging.getLogger(__name__)

Message = dict[str, Any]


class GenerationError(UserInputError, ValueError):
    """Messages that cannot be turned into a prompt; the message says which part."""

    code = "bad_messages"


def checked_turns(messages: Sequence[Message]) -> Iterator[tuple[int, str, Any]]:
    """(index, role, content) of each chat message; a clear error for no messages or a role the models do not know."""
    if not messages:
        raise GenerationError("no messages to answer")
    for m_i, msg in enumerate(messages):
        role, content = msg.get("role"), msg.get("content")
        if role not in ("system", "user", "assistant"):
            raise GenerationError(f"message {m_i}: role must be system, user or assistant, got {role!r}")
        yield m_i, str(role), content


class _Cancel:
    """A stopping criterion a caller can trip from another thread (e.g. the user closed the chat)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def _cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    cut = min((text.find(s) for s in stop if s and s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


REPLACEMENT = "\ufffd"


def whole_chars(text: str, final: bool) -> str:
    """Decoded text with no broken character: a byte-level tokenizer splits a CJK character (3 UTF-8 bytes) over
    tokens, and decoding a prefix that ends inside one gives U+FFFD. A trailing run is a character still being
    written (held back until ``final``); any other U+FFFD stands for bytes that never form a character (dropped)."""
    if not final:
        text = text.rstrip(REPLACEMENT)
    return text.replace(REPLACEMENT, "") if REPLACEMENT in text else text


class WholeCharStreamer:
    """A ``generate(streamer=...)`` target that yields text in whole characters only (see :func:`whole_chars`).

    transformers' ``TextIteratorStreamer`` flushes whatever is decoded at the end, so an answer cut by
    ``max_new_tokens``, a stop string or Stop in the middle of a CJK character ends in U+FFFD; it also holds
    Latin text back until a space. Here each new token's text is sent as soon as its characters are complete.
    """

    def __init__(self, tokenizer: Any, *, skip_prompt: bool = True, timeout: float | None = 600) -> None:
        self.tokenizer, self.timeout = tokenizer, timeout
        self._skip = skip_prompt
        self._ids: list[int] = []
        self._sent = 0  # characters of the decoded ``_ids`` already queued
        self._queue: queue.Queue[str | None] = queue.Queue()

    def _decode(self) -> str:
        return str(self.tokenizer.decode(self._ids, skip_special_tokens=True))

    def put(self, value: torch.Tensor) -> None:
        if self._skip:  # generate() first sends the prompt
            self._skip = False
            return
        self._ids.extend(int(i) for i in value.reshape(-1).tolist())
        raw = self._decode()
        text = whole_chars(raw, final=False)
        if len(text) > self._sent:
            self._queue.put(text[self._sent:])
            self._sent = len(text)
        if raw.endswith("\n") and text == raw:
            # a line is complete and no character is pending: start over, so decoding stays short
            self._ids, self._sent = [], 0

    def end(self) -> None:
        text = whole_chars(self._decode(), final=True)
        if len(text) > self._sent:
            self._queue.put(text[self._sent:])
        self._ids, self._sent = [], 0
        self._queue.put(None)

    def __iter__(self) -> Iterator[str]:
        while True:
            chunk = self._queue.get(timeout=self.timeout)
            if chunk is None:
                return
            yield chunk


def hold_for_stop(chunks: Iterator[str], stop: Sequence[str]) -> Iterator[tuple[str, bool]]:
    """``(text, stopped)`` pieces of the stream ``chunks`` cut at the first stop string: text that could still be
    the start of a stop string is held back until it is known not to be one. Lengths are in characters, so a CJK
    stop string (``。``, ``答案：``) is held and cut like an ASCII one."""
    hold = max((len(s) for s in stop), default=1) - 1
    text, sent = "", 0
    for chunk in chunks:
        text += chunk
        cut, stopped = _cut_at_stop(text, stop)
        safe = len(cut) if stopped else max(sent, len(text) - hold)
        if safe > sent:
            yield (cut[sent:safe] if stopped else text[sent:safe]), stopped
            sent = safe
        if stopped:
            if safe <= sent:
                yield "", True
            return
    final = _cut_at_stop(text, stop)[0]
    if len(final) > sent:
        yield final[sent:], False


class Generator:
    """Load with :meth:`from_pretrained`; call :meth:`generate` or :meth:`stream`."""

    def __init__(self, model: Any, processor: Any, *, name: str = "", budget: VisionBudget | None = None) -> None:
        self.model = model.eval()
        self.processor = processor
        self.name = name
        self.budget = budget or VisionBudget()

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, device: str = "auto", dtype: str | torch.dtype = "auto",
                        attn_implementation: str = "auto", budget: VisionBudget | None = None) -> "Generator":
        from transformers import AutoModelForImageTextToText, AutoProcessor

        path = resolve_model_path(name_or_path, "generator")
        dev = resolve_device(device)
        model = load_model(AutoModelForImageTextToText, path, dtype, dev, attn_implementation).to(dev)
        return cls(model, AutoProcessor.from_pretrained(path), name=str(name_or_path), budget=budget)

    @property
    def device(self) -> torch.device:
        device: torch.device = next(self.model.parameters()).device  # self.model is the (untyped) transformers model
        return device

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def prepare(self, messages: Sequence[Message]) -> dict[str, torch.Tensor]:
        """Load every image/video once, render the chat template and tokenize."""
        images: list[Image.Image] = []
        videos: list[PreparedVideo] = []
        rendered: list[Message] = []
        for m_i, role, content in checked_turns(messages):
            if isinstance(content, str):
                rendered.append({"role": role, "content": [{"type": "text", "text": content}]})
                continue
            items = []
            for c_i, item in enumerate(content or []):
                kind = item.get("type") or next((k for k in ("image", "video", "text") if k in item), None)
                try:
                    if kind == "image":
                        images.append(prepare_image(item["image"], self.budget))
                        items.append({"type": "image"})
                    elif kind == "video":
                        prepared = prepare_video(item["video"], self.budget)
                        if isinstance(prepared, Image.Image):
                            images.append(prepared)
                            items.append({"type": "image"})
                        else:
                            videos.append(prepared)
                            items.append({"type": "video"})
                    elif kind == "text":
                        items.append({"type": "text", "text": str(item["text"])})
                    else:
                        raise GenerationError(f"message {m_i} item {c_i}: unknown content type {kind!r}")
                except VisionInputError as e:
                    raise GenerationError(f"message {m_i} item {c_i}: {e}") from e
            rendered.append({"role": role, "content": items})
        text = self.processor.apply_chat_template(rendered, tokenize=False, add_generation_prompt=True)
        kwargs: dict[str, Any] = {}
        if videos:
            kwargs.update(videos=[v.frames for v in videos], video_metadata=[v.metadata for v in videos], do_sample_frames=False)
        # NumPy out, then zero-copy into torch: ``return_tensors="pt"`` builds the ids through ``torch.tensor`` on
        # Python lists, about 0.5 ms per tensor for a prompt of a few thousand tokens.
        inputs = self.processor(text=[text], images=images or None, do_resize=False, return_tensors="np", **kwargs)
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v for k, v in inputs.items()}
        return to_device(tensors, self.device, next(self.model.parameters()).dtype)

    def _gen_kwargs(self, max_new_tokens: int, temperature: float, top_p: float, stop: Sequence[str] | None,
                    cancel: threading.Event | None) -> dict[str, Any]:
        from transformers import StoppingCriteriaList

        kw: dict[str, Any] = {"max_new_tokens": max_new_tokens}
        if temperature and temperature > 0:
            kw.update(do_sample=True, temperature=temperature, top_p=top_p)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if stop:
            kw.update(stop_strings=list(stop), tokenizer=self.tokenizer)
        if cancel is not None:
            kw["stopping_criteria"] = StoppingCriteriaList([_Cancel(cancel)])
        return kw

    @torch.inference_mode()
    def generate(self, messages: Sequence[Message], max_new_tokens: int = 512, temperature: float = 0.0,
                 top_p: float = 0.9, stop: Sequence[str] | None = None) -> str:
        """The whole answer (greedy by default), cut at the first stop string."""
        inputs = self.prepare(messages)
        out = self.model.generate(**inputs, **self._gen_kwargs(max_new_tokens, temperature, top_p, stop, None))
        text = self.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        return _cut_at_stop(whole_chars(text, final=True), stop or [])[0]

    def stream(self, messages: Sequence[Message], max_new_tokens: int = 512, temperature: float = 0.0,
               top_p: float = 0.9, stop: Sequence[str] | None = None,
               cancel: threading.Event | None = None) -> Iterator[str]:
        """Yield text chunks as they are produced; joined, they equal :meth:`generate`'s text.

        Text that could be the start of a stop string is held back until it is known not to be one.
        """
        inputs = self.prepare(messages)
        cancel = cancel or threading.Event()
        streamer = WholeCharStreamer(self.tokenizer, skip_prompt=True, timeout=600)
        kwargs = {**inputs, **self._gen_kwargs(max_new_tokens, temperature, top_p, stop, cancel), "streamer": streamer}
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode():
                    self.model.generate(**kwargs)
            except BaseException as e:  # noqa: BLE001 - surfaced to the consumer below
                errors.append(e)
                streamer.end()

        thread = threading.Thread(target=run, name="generator-stream", daemon=True)
        thread.start()
        try:
            for piece, stopped in hold_for_stop(iter(streamer), stop or []):
                if piece:
                    yield piece
                if stopped:
                    cancel.set()
                    break
        finally:
            cancel.set()
            thread.join(timeout=60)
        if errors:
            raise errors[0]
