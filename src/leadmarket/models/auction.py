"""Timed auctions (M1): the state of each auction and every bid placed in it.

A buyer's bid is a proxy bid: ``max_cents`` is the most they will pay, and the exchange bids for
them, one increment at a time, up to it. The :class:`Auction` row is the single source of truth
for who leads and at what price; it changes only while its lead's row is locked, so there is
exactly one leader at every moment whatever runs concurrently. The leader's maximum is held in
their wallet (ledger hold, reference = the bid id) until they are outbid or the auction ends."""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from leadmarket.kit.db import Base, UTCDateTime, utcnow
from leadmarket.kit.ids import new_id


class BidStatus(enum.StrEnum):
    LEADING = "leading"
    OUTBID = "outbid"  # another bidder's maximum is higher (or as high and earlier)
    RAISED = "raised"  # the leader replaced it with a higher maximum
    WON = "won"
    LOST = "lost"  # the auction ended without this bid winning (reserve not met, or sold)


class AuctionOutcome(enum.StrEnum):
    SOLD = "sold"
    UNSOLD = "unsold"  # no bid, or the reserve was not met
    BOUGHT_OUTRIGHT = "bought_outright"  # someone paid the buy-now price first
    WITHDRAWN = "withdrawn"  # the consumer withdrew consent


class Auction(Base):
    __tablename__ = "auctions"
    __table_args__ = (Index("ix_auctions_open_ends_at", "closed_at", "ends_at"),)

    lead_id: Mapped[str] = mapped_column(
        ForeignKey("leads.id", ondelete="CASCADE"), primary_key=True
    )
    currency: Mapped[str] = mapped_column(String(3))
    ends_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    # What the leader pays if the auction ended now; null until the first bid.
    current_price_cents: Mapped[int | None] = mapped_column(BigInteger)
    leader_bid_id: Mapped[str | None] = mapped_column(String(40))
    leader_id: Mapped[str | None] = mapped_column(String(40))
    leader_max_cents: Mapped[int | None] = mapped_column(BigInteger)
    reserve_met: Mapped[bool] = mapped_column(Boolean, default=False)
    bid_count: Mapped[int] = mapped_column(Integer, default=0)
    extensions: Mapped[int] = mapped_column(Integer, default=0)
    # When the matching buyer campaigns placed their proxy bids (once per auction).
    campaigns_bid_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    outcome: Mapped[str | None] = mapped_column(String(20))


class Bid(Base):
    __tablename__ = "bids"
    __table_args__ = (Index("ix_bids_lead_created", "lead_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("bid"))
    lead_id: Mapped[str] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"))
    buyer_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    max_cents: Mapped[int] = mapped_column(BigInteger)
    # Placed by this buyer campaign, which must still be able to buy (caps, budget) to win.
    campaign_id: Mapped[str | None] = mapped_column(String(40))
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(10))
    # The auction as this bid left it: the price, and whether this bid led.
    price_after_cents: Mapped[int] = mapped_column(BigInteger)
    leading_after: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
