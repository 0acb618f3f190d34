"""Model servers instead of in-process models, one role at a time, with the local wrappers' public methods.

========== ================================ =================================================================
role       backend                          endpoint
========== ================================ =================================================================
generator  ``openai`` (vLLM, SGLang, hosted) ``POST /v1/chat/completions`` (SSE streaming)
embedder   ``vllm`` (``--runner pooling``)   ``POST /v1/embeddings`` with chat ``messages``
reranker   ``vllm`` (``--runner pooling``)   ``POST /classify`` with the official pair as chat ``messages``
========== ================================ =================================================================

``load_remote_or_none(role, settings)`` returns the remote object when ``RAGVQA_<ROLE>_BACKEND`` selects a server,
else ``None`` (the caller then loads the local model as before).
"""

from __future__ import annotations

import logging
from typing import Any

from rag.config import Role, Settings, VisionBudget
from rag.models.remote.embedder import RemoteEmbedder
from rag.models.remote.generator import RemoteGenerator
from rag.models.remote.http import HttpEndpoint, RemoteError, RemoteTimeoutError, RemoteUnavailableError
from rag.models.remote.reranker import RemoteReranker
from rag.models.remote.settings import RemoteRoleSettings, RemoteSettings

logger = logging.getLogger(__name__)

#: Used when neither a served-model name nor the main settings name the model.
DEFAULT_MODELS = {
    "embedder": "Qwen/Qwen3-VL-Embedding-2B",
    "reranker": "Qwen/Qwen3-VL-Reranker-2B",
    "generator": "Qwen/Qwen3-VL-2B-Instruct",
}


def endpoint_for(role: Role, remote: RemoteSettings) -> HttpEndpoint:
    """The HTTP endpoint of ``role``'s server, with the shared retry/timeout settings."""
    rs = remote.role(role)
    if not rs.url:
        raise ValueError(f"RAGVQA_{role.upper()}_BACKEND={rs.backend} needs RAGVQA_{role.upper()}_URL "
                         f"(e.g. http://vllm-{role}:8000)")
    return HttpEndpoint(
        rs.url,
        role=role,
        api_key=rs.api_key.get_secret_value() if rs.api_key is not None else None,
        timeout=rs.timeout,
        connect_timeout=remote.remote_connect_timeout,
        retries=remote.remote_retries,
        backoff_s=remote.remote_backoff_s,
        max_backoff_s=remote.remote_max_backoff_s,
        verify=remote.remote_verify_tls,
        max_connections=max(4, remote.remote_max_concurrency * 2),
    )


def _load_tokenizer(name: str | None) -> Any | None:
    """A local tokenizer for exact ``count_tokens``; ``None`` (estimate) when it is not available offline."""
    if not name:
        return None
    try:
        from transformers import AutoTokenizer

        from rag.models.loading import resolve_model_path

        return AutoTokenizer.from_pretrained(resolve_model_path(name, "generator"))
    except Exception as e:  # noqa: BLE001 - any failure means "estimate instead", said once here
        logger.warning("generator tokenizer %r unavailable (%s); counting tokens by estimate", name, e)
        return None


def load_remote_or_none(role: Role, settings: Settings | RemoteSettings | None = None,
                        remote: RemoteSettings | None = None) -> RemoteEmbedder | RemoteReranker | RemoteGenerator | None:
    """The remote model for ``role`` if its backend is a server, else ``None``.

    ``settings`` is the app's :class:`rag.config.Settings` (model ids, vision budget) or a :class:`RemoteSettings`;
    remote settings are read from the environment unless given.
    """
    if isinstance(settings, RemoteSettings):
        remote, settings = settings, None
    remote = remote or RemoteSettings()
    if role not in DEFAULT_MODELS:
        raise ValueError(f"role must be one of {sorted(DEFAULT_MODELS)}, got {role!r}")
    if remote.role(role).is_local:
        return None
    if settings is None:
        from rag.config import get_settings

        settings = get_settings()
    model_id = settings.role(role).model or DEFAULT_MODELS[role]
    served = remote.role(role).served_model or model_id
    budget = settings.vision or VisionBudget()
    fmt, max_upload = remote.remote_image_format, int(remote.remote_max_upload_mb * 1024 * 1024)
    endpoint = endpoint_for(role, remote)
    logger.info("%s: using the model server at %s (model %r)", role, endpoint.base_url, served)
    if role == "embedder":
        return RemoteEmbedder(endpoint, served, max_concurrency=remote.remote_max_concurrency,
                              mm_processor_kwargs=remote.remote_mm_processor_kwargs, name=model_id, budget=budget,
                              image_format=fmt, max_upload_bytes=max_upload)
    if role == "reranker":
        return RemoteReranker(endpoint, served, max_concurrency=remote.remote_max_concurrency,
                              mm_processor_kwargs=remote.remote_mm_processor_kwargs, name=model_id, budget=budget,
                              image_format=fmt, max_upload_bytes=max_upload)
    return RemoteGenerator(endpoint, served, video_mode=remote.generator_video_mode,
                           tokenizer=_load_tokenizer(remote.generator_tokenizer), name=model_id, budget=budget,
                           image_format=fmt, max_upload_bytes=max_upload)


__all__ = [
    "DEFAULT_MODELS",
    "HttpEndpoint",
    "RemoteEmbedder",
    "RemoteError",
    "RemoteGenerator",
    "RemoteReranker",
    "RemoteRoleSettings",
    "RemoteSettings",
    "Role",
    "RemoteTimeoutError",
    "RemoteUnavailableError",
    "endpoint_for",
    "load_remote_or_none",
]
