"""The real PostgreSQL server for tests: one throw-away schema per store, dropped at the end of the session.

The server is ``FEDDST_TEST_DATABASE_URL`` if set, else ``postgresql+psycopg://postgres@127.0.0.1:5432/test``
(trust auth). A store is pointed at its schema with ``?options=-csearch_path%3D<schema>``, so its tables
and its ``alembic_version`` live there and nothing else in the database is touched. Nothing is mocked.
"""

from __future__ import annotations

import hashlib
import os
import secrets

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

DEFAULT_SERVER_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
SCHEMA_PREFIX = f"feddst_test_{os.getpid()}_{secrets.token_hex(3)}_"
_created: list[str] = []


def server_url() -> str:
    return os.environ.get("FEDDST_TEST_DATABASE_URL") or DEFAULT_SERVER_URL


def coordinator_tests_use_postgresql() -> bool:
    """True when ``FEDDST_TEST_DATABASE_URL`` is set: coordinators made by the test harness use PostgreSQL."""
    return bool(os.environ.get("FEDDST_TEST_DATABASE_URL"))


def unavailable_reason() -> str | None:
    """Why PostgreSQL tests cannot run here (None: the server answers a query)."""
    try:
        engine = create_engine(server_url(), connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except SQLAlchemyError as exc:
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        return f"no PostgreSQL server answers at {server_url()} ({first[0] if first else exc}); " \
               "set FEDDST_TEST_DATABASE_URL to one"
    return None


def schema_url(schema: str) -> str:
    """The server URL with ``search_path`` set to ``schema`` (which must exist)."""
    url = make_url(server_url()).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


def new_schema(key: str | None = None) -> str:
    """Create a schema (named from ``key`` if given, so the same key gets the same schema) and return a
    database URL whose tables live in it. Every schema made here is dropped by :func:`drop_schemas`."""
    suffix = hashlib.sha1(key.encode()).hexdigest()[:12] if key is not None else secrets.token_hex(6)
    schema = SCHEMA_PREFIX + suffix
    engine = create_engine(server_url(), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    engine.dispose()
    if schema not in _created:
        _created.append(schema)
    return schema_url(schema)


def drop_schemas() -> None:
    """Drop every schema :func:`new_schema` created in this process."""
    if not _created:
        return
    engine = create_engine(server_url(), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        for schema in _created:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()
    _created.clear()
