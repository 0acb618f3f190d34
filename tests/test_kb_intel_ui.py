"""Admin "Search & related" and the form's label suggestions, served for real (tiny models, Edge store, Gradio) and
driven through gradio_client: closed without a login, working after one, read-only except "Confirm link"."""

from __future__ import annotations

from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from ui_helpers import ADMIN, Served, component_id, fn_index_for, raw_call, served_app

INTEL = {  # trigger elem_id -> inputs after the token
    "intel-search-btn": ["paper jam", None, [], ""],
    "intel-related-btn": ["prn-e13"],
    "intel-link-btn": ["prn-e13", "prn-jam2"],
    "case-suggest": ["Paper jam", "Paper jams at the pick roller.", "", "", "", "", "", None],
}


app = served_app("ui-intel")


def points(app: Served) -> dict[str, str]:
    """Every stored point's payload as JSON (what a write would change)."""
    import json

    return {p.id: json.dumps(p.payload, sort_keys=True) for p in app.services.store.scroll()}


def client_for(app: Served, login: bool) -> tuple[Client, dict[str, int]]:
    c = Client(app.url, verbose=False, download_files=False)
    if login:
        c.predict(*ADMIN, api_name="/admin_login")
    idx = {e: fn_index_for(c.config, e) for e in INTEL}
    for i in idx.values():
        c.endpoints[i].is_valid = True
    return c, idx


def test_intel_closed_without_login(app: Served) -> None:
    before = points(app)
    c, idx = client_for(app, login=False)
    api = c.view_api(print_info=False, return_format="dict")
    assert not any(n.startswith(("/search", "/related", "/confirm", "/suggest")) for n in api["named_endpoints"])
    c.predict("admin", "wrong", api_name="/admin_login")
    for elem, i in idx.items():
        with pytest.raises(Exception, match="Admin login required"):
            c.predict(*INTEL[elem], fn_index=i)
        msg = raw_call(app.url, i, [app.services.auth.login(*ADMIN), *INTEL[elem]],
                       trigger_id=component_id(c.config, elem))
        assert msg.get("success") is False and "Admin login required" in str(msg.get("output", {}).get("error"))
    assert points(app) == before


def test_intel_with_login(app: Served, tmp_path: Path) -> None:
    kb = app.services.kb
    c, idx = client_for(app, login=True)
    before = points(app)
    gallery, table, msg = c.predict("paper jam", handle_file(str(app.images["prn-jam2"])), ["image"], "",
                                    fn_index=idx["intel-search-btn"])
    assert gallery and all("photo" in g["caption"] for g in gallery)
    assert len(table["data"]) == len(kb.list_cases().cases) and "case(s)" in msg
    _, table, _ = c.predict("paper jam", None, [], "printers", fn_index=idx["intel-search-btn"])
    assert {r[3] for r in table["data"]} == {"printers"}
    with pytest.raises(Exception, match="Type what to look for"):
        c.predict("", None, [], "", fn_index=idx["intel-search-btn"])

    from knowledge_base.related import related_cases

    rows, other, msg = c.predict("prn-e13", fn_index=idx["intel-related-btn"])
    want = [r.case_id for r in related_cases(kb, "prn-e13", limit=8)]
    assert [r[1] for r in rows["data"]] == want and "related case(s)" in msg
    with pytest.raises(Exception, match="no case with id 'nope'"):
        c.predict("nope", fn_index=idx["intel-related-btn"])

    (f_line, f_model, f_tags, f_sev, s_msg) = c.predict(*INTEL["case-suggest"], fn_index=idx["case-suggest"])
    assert "Suggested" in s_msg or "No confident suggestion" in s_msg
    for upd in (f_line, f_model, f_tags, f_sev):  # a filled field is marked as a suggestion
        if isinstance(upd, dict) and upd.get("value"):
            assert upd.get("label", "").endswith("(suggested)"), upd
    assert points(app) == before  # search, related and suggestions wrote nothing

    out = c.predict("prn-e13", want[0], fn_index=idx["intel-link-btn"])
    assert "Linked" in out
    assert [(lk.case_id, lk.relation) for lk in kb.get("prn-e13").links] == [(want[0], "related")]
    assert "Already linked" in c.predict("prn-e13", want[0], fn_index=idx["intel-link-btn"])


def test_chat_open_related_case(app: Served) -> None:
    from knowledge_base.related import related_cases

    c = Client(app.url, verbose=False, download_files=False)
    detail, media, related = c.predict("prn-jam2", api_name="/open_related")
    assert "prn-jam2" in detail and "Paper jam in tray 2" in detail and media
    want = [r.case_id for r in related_cases(app.services.kb, "prn-jam2", limit=5)]
    assert [ch[1] for ch in related["choices"]] == want and related["visible"] is True
    detail, media, related = c.predict("no-such-case", api_name="/open_related")
    assert "Select a source" in detail and media == [] and related["visible"] is False


def test_chat_line_hint_is_a_vote_of_the_retrieved_cases(app: Served) -> None:
    """The hint is the similarity-weighted vote of the retrieved cases (reference computed by hand here), shown
    only for a photo/video query without a product-line filter, and applied only when clicked."""
    from ui.chat import ChatTab

    kb = app.services.kb
    tab = ChatTab(app.services)

    def src(cid: str, score: float) -> dict:
        return {"case_id": cid, "retrieval_score": score, "case": kb.get(cid).model_dump(mode="json")}

    sources = [src("prn-e13", 0.9), src("prn-jam2", 0.8), src("hvac-f3", 0.5), src("xss-case", 0.1)]
    photo = {"images": ["/tmp/q.png"], "video": None}
    upd, value = tab.intel.line_hint(sources, photo, "")
    share = (0.9 + 0.8 + 0.1) / (0.9 + 0.8 + 0.5 + 0.1)  # printers: 78 %
    assert value == "printers" and upd["visible"] is True and f"({share:.0%})" in upd["value"]
    assert tab.intel.line_hint(sources, {"images": [], "video": None}, "")[1] is None  # text-only query: no hint
    assert tab.intel.line_hint(sources, photo, "hvac")[1] is None  # a filter is already chosen
    assert tab.intel.line_hint(sources[2:], photo, "")[1] is None  # two voters: not evidence
    split = [src("prn-e13", 0.5), src("hvac-f3", 0.5), src("pump-seal", 0.5)]
    assert tab.intel.line_hint(split, photo, "")[1] is None  # no majority
    line_upd, hint_upd = tab.intel.accept_line("printers")
    assert line_upd["value"] == "printers" and hint_upd["visible"] is False
