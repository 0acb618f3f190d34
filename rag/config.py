"""Application settings, read from ``RAGVQA_*`` environment variables (or a ``.env`` file).

One settings object serves the CLI, the app and the tests, so a deployment is configured in one place.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rag.validation import MIN_IMAGE_SIDE, Limits

#: The three model roles; each has its own model id (here) and backend/endpoint (rag.models.remote.settings).
Role = Literal["embedder", "reranker", "generator"]
ROLES: tuple[Role, ...] = ("embedder", "reranker", "generator")

#: One image/video token covers a 32×32 patch (patch 16, spatial merge 2).
PIXELS_PER_TOKEN = 32 * 32


class VisionBudget(BaseSettings):
    """Pixel and frame budgets; the defaults are the official Qwen3-VL-Embedding/Reranker ones."""

    model_config = SettingsConfigDict(env_prefix="RAGVQA_VISION_", extra="ignore")

    min_pixels: int = 4 * PIXELS_PER_TOKEN
    max_pixels: int = 1800 * PIXELS_PER_TOKEN
    video_fps: float = 1.0
    video_max_frames: int = 64
    video_frame_max_pixels: int = 768 * PIXELS_PER_TOKEN
    video_total_pixels: int = 10 * 768 * PIXELS_PER_TOKEN
    #: Images or video frames with a side shorter than this are refused (too small to show a fault; one 32-px cell
    #: is the model's smallest unit, see ``rag.validation.MIN_IMAGE_SIDE``).
    min_image_side: int = Field(default=MIN_IMAGE_SIDE, ge=1)
    # The input caps below default to the validation layer's (``rag.validation.Limits``): written once there.
    #: Images larger than this are refused before decoding (decompression bombs).
    max_image_pixels: int = Limits.max_image_pixels
    #: Files larger than this are refused before they are read whole.
    max_file_bytes: int = Limits.max_file_bytes
    #: Longest video accepted, seconds.
    max_video_seconds: float = Limits.max_video_seconds
    #: Most frames a video may have (decoding cost of absurd frame rates).
    max_video_frames: int = Limits.max_video_frames

    def limits(self) -> Limits:
        """The validation layer's caps as this budget sets them (the other caps keep their defaults)."""
        return Limits(max_file_bytes=self.max_file_bytes, max_image_pixels=self.max_image_pixels,
                      max_video_seconds=self.max_video_seconds, max_video_frames=self.max_video_frames)


class RoleSettings(BaseModel):
    """What the main settings say about one model role (``RAGVQA_<ROLE>_MODEL``), read by :meth:`Settings.role`."""

    model_config = ConfigDict(frozen=True)

    role: Role
    #: Hub id or local path of the checkpoint (for a model server: the default served-model name).
    model: str


def check_role(name: str) -> Role:
    """``name`` as a :data:`Role`, or a clear error naming the choices."""
    for role in ROLES:
        if name == role:
            return role
    raise ValueError(f"unknown model role {name!r}; choose from {', '.join(ROLES)}")


