"""Chat tab, knowledge-base intelligence: "Related cases" under the opened case (click one to open it), and a
product-line hint from the query photo ("Looks like: printer") that the user may accept — never a silent filter.

The hint costs no extra model call: the cases the chat just retrieved for the photo are its nearest neighbours, and
they vote on the product line exactly as label suggestions do (:func:`knowledge_base.labels.neighbour_votes`, same
thresholds). Related cases read stored vectors only; their reasons ("photo 1 ↔ manual page 2") are rendered from the
reason's typed parts in the request's language (:func:`reason_text`, also used by the admin tab).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import gradio as gr
from pydantic import ValidationError

from rag.errors import UserInputError
from rag.pipeline.types import CaseCandidate
from ui.i18n import L, localized, tr
from ui.show import case_detail_html, plain

if TYPE_CHECKING:  # pragma: no cover
    from knowledge_base.related import MatchReason, PointRef
    from ui.chat import ChatTab, ChatView

logger = logging.getLogger(__name__)

RELATED_LIMIT = 5
#: A matched point by kind (``{n}``: its number among the case's photos or videos; ``{page}``: the PDF page).
POINT_NAMES = {"image": "ui.intel.point.image", "video": "ui.intel.point.video", "pdf_page": "ui.intel.point.pdf_page"}
#: The same when the case record gives no number or page (its record was unreadable).
POINT_NAMES_BARE = {"text": "ui.intel.point.text", "image": "ui.admin.intel.kind.image",
                    "video": "ui.admin.intel.kind.video", "pdf_page": "ui.intel.point.pdf_page_bare"}


def point_name(ref: PointRef) -> str:
    """One matched point in the request's language ("照片 1", "手册第 2 页")."""
    if ref.kind == "pdf_page" and ref.page is not None:
        return tr(POINT_NAMES["pdf_page"], page=ref.page)
    if ref.kind in ("image", "video") and ref.number is not None:
        return tr(POINT_NAMES[ref.kind], n=ref.number)
    return tr(POINT_NAMES_BARE[ref.kind])


def reason_text(reason: MatchReason) -> str:
    """Why a case is related, in the request's language (``MatchReason.text`` is the English one, for CLI and JSON)."""
    return tr("ui.intel.reason", this=point_name(reason.this), other=point_name(reason.other))


class ChatIntel:
    """Components and handlers added to the chat tab (see the module docstring)."""

    def __init__(self, chat: ChatTab) -> None:
        self.chat = chat

    @property
    def kb(self) -> Any:
        return self.chat.s.kb

    # -- related cases -----------------------------------------------------------------------------------------------
    def related_update(self, case_id: str | None) -> Any:
        """The "Related cases" choices for ``case_id`` (hidden when there are none or the KB is not available)."""
        from knowledge_base.related import related_cases

        if not case_id or self.kb is None:
            return gr.update(choices=[], value=None, visible=False)
        try:
            found = related_cases(self.kb, case_id, limit=RELATED_LIMIT)
        except UserInputError as e:  # unknown id (deleted meanwhile), vectors of another embedder
            logger.info("no related cases for %s: %s", case_id, e)
            found = []
        choices = [(plain(f"{r.title} ({r.score:.2f}; {'; '.join(reason_text(x) for x in r.reasons[:1])})", 160),
                    r.case_id) for r in found]
        return gr.update(choices=choices, value=None, visible=bool(choices))

    def on_source(self, sources: list[dict[str, Any]] | None, evt: gr.SelectData) -> Any:
        """A source thumbnail was opened: list its related cases."""
        sources = sources or []
        idx = evt.index if isinstance(evt.index, int) else (evt.index[0] if evt.index else 0)
        cid = sources[idx].get("case_id") if 0 <= idx < len(sources) else None
        return self.related_update(cid)

    def open_related(self, case_id: str | None) -> tuple[str, list[tuple[str, str]], Any]:
        """Open a related case (its detail and media), then list *its* related cases."""
        case = self.kb.get(case_id) if case_id and self.kb is not None else None
        if case is None:
            return case_detail_html(None), [], gr.update(choices=[], value=None, visible=False)
        c = CaseCandidate(case_id=case.id, title=case.title, retrieval_score=0.0, case=case.model_dump(mode="json"),
                          document=case.document_text())
        return case_detail_html(c), self.chat.case_media(c), self.related_update(case.id)

    # -- product-line hint ---------------------------------------------------------------------------------------------
    def line_hint(self, sources: list[dict[str, Any]] | None, media_state: dict[str, Any] | None,
                  product_line: str | None) -> tuple[Any, str | None]:
        """After an answer to a photo/video with no product-line filter: "Looks like: X" if the retrieved cases agree."""
        from knowledge_base.labels import MIN_CONFIDENCE, MIN_VOTERS, neighbour_votes
        from knowledge_base.schema import Case

        hidden = (gr.update(visible=False), None)
        has_media = bool((media_state or {}).get("images") or (media_state or {}).get("video"))
        if not has_media or (product_line or "").strip():
            return hidden
        neighbours = []
        for s in sources or []:
            try:
                neighbours.append((Case.model_validate(s.get("case") or {}), float(s.get("retrieval_score", 0.0))))
            except (ValidationError, TypeError, ValueError):
                continue
        shares, voters = neighbour_votes(neighbours, "product_line")
        if voters < MIN_VOTERS or not shares:
            return hidden
        value, share = max(shares.items(), key=lambda kv: (kv[1], kv[0]))
        if share < MIN_CONFIDENCE:
            return hidden
        return gr.update(value=tr("ui.chat.intel.line_hint", line=plain(value, 60), share=f"{share:.0%}"), visible=True), value

    def accept_line(self, value: str | None) -> tuple[Any, Any]:
        """The user accepted the hint: set the product-line filter, hide the hint."""
        if not value:
            return gr.update(), gr.update(visible=False)
        return gr.update(value=value), gr.update(visible=False)

    # -- layout and events -----------------------------------------------------------------------------------------------
    def build_hint(self) -> None:
        """Under the filters."""
        self.hint = gr.Button(visible=False, size="sm", variant="secondary", elem_id="line-hint")
        self.hint_value = gr.State(None)

    def build_related(self) -> None:
        """Under the case detail and its media."""
        # A dropdown, not a radio: its choices change per opened case, and any value is checked by open_related.
        self.related = gr.Dropdown(label=L("ui.chat.intel.related"), choices=[], visible=False,
                                   allow_custom_value=True, elem_id="related-cases")

    def wire(self, v: ChatView, chat_event: Any) -> None:
        v.gallery.select(self.on_source, [v.sources], [self.related], api_visibility="private")
        self.related.input(localized(self.open_related), [self.related], [v.detail, v.case_media, self.related],
                           api_name="open_related")
        chat_event.then(localized(self.line_hint), [v.sources, v.media_state, v.product_line], [self.hint, self.hint_value],
                        api_visibility="private")
        self.hint.click(self.accept_line, [self.hint_value], [v.product_line, self.hint], api_visibility="private")
        v.clear.click(lambda: (gr.update(choices=[], value=None, visible=False), gr.update(visible=False), None), None,
                      [self.related, self.hint, self.hint_value], api_visibility="private")
