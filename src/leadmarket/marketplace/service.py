"""Timed auctions (M1): proxy bids, reserve, minimum increment, anti-sniping, and the close.

How a bid is judged, always with the lead's row locked (``SELECT … FOR UPDATE`` on PostgreSQL;
SQLite's write lock holds the whole transaction), so bids on one lead are decided one at a
time and there is exactly one leader at every moment:

* A bid is the buyer's **maximum**. The exchange bids for them, one increment at a time, up to
  it (proxy bidding): the price is the runner-up's maximum plus one increment, never more than
  the leader's maximum. Equal maximums: the earlier bid leads.
* The first bid must reach ``auction_opening_bid_cents``; later ones must beat the price by
  ``auction_min_increment_cents``; the leader may raise their own maximum by at least that much.
  On a shared lead any bid from the opening up may win a lower place, but a maximum only
  rises: a bidder who does not lead must beat their own by the increment, and the price
  never falls because of a lower maximum.
* Once the leader's maximum reaches the seller's (hidden) reserve, the price is at least the
  reserve. Below it, the auction can end unsold.
* The leader's maximum is held in their wallet (ledger hold, reference = the bid id), so the
  winner can always pay; an outbid leader's hold is released in the same transaction. A bid
  that does not lead holds nothing, but the wallet must be able to cover it.
* A bid in the last ``auction_extension_minutes`` moves the end to that many minutes after it.

The close happens at the end itself (M1): when an auction's row is made (its first bid, the
campaigns' turn, or, for an auction nobody has touched, a sweep in its last half minute:
:func:`open_ending_auctions`) a durable ``auctions.close`` job is queued for its end. The job
locks the lead and closes the auction only if it is due; an auction extended meanwhile is not
closed, the job queues its successor at the new end instead. Closing is exactly-once whoever
gets there first (this job, an older one, the sweep): each holds the lead's lock and acts only
while the lead is still open. The ten-second sweep remains the safety net (a worker down at
the end, an auction ending before its row was made).

Every transaction here that moves the money of more than one buyer (a bid outbidding another
buyer, the campaigns' sweep over several auctions, a close selling a shared lead's places, a
close sweep, a buy-now ending an auction) locks all their ledger accounts up front, in one
statement and in the order of the accounts' ids (``ledger.lock_buyer_accounts``), and a close
locks the campaigns able to win before that, by id: two such transactions never hold what
the other waits for, so PostgreSQL never has to pick a deadlock's victim.

Pages follow along through :mod:`leadmarket.kit.realtime`, published after commit."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.audit.service import Actor
from leadmarket.campaigns.matching import (
    CompiledCampaign,
    LeadPreview,
    claim_campaign,
    eligible_campaigns,
)
from leadmarket.config import Settings
from leadmarket.kit.db import (
    insert_ignoring_conflicts,
    pending_after_commit,
    restore_after_commit,
    utcnow,
)
from leadmarket.kit.errors import Conflict, DomainError, NotFound
from leadmarket.kit.ids import new_id
from leadmarket.kit.jobs import enqueue
from leadmarket.kit.money import format_money
from leadmarket.kit.realtime import Broker, publish_after_commit
from leadmarket.leads.service import may_see
from leadmarket.ledger.service import (
    InsufficientFunds,
    hold_funds,
    hold_of,
    lock_buyer_accounts,
    release_hold,
    wallet_balances,
    wallet_summary,
)
from leadmarket.models import (
    Auction,
    AuctionOutcome,
    Bid,
    BidStatus,
    Campaign,
    HoldStatus,
    Lead,
    LeadStatus,
    Order,
    SaleMode,
    SaleVia,
    User,
    UserStatus,
)
from leadmarket.notifications.notify import Event, notify_later
from leadmarket.orders.service import OwnLead, sell
from leadmarket.privacy.retention import retention_deadline


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


# The job that closes one auction at its end (handled in ``marketplace.tasks``).
CLOSE_JOB = "auctions.close"


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
class Standing:
    """Where one bidder stands, told to them alone. ``leading``: theirs is the top maximum.
    ``winning``: theirs is among the best ``places`` maximums that reach the reserve, so the
    auction would sell them a place if it ended now (a shared lead sells to several; M1).
    ``places``: how many buyers the auction sells to (one when exclusive, the places a shared
    lead has left). Once closed there is nothing left to win: no place, nobody winning."""

    leading: bool
    winning: bool
    places: int


@dataclass(frozen=True)
class PlacedBid:
    id: str
    standing: Standing
    current_price_cents: int
    minimum_bid_cents: int
    ends_at: dt.datetime

    @property
    def leading(self) -> bool:
        return self.standing.leading


def places_left(lead: Lead) -> int:
    """How many buyers the auction's close can still sell to: one for an exclusive lead, the
    places a shared lead has not sold yet (buy-now may have taken some)."""
    return max(0, lead.max_buyers - lead.sold_count)


def _minimum_bid(auction: Auction, settings: Settings, lead: Lead) -> int:
    """The lowest bid a newcomer may place now. A shared lead has places below the top one,
    so any bid from the opening up may win one (the close sells to the best maximums)."""
    if auction.current_price_cents is None or places_left(lead) > 1:
        return settings.auction_opening_bid_cents
    return auction.current_price_cents + settings.auction_min_increment_cents


def _view(auction: Auction, settings: Settings, lead: Lead) -> AuctionView:
    closed = auction.closed_at is not None
    return AuctionView(
        lead_id=auction.lead_id,
        currency=auction.currency,
        current_price_cents=auction.current_price_cents,
        minimum_bid_cents=None if closed else _minimum_bid(auction, settings, lead),
        bid_count=auction.bid_count,
        ends_at=auction.ends_at,
        reserve_met=auction.reserve_met,
        closed=closed,
        outcome=auction.outcome,
    )


def _publish(
    session: AsyncSession, broker: Broker, auction: Auction, settings: Settings, lead: Lead
) -> None:
    """Tell the auction's pages, once this transaction has committed."""
    publish_after_commit(
        session, broker, channel(lead.id), _view(auction, settings, lead).as_message()
    )


