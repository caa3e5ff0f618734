"""Database services for the reliability and scale tests, and the tune.py helpers they share.

Each service fixture gives a test its own, empty place and removes it afterwards:

- ``postgres_url``: a fresh PostgreSQL database (``postgresql://...``).
- ``mysql_url``: a fresh MariaDB/MySQL database (``mysql+pymysql://...``).
- ``redis_url``: an empty Redis database index (``journal+redis://...``), flushed after.

A service that cannot be reached skips the test with the reason ("PostgreSQL not
reachable at 127.0.0.1:5432"). CI sets ``LIGHTNING_HPO_REQUIRE_SERVICES=1``: the same
problem then fails the test, so a missing service never passes CI unnoticed.

A plain ``postgresql://`` means psycopg 3 under SQLAlchemy >= 2.1; where only psycopg2 is
installed the URL names it (``postgresql+psycopg2://``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TUNE = REPO / "tune.py"
TRAIN = REPO / "train.py"

PG_HOST, PG_PORT = (
    os.environ.get("LIGHTNING_HPO_PG_HOST", "127.0.0.1"),
    int(os.environ.get("LIGHTNING_HPO_PG_PORT", "5432")),
)
MYSQL_HOST, MYSQL_PORT = (
    os.environ.get("LIGHTNING_HPO_MYSQL_HOST", "127.0.0.1"),
    int(os.environ.get("LIGHTNING_HPO_MYSQL_PORT", "3306")),
)
REDIS_HOST, REDIS_PORT = (
    os.environ.get("LIGHTNING_HPO_REDIS_HOST", "127.0.0.1"),
    int(os.environ.get("LIGHTNING_HPO_REDIS_PORT", "6379")),
)


def services_required() -> bool:
    return os.environ.get("LIGHTNING_HPO_REQUIRE_SERVICES") == "1"


def unavailable(reason: str) -> None:
    """Skip the test, or fail it when CI requires the services."""
    if services_required():
        pytest.fail(f"{reason} (LIGHTNING_HPO_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(reason)


def _reachable(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _driver(module: str, service: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        unavailable(f"{service} driver {module} is not installed (pip install -e '.[test]')")


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


# --------------------------------------------------------------------------- services


def postgres_scheme() -> str:
    """The URL scheme for the installed PostgreSQL driver."""
    return _postgres_driver()[1]


def _postgres_driver():
    """(module, URL scheme) of the installed PostgreSQL driver: psycopg 3, which a plain
    ``postgresql://`` means under SQLAlchemy >= 2.1, else psycopg2 named explicitly."""
    import importlib

    for module, scheme in (("psycopg", "postgresql"), ("psycopg2", "postgresql+psycopg2")):
        try:
            return importlib.import_module(module), scheme
        except ImportError:
            continue
    unavailable("no PostgreSQL driver is installed (pip install -e '.[test]')")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A URL to a fresh PostgreSQL database, dropped after the test."""
    if not _reachable(PG_HOST, PG_PORT):
        unavailable(f"PostgreSQL not reachable at {PG_HOST}:{PG_PORT}")
    driver, scheme = _postgres_driver()
    name = _unique("lhpo_test")
    try:
        admin = driver.connect(
            host=PG_HOST, port=PG_PORT, user="postgres", dbname="postgres", connect_timeout=5
        )
    except driver.Error as exc:
        unavailable(
            f"PostgreSQL at {PG_HOST}:{PG_PORT} refused user postgres ({str(exc).strip().splitlines()[0]})"
        )
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{scheme}://postgres@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def mysql_url() -> Iterator[str]:
    """A URL to a fresh MariaDB/MySQL database, dropped after the test."""
    if not _reachable(MYSQL_HOST, MYSQL_PORT):
        unavailable(f"MariaDB/MySQL not reachable at {MYSQL_HOST}:{MYSQL_PORT}")
    pymysql = _driver("pymysql", "MariaDB/MySQL")
    name = _unique("lhpo_test")
    try:
        admin = pymysql.connect(
            host=MYSQL_HOST,
            port=MYSQL_PORT,
            user="root",
            password="",
            autocommit=True,
            connect_timeout=5,
        )
    except pymysql.MySQLError as exc:
        unavailable(f"MariaDB/MySQL at {MYSQL_HOST}:{MYSQL_PORT} refused user root ({exc})")
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}`")
    try:
        yield f"mysql+pymysql://root@{MYSQL_HOST}:{MYSQL_PORT}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


CLAIM_KEY = "lightning_hpo_test:claimed"


@pytest.fixture
def redis_url() -> Iterator[str]:
    """``journal+redis://host:port/<n>`` for a Redis database index no one else uses; flushed after.

    Optuna's Redis journal keeps every study of a database in one log, so a test gets a
    whole (empty) database index rather than a key prefix. The index is claimed with a
    SET NX key, so concurrent test runs never share one.
    """
    if not _reachable(REDIS_HOST, REDIS_PORT):
        unavailable(f"Redis not reachable at {REDIS_HOST}:{REDIS_PORT}")
    redis = _driver("redis", "Redis")
    token = uuid.uuid4().hex
    for index in range(15, 0, -1):
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=index, socket_timeout=5)
        if client.dbsize() == 0 and client.set(CLAIM_KEY, token, nx=True, ex=3600):
            break
        client.close()
    else:
        unavailable(f"Redis at {REDIS_HOST}:{REDIS_PORT} has no empty database index to use")
    try:
        yield f"journal+redis://{REDIS_HOST}:{REDIS_PORT}/{index}"
    finally:
        if client.get(CLAIM_KEY) == token.encode():
            client.flushdb()
        client.close()


# --------------------------------------------------------------------------- tune.py helpers


def optimize_yaml(
    study_name: str = "s", trials: int = 3, pruner: str | None = None, extra: str = ""
) -> str:
    """A small optimize config searching the learning rate only."""
    return (
        f"study_name: {study_name}\n"
        f"trials: {trials}\n"
        "seed: 1\n"
        f"pruner: {pruner or 'null'}\n"
        "search_space:\n"
        "  optimizer_config:\n"
        "    lr: {type: float, min: 1.0e-4, max: 1.0e-2, log: true}\n"
        f"{extra}"
    )


def tune_args(run: Path, opt: Path, storage: str, output: Path, *extra: str) -> list[str]:
    """``python tune.py`` with these configs, storage and output folder."""
    return [sys.executable, str(TUNE), *tune_options(run, opt, storage, output, *extra)]


def tune_options(run: Path, opt: Path, storage: str, output: Path, *extra: str) -> list[str]:
    """tune.py's arguments (for ``tune_main``) with these configs, storage and output folder."""
    return [
        "--run-config",
        str(run),
        "--optimize-config",
        str(opt),
        "--storage",
        storage,
        "--output",
        str(output),
        *extra,
    ]


