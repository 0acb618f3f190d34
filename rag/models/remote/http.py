"""HTTP transport to a model server: retries with backoff, server-sent events, errors that name the endpoint.

Inference requests have no side effects, so a request that failed before any answer arrived (connection refused,
HTTP 429/5xx) is retried; a read timeout is not (a slow server would just be loaded twice as much), and a stream is
never retried once its first byte was received (the caller may already have shown part of the answer).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Generator, Iterator
from typing import Any

import httpx

from rag.errors import RagvqaError

logger = logging.getLogger(__name__)

#: Statuses worth another attempt: overload (429) and server-side failures (5xx, except "not implemented").
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class RemoteError(RagvqaError, RuntimeError):
    """A model server failed or refused a request; the message names the endpoint and the HTTP status."""

    code = "remote_failed"

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url, self.status = url, status


class RemoteTimeoutError(RemoteError):
    """The server accepted the connection but did not answer (or stopped streaming) within the timeout."""


class RemoteUnavailableError(RemoteError):
    """The server could not be reached at all (after the configured retries)."""


def normalise_base_url(url: str) -> str:
    """``http://h:8000``, ``http://h:8000/`` and ``http://h:8000/v1`` all mean the same server."""
    url = url.strip().rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _validation_errors(detail: list[Any]) -> str:
    """FastAPI/pydantic request-validation errors (``[{"loc": ["body", "messages"], "msg": "Field required"}]``) as
    ``body.messages: Field required; ...``, the field named, not a repr of the list."""
    out = []
    for d in detail:
        if isinstance(d, dict) and d.get("msg"):
            loc = ".".join(str(x) for x in d.get("loc") or [])
            out.append(f"{loc}: {d['msg']}" if loc else str(d["msg"]))
        else:
            out.append(str(d))
    return "; ".join(out)