async def schedule_close(session: AsyncSession, lead_id: str, ends_at: dt.datetime) -> None:
    """Queue the job that closes ``lead_id``'s auction at ``ends_at``, in the caller's
    transaction; once per end (the dedupe key names it), however often this is asked."""
    await enqueue(
        session,
        CLOSE_JOB,
        {"lead_id": lead_id},
        run_at=ends_at,
        dedupe_key=f"{CLOSE_JOB}:{lead_id}:{ends_at.timestamp():.6f}",
    )


async def publish_state(
    session: AsyncSession, settings: Settings, broker: Broker, lead_id: str
) -> None:
    """Tell the auction's live pages its state once this transaction commits, after a change
    made outside this module (a buy-now ending it)."""
    lead = await session.get(Lead, lead_id, populate_existing=True)
    auction = await session.get(Auction, lead_id, populate_existing=True)
    if lead is not None and auction is not None:
        _publish(session, broker, auction, settings, lead)


async def _auction_of(session: AsyncSession, lead: Lead) -> Auction:
    """The lead's auction row, made at its first use (the lead's lock is already held). Made
    before its end, it also queues the job that closes it then (M1)."""
    assert lead.auction_ends_at is not None
    made = await session.execute(
        insert_ignoring_conflicts(session, Auction, index_elements=[Auction.lead_id]).values(
            lead_id=lead.id,
            currency=lead.currency,
            ends_at=lead.auction_ends_at,
            reserve_met=not lead.reserve_cents,
            bid_count=0,
            extensions=0,
        )
    )
    if int(getattr(made, "rowcount", 0) or 0) == 1 and lead.auction_ends_at > utcnow():
        await schedule_close(session, lead.id, lead.auction_ends_at)
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


async def _winners_now(session: AsyncSession, lead: Lead, places: int) -> set[str]:
    """The buyers the close would sell to if it came now: each buyer's standing maximum (their
    last bid), best first, an equal maximum ranked by the earlier bid, as :func:`close_auction`
    ranks them; skipping suspended buyers and those who already bought the lead (buy-now), and
    stopping below the reserve. One query, whatever the number of bids."""
    last = (
        select(
            Bid.buyer_id,
            Bid.max_cents,
            Bid.created_at,
            Bid.id,
            func.row_number()
            .over(partition_by=Bid.buyer_id, order_by=(Bid.created_at.desc(), Bid.id.desc()))
            .label("newest"),
        )
        .where(Bid.lead_id == lead.id)
        .subquery()
    )
    query = (
        select(last.c.buyer_id)
        .join(User, User.id == last.c.buyer_id)
        .where(
            last.c.newest == 1,
            User.status == UserStatus.ACTIVE.value,
            ~exists().where(Order.lead_id == lead.id, Order.buyer_id == last.c.buyer_id),
        )
        .order_by(last.c.max_cents.desc(), last.c.created_at, last.c.id)
        .limit(places)
    )
    if lead.reserve_cents:
        query = query.where(last.c.max_cents >= lead.reserve_cents)
    return set(await session.scalars(query))


async def _standing(
    session: AsyncSession, lead: Lead, auction: Auction | None, buyer_id: str
) -> Standing:
    if auction is None or auction.leader_id is None:
        open_ = lead.status == LeadStatus.OPEN.value and (auction is None or not auction.closed_at)
        return Standing(leading=False, winning=False, places=places_left(lead) if open_ else 0)
    leading = auction.leader_id == buyer_id
    if auction.closed_at is not None:  # the outcome and the buyer's orders say the rest
        return Standing(leading=leading, winning=False, places=0)
    places = places_left(lead)
    return Standing(
        leading=leading,
        winning=places > 0 and buyer_id in await _winners_now(session, lead, places),
        places=places,
    )


