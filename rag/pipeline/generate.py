"""Generate: Qwen3-VL writes the answer from the query and the kept cases, citing [case-id], streamed."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Iterator, Sequence

from rag.models.protocols import GenerationModel
from rag.payload import PICTURE_KINDS
from rag.pipeline.prompt import SAFE_ID, SYSTEM_PROMPT, prompt_safe
from rag.pipeline.types import CaseCandidate, Generated, Query, Turn

logger = logging.getLogger(__name__)

class Generate:
    """Qwen3-VL writes the answer from the query media + question + top cases, citing [case-id], streamed."""

    def __init__(self, generator: GenerationModel, *, max_new_tokens: int = 512, temperature: float = 0.0,
                 history_token_budget: int = 2048, case_images: int = 3, case_chars: int = 1500) -> None:
        self.generator, self.max_new_tokens, self.temperature = generator, max_new_tokens, temperature
        self.history_token_budget, self.case_images, self.case_chars = history_token_budget, case_images, case_chars

    @staticmethod
    def context_block(cases: Sequence[CaseCandidate], chars: int) -> str:
        """The cases as ``<case id="…">`` elements inside one ``<reference_cases>`` block.

        Each case's text (title and document: every case field that reaches the prompt) goes through
        :func:`prompt_safe` as one piece after truncation, so neither a field nor two adjacent fields nor a cut can
        close or forge the block or a case element.
        """
        parts = []
        for c in cases:
            cid = SAFE_ID.sub("_", c.case_id)
            body = prompt_safe(f"[{c.case_id}] {c.title}\n{c.document or c.title}"[:chars])
            parts.append(f'<case id="{cid}">\n{body}\n</case>')
        return "<reference_cases>\n" + "\n\n".join(parts) + "\n</reference_cases>"

    def trim_history(self, history: Sequence[Turn]) -> list[Turn]:
        """Keep the most recent turns that fit the token budget (oldest dropped first)."""
        kept: list[Turn] = []
        used = 0
        for turn in reversed(history):
            cost = self.generator.count_tokens(turn.question) + self.generator.count_tokens(turn.answer)
            if used + cost > self.history_token_budget:
                break
            kept.append(turn)
            used += cost
        return list(reversed(kept))

    def messages(self, query: Query, cases: Sequence[CaseCandidate]) -> list[dict[str, Any]]:
        msgs: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM_PROMPT}]
        for turn in self.trim_history(query.history):
            # earlier turns are user text too: they must not end their turn or open a block either
            msgs.append({"role": "user", "content": prompt_safe(turn.question)})
            msgs.append({"role": "assistant", "content": prompt_safe(turn.answer)})
        content: list[dict[str, Any]] = []
        if query.video is not None:
            content.append({"type": "video", "video": query.video})
        content += [{"type": "image", "image": im} for im in query.images]
        case_imgs = [c for c in cases if c.media_path and c.media_kind in PICTURE_KINDS][: self.case_images]
        if case_imgs:
            content.append({"type": "text", "text": "Images of the reference cases, in order: "
                            + ", ".join(f"[{c.case_id}]" for c in case_imgs) + "\n"})
            content += [{"type": "image", "image": c.media_path} for c in case_imgs]
        question = query.text or "What is wrong and how do I fix it?"
        content.append({"type": "text", "text": self.context_block(cases, self.case_chars) + "\n\nQuestion: "
                        + prompt_safe(question)})
        msgs.append({"role": "user", "content": content})
        return msgs

    def stream(self, query: Query, cases: Sequence[CaseCandidate], cancel: threading.Event | None = None, *,
               max_new_tokens: int | None = None, temperature: float | None = None) -> Iterator[str]:
        """The answer's text chunks as the generator writes them (overrides default to the stage's settings)."""
        yield from self.generator.stream(self.messages(query, cases),
                                         max_new_tokens=self.max_new_tokens if max_new_tokens is None else max_new_tokens,
                                         temperature=self.temperature if temperature is None else temperature,
                                         cancel=cancel)

    def run(self, query: Query, cases: Sequence[CaseCandidate], cancel: threading.Event | None = None, *,
            max_new_tokens: int | None = None, temperature: float | None = None) -> Generated:
        """The whole answer at once (:meth:`stream`, collected), with its timing."""
        t0 = time.perf_counter()
        first_ms: float | None = None
        chunks: list[str] = []
        for chunk in self.stream(query, cases, cancel, max_new_tokens=max_new_tokens, temperature=temperature):
            if first_ms is None:
                first_ms = (time.perf_counter() - t0) * 1000
            chunks.append(chunk)
        return Generated(text="".join(chunks), first_token_ms=first_ms, ms=(time.perf_counter() - t0) * 1000)
