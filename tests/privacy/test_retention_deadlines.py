"""Every way a lead's sale ends sets its retention deadline (L4): at the sale of an exclusive
lead; when a shared lead's sale closes (last place, auction end, listing end); at the end of an
auction or a fixed-price listing that sold nothing, so no lead keeps its data forever; at once
when a consent is withdrawn from a lead nobody bought."""

from __future__ import annotations

import datetime as dt

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.db import Database, utcnow
from leadmarket.kit.realtime import LocalBroker
from leadmarket.leads.intake import LeadsKit
from leadmarket.leads.service import withdraw_consent
from leadmarket.marketplace import service as marketplace
from leadmarket.models import Lead, User
from leadmarket.privacy.retention import close_ended_listings, purge_expired_lead_data
from tests.fixtures.accounts import signed_in
from tests.fixtures.leads import lead_body
from tests.fixtures.ledger import fund, make_member
from tests.fixtures.orders import make_lead

HOURS_48 = dt.timedelta(hours=48)


async def funded_buyer(client: httpx.AsyncClient, session: AsyncSession) -> dict[str, str]:
    account, headers = await signed_in(client, "buyer")
    user = await session.get(User, account["id"])
    assert user is not None
    await fund(session, user, 100_000)
    return headers


async def fresh(session: AsyncSession, lead_id: str) -> Lead:
    lead = await session.get(Lead, lead_id, populate_existing=True)
    assert lead is not None
    return lead


async def test_a_shared_lead_starts_its_clock_when_its_last_place_is_taken(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    seller = await make_member(session, "seller")
    lead, _ = await make_lead(session, settings, seller, exclusive=False, max_buyers=3)
    orders = []
    for n in range(3):
        response = await client.post(
            f"/api/v1/leads/{lead.id}/purchase", headers=await funded_buyer(client, session)
        )
        assert response.status_code == 201, response.text
        orders.append(response.json())
        if n < 2:
            # Still on sale: the sale has not closed, so no deadline yet.
            assert response.json()["pii_expires_at"] is None
            assert (await fresh(session, lead.id)).pii_expires_at is None
    closed_at = dt.datetime.fromisoformat(orders[-1]["purchased_at"])
    deadline = (await fresh(session, lead.id)).pii_expires_at
    assert deadline == closed_at + HOURS_48
    assert orders[-1]["pii_expires_at"] is not None


async def test_a_shared_auction_with_places_left_closes_at_its_end(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    _, seller_headers = await signed_in(client, "seller")
    body = lead_body(sale__exclusive=False, sale__max_buyers=3, sale__reserve_cents=None)
    posted = await client.post("/api/v1/leads", json=body, headers=seller_headers)
    assert posted.status_code == 201, posted.text
    lead = await fresh(session, posted.json()["id"])
    bought = await client.post(
        f"/api/v1/leads/{lead.id}/purchase", headers=await funded_buyer(client, session)
    )
    assert bought.status_code == 201, bought.text  # buy-now takes one of three places
    assert bought.json()["pii_expires_at"] is None
    ended = utcnow() - dt.timedelta(minutes=1)
    lead.auction_ends_at = ended
    await session.flush()

    assert await marketplace.close_due_auctions(session, settings, LocalBroker()) == 1
    closed = await fresh(session, lead.id)
    assert closed.status == "sold" and closed.sold_count == 1
    assert closed.pii_expires_at == ended + HOURS_48


async def test_an_unsold_auction_keeps_its_data_48_hours_after_its_end(
    session: AsyncSession, settings: Settings
) -> None:
    seller = await make_member(session, "seller")
    ended = utcnow() - dt.timedelta(minutes=3)
    lead, _ = await make_lead(
        session, settings, seller, mode="auction", buy_now_cents=None, auction_ends_at=ended
    )
    await marketplace.close_due_auctions(session, settings, LocalBroker())
    closed = await fresh(session, lead.id)
    assert closed.status == "unsold" and closed.pii_expires_at == ended + HOURS_48


async def test_a_fixed_price_lead_that_never_sells_leaves_the_market_and_its_data_goes(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, db: Database
) -> None:
    listing = dt.timedelta(hours=settings.fixed_price_listing_hours)
    assert listing == dt.timedelta(days=7)
    seller = await make_member(session, "seller")
    posted_at = utcnow() - listing - HOURS_48 - dt.timedelta(minutes=5)
    never_sold, _ = await make_lead(session, settings, seller)
    shared, _ = await make_lead(session, settings, seller, exclusive=False, max_buyers=2)
    buyer = await funded_buyer(client, session)
    assert (
        await client.post(f"/api/v1/leads/{shared.id}/purchase", headers=buyer)
    ).status_code == 201
    recent, _ = await make_lead(session, settings, seller)
    for lead in (never_sold, shared):
        lead.created_at = posted_at
    await session.flush()

    late = await client.post(
        f"/api/v1/leads/{never_sold.id}/purchase", headers=await funded_buyer(client, session)
    )
    assert late.status_code == 409
    assert late.json()["type"] == "/problems/lead-not-for-sale"
    assert late.json()["lead_status"] == "ended"

    assert await close_ended_listings(session, settings) == 2
    for lead, status in ((never_sold, "unsold"), (shared, "sold")):
        closed = await fresh(session, lead.id)
        assert closed.status == status
        assert closed.pii_expires_at == posted_at + listing + HOURS_48
    assert (await fresh(session, recent.id)).status == "open"
    assert await close_ended_listings(session, settings) == 0

    await session.commit()
    swept = await purge_expired_lead_data(db, settings)
    assert {d.lead_id for d in swept.destroyed} == {never_sold.id, shared.id}


async def test_a_withdrawn_consent_ends_the_sale_and_the_data_goes_at_the_next_sweep(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, db: Database
) -> None:
    _, seller_headers = await signed_in(client, "seller")
    body = lead_body()
    posted = await client.post("/api/v1/leads", json=body, headers=seller_headers)
    assert posted.status_code == 201, posted.text
    lead_id = posted.json()["id"]
    certificate = posted.json()["consent_certificate"]
    before = utcnow()
    await withdraw_consent(
        session, LeadsKit(settings), certificate, email=body["contact"]["email"], phone=None
    )
    lead = await fresh(session, lead_id)
    assert lead.status == "withdrawn"
    assert lead.pii_expires_at is not None and before <= lead.pii_expires_at <= utcnow()
    await session.commit()

    swept = await purge_expired_lead_data(db, settings)
    assert [d.lead_id for d in swept.destroyed] == [lead_id]


async def test_a_withdrawn_consent_leaves_a_buyers_deadline_alone(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    _, seller_headers = await signed_in(client, "seller")
    body = lead_body(sale__mode="fixed", sale__price_cents=2000)
    for key in ("reserve_cents", "buy_now_cents", "duration_minutes"):
        body["sale"].pop(key)
    posted = await client.post("/api/v1/leads", json=body, headers=seller_headers)
    assert posted.status_code == 201, posted.text
    lead_id = posted.json()["id"]
    bought = await client.post(
        f"/api/v1/leads/{lead_id}/purchase", headers=await funded_buyer(client, session)
    )
    deadline = dt.datetime.fromisoformat(bought.json()["pii_expires_at"])
    await withdraw_consent(
        session,
        LeadsKit(settings),
        posted.json()["consent_certificate"],
        email=body["contact"]["email"],
        phone=None,
    )
    assert (await fresh(session, lead_id)).pii_expires_at == deadline
