"""The consumers who opted out of the sale and sharing of their personal data (P9), kept as the
same keyed digests intake computes (an email or phone number is never stored here), so intake
can refuse their future leads with one indexed lookup per batch."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from leadmarket.kit.db import Base, UTCDateTime, utcnow


class ConsumerOptOut(Base):
    """One identifier (``kind`` email or phone, as ``leads.vault.IndexKind``) that opted out.
    The digest leads the primary key: intake asks "is any of these digests here?"."""

    __tablename__ = "consumer_opt_outs"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(10), primary_key=True)
    # The rights request that asked for it (its id only), for the request's records (P4).
    request_id: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
