"""Pings may give the consumer's age band, so that campaigns with an age filter can bid on them.

* ``pings.age_band``: "" for pings that gave no age (all rows before this revision).

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-22 11:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("pings", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("age_band", sa.String(length=10), server_default="", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("pings", schema=None) as batch_op:
        batch_op.drop_column("age_band")
