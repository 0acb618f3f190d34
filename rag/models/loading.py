"""Resolve model locations, devices and dtypes; turn hub failures into actionable messages."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)


class ModelNotAvailableError(RuntimeError):
    """A model could not be found locally; the message says how to fix it."""


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device | None = None) -> torch.dtype:
    """``auto`` is bf16 everywhere: on CPU three 2B models in fp32 need ≈25 GB."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16
    try:
        return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]
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
    except Exception:
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


def load_kwargs(dtype: str | torch.dtype, device: torch.device, attn: str) -> dict[str, Any]:
    return {"dtype": resolve_dtype(dtype, device), "attn_implementation": resolve_attn(attn, device)}
