"""What the remote embedder and reranker share: one vLLM pooling server, chat ``messages`` with data-URL media."""

from __future__ import annotations

from typing import Any, Callable, ClassVar

from rag.config import VisionBudget
from rag.models.remote.http import HttpEndpoint, RemoteError
from rag.models.remote.media import ImageFormat, WireMessage

#: HTTP statuses that mean "this item cannot be used" (too long, unreadable media), not "the server is broken".
ITEM_ERROR_STATUSES = frozenset({400, 413, 422})


class PoolingClient:
    """Endpoint, served model name, pixel budget and media encoding of a vLLM ``--runner pooling`` model."""

    #: The official instruction of the model, used when none is given.
    DEFAULT_INSTRUCTION: ClassVar[str] = ""

    def __init__(self, endpoint: HttpEndpoint, model: str, *, name: str | None = None,
                 budget: VisionBudget | None = None, default_instruction: str | None = None,
                 max_concurrency: int = 8, image_format: ImageFormat = "png", max_upload_bytes: int = 64 << 20,
                 mm_processor_kwargs: dict[str, Any] | None = None) -> None:
        self.endpoint = endpoint
        self.model = model
        #: Identity of the model's outputs (for the embedder, StoreMeta.embedder_id): the model id, as locally.
        self.name = name or model
        self.budget = budget or VisionBudget()
        self.default_instruction = self.DEFAULT_INSTRUCTION if default_instruction is None else default_instruction
        self.max_concurrency = max_concurrency
        self.image_format: ImageFormat = image_format
        self.max_upload_bytes = max_upload_bytes
        self.mm_processor_kwargs = mm_processor_kwargs

    def payload(self, messages: list[WireMessage], **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "add_generation_prompt": True, **extra}
        if self.mm_processor_kwargs:
            body["mm_processor_kwargs"] = self.mm_processor_kwargs
        return body

    def post(self, path: str, body: dict[str, Any], refused: Callable[[RemoteError], Exception]) -> Any:
        """POST ``body``; a status that blames the item is raised as ``refused(error)`` (naming the item)."""
        try:
            return self.endpoint.post_json(path, body)
        except RemoteError as e:
            if e.status in ITEM_ERROR_STATUSES:
                raise refused(e) from e
            raise

    def close(self) -> None:
        self.endpoint.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model!r} at {self.endpoint.base_url})"
