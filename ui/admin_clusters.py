"""The admin tab's "Clusters" and "Knowledge gaps" views (issue 13), built into :class:`ui.admin.AdminTab`.

Every handler goes through ``AdminTab.on`` (server-side login check, hidden from the API docs); nothing is rendered at
build time. Clusters are computed from the stored vectors (the store is only read; the cluster model is saved under
``data_dir/clusters``). A gap's "start a new case" fills the admin case form with the questions, the product line
and the kept query media; the admin completes it and saves it with the form's own Save button.
"""

from __future__ import annotations

import functools
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
from gradio.i18n import I18nData
from PIL import Image

from ui.feedback import GAP_MEDIA
from ui.i18n import L, headers, table, tr
from ui.show import esc, plain

if TYPE_CHECKING:
    from knowledge_base.clusters import ClusterReport, MapText
    from knowledge_base.gaps import GapReport
    from ui.admin import AdminTab

#: Table headers as catalog keys, shown in the request's language.
CLUSTER_HEADERS = ["ui.admin.clusters.col.cluster", "ui.admin.clusters.col.size", "ui.admin.clusters.col.lines",
                   "ui.admin.clusters.col.flag", "ui.admin.clusters.col.central", "ui.admin.clusters.col.terms"]
GAP_HEADERS = ["ui.admin.gaps.col.topic", "ui.admin.gaps.col.questions", "ui.admin.gaps.col.abstained",
               "ui.admin.gaps.col.down", "ui.admin.gaps.col.line", "ui.admin.gaps.col.example",
               "ui.admin.gaps.col.media", "ui.admin.gaps.col.shown"]


#: Font files (name fragments) that draw Chinese, tried in this order for the map's non-Latin words.
CJK_FONTS = ("wqyzenhei", "wqymicrohei", "notosanscjk", "notoserifcjk", "sourcehansans", "droidsansfallback")


@functools.lru_cache(maxsize=1)
def cjk_families() -> tuple[str, ...]:
    """Font families on this machine that can draw Chinese, registered with matplotlib (its cache may predate them)."""
    from matplotlib import font_manager

    found: list[str] = []
    for path in sorted(font_manager.findSystemFonts()):
        name = Path(path).name.lower().replace("-", "").replace("_", "")
        if any(frag in name for frag in CJK_FONTS):
            try:
                font_manager.fontManager.addfont(path)
                found.append(font_manager.FontProperties(fname=path).get_name())
            except (OSError, RuntimeError, ValueError):
                continue
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)  # "weight normal not found" noise per draw
    return tuple(dict.fromkeys(found))


def map_text() -> tuple[MapText, list[str]]:
    """The map's words in the request's language and the font families to draw them; English where the words need
    a font this machine lacks (a map of empty boxes is worse than an English one)."""
    from knowledge_base.clusters import MapText

    text = MapText(title=tr("ui.admin.clusters.map_title"), panel=tr("ui.admin.clusters.map_panel"),
                   by_cluster=tr("ui.admin.clusters.by_cluster"), by_line=tr("ui.admin.clusters.by_line"),
                   cluster=tr("ui.admin.clusters.map_cluster"), unclustered=tr("ui.admin.clusters.map_unclustered"),
                   no_line=tr("ui.admin.clusters.map_no_line"))
    if all(ord(ch) < 0x2E80 for v in text.model_dump().values() for ch in v):
        return text, ["DejaVu Sans"]
    families = cjk_families()
    return (text, ["DejaVu Sans", *families]) if families else (MapText(), ["DejaVu Sans"])


def colour_choices() -> list[tuple[str | I18nData, str | int | float]]:
    """The map's colourings: shown in the browser's language (``gr.Radio`` translates ``I18nData`` names), sent as
    the names ``plot_map`` knows."""
    return [(L("ui.admin.clusters.by_cluster"), "cluster"), (L("ui.admin.clusters.by_line"), "product line")]


