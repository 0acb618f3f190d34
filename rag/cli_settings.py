"""Settings for a command-line run, written once for every ``ragvqa`` command group (ui, knowledge_base, eval).

The environment (``RAGVQA_*``) and the defaults come from :class:`rag.config.Settings`; a command adds only the
options its user gave (``None`` means "not given"). ``--models tiny`` (offline random weights) always runs on the
CPU in float32, whatever the environment says.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from rag.config import Settings

__all__ = ["MODELS", "check_models", "cli_settings"]

Models = Literal["real", "tiny"]
#: What ``--models`` accepts.
MODELS: tuple[Models, ...] = ("real", "tiny")


def check_models(models: str) -> Models:
    """``--models`` as the factory's choice, or a usage error (exit 2) naming the allowed values."""
    for choice in MODELS:
        if models == choice:
            return choice
    raise typer.BadParameter(f"--models must be 'real' or 'tiny', got {models!r}")


def cli_settings(data_dir: Path | None = None, *, models: str | None = None,
                 **overrides: str | int | float | bool | Path | None) -> Settings:
    """``Settings`` from the environment plus the given options; ``models``: checked, and "tiny" pins CPU/float32."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if data_dir is not None:
        given["data_dir"] = data_dir
    if models is not None and check_models(models) == "tiny":
        given.update(device="cpu", dtype="float32")
    return Settings(**given)  # type: ignore[arg-type]
