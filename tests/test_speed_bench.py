"""`ragvqa bench query` and the int8 lever on the tiny checkpoint: the stages really run and report what they say."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


def test_bench_query_smoke(tiny_model_dir: Path, tmp_path: Path) -> None:
    from eval.bench_query import QueryBenchConfig, render_markdown, run_query_bench, write_report

    cfg = QueryBenchConfig(checkpoint=tiny_model_dir, dtype="float32", docs=3, new_tokens=2, case_images=1,
                           photo=(640, 480), query_max_pixels=64 * 32 * 32, compare=True)
    res = run_query_bench(cfg)
    st = res["stages"]
    assert set(st) == {"embed", "rerank", "generate"}
    # 640×480 has 20×15 = 300 tokens at the official budget; a 64-token budget keeps it at most 64
    assert 0 < st["embed"]["query_vision_tokens"] <= 64
    assert len(st["rerank"]["scores"]) == 3 and all(0.0 < s < 1.0 for s in st["rerank"]["scores"])
    g = st["generate"]
    assert g["new_tokens"] == 3 and 0 < g["ttft_s"] <= g["model_s"] and g["decode_s_per_token"] > 0
    for s in st.values():
        assert s["model_s"] > 0 and s["peak_rss_gb"] > 0
    q = res["quality"]
    assert -1.0 <= q["embed_cosine"] <= 1.0 + 1e-6 and q["embed_cosine"] < 1.0 - 1e-6  # the budget changed the input
    assert -1.0 <= q["rerank_kendall_tau"] <= 1.0 and q["random_weights"] is True
    js, md = write_report(res, tmp_path)
    assert json.loads(js.read_text())["stages"]["rerank"]["documents"] == 3
    assert "| rerank |" in md.read_text() and "TTFT" in render_markdown(res)


def test_bench_query_same_settings_compare_exactly(tiny_model_dir: Path) -> None:
    """With no lever on, the float32 comparison run is the same computation: cosine 1, identical order."""
    from eval.bench_query import QueryBenchConfig, run_query_bench

    res = run_query_bench(QueryBenchConfig(checkpoint=tiny_model_dir, dtype="float32", docs=3, photo=(320, 240),
                                           query_max_pixels="official", stages=("embed", "rerank"), compare=True))
    assert res["quality"]["embed_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert res["quality"]["rerank_kendall_tau"] == 1.0 and res["quality"]["rerank_max_abs_diff"] < 1e-5


def test_bench_query_rejects_bad_input(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from eval.bench_query import QueryBenchConfig, run_query_bench

    with pytest.raises(ValidationError):
        QueryBenchConfig(docs=0)
    with pytest.raises(FileNotFoundError, match="config.json"):
        run_query_bench(QueryBenchConfig(checkpoint=tmp_path))
    with pytest.raises(ValueError, match="unknown stage"):
        run_query_bench(QueryBenchConfig(checkpoint=tmp_path, stages=("embed", "nope")))


def test_int8_quantization_keeps_embeddings_close(tiny_model_dir: Path) -> None:
    """Every linear layer becomes an int8 dynamic one and the embedding stays close to float32 (cosine ≥ 0.99)."""
    import torch

    from rag.models.embedder import Embedder
    from rag.models.quant import QuantizationError, quantize_wrapper

    ref = Embedder.from_pretrained(tiny_model_dir, dtype="float32", device="cpu")
    q = Embedder.from_pretrained(tiny_model_dir, dtype="float32", device="cpu")
    n_linear = sum(1 for m in q.model.modules() if type(m) is torch.nn.Linear)
    assert quantize_wrapper(q) == n_linear > 0
    assert not any(type(m) is torch.nn.Linear for m in q.model.modules())
    items = [{"text": "fuser error E13 on the display"}, {"text": "pump seal leak and pressure drop"}]
    a, b = ref.embed(items), q.embed(items)
    cos = (a * b).sum(axis=1)
    assert np.all(cos >= 0.99), cos
    bf16 = Embedder.from_pretrained(tiny_model_dir, dtype="bfloat16", device="cpu")
    with pytest.raises(QuantizationError, match="float32"):
        quantize_wrapper(bf16)


@pytest.mark.slow
def test_gpu_run_script_on_cpu_with_tiny_checkpoint(tmp_path: Path) -> None:
    """The GPU run's single command, on CPU with a tiny checkpoint and tiny counts: every step runs, nothing fails,
    and the JSON and markdown hold the query stages, the throughput rows and the time to first token."""
    from eval import gpu_run

    out = tmp_path / "out"
    rc = gpu_run.main(["--out", str(out), "--device", "cpu", "--size", "tiny", "--work-dir", str(tmp_path),
                       "--docs", "2", "--new-tokens", "2", "--batch-sizes", "1", "--models-docs", "2",
                       "--repeats", "1"])
    res = json.loads((out / "gpu-run.json").read_text())
    assert rc == 0 and res["errors"] == [] and res["skipped"] == []
    q = res["query"]["sdpa"]["stages"]
    assert set(q) == {"embed", "rerank", "generate"} and q["generate"]["ttft_s"] > 0
    m = res["models"]["1"]
    assert m["embed"]["max_abs_diff"] < 1e-4 and m["rerank"]["documents"] == 2
    md = (out / "gpu-run.md").read_text()
    assert "time to first token" in md and "| 1 |" in md


def test_gpu_run_refuses_cuda_without_gpu(tmp_path: Path) -> None:
    import torch

    from eval import gpu_run

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit):
        gpu_run.parse_args(["--out", str(tmp_path)])
