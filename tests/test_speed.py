"""Hardware-aware dtype choice and low-peak checkpoint loading (issue 16).

The decision is a pure function of stated hardware facts, so its table is tested with facts written here (no mocking
of torch or the model); loading is tested on the real tiny checkpoint against transformers' own loader.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rag.models.loading import HardwareFacts, choose_dtype, plan_dtypes

GB = 1024**3


def cpu(**kw) -> HardwareFacts:
    base = dict(device="cpu", cpu_capability="AVX2", cores=2, mem_available_bytes=22 * GB, mem_total_bytes=24 * GB)
    base.update(kw)
    return HardwareFacts(**base)


@pytest.mark.parametrize(
    ("facts", "fp32_bytes", "expected", "reason_has"),
    [
        (HardwareFacts(device="cuda", cuda_bf16=True, gpu_name="H200"), 8 * GB, "bfloat16", "CUDA"),
        (HardwareFacts(device="cuda", cuda_bf16=False, gpu_name="T4"), 8 * GB, "float16", "without bf16"),
        (cpu(cpu_capability="AVX512", cpu_amx=True), 8 * GB, "bfloat16", "AMX"),
        (cpu(cpu_capability="AVX512", cpu_avx512_bf16=True), 8 * GB, "bfloat16", "AVX512-BF16"),
        # AVX-512 without its BF16 extension is still emulated bf16
        (cpu(cpu_capability="AVX512"), 8 * GB, "float32", "fit"),
        (cpu(), 8 * GB, "float32", "fit"),
        (cpu(mem_available_bytes=10 * GB), 8 * GB, "bfloat16", "do not fit"),
        (cpu(), None, "float32", "no native bf16"),
        (cpu(mem_available_bytes=None), 30 * GB, "float32", "no native bf16"),
    ],
)
def test_dtype_decision_table(facts: HardwareFacts, fp32_bytes: int | None, expected: str, reason_has: str) -> None:
    choice = choose_dtype(facts, fp32_bytes)
    assert choice.dtype == expected
    assert reason_has in choice.reason


def test_three_2b_roles_on_a_24gb_cpu_without_bf16_fall_back_per_role() -> None:
    """8.5 GB per 2B role in fp32: all three (25.5 GB) do not fit in 22 GB, so the first role keeps fp32, the rest bf16."""
    size = 8_510_128_128
    plan = plan_dtypes(cpu(), {"embedder": size, "reranker": size, "generator": size})
    assert [plan[r].dtype for r in ("embedder", "reranker", "generator")] == ["float32", "bfloat16", "bfloat16"]
    assert "do not fit" in plan["generator"].reason
    # with 64 GB all three fit in fp32; with native bf16 all are bf16 whatever the memory
    big = plan_dtypes(cpu(mem_available_bytes=64 * GB), {"embedder": size, "reranker": size, "generator": size})
    assert {c.dtype for c in big.values()} == {"float32"}
    native = plan_dtypes(cpu(cpu_avx512_bf16=True, mem_available_bytes=64 * GB), {"embedder": size})
    assert native["embedder"].dtype == "bfloat16"


def test_auto_dtype_follows_this_machine() -> None:
    """`auto` resolves to what torch's own checks say about this CPU (the bf16 default is no longer unconditional)."""
    from rag.models.loading import detect_hardware, resolve_dtype

    facts = detect_hardware("cpu")
    native = bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    assert facts.native_bf16_cpu == native
    assert resolve_dtype("auto", torch.device("cpu")) == (torch.bfloat16 if native else torch.float32)


