"""``ragvqa bench query``: the model time of ONE real query at a real model shape, stage by stage, with peak RSS.

Stages (each on its own role, loaded just before and freed after, so a 2B-shape run fits next to other work):

* ``embed``    — the query: a 1280×960 photo + a question, through ``Embedder.embed`` (the Retrieve stage's forward);
* ``rerank``   — that query against ``docs`` case documents (case text + a 640×480 case photo), ``Reranker.score``;
* ``generate`` — photo + question + the cases' texts and up to ``case_images`` of their photos through the generator:
  prefill + first token (time to first token) and ``new_tokens`` greedy tokens (per-token decode time).

Each stage reports load seconds, model seconds, the peak RSS of the process during the stage (``VmHWM`` reset through
``/proc/self/clear_refs`` before it) and the RSS after. The default checkpoint is a random-weight full-2B-shape one
built once into a cache folder (``rag.models.tiny.make_checkpoint``). Levers, each a flag: ``--query-max-pixels``
(the query-time image cap: ``auto`` as the app chooses it, ``official``, or pixels), ``--quantize int8`` (dynamic int8 linear layers, CPU float32 only).
With ``--compare`` (a second run of the same stages in float32 at the full budget) the quality cost of the levers is
reported: cosine of the query embedding, rerank order agreement (Kendall tau, same top-1). On random weights these
are the mechanics of the cost, not a statement about real-weight retrieval quality.

Run: ``ragvqa bench query [--checkpoint DIR] [--docs 2] [--new-tokens 8]`` (JSON + markdown into ``bench-results/``).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, field_validator

from eval.bench_report import write_bench_report
from rag.models.budgets import QueryBudget

logger = logging.getLogger(__name__)

STAGES = ("embed", "rerank", "generate")
QUESTION = "The display shows E13 and the unit stopped. What is wrong and how do I fix it?"
DEFAULT_CACHE = Path(os.environ.get("RAGVQA_BENCH_CACHE", Path.home() / ".cache" / "ragvqa" / "bench-checkpoints"))


class QueryBenchConfig(BaseModel):
    """What one run measures."""

    checkpoint: Path | None = Field(None, description="checkpoint dir; None = a random one of `size` in cache_dir")
    size: Literal["tiny", "bench", "full-2b"] = "full-2b"
    cache_dir: Path = DEFAULT_CACHE
    device: str = "cpu"
    dtype: str = "auto"
    attn_implementation: str = "auto"
    docs: int = Field(2, ge=1, description="case documents reranked (top-k)")
    new_tokens: int = Field(8, ge=1, description="answer tokens generated after the first")
    case_images: int = Field(2, ge=0, description="case photos in the generator prompt")
    photo: tuple[int, int] = (1280, 960)
    query_max_pixels: int | Literal["auto", "official"] = Field(
        "auto", description="query-time image cap as the app sets it (RAGVQA_QUERY_MAX_PIXELS): auto, official or pixels")

    @field_validator("query_max_pixels")
    @classmethod
    def _check_pixels(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 4 * 1024:
            raise ValueError(f"query_max_pixels must be at least 4096 (4 vision tokens), or auto / official; got {v}")
        return v
    quantize: Literal["none", "int8"] = "none"
    stages: tuple[str, ...] = STAGES
    compare: bool = Field(False, description="also run float32 at the full budget and report the levers' quality cost")
    warmup: bool = Field(False, description="run each stage's forward once untimed first (GPUs: lazy kernel set-up)")


# -- memory ---------------------------------------------------------------------------------------------------------
def _status_gb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return None


def _cuda_ready() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_initialized()


def reset_peak() -> bool:
    """Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM; and the CUDA peak); False where
    the RSS peak cannot be reset."""
    if _cuda_ready():
        import torch

        torch.cuda.reset_peak_memory_stats()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_gb() -> dict[str, float | None]:
    out = {"peak_rss_gb": _status_gb("VmHWM"), "rss_gb": _status_gb("VmRSS")}
    if _cuda_ready():
        import torch

        out["gpu_peak_gb"] = torch.cuda.max_memory_allocated() / 1024**3
    return out


# -- workload -------------------------------------------------------------------------------------------------------
def _photo(seed: int, w: int, h: int) -> Any:
    """A photo-like picture (smooth gradients, panels, a code on a display): not trivially compressible."""
    from PIL import Image, ImageDraw

    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([(xx / w) * 180 + 40, (yy / h) * 160 + 50, ((xx + yy) / (w + h)) * 120 + 60], axis=-1)
    img = Image.fromarray(np.clip(base + rng.randn(h, w, 3) * 12, 0, 255).astype("uint8"))
    d = ImageDraw.Draw(img)
    for _ in range(8):
        x0, y0 = int(rng.randint(0, w - 40)), int(rng.randint(0, h - 40))
        d.rectangle([x0, y0, x0 + int(rng.randint(20, w // 3)), y0 + int(rng.randint(20, h // 3))],
                    fill=tuple(int(c) for c in rng.randint(0, 255, size=3)))
    d.text((w // 3, h // 3), f"E{rng.randint(10, 99)}", fill=(255, 40, 40))
    return img


_CASE_WORDS = ("fuser error code display blinking tray jam roller pressure valve compressor fan motor sensor board "
               "relay fuse leak seal bearing noise vibration overheating thermostat filter coil drum toner reset "
               "firmware cable connector voltage pump impeller gauge replace clean check inspect tighten").split()


def case_documents(n: int, seed: int = 3) -> list[dict[str, Any]]:
    """``n`` case documents like the Rerank stage builds them: case text (≈80 words) + one 640×480 case photo."""
    rng = np.random.RandomState(seed)
    docs = []
    for i in range(n):
        words = " ".join(rng.choice(_CASE_WORDS, size=80))
        docs.append({"text": f"Case C-{i:03d}. Symptom and cause: {words}.", "image": _photo(100 + i, 640, 480)})
    return docs


def query_item(cfg: QueryBenchConfig) -> dict[str, Any]:
    return {"image": _photo(7, *cfg.photo), "text": QUESTION}


# -- checkpoint -----------------------------------------------------------------------------------------------------
def ensure_checkpoint(cfg: QueryBenchConfig) -> Path:
    """``cfg.checkpoint``, or the cached random checkpoint of ``cfg.size`` (built once, renamed into place)."""
    if cfg.checkpoint is not None:
        if not (Path(cfg.checkpoint) / "config.json").is_file():
            raise FileNotFoundError(f"checkpoint {cfg.checkpoint} has no config.json")
        return Path(cfg.checkpoint)
    dest = Path(cfg.cache_dir) / cfg.size
    if (dest / "config.json").is_file():
        return dest
    import shutil
    import tempfile

    from rag.models.tiny import make_checkpoint

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{cfg.size}-"))
    try:
        t = time.perf_counter()
        logger.info("building a random %s checkpoint in %s (once)", cfg.size, dest)
        make_checkpoint(tmp, size=cfg.size)  # type: ignore[arg-type]
        logger.info("built in %.0f s", time.perf_counter() - t)
        os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


# -- stages ---------------------------------------------------------------------------------------------------------
def query_budget(cfg: QueryBenchConfig) -> QueryBudget:
    """The query-time cap the app would choose for this run (:func:`rag.models.budgets.choose_query_budget`)."""
    from rag.models.budgets import choose_query_budget, runs_on_device
    from rag.models.loading import resolve_device

    return choose_query_budget(cfg.query_max_pixels, runs_on_device(resolve_device(cfg.device).type))


def _budget(cfg: QueryBenchConfig, query: bool) -> Any:
    """The roles' budget with the query-time cap: the embedder's query photo, and everything the reranker and the
    generator see (as the app loads them, rag.models.factory.role_budget + the pipeline's FitQuery)."""
    from rag.config import VisionBudget
    from rag.models.budgets import query_time_budget

    return query_time_budget(VisionBudget(), query_budget(cfg)) if query else VisionBudget()


def _load(cls: Any, ckpt: Path, cfg: QueryBenchConfig, budget: Any) -> Any:
    model = cls.from_pretrained(ckpt, device=cfg.device, dtype=cfg.dtype,
                                attn_implementation=cfg.attn_implementation, budget=budget)
    if cfg.quantize == "int8":
        from rag.models.quant import quantize_wrapper

        quantize_wrapper(model)
    return model


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()


def _vision_tokens(model: Any, item: dict[str, Any]) -> int | None:
    try:
        enc = model.encode_item(item, None, 0)
        grid = enc.image_grid_thw
        return int(grid.prod(dim=1).sum()) // 4 if grid is not None else 0
    except Exception:  # noqa: BLE001 - the count is informative only
        return None


def stage_embed(ckpt: Path, cfg: QueryBenchConfig) -> tuple[dict[str, Any], np.ndarray]:
    from rag.models.embedder import Embedder

    reset_peak()
    t = time.perf_counter()
    emb = _load(Embedder, ckpt, cfg, _budget(cfg, query=True))
    load_s = time.perf_counter() - t
    item = query_item(cfg)
    tokens = _vision_tokens(emb, item)
    if cfg.warmup:
        emb.embed([item])
    _sync(cfg.device)
    t = time.perf_counter()
    vec = emb.embed([item])
    _sync(cfg.device)
    model_s = time.perf_counter() - t
    out = {"load_s": load_s, "model_s": model_s, "query_vision_tokens": tokens, "dtype": str(emb.dtype), **rss_gb()}
    del emb
    gc.collect()
    return out, vec[0]


def stage_rerank(ckpt: Path, cfg: QueryBenchConfig) -> tuple[dict[str, Any], list[float]]:
    from rag.models.reranker import Reranker

    reset_peak()
    t = time.perf_counter()
    rr = _load(Reranker, ckpt, cfg, _budget(cfg, query=True))
    load_s = time.perf_counter() - t
    query, docs = query_item(cfg), case_documents(cfg.docs)
    if cfg.warmup:
        rr.score(query, docs)
    _sync(cfg.device)
    t = time.perf_counter()
    scores = rr.score(query, docs)
    _sync(cfg.device)
    model_s = time.perf_counter() - t
    out = {"load_s": load_s, "model_s": model_s, "documents": len(docs), "dtype": str(rr.dtype),
           "scores": [round(s, 6) for s in scores], **rss_gb()}
    del rr
    gc.collect()
    return out, scores


class _Clock:
    """A transformers streamer that records when the prompt and each new token arrive."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.tokens: list[int] = []

    def put(self, value: Any) -> None:
        self.times.append(time.perf_counter())
        self.tokens.append(int(value.reshape(-1).shape[0]))

    def end(self) -> None:
        pass


def stage_generate(ckpt: Path, cfg: QueryBenchConfig) -> dict[str, Any]:
    import torch

    from rag.models.generator import Generator

    reset_peak()
    t = time.perf_counter()
    gen = _load(Generator, ckpt, cfg, _budget(cfg, query=True))
    load_s = time.perf_counter() - t
    docs = case_documents(cfg.docs)
    content: list[dict[str, Any]] = [{"type": "image", "image": query_item(cfg)["image"]}]
    content += [{"type": "image", "image": d["image"]} for d in docs[: cfg.case_images]]
    cases = "\n\n".join(d["text"] for d in docs)
    content.append({"type": "text", "text": f"<reference_cases>\n{cases}\n</reference_cases>\n\n{QUESTION}"})
    t = time.perf_counter()
    inputs = gen.prepare([{"role": "user", "content": content}])
    prepare_s = time.perf_counter() - t
    clock = _Clock()
    # the tiny/random models may emit EOS at once: forbid stopping early so N tokens are always timed
    kw = dict(max_new_tokens=cfg.new_tokens + 1, min_new_tokens=cfg.new_tokens + 1, do_sample=False,
              temperature=None, top_p=None, top_k=None, streamer=clock)
    if cfg.warmup:
        with torch.inference_mode():
            gen.model.generate(**inputs, **{**kw, "max_new_tokens": 2, "min_new_tokens": 2, "streamer": None})
    _sync(cfg.device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        gen.model.generate(**inputs, **kw)
    _sync(cfg.device)
    end = time.perf_counter()
    # put() #0 is the prompt; #1 the first new token (after prefill), then one per decoded token
    first = clock.times[1] if len(clock.times) > 1 else end
    n_after = max(0, len(clock.times) - 2)
    decode = (clock.times[-1] - first) / n_after if n_after else None
    out = {"load_s": load_s, "prepare_s": prepare_s, "prompt_tokens": int(inputs["input_ids"].shape[1]),
           "ttft_s": first - t0, "decode_s_per_token": decode, "new_tokens": n_after + 1,
           "model_s": end - t0, "dtype": str(next(gen.model.parameters()).dtype), **rss_gb()}
    del gen
    gc.collect()
    return out


# -- run ------------------------------------------------------------------------------------------------------------
def _kendall_tau(a: list[float], b: list[float]) -> float:
    n, s = len(a), 0
    if n < 2:
        return 1.0
    for i in range(n):
        for j in range(i + 1, n):
            s += int(np.sign(a[i] - a[j]) * np.sign(b[i] - b[j]))
    return s / (n * (n - 1) / 2)


def run_query_bench(cfg: QueryBenchConfig) -> dict[str, Any]:
    import torch

    from rag.models.loading import detect_hardware

    bad = [s for s in cfg.stages if s not in STAGES]
    if bad:
        raise ValueError(f"unknown stage(s) {bad}; choose from {', '.join(STAGES)}")
    ckpt = ensure_checkpoint(cfg)
    res: dict[str, Any] = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": json.loads(cfg.model_dump_json()),
        "checkpoint": str(ckpt),
        "env": {"host": platform.node(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                "torch_threads": torch.get_num_threads(),
                "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                "hardware": json.loads(detect_hardware(cfg.device).model_dump_json())},
        "query_budget": json.loads(query_budget(cfg).model_dump_json()),
        "stages": {},
    }
    vec = scores = None
    if "embed" in cfg.stages:
        res["stages"]["embed"], vec = stage_embed(ckpt, cfg)
    if "rerank" in cfg.stages:
        res["stages"]["rerank"], scores = stage_rerank(ckpt, cfg)
    if "generate" in cfg.stages:
        res["stages"]["generate"] = stage_generate(ckpt, cfg)
    res["model_s_total"] = sum(s["model_s"] for s in res["stages"].values())
    res["peak_rss_gb"] = max((s["peak_rss_gb"] or 0.0) for s in res["stages"].values()) if res["stages"] else None
    if cfg.compare:
        ref_cfg = cfg.model_copy(update={"dtype": "float32", "quantize": "none", "query_max_pixels": "official",
                                         "stages": tuple(s for s in cfg.stages if s in ("embed", "rerank")),
                                         "checkpoint": ckpt, "compare": False})
        quality: dict[str, Any] = {"reference": "float32, official pixel budget, no quantization",
                                   "random_weights": (ckpt / "RANDOM_WEIGHTS").is_file()}
        if vec is not None:
            ref_stage, ref_vec = stage_embed(ckpt, ref_cfg)
            quality["embed_cosine"] = float(np.dot(vec, ref_vec) / (np.linalg.norm(vec) * np.linalg.norm(ref_vec)))
            quality["reference_embed_model_s"] = ref_stage["model_s"]
        if scores is not None:
            ref_stage, ref_scores = stage_rerank(ckpt, ref_cfg)
            quality["rerank_kendall_tau"] = _kendall_tau(scores, ref_scores)
            quality["rerank_same_top1"] = int(np.argmax(scores)) == int(np.argmax(ref_scores))
            quality["rerank_max_abs_diff"] = float(np.max(np.abs(np.array(scores) - np.array(ref_scores))))
            quality["reference_rerank_model_s"] = ref_stage["model_s"]
        res["quality"] = quality
    return res


def render_markdown(res: dict[str, Any]) -> str:
    c, env = res["config"], res["env"]
    hw = env["hardware"]
    lines = [
        "# One query, model time by stage", "",
        f"{res['created_at']} · checkpoint `{res['checkpoint']}` ({c['size'] if not c['checkpoint'] else 'given'}) · "
        f"{c['device']} · dtype {c['dtype']} · quantize {c['quantize']} · query max pixels "
        f"{c['query_max_pixels']} ({res.get('query_budget', {}).get('max_pixels') or 'official'}) · {env['torch_threads']} threads · CPU {hw['cpu_capability']}"
        f"{' (native bf16)' if hw['cpu_amx'] or hw['cpu_avx512_bf16'] else ''} · load {env['load_average']}", "",
        f"Query: a {c['photo'][0]}×{c['photo'][1]} photo + question; rerank {c['docs']} case documents "
        f"(text + 640×480 photo); answer: prefill + first token + {c['new_tokens']} tokens "
        f"({c['case_images']} case photos in the prompt).", "",
        "| stage | model s | load s | peak RSS GB | RSS after GB | dtype | detail |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for name, s in res["stages"].items():
        if name == "embed":
            detail = f"{s['query_vision_tokens']} query vision tokens"
        elif name == "rerank":
            detail = f"{s['documents']} documents"
        else:
            dec = s["decode_s_per_token"]
            detail = (f"{s['prompt_tokens']} prompt tokens; TTFT {s['ttft_s']:.2f} s; "
                      f"{'–' if dec is None else f'{dec:.3f}'} s/token")
        lines.append(f"| {name} | {s['model_s']:.2f} | {s['load_s']:.1f} | {s['peak_rss_gb'] or 0:.2f} | "
                     f"{s['rss_gb'] or 0:.2f} | {s['dtype']} | {detail} |")
    lines += ["", f"**Model time, all stages: {res['model_s_total']:.1f} s**; peak RSS {res['peak_rss_gb'] or 0:.2f} GB "
                  "(roles loaded one at a time).", ""]
    q = res.get("quality")
    if q:
        parts = []
        if "embed_cosine" in q:
            parts.append(f"query embedding cosine {q['embed_cosine']:.4f}")
        if "rerank_kendall_tau" in q:
            parts.append(f"rerank Kendall tau {q['rerank_kendall_tau']:.2f}, same top-1: {q['rerank_same_top1']}, "
                         f"max score diff {q['rerank_max_abs_diff']:.3g}")
        lines += [f"Quality against {q['reference']}: " + "; ".join(parts) + "."
                  + (" Random weights: this shows the mechanics of the cost, not real-weight quality." if q["random_weights"] else ""), ""]
    return "\n".join(lines)


def write_report(res: dict[str, Any], out_dir: str | os.PathLike[str], name: str = "bench-query") -> tuple[Path, Path]:
    return write_bench_report(res, out_dir, name, render_markdown(res))


# -- adaptive rerank depth, measured offline on an eval run -----------------------------------------------------
def rerank_depth_study(run_dir: str | os.PathLike[str], margins: list[float], min_depth: int | None = None,
                       metrics: tuple[str, ...] = ("mrr@10", "recall@5", "ndcg@10")) -> dict[str, Any]:
    """Ranking quality and rerank work of ``Rerank.adaptive_depth`` for each margin, from one ``ragvqa eval run
    --mode rerank`` folder.

    The run reranked every retrieved case and recorded both rankings; the reranker scores each (query, case) pair on
    its own (batched scores equal one-pair scores within 1e-4), so the ranking a smaller depth gives is exactly the
    top-``depth`` retrieved cases ordered by their recorded rerank scores, then the rest in retrieval order. The work
    saved is the share of (query, case) pairs not scored.
    """
    from eval.metrics import build_qrels, build_run, compare_runs, evaluate
    from rag.pipeline.rerank import Rerank

    folder = Path(run_dir)
    records = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines() if line.strip()]
    records = [r for r in records if r.get("rerank") and r.get("retrieval") and not r.get("error")]
    if not records:
        raise ValueError(f"{folder} has no reranked queries: run `ragvqa eval run --mode rerank` first")
    cfg = json.loads((folder / "config.json").read_text()).get("config", {}) if (folder / "config.json").is_file() else {}
    min_depth = min_depth or int(cfg.get("top_n", 5))
    qrels = build_qrels(records)

    def simulate(margin: float | None) -> tuple[list[dict[str, Any]], float]:
        out, pairs, full = [], 0, 0
        for r in records:
            rscore = {d: s for d, s in r["rerank"]}
            order = [d for d, _ in r["retrieval"]]
            depth = Rerank.adaptive_depth([s for _, s in r["retrieval"]], margin, min_depth)
            head = sorted(order[:depth], key=lambda d: -rscore.get(d, 0.0))
            ranking = [[d, float(len(order) - i)] for i, d in enumerate(head + order[depth:])]
            out.append({"id": r["id"], "rerank": ranking})
            pairs, full = pairs + depth, full + len(order)
        return out, pairs / max(1, full)

    base_records, _ = simulate(None)
    base_run = build_run(base_records, "rerank", name="all")
    rows = [{"margin": None, "rerank_share": 1.0, **evaluate(qrels, base_run, metrics)}]
    runs = [base_run]
    for m in margins:
        recs, share = simulate(m)
        run = build_run(recs, "rerank", name=f"margin={m}")
        runs.append(run)
        rows.append({"margin": m, "rerank_share": share, **evaluate(qrels, run, metrics)})
    try:
        significance = compare_runs(qrels, runs, metrics=list(metrics))
    except Exception as e:  # noqa: BLE001 - the table is the result; significance is a bonus
        significance = {"error": repr(e)}
    return {"run_dir": str(folder), "queries": len(records), "judged_queries": len(qrels.keys()),
            "min_depth": min_depth, "models": cfg.get("models"), "rows": rows, "significance": significance}


def render_depth_markdown(res: dict[str, Any]) -> str:
    metrics = [k for k in res["rows"][0] if k not in ("margin", "rerank_share")]
    base = res["rows"][0]
    lines = ["# Adaptive rerank depth", "",
             f"Run `{res['run_dir']}` ({res['queries']} reranked queries, {res['judged_queries']} with judgements, models "
             f"{res['models']}); depth = retrieved cases within the margin of the best cosine, at least {res['min_depth']}.", "",
             "| margin | pairs reranked | " + " | ".join(metrics) + " | Δ MRR@10 |", "|---|---:|" + "---:|" * (len(metrics) + 1)]
    for r in res["rows"]:
        delta = r.get("mrr@10", 0.0) - base.get("mrr@10", 0.0)
        lines.append(f"| {'all' if r['margin'] is None else r['margin']} | {r['rerank_share']:.0%} | "
                     + " | ".join(f"{r[m]:.4f}" for m in metrics) + f" | {delta:+.4f} |")
    return "\n".join(lines) + "\n"
