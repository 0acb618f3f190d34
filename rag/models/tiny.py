"""Random-weight Qwen3-VL checkpoints built offline: tiny (tests, smoke runs), bench (timing), full-2B shape.

No model hub is reachable, so tests and smoke runs need a real checkpoint built on the spot: a byte-level BPE
tokenizer in Qwen's style, the real Qwen3-VL processor classes and a randomly initialised
``Qwen3VLForConditionalGeneration``. Everything downstream (embedder, reranker, generator) loads it through the same
``from_pretrained`` path as real weights.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # pragma: no cover - transformers is imported when a checkpoint is built
    from transformers import Qwen2Tokenizer, Qwen3VLConfig, Qwen3VLProcessor

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

#: The layout of Qwen3-VL's own chat template (system text, user items in order, vision placeholders).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for item in message['content'] %}"
    "{%- if item['type'] == 'image' or 'image' in item or 'image_url' in item %}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif item['type'] == 'video' or 'video' in item %}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in item %}{{- item['text'] }}"
    "{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_CORPUS = """
system user assistant system user assistant system user assistant
yes no Yes No yes. no. The the a an is are was of to in and or for on with at by from this that it as be
Represent the user's input. Judge whether the Document meets the requirements based on the Query and the Instruct
provided. Note that the answer can only be "yes" or "no". Given a search query, retrieve relevant candidates that
answer the query. <Instruct>: <Query>: <Document>: NULL
printer error code paper jam fuser toner drum tray LED blinking red green amber orange off on steady flashing
pump pressure gauge bar psi seal leak cavitation impeller motor overheating vibration bearing noise valve
HVAC thermostat compressor fan coil filter refrigerant defrost heat cool fault code sensor thermistor
terminal screen display dialog network offline card reader battery power supply reboot firmware update
case symptom cause solution step replace clean check reset restart inspect tighten open close remove install
What is wrong and how do I fix it? Which case matches? Answer using the cases below. Cite cases as [case-id].
0 1 2 3 4 5 6 7 8 9 10 11 12 E01 E02 E13 E50 F1 F2 F3 P04 A100 B2 C3 - _ . , : ; ! ? ( ) [ ] / \\ " ' # % + = *
"""

CheckpointSize = Literal["tiny", "bench", "full-2b"]


def build_tokenizer(extra_corpus: str = "") -> Qwen2Tokenizer:
    """A Qwen-style byte-level BPE tokenizer in which "yes" and "no" are single tokens (the reranker needs them)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    pattern = (
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
    )
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1200,
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([_CORPUS * 3, extra_corpus], trainer=trainer)
    model_json = __import__("json").loads(bpe.to_str())["model"]
    vocab: dict[str, int] = model_json["vocab"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model_json["merges"]]
    tok = Qwen2Tokenizer(  # the tokenizers merge pairs and a tokenizer without unk are valid, whatever the stubs say
        vocab=vocab,
        merges=merges,  # type: ignore[arg-type]
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,  # type: ignore[arg-type]
        bos_token=None,
    )
    tok.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    tok.add_special_tokens({"pad_token": "<|endoftext|>"})
    for word in ("yes", "no"):
        ids = tok.encode(word, add_special_tokens=False)
        if len(ids) != 1:
            raise RuntimeError(f"tiny tokenizer must encode {word!r} as one token, got {ids}")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _shape(size: CheckpointSize) -> tuple[dict[str, int | list[int]], dict[str, int | list[int]]]:
    text: dict[str, int | list[int]]
    vision: dict[str, int | list[int]]
    if size == "tiny":
        text = dict(
            hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=32, mrope=[8, 4, 4],
        )
        # 128 wide (not 64) so that Matryoshka prefixes (≥64) can be tested below the full size.
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=128,
                      num_position_embeddings=64, deepstack_visual_indexes=[0, 1])
    elif size == "bench":
        # Same family, a few hundred MB: wide enough that matrix work dominates like in the real model.
        text = dict(
            hidden_size=768, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=12,
            num_key_value_heads=4, head_dim=64, mrope=[12, 10, 10],
        )
        vision = dict(depth=8, hidden_size=384, intermediate_size=1536, num_heads=6, out_hidden_size=768,
                      num_position_embeddings=2304, deepstack_visual_indexes=[1, 4, 7])
    elif size == "full-2b":
        text = dict(
            hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
            num_key_value_heads=8, head_dim=128, mrope=[24, 20, 20],
        )
        vision = dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2048,
                      num_position_embeddings=2304, deepstack_visual_indexes=[5, 11, 17])
    else:  # pragma: no cover - guarded by typer/Literal
        raise ValueError(f"unknown checkpoint size {size!r}; choose tiny, bench or full-2b")
    return text, vision


