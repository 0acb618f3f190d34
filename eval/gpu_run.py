"""One command for the day a GPU machine is available: ``python -m eval.gpu_run --out DIR`` (≤ 8 minutes on one GPU).

Measures, at the full-2B shape (random weights, built in seconds on the GPU in bf16 unless ``--checkpoint`` is given):

1. the one-query benchmark (``eval.bench_query``: embed photo + question, rerank top-k, prefill + first token + N
   tokens) on CUDA with ``sdpa`` and, where ``flash_attn`` is installed, ``flash_attention_2`` (one warm-up per stage);
2. embedder and reranker throughput of the product against the official strategy (``eval.bench_models``) at batch
   sizes 1, 8 and 32;
3. the generator's time to first token (from 1).

Results go to ``DIR/gpu-run.json`` and ``DIR/gpu-run.md``, rewritten after every step, so a run cut short keeps what
it measured; a failing step is recorded with its error and the run goes on. ``--budget-s`` skips the steps that
would start after that many seconds.

The import closure is kept small for a bare GPU image: argparse, numpy, torch, transformers, PIL, pydantic,
pydantic-settings, qwen-vl-utils and the project's ``rag.models`` / ``rag.config`` / ``rag.validation``; nothing from
the UI, the store or the CLI. CI runs it on CPU with a tiny checkpoint (``--device cpu --size tiny``).
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import logging
import os
import platform
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

logger = logging.getLogger("ragvqa.gpu_run")


def environment(device: str) -> dict[str, Any]:
    import torch
    import transformers

    env: dict[str, Any] = {
        "host": platform.node(), "python": sys.version.split()[0], "torch": torch.__version__,
        "transformers": transformers.__version__, "cpu_count": os.cpu_count(),
        "flash_attn": importlib.util.find_spec("flash_attn") is not None, "device": device,
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, gpu_mem_gb=round(p.total_memory / 1024**3, 1), cuda=torch.version.cuda,
                   bf16=torch.cuda.is_bf16_supported())
    return env


def build_checkpoint(work_dir: Path, size: str, device: str) -> tuple[Path, float]:
    """A random checkpoint of ``size`` under ``work_dir`` (reused when present): bf16 initialised on the GPU."""
    from rag.models.tiny import make_checkpoint

    dest = work_dir / f"{size}-{'bf16' if device.startswith('cuda') else 'fp32'}"
    if (dest / "config.json").is_file():
        return dest, 0.0
    t = time.perf_counter()
    if device.startswith("cuda"):
        make_checkpoint(dest, size=size, dtype="bfloat16", device=device)  # type: ignore[arg-type]
    else:
        make_checkpoint(dest, size=size)  # type: ignore[arg-type]
    return dest, time.perf_counter() - t


def _call_models_bench(ckpt: Path, *, dtype: str, device: str, repeats: int, batch: int, n_docs: int) -> dict[str, Any]:
    """``eval.bench_models.run_models_bench`` with the arguments its current signature takes."""
    from eval.bench_models import run_models_bench

    want = dict(dtype=dtype, device=device, repeats=repeats, embed_batch_size=batch, rerank_batch_size=batch,
                n_docs=n_docs)
    params = inspect.signature(run_models_bench).parameters
    return run_models_bench(ckpt, **{k: v for k, v in want.items() if k in params})


def render_markdown(res: dict[str, Any]) -> str:
    from eval.bench_query import render_markdown as query_md

    env = res["env"]
    lines = ["# GPU run", "",
             f"{res['created_at']} · {env.get('gpu', env['device'])} · torch {env['torch']} · transformers "
             f"{env['transformers']} · flash-attn installed: {env['flash_attn']} · checkpoint `{res.get('checkpoint')}`"
             f" (built in {res.get('checkpoint_build_s', 0):.0f} s) · total {res.get('total_s', 0):.0f} s", ""]
    for attn, q in res.get("query", {}).items():
        lines += [f"## One query, attention `{attn}`", ""]
        if "error" in q:
            lines += [f"failed: `{q['error']}`", ""]
            continue
        lines += [query_md(q).replace("# One query, model time by stage", "").strip(), ""]
        g = q["stages"].get("generate")
        if g:
            lines += [f"Generator time to first token: **{g['ttft_s'] * 1000:.0f} ms** ({g['prompt_tokens']} prompt tokens), "
                      f"then {g['decode_s_per_token'] * 1000 if g['decode_s_per_token'] else float('nan'):.1f} ms/token.", ""]
    rows = res.get("models", {})
    if rows:
        lines += ["## Embed and rerank throughput: product vs the official strategy", "",
                  "| batch | embed official items/s | embed ours items/s | speedup | max abs diff | rerank official s | rerank ours s | speedup | max abs diff |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for b, m in rows.items():
            if "error" in m:
                lines.append(f"| {b} | failed: `{m['error']}` |||||||| ")
                continue
            e, r = m["embed"], m["rerank"]
            lines.append(f"| {b} | {e['items_per_s_baseline']:.1f} | {e['items_per_s_ours']:.1f} | {e['speedup']:.2f}× | "
                         f"{e['max_abs_diff']:.1e} | {r['baseline_s']:.3f} | {r['ours_s']:.3f} | {r['speedup']:.2f}× | "
                         f"{r['max_abs_diff']:.1e} |")
        lines.append("")
    if res.get("skipped"):
        lines += [f"Skipped (time budget): {', '.join(res['skipped'])}", ""]
    return "\n".join(lines)


def write(res: dict[str, Any], out: Path) -> None:
    from rag.fileio import write_atomic

    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "gpu-run.json", json.dumps(res, indent=2, default=str) + "\n")
    try:
        (out / "gpu-run.md").write_text(render_markdown(res), encoding="utf-8")
    except Exception as e:  # noqa: BLE001 - the JSON is the record; a rendering bug must not lose it
        (out / "gpu-run.md").write_text(f"markdown rendering failed: {e!r}\n", encoding="utf-8")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from eval.bench_query import QueryBenchConfig, run_query_bench

    t_start = time.perf_counter()
    out = Path(args.out)
    device = args.device
    res: dict[str, Any] = {"created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                           "args": vars(args) | {"out": str(out)}, "env": environment(device), "query": {},
                           "models": {}, "errors": [], "skipped": []}
    write(res, out)

    def step(name: str, fn: Callable[[], Any]) -> Any:
        if time.perf_counter() - t_start > args.budget_s:
            logger.warning("skipping %s: over the %d s budget", name, args.budget_s)
            res["skipped"].append(name)
            return None
        logger.info("step %s", name)
        t = time.perf_counter()
        try:
            value = fn()
        except Exception as e:  # noqa: BLE001 - one failed step must not lose the others' results
            logger.error("step %s failed: %s", name, e)
            res["errors"].append({"step": name, "error": repr(e), "traceback": traceback.format_exc()})
            value = {"error": repr(e)}
        logger.info("step %s took %.1f s", name, time.perf_counter() - t)
        res["total_s"] = time.perf_counter() - t_start
        return value

    if args.checkpoint:
        ckpt, build_s = Path(args.checkpoint), 0.0
    else:
        work = Path(args.work_dir or tempfile.gettempdir()) / "ragvqa-gpu-run"
        ckpt, build_s = build_checkpoint(work, args.size, device)
    res.update(checkpoint=str(ckpt), checkpoint_build_s=build_s)
    write(res, out)

    attns = ["sdpa"] + (["flash_attention_2"] if device.startswith("cuda") and res["env"]["flash_attn"] else [])
    dtype = "auto" if device.startswith("cuda") else "float32"
    for attn in attns:
        cfg = QueryBenchConfig(checkpoint=ckpt, device=device, dtype=dtype, attn_implementation=attn, docs=args.docs,
                               new_tokens=args.new_tokens, case_images=min(args.docs, 3), warmup=True)
        res["query"][attn] = step(f"query-{attn}", lambda cfg=cfg: run_query_bench(cfg))
        write(res, out)
    models_dtype = "bfloat16" if device.startswith("cuda") else "float32"
    for b in args.batch_sizes:
        res["models"][str(b)] = step(f"models-batch-{b}", lambda b=b: _call_models_bench(
            ckpt, dtype=models_dtype, device=device, repeats=args.repeats, batch=b, n_docs=max(args.models_docs, b)))
        write(res, out)
    res["total_s"] = time.perf_counter() - t_start
    write(res, out)
    return res


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m eval.gpu_run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for gpu-run.json and gpu-run.md")
    ap.add_argument("--device", default="cuda", help="cuda (default) | cpu (CI smoke run)")
    ap.add_argument("--size", default="full-2b", choices=["tiny", "bench", "full-2b"])
    ap.add_argument("--checkpoint", default=None, help="use this checkpoint instead of building a random one")
    ap.add_argument("--work-dir", default=None, help="where the checkpoint is built (default: the temp dir)")
    ap.add_argument("--docs", type=int, default=5, help="case documents reranked in the one-query benchmark")
    ap.add_argument("--new-tokens", type=int, default=32, help="answer tokens timed after the first")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--models-docs", type=int, default=20, help="documents in the rerank throughput workload")
    ap.add_argument("--repeats", type=int, default=2, help="best-of repeats in the throughput benchmark")
    ap.add_argument("--budget-s", type=int, default=420, help="skip steps that would start after this many seconds")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            ap.error("--device cuda but torch sees no GPU (use --device cpu for a smoke run)")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    res = run(args)
    print(render_markdown(res))
    return 1 if res["errors"] else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
