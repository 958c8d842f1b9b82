"""Leads and the places their personal data lives.

A :class:`Lead` row holds only what a buyer may see before buying (L6): vertical, coarse
location, age band, the preview attributes, quality, sale terms. Everything that identifies the
consumer lives sealed in its :class:`LeadVault` row (one data key per lead, wrapped by the
master key), and is found again only through keyed blind indexes. Deleting the vault row and
the indexes destroys the personal data for good (L4)."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.expression import false as sa_false

from leadmarket.kit.db import Base, UTCDateTime, utcnow
from leadmarket.kit.ids import new_id


class LeadStatus(enum.StrEnum):
    OPEN = "open"
    SOLD = "sold"
    UNSOLD = "unsold"
    WITHDRAWN = "withdrawn"


class SaleMode(enum.StrEnum):
    AUCTION = "auction"
    FIXED = "fixed"


class Lead(Base):
    __tablename__ = "leads"
    __table_args__ = (
        Index("ix_leads_status_vertical_region", "status", "vertical", "region"),
        Index("ix_leads_seller_created", "seller_id", "created_at"),
        # The auction sweeps: open auctions by their end.
        Index("ix_leads_mode_status_ends", "sale_mode", "status", "auction_ends_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("lead"))
    seller_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    vertical: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(12), default=LeadStatus.OPEN.value)
    source: Mapped[str] = mapped_column(String(10))  # api, form, csv
    # The coarse location and age band a buyer may see.
    country: Mapped[str] = mapped_column(String(2))
    region: Mapped[str] = mapped_column(String(8))
    city: Mapped[str] = mapped_column(String(100))
    postal_prefix: Mapped[str] = mapped_column(String(3))
    age_band: Mapped[str] = mapped_column(String(10))
    preview_attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    quality_score: Mapped[int] = mapped_column(Integer)
    quality_reasons: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # Sale terms.
    sale_mode: Mapped[str] = mapped_column(String(10))
    currency: Mapped[str] = mapped_column(String(3), default="USD")
    reserve_cents: Mapped[int | None] = mapped_column(Integer)
    buy_now_cents: Mapped[int | None] = mapped_column(Integer)
    price_cents: Mapped[int | None] = mapped_column(Integer)
    duration_minutes: Mapped[int | None] = mapped_column(Integer)
    exclusive: Mapped[bool] = mapped_column(Boolean, default=True)
    max_buyers: Mapped[int] = mapped_column(Integer, default=1)
    # Sales made so far; a sale takes a slot only while it is below the cap (orders.service).
    sold_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    auction_ends_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Retention (L4): set when the lead is sold or its auction ends unsold.
    pii_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, index=True)
    pii_destroyed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class LeadVault(Base):
    """The sealed personal data of one lead: its wrapped data key and one AES-GCM ciphertext per
    field, each bound to the lead id and the field name."""

    __tablename__ = "lead_vaults"

    lead_id: Mapped[str] = mapped_column(
        ForeignKey("leads.id", ondelete="CASCADE"), primary_key=True
    )
    key_version: Mapped[int] = mapped_column(Integer)
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    sealed_fields: Mapped[dict[str, str]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class LeadBlindIndex(Base):
    """Keyed hash of a normalised identifier (email, phone, client address), so duplicates,
    velocity and privacy requests can find a consumer without decrypting anything."""

    __tablename__ = "lead_blind_indexes"
    __table_args__ = (Index("ix_lead_blind_indexes_kind_digest", "kind", "digest", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    lead_id: Mapped[str] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(10))
    digest: Mapped[str] = mapped_column(String(64))
    vertical: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class ConsentText(Base):
    """A disclosure text exactly as shown, stored once and referred to by its SHA-256."""

    __tablename__ = "consent_texts"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Consent(Base):
    """Evidence of a consumer's consent (L3). Holds no personal data: the client address and
    browser are sealed in the lead's vault and only their keyed digests are kept here, so the
    certificate stays verifiable after the lead's personal data is destroyed."""

    __tablename__ = "consents"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("cns"))
    certificate: Mapped[str] = mapped_column(String(64), unique=True)
    lead_id: Mapped[str] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"), unique=True)
    seller_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    vertical: Mapped[str] = mapped_column(String(40))
    text_sha256: Mapped[str] = mapped_column(ForeignKey("consent_texts.sha256"))
    given_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    page_url: Mapped[str] = mapped_column(String(2000))
    parties: Mapped[list[str]] = mapped_column(JSON)
    ip_digest: Mapped[str] = mapped_column(String(64))
    user_agent_digest: Mapped[str] = mapped_column(String(64))
    recorded_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    withdrawn_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # The consumer's browser sent Global Privacy Control (``Sec-GPC: 1``) with the form: the
    # consumer then directed the disclosure to the named parties themselves, the lead is sold
    # to one buyer only and may not be resold or shared onward (see leads.intake).
    global_privacy_control: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=sa_false()
    )


class IdempotencyRecord(Base):
    """The first answer to a POST carrying an ``Idempotency-Key``, replayed for the same key and
    body, refused (409) for the same key with another body."""

    __tablename__ = "idempotency_records"
    __table_args__ = (UniqueConstraint("principal", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    principal: Mapped[str] = mapped_column(String(40))
    key: Mapped[str] = mapped_column(String(200))
    request_sha256: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