def test_checkpoint_size_from_headers(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForImageTextToText

    from rag.models.loading import checkpoint_fp32_bytes

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32)
    n = sum(t.numel() for t in model.state_dict().values())  # tiny is untied: every tensor is saved once
    assert checkpoint_fp32_bytes(tiny_model_dir) == 4 * n


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("auto_cls", ["AutoModelForImageTextToText", "AutoModel"])
def test_low_peak_loading_gives_transformers_weights(tiny_model_dir: Path, dtype: torch.dtype, auto_cls: str) -> None:
    """The tensor-by-tensor loader (chunked casts forced with a tiny chunk) gives exactly the weights transformers'
    own loader gives (a float32→bf16 cast is deterministic round-to-nearest-even), for the generator/reranker class
    and the embedder's bare model (checkpoint keys renamed the same way), and keeps the generation config."""
    import transformers

    from rag.models import loading

    cls = getattr(transformers, auto_cls)
    ref = cls.from_pretrained(tiny_model_dir, dtype=dtype)
    sd = loading.read_state_dict(tiny_model_dir, dtype, chunk_bytes=4096)  # every matrix > 1k floats is chunked
    assert sd is not None and all(t.dtype == dtype for t in sd.values())
    old = loading.CHUNK_BYTES
    loading.read_state_dict.__defaults__ = (4096,)
    try:
        ours = loading.load_model(cls, tiny_model_dir, dtype, torch.device("cpu"), "sdpa")
    finally:
        loading.read_state_dict.__defaults__ = (old,)
    a, b = ref.state_dict(), ours.state_dict()
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
        assert b[k].dtype == dtype, k
        assert torch.equal(a[k], b[k]), k
    if auto_cls == "AutoModelForImageTextToText":
        assert ours.generation_config.eos_token_id == ref.generation_config.eos_token_id


