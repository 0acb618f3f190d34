"""Related-case reasons ("photo 1 ↔ manual page 2") in the user's language: the reason carries typed parts (kind,
number, page) and the UI names them through the catalogs; the CLI/JSON text stays English. Planted vectors in a real
Qdrant Edge store (as tests/test_kb_related.py); the expected texts are written here."""

from __future__ import annotations

from pathlib import Path

import pytest
from kb_planted import open_planted, photo_to_page_cases

from knowledge_base.related import MatchReason, PointRef, related_cases
from ui.chat_intel import point_name, reason_text
from ui.i18n import CURRENT

DIM = 16


def in_lang(lang: str, fn, *args):
    token = CURRENT.set(lang)
    try:
        return fn(*args)
    finally:
        CURRENT.reset(token)


@pytest.fixture()
def photo_to_page(tmp_path: Path):
    """Case a's photo is (almost) case b's second manual page: the best reason is "photo 1 ↔ manual page 2"."""
    store = open_planted(tmp_path / "s", photo_to_page_cases(DIM), DIM)
    try:
        (r,) = related_cases(store, "a", limit=5, exact=True)
        yield r.reasons
    finally:
        store.close()


def test_reason_parts_are_typed(photo_to_page) -> None:
    best = photo_to_page[0]
    assert (best.this.kind, best.this.number, best.this.page) == ("image", 1, None)
    assert (best.other.kind, best.other.number, best.other.page) == ("pdf_page", None, 2)
    assert best.text == "photo 1 ↔ manual page 2"  # CLI and JSON: English, as before
    dumped = best.model_dump(mode="json")
    assert dumped["text"] == "photo 1 ↔ manual page 2" and dumped["this"]["label"] == "photo 1"
    assert dumped["other"] == {"kind": "pdf_page", "media_id": best.other.media_id, "number": None, "page": 2,
                               "thumbnail": best.other.thumbnail, "label": "manual page 2"}


def test_reason_in_chinese_and_english(photo_to_page) -> None:
    best = photo_to_page[0]
    assert in_lang("zh-CN", reason_text, best) == "照片 1 ↔ 手册第 2 页"
    assert in_lang("en", reason_text, best) == "photo 1 ↔ manual page 2"
    for r in photo_to_page:  # every reason of the Chinese UI: no English word left
        zh = in_lang("zh-CN", reason_text, r)
        assert " ↔ " in zh and not any(w in zh for w in ("photo", "manual", "page", "case text", "video"))


@pytest.mark.parametrize(("ref", "zh", "en"), [
    (PointRef(kind="text"), "案例文字", "case text"),
    (PointRef(kind="image", number=3), "照片 3", "photo 3"),
    (PointRef(kind="video", number=2), "视频 2", "video 2"),
    (PointRef(kind="pdf_page", page=7), "手册第 7 页", "manual page 7"),
    (PointRef(kind="image"), "照片", "photo"),  # the case record gave no numbering
    (PointRef(kind="pdf_page"), "手册页面", "manual page"),
])
def test_point_names(ref: PointRef, zh: str, en: str) -> None:
    assert in_lang("zh-CN", point_name, ref) == zh
    assert in_lang("en", point_name, ref) == en == ref.label
    r = MatchReason(this=ref, other=PointRef(kind="text"), score=0.5)
    assert in_lang("zh-CN", reason_text, r) == f"{zh} ↔ 案例文字" and r.text == f"{en} ↔ case text"
