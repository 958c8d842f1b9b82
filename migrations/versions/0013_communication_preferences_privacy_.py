"""Communication preferences, privacy notice versions, mail topics, the consent's GPC flag.

* ``communication_preferences``: a member's channels, topics, personalised advertising and
  do-not-sell opt-out (P7, P8, P9); no row means the defaults (marketing off).
* ``privacy_notices``: published versions of the privacy notice with their effective date
  (P12); version 1.0 is seeded here, so every installation starts with a notice.
* ``outbound_mail.topic`` and ``suppressed_reason``: what a message is about and why it was not
  sent.
* ``consents.global_privacy_control``: the browser sent ``Sec-GPC: 1`` with the consumer form.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-22 05:02:08.016102
"""

import datetime as dt
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import leadmarket.kit.db

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The first version of the notice, written from the essentials of the three seed notices
# (docs/promises.md). A snapshot: later versions are published by an admin, never edited here.
SEED_VERSION = "1.0"
SEED_EFFECTIVE_AT = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
SEED_SUMMARY = "First published version of the Leadmarket privacy notice."
SEED_BODY = """\
Who we are. Leadmarket is a lead exchange: consumers ask for a service through a standard web
form, the request (the lead) is posted by a seller, buyers bid on it, and the buyer who wins or
buys it is the only one who then sees who the consumer is.

What we collect. From consumers, through the forms: name, address, email, phone, the service
sought and, depending on the kind of service, age, gender, smoker, driving record summary, loan
amount, value of goods to insure, marital, employment and veteran status; and, as evidence of
your consent, the text you agreed to, when, on which page, your IP address and browser. From
members: name, address, phone, email, a public username and a password. We take no data about
children under 14.

Why. To pass your request to the companies your consent names, so that they can answer it; to
run the marketplace (payments, orders, returns, feedback, member messages); to detect and
investigate fraud; to meet legal obligations.

Who receives it. Only the buyer who bought a lead receives its contact details, and only what
the transaction needs. Buyers see a lead without its contact details until they buy it. Service
providers (payments, hosting, email) process data for us under contract. Law enforcement gets
data only on a verified legal request, and only the fields that request names. We do not sell
or rent personal data to third parties for their marketing without your explicit consent.

How long. A lead's personal data is destroyed 48 hours after it is bought or, if it is not
sold, 48 hours after its auction ends. Destroyed means unrecoverable, and each destruction is
logged. Consent certificates are kept without personal data, so they stay verifiable.

Your choices and rights. You can withdraw a consent at any time (the lead leaves the market and
no further sale or delivery is made). You can ask to know what we hold about you, for a copy
of it, to correct it or to delete it, and to opt out of its sale or sharing; a browser sending
Global Privacy Control is treated as an opt-out of sale and sharing. Requests are verified, free
(unless excessive), answered within 45 days, and using a right never costs you anything.
Members choose which messages they receive by channel (email, phone, text, post) and by topic
(member messages, newsletters, promotions); marketing is sent only with consent, every email has
an unsubscribe link, and messages about your account and transactions still reach you after you
opt out of marketing. Opting out of personalized advertising stops it.

Security. Personal data is encrypted at rest and in transit, only the people whose duties need
it can see it, and every read is recorded.

Changes. When this notice changes we publish a new version with its effective date, tell
members by email and show it on the site. Past versions stay available.
"""


def upgrade() -> None:
    op.create_table(
        "communication_preferences",
        sa.Column("user_id", sa.String(length=40), nullable=False),
        sa.Column("email", sa.Boolean(), nullable=False),
        sa.Column("phone", sa.Boolean(), nullable=False),
        sa.Column("text", sa.Boolean(), nullable=False),
        sa.Column("post", sa.Boolean(), nullable=False),
        sa.Column("member_messages", sa.Boolean(), nullable=False),
        sa.Column("newsletters", sa.Boolean(), nullable=False),
        sa.Column("promotions", sa.Boolean(), nullable=False),
        sa.Column("personalized_ads", sa.Boolean(), nullable=False),
        sa.Column("do_not_sell", sa.Boolean(), nullable=False),
        sa.Column("do_not_sell_source", sa.String(length=10), nullable=True),
        sa.Column(
            "marketing_consent_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=True
        ),
        sa.Column("updated_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_communication_preferences_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_communication_preferences")),
    )
    op.create_table(
        "privacy_notices",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("version", sa.String(length=20), nullable=False),
        sa.Column("effective_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("published_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("published_by", sa.String(length=40), nullable=True),
        sa.Column("announced_count", sa.Integer(), nullable=False),
        sa.Column("announced_at", leadmarket.kit.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["published_by"],
            ["users.id"],
            name=op.f("fk_privacy_notices_published_by_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_privacy_notices")),
        sa.UniqueConstraint("version", name=op.f("uq_privacy_notices_version")),
    )
    with op.batch_alter_table("privacy_notices", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_privacy_notices_effective_at"), ["effective_at"], unique=False
        )

    with op.batch_alter_table("consents", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "global_privacy_control", sa.Boolean(), server_default=sa.false(), nullable=False
            )
        )

    with op.batch_alter_table("outbound_mail", schema=None) as batch_op:
        batch_op.add_column(sa.Column("topic", sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column("suppressed_reason", sa.String(length=20), nullable=True))

    notices = sa.table(
        "privacy_notices",
        sa.column("id", sa.String),
        sa.column("version", sa.String),
        sa.column("effective_at", leadmarket.kit.db.UTCDateTime(timezone=True)),
        sa.column("summary", sa.Text),
        sa.column("body", sa.Text),
        sa.column("published_at", leadmarket.kit.db.UTCDateTime(timezone=True)),
        sa.column("announced_count", sa.Integer),
        sa.column("announced_at", leadmarket.kit.db.UTCDateTime(timezone=True)),
    )
    op.bulk_insert(
        notices,
        [
            {
                "id": "pn_seed_1_0",
                "version": SEED_VERSION,
                "effective_at": SEED_EFFECTIVE_AT,
                "summary": SEED_SUMMARY,
                "body": SEED_BODY,
                "published_at": SEED_EFFECTIVE_AT,
                "announced_count": 0,
                # Nobody to announce the first version to: it exists before any member.
                "announced_at": SEED_EFFECTIVE_AT,
            }
        ],
    )


def downgrade() -> None:
    with op.batch_alter_table("outbound_mail", schema=None) as batch_op:
        batch_op.drop_column("suppressed_reason")
        batch_op.drop_column("topic")

    with op.batch_alter_table("consents", schema=None) as batch_op:
        batch_op.drop_column("global_privacy_control")

    with op.batch_alter_table("privacy_notices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_privacy_notices_effective_at"))

    op.drop_table("privacy_notices")
    op.drop_table("communication_preferences")
