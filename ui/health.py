"""Liveness and readiness, the way orchestrators probe services: ``/healthz`` (the process answers) and ``/readyz``
(models loaded, store open and built by this embedder, sample import finished), both JSON.

Models take minutes to load before the Gradio app can be built, so ``ragvqa serve`` first answers the two probes
from a tiny standard-library server on the app's port (:class:`StartupServer`; every other path gets 503
"starting"), then hands the port to Gradio, whose FastAPI app gets the same two routes (:func:`add_health_routes`).
A store built by another embedder never gets past the start: the startup server keeps answering, not ready, with
the reason (the operator runs ``ragvqa kb reindex`` or fixes the settings), instead of the process exiting in a
restart loop.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from starlette.routing import Route

logger = logging.getLogger(__name__)

__all__ = ["Readiness", "ReadyState", "StartupServer", "health_routes"]


@dataclass(frozen=True)
class ReadyState:
    ready: bool
    #: What the app is doing or why it is not ready ("ready" when it is).
    reason: str
    #: Unix time of the last change.
    since: float

    def to_dict(self) -> dict[str, object]:
        return {"status": "ready" if self.ready else "not ready", "ready": self.ready, "reason": self.reason,
                "since": round(self.since, 3)}


class Readiness:
    """The app's start-up phase, shared by the probes and the code that starts the app (thread-safe).

    ``check`` (set once serving) is asked on every probe once ready, so a store closed or swapped under the app turns
    it not ready again.
    """

    def __init__(self, reason: str = "starting") -> None:
        self._lock = threading.Lock()
        self._state = ReadyState(False, reason, time.time())
        self.check: Callable[[], str | None] | None = None

    def set(self, ready: bool, reason: str) -> None:
        with self._lock:
            self._state = ReadyState(ready, reason, time.time())
        logger.info("readiness: %s (%s)", "ready" if ready else "not ready", reason)

    def state(self) -> ReadyState:
        with self._lock:
            st = self._state
        if st.ready and self.check is not None:
            try:
                problem = self.check()
            except Exception as e:  # noqa: BLE001 - a probe reports any failure as not ready, never crashes
                problem = f"{type(e).__name__}: {e}"
            if problem:
                return ReadyState(False, problem, time.time())
        return st


def health_routes(readiness: Readiness) -> list[Route]:
    """``GET /healthz`` and ``GET /readyz`` for the served app, given to Gradio's FastAPI app at creation (so they
    are first in its route table and exist from its first request). No login: probes carry no credentials and the
    answers hold nothing private."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    headers = {"Cache-Control": "no-store"}

    def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "alive"}, headers=headers)

    def readyz(request: Request) -> JSONResponse:
        st = readiness.state()
        return JSONResponse(st.to_dict(), status_code=200 if st.ready else 503, headers=headers)

    return [Route("/healthz", healthz, methods=["GET"], include_in_schema=False),
            Route("/readyz", readyz, methods=["GET"], include_in_schema=False)]


class _StartupHandler(BaseHTTPRequestHandler):
    server: _StartupHTTPServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._json(200, {"status": "alive"})
        elif path == "/readyz":
            st = self.server.readiness.state()
            self._json(200 if st.ready else 503, st.to_dict())
        else:
            self._json(503, {"status": "starting", "reason": self.server.readiness.state().reason})

    def _json(self, code: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
        logger.debug("startup probe: " + format, *args)


class _StartupHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], readiness: Readiness) -> None:
        self.readiness = readiness
        super().__init__(addr, _StartupHandler)


class StartupServer:
    """The two probes on ``host:port`` while the models load; :meth:`stop` frees the port for the app."""

    def __init__(self, host: str, port: int, readiness: Readiness) -> None:
        self.httpd = _StartupHTTPServer((host, port), readiness)
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="ragvqa-startup-probes", daemon=True)

    def start(self) -> StartupServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)
