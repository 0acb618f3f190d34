"""Query-time pixel budgets by hardware: fewer vision tokens where the models run on a CPU.

A 2B Qwen3-VL forward on a 2-core CPU costs ≈30 ms per token, and a 1280×960 photo is 1200 vision tokens at the
official budget, so the photo alone is half a minute per model that sees it. ``RAGVQA_QUERY_MAX_PIXELS=auto`` caps
what the *query-time* work sees on a CPU — the query photo (for all three roles) and every image the reranker and the
generator read (case photos, PDF pages, video frames) — at :data:`CPU_QUERY_MAX_PIXELS`; on CUDA and on model servers
the official budgets stay. Ingestion (the embedder's case vectors) always keeps the official budget, so the
knowledge base does not depend on where it was built. The resize is the official one (qwen-vl-utils
``fetch_image``) at a smaller ``max_pixels``; its quality cost is measured by ``ragvqa bench query --compare``.
"""

from __future__ import annotations

from typing import Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict

from rag.config import PIXELS_PER_TOKEN, VisionBudget

__all__ = ["CPU_QUERY_MAX_PIXELS", "QueryBudget", "RunsOn", "choose_query_budget", "fit_image", "query_time_budget",
           "runs_on_device"]

#: 256 vision tokens at most per image on a CPU (a 1280×960 photo: 1200 → 234 tokens, ≈5× less vision work).
CPU_QUERY_MAX_PIXELS = 256 * PIXELS_PER_TOKEN
#: Where a role runs: a local device, or a model server (whose own budget applies).
RunsOn = Literal["cpu", "cuda", "remote"]
QueryPixelsSetting = int | Literal["auto", "official"]


class QueryBudget(BaseModel):
    """The query-time image cap chosen for one role, and why (logged at start-up, shown by ``ragvqa doctor``)."""

    model_config = ConfigDict(frozen=True)

    #: Most pixels per image at query time; None keeps the role's official budget.
    max_pixels: int | None
    reason: str


def runs_on_device(device: str) -> RunsOn:
    """A local torch device (``cpu``, ``cuda``, ``cuda:1``; resolved, not ``auto``) as a :data:`RunsOn`."""
    return "cuda" if str(device).startswith("cuda") else "cpu"


def choose_query_budget(setting: QueryPixelsSetting, runs_on: RunsOn) -> QueryBudget:
    """``auto``: :data:`CPU_QUERY_MAX_PIXELS` on a CPU, the official budget on CUDA or a server; ``official``: always
    the official budget; a number: that cap wherever the role runs locally."""
    if runs_on == "remote":
        return QueryBudget(max_pixels=None, reason="model server: its own (official) budget")
    if setting == "official":
        return QueryBudget(max_pixels=None, reason="official budget (RAGVQA_QUERY_MAX_PIXELS=official)")
    if isinstance(setting, int):
        return QueryBudget(max_pixels=setting, reason=f"set by RAGVQA_QUERY_MAX_PIXELS ({setting // PIXELS_PER_TOKEN} "
                                                      "vision tokens per image)")
    if runs_on == "cpu":
        return QueryBudget(max_pixels=CPU_QUERY_MAX_PIXELS,
                           reason=f"CPU: at most {CPU_QUERY_MAX_PIXELS // PIXELS_PER_TOKEN} vision tokens per query-time "
                                  "image (official: 1800); ≈30 ms per token on a 2-core CPU")
    return QueryBudget(max_pixels=None, reason="CUDA: official budget")


def query_time_budget(budget: VisionBudget, choice: QueryBudget) -> VisionBudget:
    """``budget`` with its image and video-frame caps lowered to ``choice`` (the total video budget to 4 such
    frames); unchanged when the choice keeps the official budget or is not lower."""
    cap = choice.max_pixels
    if cap is None:
        return budget
    return budget.model_copy(update={
        "max_pixels": max(budget.min_pixels, min(budget.max_pixels, cap)),
        "video_frame_max_pixels": min(budget.video_frame_max_pixels, cap),
        "video_total_pixels": min(budget.video_total_pixels, 4 * cap),
    })


def fit_image(img: Image.Image, budget: VisionBudget) -> Image.Image:
    """``img`` resized the official way to ``budget``, so every model that later applies the same or a larger budget
    leaves it as it is; ``img`` itself when it is within the budget (the models' own resize only snaps it to the
    32-pixel grid, the same result)."""
    from rag.models.vision import resize_image

    if img.width * img.height <= budget.max_pixels:
        return img
    return resize_image(img, budget.min_pixels, budget.max_pixels)
