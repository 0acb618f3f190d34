"""Qwen3-VL-Reranker: P(yes) that a document answers a multimodal query, scored like the official reranker.

Prompt and score match QwenLM/Qwen3-VL-Embedding's reranker (system judge prompt, ``<Instruct>/<Query>/<Document>``
layout, sigmoid of the yes−no logit at the last position). Two things make it faster:

* every pair starts with the same system + instruction + query tokens (query image included): that prefix is run
  through the model once and its KV cache is reused by every document (``share_prefix``), so the query's vision
  encoder and prefix attention run once instead of once per document;
* document suffixes are batched with the padding placed between the shared prefix and each suffix, so each row's last
  token stays in the last column (``mm_token_type_ids`` padded with it).

Both paths give the same scores as one-pair-at-a-time scoring (tests pin ≤1e-5 for batching, ≤1e-4 for the prefix).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from rag.config import VisionBudget
from rag.errors import UserInputError
from rag.models.encoding import (
    ChatTurn,
    ContentItem,
    Encoded,
    Item,
    TokenizedModel,
    Vision,
    collate,
    encode,
    has_input,
    item_name,
    media_content,
    to_device,
    truncate,
)
from rag.models.loading import load_model, resolve_device, resolve_model_path
from rag.models.vision import VisionInputError

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    'Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
    'Note that the answer can only be "yes" or "no".'
)
DEFAULT_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."
MAX_LENGTH = 10240
TEMPLATE_TAIL = 5


#: One modality's (pixel values, grid) of one side of a pair; (None, None) when that side has none.
_Pixels = tuple["torch.Tensor | None", "torch.Tensor | None"]

class RerankError(UserInputError, ValueError):
    """A query or document could not be scored; the message names it."""

    code = "bad_rerank_input"


@dataclass
class _Side:
    """A query or document: its content items and vision data, prepared once."""

    content: list[ContentItem]
    vision: Vision


class Reranker(TokenizedModel):
    """Load with :meth:`from_pretrained`; call :meth:`score`."""

    def __init__(self, model: Any, score_vector: torch.Tensor, processor: Any, *, name: str = "",
                 budget: VisionBudget | None = None, max_length: int = MAX_LENGTH,
                 default_instruction: str = DEFAULT_INSTRUCTION, batch_size: int | None = None) -> None:
        super().__init__(model, processor, name=name, budget=budget, max_length=max_length,
                         default_instruction=default_instruction)
        self.score_vector = score_vector
        # Documents per forward after the shared prefix: measured best at 4 on 2 CPU cores; larger on GPUs.
        self.batch_size = batch_size or (4 if self.device.type == "cpu" else 16)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, device: str = "auto", dtype: str | torch.dtype = "auto",
                        attn_implementation: str = "auto", budget: VisionBudget | None = None, **kwargs: Any) -> "Reranker":
        from transformers import AutoModelForImageTextToText, AutoProcessor

        path = resolve_model_path(name_or_path, "reranker")
        dev = resolve_device(device)
        lm = load_model(AutoModelForImageTextToText, path, dtype, dev, attn_implementation).to(dev)
        processor = AutoProcessor.from_pretrained(path)
        vocab = processor.tokenizer.get_vocab()
        missing = [t for t in ("yes", "no") if t not in vocab]
        if missing:
            raise RerankError(f"reranker tokenizer at {path} has no single token for {missing}: not a Qwen3-VL reranker")
        weight = lm.lm_head.weight.detach()
        score_vector = (weight[vocab["yes"]] - weight[vocab["no"]]).clone()
        return cls(lm.model, score_vector, processor, name=str(name_or_path), budget=budget, **kwargs)

    # -- prompt -------------------------------------------------------------------------------------------------
    def _side(self, item: Item, what: str) -> _Side:
        if not isinstance(item, dict):
            raise RerankError(f"{what}: must be a dict with 'text', 'image' and/or 'video'")
        vision = Vision([], [])
        try:
            content: list[ContentItem] = (media_content(item, self.budget, vision) if has_input(item)
                                          else [{"type": "text", "text": "NULL"}])
        except VisionInputError as e:
            raise RerankError(f"{what}: {e}") from e
        return _Side(content, vision)

    def conversation(self, query: _Side, doc: _Side, instruction: str | None) -> tuple[list[ChatTurn], Vision]:
        """The official pair layout; vision lists follow placeholder order (query first, then document)."""
        user: list[ContentItem] = [
            {"type": "text", "text": "<Instruct>: " + (instruction or self.default_instruction)},
            {"type": "text", "text": "<Query>:"},
            *query.content,
            {"type": "text", "text": "\n<Document>:"},
            *doc.content,
        ]
        conv: list[ChatTurn] = [
            {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
            {"role": "user", "content": user},
        ]
        vision = Vision(query.vision.images + doc.vision.images, query.vision.videos + doc.vision.videos)
        return conv, vision

    def prompt(self, query: Item, document: Item, instruction: str | None = None) -> str:
        """The rendered pair prompt (before vision placeholders are expanded)."""
        conv, _ = self.conversation(self._side(query, "query"), self._side(document, "document"), instruction)
        text: str = self.processor.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        return text

    def encode_pairs(self, query: Item, documents: Sequence[Item], instruction: str | None = None) -> tuple[_Side, list[Encoded]]:
        q = self._side(query, item_name(query).replace("item", "query", 1))
        encoded = []
        for i, d in enumerate(documents):
            name = item_name(d, i).replace("item", "document", 1)
            conv, vision = self.conversation(q, self._side(d, name), instruction)
            enc = encode(self.processor, conv, vision, name=name)
            encoded.append(truncate(enc, self.max_length, self.protected_ids, TEMPLATE_TAIL))
        return q, encoded

    # -- scoring ------------------------------------------------------------------------------------------------
    def _scores(self, hidden_last: torch.Tensor) -> list[float]:
        logits = hidden_last.float() @ self.score_vector.to(hidden_last.device, torch.float32)
        return torch.sigmoid(logits).cpu().tolist()

    @torch.inference_mode()
    def score_encoded(self, batch: Sequence[Encoded]) -> list[float]:
        """Full pairs, left-padded into one batch (the plain path; also the official one with a batch of one)."""
        inputs = to_device(collate(batch, self.pad_id, "left"), self.device, self.dtype)
        out = self.model(**inputs, use_cache=False)
        return self._scores(out.last_hidden_state[:, -1])

    def score(self, query: Item, documents: Sequence[Item], instruction: str | None = None,
              batch_size: int | None = None, share_prefix: bool = True) -> list[float]:
        """Scores in (0, 1), one per document, in input order."""
        if not documents:
            return []
        bs = max(1, batch_size or self.batch_size)
        q, encoded = self.encode_pairs(query, documents, instruction)
        if not share_prefix or len(encoded) == 1:
            order = sorted(range(len(encoded)), key=lambda i: encoded[i].length)
            scores = [0.0] * len(encoded)
            for s in range(0, len(order), bs):
                idx = order[s:s + bs]
                for i, sc in zip(idx, self.score_encoded([encoded[i] for i in idx]), strict=False):
                    scores[i] = sc
            return scores
        return self._score_shared_prefix(q, encoded, bs)

    # -- shared prefix ------------------------------------------------------------------------------------------
    def _prefix_length(self, q: _Side, encoded: Sequence[Encoded]) -> int:
        """Longest common token prefix that holds all query vision tokens and no document vision token."""
        first = encoded[0].input_ids
        limit = min(e.length for e in encoded) - 1
        common = limit
        for e in encoded[1:]:
            neq = (e.input_ids[:limit] != first[:limit]).nonzero()
            if len(neq):
                common = min(common, int(neq[0]))
        merge = self.model.config.vision_config.spatial_merge_size ** 2
        e0 = encoded[0]
        n_query_vision = 0
        for grid, n in ((e0.image_grid_thw, len(q.vision.images)), (e0.video_grid_thw, len(q.vision.videos))):
            if grid is not None and n:
                n_query_vision += int(grid[:n].prod(dim=1).sum()) // merge
        seen = 0
        for pos in range(common):
            if e0.mm_token_type_ids[pos] != 0:
                seen += 1
                if seen > n_query_vision:
                    return pos
        return common

    @staticmethod
    def _split_pixels(enc: Encoded, n_images: int, n_videos: int) -> dict[str, tuple[_Pixels, _Pixels]]:
        """Split a pair's pixels into (query part, document part) per modality."""
        out: dict[str, tuple[_Pixels, _Pixels]] = {}
        for pv_key, grid_key, n in (("pixel_values", "image_grid_thw", n_images),
                                    ("pixel_values_videos", "video_grid_thw", n_videos)):
            pv, grid = getattr(enc, pv_key), getattr(enc, grid_key)
            if grid is None:
                out[pv_key] = ((None, None), (None, None))
                continue
            cut = int(grid[:n].prod(dim=1).sum())
            q: _Pixels = (pv[:cut], grid[:n]) if n else (None, None)
            d: _Pixels = (pv[cut:], grid[n:]) if len(grid) > n else (None, None)
            out[pv_key] = (q, d)
        return out

    @torch.inference_mode()
    def _score_shared_prefix(self, q: _Side, encoded: list[Encoded], bs: int) -> list[float]:
        from transformers import DynamicCache

        model, dev = self.model, self.device
        P = self._prefix_length(q, encoded)
        n_img, n_vid = len(q.vision.images), len(q.vision.videos)
        # Full 3-D (M-RoPE) positions per pair; the prefix part is the same for all pairs.
        positions, splits = [], []
        for e in encoded:
            pos, _ = model.get_rope_index(
                e.input_ids[None].to(dev), e.mm_token_type_ids[None].to(dev),
                image_grid_thw=None if e.image_grid_thw is None else e.image_grid_thw.to(dev),
                video_grid_thw=None if e.video_grid_thw is None else e.video_grid_thw.clone().to(dev),
            )
            positions.append(pos)
            splits.append(self._split_pixels(e, n_img, n_vid))
        first = encoded[0]
        prefix_inputs: dict[str, Any] = {
            "input_ids": first.input_ids[None, :P].to(dev),
            "mm_token_type_ids": first.mm_token_type_ids[None, :P].to(dev),
            "attention_mask": torch.ones((1, P), dtype=torch.long, device=dev),
            "position_ids": positions[0][:, :, :P],
        }
        for pv_key, grid_key in (("pixel_values", "image_grid_thw"), ("pixel_values_videos", "video_grid_thw")):
            (pv, grid), _ = splits[0][pv_key]
            if pv is not None and grid is not None:
                prefix_inputs[pv_key] = pv.to(dev, self.dtype)
                prefix_inputs[grid_key] = grid.to(dev)
        cache = DynamicCache(config=model.config)
        model(**prefix_inputs, cache=cache, use_cache=True)
        prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] = [
            (layer.keys, layer.values) for layer in cache.layers  # type: ignore[misc,union-attr]  # full-attention layers
        ]

        order = sorted(range(len(encoded)), key=lambda i: encoded[i].length)
        scores = [0.0] * len(encoded)
        for s in range(0, len(order), bs):
            idx = order[s:s + bs]
            B = len(idx)
            width = max(encoded[i].length - P for i in idx)
            ids = torch.full((B, width), self.pad_id, dtype=torch.long)
            types = torch.zeros((B, width), dtype=torch.long)
            mask = torch.zeros((B, P + width), dtype=torch.long)
            mask[:, :P] = 1
            pos = torch.zeros((3, B, width), dtype=positions[0].dtype, device=dev)
            pix: dict[str, list[torch.Tensor]] = {"pixel_values": [], "image_grid_thw": [],
                                                   "pixel_values_videos": [], "video_grid_thw": []}
            for row, i in enumerate(idx):
                e = encoded[i]
                n = e.length - P
                ids[row, width - n:] = e.input_ids[P:]
                types[row, width - n:] = e.mm_token_type_ids[P:]
                mask[row, P + width - n:] = 1
                pos[:, row, width - n:] = positions[i][:, 0, P:]
                for pv_key, grid_key in (("pixel_values", "image_grid_thw"), ("pixel_values_videos", "video_grid_thw")):
                    _, (pv, grid) = splits[i][pv_key]
                    if pv is not None and grid is not None:
                        pix[pv_key].append(pv)
                        pix[grid_key].append(grid)
            batch_cache = DynamicCache(config=model.config)
            for layer, (k, v) in enumerate(prefix_kv):
                batch_cache.update(k.expand(B, -1, -1, -1).contiguous(), v.expand(B, -1, -1, -1).contiguous(), layer)
            inputs: dict[str, Any] = {
                "input_ids": ids.to(dev), "mm_token_type_ids": types.to(dev), "attention_mask": mask.to(dev),
                "position_ids": pos,
            }
            for key, parts in pix.items():
                if parts:
                    cat = torch.cat(parts, dim=0).to(dev)
                    inputs[key] = cat.to(self.dtype) if key.startswith("pixel") else cat
            out = model(**inputs, cache=batch_cache, use_cache=True)
            for i, sc in zip(idx, self._scores(out.last_hidden_state[:, -1]), strict=False):
                scores[i] = sc
        return scores
