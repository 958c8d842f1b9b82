"""Request and answer bodies of the auction API."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, Field

from leadmarket.kit.schemas import RequestModel

# A sanity bound, not a business rule: a lead is not worth a million dollars.
MAX_BID_CENTS = 100_000_000


class BidIn(RequestModel):
    amount_cents: int = Field(
        gt=0,
        le=MAX_BID_CENTS,
        description="The most you will pay. The exchange bids for you up to it (proxy bid).",
    )


class BidOut(BaseModel):
    id: str
    leading: bool
    current_price_cents: int
    minimum_bid_cents: int
    ends_at: dt.datetime


class AuctionOut(BaseModel):
    lead_id: str
    currency: str
    current_price_cents: int | None
    minimum_bid_cents: int | None
    bid_count: int
    ends_at: dt.datetime
    reserve_met: bool
    closed: bool
    outcome: str | None
    leading: bool = Field(description="Whether you lead (always false for sellers).")