async def auction_view(
    session: AsyncSession, settings: Settings, lead_id: str, viewer: User
) -> tuple[AuctionView, Standing]:
    """The auction as ``viewer`` may see it, and where ``viewer`` stands in it."""
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
            await _standing(session, lead, None, viewer.id),
        )
    return _view(auction, settings, lead), await _standing(session, lead, auction, viewer.id)


async def _own_standing_max(
    session: AsyncSession, lead: Lead | None, auction: Auction | None, buyer_id: str
) -> int | None:
    """The maximum ``buyer_id`` stands with on a shared lead without leading it (their last
    bid), or None. (On an exclusive lead such a maximum is at most the price, which a new bid
    must beat anyway; the leader's is the auction's.)"""
    if (
        lead is None
        or auction is None
        or auction.leader_id in (None, buyer_id)
        or places_left(lead) <= 1
    ):
        return None
    own: int | None = await session.scalar(
        select(Bid.max_cents)
        .where(Bid.lead_id == lead.id, Bid.buyer_id == buyer_id)
        .order_by(Bid.created_at.desc(), Bid.id.desc())
        .limit(1)
    )
    return own


def _judge(
    lead: Lead | None,
    auction: Auction | None,
    buyer: User,
    amount_cents: int,
    settings: Settings,
    now: dt.datetime,
    own_max: int | None = None,
) -> bool:
    """Refuse the bid if the lead and its auction (None: no bid yet) say so; whether the buyer
    is raising their own leading maximum. ``own_max``: the buyer's standing maximum when they
    bid before without leading (a shared lead, where such a bidder may bid again): a maximum
    only rises, so the new one must beat it by the increment."""
    if lead is None or not may_see(lead, buyer):
        raise NotFound("No such lead.")
    if lead.seller_id == buyer.id:
        raise OwnLead("This is your own lead.")
    if lead.sale_mode != SaleMode.AUCTION.value or lead.auction_ends_at is None:
        raise NotAnAuction("This lead is sold at a fixed price; buy it instead.")
    if lead.status != LeadStatus.OPEN.value or (auction is not None and auction.closed_at):
        raise AuctionClosed("This auction is over.")
    ends_at = auction.ends_at if auction is not None else lead.auction_ends_at
    if now >= ends_at:
        raise AuctionClosed(f"This auction ended at {ends_at.isoformat()}.")
    raising = auction is not None and auction.leader_id == buyer.id
    above_own = raising
    if auction is not None and raising:
        minimum = (auction.leader_max_cents or 0) + settings.auction_min_increment_cents
    elif auction is not None:
        minimum = _minimum_bid(auction, settings, lead)
        if own_max is not None and own_max + settings.auction_min_increment_cents > minimum:
            minimum, above_own = own_max + settings.auction_min_increment_cents, True
    else:
        minimum = settings.auction_opening_bid_cents
    if amount_cents < minimum:
        raise BidTooLow(
            f"The lowest bid accepted now is {format_money(minimum, lead.currency)}"
            + (" (above your own maximum)." if above_own else "."),
            extra={"minimum_bid_cents": minimum},
        )
    return raising


