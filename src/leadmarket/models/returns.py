"""After the sale (M2, M5): returns and their evidence, disputes of denied returns, claims for
other problems, the order's history, buyers an admin trusts, and payouts to sellers.

None of these rows holds a consumer's personal data by design: a return rests on a reason code,
the buyer's note and evidence, never on the lead's contact, so it keeps working after the lead's
personal data is destroyed (L4). Free text is the members' own words about the transaction;
evidence files are stored sealed (AES-GCM) all the same, since a member may upload anything."""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from leadmarket.kit.db import Base, UTCDateTime, utcnow
from leadmarket.kit.ids import new_id


class ReturnReason(enum.StrEnum):
    DISCONNECTED_OR_WRONG_NUMBER = "disconnected_or_wrong_number"
    FAKE_OR_FRAUDULENT_IDENTITY = "fake_or_fraudulent_identity"
    DUPLICATE = "duplicate"
    OUTSIDE_FILTERS = "outside_filters"
    CONSUMER_NEVER_ASKED = "consumer_never_asked"
    OTHER = "other"


class ReturnStatus(enum.StrEnum):
    REQUESTED = "requested"  # the seller decides by ``decide_by``; silence approves
    REVIEW = "review"  # over the buyer's return-rate cap: an admin decides
    APPROVED = "approved"  # refunded (final)
    DENIED = "denied"  # the buyer may dispute until ``dispute_by``; final after a dispute
    DISPUTED = "disputed"  # denied, then disputed: an admin decides, finally


# Returns that keep the order from settling (and that a decision can still change).
OPEN_RETURN_STATUSES = (
    ReturnStatus.REQUESTED.value,
    ReturnStatus.REVIEW.value,
    ReturnStatus.DISPUTED.value,
)


class DecidedBy(enum.StrEnum):
    """How a return was decided."""

    SELLER = "seller"
    SILENCE = "silence"  # the seller let the deadline pass: approved
    TRUSTED = "trusted"  # a trusted buyer's return, approved at once
    ADMIN = "admin"  # an admin's review (over the cap)
    DISPUTE = "dispute"  # an admin's decision of a dispute


class RefundKind(enum.StrEnum):
    RELEASED = "released"  # the order was held: the hold went back to the buyer's wallet
    REFUNDED = "refunded"  # settled: taken back from the seller's payable and the fee
    CLAWED_BACK = "clawed_back"  # settled and (partly) paid out: the seller now owes the rest


class OrderReturn(Base):
    __tablename__ = "order_returns"
    __table_args__ = (
        Index("ix_order_returns_buyer_id_id", "buyer_id", "id"),
        Index("ix_order_returns_seller_id_id", "seller_id", "id"),
        Index("ix_order_returns_status_decide_by", "status", "decide_by"),
        Index("ix_order_returns_buyer_id_requested_at", "buyer_id", "requested_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ret"))
    # One return per order: a second one is refused (409), and the unique index makes sure.
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"), unique=True)
    buyer_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    seller_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    reason: Mapped[str] = mapped_column(String(40))
    note: Mapped[str | None] = mapped_column(String(2000))
    evidence_text: Mapped[str | None] = mapped_column(String(4000))
    status: Mapped[str] = mapped_column(String(12), default=ReturnStatus.REQUESTED.value)
    requested_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The seller's deadline while ``requested``.
    decide_by: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # Why it went to an admin instead of the seller (the rate cap), when it did.
    review_reason: Mapped[str | None] = mapped_column(String(200))
    decided_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    decided_by: Mapped[str | None] = mapped_column(String(12))  # DecidedBy
    decider_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"))
    decision_note: Mapped[str | None] = mapped_column(String(2000))
    # A denial may be disputed until then (NULL: not disputable, e.g. an admin's denial).
    dispute_by: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    refund_kind: Mapped[str | None] = mapped_column(String(12))  # RefundKind
    refunded_cents: Mapped[int | None] = mapped_column(BigInteger)
    # Of a refund after a payout: what the seller's payable went below zero by (they owe it).
    clawed_back_cents: Mapped[int | None] = mapped_column(BigInteger)


