"""Feedback and ratings after an order (M3), and abuse reports about feedback.

* ``feedback``: one rating (1-5, a CHECK) and comment per party of an order about the other
  (unique ``order_id, author_id``), the rated member's one reply, and who hid it and why if an
  admin did. Indexed for a member's public profile (``subject_id, created_at``).
* ``feedback_reports``: members' reports (one per member and feedback), open until an admin
  hides the feedback (upheld) or dismisses the report.

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-22 05:32:50.229240
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import leadmarket.kit.db

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "feedback",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("order_id", sa.String(length=40), nullable=False),
        sa.Column("author_id", sa.String(length=40), nullable=False),
        sa.Column("subject_id", sa.String(length=40), nullable=False),
        sa.Column("side", sa.String(length=8), nullable=False),
        sa.Column("rating", sa.Integer(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("created_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("editable_until", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("reply", sa.Text(), nullable=True),
        sa.Column("replied_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("hidden_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("hidden_by", sa.String(length=40), nullable=True),
        sa.Column("hidden_reason", sa.String(length=500), nullable=True),
        sa.CheckConstraint("rating BETWEEN 1 AND 5", name=op.f("ck_feedback_rating_range")),
        sa.ForeignKeyConstraint(
            ["author_id"], ["users.id"], name=op.f("fk_feedback_author_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["hidden_by"],
            ["users.id"],
            name=op.f("fk_feedback_hidden_by_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["order_id"], ["orders.id"], name=op.f("fk_feedback_order_id_orders")
        ),
        sa.ForeignKeyConstraint(
            ["subject_id"], ["users.id"], name=op.f("fk_feedback_subject_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feedback")),
        sa.UniqueConstraint("order_id", "author_id", name="uq_feedback_order_author"),
    )
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_feedback_author_id"), ["author_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_feedback_order_id"), ["order_id"], unique=False)
        batch_op.create_index(
            "ix_feedback_subject_id_created_at", ["subject_id", "created_at"], unique=False
        )

    op.create_table(
        "feedback_reports",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("feedback_id", sa.String(length=40), nullable=False),
        sa.Column("reporter_id", sa.String(length=40), nullable=False),
        sa.Column("reason", sa.String(length=20), nullable=False),
        sa.Column("note", sa.String(length=1000), nullable=True),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("created_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("resolved_by", sa.String(length=40), nullable=True),
        sa.Column("resolution_note", sa.String(length=500), nullable=True),
        sa.ForeignKeyConstraint(
            ["feedback_id"], ["feedback.id"], name=op.f("fk_feedback_reports_feedback_id_feedback")
        ),
        sa.ForeignKeyConstraint(
            ["reporter_id"],
            ["users.id"],
            name=op.f("fk_feedback_reports_reporter_id_users"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["resolved_by"],
            ["users.id"],
            name=op.f("fk_feedback_reports_resolved_by_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feedback_reports")),
        sa.UniqueConstraint("feedback_id", "reporter_id", name="uq_feedback_report_reporter"),
    )
    with op.batch_alter_table("feedback_reports", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_feedback_reports_feedback_id"), ["feedback_id"], unique=False
        )
        batch_op.create_index(
            "ix_feedback_reports_status_created_at", ["status", "created_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("feedback_reports", schema=None) as batch_op:
        batch_op.drop_index("ix_feedback_reports_status_created_at")
        batch_op.drop_index(batch_op.f("ix_feedback_reports_feedback_id"))

    op.drop_table("feedback_reports")
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.drop_index("ix_feedback_subject_id_created_at")
        batch_op.drop_index(batch_op.f("ix_feedback_order_id"))
        batch_op.drop_index(batch_op.f("ix_feedback_author_id"))

    op.drop_table("feedback")