async def place_bid(
    session: AsyncSession,
    settings: Settings,
    broker: Broker,
    *,
    lead_id: str,
    buyer: User,
    amount_cents: int,
    campaign_id: str | None = None,
) -> PlacedBid:
    """Judge ``buyer``'s bid of at most ``amount_cents`` (see the module's rules). Raises
    NotFound, OwnLead, NotAnAuction, AuctionClosed, BidTooLow or InsufficientFunds; then
    nothing has changed."""
    # A first look without the lock. A price only rises and an auction only closes, so a bid
    # refused now would be refused under the lock too: in a busy auction most bids end here
    # without queueing for the lead's row.
    _judge(
        await session.get(Lead, lead_id),
        await session.get(Auction, lead_id),
        buyer,
        amount_cents,
        settings,
        utcnow(),
    )
    lead = await _locked_lead(session, lead_id)
    now = utcnow()  # taken under the lock: bids' times follow the order they were judged in
    existing = await session.get(Auction, lead_id, populate_existing=True)
    raising = _judge(
        lead,
        existing,
        buyer,
        amount_cents,
        settings,
        now,
        await _own_standing_max(session, lead, existing, buyer.id),
    )
    assert lead is not None
    auction = existing or await _auction_of(session, lead)

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
        # A shared lead takes bids below the price (they may win a lower place): the price,
        # one increment above the best maximum under the leader's, never falls for them.
        price = max(price, auction.current_price_cents or 0)
    leader_max = amount_cents if leads else (previous_max or 0)
    reserve = lead.reserve_cents or 0
    if reserve and leader_max >= reserve:
        price = max(price, reserve)
    price = min(price, leader_max)

    if leads:
        if auction.leader_id is not None and auction.leader_id != buyer.id:
            # Both buyers' accounts, in one global order, before either moves: the bidder's
            # hold and the outbid leader's release would otherwise lock them in opposite
            # orders in two bids by the same two buyers on different leads, and deadlock.
            # (One buyer's own accounts are always locked in id order: nothing to do.)
            await lock_buyer_accounts(session, lead.currency, [buyer.id, auction.leader_id])
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
            if not raising:
                # The buyer who led is told after the commit (one outbox row here).
                await notify_later(session, Event.OUTBID, previous_bid_id)
        auction.leader_bid_id = bid_id
        auction.leader_id = buyer.id
        auction.leader_max_cents = amount_cents
    else:
        wallet = await wallet_summary(session, buyer.id, lead.currency)
        if wallet.balance_cents < amount_cents:
            raise InsufficientFunds(
                f"A bid of {format_money(amount_cents, lead.currency)} needs that much in your "
                f"wallet; {format_money(wallet.balance_cents, lead.currency)} is available.",
                extra={
                    "required_cents": amount_cents,
                    "available_cents": wallet.balance_cents,
                    "currency": lead.currency,
                },
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
            campaign_id=campaign_id,
            currency=lead.currency,
            status=(BidStatus.LEADING if leads else BidStatus.OUTBID).value,
            price_after_cents=price,
            leading_after=leads,
            created_at=now,
        )
    )
    await session.flush()
    _publish(session, broker, auction, settings, lead)
    places = places_left(lead)
    if places > 1:
        standing = await _standing(session, lead, auction, buyer.id)
    else:  # one place: the leader's, once the reserve is met (no need to rank the bids)
        standing = Standing(leading=leads, winning=leads and auction.reserve_met, places=places)
    return PlacedBid(
        id=bid_id,
        standing=standing,
        current_price_cents=price,
        minimum_bid_cents=_minimum_bid(auction, settings, lead),
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
    tell: bool = True,
    buyer_next: str | None = None,
) -> Auction | None:
    """Close ``lead``'s auction (its row must be locked by the caller) without a winner from
    the bidding: the lead left the market, was bought outright, or the time ran out below the
    reserve. Every hold is released and every bid lost. None when nobody ever bid. The bidders
    are told after the commit, unless ``tell`` is False: the caller tells them itself (the
    fraud review, whose notice says why and names the seller, M6). ``buyer_next``: the buyer
    this transaction sells to next (buy-now), whose accounts are locked with the leader's."""
    now = now or utcnow()
    auction = await session.get(Auction, lead.id, populate_existing=True)
    if auction is None or auction.closed_at is not None:
        return auction
    if buyer_next is not None and auction.leader_id not in (None, buyer_next):
        await lock_buyer_accounts(session, lead.currency, [buyer_next, auction.leader_id])
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
    if auction.bid_count and tell:
        await notify_later(session, Event.AUCTION_ENDED, lead.id)  # the bidders lost
    _publish(session, broker, auction, settings, lead)
    return auction


# Buyer campaigns bidding (issue 4 §2) -----------------------------------------------------


@dataclass(frozen=True)
class _CampaignBid:
    campaign_id: str
    buyer_id: str
    cents: int


def _campaign_bids(lead: Lead, shortlist: list[CompiledCampaign]) -> list[_CampaignBid]:
    """The proxy bids the campaigns would place on ``lead``, highest first: each buyer's best
    matching campaign in the lead's currency (never the seller's own)."""
    seen = {lead.seller_id}
    bids: list[_CampaignBid] = []
    for campaign in shortlist:
        if campaign.buyer_id in seen or campaign.currency != lead.currency:
            continue
        seen.add(campaign.buyer_id)
        bids.append(_CampaignBid(campaign.id, campaign.buyer_id, campaign.bid_cents))
    return bids


async def _leaders(session: AsyncSession, lead_ids: list[str]) -> dict[str, tuple[str, int]]:
    """Each of these auctions' leader and their maximum (auctions with a leader only)."""
    rows = await session.execute(
        select(Auction.lead_id, Auction.leader_id, Auction.leader_max_cents).where(
            Auction.lead_id.in_(lead_ids), Auction.leader_id.is_not(None)
        )
    )
    return {str(lead_id): (str(leader), int(top or 0)) for lead_id, leader, top in rows.all()}


class _ForecastMissed(Exception):
    """A campaign's bid would lead, and so hold funds, for a buyer whose accounts the sweep
    did not lock up front: the forecast of who can pay was wrong (a wallet changed between
    its unlocked read and the lock). The sweep starts over with that buyer locked too."""

    def __init__(self, buyer_id: str) -> None:
        super().__init__(buyer_id)
        self.buyer_id = buyer_id


# Sweeps started over with the buyers a forecast missed; the last one locks every buyer whose
# bid could lead (a superset: it cannot miss).
_FORECAST_RETRIES = 2


