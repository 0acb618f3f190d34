"""Settings of the web app (``RAGVQA_UI_*`` / ``RAGVQA_ADMIN_*``), kept apart from the model/store settings.

Why separate: the serving knobs (queue, host, admin credentials) change per deployment and must never be written
into the repository; the admin password is read from the environment or a secret file only.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

logger = logging.getLogger(__name__)


class UISettings(BaseSettings):
    """Web-app settings. The queue limits protect the models: one generation at a time per GPU is the safe default."""

    model_config = SettingsConfigDict(env_prefix="RAGVQA_UI_", env_file=".env", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 7860
    #: Concurrent runs of the chat event (each holds the models); others wait in the queue.
    concurrency_limit: int = Field(default=1, ge=1)
    #: Requests waiting beyond this are refused with "queue full" instead of piling up.
    queue_max_size: int = Field(default=32, ge=1)
    #: Upload size cap enforced by Gradio before a file reaches a handler.
    max_file_size: str = "200mb"
    #: PDF pages are rendered at this resolution before the pixel budget applies.
    pdf_dpi: int = Field(default=150, ge=36, le=600)
    #: Admin session lifetime.
    admin_session_minutes: int = Field(default=480, ge=1)
    #: Failed logins tolerated per window before logins are paused (brute-force brake).
    admin_max_failures: int = Field(default=5, ge=1)
    admin_lockout_seconds: int = Field(default=60, ge=1)


class AdminCredentials(BaseSettings):
    """``RAGVQA_ADMIN_USER`` + ``RAGVQA_ADMIN_PASSWORD`` or ``RAGVQA_ADMIN_PASSWORD_FILE`` (a mounted secret)."""

    model_config = SettingsConfigDict(env_prefix="RAGVQA_ADMIN_", extra="ignore")

    user: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None

    def resolved(self) -> tuple[str, str] | None:
        """(user, password), or None when admin is not configured (the admin tab then stays locked)."""
        if not self.user:
            return None
        if self.password is not None and self.password.get_secret_value():
            return self.user, self.password.get_secret_value()
        if self.password_file is not None:
            try:
                secret = self.password_file.read_text(encoding="utf-8").strip()
            except OSError as e:
                logger.error("cannot read RAGVQA_ADMIN_PASSWORD_FILE %s: %s", self.password_file, e)
                return None
            if secret:
                return self.user, secret
        logger.warning("RAGVQA_ADMIN_USER is set but no password (RAGVQA_ADMIN_PASSWORD or _FILE): admin disabled")
        return None
