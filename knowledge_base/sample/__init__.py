"""Deterministic sample knowledge base (fault cases, pictures, manual PDF, clips) and its eval set.

Used by tests, demos and the retrieval/answer evaluation: ``build_sample_kb(dest)`` writes everything in a few
seconds without network or GPU. The case specs are data (``cases.json``, read by ``catalog``); the drawing code
(``scenes``, ``draw``, ``augment``) is imported only when ``build_sample_kb``/``SampleKB`` is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from knowledge_base.sample.builder import SampleKB, build_sample_kb

__all__ = ["SampleKB", "build_sample_kb"]


def __getattr__(name: str) -> object:
    """Import the builder (and with it Pillow drawing code) on first use only."""
    if name in __all__:
        return getattr(importlib.import_module("knowledge_base.sample.builder"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
