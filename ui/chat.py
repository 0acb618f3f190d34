"""The chat tab: photo/video/PDF + question in, streamed cited answer and source cases out.

Conversation state lives in server-side ``gr.State``: the earlier turns (for the generator's history and the
follow-up's carried cases) and the conversation's last media (a follow-up without a new photo is still retrieved
with the photo it is about).

Shape: :meth:`ChatTab.build` lays the components out (a :class:`ChatView`), :meth:`ChatTab.wire` connects them;
:meth:`ChatTab.respond` yields typed :class:`ChatUpdate`s, which the event handler sends in Gradio's
``{component: value}`` form (API clients still read the outputs positionally, in :meth:`ChatView.outputs` order).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final, Generator, Iterator

import gradio as gr
from PIL import Image

from rag.errors import UserInputError
from rag.models.query_image import QueryImageError, display_name, load_query_image
from rag.payload import PICTURE_KINDS
from rag.pipeline import Answer, CaseCandidate, Query, Turn
from rag.pipeline.render import StreamRenderer
from ui.i18n import L, current, localized, tr
from ui.services import Services
from ui.show import (
    abstain_banner_html,
    caption,
    case_detail_html,
    citations_md,
    inert_md,
    plain,
    server_error_text,
    timings_md,
    user_error_text,
)
from ui.upload import QueryMedia, UploadError, editor_image, prepare_uploads, save_image, upload_roots

logger = logging.getLogger(__name__)

ANY = ""
#: Errors shown to the user as their own fault (the message as is). Everything else, a bare ``ValueError`` from deep
#: in the code included, is a server error: logged with a reference id, never shown.
USER_ERRORS: tuple[type[BaseException], ...] = (UserInputError,)
PLACEHOLDER_COLOUR = (225, 228, 232)


ChatMessage = dict[str, Any]  # one gr.Chatbot "messages" item: role + content (text or a file)


class Keep:
    """The value of an output a :class:`ChatUpdate` leaves as it is (Gradio's ``gr.skip()``)."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP: Final = Keep()


@dataclass
class ChatUpdate:
    """One update of the chat tab's outputs; a field left at :data:`KEEP` leaves its component unchanged.

    The typed form of what :meth:`ChatTab.respond` yields; :meth:`ChatView.updates` turns it into Gradio's
    ``{component: value}`` form for the event handler.
    """

    history: list[ChatMessage] | Keep = KEEP
    textbox: None | Keep = KEEP
    gallery: list[tuple[str, str]] | Keep = KEEP
    sources: list[dict[str, Any]] | Keep = KEEP
    detail: str | Keep = KEEP
    banner: dict[str, Any] | Keep = KEEP  # a gr.update(...)
    timings: str | Keep = KEEP
    turns: list[dict[str, Any]] | Keep = KEEP
    media_state: dict[str, Any] | Keep = KEEP
    last: dict[str, Any] | None | Keep = KEEP
    crop: None | Keep = KEEP
    feedback: str | Keep = KEEP

    def changed(self) -> dict[str, Any]:
        """Field name -> new value, for the fields this update sets."""
        return {f.name: getattr(self, f.name) for f in fields(self) if not isinstance(getattr(self, f.name), Keep)}


@dataclass
class Conversation:
    """The conversation one request works on: chat history, earlier turns, the last media (copies of the states)."""

    history: list[ChatMessage]
    turns: list[dict[str, Any]]
    media_state: dict[str, Any]

    def update(self, **changes: Any) -> ChatUpdate:
        """An update carrying the conversation (history and both states) plus ``changes``."""
        return ChatUpdate(history=self.history, turns=self.turns, media_state=self.media_state, **changes)

    def say(self, content: str) -> None:
        self.history.append({"role": "assistant", "content": content})

    def refused(self, text: str, reply: str) -> ChatUpdate:
        """The question, then ``reply`` saying why its files cannot be used; the textbox is cleared."""
        self.history += ChatTab._user_message(text, [])
        self.say(reply)
        return self.update(textbox=None, feedback="")


@dataclass
class QueryInputs:
    """What step 2 of :meth:`ChatTab.respond` hands on: this message's media, the media the query uses (maybe the
    conversation's earlier ones), their decoded images, notes for the timings panel."""

    media: QueryMedia
    query_media: QueryMedia
    images: list[Image.Image]  # decoded once
    notes: list[str] = field(default_factory=list)
    ms_uploads: float = 0.0


def message_parts(message: dict[str, Any] | str | None) -> tuple[str, list[Any]]:
    """(question text, attached files) of a MultimodalTextbox value (or a plain string from an API client)."""
    if isinstance(message, str):
        return message.strip(), []
    message = message or {}
    return (message.get("text") or "").strip(), list(message.get("files") or [])


@dataclass
class ChatView:
    """The chat tab's components (laid out by :meth:`ChatTab.build`, connected by :meth:`ChatTab.wire`)."""

    chatbot: gr.Chatbot
    msg: gr.MultimodalTextbox
    gallery: gr.Gallery
    sources: gr.State
    detail: gr.HTML
    banner: gr.HTML
    timings: gr.Markdown
    turns: gr.State
    media_state: gr.State
    last: gr.State
    crop: gr.ImageEditor
    fb_status: gr.Markdown
    case_media: gr.Gallery
    product_line: gr.Dropdown
    equipment_model: gr.Dropdown
    pdf_page: gr.Number
    rerank: gr.Checkbox
    up: gr.Button
    down: gr.Button
    comment: gr.Textbox
    clear: gr.Button

    def outputs(self) -> list[gr.components.Component]:
        """The chat event's outputs, in the order API clients read them (States are not sent to clients)."""
        return [self.chatbot, self.msg, self.gallery, self.sources, self.detail, self.banner, self.timings, self.turns,
                self.media_state, self.last, self.crop, self.fb_status]

    def inputs(self) -> list[gr.components.Component]:
        return [self.msg, self.chatbot, self.turns, self.media_state, self.product_line, self.equipment_model,
                self.rerank, self.pdf_page, self.crop]

    def updates(self, u: ChatUpdate) -> dict[gr.components.Component, Any]:
        """``u`` in Gradio's ``{component: value}`` form (every key is one of :meth:`outputs`)."""
        by_field = {"history": self.chatbot, "textbox": self.msg, "gallery": self.gallery, "sources": self.sources,
                    "detail": self.detail, "banner": self.banner, "timings": self.timings, "turns": self.turns,
                    "media_state": self.media_state, "last": self.last, "crop": self.crop, "feedback": self.fb_status}
        return {by_field[name]: value for name, value in u.changed().items()}


class ChatTab:
    """Builds the chat components and owns their handlers (bound to one :class:`Services`)."""

    def __init__(self, services: Services) -> None:
        self.s = services
        self._placeholder: str | None = None
        #: session hash -> cancel events of that browser session's running answers (set by Stop)
        self._running: dict[str, set[threading.Event]] = {}
        self._running_lock = threading.Lock()
        #: the laid-out components, set by :meth:`build`
        self.view: ChatView
        from ui.chat_intel import ChatIntel

        self.intel = ChatIntel(self)

    # -- stop ---------------------------------------------------------------------------------------------------
    def _track(self, session: str | None, cancel: threading.Event, running: bool) -> None:
        if session is None:
            return
        with self._running_lock:
            events = self._running.setdefault(session, set())
            if running:
                events.add(cancel)
            else:
                events.discard(cancel)
                if not events:
                    del self._running[session]

    def on_stop(self, request: gr.Request | None = None) -> None:
        """Stop: trip the cancel event of the session's running answer, so generation ends after the decoding step
        in progress. Gradio's own cancel only closes the handler's generator, which waits until the handler next
        yields (text reaches it only at word boundaries) and leaves the model running until then."""
        session = getattr(request, "session_hash", None)
        with self._running_lock:
            events = list(self._running.get(session, ())) if session else []
        for ev in events:
            ev.set()
        if events:
            logger.info("stop: cancelled %d running answer(s)", len(events))

    # -- helpers ------------------------------------------------------------------------------------------------
    def placeholder(self) -> str:
        """A neutral thumbnail for cases without an image (the gallery needs a picture per item)."""
        if self._placeholder is None or not Path(self._placeholder).exists():
            p = self.s.upload_dir / "no-image.png"
            if not p.exists():
                Image.new("RGB", (160, 120), PLACEHOLDER_COLOUR).save(p)
            self._placeholder = str(p)
        return self._placeholder

    def gallery(self, cases: list[CaseCandidate], cited: list[str] | None = None) -> list[tuple[str, str]]:
        out = []
        for c in cases:
            img = c.thumbnail or (c.media_path if c.media_kind in PICTURE_KINDS else None)
            if not img or not Path(img).exists():
                img = self.placeholder()
            out.append((img, caption(c, cited or [])))
        return out

    def filters(self, product_line: str | None, equipment_model: str | None) -> dict[str, str]:
        f: dict[str, str] = {}
        if product_line:
            f["product_line"] = product_line
        if equipment_model:
            f["equipment_model"] = equipment_model
        return f

    def filter_updates(self, product_line: str | None = None) -> tuple[dict, dict]:
        lines, models = self.s.filter_choices()
        line_choices = [(tr("ui.chat.any_line"), ANY)] + [(plain(x, 80), x) for x in lines]
        if product_line and product_line in models:
            model_list = models[product_line]
        else:
            model_list = sorted({m for ms in models.values() for m in ms})
        model_choices = [(tr("ui.chat.any_model"), ANY)] + [(plain(x, 80), x) for x in model_list]
        return gr.update(choices=line_choices), gr.update(choices=model_choices, value=ANY)

    # -- handlers -----------------------------------------------------------------------------------------------
    def on_load(self) -> tuple[dict, dict]:
        return self.filter_updates()

    def on_line_change(self, product_line: str | None) -> dict:
        return self.filter_updates(product_line)[1]

    def respond(self, message: dict[str, Any] | str | None, history: list[dict[str, Any]] | None,
                turns: list[dict[str, Any]] | None, media_state: dict[str, Any] | None, product_line: str | None,
                equipment_model: str | None, rerank: bool, pdf_page: float | None, crop: Any,
                request: gr.Request | None = None) -> Iterator[ChatUpdate]:
        """Stream one answer as :class:`ChatUpdate`s, in four named steps: uploads → query media → pipeline stream →
        final message/state.

        Generation gets a cancel event that Stop (:meth:`on_stop`) trips, and that is tripped when Gradio closes this
        generator (Stop, a closed page): the model stops after its current decoding step either way."""
        conv = Conversation(list(history or []), list(turns or []), dict(media_state or {}))
        text, files = message_parts(message)
        t0 = time.perf_counter()
        try:  # 1. uploads (bad files become a chat message, never a traceback)
            media = self.read_uploads(files, pdf_page, crop)
        except (UploadError, QueryImageError) as e:
            yield conv.refused(text, "⚠️ " + inert_md(user_error_text(e)))
            return
        try:  # 2. query media
            inputs = self.query_inputs(media, conv)
        except QueryImageError as e:  # an earlier file that vanished (uploads are pruned after a day)
            yield conv.refused(text, "⚠️ " + inert_md(user_error_text(e)) + " " + tr("ui.chat.start_new"))
            return
        inputs.ms_uploads = (time.perf_counter() - t0) * 1000
        conv.history += self._user_message(text, media.images + ([media.video] if media.video else []))
        if not text and inputs.query_media.empty:
            conv.say(tr("ui.chat.empty_message"))
            yield conv.update(textbox=None, crop=None, feedback="")
            return
        if conv.turns:
            inputs.notes.append(tr("ui.chat.follow_up", n=len(conv.turns)))
        conv.say(tr("ui.chat.searching"))
        yield conv.update(textbox=None, banner=gr.update(visible=False), crop=None, feedback="")
        query = Query(text=text, images=inputs.images, video=inputs.query_media.video,
                      filters=self.filters(product_line, equipment_model),
                      history=[Turn(**t) for t in conv.turns], rerank=bool(rerank), lang=current())
        answer = yield from self.stream_answer(query, conv, getattr(request, "session_hash", None))  # 3. pipeline
        if answer is not None:  # 4. final message, state, timings
            yield self.final_update(answer, query, text, inputs, conv)

    def read_uploads(self, files: list[Any], pdf_page: float | None, crop: Any) -> QueryMedia:
        """Step 1: the message's files (and the cropped region, which replaces its images) as validated media."""
        roots = upload_roots(self.s.upload_dir)
        media = prepare_uploads(files, pdf_page=max(1, int(pdf_page or 1)), out_dir=self.s.upload_dir,
                                budget=self.s.settings.vision, dpi=self.s.ui.pdf_dpi, roots=roots)
        cropped = editor_image(crop, roots=roots)
        if cropped is not None:
            path = save_image(cropped, self.s.upload_dir, "crop")
            media.images = [path]
            media.decoded = {path: load_query_image(cropped, self.s.settings.vision)}
            media.notes.append(tr("ui.chat.cropped"))
        return media

    def query_inputs(self, media: QueryMedia, conv: Conversation) -> QueryInputs:
        """Step 2: the media the query is retrieved with: this message's, else the conversation's last ones; images
        decoded once here (the three models reuse these PIL images instead of decoding the files again)."""
        notes = list(media.notes)
        query_media = media
        if media.empty and (conv.media_state.get("images") or conv.media_state.get("video")):
            query_media = QueryMedia(images=list(conv.media_state.get("images") or []),
                                     video=conv.media_state.get("video"))
            notes.append(tr("ui.chat.media_reused"))
        images = [query_media.decoded.get(p) or load_query_image(p, self.s.settings.vision)
                  for p in query_media.images]
        if not media.empty:
            conv.media_state = media.to_state()
        return QueryInputs(media=media, query_media=query_media, images=images, notes=notes)

    def stream_answer(self, query: Query, conv: Conversation,
                      session: str | None) -> Generator[ChatUpdate, None, Answer | None]:
        """Step 3: run the pipeline, showing the sources, then the answer as it is written. Returns the answer, or
        None when the request failed (the failure has been shown: a user error as its message, anything else as a
        server error with a reference id)."""
        answer: Answer | None = None
        renderer = StreamRenderer()
        cancel = threading.Event()
        self._track(session, cancel, True)
        try:
            for ev in self.s.pipeline.stream(query, cancel=cancel):
                if ev.type == "sources":
                    cases = ev.cases
                    banner = gr.update(value=abstain_banner_html(cases, None), visible=True) if ev.abstained else gr.update(visible=False)
                    conv.history[-1] = {"role": "assistant", "content": tr("ui.chat.writing") if not ev.abstained else ""}
                    yield conv.update(gallery=self.gallery(cases), sources=[c.model_dump() for c in cases],
                                      detail=case_detail_html(None), banner=banner, feedback="")
                elif ev.type == "token":
                    rendered = renderer.feed(ev.text)
                    if rendered is not None:
                        conv.history[-1] = {"role": "assistant", "content": rendered}
                        yield conv.update()
                elif ev.type == "done":
                    answer = ev.answer
        except USER_ERRORS as e:
            logger.info("query refused: %s", e)
            conv.history[-1] = {"role": "assistant", "content": "⚠️ " + inert_md(user_error_text(e))}
            yield conv.update(feedback="")
            return None
        except Exception:
            ref = uuid.uuid4().hex[:8]
            logger.exception("chat request failed (ref %s)", ref)
            conv.history[-1] = {"role": "assistant", "content": "⚠️ " + server_error_text(ref)}
            yield conv.update(feedback="")
            return None
        finally:  # also on GeneratorExit (Gradio closing this generator): never leave the model running
            cancel.set()
            self._track(session, cancel, False)
        assert answer is not None
        return answer

    def final_update(self, answer: Answer, query: Query, text: str, inputs: QueryInputs, conv: Conversation) -> ChatUpdate:
        """Step 4: the finished answer with its citations, the turn added to the conversation, the record feedback
        refers to, and the timings."""
        body = inert_md(answer.text) if answer.text else tr("ui.chat.empty_answer")
        if not answer.abstained:
            body += citations_md(answer)
        conv.history[-1] = {"role": "assistant", "content": body}
        # An abstention's "possibly related" cases are below the threshold: the follow-up must not get them as
        # reference cases, so an abstained turn carries none.
        carried = [] if answer.abstained else (answer.cited or [c.case_id for c in answer.cases[:3]])
        conv.turns.append(Turn(question=text or "(photo)", answer=answer.text, case_ids=carried).model_dump())
        banner = gr.update(value=abstain_banner_html(answer.cases, answer.decision), visible=True) if answer.abstained else gr.update(visible=False)
        qm = inputs.query_media
        last = {"question": text, "answer": answer.text, "cited": answer.cited, "abstained": answer.abstained,
                "cases": [{"case_id": c.case_id, "score": round(c.score, 4), "retrieval_score": round(c.retrieval_score, 4),
                           "rerank_score": None if c.rerank_score is None else round(c.rerank_score, 4)} for c in answer.cases],
                "media": [display_name(p) for p in qm.images] + ([display_name(qm.video)] if qm.video else []),
                "filters": query.filters, "media_reused": inputs.media.empty and not qm.empty,
                "history_turns": len(query.history), "media_files": [*qm.images, *([qm.video] if qm.video else [])]}
        if answer.abstained:  # the knowledge-gap review (`ragvqa kb gaps`) reads these
            try:
                self.s.feedback.record_abstention(question=text, media_files=last["media_files"], filters=query.filters,
                                                  cases=last["cases"],
                                                  reason=answer.decision.reason if answer.decision else "")
            except Exception:  # noqa: BLE001 - logging a gap must never break the answer
                logger.exception("could not log the abstention")
        return conv.update(gallery=self.gallery(answer.cases, answer.cited), sources=[c.model_dump() for c in answer.cases],
                           detail=case_detail_html(None), banner=banner,
                           timings=timings_md(answer.trace, {"uploads": inputs.ms_uploads}, inputs.notes), last=last,
                           feedback="")

    @staticmethod
    def _user_message(text: str, media_paths: list[str]) -> list[dict[str, Any]]:
        msgs: list[dict[str, Any]] = [{"role": "user", "content": {"path": p}} for p in media_paths]
        if text:
            msgs.append({"role": "user", "content": inert_md(text)})
        return msgs

    def on_select(self, sources: list[dict[str, Any]] | None, evt: gr.SelectData) -> tuple[str, list[tuple[str, str]]]:
        """Open the full case of the clicked thumbnail (text escaped; its media in a second gallery)."""
        sources = sources or []
        idx = evt.index if isinstance(evt.index, int) else (evt.index[0] if evt.index else 0)
        if not 0 <= idx < len(sources):
            return case_detail_html(None), []
        c = CaseCandidate.model_validate(sources[idx])
        return case_detail_html(c), self.case_media(c)

    def case_media(self, c: CaseCandidate) -> list[tuple[str, str]]:
        from rag.pipeline.media import resolve_media

        out = []
        for m in (c.case or {}).get("media", [])[:12]:
            thumb = resolve_media(self.s.media_root, m.get("thumbnail") or (m.get("path") if m.get("kind") in PICTURE_KINDS else None))
            if thumb and Path(thumb).exists():
                label = m.get("kind", "")
                if m.get("page"):
                    label += f" p.{m['page']}"
                if m.get("caption"):
                    label += " — " + plain(m["caption"], 80)
                out.append((thumb, label))
        return out

    def on_feedback(self, rating: int, comment: str | None, last: dict[str, Any] | None) -> tuple[str, str]:
        if not last:
            return tr("ui.chat.feedback_first"), comment or ""
        fid = self.s.feedback.record(rating=rating, question=last.get("question", ""), answer=last.get("answer", ""),
                                     cited=list(last.get("cited") or []), cases=list(last.get("cases") or []),
                                     abstained=bool(last.get("abstained")), comment=comment or "",
                                     media=list(last.get("media") or []), filters=dict(last.get("filters") or {}),
                                     media_files=list(last.get("media_files") or []))
        return tr("ui.chat.feedback_thanks", id=fid, rating=tr("ui.chat.rated_up" if rating > 0 else "ui.chat.rated_down")), ""

    def on_clear(self) -> dict[gr.components.Component, Any]:
        """New conversation: every output of the chat event back to its start value, and the case media emptied."""
        v = self.view
        return {**v.updates(ChatUpdate(history=[], textbox=None, gallery=[], sources=[], detail=case_detail_html(None),
                                       banner=gr.update(visible=False), timings=timings_md(None), turns=[],
                                       media_state={}, last=None, crop=None, feedback="")),
                v.case_media: []}

    def on_chat(self, message: dict[str, Any] | str | None, history: list[dict[str, Any]] | None,
                turns: list[dict[str, Any]] | None, media_state: dict[str, Any] | None, product_line: str | None,
                equipment_model: str | None, rerank: bool, pdf_page: float | None, crop: Any,
                request: gr.Request | None = None) -> Iterator[dict[gr.components.Component, Any]]:
        """The chat event: :meth:`respond`'s updates in ``{component: value}`` form. Closing this generator (Stop,
        a closed page) closes ``respond`` at once, whose cleanup cancels the running answer."""
        updates = self.respond(message, history, turns, media_state, product_line, equipment_model, rerank, pdf_page,
                               crop, request)
        try:
            for u in updates:
                yield self.view.updates(u)
        finally:
            updates.close()

    # -- layout -------------------------------------------------------------------------------------------------
    def build(self) -> ChatView:
        """Lay out the chat tab's components (no events: :meth:`wire` connects them)."""
        s = self.s
        turns = gr.State([])
        media_state = gr.State({})
        sources = gr.State([])
        last = gr.State(None)
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                banner = gr.HTML(visible=False, elem_id="abstain-banner")
                chatbot = gr.Chatbot(label=L("ui.chat.chatbot"), elem_id="chatbot", height=520, sanitize_html=True,
                                     render_markdown=True, allow_tags=False, latex_delimiters=[],
                                     feedback_options=None, buttons=["copy"])
                msg = gr.MultimodalTextbox(
                    placeholder=L("ui.chat.placeholder"),
                    file_types=["image", "video", ".pdf"], file_count="multiple", sources=["upload"],
                    show_label=False, elem_id="chat-input", stop_btn=True, max_plain_text_length=4000)
                with gr.Row():
                    # Choices are refreshed on page load; custom values are accepted because API clients never
                    # load the page and the KB may gain lines after start (values are only exact-match filters).
                    line_upd, model_upd = self.filter_updates()
                    product_line = gr.Dropdown(label=L("ui.chat.product_line"), choices=line_upd["choices"], value=ANY,
                                               allow_custom_value=True, elem_id="filter-line", scale=2)
                    equipment_model = gr.Dropdown(label=L("ui.chat.equipment_model"), choices=model_upd["choices"], value=ANY,
                                                  allow_custom_value=True, elem_id="filter-model", scale=2)
                    pdf_page = gr.Number(label=L("ui.chat.pdf_page"), value=1, minimum=1, precision=0, elem_id="pdf-page",
                                         scale=1, info=L("ui.chat.pdf_page_info"))
                    rerank = gr.Checkbox(label=L("ui.chat.rerank"), value=bool(s.settings.rerank_enabled), elem_id="rerank", scale=1)
                self.intel.build_hint()
                with gr.Accordion(L("ui.chat.crop_panel"), open=False, elem_id="crop-panel"):
                    gr.Markdown(L("ui.chat.crop_help"))
                    # brush/eraser stay enabled: in Gradio 6.31 disabling either hides the whole toolbar (crop too);
                    # a brush mark is harmless (and can point at the fault).
                    # No "load the conversation's photo" button: in Gradio 6.31 a crop of a server-set editor value
                    # is not exported (the composite stays uncropped); an uploaded one is.
                    crop = gr.ImageEditor(label=L("ui.chat.crop_editor"),
                                          type="pil", sources=["upload", "clipboard"], transforms=("crop",),
                                          layers=False, elem_id="crop-editor", height=380)
                with gr.Row(elem_id="feedback-row"):
                    up = gr.Button(L("ui.chat.helpful"), elem_id="fb-up", size="sm")
                    down = gr.Button(L("ui.chat.not_helpful"), elem_id="fb-down", size="sm")
                    comment = gr.Textbox(placeholder=L("ui.chat.comment"), show_label=False,
                                         elem_id="fb-comment", scale=3, max_length=2000)
                    clear = gr.Button(L("ui.chat.new_conversation"), elem_id="clear-btn", size="sm")
                fb_status = gr.Markdown(elem_id="fb-status")
                with gr.Accordion(L("ui.chat.timings"), open=False, elem_id="timings-panel"):
                    timings = gr.Markdown(L("ui.timings.none"), elem_id="timings")
            with gr.Column(scale=2):
                gallery = gr.Gallery(label=L("ui.chat.sources"), elem_id="sources", columns=3,
                                     height=300, allow_preview=False, object_fit="contain", interactive=False,
                                     fit_columns=False, preview=False)
                detail = gr.HTML(L("ui.case.select"), elem_id="case-detail")
                case_media = gr.Gallery(label=L("ui.chat.case_media"), elem_id="case-media", columns=4, height=180,
                                        allow_preview=True, interactive=False, object_fit="contain",
                                        fit_columns=False, preview=False)
                self.intel.build_related()

        self.view = ChatView(chatbot=chatbot, msg=msg, gallery=gallery, sources=sources, detail=detail, banner=banner,
                             timings=timings, turns=turns, media_state=media_state, last=last, crop=crop,
                             fb_status=fb_status, case_media=case_media, product_line=product_line,
                             equipment_model=equipment_model, pdf_page=pdf_page, rerank=rerank, up=up, down=down,
                             comment=comment, clear=clear)
        self.load_outputs = [product_line, equipment_model]
        return self.view

    # -- events -------------------------------------------------------------------------------------------------
    def wire(self, v: ChatView) -> None:
        """Connect the laid-out components to the handlers (inside the same ``gr.Blocks``)."""
        s = self.s
        ev = v.msg.submit(localized(self.on_chat), v.inputs(), v.outputs(), api_name="chat", concurrency_limit=s.ui.concurrency_limit,
                          concurrency_id="models", show_progress="minimal", show_progress_on=[v.chatbot])
        v.msg.stop(None, None, None, cancels=[ev], api_visibility="private")
        # queue=False: runs at once, not behind the busy model slot it is meant to free
        v.msg.stop(self.on_stop, None, None, queue=False, api_visibility="private")
        v.gallery.select(localized(self.on_select), [v.sources], [v.detail, v.case_media], api_name="open_case")
        v.product_line.change(localized(self.on_line_change), [v.product_line], [v.equipment_model],
                              api_visibility="private")
        v.up.click(localized(lambda c, l: self.on_feedback(1, c, l)), [v.comment, v.last], [v.fb_status, v.comment],
                   api_name="feedback_up")
        v.down.click(localized(lambda c, l: self.on_feedback(-1, c, l)), [v.comment, v.last], [v.fb_status, v.comment],
                     api_name="feedback_down")
        v.clear.click(localized(self.on_clear), None, v.outputs() + [v.case_media], api_name="new_conversation")
        self.intel.wire(v, ev)

