"""Turning Qwen3-VL conversations into model inputs, one sample at a time, and padding them into batches.

Encoding each sample on its own gives its exact length (for length-bucketed batching and for truncation that never cuts
vision tokens), and lets a failing item be reported by name instead of sinking a whole batch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any, Iterable, Literal, Required, Self, Sequence, TypedDict

import torch
from PIL import Image

from rag.config import VisionBudget
from rag.models.vision import PreparedVideo, VisionInputError, describe, prepare_image, prepare_video

Item = dict[str, Any]


class ContentItem(TypedDict, total=False):
    """One content item of a chat turn, as the processor's chat template reads it (vision data travels separately)."""

    type: Required[Literal["text", "image", "video"]]
    text: str


class ChatTurn(TypedDict):
    """One turn of a conversation given to ``processor.apply_chat_template``."""

    role: Literal["system", "user", "assistant"]
    content: list[ContentItem]


def as_items(items: Iterable[Item | str]) -> list[Item]:
    """Embedding inputs as item dicts (a plain string is a text item)."""
    return [{"text": it} if isinstance(it, str) else it for it in items]


@dataclass
class Encoded:
    """One sample's tensors (1-D ids, its own pixels); ``name`` identifies it in errors."""

    input_ids: torch.Tensor
    mm_token_type_ids: torch.Tensor
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    pixel_values_videos: torch.Tensor | None = None
    video_grid_thw: torch.Tensor | None = None
    name: str = ""

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def videos_of(item: Item) -> list[Any]:
    """``video`` may be one path, one frame list, or a list of those (as in the official code)."""
    v = item.get("video")
    if v is None:
        return []
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, (list, tuple)) for x in v):
        return list(v)
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, (str,)) for x in v) and not _looks_like_frames(v):
        return list(v)
    return [v]


def _looks_like_frames(paths: Sequence[str]) -> bool:
    return all(str(p).lower().endswith((".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tiff", ".svg")) for p in paths)


@dataclass
class Vision:
    """Vision objects of one conversation, in the order their placeholders appear."""

    images: list[Image.Image]
    videos: list[PreparedVideo]


def media_content(item: Item, budget: VisionBudget, vision: Vision) -> list[ContentItem]:
    """Content items in the official order: all videos, then all images, then all texts.

    Vision data is loaded here (once) and appended to ``vision``; a single-frame video becomes an image item.
    """
    content: list[ContentItem] = []
    images: list[ContentItem] = []
    for v in videos_of(item):
        prepared = prepare_video(v, budget)
        if isinstance(prepared, Image.Image):
            images.append({"type": "image"})
            vision.images.append(prepared)  # keeps placeholder order: this image precedes item images
        else:
            content.append({"type": "video"})
            vision.videos.append(prepared)
    for img in as_list(item.get("image")):
        images.append({"type": "image"})
        vision.images.append(prepare_image(img, budget))
    content.extend(images)
    for txt in as_list(item.get("text")):
        if not isinstance(txt, str):
            raise VisionInputError(f"text must be a string, got {type(txt).__name__}")
        content.append({"type": "text", "text": txt})
    return content


def has_input(item: Item) -> bool:
    return bool(videos_of(item) or as_list(item.get("image")) or as_list(item.get("text")))


def item_name(item: Item, index: int | None = None) -> str:
    parts = []
    for key in ("id", "image", "video", "text"):
        if item.get(key) is not None:
            val = item[key]
            shown = describe(val) if key != "text" else repr(str(val)[:40])
            parts.append(f"{key}={shown}")
            if key != "id":
                break
    where = f"item {index}" if index is not None else "item"
    return f"{where} ({', '.join(parts)})" if parts else where