class StoreConfig(BaseModel):
    """Every vector-store option, each default written here once (like qdrant-client's typed configs).

    Built once from :class:`Settings` (:meth:`from_settings`, whose ``RAGVQA_*`` fields take these defaults) and
    passed whole to ``rag.store.open_store`` and to the Edge and server stores.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: The Edge store lives under ``data_dir/qdrant``.
    data_dir: Path = Path("data")
    #: A Qdrant server instead of Edge; ``qdrant_location`` (``":memory:"`` or a path) is qdrant-client local mode,
    #: for tests only.
    qdrant_url: str | None = None
    qdrant_api_key: str | None = None
    qdrant_location: str | None = None
    qdrant_collection: str = "ragvqa"
    #: Cluster layout used when the collection is created on a server (distributed mode).
    qdrant_shard_number: int = Field(default=1, ge=1)
    qdrant_replication_factor: int = Field(default=1, ge=1)
    qdrant_write_consistency_factor: int = Field(default=1, ge=1)
    qdrant_on_disk_payload: bool = True
    qdrant_timeout: int | None = None
    #: int8 scalar quantization with rescoring: measured recall@10 ≥ 0.996 and ≈1 ms p50 at 100k×1024.
    store_quantization: bool = True
    store_hnsw_ef: int | None = 128
    store_hnsw_m: int = 16
    store_hnsw_ef_construct: int = 100
    store_oversampling: float = 2.0
    #: Vectors' KB below which a filter is brute-forced via the payload index (2000 = 500 vectors of 1024-d).
    store_full_scan_threshold_kb: int = 2000
    #: ACORN fixes filtered recall too but costs 2–3× filtered latency here; the lower full-scan threshold is cheaper.
    store_acorn: bool = False
    #: Vector KB a segment needs before the optimizer builds its HNSW and int8 index (None: Qdrant's default, many
    #: MB). Smaller stores are searched by exact float scans, so the eval sweep sets 1 to measure the built index.
    store_indexing_threshold_kb: int | None = None

    @classmethod
    def from_settings(cls, settings: "Settings") -> "StoreConfig":
        return cls.model_validate({k: getattr(settings, k) for k in cls.model_fields if hasattr(settings, k)})


_STORE = StoreConfig()


class Settings(BaseSettings):
    """Everything a deployment may want to change."""

    model_config = SettingsConfigDict(env_prefix="RAGVQA_", env_file=".env", extra="ignore")

    embedder_model: str = "Qwen/Qwen3-VL-Embedding-2B"
    reranker_model: str = "Qwen/Qwen3-VL-Reranker-2B"
    generator_model: str = "Qwen/Qwen3-VL-2B-Instruct"

    device: str = "auto"
    #: ``auto``: bf16 on CUDA and on CPUs with native bf16 (AMX / AVX512-BF16); elsewhere float32 per role while it fits
    #: in memory (bf16 is emulated there, ≈5× slower), bf16 for the roles that do not fit (rag.models.loading).
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    #: ``int8``: dynamic int8 linear layers for the local roles that run in float32 on CPU (rag.models.quant);
    #: ``none`` keeps float weights. Quality cost and speed: ``ragvqa bench query --quantize int8 --compare``.
    cpu_quantization: Literal["none", "int8"] = "none"
    #: ``auto`` picks flash_attention_2 when it is installed and the device is CUDA, else sdpa.
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"

    embed_dim: int | None = Field(default=None, description="MRL dimension; None keeps the full vector.")
    #: None = by device: 1 on CPU (padding forces masked attention, measured ≈1.8× slower at 8), 8 on CUDA.
    embed_batch_size: int | None = None
    #: Documents per reranker forward after the shared prefix; None = 4 on CPU, 16 on CUDA.
    rerank_batch_size: int | None = None

    data_dir: Path = Path("data")

    # -- vector store (rag/store): Qdrant Edge under data_dir unless a server URL is given ----------------------
    #: Defaults and meaning: :class:`StoreConfig` (``store_config()`` builds it from these fields).
    qdrant_url: str | None = _STORE.qdrant_url
    qdrant_api_key: str | None = _STORE.qdrant_api_key
    qdrant_collection: str = _STORE.qdrant_collection
    qdrant_shard_number: int = _STORE.qdrant_shard_number
    qdrant_replication_factor: int = _STORE.qdrant_replication_factor
    qdrant_write_consistency_factor: int = _STORE.qdrant_write_consistency_factor
    qdrant_on_disk_payload: bool = _STORE.qdrant_on_disk_payload
    qdrant_timeout: int | None = _STORE.qdrant_timeout
    store_quantization: bool = _STORE.store_quantization
    store_hnsw_ef: int | None = _STORE.store_hnsw_ef
    store_hnsw_m: int = _STORE.store_hnsw_m
    store_hnsw_ef_construct: int = _STORE.store_hnsw_ef_construct
    store_oversampling: float = _STORE.store_oversampling
    store_full_scan_threshold_kb: int = _STORE.store_full_scan_threshold_kb
    store_acorn: bool = _STORE.store_acorn
    store_indexing_threshold_kb: int | None = _STORE.store_indexing_threshold_kb

    def store_config(self) -> StoreConfig:
        """The store options of these settings, as the one object the store takes."""
        return StoreConfig.from_settings(self)

    # -- pipeline (rag/pipeline) ----------------------------------------------------------------------------------
    retrieve_top_k: int = 20
    rerank_top_n: int = 5
    rerank_enabled: bool = True
    #: Adaptive rerank depth: rerank only the retrieved cases within this cosine margin of the best one (at least
    #: rerank_top_n); None reranks all retrieve_top_k. Measured offline with `ragvqa bench rerank-depth` (README).
    rerank_adaptive_margin: float | None = Field(default=None, ge=0.0)
    #: Below this best reranker score the app abstains (no diagnosis, only "possibly related" cases).
    abstain_rerank_threshold: float = 0.5
    #: Used instead when reranking is off: best cosine similarity of the query to a case.
    abstain_retrieval_threshold: float = 0.35
    max_new_tokens: int = 512
    temperature: float = 0.0
    #: Token budget for earlier turns of a conversation (oldest turns are dropped first).
    history_token_budget: int = 2048
    #: How many case images go into the generator prompt (each costs hundreds of tokens).
    context_case_images: int = 3

    vision: VisionBudget = Field(default_factory=VisionBudget)
    #: Query-time image cap (rag.models.budgets): ``auto`` = 256 vision tokens per image where a role runs on a CPU,
    #: the official budget on CUDA and servers; ``official``; or a pixel count. Ingestion keeps the official budget.
    query_max_pixels: int | Literal["auto", "official"] = "auto"

    def role(self, name: Role) -> RoleSettings:
        """The settings of one model role, typed (``RAGVQA_<ROLE>_MODEL``)."""
        models = {"embedder": self.embedder_model, "reranker": self.reranker_model, "generator": self.generator_model}
        role = check_role(name)
        return RoleSettings(role=role, model=models[role])

    @field_validator("query_max_pixels")
    @classmethod
    def _check_query_pixels(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 4 * PIXELS_PER_TOKEN:
            raise ValueError(f"query_max_pixels must be at least {4 * PIXELS_PER_TOKEN} (4 vision tokens), or 'auto' / "
                             f"'official'; got {v}")
        return v

    @field_validator("embed_dim")
    @classmethod
    def _check_dim(cls, v: int | None) -> int | None:
        if v is not None and v < 64:
            raise ValueError(f"embed_dim must be at least 64 (Matryoshka prefixes below 64 are not trained), got {v}")
        return v


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached: read the environment once)."""
    return Settings()
