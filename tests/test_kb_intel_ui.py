"""Admin "Search & related" and the form's label suggestions, served for real (tiny models, Edge store, Gradio) and
driven through gradio_client: closed without a login, working after one, read-only except "Confirm link"."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from gradio_client import Client, handle_file
from ui_helpers import ADMIN, Served, component_id, fn_index_for, raw_call, serve_app, stop_app

INTEL = {  # trigger elem_id -> inputs after the token
    "intel-search-btn": ["paper jam", None, [], ""],
    "intel-related-btn": ["prn-e13"],
    "intel-link-btn": ["prn-e13", "prn-jam2"],
    "case-suggest": ["Paper jam", "Paper jams at the pick roller.", "", "", "", "", "", None],
}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, embedder, reranker, generator) -> Iterator[Served]:
    s = serve_app(tmp_path_factory.mktemp("ui-intel"), embedder, reranker, generator)
    yield s
    stop_app(s)


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
