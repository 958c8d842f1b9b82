"""Buyer campaigns: standing orders that bid on matching leads automatically (issue 4, item 2).

A :class:`Campaign` holds its filters as normalised JSON (checked against the vertical's
definition when written, see ``campaigns.service``). What changes with every sale is kept where
it can be changed atomically: ``spent_cents`` on the campaign row (a conditional ``UPDATE``
against ``budget_cents``) and the delivered counts per day and per month in
:class:`CampaignCapCounter` (one row per campaign, period kind and period key, incremented by a
conditional ``UPDATE … WHERE count < cap``). :class:`MatchingVersion` is the one row every
campaign change bumps, so each process's in-memory matching index knows when to rebuild."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from leadmarket.kit.db import Base, UTCDateTime, utcnow
from leadmarket.kit.ids import new_id


class Campaign(Base):
    __tablename__ = "campaigns"
    __table_args__ = (
        Index("ix_campaigns_buyer_id_id", "buyer_id", "id"),
        Index("ix_campaigns_active_vertical", "active", "vertical"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("cmp"))
    buyer_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    name: Mapped[str] = mapped_column(String(100))
    vertical: Mapped[str] = mapped_column(String(40))
    # {"regions": [...], "postal_prefixes": [...], "age_min", "age_max", "min_quality",
    #  "attributes": {name: [codes] | {"min", "max"} | bool}}; see campaigns.schemas.
    filters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    bid_cents: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3), default="USD")
    daily_cap: Mapped[int | None] = mapped_column(Integer)
    monthly_cap: Mapped[int | None] = mapped_column(Integer)
    # IANA name; caps and the schedule are counted in this zone.
    timezone: Mapped[str] = mapped_column(String(64))
    # {"days": ["mon", …], "start_hour": 8, "end_hour": 18}, or None for every hour.
    schedule: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    budget_cents: Mapped[int | None] = mapped_column(Integer)
    spent_cents: Mapped[int] = mapped_column(Integer, default=0)
    exclusive_only: Mapped[bool] = mapped_column(Boolean, default=False)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # None: the buyer picks leads up through the API.
    webhook_url: Mapped[str | None] = mapped_column(String(2000))
    # The buyer's own real-time bidding endpoint for pings (ping/post), asked in parallel with
    # a deadline; None: the campaign bids its bid_cents on every ping it matches.
    ping_url: Mapped[str | None] = mapped_column(String(2000))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Deleted campaigns are kept (orders and ledger entries will name them) but never shown
    # or matched again.
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class CampaignCapCounter(Base):
    """Leads delivered to a campaign in one period: ``period_kind`` "day" or "month",
    ``period_key`` "2026-11-22" or "2026-11" in the campaign's time zone."""

    __tablename__ = "campaign_cap_counters"

    campaign_id: Mapped[str] = mapped_column(
        ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True
    )
    period_kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    period_key: Mapped[str] = mapped_column(String(10), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)


class MatchingVersion(Base):
    """One row (id 1). ``version`` counts campaign changes; ``stamp`` is a fresh random value on
    every bump, so a bump that was rolled back can never be mistaken for a later committed one
    that reached the same count."""

    __tablename__ = "matching_version"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    version: Mapped[int] = mapped_column(Integer, default=0)
    stamp: Mapped[str] = mapped_column(String(40))
