"""Pings of ping/post (issue 4, item 4): a seller asks what a lead would sell for before sending
its contact data, and posts it within the ping's life.

A :class:`Ping` holds only what a buyer may see before buying (L6): vertical, region, postal
prefix and the preview attributes; the full postal code is kept only as a keyed digest, so the
post can be checked against it without the ping storing it. :class:`PingFingerprint` is the one
row per distinct ping content (seller and fields, as a keyed digest) that refuses the same ping
again within the duplicate window, across processes: a unique key, claimed with one
``INSERT … ON CONFLICT DO UPDATE … WHERE expired``."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from leadmarket.kit.db import Base, UTCDateTime, utcnow
from leadmarket.kit.ids import new_id


class PingOutcome(enum.StrEnum):
    SOLD = "sold"  # posted and sold to a campaign
    UNSOLD = "unsold"  # posted, but no campaign could buy any more: nothing was kept


class Ping(Base):
    __tablename__ = "pings"
    __table_args__ = (
        Index("ix_pings_seller_created", "seller_id", "created_at"),
        # The retention sweep (pingpost.retention) walks the oldest pings first.
        Index("ix_pings_created_at", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("png"))
    seller_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    vertical: Mapped[str] = mapped_column(String(40))
    country: Mapped[str] = mapped_column(String(2))
    region: Mapped[str] = mapped_column(String(8))
    postal_prefix: Mapped[str] = mapped_column(String(3))
    # Keyed digest of the normalised postal code: the post's address must give the same one.
    postal_digest: Mapped[str] = mapped_column(String(64))
    # The band of the age the ping gave ("" if none): the post's birth date must fall in it.
    age_band: Mapped[str] = mapped_column(String(10), default="", server_default="")
    preview_attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    exclusive: Mapped[bool] = mapped_column(Boolean, default=True)
    currency: Mapped[str] = mapped_column(String(3), default="USD")
    accepted: Mapped[bool] = mapped_column(Boolean)
    price_cents: Mapped[int] = mapped_column(Integer, default=0)
    # The winner, then the campaigns that may buy instead if it can no longer buy at the post:
    # [[campaign id, price in cents], …], best first.
    campaign_id: Mapped[str | None] = mapped_column(String(40))
    ranked: Mapped[list[list[Any]]] = mapped_column(JSON, default=list)
    fingerprint: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    # Set once, by the one post that claims the ping (a conditional UPDATE).
    posted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    outcome: Mapped[str | None] = mapped_column(String(10))
    lead_id: Mapped[str | None] = mapped_column(ForeignKey("leads.id", ondelete="SET NULL"))
    order_id: Mapped[str | None] = mapped_column(String(40))
    sold_price_cents: Mapped[int | None] = mapped_column(Integer)


class PingFingerprint(Base):
    """The latest ping of one content; another within ``expires_at`` is a duplicate of it."""

    __tablename__ = "ping_fingerprints"

    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    ping_id: Mapped[str] = mapped_column(String(40))
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
