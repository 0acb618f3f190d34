"""Model layer on the tiny checkpoint: official prompt layout, equality with the independent reference, MRL,
streaming, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import noise_image
from reference_qwen3vl import ReferenceEmbedder, ReferenceReranker

from rag.config import VisionBudget
from rag.models.embedder import Embedder, EmbeddingError, normalise_instruction
from rag.models.reranker import Reranker, RerankError

SYS_EMB = "<|im_start|>system\nRepresent the user's input.<|im_end|>\n"
TAIL = "<|im_end|>\n<|im_start|>assistant\n"
IMG = "<|vision_start|><|image_pad|><|vision_end|>"
VID = "<|vision_start|><|video_pad|><|vision_end|>"
JUDGE = ('<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the '
         'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n')
INSTRUCT = "<Instruct>: Given a search query, retrieve relevant candidates that answer the query."


@pytest.fixture(scope="module")
def ref_embedder(tiny_model_dir: Path) -> ReferenceEmbedder:
    """The independent reference (tests/reference_qwen3vl.py), loaded by transformers itself, not by the product."""
    return ReferenceEmbedder.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def ref_reranker(tiny_model_dir: Path) -> ReferenceReranker:
    return ReferenceReranker.from_pretrained(tiny_model_dir)


# -- prompt layout (STACK.md §4) ------------------------------------------------------------------------------------
def test_embedder_prompt_layout_matches_official(embedder: Embedder, media_dir: Path) -> None:
    a, clip = str(media_dir / "a.png"), str(media_dir / "clip.mp4")
    assert embedder.prompt({"text": "E13 on display"}) == f"{SYS_EMB}<|im_start|>user\nE13 on display{TAIL}"
    assert embedder.prompt({"image": a}) == f"{SYS_EMB}<|im_start|>user\n{IMG}{TAIL}"
    # content order is videos, images, texts whatever order the keys come in
    assert embedder.prompt({"text": "what is this", "image": a}) == f"{SYS_EMB}<|im_start|>user\n{IMG}what is this{TAIL}"
    assert embedder.prompt({"text": "t", "image": a, "video": clip}) == f"{SYS_EMB}<|im_start|>user\n{VID}{IMG}t{TAIL}"
    assert embedder.prompt({}) == f"{SYS_EMB}<|im_start|>user\nNULL{TAIL}"
    custom = embedder.prompt({"text": "x"}, instruction="  Retrieve the matching fault case ")
    assert custom.startswith("<|im_start|>system\nRetrieve the matching fault case.<|im_end|>")


def test_instruction_punctuation_rule() -> None:
    assert normalise_instruction("Find cases") == "Find cases."
    assert normalise_instruction("Find cases?") == "Find cases?"
    assert normalise_instruction("查找故障。") == "查找故障。"
    assert normalise_instruction(None) == "Represent the user's input."
    assert normalise_instruction("   ") == "Represent the user's input."


def test_reranker_prompt_layout_matches_official(reranker: Reranker, media_dir: Path) -> None:
    a, clip = str(media_dir / "a.png"), str(media_dir / "clip.mp4")
    p = reranker.prompt({"text": "E13", "image": a}, {"text": "Fuser fault"})
    assert p == f"{JUDGE}<|im_start|>user\n{INSTRUCT}<Query>:{IMG}E13\n<Document>:Fuser fault{TAIL}"
    p = reranker.prompt({"video": clip}, {"image": a, "text": "d"}, instruction="Find the case")
    assert p == f"{JUDGE}<|im_start|>user\n<Instruct>: Find the case<Query>:{VID}\n<Document>:{IMG}d{TAIL}"
    p = reranker.prompt({}, {})
    assert p == f"{JUDGE}<|im_start|>user\n{INSTRUCT}<Query>:NULL\n<Document>:NULL{TAIL}"


def test_image_tokens_follow_official_pixel_budget(embedder: Embedder, media_dir: Path) -> None:
    enc = embedder.encode_item({"image": str(media_dir / "b.jpg")})  # 640×480 → 640×480 (multiples of 32)
    n_img = int((enc.input_ids == embedder.processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())
    assert n_img == (640 // 32) * (480 // 32)
    assert enc.image_grid_thw.tolist() == [[1, 480 // 16, 640 // 16]]
    small = embedder.encode_item({"image": noise_image(0, 32, 32)})  # below min_pixels → upscaled to 4 tokens
    assert int((small.mm_token_type_ids == 1).sum()) == 4


# -- embedder behaviour ----------------------------------------------------------------------------------------------
def _items(media_dir: Path) -> list[dict]:
    return [
        {"text": "printer shows E13 and the amber LED blinks"},
        {"image": str(media_dir / "a.png")},
        {"image": noise_image(3), "text": "what is wrong"},
        {"text": "pump pressure gauge reads 0 bar " * 5},
        {"video": str(media_dir / "clip.mp4"), "text": "blinking"},
        {"image": str(media_dir / "b.jpg")},
        {},
    ]


def test_embed_shapes_and_normalisation(embedder: Embedder, media_dir: Path) -> None:
    v = embedder.embed(_items(media_dir))
    assert v.shape == (7, embedder.dim) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert np.abs(v[1] - v[5]).max() > 1e-3, "different images must give different vectors"


def test_embed_batch_equals_single_and_official(embedder: Embedder, ref_embedder: ReferenceEmbedder,
                                                media_dir: Path) -> None:
    items = _items(media_dir)
    batched = embedder.embed(items, batch_size=4)
    single = np.stack([embedder.embed([it])[0] for it in items])
    assert np.abs(batched - single).max() <= 1e-5
    official = ref_embedder.embed(items)  # one item per forward
    assert np.abs(batched - official).max() <= 1e-5
    official_batch = ref_embedder.embed(items, batch_size=len(items))  # the official strategy: one padded batch
    assert np.abs(batched - official_batch).max() <= 1e-5


def test_embed_pools_last_token_of_generation_prompt(embedder: Embedder) -> None:
    enc = embedder.encode_item({"text": "abc"})
    tok = embedder.processor.tokenizer
    assert tok.decode(enc.input_ids[-5:]).endswith("<|im_start|>assistant\n")
    with torch.inference_mode():
        hidden = embedder.model(input_ids=enc.input_ids[None], attention_mask=torch.ones_like(enc.input_ids[None])).last_hidden_state
    ref = torch.nn.functional.normalize(hidden[0, -1], dim=-1).numpy()
    assert np.abs(embedder.embed([{"text": "abc"}])[0] - ref).max() <= 1e-5


def test_mrl_prefix_renormalised(embedder: Embedder, media_dir: Path) -> None:
    items = _items(media_dir)[:3]
    full = embedder.embed(items)
    short = embedder.embed(items, dim=64)
    assert short.shape == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(short, axis=1), 1.0, atol=1e-5)
    expected = full[:, :64] / np.linalg.norm(full[:, :64], axis=1, keepdims=True)
    assert np.abs(short - expected).max() <= 1e-6
    for bad in (32, embedder.dim + 1):
        with pytest.raises(ValueError, match="dim must be between 64"):
            embedder.embed(items, dim=bad)


def test_instruction_changes_embedding(embedder: Embedder) -> None:
    a = embedder.embed([{"text": "E13"}])
    b = embedder.embed([{"text": "E13"}], instruction="Retrieve fault cases that match the symptom")
    c = embedder.embed([{"text": "E13", "instruction": "Retrieve fault cases that match the symptom"}])
    assert np.abs(a - b).max() > 1e-4
    assert np.abs(b - c).max() <= 1e-6


def test_truncation_keeps_vision_and_suffix(tiny_model_dir: Path, media_dir: Path) -> None:
    emb = Embedder.from_pretrained(tiny_model_dir, dtype="float32", device="cpu", max_length=60)
    item = {"image": noise_image(5, 64, 64), "text": "word " * 200}
    enc = emb.encode_item(item)
    assert enc.length == 60
    assert int((enc.mm_token_type_ids == 1).sum()) == 4  # all image tokens survive
    assert emb.processor.tokenizer.decode(enc.input_ids[-5:]).endswith("<|im_start|>assistant\n")
    assert emb.embed([item]).shape == (1, emb.dim)
    tiny_budget = Embedder.from_pretrained(tiny_model_dir, dtype="float32", device="cpu", max_length=20)
    with pytest.raises(EmbeddingError, match="vision and template tokens alone exceed"):
        tiny_budget.embed([{"image": str(media_dir / "b.jpg")}])


# -- errors ----------------------------------------------------------------------------------------------------------
def test_missing_file_error_names_item(embedder: Embedder, media_dir: Path) -> None:
    items = [{"text": "ok"}, {"text": "fine"}, {"image": str(media_dir / "nope.png")}]
    with pytest.raises(EmbeddingError, match=r"item 2 .*file not found: '.*nope.png'"):
        embedder.embed(items)


def test_corrupt_image_error(embedder: Embedder, media_dir: Path) -> None:
    with pytest.raises(EmbeddingError, match=r"item 0 .*(corrupt|not a readable image).*corrupt.png"):
        embedder.embed([{"image": str(media_dir / "corrupt.png")}])


def test_over_budget_image_refused(tiny_model_dir: Path, media_dir: Path) -> None:
    emb = Embedder.from_pretrained(tiny_model_dir, dtype="float32", device="cpu",
                                   budget=VisionBudget(max_image_pixels=100_000))
    with pytest.raises(EmbeddingError, match=r"640x480 = 307,200 pixels, more than the limit of 100,000"):
        emb.embed([{"image": str(media_dir / "b.jpg")}])


def test_unknown_keys_and_bad_types(embedder: Embedder) -> None:
    with pytest.raises(EmbeddingError, match="unknown keys \\['img'\\]"):
        embedder.embed([{"img": "x.png"}])
    with pytest.raises(EmbeddingError, match="unsupported image input type int"):
        embedder.embed([{"image": 42}])


def test_single_frame_video_is_embedded_as_its_frame(embedder: Embedder, media_dir: Path) -> None:
    """Qwen3-VL needs ≥2 frames per video; a 1-frame clip is sent as an image instead of failing."""
    import av

    with av.open(str(media_dir / "one_frame.mp4")) as c:
        frame = next(c.decode(video=0)).to_image()
    v_video = embedder.embed([{"video": str(media_dir / "one_frame.mp4")}])
    v_image = embedder.embed([{"image": frame}])
    assert np.abs(v_video - v_image).max() <= 1e-5
    assert embedder.prompt({"video": [frame]}) == embedder.prompt({"image": frame})


def test_video_from_path_and_frames(embedder: Embedder, media_dir: Path) -> None:
    enc = embedder.encode_item({"video": str(media_dir / "clip.mp4")})
    assert enc.video_grid_thw is not None and int(enc.video_grid_thw[0, 0]) >= 1
    frames = [noise_image(i, 64, 64) for i in range(5)]  # odd count: padded to a multiple of 2 like the official code
    enc2 = embedder.encode_item({"video": frames})
    assert int(enc2.video_grid_thw[0, 0]) == 3


# -- reranker ---------------------------------------------------------------------------------------------------------
def _pair_docs(media_dir: Path) -> tuple[dict, list[dict]]:
    query = {"image": noise_image(10), "text": "printer shows E13"}
    docs = [
        {"text": "Paper jam in tray 2: open the rear door"},
        {"image": noise_image(11), "text": "Fuser error E13: replace the fuser unit"},
        {"image": str(media_dir / "a.png")},
        {"video": str(media_dir / "clip.mp4"), "text": "LED blinking pattern"},
        {},
        {"image": [noise_image(12, 64, 96), noise_image(13, 96, 64)], "text": "two photos"},
    ]
    return query, docs


def test_rerank_score_is_sigmoid_of_yes_minus_no_logit(ref_reranker: ReferenceReranker, reranker: Reranker) -> None:
    lm = ref_reranker.model  # the full LM head, not the reference's hand-made score vector
    e = ref_reranker.inputs({"text": "E13"}, {"text": "fuser error"})
    with torch.inference_mode():
        logits = lm(input_ids=e["input_ids"], mm_token_type_ids=e["mm_token_type_ids"]).logits[0, -1]
    vocab = reranker.processor.tokenizer.get_vocab()
    expected = torch.sigmoid(logits[vocab["yes"]] - logits[vocab["no"]]).item()
    assert reranker.score({"text": "E13"}, [{"text": "fuser error"}])[0] == pytest.approx(expected, abs=1e-5)


def test_rerank_batched_and_shared_prefix_equal_official(reranker: Reranker, ref_reranker: ReferenceReranker,
                                                         media_dir: Path) -> None:
    query, docs = _pair_docs(media_dir)
    official = np.array(ref_reranker.score(query, docs))
    assert ((official > 0) & (official < 1)).all()
    batched = np.array(reranker.score(query, docs, batch_size=4, share_prefix=False))
    shared = np.array(reranker.score(query, docs, batch_size=4, share_prefix=True))
    shared1 = np.array(reranker.score(query, docs, batch_size=1, share_prefix=True))
    assert np.abs(batched - official).max() <= 1e-5
    assert np.abs(shared - official).max() <= 1e-4
    assert np.abs(shared1 - official).max() <= 1e-4
    assert np.ptp(official) > 1e-3, "scores must depend on the document"


@pytest.mark.parametrize("query", [{"text": "only text"}, {"video": "CLIP"}, {}])
def test_rerank_shared_prefix_other_query_kinds(reranker: Reranker, ref_reranker: ReferenceReranker, media_dir: Path,
                                                query: dict) -> None:
    if query.get("video") == "CLIP":
        query = {"video": str(media_dir / "clip.mp4"), "text": "what now"}
    _, docs = _pair_docs(media_dir)
    official = np.array(ref_reranker.score(query, docs))
    shared = np.array(reranker.score(query, docs, batch_size=3))
    assert np.abs(shared - official).max() <= 1e-4


def test_rerank_errors_name_document(reranker: Reranker, media_dir: Path) -> None:
    assert reranker.score({"text": "q"}, []) == []
    with pytest.raises(RerankError, match=r"document 1 .*file not found"):
        reranker.score({"text": "q"}, [{"text": "ok"}, {"image": str(media_dir / "missing.jpg")}])
    with pytest.raises(RerankError, match=r"query .*corrupt"):
        reranker.score({"image": str(media_dir / "corrupt.png")}, [{"text": "ok"}])


# -- equality with the independent reference (tests/reference_qwen3vl.py) ----------------------------------------
# Tolerances: both sides run the same kernels in one process on float32 weights, so the only differences are
# summation orders (batching, padding, the reranker's KV-cache split): ≤1e-5 on unit vectors, ≤1e-4 on P(yes).
EMBED_ATOL, EMBED_MIN_COSINE, SCORE_ATOL = 1e-5, 1 - 1e-6, 1e-4


def _embed_cases(media_dir: Path) -> dict[str, dict]:
    frames_dir = media_dir / "frames"
    if not frames_dir.exists():
        frames_dir.mkdir()
        for i in range(4):
            noise_image(40 + i, 96, 64).save(frames_dir / f"f{i}.png")
    clip = str(media_dir / "clip.mp4")
    return {
        "text": {"text": "printer shows E13 and the amber LED blinks"},
        "texts": {"text": ["first line", "second line"]},
        "image_path": {"image": str(media_dir / "b.jpg")},
        "image_pil": {"image": noise_image(30, 200, 90)},
        "image_small": {"image": noise_image(31, 32, 32)},  # below min_pixels (64x64) but at the minimum side: upscaled
        "image_text": {"image": str(media_dir / "a.png"), "text": "what is wrong"},
        "images": {"image": [noise_image(32, 64, 96), str(media_dir / "a.png")], "text": "two photos"},
        "video_path": {"video": clip, "text": "blinking"},
        "video_frames": {"video": [noise_image(i, 64, 64) for i in range(5)]},  # odd count
        "video_frame_paths": {"video": [str(p) for p in sorted(frames_dir.glob("*.png"))]},
        "videos": {"video": [clip, clip]},
        "everything": {"video": clip, "image": noise_image(33), "text": "all of it"},
        "empty": {},
    }


def _assert_vectors_close(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.shape == ref.shape
    np.testing.assert_allclose(np.linalg.norm(ref, axis=1), 1.0, atol=1e-5)
    assert np.abs(ours - ref).max() <= EMBED_ATOL
    assert (ours * ref).sum(axis=1).min() >= EMBED_MIN_COSINE


@pytest.mark.parametrize("case", ["text", "texts", "image_path", "image_pil", "image_small", "image_text", "images",
                                  "video_path", "video_frames", "video_frame_paths", "videos", "everything", "empty"])
def test_embedder_equals_reference(embedder: Embedder, ref_embedder: ReferenceEmbedder, media_dir: Path,
                                   case: str) -> None:
    item = _embed_cases(media_dir)[case]
    ref_inputs = ref_embedder.inputs([item])
    enc = embedder.encode_item(item)
    # same tokens and the same vision tensors as the official preparation (qwen-vl-utils + the processor) ...
    assert enc.input_ids.tolist() == ref_inputs["input_ids"][0].tolist()
    for key in ("image_grid_thw", "video_grid_thw"):
        assert (getattr(enc, key) is None) == (key not in ref_inputs)
        if key in ref_inputs:
            assert getattr(enc, key).tolist() == ref_inputs[key].tolist()
    for key in ("pixel_values", "pixel_values_videos"):
        if key in ref_inputs:
            assert torch.allclose(getattr(enc, key), ref_inputs[key], atol=1e-6)
    # ... and the same vector
    _assert_vectors_close(embedder.embed([item]), ref_embedder.embed([item]))


def test_embedder_batches_equal_reference(embedder: Embedder, ref_embedder: ReferenceEmbedder, media_dir: Path) -> None:
    items = list(_embed_cases(media_dir).values())
    ref = ref_embedder.embed(items)
    _assert_vectors_close(embedder.embed(items, batch_size=4, window=5), ref)  # padded batches across windows


@pytest.mark.parametrize("instruction", [None, "Retrieve the matching fault case", "  Find cases? ", "查找故障。",
                                         "   ", "Represent the user's input."])
def test_embedder_instructions_equal_reference(embedder: Embedder, ref_embedder: ReferenceEmbedder,
                                               instruction: str | None) -> None:
    items = [{"text": "E13 on the display"}, {"image": noise_image(34), "text": "fault"}]
    ref = ref_embedder.embed([{**it, "instruction": instruction} for it in items])
    _assert_vectors_close(embedder.embed(items, instruction=instruction), ref)  # call-level instruction
    _assert_vectors_close(embedder.embed([{**it, "instruction": instruction} for it in items]), ref)  # per item
    if instruction and instruction.strip():
        assert np.abs(ref - ref_embedder.embed(items)).max() > 1e-4 or instruction == "Represent the user's input."


def _rerank_cases(media_dir: Path) -> tuple[dict[str, dict], list[dict]]:
    clip = str(media_dir / "clip.mp4")
    queries = {
        "image_text": {"image": noise_image(10), "text": "printer shows E13"},
        "images": {"image": [noise_image(14, 96, 64), noise_image(15, 64, 96)], "text": "both sides"},
        "video": {"video": clip, "text": "what now"},
        "frames": {"video": [noise_image(i, 64, 64) for i in range(4)], "text": "this clip"},
        "text": {"text": "only text"},
        "empty": {},
    }
    docs = [
        {"text": "Paper jam in tray 2: open the rear door"},
        {"image": noise_image(11), "text": "Fuser error E13: replace the fuser unit"},  # images on both sides
        {"image": str(media_dir / "a.png")},
        {"image": [noise_image(12, 64, 96), noise_image(13, 96, 64)], "text": "two photos"},
        {"video": clip, "text": "LED blinking pattern"},
        {"video": [noise_image(20 + i, 64, 64) for i in range(3)]},
        {},
    ]
    return queries, docs


@pytest.mark.parametrize("query_kind", ["image_text", "images", "video", "frames", "text", "empty"])
def test_reranker_equals_reference(reranker: Reranker, ref_reranker: ReferenceReranker, media_dir: Path,
                                   query_kind: str) -> None:
    queries, docs = _rerank_cases(media_dir)
    query = queries[query_kind]
    _, encoded = reranker.encode_pairs(query, docs)
    for enc, doc in zip(encoded, docs, strict=False):
        assert enc.input_ids.tolist() == ref_reranker.inputs(query, doc)["input_ids"][0].tolist()
    ref = np.array(ref_reranker.score(query, docs))
    assert ((ref > 0) & (ref < 1)).all() and np.ptp(ref) > 1e-4, "scores must depend on the document"
    configs: list[dict] = [{}, {"batch_size": 1}]  # shared prefix: batched (the default) and one document at a time
    if query_kind in ("image_text", "video"):  # the plain padded path (costly with videos: two query kinds suffice)
        configs.append({"share_prefix": False, "batch_size": 3})
    for kwargs in configs:
        ours = np.array(reranker.score(query, docs, **kwargs))
        assert np.abs(ours - ref).max() <= SCORE_ATOL, kwargs


@pytest.mark.parametrize("instruction", [None, "Find the case that fixes this fault", "Is this the same device?"])
def test_reranker_instructions_equal_reference(reranker: Reranker, ref_reranker: ReferenceReranker,
                                               instruction: str | None) -> None:
    query = {"image": noise_image(16), "text": "E13"}
    docs = [{"text": "fuser"}, {"image": noise_image(17), "text": "tray"}]
    ref = np.array(ref_reranker.score(query, docs, instruction=instruction))
    assert np.abs(np.array(reranker.score(query, docs, instruction=instruction)) - ref).max() <= SCORE_ATOL


class _Counter:
    """Forward hooks that record what the language model and the vision tower are given."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.lm_tokens: list[int] = []  # batch × sequence of every language-model forward
        self.vision_patches: list[int] = []  # pixel rows (16×16×2 patches) of every vision-tower forward
        self._handles = [
            model.language_model.register_forward_pre_hook(self._lm, with_kwargs=True),
            model.visual.register_forward_pre_hook(self._vision, with_kwargs=True),
        ]

    def _lm(self, _mod: object, args: tuple, kwargs: dict) -> None:
        shape = kwargs["inputs_embeds"].shape  # Qwen3VLModel hands the text model embeddings (vision merged in)
        self.lm_tokens.append(int(shape[0]) * int(shape[1]))

    def _vision(self, _mod: object, args: tuple, kwargs: dict) -> None:
        pixels = args[0] if args else kwargs["hidden_states"]
        self.vision_patches.append(int(pixels.shape[0]))

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def test_rerank_shared_prefix_runs_the_prefix_once(reranker: Reranker, ref_reranker: ReferenceReranker,
                                                   media_dir: Path) -> None:
    """The query prefix (judge prompt, instruction, query image) goes through the model once for N documents."""
    query = {"image": noise_image(10), "text": "printer shows E13"}
    docs = [
        {"text": "Paper jam in tray 2: open the rear door"},
        {"image": noise_image(11), "text": "Fuser error E13"},
        {"text": "Blinking amber LED means low toner"},
        {"image": str(media_dir / "a.png")},
        {"video": str(media_dir / "clip.mp4"), "text": "pump"},
    ]
    # expected counts from the reference's own tokenisation of each full pair
    pair_inputs = [ref_reranker.inputs(query, d) for d in docs]
    ids = [x["input_ids"][0].tolist() for x in pair_inputs]
    prefix = 0
    while all(len(x) > prefix + 1 for x in ids) and len({x[prefix] for x in ids}) == 1:
        prefix += 1
    tok = ref_reranker.processor.tokenizer
    assert tok.decode(ids[0][:prefix]).endswith("\n<Document>:"), "premise: the documents differ from their first token"
    q_patches = int(pair_inputs[0]["image_grid_thw"][0].prod())
    doc_patches = []
    for x in pair_inputs:
        grids = [g for key in ("image_grid_thw", "video_grid_thw") if key in x for g in x[key]]
        doc_patches.append(sum(int(g.prod()) for g in grids) - q_patches)

    counter = _Counter(reranker.model)
    try:
        scores = reranker.score(query, docs, batch_size=1)
    finally:
        counter.close()
    assert np.abs(np.array(scores) - np.array(ref_reranker.score(query, docs))).max() <= SCORE_ATOL
    # one forward for the prefix, then one per document with only its suffix
    assert counter.lm_tokens[0] == prefix
    assert sorted(counter.lm_tokens[1:]) == sorted(len(x) - prefix for x in ids)
    assert sum(counter.lm_tokens) == prefix + sum(len(x) - prefix for x in ids) < sum(len(x) for x in ids)
    # the query image is encoded once, each document's media once
    assert sum(counter.vision_patches) == q_patches + sum(doc_patches)

    # batched documents: still one prefix pass; each batch is as wide as its longest suffix
    counter = _Counter(reranker.model)
    try:
        reranker.score(query, docs, batch_size=len(docs))
    finally:
        counter.close()
    assert counter.lm_tokens == [prefix, len(docs) * max(len(x) - prefix for x in ids)]
    assert sum(counter.vision_patches) == q_patches + sum(doc_patches)


