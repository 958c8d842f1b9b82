"""legal requests and disclosure legal basis

Law-enforcement requests (P10) get their table: the agency, the legal document (sealed under
the request's data key), the subject, the fields asked for, who entered, verified, rejected or
produced it; a check constraint keeps the verifier different from the one who entered it.

Disclosures (P2) become the record of every hand-off, not only sales: the subject may be a
member (``subject_user_id``) instead of a lead, the recipient someone outside
(``recipient_name``: a service provider, an agency) instead of a member, and each row says why
the disclosure was allowed (``legal_basis``, ``basis_reference``). Existing rows keep their
meaning; they are all sales, so they are backfilled with consumer consent and the lead's consent
certificate.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-22 05:01:20.142781
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import leadmarket.kit.db

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "legal_requests",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("agency", sa.String(length=200), nullable=False),
        sa.Column("officer_name", sa.String(length=200), nullable=False),
        sa.Column("officer_email", sa.String(length=320), nullable=False),
        sa.Column("officer_phone", sa.String(length=40), nullable=True),
        sa.Column("document_kind", sa.String(length=24), nullable=False),
        sa.Column("document_reference", sa.String(length=200), nullable=False),
        sa.Column("document_filename", sa.String(length=200), nullable=False),
        sa.Column("document_content_type", sa.String(length=100), nullable=False),
        sa.Column("document_size", sa.Integer(), nullable=False),
        sa.Column("document_sha256", sa.String(length=64), nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("document_sealed", sa.LargeBinary(), nullable=False),
        sa.Column("subject_kind", sa.String(length=10), nullable=False),
        sa.Column("subject_user_id", sa.String(length=40), nullable=True),
        sa.Column("subject_lead_id", sa.String(length=40), nullable=True),
        sa.Column("fields_requested", sa.JSON(), nullable=False),
        sa.Column("entered_by", sa.String(length=40), nullable=False),
        sa.Column("entered_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("verified_by", sa.String(length=40), nullable=True),
        sa.Column("verified_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("rejected_by", sa.String(length=40), nullable=True),
        sa.Column("rejected_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("rejection_reason", sa.String(length=1000), nullable=True),
        sa.Column("produced_by", sa.String(length=40), nullable=True),
        sa.Column("produced_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("production_fields", sa.JSON(), nullable=True),
        sa.Column("production_sealed", sa.LargeBinary(), nullable=True),
        sa.CheckConstraint(
            "(subject_user_id IS NOT NULL) <> (subject_lead_id IS NOT NULL)",
            name=op.f("ck_legal_requests_one_subject"),
        ),
        sa.CheckConstraint(
            "verified_by IS NULL OR verified_by <> entered_by",
            name=op.f("ck_legal_requests_verified_by_another"),
        ),
        sa.ForeignKeyConstraint(
            ["entered_by"], ["users.id"], name=op.f("fk_legal_requests_entered_by_users")
        ),
        sa.ForeignKeyConstraint(
            ["produced_by"], ["users.id"], name=op.f("fk_legal_requests_produced_by_users")
        ),
        sa.ForeignKeyConstraint(
            ["rejected_by"], ["users.id"], name=op.f("fk_legal_requests_rejected_by_users")
        ),
        sa.ForeignKeyConstraint(
            ["subject_lead_id"], ["leads.id"], name=op.f("fk_legal_requests_subject_lead_id_leads")
        ),
        sa.ForeignKeyConstraint(
            ["subject_user_id"], ["users.id"], name=op.f("fk_legal_requests_subject_user_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["verified_by"], ["users.id"], name=op.f("fk_legal_requests_verified_by_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_legal_requests")),
    )
    with op.batch_alter_table("legal_requests", schema=None) as batch_op:
        batch_op.create_index(
            "ix_legal_requests_status_entered_at", ["status", "entered_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_legal_requests_subject_lead_id"), ["subject_lead_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_legal_requests_subject_user_id"), ["subject_user_id"], unique=False
        )

    with op.batch_alter_table("disclosures", schema=None) as batch_op:
        batch_op.add_column(sa.Column("subject_user_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("recipient_name", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("legal_basis", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("basis_reference", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("legal_request_id", sa.String(length=40), nullable=True))
        batch_op.alter_column("lead_id", existing_type=sa.VARCHAR(length=40), nullable=True)
        batch_op.alter_column("recipient_id", existing_type=sa.VARCHAR(length=40), nullable=True)
        batch_op.create_index("ix_disclosures_disclosed_at", ["disclosed_at"], unique=False)
        batch_op.create_index("ix_disclosures_subject_user_id", ["subject_user_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_disclosures_legal_request_id_legal_requests"),
            "legal_requests",
            ["legal_request_id"],
            ["id"],
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_disclosures_subject_user_id_users"), "users", ["subject_user_id"], ["id"]
        )
        batch_op.create_check_constraint(
            "has_subject", "lead_id IS NOT NULL OR subject_user_id IS NOT NULL"
        )
        batch_op.create_check_constraint(
            "has_recipient", "recipient_id IS NOT NULL OR recipient_name IS NOT NULL"
        )

    # Every row so far is a sale, made under the consumer's consent (P9).
    op.execute(
        "UPDATE disclosures SET legal_basis = 'consumer_consent', basis_reference = "
        "(SELECT consents.certificate FROM consents WHERE consents.lead_id = disclosures.lead_id) "
        "WHERE legal_basis IS NULL AND purpose = 'sale'"
    )


def downgrade() -> None:
    # Only sales can go back into the old shape (a lead and a member recipient each).
    op.execute("DELETE FROM disclosures WHERE lead_id IS NULL OR recipient_id IS NULL")
    with op.batch_alter_table("disclosures", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("ck_disclosures_has_recipient"), type_="check")
        batch_op.drop_constraint(batch_op.f("ck_disclosures_has_subject"), type_="check")
        batch_op.drop_constraint(
            batch_op.f("fk_disclosures_subject_user_id_users"), type_="foreignkey"
        )
        batch_op.drop_constraint(
            batch_op.f("fk_disclosures_legal_request_id_legal_requests"), type_="foreignkey"
        )
        batch_op.drop_index("ix_disclosures_subject_user_id")
        batch_op.drop_index("ix_disclosures_disclosed_at")
        batch_op.alter_column("recipient_id", existing_type=sa.VARCHAR(length=40), nullable=False)
        batch_op.alter_column("lead_id", existing_type=sa.VARCHAR(length=40), nullable=False)
        batch_op.drop_column("legal_request_id")
        batch_op.drop_column("basis_reference")
        batch_op.drop_column("legal_basis")
        batch_op.drop_column("recipient_name")
        batch_op.drop_column("subject_user_id")

    with op.batch_alter_table("legal_requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_legal_requests_subject_user_id"))
        batch_op.drop_index(batch_op.f("ix_legal_requests_subject_lead_id"))
        batch_op.drop_index("ix_legal_requests_status_entered_at")

    op.drop_table("legal_requests")