def encode(processor: Any, conversation: list[ChatTurn], vision: Vision, name: str = "") -> Encoded:
    """Render + tokenize one conversation with its (already resized) vision data, without padding or truncation."""
    text = processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    kwargs: dict[str, Any] = {}
    if vision.videos:
        kwargs["videos"] = [v.frames for v in vision.videos]
        kwargs["video_metadata"] = [v.metadata for v in vision.videos]
        kwargs["do_sample_frames"] = False
    out = processor(
        text=[text],
        images=vision.images or None,
        do_resize=False,
        return_tensors="pt",
        **kwargs,
    )
    return Encoded(
        input_ids=out["input_ids"][0],
        mm_token_type_ids=out["mm_token_type_ids"][0],
        pixel_values=out.get("pixel_values"),
        image_grid_thw=out.get("image_grid_thw"),
        pixel_values_videos=out.get("pixel_values_videos"),
        video_grid_thw=out.get("video_grid_thw"),
        name=name,
    )


def truncate(enc: Encoded, max_length: int, protected_ids: set[int], keep_tail: int) -> Encoded:
    """Drop ordinary text tokens from the end of the content until ``max_length`` fits.

    Special tokens (incl. every vision placeholder) and the last ``keep_tail`` template tokens are never cut, so
    truncation can neither break the image/feature alignment nor lose the pooled/scored final position.
    """
    if enc.length <= max_length:
        return enc
    ids = enc.input_ids.tolist()
    types = enc.mm_token_type_ids.tolist()
    excess = enc.length - max_length
    keep = [True] * len(ids)
    for pos in range(len(ids) - keep_tail - 1, -1, -1):
        if excess == 0:
            break
        if ids[pos] in protected_ids or types[pos] != 0:
            continue
        keep[pos] = False
        excess -= 1
    if excess:
        raise VisionInputError(
            f"{enc.name or 'input'} needs {enc.length} tokens but max_length is {max_length}, and its vision and "
            "template tokens alone exceed it: lower the pixel/frame budget or send fewer images"
        )
    mask = torch.tensor(keep)
    return replace(enc, input_ids=enc.input_ids[mask], mm_token_type_ids=enc.mm_token_type_ids[mask])


def collate(batch: Sequence[Encoded], pad_id: int, side: Literal["left", "right"]) -> dict[str, torch.Tensor]:
    """Pad ids, attention mask and ``mm_token_type_ids`` together; concatenate pixels in placeholder order."""
    width = max(e.length for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    types = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        sl = slice(width - e.length, width) if side == "left" else slice(0, e.length)
        ids[i, sl] = e.input_ids
        types[i, sl] = e.mm_token_type_ids
        mask[i, sl] = 1
    out: dict[str, torch.Tensor] = {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": types}
    for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"):
        parts = [getattr(e, key) for e in batch if getattr(e, key) is not None]
        if parts:
            out[key] = torch.cat(parts, dim=0)
    return out


def to_device(inputs: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    moved = {}
    for k, v in inputs.items():
        if k.startswith("pixel_values"):
            moved[k] = v.to(device=device, dtype=dtype)
        else:
            moved[k] = v.to(device)
    return moved


class TokenizedModel:
    """What the local embedder and reranker share: model + processor, budgets, and the padding/protected ids."""

    def __init__(self, model: Any, processor: Any, *, name: str, budget: VisionBudget | None, max_length: int,
                 default_instruction: str) -> None:
        self.model = model.eval()
        self.processor = processor
        self.name = name
        self.budget = budget or VisionBudget()
        self.max_length = max_length
        self.default_instruction = default_instruction
        tok = processor.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.convert_tokens_to_ids("<|endoftext|>")
        self.protected_ids = set(tok.all_special_ids)

    def with_budget(self, budget: VisionBudget) -> Self:
        """The same weights and processor under another pixel budget (the query-time cap, rag.models.budgets)."""
        view = copy.copy(self)
        view.budget = budget
        return view

    @property
    def device(self) -> torch.device:
        return self._first_parameter().device

    @property
    def dtype(self) -> torch.dtype:
        return self._first_parameter().dtype

    def _first_parameter(self) -> torch.Tensor:
        # self.model is the transformers model (untyped here): its parameters are torch Parameters
        param: torch.Tensor = next(self.model.parameters())
        return param
