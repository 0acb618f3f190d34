"""Skip policy of the suite: in CI (``CI`` set and not false/0/no) a skipped test or module is a failure, unless it
skipped because no Qdrant server URL was given (``RAGVQA_QDRANT_URL``), the one thing CI does not provide.

Why: every dependency is pinned and installed by ``bash .ci/dev``; a skip there means something is missing (a client
library, Playwright, Chromium) and a whole suite silently stopped proving anything. Deselection (``-m "not slow"``)
is not a skip and is untouched. Locally skips stay skips (``-ra`` lists them). Loaded by ``tests/conftest.py``;
``tests/test_skip_policy.py`` runs it on a scratch suite so it cannot rot silently.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

#: A skip whose reason contains this is allowed in CI (tests that need a Qdrant server).
ALLOWED_SKIP = "RAGVQA_QDRANT_URL"


def enforced() -> bool:
    """Whether skips fail the run: ``CI`` is set to anything but an empty/false value."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off")


def _reason(longrepr: Any) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, lineno, "Skipped: reason")
        return str(longrepr[2])
    return str(longrepr)


def _fail(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not report.skipped or hasattr(report, "wasxfail") or not enforced():
        return
    reason = _reason(report.longrepr)
    if ALLOWED_SKIP in reason:
        return
    report.outcome = "failed"
    report.longrepr = (f"skipped in CI, which fails the run: {reason}\n(only tests that need {ALLOWED_SKIP} may skip; "
                       "install what is missing with `bash .ci/dev`)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    _fail(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, None]:
    outcome = yield
    _fail(outcome.get_result())
