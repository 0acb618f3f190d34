"""The project's error tree: one root, one branch for the user's mistakes.

Why a tree: the UI and the CLIs must tell "your input is wrong, here is why" from "the server failed". Before this
module every ``ValueError`` counted as the user's fault, so a bug deep in the code (a bad shape, a broken
invariant) was shown to the user as if they had caused it. Now:

* :class:`UserInputError` and its subclasses are refusals of what the user gave (a file, a question, a case, a
  login). Their message is written for that user and is shown as is.
* Anything else — :class:`RagvqaError` outside that branch, or any other exception — is a server error: the UI
  logs it and shows a reference id, never the message.

Errors keep their older built-in bases too (``ValueError``, ``KeyError``, ``RuntimeError``) so callers that
catch those keep working. ``code`` is a stable machine-readable name of the rule; ``params`` the values the
message was built from (for logs, API clients and tests that should not parse prose).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

#: JSON-like values an error's parameters may hold.
ParamValue = str | int | float | bool | None

_NO_PARAMS: Mapping[str, ParamValue] = MappingProxyType({})


class RagvqaError(Exception):
    """Root of every error this project raises on purpose."""

    #: Stable name of the rule or failure; subclasses override it, an instance may narrow it.
    code: str = "ragvqa_error"
    #: What the message was built from (read-only; empty unless the raiser gave some).
    params: Mapping[str, ParamValue] = _NO_PARAMS

    def __init__(self, *args: object, code: str | None = None, params: Mapping[str, ParamValue] | None = None) -> None:
        super().__init__(*args)
        if code is not None:
            self.code = code
        if params:
            self.params = MappingProxyType(dict(params))


class UserInputError(RagvqaError):
    """Input refused because of what the user gave; ``str(error)`` is a message for that user."""

    code = "bad_input"


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the user's fault (shown as is) rather than a server error (logged, shown as a reference)."""
    return isinstance(exc, UserInputError)
