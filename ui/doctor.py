"""``ragvqa doctor``: the hardware, the dtype and pixel budgets the app would use here, the measured one-query time,
and a warning when a CPU-only setup will take minutes per answer. Typed, so the text and the ``--json`` output are
the same report."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, Field

from rag.config import Settings
from rag.models.loading import HardwareFacts

#: Above this model time for one query (or for the rerank at the app's depth), the doctor warns.
SLOW_QUERY_S = 60.0


class RoleDtype(BaseModel):
    dtype: str
    reason: str


class QueryTimeBudget(BaseModel):
    max_pixels: int | None
    reason: str


class Budgets(BaseModel):
    max_pixels: int
    min_pixels: int
    video_max_frames: int
    video_frame_max_pixels: int
    query_time: QueryTimeBudget


class RerankAtDepth(BaseModel):
    """The measured per-document rerank time times the app's rerank depth (it reranks every retrieved case unless an
    adaptive margin is set)."""

    documents: int
    s_per_document: float
    s: float
    adaptive: bool


class Measured(BaseModel):
    """A ``ragvqa bench query`` result, or why it could not be read."""

    path: str
    model_s_total: float | None = None
    stages: dict[str, float] = Field(default_factory=dict)
    created_at: str | None = None
    rerank_at_app_depth: RerankAtDepth | None = None
    error: str | None = None


class DoctorReport(BaseModel):
    hardware: HardwareFacts
    device: str
    attention: str
    dtypes: dict[str, RoleDtype]
    remote_roles: list[str]
    budgets: Budgets
    measured: Measured | None
    warnings: list[str]


def read_measured(bench: Path | None, settings: Settings) -> Measured | None:
    """The bench result at ``bench`` (None when there is none)."""
    if bench is None or not bench.is_file():
        return None
    try:
        data = json.loads(bench.read_text())
        stages = data.get("stages", {})
        m = Measured(path=str(bench), model_s_total=float(data["model_s_total"]),
                     stages={k: float(v["model_s"]) for k, v in stages.items()}, created_at=data.get("created_at"))
        rr = stages.get("rerank")
        if rr and settings.rerank_enabled and int(rr.get("documents", 0)) > 0:
            per_doc = float(rr["model_s"]) / int(rr["documents"])
            m.rerank_at_app_depth = RerankAtDepth(documents=settings.retrieve_top_k, s_per_document=per_doc,
                                                  s=per_doc * settings.retrieve_top_k,
                                                  adaptive=settings.rerank_adaptive_margin is not None)
        return m
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return Measured(path=str(bench), error=f"unreadable bench result: {e}")


def cpu_warning(measured: Measured | None) -> str | None:
    """The CPU-only warning: always without a (readable) measurement, else when the query or the rerank at the app's
    depth takes longer than :data:`SLOW_QUERY_S`."""
    total = measured.model_s_total if measured is not None else None
    at_depth = measured.rerank_at_app_depth if measured is not None else None
    if total is not None and total > SLOW_QUERY_S:
        what = f"one query took {total:.0f} s of model time here"
    elif at_depth is not None and at_depth.s > SLOW_QUERY_S:
        what = f"reranking {at_depth.documents} cases takes ≈{at_depth.s:.0f} s here"
    elif measured is None or measured.error is not None:
        what = "a 2B Qwen3-VL model on CPU takes tens of seconds to minutes per stage"
    else:
        return None
    return (f"CPU-only: {what}, so an answer will take minutes. Use a GPU (RAGVQA_DEVICE=cuda) or move the models to "
            f"servers (RAGVQA_<ROLE>_BACKEND=vllm/openai, see 'Models on servers' in the README); measure with "
            f"`ragvqa bench query`.")


def doctor_report(settings: Settings, bench: Path | None) -> DoctorReport:
    """What ``ragvqa doctor`` prints."""
    from rag.config import ROLES
    from rag.models.budgets import choose_query_budget, runs_on_device
    from rag.models.factory import plan_role_dtypes
    from rag.models.loading import detect_hardware, resolve_attn, resolve_device
    from rag.models.remote.settings import RemoteSettings

    dev = resolve_device(settings.device)
    remote = RemoteSettings()
    local = {r: settings.role(r).model for r in ROLES if remote.role(r).is_local}
    plan = plan_role_dtypes(settings, local)
    query = choose_query_budget(settings.query_max_pixels, runs_on_device(dev.type) if local else "remote")
    measured = read_measured(bench, settings)
    warning = cpu_warning(measured) if dev.type == "cpu" and local else None
    v = settings.vision
    return DoctorReport(
        hardware=detect_hardware(dev), device=str(dev), attention=resolve_attn(settings.attn_implementation, dev),
        dtypes={r: RoleDtype(dtype=c.dtype, reason=c.reason) for r, c in plan.items()},
        remote_roles=[r for r in ROLES if r not in local],
        budgets=Budgets(max_pixels=v.max_pixels, min_pixels=v.min_pixels, video_max_frames=v.video_max_frames,
                        video_frame_max_pixels=v.video_frame_max_pixels,
                        query_time=QueryTimeBudget(max_pixels=query.max_pixels, reason=query.reason)),
        measured=measured, warnings=[warning] if warning else [])


def report_lines(rep: DoctorReport, bench: Path | None) -> list[str]:
    """The report as the lines ``ragvqa doctor`` prints (warnings not included: printed highlighted)."""
    hw, gb = rep.hardware, 1024**3
    native = (" (native bf16: " + ("AMX" if hw.cpu_amx else "AVX512-BF16") + ")") if hw.native_bf16_cpu else " (no native bf16)"
    mem = (f"{hw.mem_available_bytes / gb:.1f} GB available of {hw.mem_total_bytes / gb:.1f} GB"
           if hw.mem_available_bytes is not None and hw.mem_total_bytes is not None else "unknown")
    lines = [f"CPU: {hw.cpu_capability}{native}, {hw.cores} cores; memory: {mem}",
             "GPU: " + (f"{hw.gpu_name} ({(hw.gpu_mem_bytes or 0) / gb:.0f} GB)" if hw.gpu_name else "none"),
             f"device: {rep.device}; attention: {rep.attention}"]
    lines += [f"{role}: {c.dtype} ({c.reason})" for role, c in rep.dtypes.items()]
    lines += [f"{role}: model server" for role in rep.remote_roles]
    b, q = rep.budgets, rep.budgets.query_time
    lines.append(f"image budget: {b.min_pixels}-{b.max_pixels} pixels ({b.max_pixels // 1024} vision tokens max); "
                 f"video: {b.video_max_frames} frames of at most {b.video_frame_max_pixels} pixels")
    lines.append("query-time images: " + (f"at most {q.max_pixels} pixels ({q.max_pixels // 1024} vision tokens)"
                                          if q.max_pixels else "official budget") + f" ({q.reason})")
    m = rep.measured
    if m is None:
        lines.append(f"one-query time: not measured (no {bench}; run `ragvqa bench query`)")
    elif m.error is not None:
        lines.append(f"one-query time: {m.error} ({m.path})")
    else:
        stages = ", ".join(f"{k} {s:.1f} s" for k, s in m.stages.items())
        lines.append(f"one-query model time (measured {m.created_at}): {m.model_s_total or 0:.1f} s ({stages})")
        d = m.rerank_at_app_depth
        if d is not None:
            lines.append(f"rerank at this app's depth: {'up to ' if d.adaptive else ''}{d.documents} cases × "
                         f"{d.s_per_document:.1f} s = {d.s:.0f} s (fewer: RAGVQA_RETRIEVE_TOP_K or "
                         f"RAGVQA_RERANK_ADAPTIVE_MARGIN)")
    return lines
