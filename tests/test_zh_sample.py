"""The bilingual sample KB and the per-language eval report.

Languages are judged here by script (CJK ideographs vs Latin words, counted in the test), not by the product's
detector, so a detector bug cannot hide a wrong sample."""

from __future__ import annotations

import json
import re

import pytest

from eval.report import run_markdown
from eval.runner import case_languages, summarise
from knowledge_base.sample import SampleKB, build_sample_kb
from knowledge_base.sample.catalog import load_catalog

HAN = re.compile("[\u4e00-\u9fff]")


def is_chinese(text: str) -> bool:
    return len(HAN.findall(text)) > len(re.findall(r"[A-Za-z]{2,}", text))


@pytest.fixture(scope="module")
def kb(tmp_path_factory: pytest.TempPathFactory) -> SampleKB:
    return build_sample_kb(tmp_path_factory.mktemp("zh-sample"))


def test_a_third_of_the_cases_are_written_in_chinese(kb: SampleKB) -> None:
    cases = kb.load_cases()
    zh = [c for c in cases if is_chinese(f"{c.title} {c.symptom} {c.cause}")]
    assert len(cases) == 71 and len(zh) == 24 and 3 * len(zh) >= len(cases)
    assert all(is_chinese(" ".join(c.solution)) for c in zh)
    assert {c.product_line for c in zh} == {c.product_line for c in cases}  # every product line has Chinese cases


def test_chinese_cases_name_their_fault_family() -> None:
    from knowledge_base.sample.builder import CATALOG_ZH_JSON

    english = {c.id for c in load_catalog().cases}
    rows = json.loads(CATALOG_ZH_JSON.read_text("utf-8"))["cases"]
    assert len(rows) == 24
    for row in rows:
        family = row["family"]
        assert family and (family.removeprefix("like:") in english if family.startswith("like:") else True), family


def test_chinese_screens_and_manual_page(kb: SampleKB) -> None:
    import numpy as np
    import pypdfium2 as pdfium
    from PIL import Image

    zh = [c for c in kb.load_cases() if is_chinese(c.title)]
    captions = [m.caption for c in zh for m in c.media if m.kind == "image"]
    assert all(is_chinese(x) for x in captions)
    screens = [kb.root / m.path for c in zh for m in c.media if m.kind == "image" and "弹窗" in m.caption]
    assert screens and all(Image.open(p).size[0] >= 400 for p in screens)
    pages = [(c, m) for c in zh for m in c.media if m.kind == "pdf_page"]
    assert len(pages) == 1
    case, media = pages[0]
    assert media.path.endswith("_zh.pdf") and media.page == 1 and is_chinese(media.caption)
    doc = pdfium.PdfDocument(str(kb.root / media.path))
    assert len(doc) == 1
    page = np.asarray(doc[0].render(scale=1).to_pil().convert("L"))
    assert (page < 128).mean() > 0.01, "the Chinese manual page has text and a figure on it"
    english_manual = [m for c in kb.load_cases() for m in c.media if m.kind == "pdf_page" and not m.path.endswith("_zh.pdf")]
    assert sorted(m.page for m in english_manual) == [1, 2, 3, 4], "the English manual keeps its page numbers"


def test_eval_set_is_cross_lingual(kb: SampleKB) -> None:
    langs = {c.id: ("zh" if is_chinese(c.title) else "en") for c in kb.load_cases()}
    pairs = []
    for q in kb.load_eval():
        if not q.relevant or not q.text:
            continue
        best = max(q.relevant, key=q.relevant.get)
        pairs.append(("zh" if is_chinese(q.text) else "en", langs[best]))
    assert pairs.count(("zh", "en")) >= 12  # Chinese questions about English cases
    assert pairs.count(("en", "zh")) >= 12  # English questions about Chinese cases
    assert pairs.count(("zh", "zh")) >= 1
    assert [q.id for q in kb.load_eval()][:93] == [f"q{i:03d}" for i in range(1, 94)], "English ids unchanged"


def test_case_languages_of_the_sample(kb: SampleKB) -> None:
    got = case_languages(kb.cases_jsonl)
    want = {c.id: ("zh-CN" if is_chinese(c.title) else "en") for c in kb.load_cases()}
    assert got == want


# -- per-language metrics, by hand ------------------------------------------------------------------------------------
#: z1: Chinese question, English case, found first (RR 1). z2: Chinese question, English case, found second (RR 1/2).
#: e1: English question, Chinese case, found third (RR 1/3). i1: picture only, English case, found first.
RECORDS = [
    {"id": "z1", "query_lang": "zh-CN", "case_lang": "en", "relevant": {"a": 2}, "retrieval": [["a", 0.9], ["b", 0.1]]},
    {"id": "z2", "query_lang": "zh-CN", "case_lang": "en", "relevant": {"b": 2}, "retrieval": [["a", 0.9], ["b", 0.5]]},
    {"id": "e1", "query_lang": "en", "case_lang": "zh-CN", "relevant": {"c": 2}, "retrieval": [["a", 0.9], ["b", 0.5],
                                                                                          ["c", 0.4]]},
    {"id": "i1", "query_lang": "none", "case_lang": "en", "relevant": {"a": 2}, "retrieval": [["a", 0.8]]},
    {"id": "x1", "query_lang": "zh-CN", "case_lang": "none", "relevant": {}, "expect_abstain": True, "retrieval": [["a", 0.1]]},
]


def test_metrics_per_query_and_case_language_by_hand() -> None:
    s = summarise(RECORDS)
    q, c, p = (s["by_lang"][k] for k in ("query", "case", "pair"))
    assert {k: v["n"] for k, v in q.items()} == {"en": 1, "none": 1, "zh-CN": 2}  # the out-of-KB query is not ranked
    assert q["zh-CN"]["retrieval"]["mrr@10"] == pytest.approx((1 + 1 / 2) / 2)
    assert q["en"]["retrieval"]["mrr@10"] == pytest.approx(1 / 3)
    assert c["en"]["n"] == 3 and c["en"]["retrieval"]["mrr@10"] == pytest.approx((1 + 1 / 2 + 1) / 3)
    assert c["en"]["retrieval"]["recall@1"] == pytest.approx(2 / 3)
    assert p["zh-CN → en"]["retrieval"]["mrr@10"] == pytest.approx(0.75) and p["en → zh-CN"]["n"] == 1


def test_report_has_the_language_tables_labelled_for_tiny_models() -> None:
    s = summarise(RECORDS)
    s["run"] = {"models": "tiny", "eval_set": "sample"}
    md = run_markdown(s, {})
    assert "## By language" in md and "### By query language" in md and "### By case language" in md
    assert "Mechanics only" in md and "| zh-CN → en | 2 |" in md
    s["run"] = {"models": "real", "eval_set": "sample"}
    assert "Mechanics only" not in run_markdown(s, {})
