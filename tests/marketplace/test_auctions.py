"""Timed auctions (M1, issue 4 §1 and "Bad input"): proxy bidding up to each buyer's maximum,
the opening bid and minimum increment, the hidden reserve, anti-sniping, funds held for the
leader only, and every refusal leaving nothing changed."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.db import utcnow
from leadmarket.kit.realtime import LocalBroker
from leadmarket.ledger.service import InsufficientFunds, wallet_summary
from leadmarket.ledger.verify import verify_ledger
from leadmarket.marketplace import service
from leadmarket.marketplace.service import AuctionClosed, BidTooLow, NotAnAuction
from leadmarket.models import Auction, Bid, HoldStatus, Lead, LedgerHold, User
from tests.fixtures.accounts import signed_in
from tests.fixtures.leads import lead_body
from tests.fixtures.ledger import fund, make_member

pytestmark = pytest.mark.asyncio


async def auction_lead(
    client: httpx.AsyncClient, session: AsyncSession, **sale: Any
) -> tuple[Lead, dict[str, str]]:
    _, seller = await signed_in(client, "seller")
    terms = {"mode": "auction", "reserve_cents": None, "buy_now_cents": None, **sale}
    body = lead_body(**{f"sale__{k}": v for k, v in terms.items()})
    posted = await client.post("/api/v1/leads", json=body, headers=seller)
    assert posted.status_code == 201, posted.text
    lead = await session.get(Lead, posted.json()["id"])
    assert lead is not None
    return lead, seller


async def buyer_with(session: AsyncSession, cents: int) -> User:
    buyer = await make_member(session)
    if cents:
        await fund(session, buyer, cents)
    return buyer


async def bid(
    session: AsyncSession, settings: Settings, lead: Lead, buyer: User, cents: int
) -> service.PlacedBid:
    return await service.place_bid(
        session, settings, LocalBroker(), lead_id=lead.id, buyer=buyer, amount_cents=cents
    )


async def held_by(session: AsyncSession, buyer: User) -> int:
    return (await wallet_summary(session, buyer.id, "USD")).held_cents


async def test_proxy_bidding_prices_one_increment_above_the_runner_up(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    lead, _ = await auction_lead(client, session)
    ana, ben = await buyer_with(session, 10_000), await buyer_with(session, 10_000)

    first = await bid(session, settings, lead, ana, 1_000)
    assert first.leading and first.current_price_cents == settings.auction_opening_bid_cents
    assert await held_by(session, ana) == 1_000  # the leader's maximum is set aside

    lower = await bid(session, settings, lead, ben, 600)
    assert not lower.leading  # Ana's proxy answers: 600 + one increment
    assert lower.current_price_cents == 600 + settings.auction_min_increment_cents
    assert await held_by(session, ben) == 0

    higher = await bid(session, settings, lead, ben, 1_200)
    assert higher.leading
    assert higher.current_price_cents == 1_000 + settings.auction_min_increment_cents
    assert await held_by(session, ana) == 0  # released when outbid
    assert await held_by(session, ben) == 1_200

    auction = await session.get(Auction, lead.id)
    assert auction is not None and auction.leader_id == ben.id and auction.bid_count == 3
    assert (await verify_ledger(session)).ok


async def test_an_equal_maximum_loses_to_the_earlier_bid(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    lead, _ = await auction_lead(client, session)
    ana, ben = await buyer_with(session, 5_000), await buyer_with(session, 5_000)
    await bid(session, settings, lead, ana, 2_000)
    tie = await bid(session, settings, lead, ben, 2_000)
    assert not tie.leading and tie.current_price_cents == 2_000


async def test_the_reserve_stays_hidden_until_a_maximum_reaches_it(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    lead, _ = await auction_lead(client, session, reserve_cents=1_500)
    ana, ben = await buyer_with(session, 5_000), await buyer_with(session, 5_000)
    await bid(session, settings, lead, ana, 1_000)
    view, _ = await service.auction_view(session, settings, lead.id, ben)
    assert not view.reserve_met and view.current_price_cents == 100
    reached = await bid(session, settings, lead, ben, 2_000)
    assert reached.leading and reached.current_price_cents == 1_500  # jumps to the reserve
    view, ben_leads = await service.auction_view(session, settings, lead.id, ben)
    assert view.reserve_met and ben_leads
    assert "reserve" not in str(view.as_message()).replace("reserve_met", "")


async def test_the_leader_may_raise_their_maximum_without_raising_the_price(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    lead, _ = await auction_lead(client, session)
    ana = await buyer_with(session, 10_000)
    await bid(session, settings, lead, ana, 1_000)
    raised = await bid(session, settings, lead, ana, 3_000)
    assert raised.leading and raised.current_price_cents == settings.auction_opening_bid_cents
    assert await held_by(session, ana) == 3_000  # the old hold released, the new one taken
    statuses = set(await session.scalars(select(Bid.status).where(Bid.buyer_id == ana.id)))
    assert statuses == {"raised", "leading"}
    with pytest.raises(BidTooLow):
        await bid(session, settings, lead, ana, 3_000)  # not above their own maximum


async def test_refused_bids_change_nothing(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    lead, _ = await auction_lead(client, session)
    ana, poor = await buyer_with(session, 10_000), await buyer_with(session, 500)
    await bid(session, settings, lead, ana, 1_000)
    auction = await session.get(Auction, lead.id)
    assert auction is not None
    price_before, count_before = auction.current_price_cents, auction.bid_count
    bids_before = await session.scalar(select(func.count()).select_from(Bid))

    with pytest.raises(BidTooLow) as too_low:
        await bid(session, settings, lead, poor, 120)
    assert too_low.value.extra["minimum_bid_cents"] == 100 + settings.auction_min_increment_cents
    with pytest.raises(InsufficientFunds):
        await bid(session, settings, lead, poor, 2_000)  # would lead: needs 2,000 held
    with pytest.raises(InsufficientFunds):
        await bid(session, settings, lead, poor, 900)  # would not lead, but cannot pay either

    after = await session.get(Auction, lead.id, populate_existing=True)
    assert after is not None
    assert after.current_price_cents == price_before
    assert after.bid_count == count_before and after.leader_id == ana.id
    assert await session.scalar(select(func.count()).select_from(Bid)) == bids_before
    assert await held_by(session, poor) == 0


async def test_no_bids_on_a_fixed_price_lead_or_after_the_end(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    fixed, _ = await auction_lead(client, session, mode="fixed", price_cents=2_500)
    ana = await buyer_with(session, 10_000)
    with pytest.raises(NotAnAuction):
        await bid(session, settings, fixed, ana, 3_000)

    ended, _ = await auction_lead(client, session)
    await session.execute(
        update(Lead)
        .where(Lead.id == ended.id)
        .values(auction_ends_at=utcnow() - dt.timedelta(seconds=1))
    )
    with pytest.raises(AuctionClosed):
        await bid(session, settings, ended, ana, 3_000)


async def test_a_bid_in_the_last_minutes_extends_the_auction(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    lead, _ = await auction_lead(client, session)
    ana, ben = await buyer_with(session, 10_000), await buyer_with(session, 10_000)
    await bid(session, settings, lead, ana, 1_000)
    soon = utcnow() + dt.timedelta(seconds=30)
    await session.execute(update(Auction).where(Auction.lead_id == lead.id).values(ends_at=soon))
    late = await bid(session, settings, lead, ben, 2_000)
    extension = dt.timedelta(minutes=settings.auction_extension_minutes)
    assert late.ends_at > soon
    assert abs((late.ends_at - (utcnow() + extension)).total_seconds()) < 5
    refreshed = await session.get(Lead, lead.id, populate_existing=True)
    assert refreshed is not None and refreshed.auction_ends_at == late.ends_at


async def test_bids_through_the_api(client: httpx.AsyncClient, session: AsyncSession) -> None:
    lead, seller = await auction_lead(client, session)
    _, buyer = await signed_in(client, "buyer")
    deposit = await client.post(
        "/api/v1/wallet/deposits", json={"amount_cents": 5_000}, headers=buyer
    )
    assert deposit.status_code == 201, deposit.text

    headers = {**buyer, "Idempotency-Key": "bid-1"}
    placed = await client.post(
        f"/api/v1/leads/{lead.id}/bids", json={"amount_cents": 1_000}, headers=headers
    )
    assert placed.status_code == 201, placed.text
    assert placed.json()["leading"] is True
    assert set(placed.json()) >= {"id", "leading", "current_price_cents", "ends_at"}
    replay = await client.post(
        f"/api/v1/leads/{lead.id}/bids", json={"amount_cents": 1_000}, headers=headers
    )
    assert replay.json() == placed.json()
    assert await session.scalar(select(func.count()).select_from(Bid)) == 1

    state = await client.get(f"/api/v1/leads/{lead.id}/auction", headers=buyer)
    assert state.status_code == 200 and state.json()["leading"] is True
    seller_view = await client.get(f"/api/v1/leads/{lead.id}/auction", headers=seller)
    assert seller_view.json()["leading"] is False and seller_view.json()["bid_count"] == 1

    too_low = await client.post(
        f"/api/v1/leads/{lead.id}/bids", json={"amount_cents": 50}, headers=buyer
    )
    assert too_low.status_code == 422
    assert too_low.json()["type"].endswith("/bid-too-low")
    assert too_low.json()["minimum_bid_cents"] == 1_050
    for bad in ({"amount_cents": -5}, {"amount_cents": "ten"}, {}, {"amount_cents": 10**12}):
        refused = await client.post(f"/api/v1/leads/{lead.id}/bids", json=bad, headers=buyer)
        assert refused.status_code == 422, bad
    by_seller = await client.post(
        f"/api/v1/leads/{lead.id}/bids", json={"amount_cents": 2_000}, headers=seller
    )
    assert by_seller.status_code == 403
    unknown = await client.post(
        "/api/v1/leads/lead_nope/bids", json={"amount_cents": 2_000}, headers=buyer
    )
    assert unknown.status_code == 404
    assert await session.scalar(select(func.count()).select_from(Bid)) == 1
    assert (
        await session.scalar(select(func.count()).where(LedgerHold.status == HoldStatus.HELD.value))
        == 1
    )
