"""Webhook signing secrets under the master keyring; an index for the ping retention sweep.

* ``webhook_endpoints.key_version``: the master key version that seals the endpoint's secret.
  Rows written before this revision keep NULL: their secret is still sealed under a key
  derived from ``LEADMARKET_SECRET_KEY``. They are converted by the service itself, on first
  use or by ``leadmarket keys rewrap``, not here: a migration may run without the service's
  secret key (see ``webhooks.service._convert_legacy``).
* ``ix_pings_created_at``: the retention sweep deletes the oldest pings in batches.

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-22 08:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("webhook_endpoints", schema=None) as batch_op:
        batch_op.add_column(sa.Column("key_version", sa.Integer(), nullable=True))
    with op.batch_alter_table("pings", schema=None) as batch_op:
        batch_op.create_index("ix_pings_created_at", ["created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("pings", schema=None) as batch_op:
        batch_op.drop_index("ix_pings_created_at")
    with op.batch_alter_table("webhook_endpoints", schema=None) as batch_op:
        batch_op.drop_column("key_version")