async def _forecast_bidders(
    session: AsyncSession, plans: list[tuple[Lead, list[_CampaignBid]]]
) -> set[str]:
    """Every buyer the campaigns' bids on these leads may move money for: each auction's
    leader (released when outbid) and the campaign forecast to take the lead (held), the best
    one whose wallet, read unlocked, covers its bid, with what its forecast leads elsewhere
    already took. Bids below the leader's maximum move nobody's money."""
    leaders = await _leaders(session, [lead.id for lead, _ in plans])
    balances: dict[str, dict[str, int]] = {}
    for lead, bids in plans:
        top = leaders.get(lead.id, ("", 0))[1]
        wanted = {b.buyer_id for b in bids if b.cents > top}
        known = balances.setdefault(lead.currency, {})
        missing = wanted - known.keys()
        if missing:
            known.update(await wallet_balances(session, lead.currency, missing))
    locked: set[str] = set()
    for lead, bids in plans:
        leader, top = leaders.get(lead.id, ("", 0))
        if leader:
            locked.add(leader)
        wallets = balances.get(lead.currency, {})
        for bid in bids:
            if bid.cents > top and wallets.get(bid.buyer_id, 0) >= bid.cents:
                locked.add(bid.buyer_id)
                wallets[bid.buyer_id] -= bid.cents
                break
    return locked


async def _every_possible_bidder(
    session: AsyncSession, plans: list[tuple[Lead, list[_CampaignBid]]]
) -> set[str]:
    """Each auction's leader and every buyer whose campaign's bid beats the leader's maximum:
    whoever's money these bids may move, whatever the wallets hold."""
    leaders = await _leaders(session, [lead.id for lead, _ in plans])
    buyers: set[str] = set()
    for lead, bids in plans:
        leader, top = leaders.get(lead.id, ("", 0))
        if leader:
            buyers.add(leader)
        buyers.update(bid.buyer_id for bid in bids if bid.cents > top)
    return buyers


async def _campaigns_bid(
    session: AsyncSession,
    settings: Settings,
    broker: Broker,
    lead: Lead,
    bids: list[_CampaignBid],
    locked: set[str],
    now: dt.datetime,
) -> list[str]:
    auction = await _auction_of(session, lead)
    auction.campaigns_bid_at = now
    await session.flush()
    placed: list[str] = []
    for pick in bids:  # highest bid first, so the others rarely need a hold
        if pick.buyer_id not in locked and pick.cents > (auction.leader_max_cents or 0):
            # It would lead and hold funds, but its accounts were not locked up front: locking
            # them now could deadlock. A wallet that cannot cover the bid, read now, is no
            # loss (the bid would be refused); one that can means the forecast missed.
            wallet = await wallet_balances(session, lead.currency, [pick.buyer_id])
            if wallet[pick.buyer_id] < pick.cents:
                continue
            raise _ForecastMissed(pick.buyer_id)
        buyer = await session.get(User, pick.buyer_id)
        if buyer is None:
            continue
        try:
            async with session.begin_nested():
                bid = await place_bid(
                    session,
                    settings,
                    broker,
                    lead_id=lead.id,
                    buyer=buyer,
                    amount_cents=pick.cents,
                    campaign_id=pick.campaign_id,
                )
        except DomainError:
            continue  # too low by now, or the buyer's wallet cannot cover it
        placed.append(bid.id)
    return placed


async def _bid_for_campaigns_on(
    session: AsyncSession,
    settings: Settings,
    broker: Broker,
    leads: list[Lead],
    now: dt.datetime,
) -> list[str]:
    if not leads:
        return []
    plans = [
        (
            lead,
            _campaign_bids(
                lead, await eligible_campaigns(session, LeadPreview.of_lead(lead), now=now)
            ),
        )
        for lead in leads
    ]
    currencies = {lead.currency for lead, _ in plans}
    locked = await _forecast_bidders(session, plans)
    for attempt in range(_FORECAST_RETRIES + 1):
        if attempt == _FORECAST_RETRIES:
            locked |= await _every_possible_bidder(session, plans)
        pending_effects = pending_after_commit(session)
        try:
            # A savepoint, so that a missed forecast rolls back this sweep's bids and lets go
            # of the accounts' locks (PostgreSQL releases a savepoint's row locks with it):
            # the next try locks the larger set afresh, in the global order.
            async with session.begin_nested():
                await lock_buyer_accounts(session, currencies, locked)
                placed: list[str] = []
                for lead, bids in plans:
                    placed += await _campaigns_bid(
                        session, settings, broker, lead, bids, locked, now
                    )
                return placed
        except _ForecastMissed as missed:
            locked.add(missed.buyer_id)
            restore_after_commit(session, pending_effects)  # no live update of undone bids
            for lead, _ in plans:
                await session.refresh(lead)
    raise AssertionError("the last try locks every possible bidder: it cannot miss")


