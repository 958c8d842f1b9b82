"""Member messages (M4) and the fraud review (M6).

* ``member_messages``: one thread per order between its buyer and its seller; the body's
  digest finds the same text pasted into many threads, and ``read_at`` drives the "first
  unread message" email rule.
* ``fraud_cases``: one open case per member (``open_key`` is the member's id while open, NULL
  once closed; unique, so at most one open case per member on both databases).
* ``fraud_signals``: complaints, spam reports, intake and returns signals in a case;
  ``dedupe_key`` (unique, NULL allowed) makes a repeat one row with ``occurrences``.
* ``fraud_case_actions``: each admin decision with its note and effects.

No consumer personal data is stored in any of them.

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-22 05:33:52.349131
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import leadmarket.kit.db

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "fraud_cases",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("subject_user_id", sa.String(length=40), nullable=False),
        sa.Column("open_key", sa.String(length=40), nullable=True),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("opened_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("resolution", sa.String(length=20), nullable=True),
        sa.Column("closed_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("closed_by", sa.String(length=40), nullable=True),
        sa.ForeignKeyConstraint(
            ["closed_by"], ["users.id"], name=op.f("fk_fraud_cases_closed_by_users")
        ),
        sa.ForeignKeyConstraint(
            ["subject_user_id"], ["users.id"], name=op.f("fk_fraud_cases_subject_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fraud_cases")),
        sa.UniqueConstraint("open_key", name=op.f("uq_fraud_cases_open_key")),
    )
    with op.batch_alter_table("fraud_cases", schema=None) as batch_op:
        batch_op.create_index("ix_fraud_cases_status_id", ["status", "id"], unique=False)
        batch_op.create_index("ix_fraud_cases_subject_user_id", ["subject_user_id"], unique=False)

    op.create_table(
        "fraud_case_actions",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("case_id", sa.String(length=40), nullable=False),
        sa.Column("action", sa.String(length=20), nullable=False),
        sa.Column("admin_id", sa.String(length=40), nullable=False),
        sa.Column("lead_id", sa.String(length=40), nullable=True),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("effects", sa.JSON(), nullable=False),
        sa.Column("at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["admin_id"], ["users.id"], name=op.f("fk_fraud_case_actions_admin_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["case_id"], ["fraud_cases.id"], name=op.f("fk_fraud_case_actions_case_id_fraud_cases")
        ),
        sa.ForeignKeyConstraint(
            ["lead_id"], ["leads.id"], name=op.f("fk_fraud_case_actions_lead_id_leads")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fraud_case_actions")),
    )
    with op.batch_alter_table("fraud_case_actions", schema=None) as batch_op:
        batch_op.create_index("ix_fraud_case_actions_case_id_id", ["case_id", "id"], unique=False)

    op.create_table(
        "member_messages",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("order_id", sa.String(length=40), nullable=False),
        sa.Column("sender_id", sa.String(length=40), nullable=False),
        sa.Column("recipient_id", sa.String(length=40), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("body_digest", sa.String(length=64), nullable=False),
        sa.Column("created_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("read_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["order_id"], ["orders.id"], name=op.f("fk_member_messages_order_id_orders")
        ),
        sa.ForeignKeyConstraint(
            ["recipient_id"], ["users.id"], name=op.f("fk_member_messages_recipient_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["sender_id"], ["users.id"], name=op.f("fk_member_messages_sender_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_member_messages")),
    )
    with op.batch_alter_table("member_messages", schema=None) as batch_op:
        batch_op.create_index("ix_member_messages_order_id_id", ["order_id", "id"], unique=False)
        batch_op.create_index(
            "ix_member_messages_recipient_id_read_at", ["recipient_id", "read_at"], unique=False
        )
        batch_op.create_index(
            "ix_member_messages_sender_id_body_digest", ["sender_id", "body_digest"], unique=False
        )
        batch_op.create_index(
            "ix_member_messages_sender_id_created_at", ["sender_id", "created_at"], unique=False
        )

    op.create_table(
        "fraud_signals",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("case_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=30), nullable=False),
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("subject_user_id", sa.String(length=40), nullable=False),
        sa.Column("lead_id", sa.String(length=40), nullable=True),
        sa.Column("message_id", sa.String(length=40), nullable=True),
        sa.Column("reporter_id", sa.String(length=40), nullable=True),
        sa.Column("reason", sa.String(length=40), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("dedupe_key", sa.String(length=200), nullable=True),
        sa.Column("occurrences", sa.Integer(), nullable=False),
        sa.Column("created_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["case_id"], ["fraud_cases.id"], name=op.f("fk_fraud_signals_case_id_fraud_cases")
        ),
        sa.ForeignKeyConstraint(
            ["lead_id"], ["leads.id"], name=op.f("fk_fraud_signals_lead_id_leads")
        ),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["member_messages.id"],
            name=op.f("fk_fraud_signals_message_id_member_messages"),
        ),
        sa.ForeignKeyConstraint(
            ["reporter_id"], ["users.id"], name=op.f("fk_fraud_signals_reporter_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["subject_user_id"], ["users.id"], name=op.f("fk_fraud_signals_subject_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fraud_signals")),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq_fraud_signals_dedupe_key")),
    )
    with op.batch_alter_table("fraud_signals", schema=None) as batch_op:
        batch_op.create_index("ix_fraud_signals_case_id_id", ["case_id", "id"], unique=False)
        batch_op.create_index(
            "ix_fraud_signals_kind_subject_user_id_created_at",
            ["kind", "subject_user_id", "created_at"],
            unique=False,
        )
        batch_op.create_index(
            "ix_fraud_signals_reporter_id_created_at", ["reporter_id", "created_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("fraud_signals", schema=None) as batch_op:
        batch_op.drop_index("ix_fraud_signals_reporter_id_created_at")
        batch_op.drop_index("ix_fraud_signals_kind_subject_user_id_created_at")
        batch_op.drop_index("ix_fraud_signals_case_id_id")

    op.drop_table("fraud_signals")
    with op.batch_alter_table("member_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_member_messages_sender_id_created_at")
        batch_op.drop_index("ix_member_messages_sender_id_body_digest")
        batch_op.drop_index("ix_member_messages_recipient_id_read_at")
        batch_op.drop_index("ix_member_messages_order_id_id")

    op.drop_table("member_messages")
    with op.batch_alter_table("fraud_case_actions", schema=None) as batch_op:
        batch_op.drop_index("ix_fraud_case_actions_case_id_id")

    op.drop_table("fraud_case_actions")
    with op.batch_alter_table("fraud_cases", schema=None) as batch_op:
        batch_op.drop_index("ix_fraud_cases_subject_user_id")
        batch_op.drop_index("ix_fraud_cases_status_id")

    op.drop_table("fraud_cases")