def build_config(tok: Qwen2Tokenizer, size: CheckpointSize = "tiny", vocab_size: int | None = None) -> Qwen3VLConfig:
    """A Qwen3VLConfig whose special token ids match ``tok`` (a mismatch silently breaks vision placement)."""
    from transformers import Qwen3VLConfig

    text, vision = _shape(size)
    mrope = text.pop("mrope")
    ids: dict[str, int] = {t: int(tok.convert_tokens_to_ids(t)) for t in SPECIAL_TOKENS}  # type: ignore[arg-type]  # one token in, one id out
    text_config = dict(
        vocab_size=vocab_size or len(tok),
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": mrope,
                         "mrope_interleaved": True},
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=size != "tiny",
        **text,
    )
    vision_config = dict(patch_size=16, spatial_merge_size=2, temporal_patch_size=2, in_channels=3, **vision)
    return Qwen3VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=size != "tiny",
    )


def build_processor(tok: Qwen2Tokenizer, min_pixels: int = 4 * 32 * 32,
                    max_pixels: int = 1800 * 32 * 32) -> Qwen3VLProcessor:
    """The real Qwen3-VL processor classes with the official patch geometry."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    mean, std = [0.5] * 3, [0.5] * 3
    image_processor = Qwen2VLImageProcessor(size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
                                            patch_size=16, temporal_patch_size=2, merge_size=2,
                                            image_mean=mean, image_std=std)
    video_processor = Qwen3VLVideoProcessor(
        size={"shortest_edge": 128 * 32 * 32, "longest_edge": 768 * 32 * 32 * 2},
        fps=2, min_frames=2, max_frames=64, cap_pixels_per_frame=True,
        patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=mean, image_std=std,
    )
    return Qwen3VLProcessor(
        image_processor=image_processor, tokenizer=tok, video_processor=video_processor, chat_template=CHAT_TEMPLATE
    )


def make_checkpoint(out_dir: str | Path, size: CheckpointSize = "tiny", seed: int = 0, dtype: str | None = None,
                    device: str | None = None) -> Path:
    """Build and save tokenizer + processor + random weights to ``out_dir``; returns the directory.

    ``dtype`` (e.g. ``bfloat16``, like the published checkpoints) and ``device`` (e.g. ``cuda``) make a 2B-shape
    build fast where it matters: the random init runs on the GPU (seconds instead of ≈70 s on 2 CPU cores) and the
    file is half the size. The default (float32, CPU) keeps the checkpoints the tests have always used.
    """
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    processor = build_processor(tok)
    # The full-size shape keeps the real vocabulary size so timing matches the published model.
    cfg = build_config(tok, size, vocab_size=151936 if size == "full-2b" else None)
    torch.manual_seed(seed)
    if dtype is None and device is None:
        model = Qwen3VLForConditionalGeneration(cfg)
    else:
        dt = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype or "float32"]
        if device and device.startswith("cuda"):
            torch.cuda.manual_seed_all(seed)
        with torch.device(device or "cpu"):
            model = Qwen3VLForConditionalGeneration._from_config(cfg, dtype=dt)
    if size == "tiny":
        # Random init gives near-identical hidden states; a wider spread makes scores and rankings informative.
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() >= 2:
                    p.normal_(0.0, 0.08)
    model.eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    # benchmarks say so next to quality figures measured on it
    (out / "RANDOM_WEIGHTS").write_text(f"random {size} Qwen3-VL checkpoint (rag.models.tiny, seed {seed})\n")
    n = sum(p.numel() for p in model.parameters())
    logger.info("saved %s Qwen3-VL checkpoint (%.1fM parameters) to %s", size, n / 1e6, out)
    return out
