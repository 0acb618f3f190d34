"""Independent reference for Qwen3-VL-Embedding and Qwen3-VL-Reranker, written from the published algorithm.

This is the oracle the tests (and ``ragvqa bench models``' official arm) compare the product's embedder and reranker
against, so it must not share code with them: it imports nothing from ``rag``, ``knowledge_base``, ``ui`` or ``eval``,
only torch, transformers, qwen-vl-utils, PIL and numpy. It follows QwenLM/Qwen3-VL-Embedding
(``src/models/qwen3_vl_embedding.py`` and ``qwen3_vl_reranker.py``, @8ce3aab):

* the conversation is built as the official ``format_model_input`` / ``format_mm_instruction`` do (system
  instruction with the punctuation rule; user content = videos, then images, then texts; ``"NULL"`` when empty;
  reranker judge prompt, ``"<Instruct>: "``, ``"<Query>:"`` and ``"\\n<Document>:"`` texts), with image paths as
  ``file://`` URLs and the official pixel/frame budgets attached to each vision item;
* vision inputs are prepared by qwen-vl-utils' ``process_vision_info(..., image_patch_size=16,
  return_video_metadata=True, return_video_kwargs=True)``: images resized within [4, 1800]·32² pixels; video files
  sampled at 1 fps, ≤ 64 frames (frame-size defaults of qwen-vl-utils); frame lists subsampled to ≤ 64 frames and
  given ``total_pixels`` = 10·768·32², exactly as the official code passes them;
* the chat template is applied by the processor (``apply_chat_template(..., add_generation_prompt=True)``) and the
  processor is called directly (``do_resize=False``: qwen-vl-utils already resized);
* one item (or pair) per forward by default; the embedder also offers the official multi-item strategy (one
  right-padded batch) for the benchmark;
* pooling and score are computed here by hand: the last non-pad position of ``Qwen3VLModel``'s last hidden state,
  divided by its L2 norm; ``sigmoid(h_last · (W_lm[yes] − W_lm[no]))``.

Deliberately *not* reproduced (they are defects of the official code, not part of the algorithm; see STACK.md §4):
collapsing a batch to one "NULL" embedding on a vision error, truncation (inputs longer than ``max_length`` are
refused here instead; tests use short inputs), and the reranker returning ``[]`` for an empty query dict (the pair
layout gives an empty side the ``"NULL"`` text, as ``format_mm_content`` does).
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path
from typing import Any, Self, Sequence, Union

# qwen-vl-utils picks its video reader at import time; its torchvision reader is broken with torchvision 0.29.
os.environ.setdefault("FORCE_QWENVL_VIDEO_READER", "decord")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from qwen_vl_utils import process_vision_info  # noqa: E402

#: Official constants (both files define the same ones).
IMAGE_FACTOR = 16 * 2
MIN_PIXELS = 4 * IMAGE_FACTOR * IMAGE_FACTOR
MAX_PIXELS = 1800 * IMAGE_FACTOR * IMAGE_FACTOR
FPS = 1
MAX_FRAMES = 64
FRAME_MAX_PIXELS = 768 * IMAGE_FACTOR * IMAGE_FACTOR
MAX_TOTAL_PIXELS = 10 * FRAME_MAX_PIXELS
EMBED_MAX_LENGTH = 8192
RERANK_MAX_LENGTH = 10240

EMBED_INSTRUCTION = "Represent the user's input."
RERANK_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."
JUDGE_PROMPT = ('Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
                'Note that the answer can only be "yes" or "no".')

_IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tiff", ".svg"}

Item = dict[str, Any]
Content = list[dict[str, Any]]


# -- conversation -----------------------------------------------------------------------------------------------------
def punctuate(instruction: str | None) -> str | None:
    """Official rule: strip, and add "." unless the instruction already ends in Unicode punctuation."""
    if instruction:
        instruction = instruction.strip()
        if instruction and not unicodedata.category(instruction[-1]).startswith("P"):
            instruction += "."
    return instruction


def _listify(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _is_single_video(video: Any) -> bool:
    """A path, or a frame list (PIL images or image paths); anything else is a list of videos."""
    if isinstance(video, (str, Path)):
        return True
    if isinstance(video, list) and video:
        first = video[0]
        if isinstance(first, Image.Image):
            return True
        if isinstance(first, (str, Path)):
            return os.path.splitext(str(first).lower())[1] in _IMAGE_EXTENSIONS
    return False


def _file_url(path: Union[str, Path]) -> str:
    s = str(path)
    return s if s.startswith(("http://", "https://", "file://")) else "file://" + s


def media_content(item: Item) -> Content:
    """User content items of one side, in the official order: videos, then images, then texts ("NULL" if empty)."""
    texts = _listify(item.get("text"))
    images = _listify(item.get("image"))
    video = item.get("video")
    videos = [] if video is None else ([video] if _is_single_video(video) else list(video))
    if not texts and not images and not videos:
        return [{"type": "text", "text": "NULL"}]
    content: Content = []
    for vid in videos:
        if isinstance(vid, list):  # frame sequence: evenly subsampled to MAX_FRAMES, pixel budget over all frames
            frames = vid
            if len(frames) > MAX_FRAMES:
                frames = [frames[i] for i in np.linspace(0, len(frames) - 1, MAX_FRAMES, dtype=int).tolist()]
            frames = [_file_url(f) if isinstance(f, (str, Path)) else f for f in frames]
            content.append({"type": "video", "video": frames, "total_pixels": MAX_TOTAL_PIXELS})
        elif isinstance(vid, (str, Path)):  # file: sampled at FPS, at most MAX_FRAMES
            content.append({"type": "video", "video": _file_url(vid), "fps": FPS, "max_frames": MAX_FRAMES})
        else:
            raise TypeError(f"unrecognised video type {type(vid).__name__}")
    for img in images:
        if isinstance(img, Image.Image):
            src: Any = img
        elif isinstance(img, (str, Path)):
            src = _file_url(img)
        else:
            raise TypeError(f"unrecognised image type {type(img).__name__}")
        content.append({"type": "image", "image": src, "min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS})
    content.extend({"type": "text", "text": t} for t in texts)
    return content


def embedding_conversation(item: Item, default_instruction: str = EMBED_INSTRUCTION) -> list[dict]:
    """System turn = the item's instruction (punctuated) or the default; user turn = the item's media and texts."""
    system = punctuate(item.get("instruction")) or default_instruction
    return [
        {"role": "system", "content": [{"type": "text", "text": system}]},
        {"role": "user", "content": media_content(item)},
    ]


def rerank_conversation(query: Item, document: Item, instruction: str | None = None,
                        default_instruction: str = RERANK_INSTRUCTION) -> list[dict]:
    """The official pair: judge prompt; ``<Instruct>: …``, ``<Query>:`` + query, ``\\n<Document>:`` + document."""
    user: Content = [{"type": "text", "text": "<Instruct>: " + (instruction or default_instruction)}]
    user.append({"type": "text", "text": "<Query>:"})
    user.extend(media_content(query))
    user.append({"type": "text", "text": "\n<Document>:"})
    user.extend(media_content(document))
    return [
        {"role": "system", "content": [{"type": "text", "text": JUDGE_PROMPT}]},
        {"role": "user", "content": user},
    ]


# -- model inputs -----------------------------------------------------------------------------------------------------
def model_inputs(processor: Any, conversations: list[list[dict]], padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Chat template + qwen-vl-utils vision preparation + the processor, as the official ``_preprocess_inputs``."""
    text = processor.apply_chat_template(conversations, tokenize=False, add_generation_prompt=True)
    images, videos, video_kwargs = process_vision_info(
        conversations, image_patch_size=16, return_video_metadata=True, return_video_kwargs=True
    )
    video_metadata = None
    if videos is not None:
        videos, video_metadata = (list(x) for x in zip(*videos, strict=False))
    tok = processor.tokenizer
    saved, tok.padding_side = tok.padding_side, padding_side
    try:
        out = processor(text=text, images=images, videos=videos, video_metadata=video_metadata, padding=True,
                        do_resize=False, return_tensors="pt", **video_kwargs)
    finally:
        tok.padding_side = saved
    return dict(out)


