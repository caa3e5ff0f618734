"""Study storage: open any Optuna storage URL safely, and never print its password.

- ``sqlite:///file.db``: the embedded default; a busy timeout rides out concurrent writers.
- ``postgresql://...``, ``mysql+pymysql://...``: any SQLAlchemy URL Optuna's RDBStorage takes.
- ``journal:path/to/study.log``: Optuna's journal file.
- ``journal+redis://host:6379/0``: Optuna's journal on Redis.

RDB storages get a heartbeat: a trial whose worker was killed is marked FAIL and its
parameters retried once.
"""

from __future__ import annotations

import re
import time
import warnings
from pathlib import Path

from lightning_hpo.errors import ConfigError

SQLITE_HEADER = b"SQLite format 3\x00"


# A query parameter whose name holds one of these: ?password=, &sslpassword=, &api_token=...
_QUERY_SECRET = re.compile(
    r"([?&][^=&#]*(?:password|passwd|pwd|secret|token)[^=&#]*=)[^&#]*", re.IGNORECASE
)


def redact(url: str, *, bare: bool = True) -> str:
    """The URL with any password replaced by ``***``: the one after ``user:`` and any query
    parameter named for a secret (``?password=``, ``&sslpassword=``, ``&token=``, as libpq
    and SQLAlchemy drivers accept). ``bare``: also a ``user:password@host`` with no
    ``scheme://`` in front (a mistyped storage URL); off for strings that need not be URLs
    at all, where ``a:b@c`` may be something else."""
    url = _QUERY_SECRET.sub(r"\1***", url)
    scheme, sep, rest = url.partition("://")
    if not sep:
        if not bare:
            return url
        scheme, rest = "", url
    at = rest.rfind("@")  # a password may itself hold '@' or '/'
    if at < 0 or ":" not in rest[:at]:
        return url
    user = rest[:at].split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{rest[at + 1 :]}"


def default_url(project: str) -> str:
    return f"sqlite:///{project}_Opt.db"


def storage_file(url: str) -> Path | None:
    """The file behind a SQLite or journal-file URL, else None."""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :].split("?")[0]
        return None if path in ("", ":memory:") else Path(path)
    if url.startswith("journal:") and not url.startswith("journal+"):
        return Path(url[len("journal:") :])
    return None


def is_journal(url: str) -> bool:
    """Whether ``url`` names a journal storage (a file or Redis), which has no heartbeat and
    no RDB backend for the DDP pruning callback."""
    return url.startswith("journal")


