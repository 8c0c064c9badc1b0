"""Baseline: runs, rounds, device_errors, devices, enrollments, device_sequences.

The schema the store had before migrations (``CREATE TABLE IF NOT EXISTS`` at start-up). A SQLite
file written by that code has no ``alembic_version`` table: this revision then creates only the
tables (and the index) it lacks, keeps every row, and the database is at revision 0001 from then on.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TABLES = ("runs", "rounds", "device_errors", "devices", "enrollments", "device_sequences")


def _tables() -> dict[str, tuple[sa.Column, ...]]:
    return {
        "runs": (
            sa.Column("id", sa.Text, primary_key=True), sa.Column("name", sa.Text, nullable=False),
            sa.Column("config", sa.Text, nullable=False), sa.Column("status", sa.Text, nullable=False),
            sa.Column("created_at", sa.Double, nullable=False), sa.Column("started_at", sa.Double),
            sa.Column("finished_at", sa.Double), sa.Column("error", sa.Text),
            sa.Column("model_round", sa.Integer), sa.Column("counters", sa.Text, nullable=False, server_default="{}"),
        ),
        "rounds": (
            sa.Column("run_id", sa.Text, primary_key=True), sa.Column("round", sa.Integer, primary_key=True),
            sa.Column("record", sa.Text, nullable=False),
        ),
        "device_errors": (
            sa.Column("device_id", sa.Text, nullable=False), sa.Column("run_id", sa.Text, nullable=False),
            sa.Column("round", sa.Integer, nullable=False), sa.Column("code", sa.Text, nullable=False),
            sa.Column("detail", sa.Text, nullable=False), sa.Column("at", sa.Double, nullable=False),
        ),
        "devices": (
            sa.Column("id", sa.Text, primary_key=True),
            sa.Column("capabilities", sa.Text, nullable=False, server_default="{}"),
            sa.Column("sample_count", sa.Integer, nullable=False, server_default="0"),
            sa.Column("state", sa.Text, nullable=False, server_default="offline"),
            sa.Column("last_seen", sa.Double, nullable=False, server_default="0"),
            sa.Column("rounds_done", sa.Integer, nullable=False, server_default="0"),
            sa.Column("bytes_up", sa.BigInteger, nullable=False, server_default="0"),
            sa.Column("bytes_down", sa.BigInteger, nullable=False, server_default="0"),
        ),
        "enrollments": (
            sa.Column("device_id", sa.Text, primary_key=True), sa.Column("device_key", sa.Text, nullable=False),
            sa.Column("status", sa.Text, nullable=False), sa.Column("enrolled_at", sa.Double, nullable=False),
            sa.Column("revoked_at", sa.Double),
        ),
        "device_sequences": (
            sa.Column("device_id", sa.Text, primary_key=True), sa.Column("last_seq", sa.Text, nullable=False),
            sa.Column("will_seq", sa.Text, nullable=False, server_default="0"),
            sa.Column("will_used", sa.Integer, nullable=False, server_default="0"),
        ),
    }


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    existing = set(inspector.get_table_names())
    for name, columns in _tables().items():
        if name not in existing:
            op.create_table(name, *columns)
    indexes = {index["name"] for index in inspector.get_indexes("device_errors")} \
        if "device_errors" in existing else set()
    if "device_errors_by_device" not in indexes:
        op.create_index("device_errors_by_device", "device_errors", ["device_id", "at"])


def downgrade() -> None:
    for name in reversed(TABLES):
        op.drop_table(name)
