"""Rounds: ``closed_at``, ``upload_bytes``, ``download_bytes``, ``accuracy`` as columns, filled from the records.

``run_progress`` and ``device_rounds`` read these instead of parsing the JSON record in SQL (SQLite's
``json_extract`` has no portable PostgreSQL equivalent that also takes the ``NaN`` ``json.dumps``
writes). Existing rows are filled by parsing each record in Python.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import json
import math

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

COLUMNS = (("closed_at", sa.Double), ("upload_bytes", sa.BigInteger), ("download_bytes", sa.BigInteger),
           ("accuracy", sa.Double))


def round_columns(record: dict) -> dict[str, float | int | None]:
    """The column values of one round record (None where the record has no finite number)."""
    out: dict[str, float | int | None] = {}
    for name, kind in COLUMNS:
        value = record.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            out[name] = None
        else:
            out[name] = int(value) if kind is sa.BigInteger else float(value)
    return out


def upgrade() -> None:
    with op.batch_alter_table("rounds") as batch:
        for name, kind in COLUMNS:
            batch.add_column(sa.Column(name, kind, nullable=True))
    bind = op.get_bind()
    rounds = sa.table("rounds", sa.column("run_id"), sa.column("round"), sa.column("record"),
                      *(sa.column(name) for name, _ in COLUMNS))
    rows = bind.execute(sa.select(rounds.c.run_id, rounds.c.round, rounds.c.record)).all()
    for run_id, server_round, text in rows:
        bind.execute(rounds.update().where(rounds.c.run_id == run_id, rounds.c.round == server_round)
                     .values(**round_columns(json.loads(text))))


def downgrade() -> None:
    with op.batch_alter_table("rounds") as batch:
        for name, _ in COLUMNS:
            batch.drop_column(name)
