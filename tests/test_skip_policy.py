"""The CI skip policy (tests/skip_policy.py) on a scratch suite run by pytest's own ``pytester``: in CI any skip
fails except the Qdrant-server one; deselection is not a skip; locally skips stay skips."""

from __future__ import annotations

import pytest

SCRATCH = '''
import os
import pytest

def test_passes():
    pass

def test_skips_in_body():
    pytest.skip("optional thing missing")

@pytest.mark.skipif(True, reason="RAGVQA_QDRANT_URL not set (no Qdrant server to test)")
def test_needs_server():
    pass

@pytest.mark.skipif(True, reason="some other reason")
def test_skipif_mark():
    pass

@pytest.fixture
def gone():
    pytest.skip("fixture could not set up")

def test_fixture_skip(gone):
    pass

@pytest.mark.slow
def test_deselected_slow():
    pytest.skip("never runs: deselected")

@pytest.mark.xfail(reason="known", strict=True)
def test_xfail():
    assert False
'''
MODULE_SKIP = '''
import pytest
pytest.importorskip("no_such_module_for_skip_policy")

def test_never():
    pass
'''


@pytest.fixture
def scratch(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest("from skip_policy import pytest_make_collect_report, pytest_runtest_makereport\n")
    pytester.makeini("[pytest]\nmarkers =\n    slow: slow\n")
    pytester.makepyfile(test_scratch=SCRATCH, test_module_skip=MODULE_SKIP)
    return pytester


def test_ci_turns_skips_into_failures_except_server_ones(scratch: pytest.Pytester,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    res = scratch.runpytest("-m", "not slow", "-p", "no:cacheprovider", "--continue-on-collection-errors")
    # skips in the body fail the test; skips in setup (skipif marks, fixtures) and at import fail as errors
    res.assert_outcomes(passed=1, failed=1, skipped=1, xfailed=1, errors=3, deselected=1)
    out = res.stdout.str()
    assert "FAILED test_scratch.py::test_skips_in_body" in out
    for name in ("test_skipif_mark", "test_fixture_skip"):
        assert f"ERROR test_scratch.py::{name}" in out
    assert "ERROR test_module_skip.py" in out and "no_such_module_for_skip_policy" in out
    assert "skipped in CI, which fails the run: Skipped: optional thing missing" in out
    assert res.ret == pytest.ExitCode.TESTS_FAILED


@pytest.mark.parametrize("ci", [None, "", "false", "0"])
def test_locally_skips_stay_skips(scratch: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str | None) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    res = scratch.runpytest("-m", "not slow", "-p", "no:cacheprovider")
    res.assert_outcomes(passed=1, skipped=5, xfailed=1, deselected=1)
    assert res.ret == pytest.ExitCode.OK
