"""The ping (issue 4 §4): the best campaign's price without any contact data, within the
deadline; bad fields named; the same ping twice within the window refused."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.crypto import derive_key, keyed_hash
from leadmarket.models import Ping
from leadmarket.pingpost import service
from leadmarket.pingpost.service import PingKit
from tests.fixtures.accounts import signed_in
from tests.fixtures.pingpost import bidding_buyer, bidding_endpoint, ping_body, pinged_buyer


async def pings_stored(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(Ping)) or 0)


async def test_second_price_is_the_next_bid_plus_a_cent(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await bidding_buyer(session, bid_cents=3000)
    await bidding_buyer(session, bid_cents=2000)
    await bidding_buyer(session, bid_cents=1000)
    _, seller = await signed_in(client, "seller")
    answer = await client.post("/api/v1/ping", json=ping_body(), headers=seller)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["accepted"], body["price_cents"], body["currency"]) == (True, 2001, "USD")
    assert body["ping_id"].startswith("png_") and body["expires_at"]


async def test_first_price_is_the_winners_bid(
    app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
) -> None:
    app.state.settings.ping_price_rule = "first"
    await bidding_buyer(session, bid_cents=3000)
    await bidding_buyer(session, bid_cents=2000)
    _, seller = await signed_in(client, "seller")
    answer = await client.post("/api/v1/ping", json=ping_body(), headers=seller)
    assert answer.json()["price_cents"] == 3000


async def test_a_lone_bidder_pays_the_sellers_floor_under_second_price(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await bidding_buyer(session, bid_cents=3000)
    await bidding_buyer(session, bid_cents=900)  # below the floor: does not count
    _, seller = await signed_in(client, "seller")
    answer = await client.post("/api/v1/ping", json=ping_body(min_price_cents=1500), headers=seller)
    assert (answer.json()["accepted"], answer.json()["price_cents"]) == (True, 1500)


async def test_nobody_wanting_the_lead_is_accepted_false_at_no_price(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await bidding_buyer(session, bid_cents=3000, filters={"regions": ["NY"]})
    _, seller = await signed_in(client, "seller")
    answer = await client.post("/api/v1/ping", json=ping_body(), headers=seller)
    assert answer.status_code == 200
    assert (answer.json()["accepted"], answer.json()["price_cents"]) == (False, 0)


async def test_campaigns_filtering_on_age_do_not_bid_on_pings_without_one(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    """A ping without an age has no age band: an age filter cannot admit it."""
    await bidding_buyer(session, bid_cents=5000, filters={"age_min": 25, "age_max": 64})
    await bidding_buyer(session, bid_cents=1000)
    _, seller = await signed_in(client, "seller")
    answer = await client.post("/api/v1/ping", json=ping_body(), headers=seller)
    assert answer.json()["price_cents"] == 1  # the lone bidder at the default floor


async def test_a_pings_age_lets_campaigns_filtering_on_age_bid_and_only_its_band_is_kept(
    app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
) -> None:
    app.state.settings.ping_price_rule = "first"  # the price names the winning campaign
    await bidding_buyer(session, bid_cents=5000, filters={"age_min": 25, "age_max": 34})
    await bidding_buyer(session, bid_cents=4000, filters={"age_min": 35, "age_max": 64})
    await bidding_buyer(session, bid_cents=1000)
    _, seller = await signed_in(client, "seller")
    answer = await client.post("/api/v1/ping", json=ping_body(age=30), headers=seller)
    assert answer.status_code == 200, answer.text
    assert answer.json()["price_cents"] == 5000
    older = await client.post("/api/v1/ping", json=ping_body(age=40), headers=seller)
    assert older.json()["price_cents"] == 4000
    stored = (await session.scalars(select(Ping.age_band).order_by(Ping.created_at))).all()
    assert stored == ["25-34", "35-44"]  # the band, never the age itself
    listed = await client.get("/api/v1/pings", headers=seller)
    assert [p["age_band"] for p in listed.json()["items"]] == ["35-44", "25-34"]


async def test_pings_of_the_same_lead_in_other_age_bands_are_not_duplicates(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await bidding_buyer(session, bid_cents=1000)
    _, seller = await signed_in(client, "seller")
    for age in (30, 40):
        answer = await client.post("/api/v1/ping", json=ping_body(age=age), headers=seller)
        assert answer.status_code == 200, answer.text
    again = await client.post("/api/v1/ping", json=ping_body(age=31), headers=seller)
    assert again.status_code == 409  # 31 is in 30's band: the same ping


async def test_a_ping_for_a_child_is_refused_as_minor_and_not_stored(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await bidding_buyer(session, bid_cents=1000)
    _, seller = await signed_in(client, "seller")
    answer = await client.post("/api/v1/ping", json=ping_body(age=13), headers=seller)
    assert answer.status_code == 422
    assert answer.json()["type"].endswith("/minor")
    assert await pings_stored(session) == 0


@pytest.mark.parametrize(
    "field", ["contact", "email", "phone", "first_name", "birth_date", "address", "consent"]
)
async def test_a_ping_carries_no_contact_data(
    client: httpx.AsyncClient, session: AsyncSession, field: str
) -> None:
    _, seller = await signed_in(client, "seller")
    body = ping_body()
    body[field] = {"email": "ana@example.com"} if field in ("contact", "consent") else "x"
    answer = await client.post("/api/v1/ping", json=body, headers=seller)
    assert answer.status_code == 422
    assert [e["field"] for e in answer.json()["errors"]] == [field]
    assert "ana@example.com" not in answer.text
    assert await pings_stored(session) == 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"vertical": "space-tourism"}, "vertical"),
        ({"region": "ZZ"}, "region"),
        ({"postal_code": "10001"}, "postal_code"),  # a New York ZIP for California
        ({"postal_code": "abc"}, "postal_code"),
        ({"attributes": {"vehicle_make": "honda"}}, "attributes.vehicle_year"),  # required
        ({"country": "FR"}, "country"),
    ],
)
async def test_bad_fields_are_named(
    client: httpx.AsyncClient, session: AsyncSession, change: dict[str, object], field: str
) -> None:
    _, seller = await signed_in(client, "seller")
    answer = await client.post("/api/v1/ping", json=ping_body(**change), headers=seller)
    assert answer.status_code == 422, answer.text
    assert field in [e["field"] for e in answer.json()["errors"]]
    assert await pings_stored(session) == 0


async def test_attributes_a_buyer_may_not_see_before_buying_are_not_pinged(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    _, seller = await signed_in(client, "seller")
    body = ping_body()
    body["attributes"]["gender"] = "female"  # a protected characteristic, sent with the post
    answer = await client.post("/api/v1/ping", json=body, headers=seller)
    assert answer.status_code == 422
    assert [e["field"] for e in answer.json()["errors"]] == ["attributes.gender"]


async def test_the_same_ping_again_is_refused_naming_the_first(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await bidding_buyer(session, bid_cents=2000)
    _, seller = await signed_in(client, "seller")
    first = await client.post("/api/v1/ping", json=ping_body(), headers=seller)
    again = await client.post("/api/v1/ping", json=ping_body(exclusive=False), headers=seller)
    assert again.status_code == 409
    assert again.json()["type"].endswith("/duplicate-ping")
    assert again.json()["duplicate_of"] == first.json()["ping_id"]
    other = await client.post("/api/v1/ping", json=ping_body(postal_code="93651"), headers=seller)
    assert other.status_code == 200, other.text
    assert await pings_stored(session) == 2
    # Another seller pinging the same lead is not a duplicate of this one's.
    _, rival = await signed_in(client, "seller")
    assert (await client.post("/api/v1/ping", json=ping_body(), headers=rival)).status_code == 200


async def test_buyers_only_may_not_ping(client: httpx.AsyncClient) -> None:
    _, buyer = await signed_in(client, "buyer")
    answer = await client.post("/api/v1/ping", json=ping_body(), headers=buyer)
    assert answer.status_code == 403


async def test_an_external_endpoint_bids_for_its_campaign(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    with bidding_endpoint(2500) as endpoint:
        await pinged_buyer(session, settings, endpoint, bid_cents=4000)
        await bidding_buyer(session, bid_cents=1000)
        _, seller = await signed_in(client, "seller")
        answer = await client.post("/api/v1/ping", json=ping_body(), headers=seller)
    assert answer.json()["price_cents"] == 1001  # the endpoint's 2500 won, second price
    (pinged,) = endpoint.pings
    asked = pinged.body
    assert asked["ping_id"] == answer.json()["ping_id"]
    assert asked["postal_prefix"] == "936" and "postal_code" not in asked
    assert set(asked["attributes"]) == set(ping_body()["attributes"])


async def test_an_endpoint_bidding_above_its_campaigns_bid_is_capped(
    app: FastAPI, client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    app.state.settings.ping_price_rule = "first"
    with bidding_endpoint(9999) as endpoint:
        await pinged_buyer(session, settings, endpoint, bid_cents=1800)
        await bidding_buyer(session, bid_cents=1700)
        _, seller = await signed_in(client, "seller")
        answer = await client.post("/api/v1/ping", json=ping_body(), headers=seller)
    assert answer.json()["price_cents"] == 1800


async def test_a_slow_buyer_never_delays_the_answer_past_the_deadline(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    deadline = settings.ping_deadline_ms / 1000
    with (
        bidding_endpoint(9000, delay_seconds=3) as slow,
        bidding_endpoint(2500) as quick,
        bidding_endpoint(None) as declining,
    ):
        await pinged_buyer(session, settings, slow, bid_cents=9000)
        await pinged_buyer(session, settings, quick, bid_cents=3000)
        await pinged_buyer(session, settings, declining, bid_cents=3000)
        await bidding_buyer(session, bid_cents=1000)
        _, seller = await signed_in(client, "seller")
        started = time.monotonic()
        answer = await client.post("/api/v1/ping", json=ping_body(), headers=seller)
        took = time.monotonic() - started
    assert answer.status_code == 200
    assert answer.json()["price_cents"] == 1001  # the slow 9000 was not waited for
    assert len(slow.pings) == 1
    assert took < deadline + 1.0, took


async def test_digests_are_the_keyed_hashes_rows_already_hold(app: FastAPI) -> None:
    """The postal digest is compared with earlier pings' at the post, and the fingerprint with
    rows a process running older code wrote: both must stay ``keyed_hash`` of the same text."""
    kit: PingKit = app.state.pingpost
    root = kit.settings.signing_key()
    content = {
        "vertical": "auto-insurance",
        "region": "CA",
        "attributes": {"b": 1, "a": [True], "é\u2028": 'Zoë \\ "x"', "f": 1.5e-7, "n": None},
    }
    text = json.dumps(["usr_1", content], sort_keys=True, separators=(",", ":"))
    for _ in range(2):  # the keyed state is copied, never used up
        assert kit.postal_digest("US", "93650") == keyed_hash(
            derive_key(root, "ping:postal-code"), "US|93650"
        )
        assert kit.fingerprint("usr_1", content) == keyed_hash(
            derive_key(root, "ping:fingerprint"), text
        )
    assert kit.fingerprint("usr_2", content) != kit.fingerprint("usr_1", content)


def test_json_columns_are_written_as_json_dumps_writes_them() -> None:
    """PostgreSQL keeps a ``json`` column's text as written: the recorder's rows must hold the
    text ``json.dumps`` makes, as rows written by SQLAlchemy (and older code) do."""
    values: list[Any] = [
        {"b": 1, "a": [True, False, None], "é": 'Zoë \\ "x" \u2028', "f": 1.5e-7, "g": 2.0},
        [["cmp_01", 1200], ["cmp_02", 99]],
        {},
        [],
    ]
    rows = [{name: None for name in service._PING_COLUMNS} for _ in values]
    for row, value in zip(rows, values, strict=True):
        row["preview_attributes"] = row["ranked"] = value
    arrays = dict(zip(service._PING_COLUMNS, service._ping_arrays(rows), strict=True))
    assert arrays["preview_attributes"] == [json.dumps(v) for v in values]
    assert arrays["ranked"] == [json.dumps(v) for v in values]
