"""The query-time pixel budget by hardware (issue 16): the rule, the official resize at a smaller budget, and that the
app's pipeline and model loading really apply it.

Oracle for sizes: qwen-vl-utils' own ``smart_resize`` (the published official resize rule), not the product's code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from qwen_vl_utils.vision_process import smart_resize

from rag.config import Settings, VisionBudget
from rag.models.budgets import CPU_QUERY_MAX_PIXELS, choose_query_budget, fit_image, query_time_budget
from tests.conftest import noise_image, populate_store

OFFICIAL = VisionBudget()


def test_rule_by_hardware() -> None:
    # the README's rule: 256 tokens of 32×32 pixels on a CPU; official on CUDA and on servers
    assert choose_query_budget("auto", "cpu").max_pixels == 256 * 32 * 32 == CPU_QUERY_MAX_PIXELS
    assert choose_query_budget("auto", "cuda").max_pixels is None
    assert choose_query_budget("auto", "remote").max_pixels is None
    assert choose_query_budget(300 * 1024, "remote").max_pixels is None  # a server applies its own budget
    assert choose_query_budget("official", "cpu").max_pixels is None
    assert choose_query_budget(100 * 1024, "cuda").max_pixels == 100 * 1024
    assert "CPU" in choose_query_budget("auto", "cpu").reason


def test_setting_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGVQA_QUERY_MAX_PIXELS", "65536")
    assert Settings().query_max_pixels == 65536
    monkeypatch.setenv("RAGVQA_QUERY_MAX_PIXELS", "official")
    assert Settings().query_max_pixels == "official"
    for bad in ("100", "lots"):
        monkeypatch.setenv("RAGVQA_QUERY_MAX_PIXELS", bad)
        with pytest.raises(ValueError, match="query_max_pixels"):
            Settings()


def test_query_time_budget_caps_images_and_video() -> None:
    capped = query_time_budget(OFFICIAL, choose_query_budget("auto", "cpu"))
    assert capped.max_pixels == 256 * 1024 and capped.min_pixels == OFFICIAL.min_pixels
    assert capped.video_frame_max_pixels == 256 * 1024 and capped.video_total_pixels == 4 * 256 * 1024
    assert query_time_budget(OFFICIAL, choose_query_budget("auto", "cuda")) == OFFICIAL
    # a cap above the official budget never raises it
    assert query_time_budget(OFFICIAL, choose_query_budget(10**8, "cpu")).max_pixels == OFFICIAL.max_pixels


@pytest.mark.parametrize("size", [(1280, 960), (4000, 300), (333, 1999)])
def test_fit_is_the_official_resize_at_the_smaller_budget(size: tuple[int, int]) -> None:
    w, h = size
    img = noise_image(1, w, h)
    capped = query_time_budget(OFFICIAL, choose_query_budget("auto", "cpu"))
    out = fit_image(img, capped)
    eh, ew = smart_resize(h, w, factor=32, min_pixels=capped.min_pixels, max_pixels=capped.max_pixels)
    assert out.size == (ew, eh) and ew * eh <= 256 * 1024 and ew % 32 == 0 and eh % 32 == 0
    # the official budget then leaves the fitted image as it is (no second resize by the models)
    assert smart_resize(eh, ew, factor=32, min_pixels=OFFICIAL.min_pixels, max_pixels=OFFICIAL.max_pixels) == (eh, ew)
    assert fit_image(out, capped) is out


def test_small_query_image_is_untouched() -> None:
    capped = query_time_budget(OFFICIAL, choose_query_budget("auto", "cpu"))
    for w, h in ((320, 256), (192, 144), (512, 512)):  # within the cap (on the 32-px grid or not): the models snap it
        img = noise_image(2, w, h)
        assert fit_image(img, capped) is img


@pytest.fixture(scope="module")
def kb(tmp_path_factory, embedder):
    from rag.store import open_store

    root = tmp_path_factory.mktemp("kb-budget")
    store = open_store(embedder_id="tiny", dim=embedder.dim, data_dir=root)
    populate_store(store, embedder, root / "media")
    yield store, root
    store.close()


def _pipeline(kb, embedder, reranker, generator, **settings):
    from rag.pipeline import RagPipeline

    store, root = kb
    return RagPipeline.from_components(embedder=embedder, reranker=reranker, generator=generator, store=store,
                                       settings=Settings(data_dir=root, max_new_tokens=4, **settings))


def test_pipeline_fits_the_query_photo_on_cpu(kb, embedder, reranker, generator, tmp_path: Path) -> None:
    """On CPU (the tiny models run there) the pipeline resizes the query photo once to the cap, records it in the
    trace, and the query vector equals the official path with a budget of that size (the embedder's own resize)."""
    from rag.models.embedder import Embedder
    from rag.pipeline.retrieve import RETRIEVAL_INSTRUCTION
    from rag.pipeline.types import Query, Trace

    photo = noise_image(3, 1280, 960)
    path = tmp_path / "q.png"
    photo.save(path)
    pipe = _pipeline(kb, embedder, reranker, generator)
    assert pipe.fit_stage is not None and pipe.fit_stage.choice.max_pixels == 256 * 1024
    for src in (photo, path):  # a decoded upload or a path (CLI)
        trace = Trace()
        r = pipe.retrieval(Query(text="what is wrong?", images=[src]), trace)
        assert r.kept
        fit = [s for s in trace.stages if s.stage == "fit"]
        eh, ew = smart_resize(960, 1280, factor=32, min_pixels=OFFICIAL.min_pixels, max_pixels=256 * 1024)
        assert len(fit) == 1 and fit[0].detail["resized"] == [f"1280x960→{ew}x{eh}"]
    fitted = pipe.fit(Query(text="what is wrong?", images=[photo]))
    assert fitted.images[0].size == (ew, eh) and photo.size == (1280, 960)  # the caller's image is not changed
    got = pipe.retrieve_stage.embed(fitted)
    capped = Embedder(embedder.model, embedder.processor, budget=OFFICIAL.model_copy(update={"max_pixels": 256 * 1024}))
    want = capped.embed([{"text": "what is wrong?", "image": [photo]}], instruction=RETRIEVAL_INSTRUCTION)[0]
    assert float(np.dot(got, want)) >= 1 - 1e-5
    full = embedder.embed([{"text": "what is wrong?", "image": [photo]}], instruction=RETRIEVAL_INSTRUCTION)[0]
    assert float(np.dot(got, full)) < 1 - 1e-4  # it is not the official-budget vector: the lever is on

    # the query embedder shares the weights, capped for the query's photo and video; the KB embedder is untouched
    q_emb = pipe.retrieve_stage.embedder
    assert q_emb.model is embedder.model and embedder.budget == OFFICIAL  # type: ignore[attr-defined]
    assert q_emb.budget.max_pixels == 256 * 1024 and q_emb.budget.video_total_pixels == 4 * 256 * 1024  # type: ignore[attr-defined]
    events = list(pipe.stream(Query(text="what is wrong?", images=[photo])))
    done = events[-1].answer
    assert [s.stage for s in done.trace.stages].count("fit") == 1


def test_pipeline_official_budget_has_no_fit(kb, embedder, reranker, generator) -> None:
    from rag.pipeline.types import Query, Trace

    pipe = _pipeline(kb, embedder, reranker, generator, query_max_pixels="official")
    assert pipe.fit_stage is None
    trace = Trace()
    pipe.retrieval(Query(text="x", images=[noise_image(4, 1280, 960)]), trace)
    assert not [s for s in trace.stages if s.stage == "fit"]


def test_bad_query_path_is_a_clear_error(kb, embedder, reranker, generator, tmp_path: Path) -> None:
    from rag.models.query_image import QueryImageError
    from rag.pipeline.types import Query

    pipe = _pipeline(kb, embedder, reranker, generator)
    with pytest.raises(QueryImageError, match="no longer available"):
        pipe.retrieval(Query(text="x", images=[tmp_path / "gone.png"]))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(QueryImageError, match="bad.png"):
        pipe.retrieval(Query(text="x", images=[bad]))


def test_loaded_roles_get_the_query_time_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``load_models``: the reranker and generator (query time only) load capped on CPU; the embedder, which also
    builds the knowledge base, keeps the official budget."""
    from rag.models.factory import load_models

    m = load_models(Settings(data_dir=tmp_path), "tiny")
    assert m.reranker is not None and m.generator is not None and m.embedder is not None
    assert m.reranker.budget.max_pixels == m.generator.budget.max_pixels == 256 * 1024  # type: ignore[attr-defined]
    assert m.embedder.budget.max_pixels == OFFICIAL.max_pixels  # type: ignore[attr-defined]
    m2 = load_models(Settings(data_dir=tmp_path, query_max_pixels="official"), "tiny", need=("reranker",))
    assert m2.reranker.budget.max_pixels == OFFICIAL.max_pixels  # type: ignore[union-attr]


def test_doctor_reports_the_query_budget(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ui.cli import app

    monkeypatch.setenv("RAGVQA_DEVICE", "cpu")
    monkeypatch.setenv("RAGVQA_DATA_DIR", str(tmp_path))
    res = CliRunner().invoke(app, ["doctor", "--json", "--bench", str(tmp_path / "none.json")])
    assert res.exit_code == 0, res.output
    q = json.loads(res.output)["budgets"]["query_time"]
    assert q["max_pixels"] == 256 * 1024 and "CPU" in q["reason"]
    monkeypatch.setenv("RAGVQA_QUERY_MAX_PIXELS", "official")
    res = CliRunner().invoke(app, ["doctor"])
    assert res.exit_code == 0 and "query-time images: official budget" in res.output