def test_factory_logs_choice_and_reason(tiny_model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    from rag.config import Settings
    from rag.models.factory import plan_role_dtypes

    s = Settings(embedder_model=str(tiny_model_dir), reranker_model=str(tiny_model_dir))
    plan = plan_role_dtypes(s, {"embedder": str(tiny_model_dir), "reranker": str(tiny_model_dir)})
    assert set(plan) == {"embedder", "reranker"} and all(c.reason for c in plan.values())
    fixed = plan_role_dtypes(s.model_copy(update={"dtype": "float32"}), {"embedder": str(tiny_model_dir)})
    assert fixed["embedder"].dtype == "float32" and "RAGVQA_DTYPE" in fixed["embedder"].reason


# -- adaptive rerank depth -------------------------------------------------------------------------------------------
def test_adaptive_depth_rule() -> None:
    from rag.pipeline.rerank import Rerank

    scores = [0.90, 0.88, 0.80, 0.79, 0.60, 0.50]
    assert Rerank.adaptive_depth(scores, None, 2) == 6  # off: all
    assert Rerank.adaptive_depth(scores, 0.05, 1) == 2  # 0.90, 0.88 within 0.05
    assert Rerank.adaptive_depth(scores, 0.05, 3) == 3  # never below the minimum
    assert Rerank.adaptive_depth(scores, 0.15, 1) == 4
    assert Rerank.adaptive_depth(scores, 1.0, 1) == 6
    assert Rerank.adaptive_depth(scores[:2], 0.0, 5) == 2  # never above what was retrieved
    assert Rerank.adaptive_depth([], 0.1, 3) == 0


def test_rerank_stage_scores_only_the_adaptive_depth(reranker, tmp_path: Path) -> None:
    """With a margin, only the decisive head is sent to the real reranker; the trace says how many."""
    from rag.pipeline.rerank import Rerank
    from rag.pipeline.types import CaseCandidate, Query, Trace

    seen: list[int] = []

    class Counting:
        """The real tiny reranker, counting the documents it is given."""

        def score(self, query, documents, **kw):
            seen.append(len(documents))
            return reranker.score(query, documents, **kw)

    cands = [CaseCandidate(case_id=f"c{i}", retrieval_score=s, document=f"case {i} fuser error E1{i}")
             for i, s in enumerate([0.9, 0.89, 0.7, 0.6, 0.5])]
    trace = Trace()
    result = Rerank(Counting(), top_n=1, adaptive_margin=0.05).run(Query(text="fuser error"), cands, trace)
    out = result.kept
    scores = [c.rerank_score for c in result.scored]  # only the head was scored, best first
    assert len(scores) == 2 and None not in scores and scores == sorted(scores, reverse=True)  # type: ignore[type-var]
    assert seen == [2] and len(out) == 1 and out[0].case_id in ("c0", "c1") and out[0].rerank_score is not None
    assert trace.stages[-1].detail["depth"] == 2 and trace.stages[-1].detail["candidates"] == 5
    Rerank(Counting(), top_n=1).run(Query(text="fuser error"), cands, Trace())
    assert seen[-1] == 5


def test_rerank_depth_study_matches_hand_computed_mrr(tmp_path: Path) -> None:
    """Two judged queries; hand-computed MRR@10: reranking all puts both relevant cases first (MRR 1.0). With margin
    0.05 and min depth 1, q1's head is {a, b} (relevant b reranked first: RR 1) and q2's head is {x} only (relevant z
    stays at retrieval rank 3: RR 1/3), so MRR@10 = (1 + 1/3) / 2 and 3 of 6 pairs are reranked."""
    from eval.bench_query import rerank_depth_study

    recs = [
        {"id": "q1", "relevant": {"b": 1}, "retrieval": [["a", 0.90], ["b", 0.88], ["c", 0.50]],
         "rerank": [["b", 0.9], ["a", 0.2], ["c", 0.1]]},
        {"id": "q2", "relevant": {"z": 1}, "retrieval": [["x", 0.90], ["y", 0.70], ["z", 0.60]],
         "rerank": [["z", 0.95], ["x", 0.3], ["y", 0.2]]},
    ]
    (tmp_path / "results.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    (tmp_path / "config.json").write_text(json.dumps({"config": {"top_n": 1, "models": "tiny"}}))
    res = rerank_depth_study(tmp_path, [0.05, 1.0])
    rows = {r["margin"]: r for r in res["rows"]}
    assert rows[None]["mrr@10"] == pytest.approx(1.0) and rows[None]["rerank_share"] == 1.0
    assert rows[0.05]["mrr@10"] == pytest.approx((1 + 1 / 3) / 2) and rows[0.05]["rerank_share"] == pytest.approx(0.5)
    assert rows[1.0]["mrr@10"] == pytest.approx(1.0)


def test_factory_applies_cpu_int8_only_to_float32_cpu_roles(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rag.config import Settings
    from rag.models.factory import load_models

    for role in ("EMBEDDER", "RERANKER", "GENERATOR"):
        monkeypatch.delenv(f"RAGVQA_{role}_BACKEND", raising=False)
    base = dict(embedder_model=str(tiny_model_dir), device="cpu", cpu_quantization="int8")
    q = load_models(Settings(dtype="float32", **base), need=("embedder",)).embedder
    assert not any(type(m) is torch.nn.Linear for m in q.model.modules())
    b = load_models(Settings(dtype="bfloat16", **base), need=("embedder",)).embedder
    assert any(type(m) is torch.nn.Linear for m in b.model.modules())  # bf16 is left alone (int8 needs fp32)


@pytest.mark.slow
def test_low_peak_loading_ties_the_lm_head(tmp_path: Path) -> None:
    """Tied checkpoints (the 2B shape) save no lm_head: the reranker's yes/no vector must come from the tied
    embedding, as with transformers' own loader, not from a random init."""
    from transformers import AutoModelForImageTextToText

    from rag.models import loading
    from rag.models.tiny import make_checkpoint

    d = make_checkpoint(tmp_path / "bench", size="bench")
    ref = AutoModelForImageTextToText.from_pretrained(d, dtype=torch.bfloat16)
    ours = loading.load_model(AutoModelForImageTextToText, d, torch.bfloat16, torch.device("cpu"), "sdpa")
    assert ours.lm_head.weight.data_ptr() == ours.model.language_model.embed_tokens.weight.data_ptr()
    a, b = ref.state_dict(), ours.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
