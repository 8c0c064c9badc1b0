"""Enrollments: a change counter (``enrollment_generation``, one row) bumped with every enroll and revoke.

The coordinator's keyring caches the enrollments and reads only this counter per decoder batch
(``cloud.enrollment.DeviceKeyring``); the store bumps it in the same transaction as each change to
``enrollments``, so a change committed by any process is seen at the next read. The row starts at 0.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "enrollment_generation",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("generation", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(table, [{"id": 1, "generation": 0}])


def downgrade() -> None:
    op.drop_table("enrollment_generation")
