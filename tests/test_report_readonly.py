"""`tune.py report` creates nothing in the storage it reads: no file, table or version stamp.

Optuna's RDBStorage creates its tables and stamps alembic's version in any database it is
given, so a report pointed at the wrong (empty) database used to turn it into an Optuna
one. Each test here gives the report a database it must refuse, with one line on stderr and
exit status 2, and checks afterwards that the database holds exactly what it held before.
PostgreSQL, MariaDB/MySQL and Redis come from tests/services.py (skipped with the reason
when missing, failed under LIGHTNING_HPO_REQUIRE_SERVICES=1); studies are made with
Optuna's API directly, so nothing here trains.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial
from services import mysql_url, optimize_yaml, postgres_url, redis_url  # noqa: F401 - fixtures

from lightning_hpo.cli import report_main
from lightning_hpo.config.yamlio import dump_yaml
from lightning_hpo.storage.connect import redact

optuna.logging.set_verbosity(optuna.logging.ERROR)

STUDY = "wanted"
RUN = {
    "project": "ReadOnlyTest",
    "device": "cpu",
    "seeds": [7],
    "epochs": 3,
    "batch_size": 64,
    "data_config": {"n": 100},
    "net_config": {"nodes": 8, "layers": 1, "activation": "GELU"},
}
SERVERS = ["postgres_url", "mysql_url"]


@pytest.fixture
def configs(tmp_path: Path) -> list[str]:
    """The report's config options for a study named STUDY, plots off."""
    run, opt = tmp_path / "run.yaml", tmp_path / "optimize.yaml"
    dump_yaml(RUN, run)
    opt.write_text(optimize_yaml(STUDY))
    return [
        "--run-config",
        str(run),
        "--optimize-config",
        str(opt),
        "--output",
        str(tmp_path / "runs"),
        "--no-plots",
    ]


def call(argv: list[str]) -> tuple[int, str, str]:
    """``report_main(argv)`` with its stdout and stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = report_main(argv)
    return code, out.getvalue(), err.getvalue()


def refused(argv: list[str]) -> str:
    """The one stderr line of a report that must exit 2 and print nothing else."""
    code, out, err = call(argv)
    assert code == 2 and out == "", (code, out, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def snapshot(url: str) -> dict[str, list[str]]:
    """Every table of the database at ``url`` and its rows, read without writing."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            tables = sqlalchemy.inspect(conn).get_table_names()
            return {
                t: sorted(
                    map(
                        repr,
                        conn.execute(
                            sqlalchemy.select(sqlalchemy.text("*")).select_from(sqlalchemy.table(t))
                        ),
                    )
                )
                for t in tables
            }
    finally:
        engine.dispose()


def add_study(url: str, name: str, trials: int = 0) -> None:
    """A study named ``name`` with ``trials`` complete trials over the config's lr."""
    study = optuna.create_study(study_name=name, storage=url)
    lr = FloatDistribution(1.0e-4, 1.0e-2, log=True)
    for i in range(trials):
        value = 0.5 - 0.1 * i
        study.add_trial(
            create_trial(
                params={"optimizer_config_lr": 10 ** (-3.5 + 0.5 * i)},
                distributions={"optimizer_config_lr": lr},
                value=value,
                intermediate_values={0: value + 0.1, 1: value},
            )
        )


def with_password(url: str, password: str) -> str:
    """``url`` with ``password`` for its user (PostgreSQL's trust auth ignores it)."""
    scheme, _, rest = url.partition("://")
    user, _, host = rest.partition("@")
    return f"{scheme}://{user}:{password}@{host}"


# --------------------------------------------------------------------------- database servers


