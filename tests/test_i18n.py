"""The catalogs and the UI's use of them: every visible string translated, every catalog key used, the served app
speaking the browser's (or the switch's) language.

How strings are found (see ui/README.md, "Languages"): every ``ui/*.py`` file is parsed; a Gradio component call
(``gr.Button(...)``, ``gr.Textbox(label=...)``, ``gr.update(...)``, ``gr.Error(...)`` …) must not get a literal
(or f-string) for a visible property — it gets ``L("key")`` (static) or ``tr("key")`` (server-made). Keys are the
string literals in ``ui/`` and ``rag/`` that name a catalog entry.
"""

from __future__ import annotations

import ast
import re
import string
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from ui_helpers import ADMIN, Served, served_app

from rag.i18n import DEFAULT_LANG, LOCALES_DIR, catalogs, languages

ROOT = Path(__file__).resolve().parent.parent
UI_FILES = sorted((ROOT / "ui").glob("*.py"))
CODE_FILES = UI_FILES + sorted((ROOT / "rag").rglob("*.py")) + sorted((ROOT / "knowledge_base").rglob("*.py"))
#: Properties of Gradio components that the user reads (``value`` only where it is text: see TEXT_FIRST_ARG).
VISIBLE_KWARGS = {"label", "placeholder", "info", "title", "description", "message"}
#: Calls whose first positional argument is visible text.
TEXT_FIRST_ARG = {"Button", "Markdown", "HTML", "Tab", "Accordion", "Error", "Warning", "Info", "DownloadButton",
                  "UploadButton", "ClearButton", "TabItem"}
KEY_RE = re.compile(r"^(?:ui|answer|error|meta)\.[A-Za-z0-9_.]+$")


def _literal_text(node: ast.AST) -> str | None:
    """The text of a literal or an f-string with letters in it (what a translator would have to translate)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        text = node.value
    elif isinstance(node, ast.JoinedStr):
        text = "".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
    else:
        return None
    return text if re.search(r"[A-Za-z]{2,}", text) else None


def untranslated_strings(path: Path) -> list[str]:
    """``file:line: text`` for each visible literal passed to a Gradio component, update or message in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value
        if not (isinstance(owner, ast.Name) and owner.id == "gr"):
            continue
        visible = VISIBLE_KWARGS | ({"value"} if node.func.attr in TEXT_FIRST_ARG else set())
        args = [kw.value for kw in node.keywords if kw.arg in visible]
        if node.func.attr == "update":  # an update's value may be data; an f-string with words is text to read
            args += [kw.value for kw in node.keywords if kw.arg == "value" and isinstance(kw.value, ast.JoinedStr)]
        if node.func.attr in TEXT_FIRST_ARG and node.args:
            args.append(node.args[0])
        for arg in args:
            text = _literal_text(arg)
            if text is not None:
                found.append(f"{path.name}:{node.lineno}: gr.{node.func.attr}(… {text!r} …)")
    return found


def string_literals(paths: list[Path]) -> set[str]:
    out: set[str] = set()
    for p in paths:
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                out.add(node.value)
    return out


def fields(template: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(template) if f}


# -- catalogs ------------------------------------------------------------------------------------------------------

def test_languages_are_files() -> None:
    assert {p.stem for p in LOCALES_DIR.glob("*.json")} == set(languages()) >= {"en", "zh-CN"}
    assert languages()[0] == DEFAULT_LANG


@pytest.mark.parametrize("lang", [x for x in sorted(p.stem for p in LOCALES_DIR.glob("*.json")) if x != DEFAULT_LANG])
def test_every_key_is_translated_with_the_same_parameters(lang: str) -> None:
    base, cat = catalogs()[DEFAULT_LANG], catalogs()[lang]
    assert sorted(set(base) - set(cat)) == [], f"{lang}.json lacks these keys"
    assert sorted(set(cat) - set(base)) == [], f"{lang}.json has keys {DEFAULT_LANG}.json lacks"
    for key, text in cat.items():
        assert text.strip(), f"{lang}: {key} is empty"
        assert fields(text) == fields(base[key]), f"{lang}: {key} names other parameters than {DEFAULT_LANG}"


def test_every_catalog_key_is_used_by_the_code() -> None:
    used = string_literals(CODE_FILES)
    unused = []
    for key in catalogs()[DEFAULT_LANG]:
        if key.startswith("meta.") and key in {"meta.name", "meta.prompt_name", "meta.scripts"} and key in used:
            continue
        if key.startswith("error."):  # error.<code>: used when some raise names that code
            if key.removeprefix("error.") not in used:
                unused.append(key)
            continue
        if key not in used:
            unused.append(key)
    assert unused == [], "catalog keys no code uses (remove them or use them)"


def test_every_key_the_code_names_exists() -> None:
    have = set(catalogs()[DEFAULT_LANG])
    named = {s for s in string_literals(CODE_FILES) if KEY_RE.match(s)}
    assert sorted(named - have) == []


