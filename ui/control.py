"""The local admin channel: ``ragvqa kb …`` while ``ragvqa serve`` holds the data dir (Qdrant Edge allows one process
per store, so the CLI cannot open it itself).

The serving app listens on a second, loopback-only port (``127.0.0.1``, chosen by the OS) and writes two files into
the data dir:

* ``.ragvqa-control.json`` (``pid``, ``port``, ``started_at``): how to reach it;
* ``.ragvqa-control.token`` (mode 0600, created so): a random secret, so only the data dir's owner (and root) can
  use the channel.

The CLI (``knowledge_base.channel.route_kb_command``, called by ``knowledge_base.cli`` before any command runs)
finds them, posts its argv, working directory, OS user, terminal width and piped stdin, and replays the streamed
stdout/stderr lines and the exit code.
The app runs the very same typer command in a worker thread against its open ``KnowledgeBase`` (``knowledge_base.cli``
borrows it instead of opening the store), so output, exit codes and new commands stay the same without a second
implementation. Relative paths in the arguments are made absolute against the caller's directory.

How a browser is kept out: the channel is not a Gradio event nor a route of the public app; it listens on
127.0.0.1 only and refuses non-loopback peers; it requires the token in an ``X-Ragvqa-Token`` header (a custom
header: a cross-site ``fetch`` needs a CORS preflight, which this server never grants; a form post cannot set it);
it refuses any request with an ``Origin`` or ``Sec-Fetch-Site`` header (browsers add them, the CLI never does); and
the token is only ever in the 0600 file, never in a page.
"""

from __future__ import annotations

import contextlib
import hmac
import io
import ipaddress
import json
import logging
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, TYPE_CHECKING

from knowledge_base.channel import (
    CONTROL_FILE,
    KB_PATH,
    MAX_STDIN,
    SERVED_KB,
    TOKEN_FILE,
    TOKEN_HEADER,
    ControlInfo,
    KbRequest,
)
from rag.fileio import write_atomic

if TYPE_CHECKING:
    from knowledge_base.kb import KnowledgeBase

logger = logging.getLogger(__name__)

__all__ = ["CONTROL_FILE", "SERVED_KB", "TOKEN_FILE", "ControlInfo", "ControlServer", "KbRequest", "run_kb_argv"]

# -- output routing: the command's thread writes to its caller, every other thread to the real streams ------------
_route: threading.local = threading.local()


class _Routed(io.TextIOBase):
    """A standard stream that belongs to the routed command in the threads running one, else to the process."""

    original: IO[str]

    def _routed(self) -> bool:
        raise NotImplementedError

    def isatty(self) -> bool:
        return False if self._routed() else self.original.isatty()

    def fileno(self) -> int:
        if self._routed():
            raise io.UnsupportedOperation("fileno")
        return self.original.fileno()


class _RoutedOut(_Routed):
    """Installed as ``sys.stdout``/``sys.stderr`` while a channel is open: writes of a thread running a routed
    command go to its caller, all other writes to the original stream."""

    def __init__(self, original: IO[str], name: str) -> None:
        self.original = original
        self.stream_name = name

    def _sink(self) -> Callable[[str, str], None] | None:
        return getattr(_route, "sink", None)

    def _routed(self) -> bool:
        return self._sink() is not None

    def write(self, s: str) -> int:
        if not isinstance(s, str):  # a text stream (click probes binary streams with write(b""))
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        sink = self._sink()
        if sink is None:
            return self.original.write(s)
        sink(self.stream_name, s)
        return len(s)

    def flush(self) -> None:
        if self._sink() is None:
            self.original.flush()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8" if self._sink() is not None else getattr(self.original, "encoding", "utf-8")


class _RoutedIn(_Routed):
    def __init__(self, original: IO[str]) -> None:
        self.original = original

    def _buf(self) -> io.StringIO | None:
        return getattr(_route, "stdin", None)

    def _routed(self) -> bool:
        return self._buf() is not None

    def readline(self, size: int | None = -1) -> str:
        buf = self._buf()
        return self.original.readline(-1 if size is None else size) if buf is None else buf.readline(size)

    def read(self, size: int | None = -1) -> str:
        buf = self._buf()
        return self.original.read(size) if buf is None else buf.read(size)



