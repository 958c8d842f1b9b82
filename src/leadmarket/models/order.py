"""Orders (a lead sold to one buyer), the record of each disclosure of personal data that a sale
makes (P2), and the buyer's webhook endpoint with its delivery log.

A lead's sales are counted on the lead itself (``leads.sold_count``): a sale takes a slot with
one conditional UPDATE (``… WHERE status = 'open' AND sold_count < cap``), so a shared lead never
sells more than ``max_buyers`` times and an exclusive one once; ``(lead_id, buyer_id)`` is unique,
so no buyer buys the same lead twice."""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from leadmarket.kit.db import Base, UTCDateTime, utcnow
from leadmarket.kit.ids import new_id


class OrderStatus(enum.StrEnum):
    HELD = "held"  # the price is held in the buyer's funds; the return window is open
    SETTLED = "settled"  # paid to the seller after the return window
    CANCELLED = "cancelled"  # held funds released back to the buyer: cancelled or returned
    REFUNDED = "refunded"  # refunded after settlement (a dispute decided for the buyer)


class RefundCause(enum.StrEnum):
    """Why an order's money went back to its buyer (``orders.refund_cause``)."""

    CANCELLED = "cancelled"  # the buyer cancelled before the lead was delivered
    RETURN = "return"  # an approved return (seller, silence, trust, admin or dispute)


class SaleVia(enum.StrEnum):
    """How the sale came about."""

    FIXED = "fixed"  # a fixed-price lead bought outright
    BUY_NOW = "buy_now"  # an auction's buy-now price
    AUCTION = "auction"  # won at the end of an auction
    PING_POST = "ping_post"  # sold in real time to the best ping


class Order(Base):
    __tablename__ = "orders"
    __table_args__ = (
        UniqueConstraint("lead_id", "buyer_id"),
        CheckConstraint("price_cents > 0", name="price_positive"),
        Index("ix_orders_buyer_id_id", "buyer_id", "id"),
        Index("ix_orders_seller_id_id", "seller_id", "id"),
        Index("ix_orders_status_return_window_ends_at", "status", "return_window_ends_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ord"))
    lead_id: Mapped[str] = mapped_column(ForeignKey("leads.id"))
    buyer_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    seller_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    price_cents: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(12), default=OrderStatus.HELD.value)
    via: Mapped[str] = mapped_column(String(12))
    # The ledger hold paying for it: the order id for a purchase; an auction may have held the
    # winning bid's funds under the bid's id before the order existed.
    hold_reference: Mapped[str] = mapped_column(String(80), unique=True)
    purchased_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    return_window_ends_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    settled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    fee_cents: Mapped[int | None] = mapped_column(BigInteger)
    # When the buyer first got the contact (the order page, the API or a webhook delivery): from
    # then on the lead counts as delivered and the order can no longer be cancelled, only
    # returned (issue 6).
    contact_opened_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    refund_cause: Mapped[str | None] = mapped_column(String(12))  # RefundCause
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)  # cancelled or refunded


class Disclosure(Base):
    """One disclosure of personal data to a recipient, written as it happens by
    :func:`leadmarket.privacy.disclosures.record_disclosure`, for the privacy reports (P2: the
    categories sold, and those disclosed for a business purpose, per category of recipient) and
    the law-enforcement record (P10). Holds no personal data itself, so it outlives the lead's
    destruction.

    Whose data: a lead's consumer (``lead_id``) or a member (``subject_user_id``). To whom: a
    member (``recipient_id``, a buyer) or someone outside (``recipient_name``: a service
    provider, an agency). ``sold`` is true only for a sale; everything else is disclosed for a
    business purpose. ``legal_basis`` and ``basis_reference`` say why it was allowed: consumer
    consent and its certificate (a sale, P9), the service-provider contract, or the legal
    document of a verified law-enforcement request (P10)."""

    __tablename__ = "disclosures"
    __table_args__ = (
        Index("ix_disclosures_lead_id", "lead_id"),
        Index("ix_disclosures_subject_user_id", "subject_user_id"),
        Index("ix_disclosures_disclosed_at", "disclosed_at"),
        CheckConstraint("lead_id IS NOT NULL OR subject_user_id IS NOT NULL", name="has_subject"),
        CheckConstraint(
            "recipient_id IS NOT NULL OR recipient_name IS NOT NULL", name="has_recipient"
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("dsc"))
    lead_id: Mapped[str | None] = mapped_column(ForeignKey("leads.id"))
    subject_user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"))
    recipient_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"), index=True)
    recipient_name: Mapped[str | None] = mapped_column(String(200))
    # "buyer", "service_provider" or "law_enforcement" (privacy.disclosures.RecipientCategory).
    recipient_category: Mapped[str] = mapped_column(String(20))
    categories: Mapped[list[str]] = mapped_column(JSON)
    # "sale", "email_delivery", "legal_request" (privacy.disclosures.DisclosurePurpose).
    purpose: Mapped[str] = mapped_column(String(20))
    sold: Mapped[bool] = mapped_column(default=True)  # CCPA: sold, or for a business purpose
    # privacy.disclosures.LegalBasis; NULL only on rows written before it was recorded.
    legal_basis: Mapped[str | None] = mapped_column(String(40))
    # The consent certificate, the contract, or the legal document's reference.
    basis_reference: Mapped[str | None] = mapped_column(String(200))
    order_id: Mapped[str | None] = mapped_column(ForeignKey("orders.id"))
    legal_request_id: Mapped[str | None] = mapped_column(ForeignKey("legal_requests.id"))
    disclosed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookEndpoint(Base):
    """A buyer's endpoint for lead deliveries and its signing secret (Standard Webhooks). The
    service must sign with the secret, so a one-way digest would not do: it is stored sealed
    by master key version ``key_version`` (``kit.keyring``, the keys that wrap leads' data
    keys, rotated by ``leadmarket keys rotate``). ``key_version`` NULL: sealed before
    migration 0017 under a key derived from ``LEADMARKET_SECRET_KEY``; converted on first use
    or by ``leadmarket keys rewrap`` (see ``webhooks.service``)."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("whe"))
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"), unique=True)
    url: Mapped[str] = mapped_column(String(2000))
    secret_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    key_version: Mapped[int | None] = mapped_column(Integer)
    secret_prefix: Mapped[str] = mapped_column(String(16))  # "whsec_" + 4 chars, to tell them apart
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"  # queued or between attempts
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # gave up: out of attempts, or the lead's data is destroyed


class WebhookDelivery(Base):
    """One message to one destination: the order's lead, delivered to ``url``. ``id`` is the
    message's ``webhook-id``, the same on every attempt so the receiver can drop duplicates; a
    replay is a new delivery (a new id) that names the one it replays."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_order_id_id", "order_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("msg"))
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"))
    buyer_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    event_type: Mapped[str] = mapped_column(String(40))
    url: Mapped[str] = mapped_column(String(2000))
    status: Mapped[str] = mapped_column(String(12), default=DeliveryStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    replay_of: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class WebhookAttempt(Base):
    """One HTTP attempt of a delivery: what came back and how long it took. Never the payload
    (it carries the consumer's contact) nor the response body."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_delivery_id_attempt", "delivery_id", "attempt"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("wha"))
    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_deliveries.id"))
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer)
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(String(300))
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
