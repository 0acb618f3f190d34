"""Where every benchmark writes its result: ``NAME.json`` (the record) and ``NAME.md`` (for people), atomically."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rag.fileio import write_atomic


def write_bench_report(result: Mapping[str, Any], out_dir: str | os.PathLike[str], name: str,
                       markdown: str) -> tuple[Path, Path]:
    """``out_dir/NAME.json`` and ``out_dir/NAME.md``; a crash mid-write leaves the previous files, never half ones."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jpath, mpath = out / f"{name}.json", out / f"{name}.md"
    write_atomic(jpath, json.dumps(result, indent=2) + "\n")
    write_atomic(mpath, markdown)
    return jpath, mpath
