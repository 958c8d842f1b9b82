"""Buying a lead outright (M1, L4, L6, P2): the order, the held funds, the closed lead, the
retention clock, the disclosure and the audit entry; each refusal a 4xx naming its reason with
nothing changed; Idempotency-Key; the contact for the buyer only, and for nobody after the
lead's personal data is destroyed."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.db import utcnow
from leadmarket.leads.vault import destroy_personal_data
from leadmarket.ledger import service as ledger
from leadmarket.ledger.verify import verify_ledger
from leadmarket.models import (
    AuditEvent,
    Disclosure,
    Lead,
    LedgerHold,
    Order,
    SaleVia,
    User,
)
from leadmarket.orders import service
from tests.fixtures.accounts import signed_in
from tests.fixtures.ledger import fund, make_member
from tests.fixtures.orders import make_lead

PRICE = 2500


@dataclass
class Buyer:
    id: str
    headers: dict[str, str]


async def buyer(client: httpx.AsyncClient, session: AsyncSession, cents: int = 10_000) -> Buyer:
    account, headers = await signed_in(client, "buyer")
    if cents:
        user = await session.get(User, account["id"])
        assert user is not None
        await fund(session, user, cents)
    return Buyer(account["id"], headers)


async def buy(
    client: httpx.AsyncClient, who: Buyer, lead_id: str, **headers: str
) -> httpx.Response:
    return await client.post(
        f"/api/v1/leads/{lead_id}/purchase", headers={**who.headers, **headers}
    )


async def snapshot(session: AsyncSession, lead_id: str, buyer_id: str) -> dict[str, Any]:
    """Everything a purchase changes."""
    lead = await session.get(Lead, lead_id, populate_existing=True)
    assert lead is not None
    wallet = await ledger.wallet_summary(session, buyer_id, "USD")
    return {
        "wallet": (wallet.balance_cents, wallet.held_cents),
        "orders": await session.scalar(select(func.count()).select_from(Order)),
        "holds": await session.scalar(select(func.count()).select_from(LedgerHold)),
        "disclosures": await session.scalar(select(func.count()).select_from(Disclosure)),
        "lead": (lead.status, lead.sold_count, lead.pii_expires_at),
    }


async def test_a_buyer_buys_a_fixed_price_lead(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    seller = await make_member(session, "seller")
    lead, email = await make_lead(session, settings, seller, price_cents=PRICE)
    me = await buyer(client, session)
    before = utcnow()

    response = await buy(client, me, lead.id)

    assert response.status_code == 201, response.text
    order = response.json()
    assert order["lead_id"] == lead.id
    assert order["price_cents"] == PRICE
    assert order["status"] == "held"
    assert order["via"] == "fixed"
    assert order["contact"]["email"] == email
    assert order["contact"]["address"]["street"] == "1 Olive Ave"
    # L6: what the transaction needs, not the consent evidence.
    assert "203.0.113.7" not in response.text
    expires = dt.datetime.fromisoformat(order["pii_expires_at"])
    assert before + dt.timedelta(hours=48) <= expires <= utcnow() + dt.timedelta(hours=48)

    wallet = await ledger.wallet_summary(session, me.id, "USD")
    assert (wallet.balance_cents, wallet.held_cents) == (10_000 - PRICE, PRICE)
    sold = await session.get(Lead, lead.id, populate_existing=True)
    assert sold is not None and sold.status == "sold" and sold.sold_count == 1
    disclosure = await session.scalar(select(Disclosure).where(Disclosure.lead_id == lead.id))
    assert disclosure is not None
    assert disclosure.recipient_id == me.id
    assert disclosure.purpose == "sale" and disclosure.recipient_category == "buyer"
    assert "identifiers" in disclosure.categories
    assert "internet_activity" not in disclosure.categories  # consent evidence stays
    sale = await session.scalar(
        select(AuditEvent).where(AuditEvent.action == "lead.sold", AuditEvent.subject_id == lead.id)
    )
    assert sale is not None and sale.details is not None
    assert sale.details["order_id"] == order["id"]
    read = await session.scalar(
        select(AuditEvent).where(AuditEvent.action == "pii.read", AuditEvent.subject_id == lead.id)
    )
    assert read is not None and read.actor_id == me.id  # A4: the buyer's read is recorded

    listed = await client.get("/api/v1/orders", headers=me.headers)
    assert [o["id"] for o in listed.json()["items"]] == [order["id"]]
    report = await verify_ledger(session)
    assert report.ok, report.problems


async def test_buy_now_on_an_auction(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    seller = await make_member(session, "seller")
    lead, _ = await make_lead(session, settings, seller, mode="auction", buy_now_cents=4000)
    me = await buyer(client, session)
    response = await buy(client, me, lead.id)
    assert response.status_code == 201, response.text
    assert response.json()["price_cents"] == 4000
    assert response.json()["via"] == "buy_now"


async def test_a_shared_lead_sells_to_max_buyers_each_once(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    seller = await make_member(session, "seller")
    lead, _ = await make_lead(session, settings, seller, exclusive=False, max_buyers=4)
    buyers = [await buyer(client, session) for _ in range(5)]
    first = await buy(client, buyers[0], lead.id)
    again = await buy(client, buyers[0], lead.id)
    assert again.status_code == 409
    assert again.json()["type"] == "/problems/already-bought"
    for b in buyers[1:4]:
        response = await buy(client, b, lead.id)
        assert response.status_code == 201, response.text
    # L4: the clock starts when the shared lead's sale closes, here at its last place taken;
    # every buyer's order then shows that one deadline.
    assert first.json()["pii_expires_at"] is None
    closed_at = dt.datetime.fromisoformat(response.json()["purchased_at"])
    expires = dt.datetime.fromisoformat(response.json()["pii_expires_at"])
    assert expires == closed_at + dt.timedelta(hours=48)
    shown = await client.get(f"/api/v1/orders/{first.json()['id']}", headers=buyers[0].headers)
    assert dt.datetime.fromisoformat(shown.json()["pii_expires_at"]) == expires
    before = await snapshot(session, lead.id, buyers[4].id)
    late = await buy(client, buyers[4], lead.id)
    assert late.status_code == 409
    assert late.json()["type"] == "/problems/lead-not-for-sale"
    assert late.json()["lead_status"] == "sold"
    assert await snapshot(session, lead.id, buyers[4].id) == before
    assert before["lead"][:2] == ("sold", 4)


@pytest.mark.parametrize(
    ("case", "status", "problem"),
    [
        ("no_funds", 402, "insufficient-funds"),
        ("auction_only", 409, "no-fixed-price"),
        ("withdrawn", 409, "lead-not-for-sale"),
        ("auction_ended", 409, "lead-not-for-sale"),
        ("sold", 409, "lead-not-for-sale"),
        ("unknown", 404, "not-found"),
    ],
)
async def test_refusals_name_the_reason_and_change_nothing(
    client: httpx.AsyncClient,
    session: AsyncSession,
    settings: Settings,
    case: str,
    status: int,
    problem: str,
) -> None:
    seller = await make_member(session, "seller")
    kwargs: dict[str, Any] = {
        "auction_only": {"mode": "auction", "buy_now_cents": None},
        "withdrawn": {"status": "withdrawn"},
        "auction_ended": {
            "mode": "auction",
            "buy_now_cents": 4000,
            "auction_ends_at": utcnow() - dt.timedelta(minutes=1),
        },
    }.get(case, {})
    lead, email = await make_lead(session, settings, seller, price_cents=PRICE, **kwargs)
    me = await buyer(client, session, cents=PRICE - 1 if case == "no_funds" else 10_000)
    if case == "sold":
        assert (await buy(client, await buyer(client, session), lead.id)).status_code == 201
    lead_id = "lead_nope" if case == "unknown" else lead.id
    before = await snapshot(session, lead.id, me.id)

    response = await buy(client, me, lead_id)

    assert response.status_code == status, response.text
    assert response.json()["type"] == f"/problems/{problem}"
    assert email not in response.text
    assert await snapshot(session, lead.id, me.id) == before


async def test_sellers_cannot_buy_and_nobody_buys_their_own_lead(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    _, seller_headers = await signed_in(client, "seller")
    owner = await make_member(session, "seller")
    lead, _ = await make_lead(session, settings, owner)
    response = await client.post(f"/api/v1/leads/{lead.id}/purchase", headers=seller_headers)
    assert response.status_code == 403
    # The sale step itself refuses the lead's own seller, whoever calls it.
    with pytest.raises(service.OwnLead):
        await service.sell(
            session,
            settings,
            lead_id=lead.id,
            buyer_id=owner.id,
            price_cents=100,
            via=SaleVia.FIXED,
        )


async def test_idempotency_key_replays_the_first_order(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    seller = await make_member(session, "seller")
    lead, _ = await make_lead(session, settings, seller, exclusive=False, max_buyers=4)
    other, _ = await make_lead(session, settings, seller)
    me = await buyer(client, session)
    first = await buy(client, me, lead.id, **{"Idempotency-Key": "buy-1"})
    second = await buy(client, me, lead.id, **{"Idempotency-Key": "buy-1"})
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] == second.json()["id"]
    wallet = await ledger.wallet_summary(session, me.id, "USD")
    assert wallet.held_cents == PRICE  # held once
    reused = await buy(client, me, other.id, **{"Idempotency-Key": "buy-1"})
    assert reused.status_code == 409
    assert reused.json()["type"] == "/problems/idempotency-key-reused"


async def test_the_contact_is_for_the_buyer_only(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    _, seller_headers = await signed_in(client, "seller")
    seller_user = await session.scalar(select(User).order_by(User.created_at.desc()).limit(1))
    assert seller_user is not None
    lead, email = await make_lead(session, settings, seller_user)
    me = await buyer(client, session)
    stranger = await buyer(client, session)
    order = (await buy(client, me, lead.id)).json()

    other = await client.get(f"/api/v1/orders/{order['id']}", headers=stranger.headers)
    assert other.status_code == 404
    assert email not in other.text
    assert (await client.get("/api/v1/orders", headers=stranger.headers)).json()["items"] == []
    deliveries = await client.get(
        f"/api/v1/orders/{order['id']}/deliveries", headers=stranger.headers
    )
    assert deliveries.status_code == 404

    # L6: the seller sees the sale, never the contact.
    seen = await client.get(f"/api/v1/orders/{order['id']}", headers=seller_headers)
    assert seen.status_code == 200, seen.text
    assert seen.json()["contact"] is None
    assert email not in seen.text
    sales = await client.get("/api/v1/orders", headers=seller_headers)
    assert [o["id"] for o in sales.json()["items"]] == [order["id"]]
    assert email not in sales.text


async def test_no_contact_after_destruction_or_past_its_expiry(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    seller = await make_member(session, "seller")
    destroyed, email_1 = await make_lead(session, settings, seller)
    expired, email_2 = await make_lead(session, settings, seller)
    me = await buyer(client, session)
    order_1 = (await buy(client, me, destroyed.id)).json()
    order_2 = (await buy(client, me, expired.id)).json()
    assert order_1["contact"]["email"] == email_1

    lead_1 = await session.get(Lead, destroyed.id, populate_existing=True)
    lead_2 = await session.get(Lead, expired.id, populate_existing=True)
    assert lead_1 is not None and lead_2 is not None
    await destroy_personal_data(session, lead_1, now=utcnow())
    lead_2.pii_expires_at = utcnow() - dt.timedelta(seconds=1)  # the sweep has not run yet
    await session.flush()

    for order, email in ((order_1, email_1), (order_2, email_2)):
        response = await client.get(f"/api/v1/orders/{order['id']}", headers=me.headers)
        assert response.status_code == 200
        assert response.json()["contact"] is None
        assert email not in response.text
    assert response.json()["pii_expires_at"] is not None
