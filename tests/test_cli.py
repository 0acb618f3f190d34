"""``ragvqa`` commands in-process (typer's runner): ``ask`` with the tiny models on a tmp KB, mounts, bench smoke."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import case_picture

runner = CliRunner()

CASES = [("prn-e13", "Fuser error E13 on laser printer", "printers", (200, 40, 40)),
         ("hvac-f3", "Rooftop unit fault F3: high pressure", "hvac", (40, 40, 200)),
         ("pump-seal", "Pump seal leak, pressure drops to 0 bar", "pumps", (200, 200, 40))]


@pytest.fixture(scope="module")
def kb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small KB written by the real ingestion with the same tiny checkpoint ``--models tiny`` uses."""
    from knowledge_base.admin import KnowledgeBase
    from knowledge_base.schema import CaseInput
    from rag.config import Settings
    from rag.models.factory import load_models

    root = tmp_path_factory.mktemp("cli")
    settings = Settings(data_dir=root / "data", device="cpu", dtype="float32")
    models = load_models(settings, "tiny", need=("embedder",))
    with KnowledgeBase.open(settings, models.embedder) as kb:
        for i, (cid, title, line, colour) in enumerate(CASES):
            img = root / f"{cid}.png"
            case_picture(i, colour).save(img)
            kb.add_case(CaseInput(id=cid, title=title, product_line=line, symptom=title + ".",
                                  solution=["Check it.", "Fix it."]), media=[str(img)])
    return root


def run(*args: str):
    from ui.cli import app

    return runner.invoke(app, list(args), catch_exceptions=False)


def test_ask_prints_answer_and_citations(kb_dir: Path) -> None:
    res = run("ask", "--models", "tiny", "--data-dir", str(kb_dir / "data"), "--no-sample", "--max-new-tokens", "8",
              "--image", str(kb_dir / "prn-e13.png"), "What is wrong and how do I fix it?")
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "tiny random models" in out
    assert "Citations:" in out or "Possibly related cases" in out
    assert any(f"[{cid}]" in out for cid, *_ in CASES)


def test_ask_json_parses(kb_dir: Path) -> None:
    res = run("ask", "--models", "tiny", "--data-dir", str(kb_dir / "data"), "--no-sample", "--max-new-tokens", "8",
              "--json", "--product-line", "pumps", "--image", str(kb_dir / "pump-seal.png"), "leak under the pump")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert set(data) >= {"answer", "abstained", "cited", "cases", "timings_ms"}
    assert [c["case_id"] for c in data["cases"]] == ["pump-seal"]
    assert {"search", "fetch"} <= {t["stage"] for t in data["timings_ms"]}


def test_ask_pdf_page_out_of_range_is_a_clear_error(kb_dir: Path, tmp_path: Path) -> None:
    from PIL import Image

    pdf = tmp_path / "manual.pdf"
    Image.new("RGB", (200, 280), "white").save(pdf, "PDF")
    res = run("ask", "--models", "tiny", "--data-dir", str(kb_dir / "data"), "--no-sample", "--pdf", str(pdf),
              "--page", "2", "which part?")
    assert res.exit_code == 2
    assert "has 1 page; page 2 does not exist" in res.output


def test_mounted_groups_are_lazy_and_guarded() -> None:
    import subprocess
    import sys

    probe = "import sys, ui.cli; print(sorted(m for m in ('gradio', 'torch', 'knowledge_base.cli', 'eval.cli') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    res = run("--help")
    assert res.exit_code == 0 and "serve" in res.stdout and "kb" in res.stdout and "bench" in res.stdout
    res = run("kb", "--help")
    assert res.exit_code == 0 and "import" in res.stdout
    res = run("eval", "--help")
    assert res.exit_code == 0 or "not installed" in res.output
    res = run("bench", "ingest", "--help")
    assert res.exit_code in (0, 2) and "Traceback" not in res.output


def test_bench_pipeline_smoke(tmp_path: Path) -> None:
    res = run("bench", "pipeline", "--size", "1000", "--queries", "10", "--tokens", "20",
              "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "out"))
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "out" / "pipeline_bench.json").read_text())
    run0 = data["runs"][0]
    assert run0["n_cases"] == 1000 and run0["points"] == 2000
    for scenario in run0["scenarios"].values():
        assert scenario["total"]["p95"] > 0 and scenario["search"]["p50"] > 0
    assert "| 1,000 |" in (tmp_path / "out" / "pipeline_bench.md").read_text()
