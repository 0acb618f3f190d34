"""Resolve model locations, devices and dtypes; turn hub failures into actionable messages."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel

logger = logging.getLogger(__name__)


class ModelNotAvailableError(RuntimeError):
    """A model could not be found locally; the message says how to fix it."""


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


#: Memory kept free for activations, the processor, the store and the app when ``auto`` sizes fp32 weights.
RESERVE_BYTES = 3 * 1024**3
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class HardwareFacts(BaseModel):
    """What the dtype decision depends on; :func:`detect_hardware` reads them, tests state them."""

    device: Literal["cpu", "cuda"]
    #: torch's own dispatch level (``torch.backends.cpu.get_cpu_capability()``): DEFAULT, AVX2, AVX512, ...
    cpu_capability: str = "DEFAULT"
    #: Native bf16 matrix instructions (torch.cpu._is_amx_tile_supported / _is_avx512_bf16_supported).
    cpu_amx: bool = False
    cpu_avx512_bf16: bool = False
    cuda_bf16: bool = False
    cores: int = 1
    #: Memory this process may still use (MemAvailable, capped by a cgroup limit); None = unknown.
    mem_available_bytes: int | None = None
    mem_total_bytes: int | None = None
    gpu_name: str | None = None
    gpu_mem_bytes: int | None = None

    @property
    def native_bf16_cpu(self) -> bool:
        return self.cpu_amx or self.cpu_avx512_bf16


class DtypeChoice(BaseModel):
    """A dtype and the reason it was chosen (logged at start-up, shown by ``ragvqa doctor``)."""

    dtype: Literal["bfloat16", "float16", "float32"]
    reason: str

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]


def _torch_flag(name: str) -> bool:
    fn = getattr(torch.cpu, name, None)  # private helpers: absent on some torch versions → treated as "no"
    try:
        return bool(fn()) if callable(fn) else False
    except Exception:  # noqa: BLE001 - pragma: no cover - defensive: a probe must never stop start-up
        return False


def _mem_available() -> tuple[int | None, int | None]:
    avail = total = None
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        avail = int(info["MemAvailable"].split()[0]) * 1024
        total = int(info["MemTotal"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        pass
    try:  # a container's limit is what counts when it is lower than the host's free memory
        raw = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if raw != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            limit = int(raw)
            total = min(total or limit, limit)
            avail = min(avail if avail is not None else limit, max(0, limit - used))
    except (OSError, ValueError):
        pass
    return avail, total


def detect_hardware(device: torch.device | str | None = None) -> HardwareFacts:
    """The facts for :func:`choose_dtype`, from torch's own checks and /proc (cheap; no model is touched)."""
    dev = resolve_device(str(device) if device is not None else "auto")
    avail, total = _mem_available()
    facts: dict[str, Any] = dict(
        device="cuda" if dev.type == "cuda" else "cpu",
        cpu_capability=str(torch.backends.cpu.get_cpu_capability()),
        cpu_amx=_torch_flag("_is_amx_tile_supported"),
        cpu_avx512_bf16=_torch_flag("_is_avx512_bf16_supported"),
        cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1),
        mem_available_bytes=avail, mem_total_bytes=total,
    )
    if torch.cuda.is_available():
        idx = (dev.index or 0) if dev.type == "cuda" else 0
        props = torch.cuda.get_device_properties(idx)
        facts.update(cuda_bf16=torch.cuda.is_bf16_supported(), gpu_name=props.name, gpu_mem_bytes=props.total_memory)
    return HardwareFacts(**facts)


def _gb(n: int) -> str:
    return f"{n / 1024**3:.1f} GB"