def test_reference_is_independent_of_the_product() -> None:
    """The oracle imports only the published stack, never the code it judges."""
    import ast

    import reference_qwen3vl

    tree = ast.parse(Path(reference_qwen3vl.__file__).read_text())
    roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    roots |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert roots <= {"__future__", "os", "unicodedata", "pathlib", "typing", "numpy", "torch", "PIL", "qwen_vl_utils",
                     "transformers"}, roots


def test_bench_models_uses_the_test_reference(tmp_path: Path) -> None:
    """One copy of the reference: ``bench models`` loads this very file, and says so when a checkout lacks it."""
    import reference_qwen3vl

    from eval.bench_models import ReferenceUnavailable, load_reference

    assert Path(load_reference().__file__).resolve() == Path(reference_qwen3vl.__file__).resolve()
    with pytest.raises(ReferenceUnavailable, match=r"reference_qwen3vl.py.*source checkout"):
        load_reference(tmp_path / "tests" / "reference_qwen3vl.py")


# -- generator ---------------------------------------------------------------------------------------------------------
def _messages() -> list[dict]:
    return [
        {"role": "system", "content": "You are a support assistant."},
        {"role": "user", "content": [{"type": "image", "image": noise_image(20)}, {"type": "text", "text": "What is wrong?"}]},
    ]