class AdminClusters:
    """Components and handlers of the two views; ``tab`` gives the guard, the services and the case form."""

    def __init__(self, tab: AdminTab) -> None:
        self.tab = tab
        self.s = tab.s

    # -- handlers ----------------------------------------------------------------------------------------------
    def clusters(self, token: str, min_size: float, colour: str
                 ) -> tuple[str, Any, dict[str, Any], list[tuple[str, str]]]:
        from knowledge_base.clusters import (
            MODEL_DIR,
            ClusterError,
            ClusterSettings,
            compute_clusters,
            plot_map,
            save_model,
        )
        from rag.pipeline.media import resolve_media

        kb = self.tab.kb
        settings = ClusterSettings(min_cluster_size=int(min_size))
        try:
            report, model = compute_clusters(kb.store, settings, cache_dir=Path(kb.data_dir) / MODEL_DIR)
        except ClusterError as e:
            raise gr.Error(tr("ui.admin.clusters.failed", reason=str(e))) from None
        folder = save_model(model, kb.data_dir)
        import matplotlib

        text, fonts = map_text()
        with matplotlib.rc_context({"font.family": fonts}):
            png = plot_map(report, folder / "map.png", by=(colour or "cluster",), text=text)
        with Image.open(png) as im:
            picture = im.copy()
        rows, gallery = [], []
        for c in report.clusters:
            rows.append([c.id, c.size, plain(", ".join(f"{k} ({v})" for k, v in c.product_lines.items()), 200),
                         tr("ui.admin.clusters.mixed") if c.mixed_product_lines else "",
                         plain(", ".join(x.case_id for x in c.central), 200), plain(", ".join(c.terms), 200)])
            for x in c.central[:1]:
                thumb = resolve_media(self.s.media_root, x.thumbnail)
                if thumb and Path(thumb).exists():
                    gallery.append((thumb, tr("ui.admin.clusters.caption", cluster=c.id, case=plain(x.case_id, 64))))
        merges = "".join("\n- " + tr("ui.admin.clusters.merge", case=esc(m.case_id), other=esc(m.other_case_id),
                                     cosine=f"{m.cosine:.3f}")
                         for m in report.merge_candidates[:20])
        msg = tr("ui.admin.clusters.summary", n=report.n_cases, clusters=report.n_clusters,
                 unclustered=report.n_unclustered, seconds=f"{report.elapsed_s:.1f}", note=self._cluster_note(report))
        if merges:
            msg += "\n\n" + tr("ui.admin.clusters.merges") + merges
        return msg, picture, table(CLUSTER_HEADERS, rows), gallery

    @staticmethod
    def _cluster_note(report: ClusterReport) -> str:
        """The report's note in the request's language where it is the known "too few cases" note, else as written."""
        cfg = report.settings
        if report.note and min(report.n_cases, cfg.fit_sample) < cfg.min_cluster_size:
            return tr("ui.admin.clusters.too_few", n=report.n_cases, min=cfg.min_cluster_size)
        return esc(report.note)

    def gaps(self, token: str) -> tuple[str, dict[str, Any], dict[str, Any], GapReport]:
        report = self._gap_report()
        rows = []
        for t in report.topics:
            ex = t.examples[0]
            rows.append([t.id, t.size, t.abstentions, t.thumbs_down, plain(t.draft.product_line, 60),
                         plain(ex.question or tr("ui.admin.gaps.photo_only"), 200), len(t.draft.media),
                         plain(", ".join(t.shown_cases), 200)])
        note = tr("ui.admin.gaps.none_yet") if report.n_queries == 0 and report.note else esc(report.note)
        msg = tr("ui.admin.gaps.summary", n=report.n_queries, topics=report.n_topics, note=note)
        return msg, table(GAP_HEADERS, rows), report.model_dump(mode="json"), report

    def new_case_from_gap(self, token: str, topic: float | None,
                          shown: GapReport | None = None) -> dict[gr.components.Component, Any]:
        """A case form pre-filled from topic ``topic`` of the report on screen (kept server-side in the session, so
        the ids the admin read are the ones used even if new gaps were logged since); grouped afresh only when no
        report was shown yet."""
        from knowledge_base.gaps import GapReport

        report = shown if isinstance(shown, GapReport) else self._gap_report()
        tid = int(topic) if topic is not None else -1
        match = [t for t in report.topics if t.id == tid]
        if not match:
            raise gr.Error(tr("ui.admin.gaps.no_topic", topic=tid))
        draft = match[0].draft
        files = []
        kept = (self.s.data_dir / GAP_MEDIA).resolve()
        for rel in draft.media:  # copies in the upload folder: the form's file box may only serve files from there
            src = self.s.data_dir / rel
            if src.resolve().is_relative_to(kept) and src.is_file():
                dest = self.s.upload_dir / f"gap-{src.name}"
                if not dest.exists():
                    shutil.copyfile(src, dest)
                files.append(str(dest))
        t = self.tab
        return {t.f_id: "", t.f_title: draft.title, t.f_line: draft.product_line, t.f_model: "",
                t.f_symptom: draft.symptom, t.f_cause: "", t.f_solution: "", t.f_codes: "", t.f_tags: "",
                t.f_sev: "", t.f_source: f"knowledge gap {tid}", t.f_files: files or None,
                t.save_msg: tr("ui.admin.gaps.drafted", topic=tid, n=len(files))}

    def _gap_report(self) -> GapReport:
        from knowledge_base.gaps import GapError, find_gaps

        try:
            return find_gaps(self.s.data_dir, self.s.kb.store)
        except GapError as e:
            raise gr.Error(str(e)) from None

    # -- layout and events ------------------------------------------------------------------------------------------
    def build(self) -> None:
        """Two tabs, inside ``AdminTab.build``'s ``gr.Tabs``."""
        with gr.Tab(L("ui.admin.clusters.tab"), elem_id="admin-clusters"):
            with gr.Row():
                self.min_size = gr.Slider(2, 20, value=3, step=1, label=L("ui.admin.clusters.min_size"),
                                          elem_id="clusters-min-size")
                self.colour = gr.Radio(colour_choices(), value="cluster", label=L("ui.admin.clusters.colour"),
                                       elem_id="clusters-colour")
                self.cl_btn = gr.Button(L("ui.admin.clusters.compute"), elem_id="clusters-btn")
            self.cl_msg = gr.Markdown(elem_id="clusters-msg")
            self.cl_map = gr.Image(label=L("ui.admin.clusters.map"), type="pil", interactive=False,
                                   elem_id="clusters-map")
            self.cl_table = gr.Dataframe(headers=headers(CLUSTER_HEADERS), interactive=False, wrap=True,
                                         elem_id="clusters-table", max_height=400)
            self.cl_gallery = gr.Gallery(label=L("ui.admin.clusters.central"), columns=6, height=200,
                                         elem_id="clusters-central")
        with gr.Tab(L("ui.admin.gaps.tab"), elem_id="admin-gaps"):
            self.gap_btn = gr.Button(L("ui.admin.gaps.refresh"), elem_id="gaps-btn")
            self.gap_msg = gr.Markdown(elem_id="gaps-msg")
            self.gap_table = gr.Dataframe(headers=headers(GAP_HEADERS), interactive=False, wrap=True,
                                          elem_id="gaps-table", max_height=400)
            self.gap_json = gr.JSON(label=L("ui.admin.gaps.topics"), elem_id="gaps-json", visible=False)
            self.gap_state = gr.State(None)  # the report on screen, server-side (never read back from the page)
            with gr.Row():
                self.gap_id = gr.Number(label=L("ui.admin.gaps.topic"), precision=0, elem_id="gap-id")
                self.gap_new = gr.Button(L("ui.admin.gaps.new_case"), elem_id="gap-new-case")

    def wire(self) -> None:
        t = self.tab
        t.on(self.cl_btn.click, self.clusters, [self.min_size, self.colour],
             [self.cl_msg, self.cl_map, self.cl_table, self.cl_gallery])
        t.on(self.gap_btn.click, self.gaps, [], [self.gap_msg, self.gap_table, self.gap_json, self.gap_state])
        form = [t.f_id, t.f_title, t.f_line, t.f_model, t.f_symptom, t.f_cause, t.f_solution, t.f_codes, t.f_tags,
                t.f_sev, t.f_source, t.f_files, t.save_msg]
        t.on(self.gap_new.click, self.new_case_from_gap, [self.gap_id, self.gap_state], form)
