"""Settings of the remote model backends (``RAGVQA_*`` environment variables, like :class:`rag.config.Settings`).

Kept apart from the main settings so a deployment switches one model at a time from in-process transformers to a
model server (vLLM, SGLang, a hosted OpenAI-compatible API) without touching anything else.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rag.config import Role, check_role


class RemoteRoleSettings(BaseModel):
    """Where one role's model runs (``RAGVQA_<ROLE>_BACKEND``, ``_URL``, ``_API_KEY``, ``_SERVED_MODEL``,
    ``_TIMEOUT``), read by :meth:`RemoteSettings.role`."""

    model_config = ConfigDict(frozen=True)

    role: Role
    #: ``local``: in-process transformers; otherwise the server protocol (``vllm`` pooling, ``openai`` chat).
    backend: Literal["local", "vllm", "openai"]
    url: str | None
    api_key: SecretStr | None
    served_model: str | None
    timeout: float

    @property
    def is_local(self) -> bool:
        return self.backend == "local"


class RemoteSettings(BaseSettings):
    """Which model runs where, and how patiently the app talks to model servers."""

    model_config = SettingsConfigDict(env_prefix="RAGVQA_", env_file=".env", extra="ignore")

    # -- generator: any OpenAI-compatible chat-completions server -------------------------------------------------
    generator_backend: Literal["local", "openai"] = "local"
    #: Base URL, with or without the trailing ``/v1`` (``http://vllm-generator:8000``).
    generator_url: str | None = None
    generator_api_key: SecretStr | None = None
    #: Model name sent in requests; default: ``RAGVQA_GENERATOR_MODEL`` (vLLM serves a model under its hub id).
    generator_served_model: str | None = None
    #: Seconds to wait for the first byte and between streamed chunks.
    generator_timeout: float = 120.0
    #: ``video_url``: the clip itself as a data URL (vLLM, SGLang); ``frames``: sampled frames as images (any server).
    generator_video_mode: Literal["video_url", "frames"] = "video_url"
    #: Local tokenizer (dir or cached hub id) for ``count_tokens``; without one, a conservative estimate is used.
    generator_tokenizer: str | None = None

    # -- embedder: vLLM pooling runner, chat-style /v1/embeddings ------------------------------------------------
    embedder_backend: Literal["local", "vllm"] = "local"
    embedder_url: str | None = None
    embedder_api_key: SecretStr | None = None
    embedder_served_model: str | None = None
    embedder_timeout: float = 60.0

    # -- reranker: vLLM pooling runner (Qwen3VLForSequenceClassification), chat-style /classify -------------------
    reranker_backend: Literal["local", "vllm"] = "local"
    reranker_url: str | None = None
    reranker_api_key: SecretStr | None = None
    reranker_served_model: str | None = None
    reranker_timeout: float = 60.0

    # -- shared transport ---------------------------------------------------------------------------------------
    remote_connect_timeout: float = 5.0
    #: Extra attempts after a connect error, HTTP 429 or 5xx (never after a stream has started).
    remote_retries: int = Field(default=2, ge=0, le=10)
    #: First backoff in seconds, doubled per attempt, capped by ``remote_max_backoff_s`` (a Retry-After wins).
    remote_backoff_s: float = Field(default=0.5, ge=0)
    remote_max_backoff_s: float = Field(default=8.0, ge=0)
    #: Requests in flight per embed/score call (the server batches them).
    remote_max_concurrency: int = Field(default=8, ge=1, le=256)
    #: ``png`` keeps the pixels the local models would see; ``jpeg`` is 5-10x smaller for hosted APIs with size caps.
    remote_image_format: Literal["png", "jpeg"] = "png"
    #: A single image/video larger than this (before base64) is refused instead of being sent.
    remote_max_upload_mb: float = 64.0
    #: Passed as ``mm_processor_kwargs`` to the vLLM pooling endpoints (JSON in the environment).
    remote_mm_processor_kwargs: dict[str, Any] | None = None
    remote_verify_tls: bool = True

    def role(self, name: Role) -> RemoteRoleSettings:
        """The backend/endpoint settings of one role, typed (``RAGVQA_<ROLE>_BACKEND``, ``_URL`` ...)."""
        role = check_role(name)
        if role == "embedder":
            return RemoteRoleSettings(role=role, backend=self.embedder_backend, url=self.embedder_url,
                                      api_key=self.embedder_api_key, served_model=self.embedder_served_model,
                                      timeout=self.embedder_timeout)
        if role == "reranker":
            return RemoteRoleSettings(role=role, backend=self.reranker_backend, url=self.reranker_url,
                                      api_key=self.reranker_api_key, served_model=self.reranker_served_model,
                                      timeout=self.reranker_timeout)
        return RemoteRoleSettings(role=role, backend=self.generator_backend, url=self.generator_url,
                                  api_key=self.generator_api_key, served_model=self.generator_served_model,
                                  timeout=self.generator_timeout)

    @field_validator("generator_url", "embedder_url", "reranker_url")
    @classmethod
    def _check_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(f"model server URL must start with http:// or https://, got {v!r}")
        return v or None