def test_stream_equals_generate(generator) -> None:
    full = generator.generate(_messages(), max_new_tokens=24)
    chunks = list(generator.stream(_messages(), max_new_tokens=24))
    assert len(full) > 0 and len(chunks) > 1
    assert "".join(chunks) == full


def test_stop_strings_cut_both_paths(generator) -> None:
    full = generator.generate(_messages(), max_new_tokens=24)
    stop = full[4:7]
    assert len(stop) == 3
    cut = generator.generate(_messages(), max_new_tokens=24, stop=[stop])
    assert stop not in cut and full.startswith(cut) and len(cut) < len(full)
    assert "".join(generator.stream(_messages(), max_new_tokens=24, stop=[stop])) == cut


def test_generator_video_and_errors(generator, media_dir: Path) -> None:
    from rag.models.generator import GenerationError

    msgs = [{"role": "user", "content": [{"type": "video", "video": str(media_dir / "clip.mp4")}, {"type": "text", "text": "?"}]}]
    assert isinstance(generator.generate(msgs, max_new_tokens=4), str)
    with pytest.raises(GenerationError, match=r"message 0 item 0: .*file not found"):
        generator.generate([{"role": "user", "content": [{"type": "image", "image": "/nope.png"}]}])
    with pytest.raises(GenerationError, match="role must be"):
        generator.generate([{"role": "robot", "content": "hi"}])