async def bid_for_campaigns(
    session: AsyncSession,
    settings: Settings,
    broker: Broker,
    lead: Lead,
    *,
    now: dt.datetime | None = None,
) -> list[str]:
    """Let the buyer campaigns that want ``lead`` (its row locked by the caller) place their
    proxy bids, once per auction: each buyer's best matching campaign bids its ``bid_cents``
    as a maximum. A campaign whose buyer cannot cover it, or whose bid is already beaten,
    simply does not bid. Caps and budget are claimed only if the campaign wins (at the close),
    so a campaign never buys past them. The accounts the bids may move are locked first, all
    at once (see :func:`_forecast_bidders` and :func:`_bid_for_campaigns_on`). The ids of the
    bids placed."""
    return await _bid_for_campaigns_on(session, settings, broker, [lead], now or utcnow())


async def _claim_running(
    session: AsyncSession, now: dt.datetime, limit: int, *conditions: ColumnElement[bool]
) -> list[Lead]:
    """Up to ``limit`` leads whose auction runs at ``now`` and meets ``conditions`` (on the
    lead and its auction row, if any), soonest end first, locked ``FOR UPDATE SKIP LOCKED`` so
    that several workers' sweeps share them."""
    return list(
        await session.scalars(
            select(Lead)
            .outerjoin(Auction, Auction.lead_id == Lead.id)
            .where(
                Lead.sale_mode == SaleMode.AUCTION.value,
                Lead.status == LeadStatus.OPEN.value,
                Lead.auction_ends_at > now,
                *conditions,
            )
            .order_by(Lead.auction_ends_at)
            .limit(limit)
            .with_for_update(of=Lead, skip_locked=True)
        )
    )


async def campaigns_bid_on_new_auctions(
    session: AsyncSession,
    settings: Settings,
    broker: Broker,
    *,
    now: dt.datetime | None = None,
    limit: int = 50,
) -> int:
    """The sweep that brings campaigns to new auctions. Leads are claimed with ``FOR UPDATE
    SKIP LOCKED``, so several workers share the work and no auction is bid on twice. The
    buyers' accounts that the bids on all of them may move are locked at once, in the global
    order, before the first bid: two sweeps (or a sweep and a bid) never lock two buyers in
    opposite orders."""
    now = now or utcnow()
    leads = await _claim_running(session, now, limit, Auction.campaigns_bid_at.is_(None))
    await _bid_for_campaigns_on(session, settings, broker, leads, now)
    return len(leads)


async def open_ending_auctions(
    session: AsyncSession,
    *,
    now: dt.datetime | None = None,
    horizon: dt.timedelta = dt.timedelta(seconds=30),
    limit: int = 200,
) -> int:
    """The sweep that makes sure every auction's close is queued before its end (M1, L4): the
    auctions ending within ``horizon`` that nothing has touched yet (no bid, and the campaigns'
    sweep has not reached them: it bids on at most ``limit`` auctions per turn) get their row
    now, which queues the ``auctions.close`` job at their end. An auction that ends without a
    bid is then closed (unsold) at its end, and its personal data's 48 hours run from there,
    rather than at the next close sweep. Leads are claimed with ``FOR UPDATE SKIP LOCKED``:
    one locked by a bid is being given its row anyway. The number of auctions opened."""
    now = now or utcnow()
    leads = await _claim_running(
        session, now, limit, Lead.auction_ends_at <= now + horizon, Auction.lead_id.is_(None)
    )
    for lead in leads:
        await _auction_of(session, lead)
    return len(leads)


# The close --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Candidate:
    buyer_id: str
    max_cents: int
    bid_id: str
    campaign_id: str | None


def _candidates(bids: list[Bid]) -> list[_Candidate]:
    """Each buyer's standing maximum (their last bid: a buyer can only raise), best first; an
    equal maximum ranks the earlier bid first."""
    last: dict[str, Bid] = {}
    for bid in bids:  # in the order they were judged
        last[bid.buyer_id] = bid
    ranked = sorted(last.values(), key=lambda b: (-b.max_cents, b.created_at, b.id))
    return [_Candidate(b.buyer_id, b.max_cents, b.id, b.campaign_id) for b in ranked]


def _price_for(rank: int, candidates: list[_Candidate], lead: Lead, settings: Settings) -> int:
    """What the candidate at ``rank`` pays: one increment above the next maximum (or the
    opening bid alone), at least the reserve, never above their own maximum."""
    own = candidates[rank].max_cents
    if rank + 1 < len(candidates):
        price = candidates[rank + 1].max_cents + settings.auction_min_increment_cents
    else:
        price = settings.auction_opening_bid_cents
    if lead.reserve_cents:
        price = max(price, lead.reserve_cents)
    return min(price, own)


