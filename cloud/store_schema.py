"""The coordinator store's tables as SQLAlchemy Core objects (what the queries in :mod:`cloud.store` use).

The same tables on SQLite and PostgreSQL. JSON documents (run configs, counters, round records,
capabilities) are kept as TEXT exactly as ``json.dumps`` wrote them, so a record reads back as it was
written on either back end. Times are Unix seconds (double precision); byte counts are 64-bit integers.

The DDL that creates and changes these tables lives in the Alembic migrations
(``cloud/migrations/versions``), never here: a new column means a new migration *and* an edit here.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Double, Index, Integer, MetaData, Table, Text

metadata = MetaData()

runs = Table(
    "runs", metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("config", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("started_at", Double),
    Column("finished_at", Double),
    Column("error", Text),
    Column("model_round", Integer),
    Column("counters", Text, nullable=False, server_default="{}"),
)

rounds = Table(
    "rounds", metadata,
    Column("run_id", Text, primary_key=True),
    Column("round", Integer, primary_key=True),
    Column("record", Text, nullable=False),
    # copies of record fields, for queries that must not parse JSON (migration 0002)
    Column("closed_at", Double),
    Column("upload_bytes", BigInteger),
    Column("download_bytes", BigInteger),
    Column("accuracy", Double),
)

device_errors = Table(
    "device_errors", metadata,
    Column("device_id", Text, nullable=False),
    Column("run_id", Text, nullable=False),
    Column("round", Integer, nullable=False),
    Column("code", Text, nullable=False),
    Column("detail", Text, nullable=False),
    Column("at", Double, nullable=False),
    Index("device_errors_by_device", "device_id", "at"),
)

devices = Table(
    "devices", metadata,
    Column("id", Text, primary_key=True),
    Column("capabilities", Text, nullable=False, server_default="{}"),
    Column("sample_count", Integer, nullable=False, server_default="0"),
    Column("state", Text, nullable=False, server_default="offline"),
    Column("last_seen", Double, nullable=False, server_default="0"),
    Column("rounds_done", Integer, nullable=False, server_default="0"),
    Column("bytes_up", BigInteger, nullable=False, server_default="0"),
    Column("bytes_down", BigInteger, nullable=False, server_default="0"),
)

enrollments = Table(
    "enrollments", metadata,
    Column("device_id", Text, primary_key=True),
    Column("device_key", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("enrolled_at", Double, nullable=False),
    Column("revoked_at", Double),
)

enrollment_generation = Table(
    "enrollment_generation", metadata,  # one row (id 1): bumped with every change to enrollments (migration 0003)
    Column("id", Integer, primary_key=True),
    Column("generation", BigInteger, nullable=False),
)

device_sequences = Table(
    "device_sequences", metadata,
    Column("device_id", Text, primary_key=True),
    Column("last_seq", Text, nullable=False),  # u64 as decimal text (BIGINT is signed)
    Column("will_seq", Text, nullable=False, server_default="0"),
    Column("will_used", Integer, nullable=False, server_default="0"),
)

RUN_TABLES = (rounds, device_errors)
"""Tables keyed by ``run_id`` whose rows go with the run (``delete_run``)."""
