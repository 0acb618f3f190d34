"""One place that decides which model weights a tool loads: the configured real models, or a tiny random checkpoint.

``--models tiny`` (CLI, serve, smoke runs) must work offline and give every tool the *same* checkpoint, so the
vectors one tool writes are comparable with those another searches with: the checkpoint is built once under
``data_dir/models/tiny`` and its embedder id carries a hash of its weights (a rebuilt, different checkpoint gets a
different id and the store refuses to mix them).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Literal, Mapping

from rag.config import ROLES, Role, Settings, VisionBudget, check_role
from rag.models.budgets import RunsOn, choose_query_budget, query_time_budget, runs_on_device
from rag.models.protocols import EmbeddingModel, GenerationModel, RerankingModel

if TYPE_CHECKING:
    from rag.models.loading import DtypeChoice

__all__ = ["LoadedModels", "ModelChoice", "load_models", "plan_role_dtypes", "role_budget", "tiny_checkpoint",
           "tiny_embedder_id"]

log = logging.getLogger(__name__)

ModelChoice = Literal["real", "tiny"]
TINY_PREFIX = "tiny-random-qwen3-vl"


@dataclass
class LoadedModels:
    """The wrappers asked for (others are None), typed by their contracts (:mod:`rag.models.protocols`)."""

    which: ModelChoice
    embedder: EmbeddingModel | None = None
    reranker: RerankingModel | None = None
    generator: GenerationModel | None = None
    #: The tiny checkpoint directory (tiny only).
    model_dir: Path | None = None

    def require_embedder(self) -> EmbeddingModel:
        """The embedder, or a clear error when it was not asked for."""
        if self.embedder is None:
            raise ValueError("no embedder was loaded (add 'embedder' to load_models(need=...))")
        return self.embedder

    def require_generator(self) -> GenerationModel:
        """The generator, or a clear error when it was not asked for."""
        if self.generator is None:
            raise ValueError("no generator was loaded (add 'generator' to load_models(need=...))")
        return self.generator


def tiny_checkpoint(data_dir: str | os.PathLike[str]) -> Path:
    """``data_dir/models/tiny``, built on first use (in a temp dir renamed into place, so two processes starting
    together never load a half-written checkpoint)."""
    from rag.models.tiny import make_checkpoint

    dest = Path(data_dir) / "models" / "tiny"
    if (dest / "config.json").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".tiny-"))
    try:
        log.info("building the tiny random Qwen3-VL checkpoint in %s (answers will be meaningless)", dest)
        make_checkpoint(tmp, size="tiny")
        try:
            os.rename(tmp, dest)
        except OSError:
            if not (dest / "config.json").is_file():  # not a concurrent builder winning the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def tiny_embedder_id(model_dir: str | os.PathLike[str]) -> str:
    """``tiny-random-qwen3-vl@<12 hex of the weights>``: stable across runs and machines for the same weights."""
    h = hashlib.sha256()
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return f"{TINY_PREFIX}@{h.hexdigest()[:12]}"


def load_models(settings: Settings, which: ModelChoice = "real",
                need: Iterable[str] = ROLES) -> LoadedModels:
    """Load the wrappers in ``need`` (embedder, reranker, generator).

    ``real``: the configured models (``RAGVQA_*_MODEL``), device/dtype/attention from the settings, or a model server
    where ``RAGVQA_<ROLE>_BACKEND`` says so; a local model that is not available raises ``ModelNotAvailableError``
    with instructions. ``tiny``: one random checkpoint for
    all roles, float32 on CPU.
    """
    need = tuple(need)
    bad = [r for r in need if r not in ROLES]
    if bad:
        raise ValueError(f"unknown model role(s) {bad}; choose from {', '.join(ROLES)}")
    roles: tuple[Role, ...] = tuple(check_role(r) for r in need)
    if which not in ("real", "tiny"):
        raise ValueError(f"models must be 'real' or 'tiny', got {which!r}")
    from rag.models.embedder import Embedder
    from rag.models.generator import Generator
    from rag.models.reranker import Reranker

    classes: dict[str, type[Embedder] | type[Reranker] | type[Generator]] = {
        "embedder": Embedder, "reranker": Reranker, "generator": Generator}
    out = LoadedModels(which=which)
    if which == "tiny":
        path = tiny_checkpoint(settings.data_dir)
        out.model_dir = path
        kw: dict[str, Any] = {"device": "cpu", "dtype": "float32"}
        for role in roles:
            setattr(out, role, classes[role].from_pretrained(path, budget=role_budget(settings, role, "cpu"), **kw))
        if out.embedder is not None:
            out.embedder.name = tiny_embedder_id(path)
        return out
    from rag.models.loading import resolve_device
    from rag.models.remote import load_remote_or_none

    kw = {"device": settings.device, "attn_implementation": settings.attn_implementation}
    runs_on = runs_on_device(resolve_device(settings.device).type)
    local: dict[Role, str] = {}
    for role in roles:
        remote = load_remote_or_none(role, settings)  # RAGVQA_<ROLE>_BACKEND selects a model server
        if remote is not None:
            setattr(out, role, remote)
        else:
            local[role] = settings.role(role).model
    dtypes = plan_role_dtypes(settings, local)
    for role, name in local.items():
        log.info("loading %s %s (%s: %s)", role, name, dtypes[role].dtype, dtypes[role].reason)
        model = classes[role].from_pretrained(name, dtype=dtypes[role].dtype,
                                              budget=role_budget(settings, role, runs_on), **kw)
        if settings.cpu_quantization == "int8":
            _quantize_if_cpu_fp32(role, model)
        setattr(out, role, model)
    return out


def role_budget(settings: Settings, role: Role, runs_on: RunsOn) -> VisionBudget:
    """The pixel budget ``role`` loads with: the official one for the embedder (it also builds the knowledge base;
    its query photo is fitted by the pipeline), the query-time cap of :mod:`rag.models.budgets` for the reranker and
    the generator, which only ever run at query time."""
    if role == "embedder":
        return settings.vision
    choice = choose_query_budget(settings.query_max_pixels, runs_on)
    if choice.max_pixels is not None:
        log.info("%s: images capped at %d pixels (%s)", role, choice.max_pixels, choice.reason)
    return query_time_budget(settings.vision, choice)


def _quantize_if_cpu_fp32(role: str, model: Any) -> None:
    import torch

    from rag.models.quant import quantize_wrapper

    p = next(model.model.parameters())
    if p.device.type == "cpu" and p.dtype == torch.float32:
        quantize_wrapper(model)
    else:
        log.info("RAGVQA_CPU_QUANTIZATION=int8 ignored for %s: it runs in %s on %s", role, p.dtype, p.device)


def plan_role_dtypes(settings: Settings, models: Mapping[Role, str] | Mapping[str, str]) -> dict[str, "DtypeChoice"]:
    """The dtype of each local role: the setting when explicit; for ``auto``, :func:`rag.models.loading.plan_dtypes`
    on this machine with the checkpoints' sizes (query-time roles first: embedder, reranker, then generator)."""
    from rag.models.loading import DtypeChoice, checkpoint_fp32_bytes, detect_hardware, plan_dtypes, resolve_model_path

    if settings.dtype != "auto":
        return {r: DtypeChoice(dtype=settings.dtype, reason="set by RAGVQA_DTYPE") for r in models}
    sizes: dict[str, int | None] = {}
    for role in ROLES:
        if role in models:
            try:
                sizes[role] = checkpoint_fp32_bytes(resolve_model_path(models[role], role))
            except Exception:  # noqa: BLE001 - a missing model fails with its own clear message when it is loaded
                sizes[role] = None
    return plan_dtypes(detect_hardware(settings.device), sizes)
