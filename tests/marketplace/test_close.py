"""The end of an auction (M1, L4, issue 4 §1-2): the best maximum that reaches the reserve buys
at one increment above the next, its hold becomes the order's; a shared lead goes to as many
winners as it has places; below the reserve (or with no bid) the lead is unsold and its
personal data is due for destruction 48 hours after the end. Buyer campaigns bid by
themselves and must still be able to buy when they win."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.db import utcnow
from leadmarket.kit.errors import NotFound
from leadmarket.kit.realtime import LocalBroker
from leadmarket.ledger.service import wallet_summary
from leadmarket.ledger.verify import verify_ledger
from leadmarket.marketplace import service
from leadmarket.models import Auction, Bid, CampaignCapCounter, Lead, Order, User
from tests.fixtures.campaigns import campaign
from tests.fixtures.ledger import fund, make_member
from tests.marketplace.test_auctions import auction_lead, bid


async def end_now(session: AsyncSession, lead: Lead) -> None:
    past = utcnow() - dt.timedelta(seconds=1)
    await session.execute(update(Lead).where(Lead.id == lead.id).values(auction_ends_at=past))
    await session.execute(update(Auction).where(Auction.lead_id == lead.id).values(ends_at=past))


async def close(session: AsyncSession, settings: Settings) -> int:
    return await service.close_due_auctions(session, settings, LocalBroker())


async def funded(session: AsyncSession, cents: int = 20_000) -> User:
    buyer = await make_member(session)
    await fund(session, buyer, cents)
    return buyer


async def orders_of(session: AsyncSession, lead: Lead) -> list[Order]:
    return list(
        await session.scalars(
            select(Order).where(Order.lead_id == lead.id).order_by(Order.price_cents)
        )
    )


async def test_the_best_maximum_buys_at_one_increment_above_the_next(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    lead, _ = await auction_lead(client, session, reserve_cents=1_000)
    ana, ben = await funded(session), await funded(session)
    await bid(session, settings, lead, ana, 3_000)
    await bid(session, settings, lead, ben, 1_800)
    await end_now(session, lead)
    assert await close(session, settings) == 1

    (order,) = await orders_of(session, lead)
    assert order.buyer_id == ana.id and order.price_cents == 1_800 + 50
    refreshed = await session.get(Lead, lead.id, populate_existing=True)
    assert refreshed is not None and refreshed.status == "sold"
    assert refreshed.pii_expires_at is not None
    wallet = await wallet_summary(session, ana.id, "USD")
    assert (wallet.balance_cents, wallet.held_cents) == (20_000 - 1_850, 1_850)
    statuses = dict((await session.execute(select(Bid.buyer_id, Bid.status))).all())
    assert statuses == {ana.id: "won", ben.id: "outbid"}
    auction = await session.get(Auction, lead.id, populate_existing=True)
    assert auction is not None and auction.outcome == "sold" and auction.closed_at is not None
    assert (await verify_ledger(session)).ok
    assert await close(session, settings) == 0  # closed once


async def test_below_the_reserve_the_lead_is_unsold_and_due_for_destruction(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    lead, _ = await auction_lead(client, session, reserve_cents=5_000)
    ana = await funded(session)
    await bid(session, settings, lead, ana, 3_000)
    await end_now(session, lead)
    await close(session, settings)

    assert await orders_of(session, lead) == []
    refreshed = await session.get(Lead, lead.id, populate_existing=True)
    assert refreshed is not None and refreshed.status == "unsold"
    assert refreshed.auction_ends_at is not None and refreshed.pii_expires_at is not None
    assert refreshed.pii_expires_at - refreshed.auction_ends_at == dt.timedelta(hours=48)
    wallet = await wallet_summary(session, ana.id, "USD")
    assert (wallet.balance_cents, wallet.held_cents) == (20_000, 0)  # the hold came back
    assert (await verify_ledger(session)).ok


async def test_an_auction_nobody_bid_on_ends_unsold(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    lead, _ = await auction_lead(client, session)
    await end_now(session, lead)
    assert await close(session, settings) == 1
    refreshed = await session.get(Lead, lead.id, populate_existing=True)
    assert refreshed is not None and refreshed.status == "unsold"


async def test_a_shared_lead_goes_to_as_many_winners_as_it_has_places(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    lead, _ = await auction_lead(client, session, exclusive=False, max_buyers=2)
    ana, ben, cy = await funded(session), await funded(session), await funded(session)
    await bid(session, settings, lead, ana, 4_000)
    await bid(session, settings, lead, ben, 3_000)
    await bid(session, settings, lead, cy, 1_000)  # below the price, still in the running
    await end_now(session, lead)
    await close(session, settings)

    orders = await orders_of(session, lead)
    assert [(o.buyer_id, o.price_cents) for o in orders] == [(ben.id, 1_050), (ana.id, 3_050)]
    assert (await wallet_summary(session, cy.id, "USD")).held_cents == 0
    assert (await verify_ledger(session)).ok


async def test_campaigns_bid_by_themselves_and_win_within_their_caps(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    big, small = await funded(session), await funded(session)
    capped = await campaign(session, big, bid_cents=4_000, daily_cap=1)
    await campaign(session, small, bid_cents=2_500)
    broker = LocalBroker()

    lead, _ = await auction_lead(client, session)
    assert await service.campaigns_bid_on_new_auctions(session, settings, broker) == 1
    assert await service.campaigns_bid_on_new_auctions(session, settings, broker) == 0  # once
    placed = list(await session.scalars(select(Bid).where(Bid.lead_id == lead.id)))
    assert {b.buyer_id for b in placed} == {big.id, small.id}
    assert all(b.campaign_id for b in placed)

    await end_now(session, lead)
    await close(session, settings)
    (order,) = await orders_of(session, lead)
    assert order.buyer_id == big.id and order.price_cents == 2_500 + 50
    counted = await session.scalar(
        select(CampaignCapCounter.count).where(CampaignCapCounter.campaign_id == capped.id).limit(1)
    )
    assert counted == 1

    # The next auction: the big campaign bids again (matching does not know caps) but has
    # used its daily cap, so at the close it is passed over and the small one wins alone.
    second, _ = await auction_lead(client, session)
    await service.campaigns_bid_on_new_auctions(session, settings, broker)
    await end_now(session, second)
    await close(session, settings)
    (order,) = await orders_of(session, second)
    assert order.buyer_id == small.id
    assert order.price_cents == settings.auction_opening_bid_cents  # alone once big is out
    assert (await verify_ledger(session)).ok


async def test_buying_outright_ends_the_auction_and_frees_the_bidders_funds(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    from leadmarket.orders.service import purchase

    lead, _ = await auction_lead(client, session, buy_now_cents=6_000)
    ana, ben = await funded(session), await funded(session)
    await bid(session, settings, lead, ana, 3_000)
    assert (await wallet_summary(session, ana.id, "USD")).held_cents == 3_000

    await purchase(session, settings, lead_id=lead.id, buyer=ben, idempotency_key=None)
    # In the sale's own transaction: the auction is over and Ana's hold is back.
    assert (await wallet_summary(session, ana.id, "USD")).held_cents == 0
    auction = await session.get(Auction, lead.id, populate_existing=True)
    assert auction is not None and auction.outcome == "bought_outright"
    assert auction.closed_at is not None
    with pytest.raises(NotFound):  # sold leads are off the market for other buyers (L6)
        await bid(session, settings, lead, ana, 4_000)
    assert await close(session, settings) == 0  # nothing left for the sweep
    (order,) = await orders_of(session, lead)
    assert order.buyer_id == ben.id and order.price_cents == 6_000
    assert (await verify_ledger(session)).ok
