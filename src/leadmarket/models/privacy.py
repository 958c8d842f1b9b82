"""Consumer rights requests (P1–P6): the request, its event log, and the submission throttle.

States follow the Data Rights Protocol: ``identity_unverified`` → ``pending`` → ``in_progress``
→ ``fulfilled`` | ``partially_fulfilled`` | ``denied``, plus ``expired`` for a verification
that was abandoned or ran out of attempts (the request must then be submitted again).

Nothing here holds personal data in the clear. The requester's identifiers, the data points
given for verification, an agent's proof and the finished report are sealed (AES-256-GCM) under
the request's own data key, which is stored wrapped by the master keyring (like a lead's vault):
deleting the row, or just the wrapped key, makes them unrecoverable. The identifiers are also
kept as the same keyed blind-index digests lead intake stores, which is how the consumer's
leads and earlier requests are found without decrypting anything. The request token and the
one-time code are kept only as digests."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from leadmarket.kit.db import Base, UTCDateTime, utcnow
from leadmarket.kit.ids import new_id


class RequestType(enum.StrEnum):
    KNOW = "know"  # categories (P1)
    ACCESS = "access"  # categories and the specific pieces, portable (P1)
    DELETE = "delete"  # P3
    CORRECT = "correct"  # P3
    OPT_OUT = "opt_out"  # of sale and sharing (P9)


class RequestStatus(enum.StrEnum):
    IDENTITY_UNVERIFIED = "identity_unverified"
    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    FULFILLED = "fulfilled"
    PARTIALLY_FULFILLED = "partially_fulfilled"
    DENIED = "denied"
    EXPIRED = "expired"


# A request in one of these is answered (or abandoned) and no longer moves.
FINAL_STATUSES = frozenset(
    {
        RequestStatus.FULFILLED,
        RequestStatus.PARTIALLY_FULFILLED,
        RequestStatus.DENIED,
        RequestStatus.EXPIRED,
    }
)
OPEN_STATUSES = frozenset(set(RequestStatus) - FINAL_STATUSES)


class DenialReason(enum.StrEnum):
    """Why a request was denied, or answered only in part (Data Rights Protocol codes)."""

    INSUFFICIENT_VERIFICATION = "insufficient_verification"
    NO_MATCH = "no_match"
    TOO_MANY_REQUESTS = "too_many_requests"
    EXCEPTION_APPLIES = "exception_applies"
    AGENT_NOT_AUTHORIZED = "agent_not_authorized"
    INVALID_REQUEST = "invalid_request"
    OTHER = "other"


class OnBehalf(enum.StrEnum):
    SELF = "self"
    AGENT = "agent"  # an authorized agent (P4)
    PARENT = "parent"  # a parent or guardian of a child (P4)


class ProofStatus(enum.StrEnum):
    NOT_NEEDED = "not_needed"
    AWAITING_REVIEW = "awaiting_review"
    ACCEPTED = "accepted"
    REJECTED = "rejected"


class Channel(enum.StrEnum):
    """Where the one-time code (and every later notice) goes."""

    EMAIL = "email"
    PHONE = "phone"


class PrivacyRequest(Base):
    __tablename__ = "privacy_requests"
    __table_args__ = (
        Index("ix_privacy_requests_status_due", "status", "due_at"),
        Index("ix_privacy_requests_type_received", "type", "received_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("prq"))
    type: Mapped[str] = mapped_column(String(12))
    status: Mapped[str] = mapped_column(String(24))
    denial_reason: Mapped[str | None] = mapped_column(String(40))
    # The written reason of a person's decision (an officer's denial); never personal data.
    decision_note: Mapped[str | None] = mapped_column(Text)

    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    confirm_by: Mapped[dt.datetime] = mapped_column(UTCDateTime)  # 10 business days (P5)
    confirmed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    verified_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    due_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)  # 45 days (P5)
    extended_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)  # once, ≤ 90 days
    extension_reason: Mapped[str | None] = mapped_column(Text)
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # Requests and their handling are kept 24 months, then deleted (P5 record keeping).
    purge_after: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)

    token_hash: Mapped[str] = mapped_column(String(64), unique=True)

    # The request's data key, wrapped by the master keyring; everything *_sealed opens with it.
    key_version: Mapped[int] = mapped_column(Integer)
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    email_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    phone_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    email_digest: Mapped[str | None] = mapped_column(String(64), index=True)
    phone_digest: Mapped[str | None] = mapped_column(String(64), index=True)
    # What the privacy officer sees instead of the address: "a…@e….com", "…23".
    contact_hint: Mapped[str] = mapped_column(String(40))
    channel: Mapped[str] = mapped_column(String(8))
    # Free text, or for a correction the JSON object field → new value.
    details_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    # Name, postal code, birth date given only to verify (P4): wiped once used.
    verification_data_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)

    code_digest: Mapped[str | None] = mapped_column(String(64))
    code_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    attempts_left: Mapped[int] = mapped_column(Integer)

    on_behalf: Mapped[str] = mapped_column(String(10), default=OnBehalf.SELF.value)
    agent_name_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    proof_text_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    proof_document_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    proof_status: Mapped[str] = mapped_column(String(16), default=ProofStatus.NOT_NEEDED.value)
    proof_reviewed_by: Mapped[str | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    proof_reviewed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    # The know/access report (personal data: sealed), downloadable until report_available_until.
    report_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    report_available_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # What was done, without personal data: counts, kept records and their legal reasons.
    outcome: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class PrivacyRequestEvent(Base):
    """One change of a request: its state, who made it, when, and why."""

    __tablename__ = "privacy_request_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(
        ForeignKey("privacy_requests.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor_type: Mapped[str] = mapped_column(String(12))  # requester, system, user
    actor_id: Mapped[str | None] = mapped_column(String(40))
    action: Mapped[str] = mapped_column(String(40))
    from_status: Mapped[str | None] = mapped_column(String(24))
    to_status: Mapped[str | None] = mapped_column(String(24))
    reason: Mapped[str | None] = mapped_column(Text)


class PrivacyThrottleHit(Base):
    """One submission counted against a limit (per client address, per identifier); the key
    is a keyed hash, so the throttle keeps no address or email of its own."""

    __tablename__ = "privacy_throttle_hits"
    __table_args__ = (Index("ix_privacy_throttle_hits_key_at", "key_hash", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
