"""The evidence of promise L4: one row per lead whose personal data was destroyed, with the
deadline it had, when it went and how late that was. Holds ids and times only, never personal
data, and has no foreign key to ``leads`` so the evidence stands on its own."""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import BigInteger, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from leadmarket.kit.db import Base, UTCDateTime
from leadmarket.models.lead import Lead


class DestructionCause(enum.StrEnum):
    RETENTION = "retention"  # the 48-hour rule (L4), by the sweep


class PiiDestruction(Base):
    __tablename__ = "pii_destructions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # Unique: a lead is destroyed once, however many sweeps race (the evidence says so too).
    lead_id: Mapped[str] = mapped_column(String(40), unique=True)
    deadline: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    destroyed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    # destroyed_at - deadline; never negative (nothing goes before its deadline).
    lateness_ms: Mapped[int] = mapped_column(BigInteger)
    cause: Mapped[str] = mapped_column(String(20), default=DestructionCause.RETENTION.value)


# The sweep's and the monitor's index: only leads whose data is still held, by deadline. Without
# the condition the index would grow with every destroyed lead and the sweep would walk them all.
ix_leads_pii_due = Index(
    "ix_leads_pii_due",
    Lead.pii_expires_at,
    postgresql_where=Lead.pii_destroyed_at.is_(None),
    sqlite_where=Lead.pii_destroyed_at.is_(None),
)
