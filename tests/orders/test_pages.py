"""Buying pages over a real HTTP stack: the market shows previews only, the confirm step buys
once (its one-time key is the Idempotency-Key), a refusal is shown on the page with nothing
changed, the order page shows the contact to its buyer only, replay from the delivery log,
webhook settings, and the seller's sales page without the contact."""

from __future__ import annotations

import re

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.models import Order, User
from tests.fixtures.accounts import register
from tests.fixtures.ledger import fund, make_member
from tests.fixtures.orders import make_lead
from tests.ledger.test_wallet_page import field, sign_in


async def web_buyer(client: httpx.AsyncClient, session: AsyncSession, cents: int) -> User:
    account = await register(client, "buyer")
    await sign_in(client, account["username"])
    user = await session.get(User, account["id"])
    assert user is not None
    if cents:
        await fund(session, user, cents)
    return user


async def test_a_buyer_buys_through_the_pages(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    seller = await make_member(session, "seller")
    lead, email = await make_lead(session, settings, seller, price_cents=3000)
    auction_only, _ = await make_lead(session, settings, seller, mode="auction", buy_now_cents=None)
    await web_buyer(client, session, 5000)

    market = await client.get("/market")
    assert market.status_code == 200
    assert f'href="/market/leads/{lead.id}"' in market.text
    # An auction without a buy-now price is bid on, not bought.
    assert f'href="/auctions/{auction_only.id}"' in market.text
    assert f'href="/market/leads/{auction_only.id}"' not in market.text
    assert email not in market.text
    filtered = await client.get("/market", params={"vertical": "home-services-nope"})
    assert lead.id not in filtered.text

    confirm = await client.get(f"/market/leads/{lead.id}")
    assert "Confirm: buy for $30.00" in confirm.text
    form = {
        "csrf_token": field(confirm.text, "csrf_token"),
        "purchase_key": field(confirm.text, "purchase_key"),
    }
    bought = await client.post(f"/market/leads/{lead.id}/purchase", data=form)
    assert bought.status_code == 303, bought.text
    again = await client.post(f"/market/leads/{lead.id}/purchase", data=form)
    assert again.headers["location"] == bought.headers["location"]  # a double click buys once
    assert await session.scalar(select(func.count()).select_from(Order)) == 1

    page = await client.get(bought.headers["location"])
    assert page.status_code == 200
    assert email in page.text
    orders = await client.get("/orders")
    assert re.search(r'href="/orders/ord_\w+"', orders.text)

    # Without CSRF nothing happens.
    other, _ = await make_lead(session, settings, seller)
    refused = await client.post(f"/market/leads/{other.id}/purchase", data={})
    assert refused.status_code == 403
    assert await session.scalar(select(func.count()).select_from(Order)) == 1


async def test_a_refusal_is_shown_on_the_confirm_page(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    seller = await make_member(session, "seller")
    lead, _ = await make_lead(session, settings, seller, price_cents=3000)
    await web_buyer(client, session, 1000)
    confirm = await client.get(f"/market/leads/{lead.id}")
    form = {
        "csrf_token": field(confirm.text, "csrf_token"),
        "purchase_key": field(confirm.text, "purchase_key"),
    }
    response = await client.post(f"/market/leads/{lead.id}/purchase", data=form)
    assert response.status_code == 402
    assert "Error: Buy a lead" in response.text
    assert "This needs $30.00; $10.00 is available." in response.text
    assert await session.scalar(select(func.count()).select_from(Order)) == 0


async def test_webhook_page_shows_the_secret_once_and_sellers_see_sales_without_contact(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    seller_account = await register(client, "seller")
    seller = await session.get(User, seller_account["id"])
    assert seller is not None
    lead, email = await make_lead(session, settings, seller, price_cents=3000)
    await web_buyer(client, session, 5000)

    page = await client.get("/webhook")
    bad = await client.post(
        "/webhook", data={"csrf_token": field(page.text, "csrf_token"), "url": "nope"}
    )
    assert bad.status_code == 422 and 'aria-invalid="true"' in bad.text
    saved = await client.post(
        "/webhook",
        data={"csrf_token": field(page.text, "csrf_token"), "url": "http://127.0.0.1:9/hook"},
    )
    assert saved.status_code == 200
    assert re.search(r"whsec_[A-Za-z0-9+/=]+", saved.text)
    assert "whsec_" not in (await client.get("/webhook")).text.replace("<code>whsec_", "")

    confirm = await client.get(f"/market/leads/{lead.id}")
    form = {
        "csrf_token": field(confirm.text, "csrf_token"),
        "purchase_key": field(confirm.text, "purchase_key"),
    }
    bought = await client.post(f"/market/leads/{lead.id}/purchase", data=form)
    order_page = await client.get(bought.headers["location"])
    delivery_id = re.search(r"<code>(msg_\w+)</code>", order_page.text)
    assert delivery_id is not None

    await client.post("/signout", data={"csrf_token": field(order_page.text, "csrf_token")})
    await sign_in(client, seller_account["username"])
    sales = await client.get("/seller/sales")
    assert sales.status_code == 200
    assert "$30.00" in sales.text
    assert email not in sales.text
    assert (await client.get(bought.headers["location"])).status_code == 403  # buyers' page