_installed = 0
_install_lock = threading.Lock()


@contextlib.contextmanager
def _routed_streams() -> Iterator[None]:
    global _installed
    with _install_lock:
        if _installed == 0:
            sys.stdout = _RoutedOut(sys.stdout, "out")  # type: ignore[assignment]
            sys.stderr = _RoutedOut(sys.stderr, "err")  # type: ignore[assignment]
            sys.stdin = _RoutedIn(sys.stdin)  # type: ignore[assignment]
        _installed += 1
    try:
        yield
    finally:
        with _install_lock:
            _installed -= 1
            if _installed == 0:
                for name in ("stdout", "stderr", "stdin"):
                    cur = getattr(sys, name)
                    if isinstance(cur, (_RoutedOut, _RoutedIn)):
                        setattr(sys, name, cur.original)


def _absolute(value: object, cwd: Path) -> object:
    if isinstance(value, Path) and not value.is_absolute():
        return cwd / value
    if isinstance(value, (list, tuple)):
        return type(value)(_absolute(v, cwd) for v in value)
    return value


def _absolutizing(fn: Callable[..., object], cwd: Path) -> Callable[..., object]:
    def call(*args: object, **kwargs: object) -> object:
        return fn(*args, **{k: _absolute(v, cwd) for k, v in kwargs.items()})
    return call


def _main(group: object, argv: list[str], write: Callable[[str, str], None]) -> int:
    try:
        group.main(args=argv, prog_name="ragvqa kb", standalone_mode=True)  # type: ignore[attr-defined]
        return 0
    except SystemExit as e:
        code = e.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except Exception:  # noqa: BLE001 - a crashing command must answer its caller, not kill the channel thread
        import traceback

        write("err", traceback.format_exc())
        return 1


_width_lock = threading.Lock()


@contextlib.contextmanager
def _console_width(columns: int | None) -> Iterator[None]:
    """Lay out ``knowledge_base.cli``'s rich output at the caller's terminal width while its command runs."""
    import knowledge_base.cli as kb_cli

    if not columns:
        yield
        return
    with _width_lock:
        saved = [(c, c._width) for c in (kb_cli.out, kb_cli.err)]
        for c, _ in saved:
            c.width = columns
    try:
        yield
    finally:
        with _width_lock:
            for c, w in saved:
                c._width = w


def run_kb_argv(argv: list[str], cwd: Path, write: Callable[[str, str], None], stdin: str = "",
                columns: int | None = None) -> int:
    """Run ``ragvqa kb <argv>`` in this thread with its output sent to ``write(stream, text)``; returns the exit
    code. The caller sets :data:`SERVED_KB` (and the audit actor)."""
    import typer

    from knowledge_base.cli import kb_app

    group = typer.main.get_command(kb_app)  # a fresh command tree per call: its callbacks may be wrapped
    for cmd in getattr(group, "commands", {}).values():  # path arguments resolved against the caller's cwd
        if cmd.callback is not None:
            cmd.callback = _absolutizing(cmd.callback, cwd)
    _route.sink, _route.stdin = write, io.StringIO(stdin)
    try:
        with _routed_streams(), _console_width(columns):
            return _main(group, argv, write)
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        _route.sink = None
        _route.stdin = None


