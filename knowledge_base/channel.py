"""The CLI side of the local admin channel (the app side is ``ui.control``): find the app serving a data dir and have
it run a ``ragvqa kb`` command, streaming its output and exit code back.

Here, below ``ui``, because ``knowledge_base.cli`` routes every command through it before opening anything, and
borrows the app's open knowledge base (:data:`SERVED_KB`) when the app runs the command.

Files in the data dir, written by the serving app: ``.ragvqa-control.json`` (pid, loopback port, start time) and
``.ragvqa-control.token`` (a random secret, mode 0600: only the owner of the data dir, and root, can use the
channel).
"""

from __future__ import annotations

import contextvars
import http.client
import json
import os
import select
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from knowledge_base.media_store import pid_alive

if TYPE_CHECKING:
    from knowledge_base.kb import KnowledgeBase

__all__ = ["CONTROL_FILE", "KB_PATH", "MAX_STDIN", "SERVED_KB", "TOKEN_FILE", "TOKEN_HEADER", "ControlInfo",
           "KbRequest", "find_running_app", "route_kb_command"]

CONTROL_FILE = ".ragvqa-control.json"
TOKEN_FILE = ".ragvqa-control.token"
TOKEN_HEADER = "X-Ragvqa-Token"
KB_PATH = "/v1/kb"
#: Piped stdin forwarded to the app (``yes | ragvqa kb delete …``); more is refused.
MAX_STDIN = 1 << 20



class ControlInfo(BaseModel):
    """What ``.ragvqa-control.json`` says about the serving app."""

    pid: int
    port: int
    host: str = "127.0.0.1"
    started_at: float


class KbRequest(BaseModel):
    argv: list[str]
    cwd: str
    actor: str = Field(description="Who runs it, recorded in the audit log: cli:<os user>.")
    stdin: str = ""
    #: The caller's terminal width (None: not a terminal), so tables are laid out as they would be run alone.
    columns: int | None = None


#: The app's open knowledge base while a routed command runs (read by ``knowledge_base.cli``).
SERVED_KB: contextvars.ContextVar[KnowledgeBase | None] = contextvars.ContextVar("ragvqa_served_kb", default=None)


# -- the client ---------------------------------------------------------------------------------------------------
def find_running_app(data_dir: Path) -> tuple[ControlInfo, str] | None:
    """(control info, token) of the app serving ``data_dir``, or None when none runs (stale files are ignored)."""
    try:
        info = ControlInfo.model_validate_json((data_dir / CONTROL_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not pid_alive(info.pid):
        return None
    try:
        token = (data_dir / TOKEN_FILE).read_text().strip()
    except PermissionError:
        raise PermissionError(f"the app serving {data_dir} (pid {info.pid}) runs as another user: cannot read "
                              f"{data_dir / TOKEN_FILE}; run the command as that user") from None
    except OSError:
        return None
    return info, token


def _data_dir_of(argv: list[str]) -> Path:
    from rag.cli_settings import cli_settings

    given: Path | None = None
    for i, a in enumerate(argv):
        if a == "--data-dir" and i + 1 < len(argv):
            given = Path(argv[i + 1])
        elif a.startswith("--data-dir="):
            given = Path(a.split("=", 1)[1])
    return Path(cli_settings(given).data_dir)


def _piped_stdin(idle_s: float = 0.2) -> str:
    """What is piped into the CLI (``yes | ragvqa kb delete X``), read until EOF or ``idle_s`` without data, so a
    caller that leaves an idle pipe open does not hang the command; "" for a terminal."""
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):
        return ""
    if os.isatty(fd):
        return ""
    chunks: list[bytes] = []
    total = 0
    while total < MAX_STDIN:
        try:
            ready, _, _ = select.select([fd], [], [], idle_s)
            if not ready:
                break
            data = os.read(fd, 65536)
        except (OSError, ValueError):
            break
        if not data:
            break
        chunks.append(data)
        total += len(data)
    return b"".join(chunks).decode("utf-8", errors="replace")


def route_kb_command(argv: list[str]) -> int | None:
    """Run ``ragvqa kb <argv>`` through the app serving its data dir; None when no app serves it (run locally).

    Streams the app's stdout/stderr to ours and returns the command's exit code.
    """
    from knowledge_base.audit import os_actor

    if not argv or "--help" in argv or SERVED_KB.get() is not None:
        return None
    data_dir = _data_dir_of(argv)
    found = find_running_app(data_dir)
    if found is None:
        return None
    info, token = found
    stdin = _piped_stdin()
    columns = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
    req = KbRequest(argv=argv, cwd=os.getcwd(), actor=os_actor(), stdin=stdin, columns=columns)
    conn = http.client.HTTPConnection(info.host, info.port, timeout=None)
    try:
        conn.request("POST", KB_PATH, body=req.model_dump_json().encode(),
                     headers={"Content-Type": "application/json", TOKEN_HEADER: token})
        resp = conn.getresponse()
    except OSError as e:
        if isinstance(e, ConnectionRefusedError):
            return None  # the app is stopping or gone: the store is (about to be) free
        raise
    try:
        if resp.status != 200:
            body = resp.read().decode(errors="replace")
            sys.stderr.write(f"ragvqa: the app serving {data_dir} (pid {info.pid}) refused the command: "
                             f"{resp.status} {body}\n")
            return 1
        code: int | None = None
        for raw in resp:
            msg = json.loads(raw)
            if "out" in msg:
                sys.stdout.write(msg["out"])
                sys.stdout.flush()
            elif "err" in msg:
                sys.stderr.write(msg["err"])
                sys.stderr.flush()
            elif "exit" in msg:
                code = int(msg["exit"])
        if code is None:
            sys.stderr.write(f"ragvqa: the app serving {data_dir} (pid {info.pid}) closed the connection before the "
                             f"command finished\n")
            return 1
        return code
    finally:
        conn.close()
