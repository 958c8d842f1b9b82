"""privacy requests: consumer rights requests (P1–P6), their event log, the submission throttle

Requests hold the requester's identifiers only sealed under a per-request data key (wrapped by
the master keyring) and as blind-index digests; the token and the one-time code as digests.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-22 05:01:44.618319
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import leadmarket.kit.db

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "privacy_throttle_hits",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_privacy_throttle_hits")),
    )
    with op.batch_alter_table("privacy_throttle_hits", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_privacy_throttle_hits_at"), ["at"], unique=False)
        batch_op.create_index("ix_privacy_throttle_hits_key_at", ["key_hash", "at"], unique=False)

    op.create_table(
        "privacy_requests",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("type", sa.String(length=12), nullable=False),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("denial_reason", sa.String(length=40), nullable=True),
        sa.Column("decision_note", sa.Text(), nullable=True),
        sa.Column("received_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("confirm_by", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("confirmed_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("verified_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("due_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("extended_until", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("extension_reason", sa.Text(), nullable=True),
        sa.Column("closed_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("purge_after", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("email_sealed", sa.LargeBinary(), nullable=True),
        sa.Column("phone_sealed", sa.LargeBinary(), nullable=True),
        sa.Column("email_digest", sa.String(length=64), nullable=True),
        sa.Column("phone_digest", sa.String(length=64), nullable=True),
        sa.Column("contact_hint", sa.String(length=40), nullable=False),
        sa.Column("channel", sa.String(length=8), nullable=False),
        sa.Column("details_sealed", sa.LargeBinary(), nullable=True),
        sa.Column("verification_data_sealed", sa.LargeBinary(), nullable=True),
        sa.Column("code_digest", sa.String(length=64), nullable=True),
        sa.Column("code_expires_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("attempts_left", sa.Integer(), nullable=False),
        sa.Column("on_behalf", sa.String(length=10), nullable=False),
        sa.Column("agent_name_sealed", sa.LargeBinary(), nullable=True),
        sa.Column("proof_text_sealed", sa.LargeBinary(), nullable=True),
        sa.Column("proof_document_sealed", sa.LargeBinary(), nullable=True),
        sa.Column("proof_status", sa.String(length=16), nullable=False),
        sa.Column("proof_reviewed_by", sa.String(length=40), nullable=True),
        sa.Column("proof_reviewed_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("report_sealed", sa.LargeBinary(), nullable=True),
        sa.Column(
            "report_available_until", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=True
        ),
        sa.Column("outcome", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["proof_reviewed_by"],
            ["users.id"],
            name=op.f("fk_privacy_requests_proof_reviewed_by_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_privacy_requests")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_privacy_requests_token_hash")),
    )
    with op.batch_alter_table("privacy_requests", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_privacy_requests_email_digest"), ["email_digest"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_privacy_requests_phone_digest"), ["phone_digest"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_privacy_requests_purge_after"), ["purge_after"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_privacy_requests_received_at"), ["received_at"], unique=False
        )
        batch_op.create_index("ix_privacy_requests_status_due", ["status", "due_at"], unique=False)
        batch_op.create_index(
            "ix_privacy_requests_type_received", ["type", "received_at"], unique=False
        )

    op.create_table(
        "privacy_request_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("request_id", sa.String(length=40), nullable=False),
        sa.Column("at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("actor_type", sa.String(length=12), nullable=False),
        sa.Column("actor_id", sa.String(length=40), nullable=True),
        sa.Column("action", sa.String(length=40), nullable=False),
        sa.Column("from_status", sa.String(length=24), nullable=True),
        sa.Column("to_status", sa.String(length=24), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["privacy_requests.id"],
            name=op.f("fk_privacy_request_events_request_id_privacy_requests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_privacy_request_events")),
    )
    with op.batch_alter_table("privacy_request_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_privacy_request_events_request_id"), ["request_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("privacy_request_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_privacy_request_events_request_id"))

    op.drop_table("privacy_request_events")
    with op.batch_alter_table("privacy_requests", schema=None) as batch_op:
        batch_op.drop_index("ix_privacy_requests_type_received")
        batch_op.drop_index("ix_privacy_requests_status_due")
        batch_op.drop_index(batch_op.f("ix_privacy_requests_received_at"))
        batch_op.drop_index(batch_op.f("ix_privacy_requests_purge_after"))
        batch_op.drop_index(batch_op.f("ix_privacy_requests_phone_digest"))
        batch_op.drop_index(batch_op.f("ix_privacy_requests_email_digest"))

    op.drop_table("privacy_requests")
    with op.batch_alter_table("privacy_throttle_hits", schema=None) as batch_op:
        batch_op.drop_index("ix_privacy_throttle_hits_key_at")
        batch_op.drop_index(batch_op.f("ix_privacy_throttle_hits_at"))

    op.drop_table("privacy_throttle_hits")