def choose_dtype(facts: HardwareFacts, fp32_bytes: int | None = None, reserve_bytes: int = RESERVE_BYTES) -> DtypeChoice:
    """The ``auto`` dtype for weights of ``fp32_bytes`` (in float32) on the machine ``facts`` describe.

    CUDA: bf16 (fp16 on GPUs without bf16). CPU with AMX or AVX512-BF16: bf16 (native, faster than fp32 and half the
    memory). Other CPUs compute bf16 by emulation (measured 4.9× slower than fp32 on an AVX2 EPYC), so float32 when
    the weights fit in the available memory minus ``reserve_bytes``, else bf16 with the reason said.
    """
    if facts.device == "cuda":
        if facts.cuda_bf16:
            return DtypeChoice(dtype="bfloat16", reason=f"CUDA ({facts.gpu_name or 'GPU'}) supports bf16")
        return DtypeChoice(dtype="float16", reason=f"CUDA ({facts.gpu_name or 'GPU'}) without bf16: float16")
    if facts.native_bf16_cpu:
        what = "AMX" if facts.cpu_amx else "AVX512-BF16"
        return DtypeChoice(dtype="bfloat16", reason=f"CPU computes bf16 natively ({what}): faster than fp32, half the memory")
    slow = f"CPU ({facts.cpu_capability}) has no native bf16 (no AMX/AVX512-BF16): bf16 would be emulated, several times slower"
    if fp32_bytes is None or facts.mem_available_bytes is None:
        return DtypeChoice(dtype="float32", reason=f"{slow}; float32")
    room = facts.mem_available_bytes - reserve_bytes
    if fp32_bytes <= room:
        return DtypeChoice(dtype="float32", reason=f"{slow}; float32 weights ({_gb(fp32_bytes)}) fit in "
                                                   f"{_gb(facts.mem_available_bytes)} available")
    return DtypeChoice(dtype="bfloat16", reason=f"{slow}, but float32 weights ({_gb(fp32_bytes)}) do not fit in "
                                                 f"{_gb(facts.mem_available_bytes)} available (keeping "
                                                 f"{_gb(reserve_bytes)} free): bf16, slower")


