"""``ragvqa bench models``: embedder and reranker throughput against the official strategy, at equal outputs.

The baselines are the test suite's independent reference implementation of QwenLM/Qwen3-VL-Embedding
(``tests/reference_qwen3vl.py``: official conversation, qwen-vl-utils vision preparation, the processor called
directly, pooling and score by hand), run with the official strategies: the embedder processes the whole list as
one right-padded batch; the reranker scores one (query, document) pair per forward, preparing the query's vision
input for every pair. Both sides run in the same process, on the same checkpoint, and outputs are compared, so each
speedup is measured at equal outputs against code that shares nothing with the product.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import logging
import platform
import sys
import time
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, ImageDraw

from eval.bench_report import write_bench_report
from rag.models.embedder import Embedder
from rag.models.encoding import Item
from rag.models.reranker import Reranker

logger = logging.getLogger(__name__)

#: The one copy of the reference lives with the tests (a test oracle must not live in the code under test).
REFERENCE_PATH = Path(__file__).resolve().parents[1] / "tests" / "reference_qwen3vl.py"


class ReferenceUnavailable(RuntimeError):
    """The checkout has no tests/ folder, so there is no reference to benchmark against."""


def load_reference(path: Path = REFERENCE_PATH) -> ModuleType:
    """Import the test suite's reference implementation by path (``tests/`` is not a package)."""
    if not path.is_file():
        raise ReferenceUnavailable(
            f"bench models compares against the test suite's reference implementation {path}, which this "
            "installation lacks: run it from a source checkout of ragvqa (with its tests/ folder)"
        )
    name = "ragvqa_reference_qwen3vl"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


# -- workloads --------------------------------------------------------------------------------------------------------
_WORDS = ("printer fuser toner tray jam error code LED blinking amber red green pump seal leak pressure gauge "
          "compressor fan filter sensor thermostat terminal display reboot firmware network card reader").split()


def _sentence(rng: np.random.RandomState, n: int) -> str:
    return " ".join(rng.choice(_WORDS, size=n)).capitalize() + "."


