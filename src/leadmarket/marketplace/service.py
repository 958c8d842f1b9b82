"""Timed auctions (M1): proxy bids, reserve, minimum increment, anti-sniping, and the close.

How a bid is judged, always with the lead's row locked (``SELECT … FOR UPDATE`` on PostgreSQL;
SQLite's write lock holds the whole transaction), so bids on one lead are decided one at a
time and there is exactly one leader at every moment:

* A bid is the buyer's **maximum**. The exchange bids for them, one increment at a time, up to
  it (proxy bidding): the price is the runner-up's maximum plus one increment, never more than
  the leader's maximum. Equal maximums: the earlier bid leads.
* The first bid must reach ``auction_opening_bid_cents``; later ones must beat the price by
  ``auction_min_increment_cents``; the leader may raise their own maximum by at least that much.
* Once the leader's maximum reaches the seller's (hidden) reserve, the price is at least the
  reserve. Below it, the auction can end unsold.
* The leader's maximum is held in their wallet (ledger hold, reference = the bid id), so the
  winner can always pay; an outbid leader's hold is released in the same transaction. A bid
  that does not lead holds nothing, but the wallet must be able to cover it.
* A bid in the last ``auction_extension_minutes`` moves the end to that many minutes after it.

Pages follow along through :mod:`leadmarket.kit.realtime`, published after commit."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.db import insert_ignoring_conflicts, utcnow
from leadmarket.kit.errors import Conflict, DomainError, Forbidden, NotFound
from leadmarket.kit.ids import new_id
from leadmarket.kit.realtime import Broker, publish_after_commit
from leadmarket.leads.service import may_see
from leadmarket.ledger.service import (
    InsufficientFunds,
    hold_funds,
    release_hold,
    wallet_summary,
)
from leadmarket.models import (
    Auction,
    AuctionOutcome,
    Bid,
    BidStatus,
    Lead,
    LeadStatus,
    SaleMode,
    User,
)


class NotAnAuction(Conflict):
    slug = "not-an-auction"
    title = "This lead is not sold by auction"
    explanation = "Bids are for auctioned leads; a fixed-price lead is bought outright."


class AuctionClosed(Conflict):
    slug = "auction-closed"
    title = "The auction has ended"
    explanation = "This lead's auction is over (or the lead left the market); bids are closed."


class BidTooLow(DomainError):
    status = 422
    slug = "bid-too-low"
    title = "Bid below the minimum"
    explanation = (
        "A first bid must reach the opening bid; later bids must beat the current price by the "
        "minimum increment. `minimum_bid_cents` is the lowest bid accepted now."
    )


class OwnLead(Forbidden):
    slug = "own-lead"
    title = "Sellers cannot bid on their own leads"
    explanation = "Shill bidding is not allowed: a seller may not bid on or buy their own lead."


def channel(lead_id: str) -> str:
    return f"auction:{lead_id}"


@dataclass(frozen=True)
class AuctionView:
    """What anyone allowed to see the lead may see of its auction (never who leads)."""

    lead_id: str
    currency: str
    current_price_cents: int | None
    minimum_bid_cents: int | None
    bid_count: int
    ends_at: dt.datetime
    reserve_met: bool
    closed: bool
    outcome: str | None

    def as_message(self) -> dict[str, object]:
        return {
            "lead_id": self.lead_id,
            "currency": self.currency,
            "current_price_cents": self.current_price_cents,
            "minimum_bid_cents": self.minimum_bid_cents,
            "bid_count": self.bid_count,
            "ends_at": self.ends_at.isoformat(),
            "reserve_met": self.reserve_met,
            "closed": self.closed,
            "outcome": self.outcome,
        }


@dataclass(frozen=True)
class PlacedBid:
    id: str
    leading: bool
    current_price_cents: int
    minimum_bid_cents: int
    ends_at: dt.datetime


def _minimum_bid(auction: Auction, settings: Settings) -> int:
    if auction.current_price_cents is None:
        return settings.auction_opening_bid_cents
    return auction.current_price_cents + settings.auction_min_increment_cents


def _view(auction: Auction, settings: Settings) -> AuctionView:
    closed = auction.closed_at is not None
    return AuctionView(
        lead_id=auction.lead_id,
        currency=auction.currency,
        current_price_cents=auction.current_price_cents,
        minimum_bid_cents=None if closed else _minimum_bid(auction, settings),
        bid_count=auction.bid_count,
        ends_at=auction.ends_at,
        reserve_met=auction.reserve_met,
        closed=closed,
        outcome=auction.outcome,
    )


async def _auction_of(session: AsyncSession, lead: Lead) -> Auction:
    """The lead's auction row, made at its first use (the lead's lock is already held)."""
    assert lead.auction_ends_at is not None
    await session.execute(
        insert_ignoring_conflicts(session, Auction, index_elements=[Auction.lead_id]).values(
            lead_id=lead.id,
            currency=lead.currency,
            ends_at=lead.auction_ends_at,
            reserve_met=not lead.reserve_cents,
            bid_count=0,
            extensions=0,
        )
    )
    auction = await session.get(Auction, lead.id, populate_existing=True)
    assert auction is not None
    return auction


async def _locked_lead(session: AsyncSession, lead_id: str) -> Lead | None:
    return await session.scalar(
        select(Lead)
        .where(Lead.id == lead_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


async def auction_view(
    session: AsyncSession, settings: Settings, lead_id: str, viewer: User
) -> tuple[AuctionView, bool]:
    """The auction as ``viewer`` may see it, and whether ``viewer`` leads it."""
    lead = await session.get(Lead, lead_id)
    if lead is None or not may_see(lead, viewer):
        raise NotFound("No such lead.")
    if lead.sale_mode != SaleMode.AUCTION.value or lead.auction_ends_at is None:
        raise NotAnAuction("This lead is sold at a fixed price.")
    auction = await session.get(Auction, lead_id)
    if auction is None:  # no bid yet: nothing to store
        closed = lead.status != LeadStatus.OPEN.value
        return (
            AuctionView(
                lead_id=lead.id,
                currency=lead.currency,
                current_price_cents=None,
                minimum_bid_cents=None if closed else settings.auction_opening_bid_cents,
                bid_count=0,
                ends_at=lead.auction_ends_at,
                reserve_met=not lead.reserve_cents,
                closed=closed,
                outcome=None,
            ),
            False,
        )
    return _view(auction, settings), auction.leader_id == viewer.id


async def place_bid(
    session: AsyncSession,
    settings: Settings,
    broker: Broker,
    *,
    lead_id: str,
    buyer: User,
    amount_cents: int,
) -> PlacedBid:
    """Judge ``buyer``'s bid of at most ``amount_cents`` (see the module's rules). Raises
    NotFound, OwnLead, NotAnAuction, AuctionClosed, BidTooLow or InsufficientFunds; then
    nothing has changed."""
    lead = await _locked_lead(session, lead_id)
    now = utcnow()  # taken under the lock: bids' times follow the order they were judged in
    if lead is None or not may_see(lead, buyer):
        raise NotFound("No such lead.")
    if lead.seller_id == buyer.id:
        raise OwnLead("This is your own lead.")
    if lead.sale_mode != SaleMode.AUCTION.value or lead.auction_ends_at is None:
        raise NotAnAuction("This lead is sold at a fixed price; buy it instead.")
    auction = await _auction_of(session, lead)
    if lead.status != LeadStatus.OPEN.value or auction.closed_at is not None:
        raise AuctionClosed("This auction is over.")
    if now >= auction.ends_at:
        raise AuctionClosed(f"This auction ended at {auction.ends_at.isoformat()}.")

    raising = auction.leader_id == buyer.id
    minimum = (
        (auction.leader_max_cents or 0) + settings.auction_min_increment_cents
        if raising
        else _minimum_bid(auction, settings)
    )
    if amount_cents < minimum:
        raise BidTooLow(
            f"The lowest bid accepted now is {minimum} cents"
            + (" (above your own maximum)." if raising else "."),
            extra={"minimum_bid_cents": minimum},
        )

    bid_id = new_id("bid")
    increment = settings.auction_min_increment_cents
    previous_bid_id = auction.leader_bid_id
    previous_max = auction.leader_max_cents
    if auction.leader_id is None:
        leads, price = True, settings.auction_opening_bid_cents
    elif raising:
        leads, price = True, auction.current_price_cents or settings.auction_opening_bid_cents
    elif amount_cents > (previous_max or 0):
        leads, price = True, min(amount_cents, (previous_max or 0) + increment)
    else:  # the leader's proxy answers; an equal maximum loses to the earlier bid
        leads, price = False, min(previous_max or 0, amount_cents + increment)
    leader_max = amount_cents if leads else (previous_max or 0)
    reserve = lead.reserve_cents or 0
    if reserve and leader_max >= reserve:
        price = max(price, reserve)
    price = min(price, leader_max)

    if leads:
        if raising and previous_bid_id is not None:
            await release_hold(session, previous_bid_id)
        await hold_funds(
            session,
            buyer_id=buyer.id,
            amount_cents=amount_cents,
            currency=lead.currency,
            reference=bid_id,
        )
        if not raising and previous_bid_id is not None:
            await release_hold(session, previous_bid_id)
        if previous_bid_id is not None:
            await session.execute(
                update(Bid)
                .where(Bid.id == previous_bid_id)
                .values(status=(BidStatus.RAISED if raising else BidStatus.OUTBID).value)
            )
        auction.leader_bid_id = bid_id
        auction.leader_id = buyer.id
        auction.leader_max_cents = amount_cents
    else:
        wallet = await wallet_summary(session, buyer.id, lead.currency)
        if wallet.balance_cents < amount_cents:
            raise InsufficientFunds(
                f"A bid of {amount_cents} cents needs that much in your wallet; "
                f"{wallet.balance_cents} cents are available.",
                extra={"required_cents": amount_cents, "available_cents": wallet.balance_cents},
            )
    auction.current_price_cents = price
    auction.reserve_met = not reserve or leader_max >= reserve
    auction.bid_count += 1
    extension = dt.timedelta(minutes=settings.auction_extension_minutes)
    if extension and auction.ends_at - now < extension:
        auction.ends_at = now + extension
        auction.extensions += 1
        lead.auction_ends_at = auction.ends_at
    session.add(
        Bid(
            id=bid_id,
            lead_id=lead.id,
            buyer_id=buyer.id,
            max_cents=amount_cents,
            currency=lead.currency,
            status=(BidStatus.LEADING if leads else BidStatus.OUTBID).value,
            price_after_cents=price,
            leading_after=leads,
            created_at=now,
        )
    )
    await session.flush()
    publish_after_commit(session, broker, channel(lead.id), _view(auction, settings).as_message())
    return PlacedBid(
        id=bid_id,
        leading=leads,
        current_price_cents=price,
        minimum_bid_cents=_minimum_bid(auction, settings),
        ends_at=auction.ends_at,
    )


async def end_auction(
    session: AsyncSession,
    settings: Settings,
    broker: Broker,
    lead: Lead,
    outcome: AuctionOutcome,
    *,
    now: dt.datetime | None = None,
) -> Auction | None:
    """Close ``lead``'s auction (its row must be locked by the caller) without a winner from
    the bidding: the lead left the market, was bought outright, or the time ran out below the
    reserve. Every hold is released and every bid lost. None when nobody ever bid."""
    now = now or utcnow()
    auction = await session.get(Auction, lead.id, populate_existing=True)
    if auction is None or auction.closed_at is not None:
        return auction
    if auction.leader_bid_id is not None:
        await release_hold(session, auction.leader_bid_id)
    await session.execute(
        update(Bid)
        .where(Bid.lead_id == lead.id, Bid.status == BidStatus.LEADING.value)
        .values(status=BidStatus.LOST.value)
    )
    auction.closed_at = now
    auction.outcome = outcome.value
    await session.flush()
    publish_after_commit(session, broker, channel(lead.id), _view(auction, settings).as_message())
    return auction