def plan_dtypes(facts: HardwareFacts, fp32_bytes: dict[str, int | None],
                reserve_bytes: int = RESERVE_BYTES) -> dict[str, DtypeChoice]:
    """``auto`` per role, in the order given (callers list the query-critical roles first).

    On CPUs without native bf16, each role gets float32 while the float32 weights of it and of the roles before it fit
    (the rest counted at bf16 size); a role that does not fit falls back to bf16, said in its reason.
    """
    out: dict[str, DtypeChoice] = {}
    names = list(fp32_bytes)
    for i, role in enumerate(names):
        size = fp32_bytes[role]
        if size is None or facts.device == "cuda" or facts.native_bf16_cpu or facts.mem_available_bytes is None:
            out[role] = choose_dtype(facts, size, reserve_bytes)
            continue
        held = sum((fp32_bytes[r] or 0) // (1 if out[r].dtype == "float32" else 2) for r in names[:i])
        later = sum((fp32_bytes[r] or 0) // 2 for r in names[i + 1:])  # the rest must still fit, at least in bf16
        out[role] = choose_dtype(facts, size, reserve_bytes + held + later)
    return out


def checkpoint_fp32_bytes(path: str | Path) -> int | None:
    """Float32 size of a checkpoint's weights, from its safetensors headers (no tensor is read); None if unknown."""
    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        return None
    n = 0
    try:
        for f in files:
            with open(f, "rb") as fh:
                size = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(size))
            for name, meta in header.items():
                if name != "__metadata__":
                    n += math.prod(meta["shape"])
    except (OSError, ValueError, KeyError):
        return None
    return 4 * n


_logged: set[tuple[str, str]] = set()


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device | None = None,
                  fp32_bytes: int | None = None) -> torch.dtype:
    """An explicit dtype as is; ``auto`` from :func:`choose_dtype` on this machine (the choice and why are logged)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        choice = choose_dtype(detect_hardware(device), fp32_bytes)
        key = (choice.dtype, choice.reason)
        if key not in _logged:
            _logged.add(key)
            logger.info("dtype auto → %s: %s", choice.dtype, choice.reason)
        return choice.torch_dtype
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}: use auto, bfloat16, float16 or float32") from None


def resolve_attn(attn: str = "auto", device: torch.device | None = None) -> str:
    if attn == "auto":
        if device is not None and device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2"
        return "sdpa"
    return attn


def resolve_model_path(name_or_path: str | Path, role: str) -> str:
    """A local directory as is; a hub id only if it is already in the local cache (the hub is never assumed)."""
    p = Path(str(name_or_path)).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise ModelNotAvailableError(
                f"{role} model directory '{p}' has no config.json: point RAGVQA_{role.upper()}_MODEL at a folder "
                "saved with save_pretrained (weights, config, tokenizer and processor files)"
            )
        return str(p)
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(str(name_or_path), local_files_only=True)
    except Exception:  # noqa: BLE001 - not in the local HF cache (or no hub library): fall through to the clear error below
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") in ("0", "", "false", "False") and os.environ.get("RAGVQA_ALLOW_DOWNLOAD") == "1":
        return str(name_or_path)
    raise ModelNotAvailableError(
        f"{role} model '{name_or_path}' is not available locally and will not be downloaded.\n"
        f"  - To use real weights, download them on a machine with hub access (e.g. `huggingface-cli download "
        f"{name_or_path} --local-dir /models/{Path(str(name_or_path)).name}`) and set "
        f"RAGVQA_{role.upper()}_MODEL=/models/{Path(str(name_or_path)).name} (or set RAGVQA_ALLOW_DOWNLOAD=1 "
        "where the hub is reachable).\n"
        "  - For an offline smoke run with meaningless answers, use `ragvqa serve --models tiny` or build tiny "
        "random checkpoints with `ragvqa models make-tiny DIR`."
    )


#: Largest float32 piece converted at once when a checkpoint is read (a bigger matrix is converted in row chunks).
CHUNK_BYTES = 64 * 1024**2


def read_state_dict(path: str | Path, dtype: torch.dtype, chunk_bytes: int = CHUNK_BYTES) -> dict[str, torch.Tensor] | None:
    """The checkpoint's tensors in ``dtype``, read tensor by tensor so loading peaks near the steady state.

    Why not transformers' own path: it memory-maps every shard until the whole model is loaded, so all the pages it
    touched (the full float32 file: 8.5 GB for a 2B model) count in the process's RSS on top of the converted weights
    (measured: one role in bf16 peaked at 12.7 GB for a 4.7 GB steady state). Here each tensor is read with
    ``pread`` (no mapping) and cast in pieces of at most ``chunk_bytes``; the result is handed to ``from_pretrained``
    as its ``state_dict``. None when the checkpoint has no safetensors files (transformers' path then applies).
    """
    from safetensors import safe_open

    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        return None
    out: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu", backend="pread") as f:
            for key in f.keys():
                piece = f.get_slice(key)
                shape = list(piece.get_shape())
                numel = math.prod(shape)
                floating = piece.get_dtype() in ("F32", "F16", "BF16", "F64")
                row_bytes = 4 * (numel // shape[0]) if shape and shape[0] else 0
                if not floating or not shape or numel * 4 <= chunk_bytes or row_bytes == 0:
                    t = f.get_tensor(key)
                    out[key] = t.to(dtype) if floating else t
                    continue
                dest = torch.empty(shape, dtype=dtype)
                rows = max(1, chunk_bytes // row_bytes)
                for i in range(0, shape[0], rows):
                    end = min(shape[0], i + rows)
                    dest[i:end] = piece[i:end]
                out[key] = dest
    return out


def load_model(model_cls: Any, path: str | Path, dtype: str | torch.dtype, device: torch.device, attn: str) -> Any:
    """``model_cls.from_pretrained(path)`` with the weights converted tensor by tensor (:func:`read_state_dict`).

    ``auto`` dtype is decided with the checkpoint's size in hand (:func:`choose_dtype`). The model (and its generation
    config, which ``from_pretrained`` without a path would not read) is built from ``path``'s config.
    """
    fp32 = checkpoint_fp32_bytes(path) if dtype == "auto" else None
    kw: dict[str, Any] = {"dtype": resolve_dtype(dtype, device, fp32), "attn_implementation": resolve_attn(attn, device)}
    sd = read_state_dict(path, kw["dtype"])
    if sd is None:
        return model_cls.from_pretrained(path, **kw)
    from transformers import AutoConfig, GenerationConfig

    config = AutoConfig.from_pretrained(path)
    mapping = getattr(model_cls, "_model_mapping", None)  # an Auto class: the concrete class for this config
    concrete = mapping[type(config)] if mapping is not None else model_cls
    model = concrete.from_pretrained(None, config=config, state_dict=sd, **kw)
    del sd
    if getattr(model, "generation_config", None) is not None and (Path(path) / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(path)
    return model
