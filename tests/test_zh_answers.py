"""Answers in the question's language, and streamed CJK text that never shows a broken character.

The streaming tests use the tiny checkpoint's real byte-level BPE tokenizer: its vocabulary has no CJK merges, so
every CJK character (3 UTF-8 bytes) is split over several tokens, the worst case for a streamer. The reference for
what may be shown after each token is computed here from the published GPT-2 byte-to-unicode table, not from the
tokenizer's decoder.
"""

from __future__ import annotations

import pytest
import torch
from test_pipeline import kb, make_pipeline  # noqa: F401 - the module-scoped store fixture

from rag.i18n import answer_lang, detect_lang, negotiate
from rag.models.generator import WholeCharStreamer, hold_for_stop
from rag.pipeline import Query
from rag.pipeline.types import CaseCandidate

CJK = "打印机显示错误代码E13，定影器过热。请关机冷却30分钟，然后检查热敏电阻 [prn-e13]。"


def gpt2_bytes_to_unicode() -> dict[str, int]:
    """GPT-2's reversible byte ↔ printable-character table (openai/gpt-2 encoder.py), inverted: char → byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def token_bytes(tok, ids: list[int]) -> bytes:
    table = gpt2_bytes_to_unicode()
    return b"".join(bytes(table[ch] for ch in piece) for piece in tok.convert_ids_to_tokens(ids))


def complete_prefix(text: str, n_bytes: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 form fits in its first ``n_bytes`` bytes (whole characters)."""
    k, used = 0, 0
    while k < len(text) and used + len(text[k].encode()) <= n_bytes:
        used += len(text[k].encode())
        k += 1
    return text[:k]


def stream_ids(streamer, ids: list[int]) -> list[str]:
    """Feed ``ids`` one token at a time (after a prompt, as generate() does); the text seen after each token."""
    seen: list[str] = []
    streamer.put(torch.tensor([[1, 2, 3]]))  # the prompt, skipped
    shown = ""
    for i in ids:
        streamer.put(torch.tensor([i]))
        while not streamer._queue.empty():  # noqa: SLF001 - what a reader could have shown by now
            item = streamer._queue.get()
            assert item is not None
            shown += item
        seen.append(shown)
    streamer.end()
    seen.append(shown + "".join(streamer))
    return seen


def test_streamed_cjk_is_whole_characters_after_every_token(generator) -> None:
    tok = generator.tokenizer
    ids = tok.encode(CJK, add_special_tokens=False)
    assert token_bytes(tok, ids) == CJK.encode()  # the reference table reads this tokenizer right
    split = [k for k in range(1, len(ids)) if "\ufffd" in tok.decode(ids[:k])]
    assert split, "the tokenizer must split some CJK character over tokens, or this test proves nothing"
    seen = stream_ids(WholeCharStreamer(tok), ids)
    for k, shown in enumerate(seen[:-1], start=1):
        assert "\ufffd" not in shown
        assert shown == complete_prefix(CJK, len(token_bytes(tok, ids[:k]))), k
    assert seen[-1] == CJK


@pytest.mark.parametrize("cut", [1, 2])
def test_an_answer_cut_inside_a_character_ends_on_the_last_whole_one(generator, cut: int) -> None:
    """max_new_tokens, a stop or Stop can end generation in the middle of a character: nothing broken is shown."""
    tok = generator.tokenizer
    ids = tok.encode("定影器过热", add_special_tokens=False)
    k = next(k for k in range(len(ids) - 1, 0, -1) if "\ufffd" in tok.decode(ids[:k]))  # a mid-character cut
    k = max(1, k - (cut - 1))
    seen = stream_ids(WholeCharStreamer(tok), ids[:k])
    assert all("\ufffd" not in s for s in seen)
    assert seen[-1] == complete_prefix("定影器过热", len(token_bytes(tok, ids[:k])))


def test_stop_strings_cut_cjk_text(generator) -> None:
    tok = generator.tokenizer
    text = "原因：定影器过热。答案结束。后面不应出现"
    ids = tok.encode(text, add_special_tokens=False)
    streamer = WholeCharStreamer(tok)
    stream_ids(streamer, ids)  # fills nothing further: re-feed for the iterator form below
    streamer = WholeCharStreamer(tok)
    streamer.put(torch.tensor([[0]]))
    for i in ids:
        streamer.put(torch.tensor([i]))
    streamer.end()
    pieces = list(hold_for_stop(iter(streamer), ["答案结束"]))
    shown = "".join(p for p, _ in pieces)
    assert shown == "原因：定影器过热。"
    assert pieces[-1][1] is True  # the caller is told to stop generating
    assert all("答" not in p for p, _ in pieces)  # the stop string's first character was held, never shown


