"""Fraud and suspicious activity (promise M6): signals about a member, grouped into one open
case per member for an admin to review, and what the admin did about it.

* A :class:`FraudSignal` is one reason to look at a member: a complaint or spam report by
  another member, a low-quality or too-fast lead at intake, approved returns for a fraudulent
  identity. ``dedupe_key`` (unique; NULL for signals that may repeat) makes a repeated report
  or a recurring intake signal one row, counted in ``occurrences``.
* A :class:`FraudCase` gathers the signals about one member until an admin closes it.
  ``open_key`` is the member's id while the case is open and NULL once closed: being unique, it
  keeps at most one open case per member on both databases, without a partial index. Signal
  writers never update the case row (its counts are summed from the signals when read), so
  a seller's concurrent intake batches do not queue up behind one hot row.
* A :class:`FraudCaseAction` is each admin decision, with the note; the audit log records it
  too (A4).

None of these rows holds a consumer's personal data: members are named by id and username,
leads by id."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from leadmarket.kit.db import Base, UTCDateTime, utcnow
from leadmarket.kit.ids import new_id


class FraudCaseStatus(enum.StrEnum):
    OPEN = "open"
    CLOSED = "closed"


class FraudCase(Base):
    __tablename__ = "fraud_cases"
    __table_args__ = (
        Index("ix_fraud_cases_status_id", "status", "id"),
        Index("ix_fraud_cases_subject_user_id", "subject_user_id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("frc"))
    subject_user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    open_key: Mapped[str | None] = mapped_column(String(40), unique=True)
    status: Mapped[str] = mapped_column(String(10), default=FraudCaseStatus.OPEN.value)
    opened_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # How it ended: dismissed, warned, suspended, banned (fraud.service.CLOSING_ACTIONS).
    resolution: Mapped[str | None] = mapped_column(String(20))
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    closed_by: Mapped[str | None] = mapped_column(ForeignKey("users.id"))


class FraudSignal(Base):
    __tablename__ = "fraud_signals"
    __table_args__ = (
        Index("ix_fraud_signals_case_id_id", "case_id", "id"),
        # "Sellers with many approved fraud returns" and the reporters' daily cap.
        Index(
            "ix_fraud_signals_kind_subject_user_id_created_at",
            "kind",
            "subject_user_id",
            "created_at",
        ),
        Index("ix_fraud_signals_reporter_id_created_at", "reporter_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("frs"))
    case_id: Mapped[str] = mapped_column(ForeignKey("fraud_cases.id"))
    # fraud.signals.SignalKind
    kind: Mapped[str] = mapped_column(String(30))
    # Where it came from: "member", "messages", "intake", "returns", "admin".
    source: Mapped[str] = mapped_column(String(20))
    subject_user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    lead_id: Mapped[str | None] = mapped_column(ForeignKey("leads.id"))
    message_id: Mapped[str | None] = mapped_column(ForeignKey("member_messages.id"))
    reporter_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"))
    reason: Mapped[str | None] = mapped_column(String(40))
    # Ids, codes and flags; a reporter's own words under "note".
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    dedupe_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    occurrences: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class FraudCaseAction(Base):
    __tablename__ = "fraud_case_actions"
    __table_args__ = (Index("ix_fraud_case_actions_case_id_id", "case_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("fra"))
    case_id: Mapped[str] = mapped_column(ForeignKey("fraud_cases.id"))
    # fraud.service.CaseAction
    action: Mapped[str] = mapped_column(String(20))
    admin_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    lead_id: Mapped[str | None] = mapped_column(ForeignKey("leads.id"))
    note: Mapped[str] = mapped_column(Text)
    # What it did: leads withdrawn, holds released, members alerted (ids only).
    effects: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
