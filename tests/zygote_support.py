"""A zygote for SIGKILL tests: one helper process loads torch and the tiny embedder once, then forks a fresh child per
job (starting Python + torch + the model for each kill would dominate the run).

A test module supplies the child's code (``BODY``: a ``child(job, started_w)`` that installs its kill point, writes
``b"S"`` to ``started_w`` once it starts the work, and does it; optionally a ``watch(job, pid, started)`` that kills
from outside and returns the wait status, or None to wait normally). The zygote prints ``READY``, then for each JSON
job line on stdin forks, runs ``child`` and prints ``{"rc": <exit code>}`` (-9 for SIGKILL); an exception in the
child is appended to ``job["log"]`` as ``ERROR …`` and exits 3.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

_PRELUDE = '''
import json, os, random, signal, sys, time
from pathlib import Path
sys.path[:0] = [{root!r}, {tests!r}]
import torch
torch.set_num_threads(1)  # no thread pool exists before fork(): children stay safe
from rag.models.embedder import Embedder

emb = Embedder.from_pretrained(sys.argv[1], dtype="float32", device="cpu")


def die():
    os.kill(os.getpid(), signal.SIGKILL)
'''

_LOOP = '''

def serve(child, watch=None):
    print("READY", flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                child(job, w)
                os._exit(0)
            except BaseException as e:
                open(job["log"], "a").write(f"ERROR {type(e).__name__}: {e}\\n")
                os._exit(3)
        os.close(w)
        started = os.read(r, 1) == b"S"
        os.close(r)
        status = watch(job, pid, started) if watch is not None else None
        if status is None:
            _, status = os.waitpid(pid, 0)
        print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)


serve(child, globals().get("watch"))
'''


class Zygote:
    """The helper process running ``body`` (see the module docstring); ``run(job)`` returns the child's exit code."""

    def __init__(self, workdir: Path, tiny_model_dir: Path, body: str) -> None:
        script = workdir / "zygote.py"
        script.write_text(_PRELUDE.format(root=str(ROOT), tests=str(ROOT / "tests")) + textwrap.dedent(body) + _LOOP)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
               "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, str(script), str(tiny_model_dir)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=env)
        assert self.proc.stdout is not None and self.proc.stdin is not None
        line = self.proc.stdout.readline()
        assert line.strip() == "READY", line

    def run(self, job: dict[str, Any]) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        return int(json.loads(self.proc.stdout.readline())["rc"])

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
