"""L3: a withdrawn consent stops every further sale or delivery of the lead. Each way a lead can
be sold or handed over is tried after a withdrawal (buying outright, buy-now, bidding, campaign
auto-bids, the auction close, a ping/post sale's queued delivery, webhook deliveries queued,
retried and replayed, the buyer reading the contact), against the real API, database, vault
and a real HTTP receiver on loopback. What a buyer who bought before the withdrawal sees: the
order, without the contact, with ``consent_withdrawn_at``, and an email telling them not to
contact the consumer."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.db import Database, utcnow
from leadmarket.kit.jobs import Worker
from leadmarket.kit.realtime import LocalBroker
from leadmarket.ledger import service as ledger
from leadmarket.marketplace.service import (
    campaigns_bid_on_new_auctions,
    close_due_auctions,
    place_bid,
)
from leadmarket.models import (
    Auction,
    Bid,
    Consent,
    Lead,
    Order,
    OutboundMail,
    User,
    WebhookAttempt,
    WebhookDelivery,
)
from leadmarket.tasks import build_registry, build_services
from leadmarket.webhooks.service import save_endpoint
from tests.fixtures.accounts import PASSWORD, signed_in
from tests.fixtures.leads import lead_body
from tests.fixtures.ledger import fund
from tests.fixtures.orders import buyer_endpoint
from tests.fixtures.pingpost import bidding_buyer, ping_body, post_body
from tests.privacy.helpers import csrf_of

FIXED_SALE = {"mode": "fixed", "price_cents": 2500, "exclusive": True}


async def run_jobs(db: Database, settings: Settings) -> int:
    worker = Worker(db, build_registry(), build_services(settings), settings)
    return await worker.run_once()


async def posted_lead(
    client: httpx.AsyncClient, seller: dict[str, str], **overrides: Any
) -> tuple[str, str, str]:
    """A lead posted through the API: its id, consent certificate and consumer email."""
    body = lead_body(**overrides)
    answer = await client.post("/api/v1/leads", json=body, headers=seller)
    assert answer.status_code == 201, answer.text
    created = answer.json()
    return created["id"], created["consent_certificate"], body["contact"]["email"]


async def withdraw(client: httpx.AsyncClient, certificate: str, email: str) -> dict[str, Any]:
    answer = await client.post(f"/api/v1/consents/{certificate}/withdrawal", json={"email": email})
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    assert body["withdrawn_at"] is not None
    return body


async def funded_buyer(
    client: httpx.AsyncClient, session: AsyncSession
) -> tuple[User, dict[str, str]]:
    account, headers = await signed_in(client, "buyer")
    user = await session.get(User, account["id"])
    assert user is not None
    await fund(session, user, 10_000)
    return user, headers


async def count(session: AsyncSession, model: Any, *where: Any) -> int:
    query = select(func.count()).select_from(model)
    for clause in where:
        query = query.where(clause)
    return int(await session.scalar(query) or 0)


async def test_a_withdrawn_lead_cannot_be_bought_outright_or_at_its_buy_now_price(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    _, seller = await signed_in(client, "seller")
    buyer, headers = await funded_buyer(client, session)
    fixed_id, fixed_cert, fixed_email = await posted_lead(client, seller, sale=FIXED_SALE)
    auction_id, auction_cert, auction_email = await posted_lead(client, seller)
    await withdraw(client, fixed_cert, fixed_email)
    await withdraw(client, auction_cert, auction_email)

    for lead_id in (fixed_id, auction_id):
        answer = await client.post(f"/api/v1/leads/{lead_id}/purchase", headers=headers)
        assert answer.status_code == 409, answer.text
        assert answer.json()["type"] == "/problems/lead-not-for-sale"
        assert answer.json()["lead_status"] == "withdrawn"
        lead = await session.get(Lead, lead_id, populate_existing=True)
        assert lead is not None and lead.sold_count == 0
    assert await count(session, Order) == 0
    wallet = await ledger.wallet_summary(session, buyer.id, "USD")
    assert (wallet.balance_cents, wallet.held_cents) == (10_000, 0)


async def test_a_withdrawn_unsold_lead_is_due_for_destruction_at_once(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    """Nobody bought it and nobody may: no buyer has a right to the data, so the next retention
    sweep destroys it (L3, L4) rather than keeping it the 48 hours an unsold auction gets."""
    _, seller = await signed_in(client, "seller")
    lead_id, certificate, email = await posted_lead(client, seller)
    before = utcnow()
    await withdraw(client, certificate, email)
    lead = await session.get(Lead, lead_id, populate_existing=True)
    assert lead is not None and lead.status == "withdrawn"
    assert lead.pii_expires_at is not None
    assert before <= lead.pii_expires_at <= utcnow()


async def test_no_bid_no_campaign_auto_bid_and_no_winner_after_withdrawal(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    _, seller = await signed_in(client, "seller")
    early, _ = await funded_buyer(client, session)
    late, late_headers = await funded_buyer(client, session)
    await bidding_buyer(session, bid_cents=3000)  # a campaign that would bid on it
    lead_id, certificate, email = await posted_lead(client, seller)
    broker = LocalBroker()
    # A bid placed while the consent stood: its funds are held.
    await place_bid(session, settings, broker, lead_id=lead_id, buyer=early, amount_cents=2000)
    assert (await ledger.wallet_summary(session, early.id, "USD")).held_cents == 2000

    await withdraw(client, certificate, email)

    refused = await client.post(
        f"/api/v1/leads/{lead_id}/bids", json={"amount_cents": 5000}, headers=late_headers
    )
    assert refused.status_code == 404, refused.text
    assert await campaigns_bid_on_new_auctions(session, settings, broker) == 0
    # The auction's time runs out: it ends without a winner and releases the hold.
    later = utcnow() + dt.timedelta(hours=2)
    assert await close_due_auctions(session, settings, broker, now=later) == 1
    auction = await session.get(Auction, lead_id, populate_existing=True)
    assert auction is not None and auction.outcome == "withdrawn"
    assert await count(session, Bid, Bid.lead_id == lead_id) == 1
    assert await count(session, Order) == 0
    for member in (early, late):
        wallet = await ledger.wallet_summary(session, member.id, "USD")
        assert (wallet.balance_cents, wallet.held_cents) == (10_000, 0)


async def test_a_buyer_who_bought_before_keeps_the_order_but_not_the_contact(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, db: Database
) -> None:
    _, seller = await signed_in(client, "seller")
    buyer, headers = await funded_buyer(client, session)
    lead_id, certificate, email = await posted_lead(client, seller, sale=FIXED_SALE)
    with buyer_endpoint(statuses=[503]) as endpoint:
        hook = await client.put("/api/v1/me/webhook", json={"url": endpoint.url}, headers=headers)
        assert hook.status_code == 200, hook.text
        bought = await client.post(f"/api/v1/leads/{lead_id}/purchase", headers=headers)
        assert bought.status_code == 201, bought.text
        order_id = bought.json()["id"]
        before = await client.get(f"/api/v1/orders/{order_id}", headers=headers)
        assert before.json()["contact"]["email"] == email
        assert before.json()["consent_withdrawn_at"] is None
        # The first delivery attempt fails (503): a retry is queued.
        await run_jobs(db, settings)
        assert len(endpoint.received) == 1
        lead = await session.get(Lead, lead_id, populate_existing=True)
        assert lead is not None
        expires = lead.pii_expires_at

        await withdraw(client, certificate, email)

        after = await client.get(f"/api/v1/orders/{order_id}", headers=headers)
        assert after.status_code == 200
        order = after.json()
        assert order["contact"] is None
        assert order["consent_withdrawn_at"] is not None
        assert (order["status"], order["price_cents"]) == ("held", 2500)
        assert email not in after.text
        # The order page, in the buyer's browser session, says why the contact is gone.
        signin = await client.get("/signin")
        signed = await client.post(
            "/signin",
            data={
                "csrf_token": csrf_of(signin.text),
                "login": buyer.username,
                "password": PASSWORD,
            },
        )
        assert signed.status_code == 303
        page = await client.get(f"/orders/{order_id}")
        assert page.status_code == 200
        assert 'data-testid="consent-withdrawn"' in page.text
        assert 'data-testid="contact"' not in page.text and email not in page.text
        # The retry, and a replay the buyer asks for, both end without sending anything.
        worker = Worker(db, build_registry(), build_services(settings), settings)
        worker._clock = lambda: utcnow() + dt.timedelta(hours=3)  # type: ignore[method-assign]
        await worker.run_once()
        [delivery] = (await session.scalars(select(WebhookDelivery))).all()
        await session.refresh(delivery)
        replay = await client.post(
            f"/api/v1/orders/{order_id}/deliveries/{delivery.id}/replay", headers=headers
        )
        assert replay.status_code == 202, replay.text
        await run_jobs(db, settings)
        assert len(endpoint.received) == 1, "nothing was delivered after the withdrawal"

    deliveries = (await session.scalars(select(WebhookDelivery))).all()
    assert len(deliveries) == 2
    for delivery in deliveries:
        await session.refresh(delivery)
        assert delivery.status == "failed"
        last = await session.scalar(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id == delivery.id)
            .order_by(WebhookAttempt.attempt.desc())
            .limit(1)
        )
        assert last is not None and last.error is not None
        assert "withdrew their consent" in last.error
    # The sale started the retention clock; withdrawal does not move it.
    lead = await session.get(Lead, lead_id, populate_existing=True)
    assert lead is not None and lead.pii_expires_at == expires
    # The buyer is told not to contact the consumer, without the consumer's details.
    [notice] = (
        await session.scalars(
            select(OutboundMail).where(OutboundMail.template == "leads/consent_withdrawn")
        )
    ).all()
    assert notice.user_id == buyer.id and notice.category == "transactional"
    assert order_id in notice.text_body and "Do not call" in notice.text_body
    assert email not in notice.text_body


async def test_a_ping_post_sale_is_not_delivered_after_withdrawal(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, db: Database
) -> None:
    with buyer_endpoint() as endpoint:
        await bidding_buyer(session, bid_cents=3000, webhook_url=endpoint.url)
        # The delivery is signed with the buyer's endpoint secret: the campaign's owner has one.
        winner = (await session.scalars(select(User).order_by(User.created_at.desc()))).first()
        assert winner is not None
        await save_endpoint(session, settings, winner.id, url=endpoint.url, new_secret=True)
        _, seller = await signed_in(client, "seller")
        ping = await client.post("/api/v1/ping", json=ping_body(), headers=seller)
        assert ping.status_code == 200, ping.text
        body = post_body(ping.json()["ping_id"])
        posted = await client.post("/api/v1/post", json=body, headers=seller)
        assert posted.status_code == 201, posted.text
        assert posted.json()["sold"] is True
        lead_id = posted.json()["lead_id"]
        certificate = await session.scalar(
            select(Consent.certificate).where(Consent.lead_id == lead_id)
        )
        assert certificate is not None

        await withdraw(client, certificate, body["contact"]["email"])
        await run_jobs(db, settings)
        assert endpoint.received == []

    [delivery] = (await session.scalars(select(WebhookDelivery))).all()
    await session.refresh(delivery)
    assert delivery.status == "failed"
