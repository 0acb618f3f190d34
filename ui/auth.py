"""Admin authentication for the Gradio app, enforced on the server inside every admin handler.

Why not rely on hiding endpoints: every Gradio event is callable over HTTP (``/gradio_api/queue/join`` with a
``fn_index``), whatever ``api_visibility`` says, because the browser itself calls them that way. So:

* the login handler checks the credentials (constant-time) and puts a signed, expiring token into a ``gr.State``;
  State values live in the server-side session and are never sent to the browser or an API client;
* every admin handler is wrapped by :func:`admin_only`, which verifies that token (HMAC with a per-process secret,
  expiry, not revoked) before doing anything, and refuses otherwise;
* a fresh session (any API client, any browser tab that did not log in) has no token and is refused;
* failed logins are counted and logins pause after too many (brute-force brake).

A restart rotates the secret and thereby ends all admin sessions.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import inspect
import json
import logging
import secrets
import threading
import time
from collections import deque
from typing import Any, Callable, TypeVar

import gradio as gr

from knowledge_base.audit import acting_as
from rag.errors import UserInputError
from ui.i18n import tr

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

NOT_LOGGED_IN = "Admin login required: log in on the Admin tab first."  # the English of ui.auth.not_logged_in


class AuthError(UserInputError):
    """Login refused; the message is safe to show (it never says which part was wrong)."""

    code = "login_refused"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8")).digest()


class AdminAuth:
    """Credential check, signed session tokens and the failed-login brake."""

    def __init__(self, credentials: tuple[str, str] | None, *, session_seconds: int = 8 * 3600,
                 max_failures: int = 5, lockout_seconds: int = 60, secret: bytes | None = None) -> None:
        self._creds = credentials
        self._secret = secret or secrets.token_bytes(32)
        self.session_seconds = session_seconds
        self.max_failures, self.lockout_seconds = max_failures, lockout_seconds
        self._failures: deque[float] = deque()
        self._revoked: set[str] = set()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._creds is not None

    # -- login / logout -----------------------------------------------------------------------------------------
    def login(self, user: str, password: str) -> str:
        """A session token for valid credentials; :class:`AuthError` otherwise."""
        if self._creds is None:
            raise AuthError("Admin is disabled on this server (set RAGVQA_ADMIN_USER and RAGVQA_ADMIN_PASSWORD "
                            "or RAGVQA_ADMIN_PASSWORD_FILE).", code="admin_disabled")
        now = time.time()
        with self._lock:
            while self._failures and now - self._failures[0] > self.lockout_seconds:
                self._failures.popleft()
            if len(self._failures) >= self.max_failures:
                raise AuthError(f"Too many failed logins; try again in {self.lockout_seconds} s.", code="login_locked",
                                params={"seconds": self.lockout_seconds})
        exp_user, exp_pw = self._creds
        # Compare digests so neither the length nor the content leaks through timing; check both always.
        ok_user = hmac.compare_digest(_digest(user or ""), _digest(exp_user))
        ok_pw = hmac.compare_digest(_digest(password or ""), _digest(exp_pw))
        if not (ok_user and ok_pw):
            with self._lock:
                self._failures.append(now)
            logger.warning("admin login failed for user %r", (user or "")[:64])
            raise AuthError("Wrong user name or password.", code="login_refused")
        logger.info("admin %r logged in", exp_user)
        return self._issue(exp_user, now)

    def _issue(self, user: str, now: float) -> str:
        body = _b64(json.dumps({"u": user, "exp": int(now + self.session_seconds), "n": secrets.token_hex(8)}).encode())
        sig = _b64(hmac.new(self._secret, body.encode(), hashlib.sha256).digest())
        return f"{body}.{sig}"

    def logout(self, token: str | None) -> None:
        claims = self._claims(token)
        if claims is not None:
            with self._lock:
                self._revoked.add(claims["n"])

    # -- verification -------------------------------------------------------------------------------------------
    def _claims(self, token: Any) -> dict[str, Any] | None:
        if not isinstance(token, str) or token.count(".") != 1:
            return None
        body, sig = token.split(".")
        good = _b64(hmac.new(self._secret, body.encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(sig, good):
            return None
        try:
            claims = json.loads(_unb64(body))
        except (ValueError, UnicodeDecodeError):
            return None
        return claims if isinstance(claims, dict) else None

    def verify(self, token: Any) -> str | None:
        """The admin user name for a valid, unexpired, not revoked token; else None."""
        if self._creds is None:
            return None
        claims = self._claims(token)
        if claims is None or claims.get("exp", 0) < time.time() or claims.get("n") in self._revoked:
            return None
        return str(claims.get("u"))

    def require(self, token: Any) -> str:
        user = self.verify(token)
        if user is None:
            raise gr.Error(tr("ui.auth.not_logged_in"), title=tr("ui.auth.not_authorised"))
        return user


def admin_only(auth: AdminAuth) -> Callable[[F], F]:
    """Wrap an admin handler whose FIRST parameter is the session token (a ``gr.State``); refuse without a valid one.

    Works for plain and generator handlers; the wrapped signature is kept so Gradio still injects
    ``gr.Progress``/``gr.Request`` parameters.
    """

    def deco(fn: F) -> F:
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def gen_wrapper(token: Any, *args: Any, **kwargs: Any) -> Any:
                user = auth.require(token)
                logger.debug("admin %s: %s", user, fn.__name__)
                gen = fn(token, *args, **kwargs)
                while True:  # each step may run on another worker thread: the audit actor is set per step
                    with acting_as(user):
                        try:
                            item = next(gen)
                        except StopIteration as stop:
                            return stop.value
                    yield item

            return gen_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(token: Any, *args: Any, **kwargs: Any) -> Any:
            user = auth.require(token)
            logger.debug("admin %s: %s", user, fn.__name__)
            with acting_as(user):  # changes are audited as this admin's (knowledge_base.audit)
                return fn(token, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return deco