def test_no_visible_ui_string_bypasses_the_catalogs() -> None:
    """Every ui/*.py file, the ones added later included: a literal in a component's visible property fails."""
    assert len(UI_FILES) >= 5, "the scan must see the ui package"
    found = [hit for p in UI_FILES for hit in untranslated_strings(p)]
    assert found == [], "visible UI strings without a catalog key:\n" + "\n".join(found)


def test_the_scan_catches_a_planted_string(tmp_path: Path) -> None:
    planted = tmp_path / "admin_new.py"
    planted.write_text('import gradio as gr\nb = gr.Button("Run audit")\nt = gr.Textbox(label=f"Max {3} rows")\n'
                       'ok = gr.Button(L("ui.admin.save"))\nerr = gr.Error("Nothing to do")\n'
                       'u = gr.update(value=f"Looks like: {3}")\nd = gr.update(value="all")\n')
    assert len(untranslated_strings(planted)) == 4


# -- the served app --------------------------------------------------------------------------------------------------

app = served_app("ui-i18n")


def _chat(client: Client, text: str, files: list[str] = (), rerank: bool = False) -> tuple:
    job = client.submit({"text": text, "files": [handle_file(f) for f in files]}, [], "", "", rerank, 1, None,
                        api_name="/chat")
    list(job)
    return job.result()


def _text(msg: dict) -> str:
    c = msg["content"]
    return " ".join(x.get("text", "") for x in c) if isinstance(c, list) else str(c)


def test_abstention_banner_and_answer_follow_the_browser_language(app: Served) -> None:
    zh = Client(app.url, verbose=False, download_files=False, headers={"Accept-Language": "zh-CN,zh;q=0.9"})
    history, _msg, _gallery, _detail, banner, timings, _crop, _fb = _chat(zh, "咖啡机研磨时声音很大")  # retrieval only: abstains
    assert banner["visible"] is True and "没有找到相似案例" in banner["value"] and "低于阈值" in banner["value"]
    assert _text(history[-1]).startswith("知识库中没有找到相似的案例")
    assert "阶段" in timings
    en = Client(app.url, verbose=False, download_files=False)  # an API client without the header: English
    history, *_rest = _chat(en, "The coffee machine grinds loudly")
    assert _text(history[-1]).startswith("No similar case was found")
    # the question's language wins over the UI's
    history, *_rest = _chat(zh, "The coffee machine grinds loudly")
    assert _text(history[-1]).startswith("No similar case was found")
    banner_en_text = _rest[3]["value"]
    assert "没有找到相似案例" in banner_en_text, "the banner is UI text: it stays in the UI language"


def test_messages_from_handlers_are_in_the_browser_language(app: Served) -> None:
    zh = Client(app.url, verbose=False, download_files=False, headers={"Accept-Language": "zh-CN"})
    status, _ = zh.predict("", api_name="/feedback_up")
    assert status == "请先提问，再评价回答。"
    en = Client(app.url, verbose=False, download_files=False, headers={"Accept-Language": "en-GB"})
    status, _ = en.predict("", api_name="/feedback_up")
    assert status == "Ask a question first, then rate the answer."


def test_a_chinese_photo_question_gets_sources_and_an_answer(app: Served, tmp_path: Path) -> None:
    from PIL import Image

    photo = tmp_path / "photo.jpg"
    Image.open(app.images["prn-e13"]).resize((240, 180)).save(photo, quality=75)
    zh = Client(app.url, verbose=False, download_files=False, headers={"Accept-Language": "zh-CN"})
    history, _msg, gallery, *_ = _chat(zh, "打印机显示E13，怎么修？", [str(photo)], rerank=True)
    assert gallery and _text(history[-1]).strip()


def test_admin_login_messages_and_user_errors_in_chinese(app: Served) -> None:
    """A user error raised deep in the code (AuthError with its code) is shown from the catalog's error.<code>."""
    zh = Client(app.url, verbose=False, download_files=False, headers={"Accept-Language": "zh-CN"})
    out = zh.predict("admin", "wrong", api_name="/admin_login")
    assert "用户名或密码错误。" in str(out)
    out = zh.predict(*ADMIN, api_name="/admin_login")
    assert f"已登录：**{ADMIN[0]}**" in str(out) and "仅 👍" in str(out)  # the feedback filter's labels too
    en = Client(app.url, verbose=False, download_files=False)
    assert "Wrong user name or password." in str(en.predict("admin", "wrong", api_name="/admin_login"))


def test_upload_errors_are_shown_in_the_browser_language(app: Served, tmp_path: Path) -> None:
    """ui.upload raises UploadError with a code and params; the chat shows the catalog's text for them."""
    fake = tmp_path / "photo.png"
    fake.write_text("not a picture at all, just text", encoding="utf-8")
    zh = Client(app.url, verbose=False, download_files=False, headers={"Accept-Language": "zh-CN"})
    history, *_ = _chat(zh, "这是什么故障？", [str(fake)])
    assert "“photo.png”不是支持的文件" in _text(history[-1])
    en = Client(app.url, verbose=False, download_files=False)
    history, *_ = _chat(en, "what is this?", [str(fake)])
    assert "'photo.png' is not a supported file" in _text(history[-1])
