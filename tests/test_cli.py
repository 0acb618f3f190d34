"""``ragvqa`` commands in-process (typer's runner): ``ask`` with the tiny models on a tmp KB, mounts, bench smoke."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import case_picture
from typer.testing import CliRunner

runner = CliRunner()

CASES = [("prn-e13", "Fuser error E13 on laser printer", "printers", (200, 40, 40)),
         ("hvac-f3", "Rooftop unit fault F3: high pressure", "hvac", (40, 40, 200)),
         ("pump-seal", "Pump seal leak, pressure drops to 0 bar", "pumps", (200, 200, 40))]


@pytest.fixture(scope="module")
def kb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small KB written by the real ingestion with the same tiny checkpoint ``--models tiny`` uses."""
    from knowledge_base.kb import KnowledgeBase
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
    res = run("eval", "--help")  # every mounted group ships with ragvqa: it must load, never be "not installed"
    assert res.exit_code == 0 and "run" in res.stdout, res.output
    res = run("bench", "ingest", "--help")
    assert res.exit_code == 0 and "Traceback" not in res.output and "not installed" not in res.output, res.output


#: Commands whose module is imported on first use, and that module.
LAZY = [(["kb", "--help"], "knowledge_base", "cli"), (["eval", "--help"], "eval", "cli"),
        (["bench", "ingest", "--help"], "eval", "bench_ingest"), (["bench", "store", "--size", "10"], "eval", "bench_store")]


def _plant(root: Path, package: str, module: str, body: str) -> Path:
    """A copy of ``package`` on PYTHONPATH whose ``module`` is replaced by ``body``; every other submodule (and the
    package's own ``__init__``) still comes from the real package."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations
    real = list(spec.submodule_search_locations)[0]
    pkg = root / package
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        f"__path__.append({real!r})\n"
        f"exec(compile(open({real + '/__init__.py'!r}).read(), {real + '/__init__.py'!r}, 'exec'))\n")
    (pkg / f"{module}.py").write_text(body)
    return root


@pytest.mark.parametrize("args, package, module", LAZY, ids=[" ".join(a[:2]) for a, *_ in LAZY])
@pytest.mark.parametrize("body, error", [
    ("import ragvqa_no_such_dependency\n", "ModuleNotFoundError: No module named 'ragvqa_no_such_dependency'"),
    ("from json import no_such_name\n", "ImportError: cannot import name 'no_such_name' from 'json'"),
], ids=["missing-dependency", "bad-import"])
def test_broken_lazy_import_fails_loudly(tmp_path: Path, args: list[str], package: str, module: str, body: str,
                                         error: str) -> None:
    """A mounted module whose import raises must fail the command with the real error (traceback, exit 1, the
    module named), not pass for a component that is "not installed" (exit 2), which let a broken build pass CI."""
    import os
    import subprocess
    import sys

    planted = _plant(tmp_path / "planted", package, module, body)
    repo = str(Path(__file__).resolve().parents[1])
    # cwd outside the repo: ``python -m`` puts the cwd first on sys.path, ahead of the planted package
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(planted), repo, *filter(None, [os.environ.get("PYTHONPATH")])]),
           "COLUMNS": "200", "TERM": "dumb"}
    res = subprocess.run([sys.executable, "-m", "ui.cli", *args], capture_output=True, text=True, env=env, timeout=120,
                         cwd=tmp_path)
    err = " ".join(res.stderr.split())
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    assert f"cannot load {package}.{module}" in err and error in err, res.stderr
    assert "Traceback" in res.stderr, res.stderr
    assert "not installed" not in res.stdout + res.stderr


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
