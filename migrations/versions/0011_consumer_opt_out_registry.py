"""Consumer opt-out registry (P9): the keyed email and phone digests of consumers who opted out
of the sale and sharing of their data, which intake checks before storing a new lead.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-22 05:00:50.293981
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import leadmarket.kit.db

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "consumer_opt_outs",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("request_id", sa.String(length=40), nullable=False),
        sa.Column("created_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("digest", "kind", name=op.f("pk_consumer_opt_outs")),
    )


def downgrade() -> None:
    op.drop_table("consumer_opt_outs")