def check_url(url: str, source: str = "--storage") -> None:
    """Cheap checks that need no connection: known scheme, file writable, not corrupt."""
    if not re.match(
        r"^(sqlite|postgresql|postgres|mysql|mariadb|oracle|mssql)(\+\w+)?://|^journal(\+redis)?:",
        url,
    ):
        raise ConfigError(
            source,
            redact(url),
            "unknown storage URL",
            "use sqlite:///file.db, postgresql://user@host/db, journal:file.log or journal+redis://host:6379/0",
        )
    path = storage_file(url)
    if path is None:
        return
    if path.exists():
        if url.startswith("sqlite"):
            with open(path, "rb") as fh:
                header = fh.read(len(SQLITE_HEADER))
            if header and header != SQLITE_HEADER:
                raise ConfigError(
                    source,
                    str(path),
                    "is not an SQLite database (corrupt or another format); it was left untouched",
                    "restore it from a backup or choose another --storage",
                )
        return
    parent = path.absolute().parent
    import os

    existing = next(p for p in (parent, *parent.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            source,
            str(path),
            f"cannot create the study file: {existing} is not writable",
            "choose a writable location with --storage",
        )


def open_storage(
    url: str, *, heartbeat: int | None = 30, source: str = "--storage", read_only: bool = False
):
    """Open ``url`` as an Optuna storage, turning connection failures into ConfigError.

    Args:
        heartbeat: seconds between RDB heartbeats (None or 0: off). A trial silent for
            twice this long is marked FAIL and retried once by the next live worker.
        read_only: open an existing study storage and create nothing: no file, folder,
            table or version stamp. A storage file that is missing, or a database without
            Optuna's tables, is a ConfigError.
    """
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalRedisBackend

    from lightning_hpo.storage.signed import SignedJournalStorage
    from lightning_hpo.storage.stale import LabelledRDBStorage, RetryOnce

    if read_only:
        _require_file(url, source)
    check_url(url, source)
    try:
        if url.startswith("journal+redis:"):
            backend = JournalRedisBackend(url[len("journal+") :])
            backend._redis.ping()
            return SignedJournalStorage(backend)
        if url.startswith("journal:"):
            path = storage_file(url)
            path.parent.mkdir(parents=True, exist_ok=True)
            return SignedJournalStorage(JournalFileBackend(str(path)))
        kwargs = {}
        if url.startswith("sqlite"):
            kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
            if not read_only:
                storage_file(url).parent.mkdir(parents=True, exist_ok=True)
        if read_only:
            # skip_table_creation stops RDBStorage's create_all, but not its version manager,
            # which inserts a version_info row and stamps alembic_version wherever they are
            # missing: so the database must already hold all of them.
            require_optuna_tables(url, source)
            kwargs["skip_table_creation"] = True
        if heartbeat:
            kwargs.update(
                heartbeat_interval=heartbeat,
                grace_period=2 * heartbeat,
                heartbeat_stale_trial_callback=RetryOnce(),
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return _with_retries(lambda: LabelledRDBStorage(url, **kwargs))
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - drivers raise many kinds; all mean "cannot open"
        reason = (
            redact(str(exc).strip().splitlines()[0]) if str(exc).strip() else exc.__class__.__name__
        )
        raise ConfigError(
            source,
            redact(url),
            f"cannot open the storage ({reason})",
            "check the URL, that the server is running, and that the driver is installed",
        ) from None


def open_study(url: str, study_name: str):
    """Load ``study_name`` from ``url`` without creating anything: no study, storage file,
    table or version stamp, whatever database the URL names.

    Raises:
        ConfigError: the storage file is missing, the database holds no Optuna tables,
            or the study is not in it (the message lists the studies that are).
    """
    import optuna

    storage = open_storage(url, heartbeat=None, read_only=True)
    names = sorted(s.study_name for s in storage.get_all_studies())
    if study_name not in names:
        held = f"studies there: {', '.join(names)}" if names else "it holds no studies"
        raise ConfigError(
            "--study-name",
            study_name,
            f"no such study in {redact(url)}",
            f"{held}; pass --study-name",
        )
    return optuna.load_study(
        study_name=study_name,
        storage=storage,
        sampler=optuna.samplers.RandomSampler(),
        pruner=optuna.pruners.NopPruner(),
    )


# What RDBStorage's constructor writes when it is missing, even with skip_table_creation:
# the tables (create_all), a version_info row, and alembic's stamp of the schema version.
OPTUNA_TABLES = ("studies", "version_info", "alembic_version")
STAMPED_TABLES = ("version_info", "alembic_version")


def _require_file(url: str, source: str) -> None:
    """Refuse a SQLite or journal-file URL whose file is missing: opening would create it."""
    path = storage_file(url)
    if path is not None and not path.exists():
        raise ConfigError(
            source,
            redact(url),
            f"no study file at {path}",
            "run tune.py first, or pass the --storage the study was created with",
        )


def require_optuna_tables(url: str, source: str = "--storage") -> None:
    """Refuse an RDB URL whose database lacks Optuna's tables or version stamp.

    Checked by a look that writes nothing, before any RDBStorage exists: its constructor
    would otherwise create the tables and stamp the version in whatever database it is given.
    """
    missing = missing_optuna_tables(url)
    if missing:
        raise ConfigError(
            source,
            redact(url),
            f"is not an Optuna study database (expected Optuna's tables; missing: {', '.join(missing)}); nothing was created in it",
            "pass the --storage the study was created with, or create the study with tune.py",
        )


def missing_optuna_tables(url: str) -> list[str]:
    """Optuna's tables (and version rows) absent from the database at ``url``, read-only."""
    import sqlalchemy

    engine = _inspection_engine(url)
    try:
        with engine.connect() as conn:
            tables = set(sqlalchemy.inspect(conn).get_table_names())
            missing = [name for name in OPTUNA_TABLES if name not in tables]
            missing += [
                f"a row in {name}"
                for name in STAMPED_TABLES
                if name in tables and not _has_row(conn, name)
            ]
            conn.rollback()  # the look opened a transaction; end it without a commit
    finally:
        engine.dispose()
    return missing


def _has_row(conn, table: str) -> bool:
    import sqlalchemy

    return (
        conn.execute(
            sqlalchemy.select(sqlalchemy.literal(1)).select_from(sqlalchemy.table(table)).limit(1)
        ).first()
        is not None
    )


def _inspection_engine(url: str):
    """An engine for a look at ``url``; SQLite files open read-only, so the look can
    neither create the file nor change a byte of it."""
    import sqlite3

    import sqlalchemy

    path = storage_file(url) if url.startswith("sqlite") else None
    if path is None:
        return sqlalchemy.create_engine(url)
    uri = path.absolute().as_uri() + "?mode=ro"
    return sqlalchemy.create_engine(
        "sqlite://", creator=lambda: sqlite3.connect(uri, uri=True, timeout=60)
    )


def _with_retries(open_fn, attempts: int = 5):
    """Workers that start together on an empty database race to create its tables
    (two workers creating one storage's tables at once); the loser's error is transient, so try again."""
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    for attempt in range(attempts):
        try:
            return open_fn()
        except (IntegrityError, ProgrammingError, OperationalError) as exc:
            if (
                attempt == attempts - 1
                or "could not connect" in str(exc)
                or "Connection refused" in str(exc)
                or "unable to open" in str(exc)
            ):
                raise
            time.sleep(0.2 * (attempt + 1))
