"""The admin "Search & related" tab, the case form's label suggestions and the chat's related cases speak the browser's
language (issue 14): server-made text from the catalogs, through the served app (tiny models, Edge store, Gradio)."""

from __future__ import annotations

import re
from typing import Iterator

import pytest
from gradio_client import Client
from ui_helpers import ADMIN, Served, component_id, fn_index_for, serve_app, stop_app

TRIGGERS = ["intel-search-btn", "intel-related-btn", "intel-link-btn", "case-suggest"]
#: A related case's reason names points: in Chinese "案例文字", "照片 1", "视频 1", "手册第 2 页"; never the English names.
ZH_POINT = re.compile(r"案例文字|照片 \d+|视频 \d+|手册第 \d+ 页")
ENGLISH_POINT = re.compile(r"case text|photo|video|manual page")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, embedder, reranker, generator) -> Iterator[Served]:
    s = serve_app(tmp_path_factory.mktemp("ui-i18n-intel"), embedder, reranker, generator)
    yield s
    stop_app(s)


def admin_client(app: Served, lang: str | None) -> tuple[Client, dict[str, int], list[list[str]]]:
    """A logged-in client, the admin triggers' fn_index, and the "Look in" choices the login sets."""
    headers = {"Accept-Language": lang} if lang else None
    c = Client(app.url, verbose=False, download_files=False, headers=headers)
    c.predict(*ADMIN, api_name="/admin_login")
    idx = {e: fn_index_for(c.config, e) for e in TRIGGERS}
    login_btn, kinds = component_id(c.config, "admin-login-btn"), component_id(c.config, "intel-kinds")
    relabel = next(d.get("id", i) for i, d in enumerate(c.config["dependencies"])
                   if [login_btn, "click"] in [list(t) for t in d.get("targets", [])] and d.get("outputs") == [kinds])
    for i in [*idx.values(), relabel]:
        c.endpoints[i].is_valid = True
    choices = c.predict(fn_index=relabel)["choices"]
    return c, idx, [list(ch) for ch in choices]


def test_admin_intel_in_chinese(app: Served) -> None:
    c, idx, kinds = admin_client(app, "zh-CN,zh;q=0.9")
    assert kinds == [["案例文字", "text"], ["照片", "image"], ["PDF 页面", "pdf_page"], ["视频", "video"]]
    gallery, table, msg = c.predict("卡纸", None, [], "", fn_index=idx["intel-search-btn"])
    assert table["headers"][:2] == ["得分", "案例"] and "个案例" in msg and "最佳在前" in msg
    assert gallery and all(("照片" in g["caption"]) or ("第" in g["caption"]) or ("文字" in g["caption"])
                           or ("视频" in g["caption"]) for g in gallery)
    with pytest.raises(Exception, match="请输入要查找的内容"):
        c.predict("", None, [], "", fn_index=idx["intel-search-btn"])
    rows, _other, msg = c.predict("prn-e13", fn_index=idx["intel-related-btn"])
    assert rows["headers"][-1] == "原因（本案例 ↔ 该案例）" and "个相关案例" in msg
    whys = [row[-1] for row in rows["data"]]
    assert whys and all(" ↔ " in w and not ENGLISH_POINT.search(w) for w in whys), whys  # the reasons too
    assert all(ZH_POINT.search(w) for w in whys), whys
    with pytest.raises(Exception, match="请先输入案例 ID"):
        c.predict("  ", fn_index=idx["intel-related-btn"])
    with pytest.raises(Exception, match="请先选择要关联的相关案例"):
        c.predict("prn-e13", None, fn_index=idx["intel-link-btn"])
    *fields, s_msg = c.predict("卡纸", "纸张在搓纸轮处卡住。", "", "", "", "", "", None, fn_index=idx["case-suggest"])
    assert "建议" in s_msg or "没有把握足够的建议" in s_msg
    for upd in fields:
        if isinstance(upd, dict) and upd.get("value"):
            assert upd["label"].endswith("（建议）"), upd


def test_admin_intel_in_english_for_api_clients(app: Served) -> None:
    c, idx, kinds = admin_client(app, None)
    assert kinds == [["case texts", "text"], ["photos", "image"], ["PDF pages", "pdf_page"], ["videos", "video"]]
    _gallery, table, msg = c.predict("paper jam", None, [], "", fn_index=idx["intel-search-btn"])
    assert table["headers"] == ["score", "case", "title", "product line", "best match"] and "case(s)" in msg


def test_chat_related_cases_in_chinese(app: Served) -> None:
    zh = Client(app.url, verbose=False, download_files=False, headers={"Accept-Language": "zh-CN"})
    detail, _media, _related = zh.predict("no-such-case", api_name="/open_related")
    assert "选择一个来源以查看完整案例" in detail
    _detail, _media, related = zh.predict("prn-e13", api_name="/open_related")
    labels = [c[0].rsplit("; ", 1)[-1] for c in related["choices"]]  # "title (score; reason)": the reason
    assert labels and all(ZH_POINT.search(t) and not ENGLISH_POINT.search(t) for t in labels), labels