class ReturnEvidence(Base):
    """A file a party attached to a return, stored sealed (AES-GCM, under a key derived from
    the service's root secret, bound to this row's id)."""

    __tablename__ = "return_evidence"
    __table_args__ = (Index("ix_return_evidence_return_id_id", "return_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("evd"))
    return_id: Mapped[str] = mapped_column(ForeignKey("order_returns.id"))
    uploaded_by: Mapped[str] = mapped_column(ForeignKey("users.id"))
    filename: Mapped[str] = mapped_column(String(200))
    media_type: Mapped[str] = mapped_column(String(100))
    size_bytes: Mapped[int] = mapped_column(Integer)
    sealed: Mapped[bytes] = mapped_column(LargeBinary)
    uploaded_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class DisputeStatus(enum.StrEnum):
    OPEN = "open"
    DECIDED = "decided"


class DisputeOutcome(enum.StrEnum):
    FOR_BUYER = "for_buyer"  # the return is approved and refunded
    FOR_SELLER = "for_seller"  # the denial stands, finally


class ReturnDispute(Base):
    """A buyer's dispute of a denied return, decided by an admin, finally (one per return)."""

    __tablename__ = "return_disputes"
    __table_args__ = (Index("ix_return_disputes_status_opened_at", "status", "opened_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("dsp"))
    return_id: Mapped[str] = mapped_column(ForeignKey("order_returns.id"), unique=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"), index=True)
    buyer_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    note: Mapped[str] = mapped_column(String(2000))
    status: Mapped[str] = mapped_column(String(10), default=DisputeStatus.OPEN.value)
    opened_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    outcome: Mapped[str | None] = mapped_column(String(12))
    decided_by: Mapped[str | None] = mapped_column(ForeignKey("users.id"))
    decided_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    decision_note: Mapped[str | None] = mapped_column(String(2000))


class ClaimCategory(enum.StrEnum):
    NOT_RECEIVED = "not_received"
    BILLING = "billing"
    MISREPRESENTED = "misrepresented"
    CONDUCT = "conduct"
    OTHER = "other"


class ClaimStatus(enum.StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"
    REJECTED = "rejected"


class OrderClaim(Base):
    """A problem with an order that is not a return, filed by either party, handled by an
    admin."""

    __tablename__ = "order_claims"
    __table_args__ = (
        Index("ix_order_claims_order_id_id", "order_id", "id"),
        Index("ix_order_claims_status_id", "status", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("clm"))
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"))
    filed_by: Mapped[str] = mapped_column(ForeignKey("users.id"))
    filer_role: Mapped[str] = mapped_column(String(10))  # buyer or seller
    category: Mapped[str] = mapped_column(String(20))
    text: Mapped[str] = mapped_column(String(4000))
    status: Mapped[str] = mapped_column(String(10), default=ClaimStatus.OPEN.value)
    filed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    resolved_by: Mapped[str | None] = mapped_column(ForeignKey("users.id"))
    resolved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    resolution: Mapped[str | None] = mapped_column(String(2000))


class OrderEvent(Base):
    """One step in an order's life after the sale, for its history on the order pages: who
    (a member or the system), what (``event``), about which return, dispute or claim, and the
    note given. The audit log records the same decisions, chained."""

    __tablename__ = "order_events"
    __table_args__ = (Index("ix_order_events_order_id_id", "order_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("oev"))
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"))  # NULL: the system
    actor_role: Mapped[str] = mapped_column(String(20))
    event: Mapped[str] = mapped_column(String(40))
    subject_id: Mapped[str | None] = mapped_column(String(40))
    note: Mapped[str | None] = mapped_column(String(2000))


class TrustedBuyer(Base):
    """A buyer an admin trusts: their returns are approved at once, whatever their rate."""

    __tablename__ = "trusted_buyers"

    buyer_id: Mapped[str] = mapped_column(ForeignKey("users.id"), primary_key=True)
    granted_by: Mapped[str] = mapped_column(ForeignKey("users.id"))
    granted_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class PayoutStatus(enum.StrEnum):
    PAID = "paid"


class Payout(Base):
    """Money paid out of a seller's payable through the payment processor (M5). Only payouts
    the processor accepted are stored: a refused one changes nothing."""

    __tablename__ = "payouts"
    __table_args__ = (
        Index("ix_payouts_seller_id_id", "seller_id", "id"),
        CheckConstraint("amount_cents > 0", name="amount_positive"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("pay"))
    seller_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(10), default=PayoutStatus.PAID.value)
    processor: Mapped[str] = mapped_column(String(20))
    processor_reference: Mapped[str] = mapped_column(String(100))
    transaction_id: Mapped[str] = mapped_column(ForeignKey("ledger_transactions.id"), unique=True)
    requested_by: Mapped[str] = mapped_column(String(10))  # "seller" or "schedule"
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
