"""Timed auctions: one state row per auctioned lead, every bid (proxy maximums), and an index
for the auction sweeps.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22 02:46:21.497091
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import leadmarket.kit.db

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "auctions",
        sa.Column("lead_id", sa.String(length=40), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("ends_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("current_price_cents", sa.BigInteger(), nullable=True),
        sa.Column("leader_bid_id", sa.String(length=40), nullable=True),
        sa.Column("leader_id", sa.String(length=40), nullable=True),
        sa.Column("leader_max_cents", sa.BigInteger(), nullable=True),
        sa.Column("reserve_met", sa.Boolean(), nullable=False),
        sa.Column("bid_count", sa.Integer(), nullable=False),
        sa.Column("extensions", sa.Integer(), nullable=False),
        sa.Column("campaigns_bid_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("closed_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=20), nullable=True),
        sa.ForeignKeyConstraint(
            ["lead_id"], ["leads.id"], name=op.f("fk_auctions_lead_id_leads"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("lead_id", name=op.f("pk_auctions")),
    )
    with op.batch_alter_table("auctions", schema=None) as batch_op:
        batch_op.create_index("ix_auctions_open_ends_at", ["closed_at", "ends_at"], unique=False)

    op.create_table(
        "bids",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("lead_id", sa.String(length=40), nullable=False),
        sa.Column("buyer_id", sa.String(length=40), nullable=False),
        sa.Column("max_cents", sa.BigInteger(), nullable=False),
        sa.Column("campaign_id", sa.String(length=40), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("price_after_cents", sa.BigInteger(), nullable=False),
        sa.Column("leading_after", sa.Boolean(), nullable=False),
        sa.Column("created_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["buyer_id"], ["users.id"], name=op.f("fk_bids_buyer_id_users")),
        sa.ForeignKeyConstraint(
            ["lead_id"], ["leads.id"], name=op.f("fk_bids_lead_id_leads"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bids")),
    )
    with op.batch_alter_table("bids", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_bids_buyer_id"), ["buyer_id"], unique=False)
        batch_op.create_index("ix_bids_lead_created", ["lead_id", "created_at"], unique=False)

    with op.batch_alter_table("leads", schema=None) as batch_op:
        batch_op.create_index(
            "ix_leads_mode_status_ends", ["sale_mode", "status", "auction_ends_at"], unique=False
        )


def downgrade() -> None:

    with op.batch_alter_table("leads", schema=None) as batch_op:
        batch_op.drop_index("ix_leads_mode_status_ends")

    with op.batch_alter_table("bids", schema=None) as batch_op:
        batch_op.drop_index("ix_bids_lead_created")
        batch_op.drop_index(batch_op.f("ix_bids_buyer_id"))

    op.drop_table("bids")
    with op.batch_alter_table("auctions", schema=None) as batch_op:
        batch_op.drop_index("ix_auctions_open_ends_at")

    op.drop_table("auctions")
