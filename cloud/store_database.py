"""Opening the coordinator's database: the URL, the engine, the schema migrations and their check.

Two back ends, chosen by the ``database_url`` setting:

* none (default): SQLite, ``<state_dir>/coordinator.sqlite3`` (mode 0600: it holds device keys), in WAL
  mode with ``synchronous=FULL`` (a committed transaction survives a power cut); write transactions take
  the write lock up front (``BEGIN IMMEDIATE``, waiting up to 30 s for another process's writer); reads
  are single statements in autocommit mode;
* ``postgresql+psycopg://USER[:PASSWORD]@HOST[:PORT]/DB`` (``postgresql://`` means the same: psycopg 3);
  ``?options=-csearch_path%3DSCHEMA`` puts the tables in another schema. ``sqlite:///PATH`` is accepted too.

:func:`open_database` connects, refuses a schema newer than the code (:class:`DatabaseSchemaError`),
then upgrades the schema to the newest revision with Alembic (``cloud/migrations``), in one transaction
(on PostgreSQL under an advisory lock, so two processes starting together do not both migrate). Every
failure is one line naming ``database_url`` and what to do.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from cloud.errors import CoordinatorError

SQLITE_FILE_NAME = "coordinator.sqlite3"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_S = 30.0
MIGRATION_LOCK_KEY = 0x46454444  # pg_advisory_xact_lock key while migrating ("FEDD")
WRITE = "feddst_write"
"""Execution option of a connection whose transactions write (SQLite: ``BEGIN IMMEDIATE``)."""
SETTING_HINT = "database_url (flag --database-url, env FEDDST_CLOUD_DATABASE_URL)"


def _migration_steps_only(record: logging.LogRecord) -> bool:
    """Alembic's INFO lines worth a coordinator log: the migrations it runs (not its set-up chatter)."""
    return record.levelno >= logging.WARNING or record.getMessage().startswith(("Running upgrade",
                                                                                "Running downgrade"))


logging.getLogger("alembic.runtime.migration").addFilter(_migration_steps_only)
logging.getLogger("alembic.runtime.plugins").addFilter(_migration_steps_only)


class DatabaseError(CoordinatorError):
    """The database cannot be used: unreachable, a bad URL, or a schema this code does not know."""

    http_status = 503


class DatabaseUnavailableError(DatabaseError):
    """No connection (server down, wrong host/port/user/database, unreadable file) or a bad URL."""


class DatabaseSchemaError(DatabaseError):
    """The database's schema revision is not one of this code's migrations (written by newer code)."""


def database_url(state_dir: Path, url: str | None) -> URL:
    """The SQLAlchemy URL for ``url`` (None: SQLite in ``state_dir``); ``postgresql://`` becomes psycopg 3.

    Raises :class:`DatabaseUnavailableError` for a URL that is not SQLite or PostgreSQL."""
    if url is None:
        return URL.create("sqlite", database=str(Path(state_dir) / SQLITE_FILE_NAME))
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseUnavailableError(f"{SETTING_HINT} {url!r} is not a database URL ({exc}); use "
                                       "postgresql+psycopg://USER@HOST:PORT/DATABASE or sqlite:///PATH") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername not in ("postgresql+psycopg", "sqlite", "sqlite+pysqlite"):
        raise DatabaseUnavailableError(f"{SETTING_HINT}: back end {parsed.drivername!r} is not supported; use "
                                       "postgresql+psycopg://USER@HOST:PORT/DATABASE or sqlite:///PATH")
    return parsed


def shown_url(url: URL) -> str:
    """The URL for messages and logs (password masked)."""
    return url.render_as_string(hide_password=True)


def open_database(state_dir: Path, url: str | None) -> Engine:
    """An engine on the coordinator's database with its schema at the newest revision.

    Raises :class:`DatabaseUnavailableError` or :class:`DatabaseSchemaError` (one-line messages)."""
    target = database_url(state_dir, url)
    engine = _sqlite_engine(target) if target.get_backend_name() == "sqlite" else _postgresql_engine(target)
    try:
        migrate(engine)
    except DatabaseError:
        engine.dispose()
        raise
    except SQLAlchemyError as exc:
        engine.dispose()
        raise DatabaseUnavailableError(f"{SETTING_HINT} {shown_url(target)}: cannot open the database "
                                       f"({_first_line(exc)}); start the database server or fix "
                                       "database_url") from None
    return engine


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(cause).__name__


def _sqlite_engine(url: URL) -> Engine:
    if url.database and url.database != ":memory:":
        path = Path(url.database)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
            os.chmod(path, 0o600)  # it holds the device keys; SQLite gives its -wal/-shm files the same mode
        except OSError as exc:
            raise DatabaseUnavailableError(f"{SETTING_HINT}: cannot create the SQLite file {path} "
                                           f"({exc.strerror}); make its directory writable or set another "
                                           "state_dir") from None
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # pysqlite's own BEGIN handling off: _begin issues it
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        if connection.get_execution_options().get(WRITE):  # reads are single statements: autocommit suffices
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _postgresql_engine(url: URL) -> Engine:
    try:
        # no pool_pre_ping (a round trip per call): a connection the server dropped fails one call, and the
        # pool then discards every connection opened before it
        return create_engine(url, connect_args={"connect_timeout": 10})
    except (ArgumentError, NoSuchModuleError) as exc:
        raise DatabaseUnavailableError(f"{SETTING_HINT} {shown_url(url)}: {exc}") from None


def alembic_config() -> Config:
    """Alembic's configuration for the store's migrations (no ini file: the scripts are in the package)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    """The newest schema revision this code knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revisions(connection: Connection) -> tuple[str, ...]:
    """The revision(s) recorded in the database (empty: a new database or one from before migrations)."""
    return MigrationContext.configure(connection).get_current_heads()


def migrate(engine: Engine) -> None:
    """Check the database's revision, then upgrade it to :func:`head_revision` (one transaction).

    Raises :class:`DatabaseSchemaError` if the database records a revision this code does not know."""
    config = alembic_config()
    script = ScriptDirectory.from_config(config)
    known = {revision.revision for revision in script.walk_revisions()}
    with engine.connect().execution_options(**{WRITE: True}) as connection, connection.begin():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        unknown = [revision for revision in current_revisions(connection) if revision not in known]
        if unknown:
            raise DatabaseSchemaError(
                f"{SETTING_HINT} {shown_url(engine.url)}: the database schema is at revision {unknown[0]}, newer "
                f"than this coordinator's newest ({script.get_current_head()}); it was written by a newer "
                "feddst-edge: upgrade this installation, or point database_url at another database")
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