def subprocess_env(*paths: Path) -> dict[str, str]:
    """The environment with ``paths`` (user modules written by a test) on PYTHONPATH."""
    pythonpath = os.pathsep.join(
        [*(str(p) for p in paths), os.environ.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    return {**os.environ, "PYTHONPATH": pythonpath}


def run(
    cmd: list[str], cwd: Path, timeout: float = 180, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def _default_sigint() -> None:
    # A shell starts background jobs with SIGINT ignored, and Python then never raises
    # KeyboardInterrupt; a user's Ctrl-C reaches a foreground process with the default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(
    cmd: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """Start ``cmd`` in the background, stdout and stderr into ``log`` (a pipe could fill up)."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=_default_sigint
        )


def wait_for(
    predicate: Callable[[], object],
    timeout: float,
    what: str,
    proc: subprocess.Popen | None = None,
    log: Path | None = None,
) -> object:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` otherwise.

    When ``proc`` ends first, the test fails at once with its log.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            text = log.read_text(errors="replace") if log else ""
            pytest.fail(f"the process exited ({proc.returncode}) before {what}:\n{text[-3000:]}")
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def open_study(url: str, study_name: str):
    """The study as another process sees it (no heartbeat of its own)."""
    import optuna

    from lightning_hpo.storage.connect import open_storage

    return optuna.load_study(study_name=study_name, storage=open_storage(url, heartbeat=None))


def stop(proc: subprocess.Popen) -> None:
    """Kill a process this test started, if it is still running."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)
