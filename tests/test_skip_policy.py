"""The skip policy (tests/skip_policy.py): under LIGHTNING_HPO_REQUIRE_SERVICES=1 a skip
that is not allow-listed fails the run; elsewhere skips stay skips."""

from __future__ import annotations

import pytest
from skip_policy import ALLOWED_SKIPS, ENV

ALLOWED = next(iter(ALLOWED_SKIPS))

TESTS = f"""
import pytest

def test_passes():
    pass

def test_skips_unlisted():
    pytest.skip("no database here")

@pytest.mark.skipif(True, reason="runs as root")
def test_skipif_unlisted():
    pass

def test_skips_allowed():
    pytest.skip({ALLOWED!r})

@pytest.fixture
def service():
    pytest.skip("service down")

def test_fixture_skips_unlisted(service):
    pass

@pytest.mark.xfail(strict=True, reason="a known bug")
def test_known_bug():
    assert False
"""


@pytest.fixture
def inner(pytester: pytest.Pytester):
    pytester.makepyfile(test_inner=TESTS)
    return pytester


def test_ci_fails_on_every_skip_that_is_not_allowed(inner, monkeypatch) -> None:
    monkeypatch.setenv(ENV, "1")
    result = inner.runpytest("-p", "skip_policy", "-rA")
    # The unlisted skip in a test fails it; a skipif mark and a fixture skip in setup, which errors.
    result.assert_outcomes(passed=1, skipped=1, failed=1, errors=2, xfailed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    text = result.stdout.str()
    for reason in ("no database here", "runs as root", "service down"):
        assert f"unexpected skip: {reason!r}" in text


def test_without_the_ci_setting_skips_stay_skips(inner, monkeypatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    result = inner.runpytest("-p", "skip_policy")
    result.assert_outcomes(passed=1, skipped=4, xfailed=1)
    assert result.ret == pytest.ExitCode.OK


def test_a_module_skipped_at_collection_fails_too(pytester: pytest.Pytester, monkeypatch) -> None:
    pytester.makepyfile(test_gone='import pytest\npytest.importorskip("no_such_module_anywhere")\n')
    monkeypatch.setenv(ENV, "1")
    result = pytester.runpytest("-p", "skip_policy")
    assert result.ret != pytest.ExitCode.OK
    assert "unexpected skip" in result.stdout.str()


def test_every_allowed_skip_says_why() -> None:
    assert ALLOWED_SKIPS and all(len(why) > 20 for why in ALLOWED_SKIPS.values())