@pytest.mark.parametrize("server", SERVERS)
def test_empty_database_is_refused_and_stays_empty(
    server: str, configs: list[str], request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue(server)
    assert snapshot(url) == {}
    err = refused([*configs, "--storage", url])
    assert redact(url) in err and "not an Optuna study database" in err and "studies" in err
    assert "--storage the study was created with" in err
    assert snapshot(url) == {}, "the report created tables"


def test_password_is_never_printed(postgres_url: str, configs: list[str]) -> None:  # noqa: F811 - fixture
    url = with_password(postgres_url, "s3cret-pw")
    err = refused([*configs, "--storage", url])
    assert "s3cret-pw" not in err and redact(url) in err and ":***@" in err
    assert snapshot(postgres_url) == {}


@pytest.mark.parametrize("server", SERVERS)
def test_missing_study_lists_the_others_and_changes_nothing(
    server: str, configs: list[str], request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue(server)
    add_study(url, "other", trials=1)
    add_study(url, "another")
    before = snapshot(url)
    err = refused([*configs, "--storage", url])
    assert STUDY in err and redact(url) in err and "studies there: another, other" in err
    assert snapshot(url) == before


@pytest.mark.parametrize("server", SERVERS)
def test_half_made_database_is_refused_untouched(
    server: str, configs: list[str], request: pytest.FixtureRequest
) -> None:
    # Optuna's tables without its version stamp (create_all, then a crash): RDBStorage's
    # version manager would insert the version row and the alembic stamp.
    import sqlalchemy
    from optuna.storages._rdb import models

    url = request.getfixturevalue(server)
    engine = sqlalchemy.create_engine(url)
    models.BaseModel.metadata.create_all(engine)
    engine.dispose()
    before = snapshot(url)
    err = refused([*configs, "--storage", url])
    assert "alembic_version" in err and "a row in version_info" in err
    assert snapshot(url) == before


@pytest.mark.parametrize("server", SERVERS)
def test_report_of_an_existing_study_changes_nothing(
    server: str, configs: list[str], request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue(server)
    add_study(url, STUDY, trials=3)
    before = snapshot(url)
    code, out, err = call([*configs, "--storage", url, "--json"])
    assert code == 0, err
    report = json.loads(out)
    assert (
        report["study"] == STUDY
        and report["counts"]["COMPLETE"] == 3
        and report["storage"] == redact(url)
    )
    assert snapshot(url) == before


# --------------------------------------------------------------------------- Redis journal


def test_redis_journal_without_the_study(redis_url: str, configs: list[str]) -> None:  # noqa: F811 - fixture
    import redis

    client = redis.Redis.from_url(redis_url[len("journal+") :])
    keys = sorted(client.keys("*"))  # the fixture's claim on the database index
    err = refused([*configs, "--storage", redis_url])
    assert STUDY in err and "it holds no studies" in err and redact(redis_url) in err
    assert sorted(client.keys("*")) == keys
    client.close()


# --------------------------------------------------------------------------- SQLite


def test_sqlite_without_optuna_tables_stays_byte_identical(
    tmp_path: Path, configs: list[str]
) -> None:
    import sqlite3

    path = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE notes (body TEXT)")
        db.execute("INSERT INTO notes VALUES ('keep me')")
        db.commit()
    before = path.read_bytes()
    err = refused([*configs, "--storage", f"sqlite:///{path}"])
    assert "not an Optuna study database" in err and str(path) in err
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("other.db")) == [
        "other.db"
    ], "no journal or WAL file either"


def test_empty_sqlite_file_stays_empty(tmp_path: Path, configs: list[str]) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    err = refused([*configs, "--storage", f"sqlite:///{path}"])
    assert "not an Optuna study database" in err
    assert path.stat().st_size == 0


def test_sqlite_missing_study_stays_byte_identical(tmp_path: Path, configs: list[str]) -> None:
    path = tmp_path / "study.db"
    add_study(f"sqlite:///{path}", "other", trials=1)
    before = path.read_bytes()
    err = refused([*configs, "--storage", f"sqlite:///{path}"])
    assert "studies there: other" in err
    assert path.read_bytes() == before


def test_sqlite_report_leaves_the_file_byte_identical(tmp_path: Path, configs: list[str]) -> None:
    path = tmp_path / "study.db"
    add_study(f"sqlite:///{path}", STUDY, trials=3)
    before = path.read_bytes()
    code, out, err = call([*configs, "--storage", f"sqlite:///{path}", "--json"])
    assert code == 0, err
    assert json.loads(out)["counts"]["COMPLETE"] == 3
    assert path.read_bytes() == before