def _check_length(inputs: dict[str, torch.Tensor], max_length: int) -> None:
    n = int(inputs["attention_mask"].sum(dim=1).max())
    if n > max_length:
        raise ValueError(f"reference input has {n} tokens > max_length {max_length}: the reference does not truncate")


def _to(inputs: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in inputs.items()}


class _ReferenceModel:
    """A transformers model (class named by ``MODEL_CLASS``) + its processor, with the role's default instruction and
    token budget."""

    MODEL_CLASS: str
    DEFAULT_INSTRUCTION: str
    MAX_LENGTH: int

    def __init__(self, model: Any, processor: Any, default_instruction: str | None = None,
                 max_length: int | None = None) -> None:
        self.model = model.eval()
        self.processor = processor
        self.default_instruction = self.DEFAULT_INSTRUCTION if default_instruction is None else default_instruction
        self.max_length = self.MAX_LENGTH if max_length is None else max_length

    @classmethod
    def from_pretrained(cls, path: Union[str, Path], dtype: torch.dtype = torch.float32, device: str = "cpu") -> Self:
        import transformers

        model = getattr(transformers, cls.MODEL_CLASS).from_pretrained(str(path), dtype=dtype).to(device)
        return cls(model, transformers.AutoProcessor.from_pretrained(str(path)))