def test_stream_with_a_stop_string_from_the_real_model(generator) -> None:
    """End to end on the tiny model: the streamed answer equals generate()'s, and a stop string cuts both."""
    msgs = [{"role": "user", "content": "打印机显示E13是什么意思？"}]
    full = generator.generate(msgs, max_new_tokens=24)
    chunks = list(generator.stream(msgs, max_new_tokens=24))
    assert "".join(chunks) == full and all("\ufffd" not in c for c in chunks)
    if len(full) < 6:
        pytest.skip("the tiny model wrote too little text to pick a stop string from")
    stop = full[3:5]
    cut = full[: full.find(stop)]
    assert "".join(generator.stream(msgs, max_new_tokens=24, stop=[stop])) == cut
    assert generator.generate(msgs, max_new_tokens=24, stop=[stop]) == cut


# -- the answer's language ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "lang"), [
    ("打印机显示E13是什么意思？", "zh-CN"),
    ("E13 错误", "zh-CN"),
    ("What does E13 mean on the LP-500?", "en"),
    ("What does 定影器 mean here?", "en"),
    ("E13?", None),
    ("", None),
])
def test_question_language(text: str, lang: str | None) -> None:
    assert detect_lang(text) == lang


def test_answer_language_falls_back_to_the_ui_language() -> None:
    assert answer_lang("", "zh-CN") == "zh-CN"
    assert answer_lang("E13?", "zh") == "zh-CN"
    assert answer_lang("打印机坏了", "en") == "zh-CN"
    assert answer_lang("printer broken", "zh-CN") == "en"
    assert answer_lang("", None) == "en"


@pytest.mark.parametrize(("header", "lang"), [
    ("zh-CN,zh;q=0.9,en;q=0.8", "zh-CN"), ("zh-TW", "zh-CN"), ("en-US,en;q=0.9", "en"),
    ("fr-FR,zh;q=0.5", "zh-CN"), ("de", "en"), ("", "en"), (None, "en"), ("en;q=0.4,zh;q=0.8", "zh-CN"),
])
def test_accept_language(header: str | None, lang: str) -> None:
    assert negotiate(header) == lang


def _system_and_question(pipeline, query: Query) -> tuple[str, str]:
    case = CaseCandidate(case_id="prn-e13", title="Fuser error E13", retrieval_score=0.9, document="Fuser error E13")
    msgs = pipeline.generate_stage.messages(query, [case])
    return msgs[0]["content"], msgs[-1]["content"][-1]["text"]


def test_prompt_asks_for_the_questions_language(kb, embedder, reranker, generator) -> None:  # noqa: F811
    p = make_pipeline(kb, embedder, reranker, generator)
    system, question = _system_and_question(p, Query(text="打印机显示E13", lang="en"))
    assert "Write the whole answer in Simplified Chinese" in system and "[case-id]" in system
    system, question = _system_and_question(p, Query(text="Printer shows E13", lang="zh-CN"))
    assert "Write the whole answer in English" in system
    system, question = _system_and_question(p, Query(text="", images=[], lang="zh-CN"))
    # the question reaches the prompt NFKC-folded (prompt_safe): full-width ？ reads as ?
    assert "Simplified Chinese" in system and question.endswith("Question: 哪里出了故障?怎么修复?")


def test_abstention_follows_the_questions_language(kb, embedder, reranker, generator) -> None:  # noqa: F811
    p = make_pipeline(kb, embedder, reranker, generator, abstain_rerank_threshold=0.999)
    zh = p.answer(Query(text="咖啡机研磨时有异响", lang="en"))
    assert zh.abstained and zh.text.startswith("知识库中没有找到相似的案例")
    assert "可能相关的案例" in zh.text
    related = [c.case_id for c in zh.cases[:3]]
    assert related and all(f"- [{cid}] " in zh.text for cid in related)  # ids stay as [case-id]
    en = p.answer(Query(text="The coffee machine makes a grinding noise", lang="zh-CN"))
    assert en.text.startswith("No similar case was found")
