"""CJK in the text paths: limits in characters, NFKC/full-width search, CSV/JSONL import in UTF-8 (BOM or not) and
declared GB18030, and search of Chinese cases in the admin listing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kb_support import open_kb

from knowledge_base.archive import read_csv, read_jsonl
from knowledge_base.kb import KnowledgeBase
from knowledge_base.schema import CaseInput
from rag.errors import UserInputError
from rag.pipeline import Query
from rag.text import TextDecodeError, declared_encoding, decode_text, fold
from rag.validation import InputRejected, check_text

TITLE = "定影器过热，显示错误代码Ｅ１３"
ROW = {"id": "zh-e13", "title": TITLE, "product_line": "打印机", "symptom": "开机十分钟后停止，面板显示E13。",
       "solution": "关机冷却 | 检查热敏电阻 | 更换定影器"}


def csv_text() -> str:
    cols = list(ROW)
    return ",".join(cols) + "\n" + ",".join(ROW[c] for c in cols) + "\n"


# -- characters, not bytes -----------------------------------------------------------------------------------------

def test_limits_count_characters_not_bytes() -> None:
    assert check_text("字" * 100, "question", max_chars=100) == "字" * 100  # 300 bytes of UTF-8
    with pytest.raises(InputRejected) as e:
        check_text("字" * 101, "question", max_chars=100)
    assert e.value.code == "text_too_long" and e.value.params["chars"] == 101 and e.value.params["limit"] == 100
    assert Query(text="问" * 4000).text == "问" * 4000


def test_fold_maps_full_width_forms() -> None:
    assert fold("Ｅ１３：定影器（ＦＵＳＥＲ）") == "e13:定影器(fuser)"


# -- decoding --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "declared", "encoding"), [
    (TITLE.encode("utf-8"), None, "utf-8"),
    (b"\xef\xbb\xbf" + TITLE.encode("utf-8"), None, "utf-8"),
    (b"\x84\x31\x95\x33" + TITLE.encode("gb18030"), None, "gb18030"),
    (TITLE.encode("gb18030"), "gb18030", "gb18030"),
    (TITLE.encode("gb18030"), "GBK", "gb18030"),
    (b"\xff\xfe" + TITLE.encode("utf-16-le"), None, "utf-16-le"),
])
def test_decode_text(raw: bytes, declared: str | None, encoding: str) -> None:
    assert decode_text(raw, declared) == (TITLE, encoding)


def test_undeclared_gb18030_is_refused_not_garbled() -> None:
    with pytest.raises(TextDecodeError, match="declare GB18030"):
        decode_text(TITLE.encode("gb18030"))
    assert declared_encoding("cases.gb18030.csv") == "gb18030" and declared_encoding("cases.csv") is None


@pytest.mark.parametrize(("name", "data"), [
    ("cases.csv", csv_text().encode("utf-8")),
    ("bom.csv", b"\xef\xbb\xbf" + csv_text().encode("utf-8")),
    ("excel.gb18030.csv", csv_text().encode("gb18030")),
    ("bom-gb.csv", b"\x84\x31\x95\x33" + csv_text().encode("gb18030")),
])
def test_csv_import_reads_chinese(tmp_path: Path, name: str, data: bytes) -> None:
    p = tmp_path / name
    p.write_bytes(data)
    [rec] = read_csv(p)
    assert rec.error is None, rec.error
    assert rec.case is not None and rec.case.title == TITLE and rec.case.product_line == "打印机"
    assert rec.case.solution == ["关机冷却", "检查热敏电阻", "更换定影器"]


def test_undeclared_gb18030_csv_is_refused_with_a_hint(tmp_path: Path) -> None:
    p = tmp_path / "cases.csv"
    p.write_bytes(csv_text().encode("gb18030"))
    with pytest.raises(UserInputError, match="GB18030"):
        read_csv(p)


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
def test_jsonl_import_reads_chinese(tmp_path: Path, bom: bytes) -> None:
    p = tmp_path / "cases.jsonl"
    p.write_bytes(bom + (json.dumps({**ROW, "solution": ["关机冷却"]}, ensure_ascii=False) + "\n").encode("utf-8"))
    [rec] = read_jsonl(p)
    assert rec.error is None and rec.case is not None and rec.case.title == TITLE


# -- admin search ----------------------------------------------------------------------------------------------------

@pytest.fixture()
def kb(tmp_path: Path, embedder) -> KnowledgeBase:
    kb = open_kb("edge", tmp_path / "data", embedder)
    kb.add_case(CaseInput(id="zh-e13", title=TITLE, product_line="打印机", symptom="开机十分钟后停止。",
                          solution=["更换定影器"], error_codes=["E13"]))
    kb.add_case(CaseInput(id="en-jam", title="Paper jam in tray 2", product_line="printers",
                          symptom="Paper stops at the rollers.", solution=["Open the tray"]))
    yield kb
    kb.close()


@pytest.mark.parametrize(("needle", "ids"), [
    ("定影器", ["zh-e13"]), ("e13", ["zh-e13"]), ("Ｅ１３", ["zh-e13"]), ("ＰＡＰＥＲ", ["en-jam"]), ("十分钟", ["zh-e13"]),
])
def test_substring_search_with_cjk_and_full_width(kb: KnowledgeBase, needle: str, ids: list[str]) -> None:
    assert [c.id for c in kb.list_cases(text=needle).cases] == ids


# -- drawn text (sample images, error screens) -------------------------------------------------------------------------

def _drawn(s: str):
    import numpy as np
    from PIL import Image, ImageDraw

    from knowledge_base.sample import draw

    img = Image.new("L", (64, 40), 255)
    draw.text(ImageDraw.Draw(img), (4, 4), s, 28, fill=0)
    return np.asarray(img)


def test_cjk_characters_are_drawn_as_glyphs_not_boxes() -> None:
    """A font without CJK glyphs draws every character as the same "tofu" box: distinct characters must differ."""
    a, b, c = _drawn("定"), _drawn("影"), _drawn("器")
    assert (a < 128).sum() > 20, "nothing drawn"
    assert (a != b).sum() > 20 and (b != c).sum() > 20 and (a != c).sum() > 20


def test_chinese_wraps_between_characters() -> None:
    from knowledge_base.sample import draw

    s = "定影器过热请关机冷却三十分钟后再检查热敏电阻并更换定影器组件"  # no spaces at all
    lines = draw.wrap(s, 20, 200)
    assert len(lines) > 1 and "".join(lines) == s
    assert all(draw.text_width(line, 20) <= 200 for line in lines)
    assert draw.wrap("Fuser error E13 on the unit", 20, 10_000) == ["Fuser error E13 on the unit"]
