"""The post (issue 4 §4): the pinged lead, with its contact and consent, is created through
intake and sold to the ping's winner in one transaction; a post that does not match a live ping
of this seller changes nothing; a winner that can no longer buy makes way for the next."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.ledger import service as ledger
from leadmarket.models import (
    Campaign,
    CampaignCapCounter,
    Lead,
    LeadVault,
    Order,
    Ping,
    WebhookDelivery,
)
from tests.fixtures.accounts import signed_in
from tests.fixtures.leads import minor_birth_date
from tests.fixtures.pingpost import bidding_buyer, ping_body, post_body

WEBHOOK = "https://buyer.example.com/leads"


async def count(session: AsyncSession, model: Any) -> int:
    return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def pinged(
    client: httpx.AsyncClient, seller: dict[str, str], **changes: Any
) -> dict[str, Any]:
    answer = await client.post("/api/v1/ping", json=ping_body(**changes), headers=seller)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def nothing_stored(session: AsyncSession) -> bool:
    return (await count(session, Lead), await count(session, Order)) == (0, 0)


async def test_a_post_creates_the_lead_sealed_and_sells_it_to_the_winner(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    winner, campaign = await bidding_buyer(session, bid_cents=3000, webhook_url=WEBHOOK)
    await bidding_buyer(session, bid_cents=2000)
    _, seller = await signed_in(client, "seller")
    ping = await pinged(client, seller)
    body = post_body(ping["ping_id"])
    answer = await client.post("/api/v1/post", json=body, headers=seller)
    assert answer.status_code == 201, answer.text
    sold = answer.json()
    assert (sold["sold"], sold["price_cents"]) == (True, 2001)

    order = await session.get(Order, sold["order_id"])
    assert order is not None
    assert (order.buyer_id, order.price_cents, order.via) == (winner.id, 2001, "ping_post")
    lead = await session.get(Lead, sold["lead_id"])
    assert lead is not None and lead.status == "sold" and lead.source == "ping"
    assert lead.preview_attributes == ping_body()["attributes"]
    vault = await session.get(LeadVault, lead.id)
    assert vault is not None
    assert body["contact"]["email"] not in str(vault.sealed_fields)
    wallet = await ledger.wallet_summary(session, winner.id, "USD")
    assert (wallet.balance_cents, wallet.held_cents) == (100_000 - 2001, 2001)
    (delivery,) = (await session.scalars(select(WebhookDelivery))).all()
    assert (delivery.order_id, delivery.url) == (order.id, WEBHOOK)
    spent = await session.scalar(select(Campaign.spent_cents).where(Campaign.id == campaign.id))
    assert spent == 2001
    stored = await session.get(Ping, ping["ping_id"], populate_existing=True)
    assert stored is not None
    assert (stored.outcome, stored.order_id, stored.lead_id) == ("sold", order.id, lead.id)


async def test_the_same_idempotency_key_replays_the_answer(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await bidding_buyer(session, bid_cents=3000)
    _, seller = await signed_in(client, "seller")
    ping = await pinged(client, seller)
    body = post_body(ping["ping_id"])
    headers = {**seller, "Idempotency-Key": "post-1"}
    first = await client.post("/api/v1/post", json=body, headers=headers)
    again = await client.post("/api/v1/post", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert await count(session, Order) == 1
    other = await client.post("/api/v1/post", json=post_body(ping["ping_id"]), headers=headers)
    assert other.status_code == 409
    assert other.json()["type"].endswith("/idempotency-key-reused")


async def test_a_post_for_an_unknown_or_another_sellers_ping_is_not_found(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await bidding_buyer(session, bid_cents=3000)
    _, seller = await signed_in(client, "seller")
    _, rival = await signed_in(client, "seller")
    ping = await pinged(client, seller)
    unknown = await client.post("/api/v1/post", json=post_body("png_nothing"), headers=seller)
    theirs = await client.post("/api/v1/post", json=post_body(ping["ping_id"]), headers=rival)
    assert (unknown.status_code, theirs.status_code) == (404, 404)
    assert "pings" in theirs.json()["detail"]
    assert await nothing_stored(session)
    # The ping is still there for its own seller.
    mine = await client.post("/api/v1/post", json=post_body(ping["ping_id"]), headers=seller)
    assert mine.status_code == 201


async def test_a_post_after_the_ping_expired_is_refused(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await bidding_buyer(session, bid_cents=3000)
    _, seller = await signed_in(client, "seller")
    ping = await pinged(client, seller)
    await session.execute(
        update(Ping)
        .where(Ping.id == ping["ping_id"])
        .values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
    )
    answer = await client.post("/api/v1/post", json=post_body(ping["ping_id"]), headers=seller)
    assert answer.status_code == 409
    assert answer.json()["type"].endswith("/ping-expired")
    assert await nothing_stored(session)


async def test_a_ping_is_posted_once(client: httpx.AsyncClient, session: AsyncSession) -> None:
    await bidding_buyer(session, bid_cents=3000)
    await bidding_buyer(session, bid_cents=2000)
    _, seller = await signed_in(client, "seller")
    ping = await pinged(client, seller)
    first = await client.post("/api/v1/post", json=post_body(ping["ping_id"]), headers=seller)
    again = await client.post("/api/v1/post", json=post_body(ping["ping_id"]), headers=seller)
    assert first.status_code == 201
    assert again.status_code == 409
    assert again.json()["type"].endswith("/ping-already-posted")
    assert (await count(session, Lead), await count(session, Order)) == (1, 1)


async def test_a_ping_nobody_bid_on_cannot_be_posted(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    _, seller = await signed_in(client, "seller")
    ping = await pinged(client, seller)
    assert ping["accepted"] is False
    answer = await client.post("/api/v1/post", json=post_body(ping["ping_id"]), headers=seller)
    assert answer.status_code == 409
    assert answer.json()["type"].endswith("/ping-not-accepted")
    assert await nothing_stored(session)


@pytest.mark.parametrize(
    ("contact", "field"),
    [
        ({"region": "NY", "postal_code": "10001"}, "contact.address.region"),
        ({"postal_code": "93651"}, "contact.address.postal_code"),
        ({"country": "CA", "region": "ON", "postal_code": "M5V 2T6"}, "contact.address.country"),
    ],
)
async def test_a_post_somewhere_else_than_its_ping_is_refused(
    client: httpx.AsyncClient, session: AsyncSession, contact: dict[str, str], field: str
) -> None:
    await bidding_buyer(session, bid_cents=3000)
    _, seller = await signed_in(client, "seller")
    ping = await pinged(client, seller)
    body = post_body(ping["ping_id"])
    body["contact"]["address"].update(contact)
    if contact.get("country") == "CA":
        body["contact"]["phone"] = "+14165550199"
    answer = await client.post("/api/v1/post", json=body, headers=seller)
    assert answer.status_code == 422, answer.text
    assert field in [e["field"] for e in answer.json()["errors"]]
    assert await nothing_stored(session)
    # Nothing changed: the same ping can still be posted, right this time.
    assert (
        await client.post("/api/v1/post", json=post_body(ping["ping_id"]), headers=seller)
    ).status_code == 201


async def test_a_post_may_add_but_not_change_attributes(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await bidding_buyer(session, bid_cents=3000)
    _, seller = await signed_in(client, "seller")
    ping = await pinged(client, seller)
    body = post_body(ping["ping_id"])
    body["attributes"] = {"vehicle_year": 2001}
    changed = await client.post("/api/v1/post", json=body, headers=seller)
    assert changed.status_code == 422
    assert [e["field"] for e in changed.json()["errors"]] == ["attributes.vehicle_year"]
    body["attributes"] = {"gender": "female", "vehicle_model": "Civic"}
    added = await client.post("/api/v1/post", json=body, headers=seller)
    assert added.status_code == 201, added.text


async def test_a_consumer_under_14_is_refused_and_nothing_is_stored(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await bidding_buyer(session, bid_cents=3000)
    _, seller = await signed_in(client, "seller")
    ping = await pinged(client, seller)
    body = post_body(ping["ping_id"], contact__birth_date=minor_birth_date())
    answer = await client.post("/api/v1/post", json=body, headers=seller)
    assert answer.status_code == 422
    assert answer.json()["type"].endswith("/minor")
    assert await nothing_stored(session)
    assert await count(session, LeadVault) == 0
    stored = await session.get(Ping, ping["ping_id"], populate_existing=True)
    assert stored is not None and stored.posted_at is None


async def test_a_winner_capped_since_the_ping_makes_way_for_the_next(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    _, capped = await bidding_buyer(session, bid_cents=3000, daily_cap=1)
    runner_up, _ = await bidding_buyer(session, bid_cents=2500)
    _, seller = await signed_in(client, "seller")
    ping = await pinged(client, seller)
    assert ping["price_cents"] == 2501
    # Meanwhile the winner's daily cap fills up.
    day = (
        dt.datetime.now(dt.UTC)
        .astimezone(__import__("zoneinfo").ZoneInfo(capped.timezone))
        .strftime("%Y-%m-%d")
    )
    session.add(
        CampaignCapCounter(campaign_id=capped.id, period_kind="day", period_key=day, count=1)
    )
    await session.flush()
    answer = await client.post("/api/v1/post", json=post_body(ping["ping_id"]), headers=seller)
    assert answer.status_code == 201
    sold = answer.json()
    assert (sold["sold"], sold["price_cents"]) == (True, 2500)  # its own bid, below the ping's
    order = await session.get(Order, sold["order_id"])
    assert order is not None and order.buyer_id == runner_up.id


async def test_when_nobody_can_buy_any_more_nothing_of_the_lead_is_kept(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    _, campaign = await bidding_buyer(session, bid_cents=3000, funds_cents=100)
    _, seller = await signed_in(client, "seller")
    ping = await pinged(client, seller, min_price_cents=2000)
    assert (ping["accepted"], ping["price_cents"]) == (True, 2000)  # more than the wallet has
    answer = await client.post("/api/v1/post", json=post_body(ping["ping_id"]), headers=seller)
    assert answer.status_code == 201
    assert answer.json() == {
        "sold": False,
        "order_id": None,
        "price_cents": 0,
        "currency": "USD",
        "lead_id": None,
    }
    assert await nothing_stored(session)
    assert await count(session, LeadVault) == 0
    spent = await session.scalar(select(Campaign.spent_cents).where(Campaign.id == campaign.id))
    assert spent == 0  # the claim was given back with the refused sale
    stored = await session.get(Ping, ping["ping_id"], populate_existing=True)
    assert stored is not None and stored.outcome == "unsold"
    again = await client.post("/api/v1/post", json=post_body(ping["ping_id"]), headers=seller)
    assert again.status_code == 409


async def test_the_sellers_pings_page_and_list(
    app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await bidding_buyer(session, bid_cents=3000)
    _, seller = await signed_in(client, "seller")
    sold = await pinged(client, seller)
    await client.post("/api/v1/post", json=post_body(sold["ping_id"]), headers=seller)
    await pinged(client, seller, postal_code="93651")
    listed = await client.get("/api/v1/pings", headers=seller)
    assert listed.status_code == 200
    items = listed.json()["items"]
    assert [i["outcome"] for i in items] == [None, "sold"]
    assert items[1]["sold_price_cents"] == 1


async def test_a_post_outside_the_pings_age_band_is_refused_and_changes_nothing(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await bidding_buyer(session, bid_cents=3000, filters={"age_min": 25, "age_max": 34})
    _, seller = await signed_in(client, "seller")
    ping = await pinged(client, seller, age=30)
    assert ping["accepted"]
    born_46_years_ago = post_body(ping["ping_id"])  # the fixture's consumer: born 1980
    refused = await client.post("/api/v1/post", json=born_46_years_ago, headers=seller)
    assert refused.status_code == 422
    assert [e["field"] for e in refused.json()["errors"]] == ["contact.birth_date"]
    assert await nothing_stored(session)
    today = dt.date.today()
    aged_30 = post_body(ping["ping_id"], contact__birth_date=f"{today.year - 31}-01-01")
    if (today.month, today.day) == (1, 1):  # 31 on New Year's Day: 1 January of 30 years ago
        aged_30 = post_body(ping["ping_id"], contact__birth_date=f"{today.year - 30}-01-01")
    sold = await client.post("/api/v1/post", json=aged_30, headers=seller)
    assert sold.status_code == 201, sold.text
    assert sold.json()["sold"] is True
