"""After-sale pages over a real HTTP stack, each member in their own browser (cookie session,
CSRF): an undelivered order's contact stays closed and it can be cancelled; a return with a file
from the order page; the seller's sale page refuses a denial without a note and takes one with
it; the buyer disputes; an admin decides from the queue and the buyer is refunded; claims from
both sides; the payouts page refuses to pay money still in the return window."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.ledger.verify import verify_ledger
from leadmarket.models import Order, OrderClaim, OrderReturn, User
from leadmarket.orders import service as orders
from tests.fixtures.accounts import register
from tests.fixtures.ledger import fund
from tests.fixtures.orders import make_lead
from tests.fixtures.returns import PRICE, wallet
from tests.ledger.test_wallet_page import field, sign_in


def browser(app: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.30", 50000))
    return httpx.AsyncClient(transport=transport, base_url="https://testserver")


async def web_user(client: httpx.AsyncClient, session: AsyncSession, role: str) -> User:
    account = await register(client, "buyer" if role == "admin" else role)
    user = await session.get(User, account["id"])
    assert user is not None
    if role == "admin":
        user.role = "admin"
        await session.commit()
    await sign_in(client, account["username"])
    return user


@pytest.fixture
async def browsers(app: FastAPI) -> AsyncIterator[list[httpx.AsyncClient]]:
    async with browser(app) as b, browser(app) as s, browser(app) as a:
        yield [b, s, a]


async def test_the_after_sale_journey_through_the_pages(
    browsers: list[httpx.AsyncClient], session: AsyncSession, settings: Settings
) -> None:
    b, s, a = browsers
    buyer = await web_user(b, session, "buyer")
    seller = await web_user(s, session, "seller")
    await web_user(a, session, "admin")
    await fund(session, buyer, 10_000)
    leads = [await make_lead(session, settings, seller, price_cents=PRICE) for _ in range(2)]
    sold = [
        await orders.sell(
            session,
            settings,
            lead_id=lead.id,
            buyer_id=buyer.id,
            price_cents=PRICE,
            via=orders.SaleVia.AUCTION,
        )
        for lead, _ in leads
    ]
    first, second = sold[0].id, sold[1].id
    email = leads[0][1]

    # Not delivered yet: the contact stays closed and the order can be cancelled.
    page = await b.get(f"/orders/{first}")
    assert page.status_code == 200
    assert 'data-testid="undelivered"' in page.text and email not in page.text
    assert f'action="/orders/{first}/cancel"' in page.text
    refused = await b.post(f"/orders/{first}/cancel", data={})
    assert refused.status_code == 403  # no CSRF token: nothing happens
    cancelled = await b.post(
        f"/orders/{first}/cancel",
        data={
            "csrf_token": field(page.text, "csrf_token"),
            "form_key": field(page.text, "form_key"),
        },
    )
    assert cancelled.headers["location"] == f"/orders/{first}?done=cancelled"
    page = await b.get(cancelled.headers["location"])
    assert "The order is cancelled" in page.text
    assert await wallet(session, buyer.id) == (10_000 - PRICE, PRICE)

    # The second one: opened, it can only be returned.
    opened = await b.get(f"/orders/{second}?show=contact")
    assert 'data-testid="contact"' in opened.text
    assert f'action="/orders/{second}/cancel"' not in opened.text
    form = {
        "csrf_token": field(opened.text, "csrf_token"),
        "form_key": field(opened.text, "form_key"),
        "reason": "fake_or_fraudulent_identity",
        "note": "Nobody by that name.",
        "evidence_text": "Called twice.",
    }
    bad = await b.post(f"/orders/{second}/returns", data={**form, "reason": "meh"})
    assert bad.status_code == 422 and "Choose a reason" in bad.text
    asked = await b.post(
        f"/orders/{second}/returns",
        data=form,
        files={"evidence": ("calls.txt", b"2 calls, no such person", "text/plain")},
    )
    assert asked.status_code == 303, asked.text
    page = await b.get(asked.headers["location"])
    assert 'data-testid="return-status">requested<' in page.text
    assert "calls.txt" in page.text
    again = await b.post(
        f"/orders/{second}/returns",
        data={**form, "form_key": "another"},
        files={"evidence": ("calls.txt", b"again", "text/plain")},
    )
    assert again.status_code == 409 and "This order has a return already." in again.text

    # The seller's sale page: the return, its evidence; a denial needs a note.
    sales = await s.get("/seller/sales")
    assert f'href="/seller/sales/{second}"' in sales.text
    sale = await s.get(f"/seller/sales/{second}")
    assert "Nobody by that name." in sale.text and email not in sale.text
    decision = {
        "csrf_token": field(sale.text, "csrf_token"),
        "form_key": field(sale.text, "form_key"),
        "decision": "deny",
        "note": "",
    }
    no_note = await s.post(f"/seller/sales/{second}/decision", data=decision)
    assert no_note.status_code == 422 and "Must not be blank." in no_note.text
    denied = await s.post(
        f"/seller/sales/{second}/decision",
        data={**decision, "form_key": "deny-2", "note": "The number answered."},
    )
    assert denied.headers["location"] == f"/seller/sales/{second}?done=denied"
    assert (await a.get(f"/seller/sales/{second}")).status_code == 403  # not a seller

    # The buyer disputes; an admin decides for them from the queue.
    page = await b.get(f"/orders/{second}")
    disputed = await b.post(
        f"/orders/{second}/dispute",
        data={"csrf_token": field(page.text, "csrf_token"), "note": "It is a fake name."},
    )
    assert disputed.headers["location"] == f"/orders/{second}?done=disputed"
    queue = await a.get("/admin/after-sale")
    assert queue.status_code == 200 and "It is a fake name." in queue.text
    dispute_id = re.search(r'action="/admin/after-sale/disputes/(dsp_\w+)"', queue.text)
    assert dispute_id
    decided = await a.post(
        f"/admin/after-sale/disputes/{dispute_id.group(1)}",
        data={
            "csrf_token": field(queue.text, "csrf_token"),
            "form_key": field(queue.text, "form_key"),
            "outcome": "for_buyer",
            "note": "The identity does not exist.",
        },
    )
    assert decided.headers["location"] == "/admin/after-sale?done=decided"
    assert await wallet(session, buyer.id) == (10_000, 0)
    page = await b.get(f"/orders/{second}")
    assert 'data-testid="return-status">approved<' in page.text
    assert "for the buyer (final)" in page.text
    assert "dispute decided" in page.text  # the history

    # Claims from both sides.
    claimed = await b.post(
        f"/orders/{second}/claims",
        data={"csrf_token": field(page.text, "csrf_token"), "category": "other", "text": "Hi"},
    )
    assert claimed.status_code == 303
    sale = await s.get(f"/seller/sales/{second}")
    seller_claim = await s.post(
        f"/seller/sales/{second}/claims",
        data={"csrf_token": field(sale.text, "csrf_token"), "category": "conduct", "text": "x"},
    )
    assert seller_claim.status_code == 303
    claims = await session.scalars(select(OrderClaim.filer_role).order_by(OrderClaim.filer_role))
    assert list(claims) == ["buyer", "seller"]

    # Payouts: nothing is settled yet.
    payouts = await s.get("/seller/payouts")
    assert 'data-testid="payable">$0.00<' in payouts.text
    assert 'action="/seller/payouts"' not in payouts.text
    nothing = await s.post(
        "/seller/payouts",
        data={
            "csrf_token": field(payouts.text, "csrf_token"),
            "form_key": "pay-1",  # no button while nothing is settled; a crafted post then
        },
    )
    assert nothing.status_code == 409 and "There is no settled balance" in nothing.text

    statuses = dict((await session.execute(select(Order.id, Order.status))).all())
    assert statuses == {first: "cancelled", second: "cancelled"}
    [refund] = await session.scalars(select(OrderReturn.refund_kind))
    assert refund == "released"
    session.expire_all()
    report = await verify_ledger(session)
    assert report.ok, report.problems
