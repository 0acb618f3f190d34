"""int8 dynamic quantization of linear layers for CPU inference (issue 16's CPU lever).

Weights of every ``nn.Linear`` become int8 (per-channel scales); activations are quantized on the fly per batch. On
CPUs without native bf16 this is the cheapest way to cut the matrix work of a 2B model; the quality cost is measured
by ``ragvqa bench query --quantize int8`` (embedding cosine and rerank order against float32).

torch 2.14 still ships ``torch.ao.quantization.quantize_dynamic`` (deprecated in favour of torchao, which is not
installed here); its deprecation warnings are silenced in this one call.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch

logger = logging.getLogger(__name__)


class QuantizationError(ValueError):
    """The model cannot be quantized as asked (wrong device or dtype)."""


def quantize_linear_int8(model: torch.nn.Module) -> int:
    """Replace ``model``'s linear layers by int8 dynamic ones, in place; returns how many were replaced.

    Only float32 models on CPU: the quantized kernels (fbgemm/onednn) are CPU-only and take float32 activations.
    """
    p = next(model.parameters())
    if p.device.type != "cpu" or p.dtype != torch.float32:
        raise QuantizationError(f"int8 dynamic quantization needs a float32 model on CPU, got {p.dtype} on {p.device}")
    n = sum(1 for m in model.modules() if type(m) is torch.nn.Linear)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    logger.info("quantized %d linear layers to int8 (dynamic)", n)
    return n


def quantize_wrapper(wrapper: Any) -> int:
    """Quantize the model inside an Embedder / Reranker / Generator (its ``.model``)."""
    return quantize_linear_int8(wrapper.model)
