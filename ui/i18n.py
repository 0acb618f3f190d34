"""The UI in the user's language: static text translated by the browser (``gr.I18n``), server-made text by
:func:`tr` in the session's language, and a visible switch.

* Static text (labels, placeholders, button and Markdown text) is built with :func:`L` (a ``gr.I18n`` key): Gradio's
  frontend shows it in the browser's language, from the catalogs in ``rag/locales/`` (:mod:`rag.i18n`).
* Text the server makes (chat replies, banners, status lines, table headers) uses :func:`tr`, which reads the
  language of the request being handled. Handlers wrapped with :func:`localized` get it from the session's switch
  choice, else the browser's ``Accept-Language``; API clients (no header) get English.
* The switch (:func:`relabel`) re-sends every :func:`L` text of the page in the chosen language.
* User errors (:class:`rag.errors.UserInputError`) are shown through :func:`error_text`: the catalog's
  ``error.<code>`` template with the error's ``params``, else its English message. CLI and logs stay English.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import json
import threading
from collections import OrderedDict
from typing import Any, Callable, Iterator, Sequence, TypeVar

import gradio as gr
from gradio.i18n import I18nData

from rag.errors import ParamValue, RagvqaError
from rag.i18n import DEFAULT_LANG, catalogs, languages, negotiate
from rag.i18n import t as _t

F = TypeVar("F", bound=Callable[..., Any])

#: The language of the request being handled (set by :func:`localized`).
CURRENT: contextvars.ContextVar[str] = contextvars.ContextVar("ragvqa_ui_lang", default=DEFAULT_LANG)
#: Component properties that hold visible static text.
TEXT_PROPS = ("label", "placeholder", "info", "value")


def L(key: str) -> I18nData:  # noqa: N802 - the short name keeps layout code readable
    """Static text: a ``gr.I18n`` key, shown by the browser in its language (every catalog must have ``key``)."""
    _t(key, DEFAULT_LANG)  # a key no catalog has fails when the page is built, not in the browser
    return I18nData(key)


def tr(key: str, /, **params: ParamValue) -> str:
    """Server-made text in the language of the request being handled."""
    return _t(key, CURRENT.get(), **params)


def headers(keys: Sequence[str]) -> list[str]:
    """Table headers (catalog keys) in the request's language."""
    return [tr(k) for k in keys]


def table(keys: Sequence[str], rows: list[list[Any]]) -> dict[str, Any]:
    """A Dataframe value with its headers in the request's language."""
    return {"headers": headers(keys), "data": rows}


def current() -> str:
    return CURRENT.get()


def i18n() -> gr.I18n:
    """The catalogs for ``gr.Blocks(i18n=...)`` (every language, every key)."""
    return gr.I18n(**{lang: dict(cat) for lang, cat in catalogs().items()})


def error_text(e: BaseException, fallback: str) -> str:
    """A user error in the request's language: ``error.<code>`` with the error's params, else ``fallback``."""
    from rag.i18n import error_text as _error_text

    if isinstance(e, RagvqaError):
        return _error_text(e.code, e.params, CURRENT.get(), fallback)
    return fallback


class SessionLangs:
    """The language each browser session chose with the switch (bounded: the oldest sessions are forgotten)."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._by_session: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def set(self, session: str | None, lang: str) -> None:
        if not session:
            return
        with self._lock:
            self._by_session[session] = lang
            self._by_session.move_to_end(session)
            while len(self._by_session) > self.limit:
                self._by_session.popitem(last=False)

    def get(self, session: str | None) -> str | None:
        with self._lock:
            return self._by_session.get(session) if session else None


SESSIONS = SessionLangs()


def request_lang(request: gr.Request | None) -> str:
    """The language of a request: the session's switch choice, else the browser's ``Accept-Language`` (the same
    preference ``gr.I18n`` follows), else English (API clients)."""
    chosen = SESSIONS.get(getattr(request, "session_hash", None))
    return chosen or page_lang(request)


def localized(fn: F) -> F:
    """``fn`` run in the language of its request: :func:`tr` inside it (and inside every step of a generator
    handler) speaks :func:`request_lang`. The wrapper's signature gains a last, defaulted ``gr.Request`` parameter
    that Gradio fills in, so the event's inputs (and API clients) are unchanged."""
    sig = inspect.signature(fn)
    req_param = inspect.Parameter("ui_request", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                  annotation=gr.Request)
    new_sig = sig.replace(parameters=[*sig.parameters.values(), req_param])
    annotations = {**getattr(fn, "__annotations__", {}), "ui_request": gr.Request}

    def split(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any], str]:
        kwargs = dict(kwargs)
        if "ui_request" in kwargs:
            request = kwargs.pop("ui_request")
        elif len(args) == len(new_sig.parameters):
            args, request = args[:-1], args[-1]
        else:
            request = None
        return args, kwargs, request_lang(request)

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
            args, kwargs, lang = split(args, kwargs)
            token = CURRENT.set(lang)
            try:
                it = fn(*args, **kwargs)
            finally:
                CURRENT.reset(token)
            try:
                while True:
                    token = CURRENT.set(lang)
                    try:
                        item = next(it)
                    except StopIteration:
                        return
                    finally:
                        CURRENT.reset(token)
                    yield item
            finally:
                it.close()

        gen_wrapper.__signature__ = new_sig  # type: ignore[attr-defined]
        gen_wrapper.__annotations__ = annotations
        return gen_wrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        args, kwargs, lang = split(args, kwargs)
        token = CURRENT.set(lang)
        try:
            return fn(*args, **kwargs)
        finally:
            CURRENT.reset(token)

    wrapper.__signature__ = new_sig  # type: ignore[attr-defined]
    wrapper.__annotations__ = annotations
    return wrapper  # type: ignore[return-value]


def _key_of(value: object) -> str | None:
    """The catalog key of a static text: an ``I18nData``, or the ``__i18n__{json}`` string some components (Markdown,
    Button) turn it into."""
    if isinstance(value, I18nData):
        return value.key
    if isinstance(value, str) and value.startswith("__i18n__"):
        try:
            data = json.loads(value[len("__i18n__"):])
        except ValueError:
            return None
        return data.get("key") if isinstance(data, dict) else None
    return None


def translatable(blocks: gr.Blocks) -> list[tuple[Any, dict[str, str]]]:
    """Every component of ``blocks`` with static :func:`L` text: (component, {property: key})."""
    out = []
    for block in blocks.blocks.values():
        props = {p: k for p in TEXT_PROPS if (k := _key_of(getattr(block, p, None))) is not None}
        if props:
            out.append((block, props))
    return out


def relabel(items: list[tuple[Any, dict[str, str]]], lang: str) -> dict[Any, Any]:
    """Updates that show every static text of ``items`` in ``lang`` (what the language switch sends)."""
    return {block: gr.update(**{p: _t(key, lang) for p, key in props.items()}) for block, props in items}


def page_lang(request: gr.Request | None) -> str:
    """The language a new page starts in: the browser's ``Accept-Language`` (the same preference ``gr.I18n`` reads
    from ``navigator.language``)."""
    headers = getattr(request, "headers", None)
    return negotiate(headers.get("accept-language") if headers is not None else None)


def switch_choices() -> list[tuple[str, str]]:
    """The switch's choices: each language under its own name."""
    return [(_t("meta.name", lang), lang) for lang in languages()]
