"""Cancellation before delivery (M2) and payouts (M5) through the real API: a lead not yet
delivered can be cancelled, its price goes back to the wallet and a fixed-price lead returns to
the market; once its contact was opened, or a webhook delivered it, it cannot. Payouts pay only
settled money (past the return window), once, through the sandbox processor."""

from __future__ import annotations

import datetime as dt

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.db import Database, utcnow
from leadmarket.kit.jobs import Worker
from leadmarket.ledger.verify import verify_ledger
from leadmarket.models import (
    AuditEvent,
    DeliveryStatus,
    Job,
    Lead,
    Order,
    Payout,
    WebhookDelivery,
)
from leadmarket.orders import service as orders
from leadmarket.payouts import service as payouts
from leadmarket.tasks import build_registry, build_services
from tests.fixtures.returns import (
    FEE,
    PRICE,
    bought,
    mails_to,
    member,
    payable,
    problem,
    sold_unseen,
    wallet,
)


async def ledger_ok(session: AsyncSession) -> None:
    session.expire_all()
    report = await verify_ledger(session)
    assert report.ok, report.problems


async def test_an_undelivered_order_is_cancelled_and_its_lead_goes_back_on_sale(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    seller = await member(client, session, "seller")
    buyer = await member(client, session, "buyer", cents=10_000)
    order_id, lead_id = await sold_unseen(session, settings, seller, buyer)
    lead = await session.get(Lead, lead_id, populate_existing=True)
    assert lead is not None and (lead.status, lead.sold_count) == ("sold", 1)

    after = await client.get(f"/api/v1/orders/{order_id}/after-sale", headers=buyer.headers)
    assert after.json()["cancellable"] is True
    cancelled = await client.post(
        f"/api/v1/orders/{order_id}/cancel",
        headers={**buyer.headers, "Idempotency-Key": "cancel-1"},
    )
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json() == {
        "order_id": order_id,
        "status": "cancelled",
        "released_cents": PRICE,
        "currency": "USD",
    }
    replay = await client.post(
        f"/api/v1/orders/{order_id}/cancel",
        headers={**buyer.headers, "Idempotency-Key": "cancel-1"},
    )
    assert replay.json() == cancelled.json()
    problem(
        await client.post(f"/api/v1/orders/{order_id}/cancel", headers=buyer.headers),
        409,
        "order-not-cancellable",
    )
    assert await wallet(session, buyer.id) == (10_000, 0)
    lead = await session.get(Lead, lead_id, populate_existing=True)
    assert lead is not None and (lead.status, lead.sold_count) == ("open", 0)
    # The cancelled order shows no contact, and the seller was told.
    detail = await client.get(f"/api/v1/orders/{order_id}", headers=buyer.headers)
    assert detail.json()["contact"] is None and detail.json()["status"] == "cancelled"
    [told] = [
        m for m in await mails_to(session, seller.id) if m.template == "notify/order_cancelled"
    ]
    assert "back on the market" in told.text_body
    # Another buyer can buy the lead now.
    other = await member(client, session, "buyer", cents=10_000)
    again = await client.post(f"/api/v1/leads/{lead_id}/purchase", headers=other.headers)
    assert again.status_code == 201, again.text
    await ledger_ok(session)


async def test_a_delivered_order_cannot_be_cancelled(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    seller = await member(client, session, "seller")
    buyer = await member(client, session, "buyer", cents=10_000)
    stranger = await member(client, session, "buyer", cents=10_000)
    opened_id, _ = await bought(client, session, settings, seller, buyer)
    delivered_id, _ = await sold_unseen(session, settings, seller, buyer)
    session.add(
        WebhookDelivery(
            order_id=delivered_id,
            buyer_id=buyer.id,
            event_type="lead.delivered",
            url="https://buyer.example/hook",
            status=DeliveryStatus.SUCCEEDED.value,
        )
    )
    looked_id, _ = await sold_unseen(session, settings, seller, buyer)
    await session.flush()
    # Reading the order through the API opens its contact: from then on it is delivered.
    read = await client.get(f"/api/v1/orders/{looked_id}", headers=buyer.headers)
    assert read.json()["contact"] is not None
    assert read.json()["contact_opened_at"] is not None
    audit_before = await session.scalar(select(func.count()).select_from(AuditEvent))
    balance_before = await wallet(session, buyer.id)

    for order_id, why in (
        (opened_id, "contact_opened"),
        (delivered_id, "delivered"),
        (looked_id, "contact_opened"),
    ):
        refused = await client.post(f"/api/v1/orders/{order_id}/cancel", headers=buyer.headers)
        assert problem(refused, 409, "order-not-cancellable")["why"] == why
    problem(
        await client.post(f"/api/v1/orders/{looked_id}/cancel", headers=stranger.headers),
        404,
        "not-found",
    )
    problem(
        await client.post(f"/api/v1/orders/{looked_id}/cancel", headers=seller.headers),
        403,
        "forbidden",
    )
    assert await wallet(session, buyer.id) == balance_before
    assert await session.scalar(select(func.count()).select_from(AuditEvent)) == audit_before
    statuses = set(await session.scalars(select(Order.status)))
    assert statuses == {"held"}
    await ledger_ok(session)


async def test_payouts_pay_only_settled_money_once(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    seller = await member(client, session, "seller")
    buyer = await member(client, session, "buyer", cents=10_000)
    await bought(client, session, settings, seller, buyer)

    # Still in the return window: nothing is the seller's yet.
    held = await client.post("/api/v1/payouts", json={}, headers=seller.headers)
    assert problem(held, 409, "nothing-to-pay-out")["balance_cents"] == 0
    problem(await client.post("/api/v1/payouts", headers=buyer.headers), 403, "forbidden")
    later = utcnow() + dt.timedelta(hours=settings.return_window_hours + 1)
    assert await orders.settle_due_orders(session, settings, now=later) == 1

    refused = await client.post(
        "/api/v1/payouts", json={"destination": "sandbox_decline"}, headers=seller.headers
    )
    assert problem(refused, 402, "payout-refused")["refusal_code"] == "account_restricted"
    assert await payable(session, seller.id) == PRICE - FEE

    keyed = {**seller.headers, "Idempotency-Key": "payout-1"}
    paid = await client.post("/api/v1/payouts", json={}, headers=keyed)
    assert paid.status_code == 201, paid.text
    assert (paid.json()["amount_cents"], paid.json()["balance_cents"]) == (PRICE - FEE, 0)
    assert paid.json()["processor_reference"].startswith("sbxpo_")
    replay = await client.post("/api/v1/payouts", json={}, headers=keyed)
    assert replay.json() == paid.json()
    problem(
        await client.post("/api/v1/payouts", json={}, headers=seller.headers),
        409,
        "nothing-to-pay-out",
    )
    assert await session.scalar(select(func.count()).select_from(Payout)) == 1
    assert await payable(session, seller.id) == 0
    listed = await client.get("/api/v1/payouts", headers=seller.headers)
    assert [p["id"] for p in listed.json()["items"]] == [paid.json()["id"]]
    [mail] = [m for m in await mails_to(session, seller.id) if m.template == "notify/payout_sent"]
    assert "$22.50" in mail.subject
    entries = await client.get("/api/v1/wallet/entries", headers=seller.headers)
    assert "payout" in {e["kind"] for e in entries.json()["items"]}
    await ledger_ok(session)


async def test_the_scheduled_payout_pays_balances_over_the_minimum(
    client: httpx.AsyncClient, db: Database, session: AsyncSession, settings: Settings
) -> None:
    seller = await member(client, session, "seller")
    small_seller = await member(client, session, "seller")
    buyer = await member(client, session, "buyer", cents=20_000)
    await bought(client, session, settings, seller, buyer)
    await bought(client, session, settings, small_seller, buyer, price_cents=500)
    later = utcnow() + dt.timedelta(hours=settings.return_window_hours + 1)
    assert await orders.settle_due_orders(session, settings, now=later) == 2

    # The daily job queues one payout job per seller over the minimum (4.50 < 10.00), once.
    assert await payouts.enqueue_scheduled_payouts(session, settings) == 1
    assert await payouts.enqueue_scheduled_payouts(session, settings) == 0
    [job] = await session.scalars(select(Job).where(Job.kind == payouts.PAY_SELLER_JOB))
    assert job.payload == {"seller_id": seller.id, "currency": "USD"}
    worker = Worker(db, build_registry(), build_services(settings), settings)
    await worker.run_once()
    assert await payable(session, seller.id) == 0
    assert await payable(session, small_seller.id) == 450
    assert not await payouts.pay_seller_scheduled(session, settings, seller.id, "USD")
    off = settings.model_copy(update={"payouts_scheduled": False, "payout_minimum_cents": 1})
    assert await payouts.enqueue_scheduled_payouts(session, off) == 0
    [payout] = await session.scalars(select(Payout))
    assert (payout.seller_id, payout.requested_by) == (seller.id, "schedule")
    await ledger_ok(session)


async def test_a_tampered_refund_is_reported_by_the_ledger_check(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    seller = await member(client, session, "seller")
    buyer = await member(client, session, "buyer", cents=10_000)
    order_id, _ = await sold_unseen(session, settings, seller, buyer)
    await client.post(f"/api/v1/orders/{order_id}/cancel", headers=buyer.headers)
    await ledger_ok(session)
    order = await session.get(Order, order_id, populate_existing=True)
    assert order is not None
    order.refund_cause = "return"  # says returned, with no approved return behind it
    await session.flush()
    report = await verify_ledger(session)
    assert any("refunded for a return but has 0 approved" in p for p in report.problems)
