"""No silent skips in CI: with ``LIGHTNING_HPO_REQUIRE_SERVICES=1`` (what .ci/run sets) a
skipped test fails, unless its reason is one of ``ALLOWED_SKIPS``.

A skip hides a test as well as a pass does: a test that skips on the CI machine (it runs as
root, a file is missing, a driver is not installed) never runs where it matters. Loaded
from conftest.py as a plugin; ``pytest -p skip_policy`` loads it anywhere else.

Expected failures (``xfail``) are not skips, and tests deselected by ``-m`` never run at all.
"""

from __future__ import annotations

import os

import pytest

# reason given to pytest.skip / skipif  ->  why CI may skip it
ALLOWED_SKIPS: dict[str, str] = {
    "the reference chapter is not on this machine": (
        "test_optimize_config checks its copy of the chapter's YAML block against "
        "/work/shared/reference/hpo-design-chapter.md, which lives outside the repository; "
        "the copy itself is tested everywhere (test_reference_chapter_optimize_yaml_loads)"
    ),
    "psycopg2 is not installed (the test extra installs psycopg 3)": (
        "the psycopg2-only case needs psycopg2, which no extra installs; "
        "the installed-driver case runs everywhere"
    ),
}

ENV = "LIGHTNING_HPO_REQUIRE_SERVICES"


def enforced() -> bool:
    return os.environ.get(ENV) == "1"


def skip_reason(report) -> str:
    """The reason a skipped report gives (``pytest.skip(reason)`` or ``skipif(reason=...)``)."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        reason = str(longrepr[2])
    else:
        reason = str(longrepr)
    return reason.removeprefix("Skipped: ")


def _police(report) -> None:
    if not (enforced() and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = skip_reason(report)
    if reason in ALLOWED_SKIPS:
        return
    report.outcome = "failed"
    report.longrepr = (
        f"unexpected skip: {reason!r}\n"
        f"{ENV}=1 allows only the skips listed in tests/skip_policy.py ALLOWED_SKIPS: "
        "make the test run here, or add its reason there with why CI may skip it"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _police(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _police(outcome.get_result())
