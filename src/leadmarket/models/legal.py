"""Law-enforcement requests (promise P10): entered by one admin with their legal document,
verified by a second admin, then answered with a production holding only the fields P10 lists
and only those the request asks for.

The document and the production are personal data (a court order names people; a production
is their data), so both are kept only sealed, under the request's own data key wrapped by the
master key, as a lead's vault is. Their columns are deferred with ``raiseload``: listing
requests never loads them, and reading one by accident raises instead of querying."""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import JSON, CheckConstraint, ForeignKey, Index, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from leadmarket.kit.db import Base, UTCDateTime, utcnow
from leadmarket.kit.ids import new_id


class LegalDocumentKind(enum.StrEnum):
    SUBPOENA = "subpoena"
    COURT_ORDER = "court_order"
    SEARCH_WARRANT = "search_warrant"
    # Good-faith belief that disclosure prevents imminent physical harm or financial loss.
    EMERGENCY_DISCLOSURE = "emergency_disclosure"


class LegalRequestStatus(enum.StrEnum):
    ENTERED = "entered"  # waiting for a second admin to verify it
    VERIFIED = "verified"  # a production may be generated
    PRODUCED = "produced"  # answered; the production is kept sealed
    REJECTED = "rejected"  # refused, with the reason


class LegalSubjectKind(enum.StrEnum):
    MEMBER = "member"
    LEAD = "lead"


class LegalRequest(Base):
    __tablename__ = "legal_requests"
    __table_args__ = (
        Index("ix_legal_requests_status_entered_at", "status", "entered_at"),
        CheckConstraint(
            "(subject_user_id IS NOT NULL) <> (subject_lead_id IS NOT NULL)", name="one_subject"
        ),
        # The second pair of eyes is a database rule too, not only a check in Python.
        CheckConstraint(
            "verified_by IS NULL OR verified_by <> entered_by", name="verified_by_another"
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("lgr"))
    status: Mapped[str] = mapped_column(String(12), default=LegalRequestStatus.ENTERED.value)
    agency: Mapped[str] = mapped_column(String(200))
    officer_name: Mapped[str] = mapped_column(String(200))
    officer_email: Mapped[str] = mapped_column(String(320))
    officer_phone: Mapped[str | None] = mapped_column(String(40))
    document_kind: Mapped[str] = mapped_column(String(24))
    document_reference: Mapped[str] = mapped_column(String(200))
    document_filename: Mapped[str] = mapped_column(String(200))
    document_content_type: Mapped[str] = mapped_column(String(100))
    document_size: Mapped[int] = mapped_column(Integer)
    document_sha256: Mapped[str] = mapped_column(String(64))
    # The request's data key, wrapped by the master key (kit.keyring); it seals the document
    # and the production.
    key_version: Mapped[int] = mapped_column(Integer)
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    document_sealed: Mapped[bytes] = mapped_column(
        LargeBinary, deferred=True, deferred_raiseload=True
    )
    subject_kind: Mapped[str] = mapped_column(String(10))
    subject_user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"), index=True)
    subject_lead_id: Mapped[str | None] = mapped_column(ForeignKey("leads.id"), index=True)
    fields_requested: Mapped[list[str]] = mapped_column(JSON)
    entered_by: Mapped[str] = mapped_column(ForeignKey("users.id"))
    entered_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    verified_by: Mapped[str | None] = mapped_column(ForeignKey("users.id"))
    verified_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    rejected_by: Mapped[str | None] = mapped_column(ForeignKey("users.id"))
    rejected_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    rejection_reason: Mapped[str | None] = mapped_column(String(1000))
    produced_by: Mapped[str | None] = mapped_column(ForeignKey("users.id"))
    produced_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    production_fields: Mapped[list[str] | None] = mapped_column(JSON)
    production_sealed: Mapped[bytes | None] = mapped_column(
        LargeBinary, deferred=True, deferred_raiseload=True
    )