async def lock_money_of(
    session: AsyncSession,
    *,
    closing: Sequence[Lead] = (),
    ending: Sequence[Lead] = (),
    buyers: Sequence[str] = (),
) -> None:
    """Before the auctions of ``closing`` are closed (sold to their winners) and those of
    ``ending`` ended without a winner (their rows locked by the caller), lock everything of
    their buyers' that this will touch, all at once and in one global order: first the
    campaigns that placed a bid able to win (claimed at the close; ping/post, too, claims a
    campaign before it moves its buyer's money), by id, then the wallet and held accounts of
    those bidders, of every leader (whose hold is released) and of ``buyers`` (who buy next in
    the same transaction: buy-now), by id. Taken one sale at a time instead, two closes
    selling to the same two buyers in opposite orders would deadlock (issue 4)."""
    lead_ids = [lead.id for lead in (*closing, *ending)]
    if not lead_ids:
        return
    people = set(buyers) | {leader for leader, _ in (await _leaders(session, lead_ids)).values()}
    campaigns: set[str] = set()
    if closing:
        bids: dict[str, list[Bid]] = {lead.id: [] for lead in closing}
        for bid in await session.scalars(
            select(Bid).where(Bid.lead_id.in_(list(bids))).order_by(Bid.created_at, Bid.id)
        ):
            bids[bid.lead_id].append(bid)
        for lead in closing:
            _may_win(lead, _candidates(bids[lead.id]), people, campaigns)
    await _lock_in_order(
        session, {lead.currency for lead in (*closing, *ending)}, people, campaigns
    )


def _may_win(
    lead: Lead, candidates: list[_Candidate], people: set[str], campaigns: set[str]
) -> None:
    """Add to ``people`` and ``campaigns`` the bidders (and their campaigns) whose maximum
    reaches ``lead``'s reserve: the ones its close may sell to."""
    for candidate in candidates:
        if lead.reserve_cents and candidate.max_cents < lead.reserve_cents:
            break  # the rest are lower still: no place for them
        people.add(candidate.buyer_id)
        if candidate.campaign_id is not None:
            campaigns.add(candidate.campaign_id)


async def _lock_in_order(
    session: AsyncSession, currencies: set[str], people: set[str], campaigns: set[str]
) -> None:
    """The campaigns, by id, then the buyers' wallet and held accounts, by id."""
    if campaigns:
        await session.execute(
            select(Campaign.id)
            .where(Campaign.id.in_(sorted(campaigns)))
            .order_by(Campaign.id)
            .with_for_update()
        )
    await lock_buyer_accounts(session, currencies, people)


async def close_auction(
    session: AsyncSession,
    settings: Settings,
    broker: Broker,
    lead: Lead,
    *,
    now: dt.datetime | None = None,
    money_locked: bool = False,
) -> list[str]:
    """End ``lead``'s auction (its row locked by the caller, its time up): sell to the best
    maximums that reach the reserve, as many buyers as the lead has places left (one when
    exclusive), each at one increment above the next maximum. A winner placed by a campaign
    must still be able to buy (the campaign's caps and budget are claimed now); a winner who
    cannot (a campaign exhausted meanwhile, funds gone) is passed over for the next. With no
    winner the lead is unsold, and its personal data is destroyed 48 hours after the end (L4);
    so is a shared lead's whose places are not all taken. The campaigns and accounts the close
    may touch are locked first, all at once (:func:`lock_money_of`), unless the caller did so
    (``money_locked``). The ids of the orders made."""
    now = now or utcnow()
    auction = await _auction_of(session, lead)
    bids = list(
        await session.scalars(
            select(Bid).where(Bid.lead_id == lead.id).order_by(Bid.created_at, Bid.id)
        )
    )
    candidates = _candidates(bids)
    if not money_locked:  # as lock_money_of would, from the bids at hand
        people = {auction.leader_id} if auction.leader_id else set()
        campaigns: set[str] = set()
        _may_win(lead, candidates, people, campaigns)
        await _lock_in_order(session, {lead.currency}, people, campaigns)
    if candidates:
        # A bidder suspended or banned since bidding (fraud review, M6) wins nothing: no
        # consumer's contact goes to an account that was stopped.
        active = set(
            await session.scalars(
                select(User.id).where(
                    User.id.in_({c.buyer_id for c in candidates}),
                    User.status == UserStatus.ACTIVE.value,
                )
            )
        )
        candidates = [c for c in candidates if c.buyer_id in active]
    places = places_left(lead)
    preview = LeadPreview.of_lead(lead)
    orders: list[str] = []
    winners: set[str] = set()
    for rank, candidate in enumerate(candidates):
        if len(orders) >= places:
            break
        if lead.reserve_cents and candidate.max_cents < lead.reserve_cents:
            break  # the rest are lower still
        price = _price_for(rank, candidates, lead, settings)
        try:
            async with session.begin_nested():
                deliver_to = None
                if candidate.campaign_id is not None:
                    campaign = await claim_campaign(
                        session, candidate.campaign_id, preview, price_cents=price, now=now
                    )
                    if campaign is None:
                        continue  # paused, capped or out of budget since it bid
                    deliver_to = campaign.webhook_url
                if candidate.bid_id == auction.leader_bid_id:
                    await release_hold(session, candidate.bid_id)  # the price is held anew
                order = await sell(
                    session,
                    settings,
                    lead_id=lead.id,
                    buyer_id=candidate.buyer_id,
                    price_cents=price,
                    via=SaleVia.AUCTION,
                    deliver_to=deliver_to,
                    actor=Actor("system", "auction-close"),
                )
        except DomainError:
            continue  # this winner cannot buy any more; the next one may
        orders.append(order.id)
        winners.add(candidate.bid_id)

    if auction.leader_bid_id is not None and auction.leader_bid_id not in winners:
        hold = await hold_of(session, auction.leader_bid_id)
        if hold is not None and hold.status == HoldStatus.HELD.value:
            await release_hold(session, auction.leader_bid_id)
    await session.execute(
        update(Bid)
        .where(Bid.lead_id == lead.id, Bid.id.in_(winners))
        .values(status=BidStatus.WON.value)
    )
    await session.execute(
        update(Bid)
        .where(Bid.lead_id == lead.id, Bid.status == BidStatus.LEADING.value)
        .values(status=BidStatus.LOST.value)
    )
    await session.refresh(lead)
    ended = lead.auction_ends_at or now
    if lead.sold_count > 0:
        lead.status = LeadStatus.SOLD.value  # an auctioned lead goes to its auction's winners
        if lead.pii_expires_at is None:
            # A shared lead with places left: its sale closes with its auction (L4).
            lead.pii_expires_at = retention_deadline(ended, settings)
    else:
        lead.status = LeadStatus.UNSOLD.value
        lead.pii_expires_at = retention_deadline(ended, settings)
    auction.closed_at = now
    auction.outcome = (AuctionOutcome.SOLD if orders else AuctionOutcome.UNSOLD).value
    await session.flush()
    # Winners, losers and the seller are told by the worker after this sweep commits.
    await notify_later(session, Event.AUCTION_ENDED, lead.id)
    _publish(session, broker, auction, settings, lead)
    return orders