# -- embedder ---------------------------------------------------------------------------------------------------------
class ReferenceEmbedder(_ReferenceModel):
    """``Qwen3VLModel`` + processor; :meth:`embed` returns L2-normalised float32 vectors."""

    MODEL_CLASS = "Qwen3VLModel"
    DEFAULT_INSTRUCTION = EMBED_INSTRUCTION
    MAX_LENGTH = EMBED_MAX_LENGTH

    def conversation(self, item: Item) -> list[dict]:
        return embedding_conversation(item, self.default_instruction)

    def inputs(self, items: Sequence[Item]) -> dict[str, torch.Tensor]:
        """Token ids etc. of ``items`` as one right-padded batch (a batch of one needs no padding)."""
        return model_inputs(self.processor, [self.conversation(it) for it in items], padding_side="right")

    @torch.inference_mode()
    def embed(self, items: Sequence[Item], batch_size: int = 1) -> np.ndarray:
        """(n, hidden) float32; ``batch_size=1`` = one item per forward, larger = the official padded batches."""
        out = []
        device = next(self.model.parameters()).device
        for start in range(0, len(items), batch_size):
            inputs = self.inputs(items[start:start + batch_size])
            _check_length(inputs, self.max_length)
            hidden = self.model(**_to(inputs, device)).last_hidden_state
            mask = inputs["attention_mask"]
            # last position whose mask is 1 (right padding): the "\n" after "assistant"
            last = mask.shape[1] - 1 - mask.flip(dims=[1]).argmax(dim=1)
            pooled = hidden[torch.arange(hidden.shape[0]), last.to(hidden.device)].float()
            out.append((pooled / pooled.norm(dim=-1, keepdim=True)).cpu().numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), dtype=np.float32)


# -- reranker ---------------------------------------------------------------------------------------------------------
class ReferenceReranker(_ReferenceModel):
    """``Qwen3VLForConditionalGeneration`` + processor; :meth:`score` returns P(yes) per document."""

    MODEL_CLASS = "Qwen3VLForConditionalGeneration"
    DEFAULT_INSTRUCTION = RERANK_INSTRUCTION
    MAX_LENGTH = RERANK_MAX_LENGTH

    def __init__(self, model: Any, processor: Any, default_instruction: str | None = None,
                 max_length: int | None = None) -> None:
        super().__init__(model, processor, default_instruction, max_length)
        vocab = processor.tokenizer.get_vocab()
        weight = model.lm_head.weight.detach()
        self.yes_minus_no = (weight[vocab["yes"]] - weight[vocab["no"]]).float()

    def conversation(self, query: Item, document: Item, instruction: str | None = None) -> list[dict]:
        return rerank_conversation(query, document, instruction, self.default_instruction)

    def inputs(self, query: Item, document: Item, instruction: str | None = None) -> dict[str, torch.Tensor]:
        """The tokenised pair (batch of one)."""
        return model_inputs(self.processor, [self.conversation(query, document, instruction)], padding_side="left")

    @torch.inference_mode()
    def score(self, query: Item, documents: Sequence[Item], instruction: str | None = None) -> list[float]:
        """One pair per forward; sigmoid of the hidden state at the last position dotted with W[yes] − W[no]."""
        scores = []
        device = next(self.model.parameters()).device
        for doc in documents:
            inputs = self.inputs(query, doc, instruction)
            _check_length(inputs, self.max_length)
            hidden = self.model.model(**_to(inputs, device)).last_hidden_state[0, -1].float()
            logit = torch.dot(hidden, self.yes_minus_no.to(hidden.device))
            scores.append(float(torch.sigmoid(logit)))
        return scores
