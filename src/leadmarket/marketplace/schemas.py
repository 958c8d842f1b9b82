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


WINNING = (
    "Whether your maximum holds one of the auction's winning places: it is among the best "
    "`places` maximums and reaches the reserve, so the auction would sell you the lead if it "
    "ended now (false once closed). A shared lead has several places, so you may be winning "
    "without leading."
)
PLACES = (
    "How many buyers the auction sells to: 1 for an exclusive lead, the places a shared lead "
    "has left (buy-now may take some); 0 once closed."
)


class BidOut(BaseModel):
    id: str
    leading: bool = Field(description="Whether your maximum is now the highest.")
    current_price_cents: int
    minimum_bid_cents: int
    ends_at: dt.datetime
    winning: bool = Field(description=WINNING)
    places: int = Field(description=PLACES)


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
    winning: bool = Field(description=WINNING)
    places: int = Field(description=PLACES)