# -- the server ---------------------------------------------------------------------------------------------------
def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class _Handler(BaseHTTPRequestHandler):
    server: _ControlHTTPServer
    protocol_version = "HTTP/1.0"  # the streamed answer ends when the connection closes

    def _refuse(self, code: int, why: str) -> None:
        data = json.dumps({"error": why}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        logger.warning("admin channel: refused %s %s from %s: %s", self.command, self.path, self.client_address[0], why)

    def do_GET(self) -> None:  # noqa: N802
        self._refuse(405, "POST only")

    def do_OPTIONS(self) -> None:  # noqa: N802 - a CORS preflight: never granted
        self._refuse(403, "no cross-origin access")

    def do_POST(self) -> None:  # noqa: N802
        if not _is_loopback(self.client_address[0]):
            return self._refuse(403, "loopback clients only")
        if self.headers.get("Origin") is not None or self.headers.get("Sec-Fetch-Site") is not None:
            return self._refuse(403, "browser requests are not accepted")
        token = self.headers.get(TOKEN_HEADER, "")
        if not token or not hmac.compare_digest(token.encode(), self.server.token.encode()):
            return self._refuse(401, f"missing or wrong {TOKEN_HEADER} (read it from {TOKEN_FILE} in the data dir)")
        if self.path != KB_PATH:
            return self._refuse(404, "unknown path")
        if self.headers.get_content_type() != "application/json":
            return self._refuse(415, "application/json expected")
        try:
            n = int(self.headers.get("Content-Length", "0"))
            if n > MAX_STDIN + (1 << 16):
                return self._refuse(413, "request too large")
            req = KbRequest.model_validate_json(self.rfile.read(n))
        except ValueError as e:
            return self._refuse(400, f"bad request: {e}")
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.end_headers()
        lock = threading.Lock()

        def write(stream: str, text: str) -> None:
            if not text:
                return
            with lock:
                self.wfile.write((json.dumps({stream: text}) + "\n").encode())
                self.wfile.flush()

        code = self.server.run(req, write)
        with contextlib.suppress(OSError):
            self.wfile.write((json.dumps({"exit": code}) + "\n").encode())

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        logger.debug("admin channel: " + format, *args)


class _ControlHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, token: str, run: Callable[[KbRequest, Callable[[str, str], None]], int]) -> None:
        self.token = token
        self.run = run
        super().__init__(("127.0.0.1", 0), _Handler)


@dataclass
class ControlServer:
    """The channel of one serving app: ``start`` writes the control and token files, ``stop`` removes them."""

    kb: KnowledgeBase
    data_dir: Path
    #: Called after a command that may have changed the knowledge base (the chat's filter cache, metrics).
    on_change: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        self.token = secrets.token_urlsafe(32)
        self.httpd = _ControlHTTPServer(self.token, self._run)
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="ragvqa-admin-channel", daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def _run(self, req: KbRequest, write: Callable[[str, str], None]) -> int:
        from knowledge_base.audit import acting_as

        logger.info("admin channel: %s runs `ragvqa kb %s`", req.actor, " ".join(req.argv))
        tok = SERVED_KB.set(self.kb)
        try:
            with acting_as(req.actor):
                return run_kb_argv(req.argv, Path(req.cwd), write, req.stdin, req.columns)
        finally:
            SERVED_KB.reset(tok)
            if self.on_change is not None:
                try:
                    self.on_change()
                except Exception:  # noqa: BLE001 - a refresh failure must not change the command's exit code
                    logger.exception("refresh after an admin command failed")

    def start(self) -> ControlServer:
        self._thread.start()
        token_path = self.data_dir / TOKEN_FILE
        with contextlib.suppress(FileNotFoundError):
            token_path.unlink()
        fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.token + "\n")
        os.chmod(token_path, 0o600)  # whatever the umask
        info = ControlInfo(pid=os.getpid(), port=self.port, started_at=time.time())
        write_atomic(self.data_dir / CONTROL_FILE, info.model_dump_json() + "\n")
        logger.info("admin channel on 127.0.0.1:%d (token in %s)", self.port, token_path)
        return self

    def stop(self) -> None:
        try:
            info = ControlInfo.model_validate_json((self.data_dir / CONTROL_FILE).read_text())
            if info.pid == os.getpid() and info.port == self.port:
                for name in (CONTROL_FILE, TOKEN_FILE):
                    with contextlib.suppress(FileNotFoundError):
                        (self.data_dir / name).unlink()
        except (OSError, ValueError):
            pass
        self.httpd.shutdown()
        self.httpd.server_close()