def error_message(response: httpx.Response) -> str:
    """The server's own explanation: OpenAI ``{"error": {"message"}}``, vLLM's older ``{"object": "error",
    "message"}``, FastAPI ``{"detail": str | [validation errors]}``; else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300].strip() or response.reason_phrase
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:500]
        detail = body.get("detail")
        if isinstance(detail, list) and detail:
            return _validation_errors(detail)[:500]
        for key in ("message", "detail", "error"):
            if body.get(key):
                return str(body[key])[:500]
    return json.dumps(body)[:300]


class HttpEndpoint:
    """One model server: a pooled ``httpx.Client`` plus the retry policy. Thread-safe (one client, many threads)."""

    def __init__(
        self,
        base_url: str,
        *,
        role: str = "model",
        api_key: str | None = None,
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
        retries: int = 2,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        verify: bool = True,
        max_connections: int = 32,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = normalise_base_url(base_url)
        self.role = role
        self.timeout = timeout
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        headers = {"Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            headers=headers,
            verify=verify,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport,
        )

    def url(self, path: str) -> str:
        return self.base_url + path

    # -- retry policy -------------------------------------------------------------------------------------------
    def _delay(self, attempt: int, response: httpx.Response | None = None) -> float:
        delay = min(self.max_backoff_s, self.backoff_s * (2.0**attempt))  # float power: int**int is Any in typeshed
        if response is not None:
            retry_after = response.headers.get("retry-after")
            if retry_after:
                try:
                    delay = min(self.max_backoff_s, max(0.0, float(retry_after)))
                except ValueError:  # an HTTP date: keep our own backoff
                    pass
        return delay * random.uniform(0.9, 1.1)

    def _retry_or_raise(self, attempt: int, url: str, exc: Exception) -> None:
        """Sleep before the next attempt, or raise the error that ends the request."""
        if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
            raise RemoteTimeoutError(
                f"{self.role} server at {url} did not answer within {self.timeout:g} s "
                f"({type(exc).__name__}); raise RAGVQA_{self.role.upper()}_TIMEOUT or check the server's load",
                url=url,
            ) from exc
        if attempt >= self.retries:
            raise RemoteUnavailableError(
                f"cannot reach the {self.role} server at {url} after {attempt + 1} attempt(s): "
                f"{type(exc).__name__}: {exc}",
                url=url,
            ) from exc
        delay = self._delay(attempt)
        logger.warning("%s server %s: %s; retrying in %.2f s (%d/%d)", self.role, url, type(exc).__name__, delay,
                       attempt + 1, self.retries)
        time.sleep(delay)

    def _status_error(self, url: str, response: httpx.Response) -> RemoteError:
        return RemoteError(
            f"{self.role} server at {url} answered HTTP {response.status_code}: {error_message(response)}",
            url=url,
            status=response.status_code,
        )

    def _should_retry_status(self, attempt: int, url: str, response: httpx.Response) -> bool:
        if response.status_code not in RETRY_STATUSES or attempt >= self.retries:
            return False
        delay = self._delay(attempt, response)
        logger.warning("%s server %s answered HTTP %d; retrying in %.2f s (%d/%d)", self.role, url,
                       response.status_code, delay, attempt + 1, self.retries)
        time.sleep(delay)
        return True

    # -- requests -----------------------------------------------------------------------------------------------
    def post_json(self, path: str, payload: dict[str, Any]) -> Any:
        """POST JSON, return the decoded JSON answer (retrying per the policy above)."""
        url = self.url(path)
        attempt = 0
        while True:
            try:
                response = self._client.post(url, json=payload)
            except httpx.TransportError as e:
                self._retry_or_raise(attempt, url, e)
                attempt += 1
                continue
            if self._should_retry_status(attempt, url, response):
                attempt += 1
                continue
            if response.status_code >= 400:
                raise self._status_error(url, response)
            try:
                return response.json()
            except ValueError as e:
                raise RemoteError(f"{self.role} server at {url} answered with invalid JSON: {response.text[:200]!r}",
                                  url=url, status=response.status_code) from e

    def stream_events(self, path: str, payload: dict[str, Any]) -> Generator[dict[str, Any], None, None]:
        """POST and yield the JSON ``data:`` events of a server-sent-event stream until ``[DONE]``.

        Retries only happen before the response is accepted (status < 400 and streaming); afterwards any transport
        failure raises :class:`RemoteError` saying the stream broke.
        """
        url = self.url(path)
        attempt = 0
        while True:
            started = False
            try:
                with self._client.stream("POST", url, json=payload, headers={"Accept": "text/event-stream"}) as response:
                    if response.status_code >= 400:
                        response.read()
                        if self._should_retry_status(attempt, url, response):
                            attempt += 1
                            continue
                        raise self._status_error(url, response)
                    started = True
                    yield from self._events(url, response)
                    return
            except httpx.TransportError as e:
                if started:
                    if isinstance(e, httpx.TimeoutException):
                        raise RemoteTimeoutError(
                            f"{self.role} server at {url} stopped streaming for more than {self.timeout:g} s "
                            "(not retried: part of the answer was already received)", url=url) from e
                    raise RemoteError(f"stream from the {self.role} server at {url} broke after it started "
                                      f"({type(e).__name__}: {e}); not retried", url=url) from e
                self._retry_or_raise(attempt, url, e)
                attempt += 1

    def _events(self, url: str, response: httpx.Response) -> Iterator[dict[str, Any]]:
        data: list[str] = []
        for line in response.iter_lines():
            if line.startswith(":"):
                continue  # SSE comment / keep-alive
            if line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
                continue
            if line.strip() or not data:
                continue  # "event:", "id:", "retry:" fields, or stray blank lines
            text, data = "\n".join(data), []
            if text.strip() == "[DONE]":
                return
            yield self._decode_event(url, text)
        if data and "\n".join(data).strip() != "[DONE]":
            yield self._decode_event(url, "\n".join(data))

    def _decode_event(self, url: str, text: str) -> dict[str, Any]:
        try:
            event = json.loads(text)
        except ValueError as e:
            raise RemoteError(f"{self.role} server at {url} sent an unreadable event: {text[:200]!r}", url=url) from e
        if not isinstance(event, dict):  # every OpenAI stream event is a JSON object
            raise RemoteError(f"{self.role} server at {url} sent an event that is not a JSON object: {text[:200]!r}", url=url)
        # vLLM reports a failure inside the stream as an error event: ``{"error": {...}}``, or in older versions the
        # bare ErrorResponse ``{"object": "error", "message": ..., "code": ...}``.
        err: Any = None
        if event.get("error"):
            err = event["error"]
        elif event.get("object") == "error":
            err = event
        if err is not None:
            msg = err.get("message") if isinstance(err, dict) else err
            raise RemoteError(f"{self.role} server at {url} failed mid-stream: {msg}", url=url,
                              status=err.get("code") if isinstance(err, dict) and isinstance(err.get("code"), int) else None)
        return event

    def close(self) -> None:
        self._client.close()

    def __repr__(self) -> str:
        return f"HttpEndpoint({self.role}, {self.base_url})"


__all__ = [
    "HttpEndpoint",
    "RETRY_STATUSES",
    "RemoteError",
    "RemoteTimeoutError",
    "RemoteUnavailableError",
    "error_message",
    "normalise_base_url",
]