def test_missing_model_message_is_actionable(tmp_path: Path) -> None:
    from rag.models.loading import ModelNotAvailableError

    with pytest.raises(ModelNotAvailableError, match="make-tiny|--models tiny") as err:
        Embedder.from_pretrained("Qwen/Qwen3-VL-Embedding-2B")
    assert "RAGVQA_EMBEDDER_MODEL" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotAvailableError, match="no config.json"):
        Reranker.from_pretrained(tmp_path / "empty")


@pytest.mark.slow
def test_bench_models_reports_equal_outputs_and_component_split(tiny_model_dir: Path) -> None:
    from eval.bench_models import run_models_bench, to_markdown

    res = run_models_bench(tiny_model_dir, repeats=1, n_docs=3)
    e, r = res["embed"], res["rerank"]
    assert e["items"] == 64 and r["documents"] == 3
    assert e["max_abs_diff"] <= 1e-5 and r["max_abs_diff"] <= 1e-4  # the speedups are at equal outputs
    for arm in ("baseline", "ours"):
        split = e["seconds_by_component"][arm]
        assert 0 < split["vision"] and 0 < split["language_model"]
        assert split["vision"] + split["language_model"] <= {"baseline": e["baseline_s"], "ours": e["ours_s"]}[arm]
    assert e["speedup_ceiling_free_lm"] >= e["speedup"]
    assert "at most" in to_markdown(res)
