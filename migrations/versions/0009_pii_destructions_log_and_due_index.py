"""Retention (L4): the log of destroyed personal data, and an index of the leads still holding
theirs by deadline, for the retention sweep and its monitor.

``pii_destructions`` has one row per destroyed lead (deadline, when, lateness in ms, cause):
the evidence that the 48-hour rule is kept. ``ix_leads_pii_due`` is partial (only leads whose
data is not destroyed yet), so it stays small however many leads have been destroyed.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-22 05:01:33.269586
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import leadmarket.kit.db

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "pii_destructions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("lead_id", sa.String(length=40), nullable=False),
        sa.Column("deadline", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("destroyed_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("lateness_ms", sa.BigInteger(), nullable=False),
        sa.Column("cause", sa.String(length=20), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pii_destructions")),
        sa.UniqueConstraint("lead_id", name=op.f("uq_pii_destructions_lead_id")),
    )
    with op.batch_alter_table("pii_destructions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_pii_destructions_destroyed_at"), ["destroyed_at"], unique=False
        )

    with op.batch_alter_table("leads", schema=None) as batch_op:
        batch_op.create_index(
            "ix_leads_pii_due",
            ["pii_expires_at"],
            unique=False,
            postgresql_where=sa.text("pii_destroyed_at IS NULL"),
            sqlite_where=sa.text("pii_destroyed_at IS NULL"),
        )


def downgrade() -> None:
    with op.batch_alter_table("leads", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_leads_pii_due",
            postgresql_where=sa.text("pii_destroyed_at IS NULL"),
            sqlite_where=sa.text("pii_destroyed_at IS NULL"),
        )

    with op.batch_alter_table("pii_destructions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pii_destructions_destroyed_at"))

    op.drop_table("pii_destructions")