async def close_due_auctions(
    session: AsyncSession,
    settings: Settings,
    broker: Broker,
    *,
    now: dt.datetime | None = None,
    limit: int = 50,
) -> int:
    """The sweep that ends auctions whose time is up, and closes the auctions of leads that
    left the market meanwhile (bought outright, consent withdrawn), releasing their holds.
    Rows are claimed with ``FOR UPDATE SKIP LOCKED``, so several workers share the work; then
    the campaigns and accounts all these closes may touch are locked at once, in order."""
    now = now or utcnow()
    due = list(
        await session.scalars(
            select(Lead)
            .where(
                Lead.sale_mode == SaleMode.AUCTION.value,
                Lead.status == LeadStatus.OPEN.value,
                Lead.auction_ends_at <= now,
            )
            .order_by(Lead.auction_ends_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    gone = list(
        await session.scalars(
            select(Lead)
            .join(Auction, Auction.lead_id == Lead.id)
            .where(Auction.closed_at.is_(None), Lead.status != LeadStatus.OPEN.value)
            .limit(limit)
            .with_for_update(of=Lead, skip_locked=True)
        )
    )
    # Every buyer whose money any of these closes may move, locked before the first moves.
    await lock_money_of(session, closing=due, ending=gone)
    for lead in due:
        await close_auction(session, settings, broker, lead, now=now, money_locked=True)
    for lead in gone:
        await end_auction(session, settings, broker, lead, _outcome_off_market(lead), now=now)
    return len(due) + len(gone)


def _outcome_off_market(lead: Lead) -> AuctionOutcome:
    """Why the auction of a lead that left the market before its end is over."""
    return {
        LeadStatus.SOLD.value: AuctionOutcome.BOUGHT_OUTRIGHT,
        LeadStatus.WITHDRAWN.value: AuctionOutcome.WITHDRAWN,
    }.get(lead.status, AuctionOutcome.UNSOLD)


async def close_at_end(
    session: AsyncSession,
    settings: Settings,
    broker: Broker,
    lead_id: str,
    *,
    now: dt.datetime | None = None,
) -> bool:
    """The ``auctions.close`` job: close ``lead_id``'s auction if its end has come (or end it if
    the lead left the market meanwhile). An auction whose end moved later (anti-sniping) is
    left open and its close queued at the new end. Whether this call closed it: False when
    someone else already did, so running it twice changes nothing."""
    lead = await _locked_lead(session, lead_id)  # waits for a bid being judged, then sees it
    now = now or utcnow()
    if lead is None or lead.sale_mode != SaleMode.AUCTION.value or lead.auction_ends_at is None:
        return False
    if lead.status == LeadStatus.OPEN.value:
        if lead.auction_ends_at > now:
            await schedule_close(session, lead.id, lead.auction_ends_at)
            return False
        await close_auction(session, settings, broker, lead, now=now)
        return True
    auction = await session.get(Auction, lead.id, populate_existing=True)
    if auction is None or auction.closed_at is not None:
        return False
    await end_auction(session, settings, broker, lead, _outcome_off_market(lead), now=now)
    return True
