"""Deterministic sample knowledge base (fault cases, pictures, manual PDF, clips) and its eval set.

Used by tests, demos and the retrieval/answer evaluation: ``build_sample_kb(dest)`` writes everything in a few
seconds without network or GPU.
"""

from knowledge_base.sample.builder import SampleKB, build_sample_kb

__all__ = ["SampleKB", "build_sample_kb"]
