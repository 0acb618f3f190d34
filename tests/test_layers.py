"""The one-way layers ui → eval → knowledge_base → rag, checked by import-linter's contract in pyproject.toml.

Runs ``lint-imports`` as a subprocess on this checkout, and once on a copy with an upward import planted, so a
contract that stopped checking anything (renamed packages, a dropped section) fails here too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("rag", "knowledge_base", "eval", "ui")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the packages under ``root`` (they shadow any installed copy), without a cache file."""
    exe = Path(sys.executable).with_name("lint-imports")
    cmd = [str(exe)] if exe.exists() else [shutil.which("lint-imports") or "lint-imports"]
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([*cmd, "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_layers_contract_is_kept() -> None:
    r = lint_imports(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Contracts: 2 kept, 0 broken" in r.stdout, r.stdout


def test_an_upward_import_breaks_the_contract(tmp_path: Path) -> None:
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    assert lint_imports(tmp_path).returncode == 0, "the copy itself is clean"
    victim = tmp_path / "rag" / "config.py"
    victim.write_text(victim.read_text() + "\nfrom eval import metrics as _upward  # planted\n")
    r = lint_imports(tmp_path)
    assert r.returncode != 0, r.stdout
    assert "BROKEN" in r.stdout and "rag.config -> eval.metrics" in r.stdout, r.stdout


def test_ingest_importing_the_facade_breaks_the_contract(tmp_path: Path) -> None:
    """The admin↔ingest cycle stays gone: ingestion gets an ``IngestContext``, never the ``KnowledgeBase``
    (even a type-only import counts: that is how the cycle used to look)."""
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    victim = tmp_path / "knowledge_base" / "ingest.py"
    planted = ("\nfrom typing import TYPE_CHECKING as _TC  # planted\n"
               "if _TC:\n    from knowledge_base.kb import KnowledgeBase as _KB  # noqa: F401\n")
    victim.write_text(victim.read_text() + planted)
    r = lint_imports(tmp_path)
    assert r.returncode != 0, r.stdout
    assert "BROKEN" in r.stdout and "knowledge_base.ingest -> knowledge_base.kb" in r.stdout, r.stdout
