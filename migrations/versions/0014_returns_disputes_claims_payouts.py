"""After the sale: returns, their evidence and disputes, claims, the order history, trusted
buyers and payouts (issue 6, M2, M5).

* ``order_returns`` (one per order), ``return_evidence`` (files, sealed), ``return_disputes``
  (one per return, decided by an admin), ``order_claims``, ``order_events`` (the history
  shown on the order pages) and ``trusted_buyers`` (admins' trust: returns approved at once).
* ``payouts``: money paid to sellers through the processor, each with its ledger transaction.
* ``orders.contact_opened_at`` (when the lead counts as delivered: no cancellation after it),
  ``orders.refund_cause`` (cancelled or return) and ``orders.closed_at``.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-22 05:36:51.319174
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import leadmarket.kit.db

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "payouts",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("seller_id", sa.String(length=40), nullable=False),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("processor", sa.String(length=20), nullable=False),
        sa.Column("processor_reference", sa.String(length=100), nullable=False),
        sa.Column("transaction_id", sa.String(length=40), nullable=False),
        sa.Column("requested_by", sa.String(length=10), nullable=False),
        sa.Column("created_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("amount_cents > 0", name=op.f("ck_payouts_amount_positive")),
        sa.ForeignKeyConstraint(
            ["seller_id"], ["users.id"], name=op.f("fk_payouts_seller_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["transaction_id"],
            ["ledger_transactions.id"],
            name=op.f("fk_payouts_transaction_id_ledger_transactions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payouts")),
        sa.UniqueConstraint("transaction_id", name=op.f("uq_payouts_transaction_id")),
    )
    with op.batch_alter_table("payouts", schema=None) as batch_op:
        batch_op.create_index("ix_payouts_seller_id_id", ["seller_id", "id"], unique=False)

    op.create_table(
        "trusted_buyers",
        sa.Column("buyer_id", sa.String(length=40), nullable=False),
        sa.Column("granted_by", sa.String(length=40), nullable=False),
        sa.Column("granted_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["buyer_id"], ["users.id"], name=op.f("fk_trusted_buyers_buyer_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["granted_by"], ["users.id"], name=op.f("fk_trusted_buyers_granted_by_users")
        ),
        sa.PrimaryKeyConstraint("buyer_id", name=op.f("pk_trusted_buyers")),
    )
    op.create_table(
        "order_claims",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("order_id", sa.String(length=40), nullable=False),
        sa.Column("filed_by", sa.String(length=40), nullable=False),
        sa.Column("filer_role", sa.String(length=10), nullable=False),
        sa.Column("category", sa.String(length=20), nullable=False),
        sa.Column("text", sa.String(length=4000), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("filed_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("resolved_by", sa.String(length=40), nullable=True),
        sa.Column("resolved_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("resolution", sa.String(length=2000), nullable=True),
        sa.ForeignKeyConstraint(
            ["filed_by"], ["users.id"], name=op.f("fk_order_claims_filed_by_users")
        ),
        sa.ForeignKeyConstraint(
            ["order_id"], ["orders.id"], name=op.f("fk_order_claims_order_id_orders")
        ),
        sa.ForeignKeyConstraint(
            ["resolved_by"], ["users.id"], name=op.f("fk_order_claims_resolved_by_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_order_claims")),
    )
    with op.batch_alter_table("order_claims", schema=None) as batch_op:
        batch_op.create_index("ix_order_claims_order_id_id", ["order_id", "id"], unique=False)
        batch_op.create_index("ix_order_claims_status_id", ["status", "id"], unique=False)

    op.create_table(
        "order_events",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("order_id", sa.String(length=40), nullable=False),
        sa.Column("at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("actor_id", sa.String(length=40), nullable=True),
        sa.Column("actor_role", sa.String(length=20), nullable=False),
        sa.Column("event", sa.String(length=40), nullable=False),
        sa.Column("subject_id", sa.String(length=40), nullable=True),
        sa.Column("note", sa.String(length=2000), nullable=True),
        sa.ForeignKeyConstraint(
            ["actor_id"], ["users.id"], name=op.f("fk_order_events_actor_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["order_id"], ["orders.id"], name=op.f("fk_order_events_order_id_orders")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_order_events")),
    )
    with op.batch_alter_table("order_events", schema=None) as batch_op:
        batch_op.create_index("ix_order_events_order_id_id", ["order_id", "id"], unique=False)

    op.create_table(
        "order_returns",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("order_id", sa.String(length=40), nullable=False),
        sa.Column("buyer_id", sa.String(length=40), nullable=False),
        sa.Column("seller_id", sa.String(length=40), nullable=False),
        sa.Column("reason", sa.String(length=40), nullable=False),
        sa.Column("note", sa.String(length=2000), nullable=True),
        sa.Column("evidence_text", sa.String(length=4000), nullable=True),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("requested_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("decide_by", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("review_reason", sa.String(length=200), nullable=True),
        sa.Column("decided_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("decided_by", sa.String(length=12), nullable=True),
        sa.Column("decider_id", sa.String(length=40), nullable=True),
        sa.Column("decision_note", sa.String(length=2000), nullable=True),
        sa.Column("dispute_by", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("refund_kind", sa.String(length=12), nullable=True),
        sa.Column("refunded_cents", sa.BigInteger(), nullable=True),
        sa.Column("clawed_back_cents", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["buyer_id"], ["users.id"], name=op.f("fk_order_returns_buyer_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["decider_id"], ["users.id"], name=op.f("fk_order_returns_decider_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["order_id"], ["orders.id"], name=op.f("fk_order_returns_order_id_orders")
        ),
        sa.ForeignKeyConstraint(
            ["seller_id"], ["users.id"], name=op.f("fk_order_returns_seller_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_order_returns")),
        sa.UniqueConstraint("order_id", name=op.f("uq_order_returns_order_id")),
    )
    with op.batch_alter_table("order_returns", schema=None) as batch_op:
        batch_op.create_index("ix_order_returns_buyer_id_id", ["buyer_id", "id"], unique=False)
        batch_op.create_index(
            "ix_order_returns_buyer_id_requested_at", ["buyer_id", "requested_at"], unique=False
        )
        batch_op.create_index("ix_order_returns_seller_id_id", ["seller_id", "id"], unique=False)
        batch_op.create_index(
            "ix_order_returns_status_decide_by", ["status", "decide_by"], unique=False
        )

    op.create_table(
        "return_disputes",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("return_id", sa.String(length=40), nullable=False),
        sa.Column("order_id", sa.String(length=40), nullable=False),
        sa.Column("buyer_id", sa.String(length=40), nullable=False),
        sa.Column("note", sa.String(length=2000), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("opened_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(length=12), nullable=True),
        sa.Column("decided_by", sa.String(length=40), nullable=True),
        sa.Column("decided_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("decision_note", sa.String(length=2000), nullable=True),
        sa.ForeignKeyConstraint(
            ["buyer_id"], ["users.id"], name=op.f("fk_return_disputes_buyer_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["decided_by"], ["users.id"], name=op.f("fk_return_disputes_decided_by_users")
        ),
        sa.ForeignKeyConstraint(
            ["order_id"], ["orders.id"], name=op.f("fk_return_disputes_order_id_orders")
        ),
        sa.ForeignKeyConstraint(
            ["return_id"],
            ["order_returns.id"],
            name=op.f("fk_return_disputes_return_id_order_returns"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_return_disputes")),
        sa.UniqueConstraint("return_id", name=op.f("uq_return_disputes_return_id")),
    )
    with op.batch_alter_table("return_disputes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_return_disputes_order_id"), ["order_id"], unique=False)
        batch_op.create_index(
            "ix_return_disputes_status_opened_at", ["status", "opened_at"], unique=False
        )

    op.create_table(
        "return_evidence",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("return_id", sa.String(length=40), nullable=False),
        sa.Column("uploaded_by", sa.String(length=40), nullable=False),
        sa.Column("filename", sa.String(length=200), nullable=False),
        sa.Column("media_type", sa.String(length=100), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.Column("uploaded_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["return_id"],
            ["order_returns.id"],
            name=op.f("fk_return_evidence_return_id_order_returns"),
        ),
        sa.ForeignKeyConstraint(
            ["uploaded_by"], ["users.id"], name=op.f("fk_return_evidence_uploaded_by_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_return_evidence")),
    )
    with op.batch_alter_table("return_evidence", schema=None) as batch_op:
        batch_op.create_index("ix_return_evidence_return_id_id", ["return_id", "id"], unique=False)

    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "contact_opened_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=True
            )
        )
        batch_op.add_column(sa.Column("refund_cause", sa.String(length=12), nullable=True))
        batch_op.add_column(
            sa.Column("closed_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_column("closed_at")
        batch_op.drop_column("refund_cause")
        batch_op.drop_column("contact_opened_at")

    with op.batch_alter_table("return_evidence", schema=None) as batch_op:
        batch_op.drop_index("ix_return_evidence_return_id_id")

    op.drop_table("return_evidence")
    with op.batch_alter_table("return_disputes", schema=None) as batch_op:
        batch_op.drop_index("ix_return_disputes_status_opened_at")
        batch_op.drop_index(batch_op.f("ix_return_disputes_order_id"))

    op.drop_table("return_disputes")
    with op.batch_alter_table("order_returns", schema=None) as batch_op:
        batch_op.drop_index("ix_order_returns_status_decide_by")
        batch_op.drop_index("ix_order_returns_seller_id_id")
        batch_op.drop_index("ix_order_returns_buyer_id_requested_at")
        batch_op.drop_index("ix_order_returns_buyer_id_id")

    op.drop_table("order_returns")
    with op.batch_alter_table("order_events", schema=None) as batch_op:
        batch_op.drop_index("ix_order_events_order_id_id")

    op.drop_table("order_events")
    with op.batch_alter_table("order_claims", schema=None) as batch_op:
        batch_op.drop_index("ix_order_claims_status_id")
        batch_op.drop_index("ix_order_claims_order_id_id")

    op.drop_table("order_claims")
    op.drop_table("trusted_buyers")
    with op.batch_alter_table("payouts", schema=None) as batch_op:
        batch_op.drop_index("ix_payouts_seller_id_id")

    op.drop_table("payouts")
