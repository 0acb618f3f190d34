"""The admin tab's "Clusters" and "Knowledge gaps" views (issue 13), built into :class:`ui.admin.AdminTab`.

Every handler goes through ``AdminTab.on`` (server-side login check, hidden from the API docs); nothing is rendered at
build time. Clusters are computed from the stored vectors (the store is only read; the cluster model is saved under
``data_dir/clusters``). A gap's "start a new case" fills the admin case form with the questions, the product line
and the kept query media; the admin completes it and saves it with the form's own Save button.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
from PIL import Image

from ui.render import esc, plain

if TYPE_CHECKING:
    from knowledge_base.gaps import GapReport
    from ui.admin import AdminTab

CLUSTER_HEADERS = ["cluster", "size", "product lines", "flag", "central cases", "distinguishing terms"]
GAP_HEADERS = ["topic", "questions", "abstained", "👎", "product line", "example", "media", "closest cases shown"]


class AdminClusters:
    """Components and handlers of the two views; ``tab`` gives the guard, the services and the case form."""

    def __init__(self, tab: AdminTab) -> None:
        self.tab = tab
        self.s = tab.s

    # -- handlers ----------------------------------------------------------------------------------------------
    def clusters(self, token: str, min_size: float, colour: str) -> tuple[str, Any, list[list[Any]], list[tuple[str, str]]]:
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
        try:
            report, model = compute_clusters(kb.store, ClusterSettings(min_cluster_size=int(min_size)),
                                             cache_dir=Path(kb.data_dir) / MODEL_DIR)
        except ClusterError as e:
            raise gr.Error(str(e)) from None
        folder = save_model(model, kb.data_dir)
        png = plot_map(report, folder / "map.png", by=(colour or "cluster",))
        with Image.open(png) as im:
            picture = im.copy()
        rows, gallery = [], []
        for c in report.clusters:
            rows.append([c.id, c.size, plain(", ".join(f"{k} ({v})" for k, v in c.product_lines.items()), 200),
                         "mixed product lines" if c.mixed_product_lines else "",
                         plain(", ".join(x.case_id for x in c.central), 200), plain(", ".join(c.terms), 200)])
            for x in c.central[:1]:
                thumb = resolve_media(self.s.media_root, x.thumbnail)
                if thumb and Path(thumb).exists():
                    gallery.append((thumb, plain(f"cluster {c.id}: {x.case_id}", 80)))
        merges = "".join(f"\n- {esc(m.case_id)} ≈ {esc(m.other_case_id)} (cosine {m.cosine:.3f})"
                         for m in report.merge_candidates[:20])
        msg = (f"{report.n_cases} case(s): **{report.n_clusters}** cluster(s), {report.n_unclustered} unclustered "
               f"({report.elapsed_s:.1f} s). {esc(report.note)}"
               + (f"\n\n**Merge candidates:**{merges}" if merges else ""))
        return msg, picture, rows, gallery

    def gaps(self, token: str) -> tuple[str, list[list[Any]], dict[str, Any]]:
        report = self._gap_report()
        rows = []
        for t in report.topics:
            ex = t.examples[0]
            rows.append([t.id, t.size, t.abstentions, t.thumbs_down, plain(t.draft.product_line, 60),
                         plain(ex.question or "(photo only)", 200), len(t.draft.media),
                         plain(", ".join(t.shown_cases), 200)])
        msg = f"{report.n_queries} question(s) in {report.n_topics} topic(s). {esc(report.note)}"
        return msg, rows, report.model_dump(mode="json")

    def new_case_from_gap(self, token: str, topic: float | None) -> dict[gr.components.Component, Any]:
        report = self._gap_report()
        tid = int(topic) if topic is not None else -1
        match = [t for t in report.topics if t.id == tid]
        if not match:
            raise gr.Error(f"No knowledge-gap topic {tid}: refresh the list and pick a topic number from it.")
        draft = match[0].draft
        files = []
        for rel in draft.media:  # copies in the upload folder: the form's file box may only serve files from there
            src = self.s.data_dir / rel
            if src.is_file():
                dest = self.s.upload_dir / f"gap-{src.name}"
                if not dest.exists():
                    shutil.copyfile(src, dest)
                files.append(str(dest))
        t = self.tab
        return {t.f_id: "", t.f_title: draft.title, t.f_line: draft.product_line, t.f_model: "",
                t.f_symptom: draft.symptom, t.f_cause: "", t.f_solution: "", t.f_codes: "", t.f_tags: "",
                t.f_sev: "", t.f_source: f"knowledge gap {tid}", t.f_files: files or None,
                t.save_msg: f"Draft from knowledge-gap topic **{tid}** ({len(files)} media): complete it on the "
                            "*Add / edit case* tab and save."}

    def _gap_report(self) -> GapReport:
        from knowledge_base.gaps import GapError, find_gaps

        try:
            return find_gaps(self.s.data_dir)
        except GapError as e:
            raise gr.Error(str(e)) from None

    # -- layout and events ------------------------------------------------------------------------------------------
    def build(self) -> None:
        """Two tabs, inside ``AdminTab.build``'s ``gr.Tabs``."""
        with gr.Tab("Clusters", elem_id="admin-clusters"):
            with gr.Row():
                self.min_size = gr.Slider(2, 20, value=3, step=1, label="Fewest cases per fault family",
                                          elem_id="clusters-min-size")
                self.colour = gr.Radio(["cluster", "product line"], value="cluster", label="Colour the map by",
                                       elem_id="clusters-colour")
                self.cl_btn = gr.Button("Compute clusters", elem_id="clusters-btn")
            self.cl_msg = gr.Markdown(elem_id="clusters-msg")
            self.cl_map = gr.Image(label="Knowledge-base map (PCA)", type="pil", interactive=False,
                                   elem_id="clusters-map")
            self.cl_table = gr.Dataframe(headers=CLUSTER_HEADERS, interactive=False, wrap=True,
                                         elem_id="clusters-table", max_height=400)
            self.cl_gallery = gr.Gallery(label="Most central case per cluster", columns=6, height=200,
                                         elem_id="clusters-central")
        with gr.Tab("Knowledge gaps", elem_id="admin-gaps"):
            self.gap_btn = gr.Button("Refresh", elem_id="gaps-btn")
            self.gap_msg = gr.Markdown(elem_id="gaps-msg")
            self.gap_table = gr.Dataframe(headers=GAP_HEADERS, interactive=False, wrap=True, elem_id="gaps-table",
                                          max_height=400)
            self.gap_json = gr.JSON(label="Topics", elem_id="gaps-json", visible=False)
            with gr.Row():
                self.gap_id = gr.Number(label="Topic", precision=0, elem_id="gap-id")
                self.gap_new = gr.Button("Start a new case from this gap", elem_id="gap-new-case")

    def wire(self) -> None:
        t = self.tab
        t.on(self.cl_btn.click, self.clusters, [self.min_size, self.colour],
             [self.cl_msg, self.cl_map, self.cl_table, self.cl_gallery])
        t.on(self.gap_btn.click, self.gaps, [], [self.gap_msg, self.gap_table, self.gap_json])
        form = [t.f_id, t.f_title, t.f_line, t.f_model, t.f_symptom, t.f_cause, t.f_solution, t.f_codes, t.f_tags,
                t.f_sev, t.f_source, t.f_files, t.save_msg]
        t.on(self.gap_new.click, self.new_case_from_gap, [self.gap_id], form)