def _picture(rng: np.random.RandomState, w: int, h: int) -> Image.Image:
    """A screen-like picture: background, panels, text; cheap to draw and not trivially compressible."""
    img = Image.fromarray((rng.rand(h, w, 3) * 60 + rng.randint(0, 190, size=3)).astype("uint8"))
    d = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = int(rng.randint(0, w - 20)), int(rng.randint(0, h - 20))
        d.rectangle([x0, y0, x0 + int(rng.randint(10, w // 2)), y0 + int(rng.randint(10, h // 2))],
                    fill=tuple(int(c) for c in rng.randint(0, 255, size=3)))
    d.text((10, 10), f"E{rng.randint(10, 99)}", fill=(255, 255, 255))
    return img


def mixed_items(seed: int = 0) -> list[Item]:
    """64 items: 32 texts, 24 images from 224² to 1024×768, 8 image+text."""
    rng = np.random.RandomState(seed)
    sizes = [(224, 224), (320, 240), (448, 448), (640, 480), (800, 600), (1024, 768)]
    items: list[Item] = [{"text": _sentence(rng, int(rng.randint(6, 60)))} for _ in range(32)]
    items += [{"image": _picture(rng, *sizes[i % len(sizes)])} for i in range(24)]
    items += [{"image": _picture(rng, *sizes[i % len(sizes)]), "text": _sentence(rng, 12)} for i in range(8)]
    order = rng.permutation(len(items))
    return [items[i] for i in order]


def rerank_workload(seed: int = 1, n_docs: int = 20) -> tuple[Item, list[Item]]:
    """One image query (a 800×600 photo + question) × ``n_docs`` case documents (case text + a 448² image)."""
    rng = np.random.RandomState(seed)
    query = {"image": _picture(rng, 800, 600), "text": "What is wrong with this unit and how do I fix it?"}
    docs = [{"image": _picture(rng, 448, 448), "text": _sentence(rng, int(rng.randint(40, 90)))} for _ in range(n_docs)]
    return query, docs


# -- runner ---------------------------------------------------------------------------------------------------------
class ComponentClock:
    """Seconds spent in the vision tower and in the language model, via forward hooks.

    The vision tower does the same work in both strategies (no padding there), so ``baseline / ours-outside-the-LM``
    is the most any language-model-side strategy can gain on a checkpoint: the bench reports it as the ceiling.
    """

    def __init__(self, model: Any) -> None:
        inner = model if hasattr(model, "visual") else model.model  # Qwen3VLModel, or a ...ForConditionalGeneration
        self.parts = {"vision": inner.visual, "language_model": inner.language_model}
        self.seconds = dict.fromkeys(self.parts, 0.0)
        self._t0: dict[str, float] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> "ComponentClock":
        for name, mod in self.parts.items():
            self._handles.append(mod.register_forward_pre_hook(lambda *_, n=name: self._t0.__setitem__(n, time.perf_counter())))
            self._handles.append(mod.register_forward_hook(lambda *_, n=name: self._stop(n)))
        return self

    def _stop(self, name: str) -> None:
        self.seconds[name] += time.perf_counter() - self._t0.pop(name)

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()


def _best_of(fn: Callable[[], Any], repeats: int, model: Any = None) -> tuple[float, Any, dict[str, float]]:
    """Best wall time of ``repeats`` runs, the last output, and (with ``model``) that best run's component split."""
    best, out, split = float("inf"), None, {}
    for _ in range(repeats):
        clock = ComponentClock(model) if model is not None else None
        t = time.perf_counter()
        with clock or contextlib.nullcontext():
            out = fn()
        took = time.perf_counter() - t
        if took < best:
            best, split = took, (dict(clock.seconds) if clock is not None else {})
    return best, out, split


def _release_memory() -> None:
    """Collect dropped models between phases: at most two checkpoints in memory at once (2B float32 ≈ 8 GB each)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_models_bench(model_dir: str | Path, *, dtype: str = "float32", device: str = "cpu", repeats: int = 2,
                     embed_batch_size: int = 1, rerank_batch_size: int = 4, n_docs: int = 20) -> dict[str, Any]:
    ref = load_reference()
    # -- embed: ours vs the reference with the official strategy (the whole list in one right-padded batch)
    emb = Embedder.from_pretrained(model_dir, dtype=dtype, device=device)
    base_emb = ref.ReferenceEmbedder.from_pretrained(model_dir, dtype=emb.dtype, device=str(emb.device))
    items = mixed_items()
    emb.embed(items[:4])  # warm-up (allocator, kernels)
    base_emb.embed(items[:4], batch_size=4)
    t_base, v_base, split_base = _best_of(partial(base_emb.embed, items, batch_size=len(items)), repeats, base_emb.model)
    t_ours, v_ours, split_ours = _best_of(partial(emb.embed, items, batch_size=embed_batch_size), repeats, emb.model)
    n_params = sum(p.numel() for p in emb.model.parameters())
    emb_dtype, emb_device = emb.dtype, emb.device
    del emb, base_emb
    _release_memory()
    # -- rerank: ours vs the reference with the official strategy (one pair per forward)
    rr = Reranker.from_pretrained(model_dir, dtype=dtype, device=device)
    base_rr = ref.ReferenceReranker.from_pretrained(model_dir, dtype=emb_dtype, device=str(emb_device))
    query, docs = rerank_workload(n_docs=n_docs)
    rr.score(query, docs[:2])
    base_rr.score(query, docs[:1])
    r_base_t, s_base, _ = _best_of(partial(base_rr.score, query, docs), repeats)
    r_ours_t, s_ours, _ = _best_of(partial(rr.score, query, docs, batch_size=rerank_batch_size), repeats)
    del rr, base_rr
    _release_memory()
    return {
        "checkpoint": str(model_dir),
        "parameters_text_and_vision": n_params,
        "dtype": dtype,
        "device": str(emb_device),
        "baseline": "tests/reference_qwen3vl.py (independent reference of the published code)",
        "torch_threads": torch.get_num_threads(),
        "host": platform.node(),
        "embed": {
            "items": len(items), "composition": "32 text, 24 image (224²…1024×768), 8 image+text",
            "baseline_s": t_base, "ours_s": t_ours, "speedup": t_base / t_ours,
            "items_per_s_baseline": len(items) / t_base, "items_per_s_ours": len(items) / t_ours,
            "max_abs_diff": float(np.abs(v_base - v_ours).max()), "batch_size": embed_batch_size,
            "seconds_by_component": {"baseline": split_base, "ours": split_ours},
            # what ours would gain with a language model that cost nothing (vision + preprocessing stay)
            "speedup_ceiling_free_lm": t_base / max(1e-9, t_ours - split_ours.get("language_model", 0.0)),
        },
        "rerank": {
            "documents": len(docs), "query": "800×600 image + question", "documents_kind": "case text + 448² image",
            "baseline_s": r_base_t, "ours_s": r_ours_t, "speedup": r_base_t / r_ours_t,
            "max_abs_diff": float(np.abs(np.array(s_base) - np.array(s_ours)).max()), "batch_size": rerank_batch_size,
        },
    }


def to_markdown(res: dict[str, Any]) -> str:
    e, r = res["embed"], res["rerank"]
    return "\n".join([
        "# Model benchmark",
        "",
        f"Checkpoint `{res['checkpoint']}` ({res['parameters_text_and_vision'] / 1e6:.0f}M parameters), "
        f"{res['dtype']} on {res['device']} ({res['torch_threads']} threads). Best of repeats, one process.",
        "",
        "| workload | official strategy (s) | ours (s) | speedup | max abs diff |",
        "|---|---|---|---|---|",
        f"| embed {e['items']} mixed items | {e['baseline_s']:.2f} | {e['ours_s']:.2f} | {e['speedup']:.2f}× | {e['max_abs_diff']:.1e} |",
        f"| rerank 1 image query × {r['documents']} docs | {r['baseline_s']:.2f} | {r['ours_s']:.2f} | {r['speedup']:.2f}× | {r['max_abs_diff']:.1e} |",
        "",
        f"Baselines: the test suite's independent reference implementation (tests/reference_qwen3vl.py). "
        f"Embed: {e['composition']}; baseline = whole list as one padded batch; ours = length-sorted batches of "
        f"{e['batch_size']}, use_cache=False.",
        _split_line(e),
        f"Rerank: {r['query']} × {r['documents_kind']}; baseline = one pair per forward; ours = shared-prefix KV "
        f"cache, document batch {r['batch_size']}.",
        "",
    ])


def _split_line(e: dict[str, Any]) -> str:
    split = e.get("seconds_by_component") or {}
    b, o = split.get("baseline") or {}, split.get("ours") or {}
    if not b or not o:
        return ""
    return (f"Embed time by component: vision tower {b['vision']:.2f} s (baseline) / {o['vision']:.2f} s (ours), "
            f"language model {b['language_model']:.2f} s / {o['language_model']:.2f} s. The vision tower has no padding "
            f"in either strategy, so even a language model that cost nothing would give at most "
            f"{e['speedup_ceiling_free_lm']:.2f}× on this checkpoint.")


def write_report(res: dict[str, Any], out_dir: str | Path, name: str = "bench-models") -> tuple[Path, Path]:
    return write_bench_report(res, out_dir, name, to_markdown(res))
