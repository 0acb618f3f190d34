"""`ragvqa doctor`: hardware, the dtype per role and why, budgets, a measured query time, the CPU-only warning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner


@pytest.fixture()
def env(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> Path:
    for role in ("EMBEDDER", "RERANKER", "GENERATOR"):
        monkeypatch.setenv(f"RAGVQA_{role}_MODEL", str(tiny_model_dir))
        monkeypatch.delenv(f"RAGVQA_{role}_BACKEND", raising=False)
    monkeypatch.setenv("RAGVQA_DEVICE", "cpu")
    monkeypatch.delenv("RAGVQA_DTYPE", raising=False)
    return tiny_model_dir


def _doctor(*args: str) -> tuple[int, str]:
    from ui.cli import app

    r = CliRunner().invoke(app, ["doctor", *args])
    return r.exit_code, r.output


def test_doctor_reports_hardware_dtype_and_warns_without_measurement(env: Path, tmp_path: Path) -> None:
    import torch

    code, out = _doctor("--bench", str(tmp_path / "none.json"))
    assert code == 0, out
    assert f"CPU: {torch.backends.cpu.get_cpu_capability()}" in out
    native = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    assert ("native bf16" in out and "no native" not in out) if native else "no native bf16" in out
    for role in ("embedder", "reranker", "generator"):
        assert f"{role}: {'bfloat16' if native else 'float32'} (" in out
    assert "1843200 pixels (1800 vision tokens max)" in out
    assert "not measured" in out and "warning:" in out and "GPU" in out and "BACKEND" in out


def test_doctor_reads_a_bench_result_and_warns_only_when_slow(env: Path, tmp_path: Path) -> None:
    bench = tmp_path / "bench-query.json"
    bench.write_text(json.dumps({"created_at": "2026-11-29T20:00:00+00:00", "model_s_total": 95.5,
                                 "stages": {"embed": {"model_s": 20.0}, "rerank": {"model_s": 40.5},
                                            "generate": {"model_s": 35.0}}}))
    code, out = _doctor("--bench", str(bench))
    assert code == 0 and "95.5 s (embed 20.0 s, rerank 40.5 s, generate 35.0 s)" in out
    assert "one query took 96 s" in out and "minutes" in out
    # 4 s per reranked document measured; the app reranks all 20 retrieved cases: ≈80 s, slow
    bench.write_text(json.dumps({"created_at": "x", "model_s_total": 10.0,
                                 "stages": {"embed": {"model_s": 2.0}, "rerank": {"model_s": 8.0, "documents": 2}}}))
    code, out = _doctor("--bench", str(bench))
    assert code == 0 and "20 cases × 4.0 s = 80 s" in out and "reranking 20 cases takes ≈80 s" in out
    bench.write_text(json.dumps({"created_at": "x", "model_s_total": 4.0, "stages": {"embed": {"model_s": 4.0}}}))
    code, out = _doctor("--bench", str(bench), "--json")
    rep = json.loads(out)
    assert rep["measured"]["model_s_total"] == 4.0 and rep["warnings"] == []
    bench.write_text("{not json")
    code, out = _doctor("--bench", str(bench))
    assert code == 0 and "unreadable bench result" in out


def test_doctor_counts_model_servers_as_not_local(env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for role in ("EMBEDDER", "RERANKER"):
        monkeypatch.setenv(f"RAGVQA_{role}_BACKEND", "vllm")
        monkeypatch.setenv(f"RAGVQA_{role}_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("RAGVQA_GENERATOR_BACKEND", "openai")
    monkeypatch.setenv("RAGVQA_GENERATOR_URL", "http://127.0.0.1:9")
    code, out = _doctor("--bench", str(tmp_path / "none.json"), "--json")
    rep = json.loads(out)
    assert code == 0 and rep["dtypes"] == {} and rep["warnings"] == []
    assert rep["remote_roles"] == ["embedder", "reranker", "generator"]
