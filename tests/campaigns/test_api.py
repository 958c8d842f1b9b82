"""The campaign API (docs/api.md "Buying"): buyers create, read, change, pause/resume and delete
their own campaigns; bad input is a 422 naming the field; another buyer's campaign does not
exist for them."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.models import Campaign, MatchingVersion
from tests.fixtures.accounts import signed_in

URL = "/api/v1/campaigns"
WEBHOOK = "/api/v1/me/webhook"


def campaign_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "West coast Hondas",
        "vertical": "auto-insurance",
        "filters": {
            "regions": ["CA", "or", "WA"],
            "postal_prefixes": ["936", "937"],
            "age_min": 25,
            "age_max": 64,
            "min_quality": 60,
            "attributes": {
                "vehicle_make": ["toyota", "honda"],
                "vehicle_year": {"min": 2015, "max": 2024},
            },
        },
        "bid_cents": 2500,
        "daily_cap": 20,
        "monthly_cap": 400,
        "timezone": "America/Los_Angeles",
        "schedule": {"days": ["fri", "mon"], "start_hour": 8, "end_hour": 18},
        "budget_cents": 500_000,
        "exclusive_only": True,
        "webhook_url": "https://buyer.example.com/leads",
        "active": True,
    }
    body.update(overrides)
    return body


def fields_of(response: httpx.Response) -> set[str]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    return {error["field"] for error in response.json()["errors"]}


async def test_create_read_list_patch_pause_resume_delete(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    _, auth = await signed_in(client, "buyer")
    created = await client.post(URL, json=campaign_body(), headers=auth)
    assert created.status_code == 201, created.text
    campaign = created.json()
    assert campaign["id"].startswith("cmp_")
    # Normalised: regions upper-cased, enum codes in the vertical's order, days in week order.
    assert campaign["filters"]["regions"] == ["CA", "OR", "WA"]
    assert campaign["filters"]["attributes"]["vehicle_make"] == ["honda", "toyota"]
    assert campaign["schedule"] == {"days": ["mon", "fri"], "start_hour": 8, "end_hour": 18}
    assert campaign["currency"] == "USD"
    assert campaign["delivered_today"] == 0 and campaign["spent_cents"] == 0

    one = await client.get(f"{URL}/{campaign['id']}", headers=auth)
    assert one.status_code == 200 and one.json()["name"] == "West coast Hondas"
    listed = await client.get(URL, headers=auth)
    assert [c["id"] for c in listed.json()["items"]] == [campaign["id"]]
    assert listed.json()["next_cursor"] is None

    paused = await client.patch(f"{URL}/{campaign['id']}", json={"active": False}, headers=auth)
    assert paused.status_code == 200 and paused.json()["active"] is False
    # The rest is untouched by a partial change.
    assert paused.json()["filters"] == campaign["filters"]
    resumed = await client.patch(
        f"{URL}/{campaign['id']}",
        json={"active": True, "daily_cap": None, "bid_cents": 3100},
        headers=auth,
    )
    assert resumed.json()["active"] is True
    assert resumed.json()["daily_cap"] is None and resumed.json()["bid_cents"] == 3100

    deleted = await client.delete(f"{URL}/{campaign['id']}", headers=auth)
    assert deleted.status_code == 204
    assert (await client.get(f"{URL}/{campaign['id']}", headers=auth)).status_code == 404
    assert (await client.get(URL, headers=auth)).json()["items"] == []
    row = await session.get(Campaign, campaign["id"])
    assert row is not None and row.deleted_at is not None and row.active is False


async def test_every_change_bumps_the_matching_version(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    async def version() -> int:
        value = await session.scalar(select(MatchingVersion.version))
        return int(value or 0)

    _, auth = await signed_in(client, "buyer")
    before = await version()
    created = (await client.post(URL, json=campaign_body(), headers=auth)).json()
    await client.patch(f"{URL}/{created['id']}", json={"active": False}, headers=auth)
    await client.delete(f"{URL}/{created['id']}", headers=auth)
    assert await version() == before + 3


async def test_pagination(client: httpx.AsyncClient) -> None:
    _, auth = await signed_in(client, "buyer")
    ids = [
        (await client.post(URL, json=campaign_body(name=f"c{i}"), headers=auth)).json()["id"]
        for i in range(3)
    ]
    first = (await client.get(URL, params={"limit": 2}, headers=auth)).json()
    second = (
        await client.get(URL, params={"limit": 2, "cursor": first["next_cursor"]}, headers=auth)
    ).json()
    assert [c["id"] for c in first["items"] + second["items"]] == ids[::-1]
    assert second["next_cursor"] is None


async def test_another_buyers_campaign_does_not_exist(client: httpx.AsyncClient) -> None:
    _, owner = await signed_in(client, "buyer")
    _, other = await signed_in(client, "buyer")
    campaign = (await client.post(URL, json=campaign_body(), headers=owner)).json()
    path = f"{URL}/{campaign['id']}"
    assert (await client.get(path, headers=other)).status_code == 404
    assert (await client.patch(path, json={"active": False}, headers=other)).status_code == 404
    assert (await client.delete(path, headers=other)).status_code == 404
    assert (await client.get(URL, headers=other)).json()["items"] == []
    still = (await client.get(path, headers=owner)).json()
    assert still["active"] is True


async def test_sellers_and_strangers_are_refused(client: httpx.AsyncClient) -> None:
    _, seller = await signed_in(client, "seller")
    assert (await client.get(URL, headers=seller)).status_code == 403
    assert (await client.post(URL, json=campaign_body(), headers=seller)).status_code == 403
    assert (await client.get(URL)).status_code == 401


async def test_remembered_session_needs_the_password_to_change_a_campaign(
    client: httpx.AsyncClient,
) -> None:
    _, auth = await signed_in(client, "buyer", remember=True)
    assert (await client.get(URL, headers=auth)).status_code == 200
    refused = await client.post(URL, json=campaign_body(), headers=auth)
    assert refused.status_code == 403
    assert refused.json()["type"].endswith("/reauth-required")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"vertical": "pet-insurance"}, "vertical"),
        ({"bid_cents": 0}, "bid_cents"),
        ({"daily_cap": -1}, "daily_cap"),
        ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"timezone": "../../etc/passwd"}, "timezone"),
        ({"webhook_url": "ftp://buyer.example.com/x"}, "webhook_url"),
        ({"webhook_url": "https://user:pw@buyer.example.com/"}, "webhook_url"),
        ({"webhook_url": "https://buyer.example.com:port/"}, "webhook_url"),
        ({"webhook_url": "http://buyer.example.com/leads"}, "webhook_url"),
        ({"webhook_url": "https://10.1.2.3/leads"}, "webhook_url"),
        ({"ping_url": "https://127.0.0.1/ping"}, "ping_url"),
        ({"ping_url": "http://bids.example.com/ping"}, "ping_url"),
        ({"ping_url": "https://api.localhost/ping"}, "ping_url"),
        ({"schedule": {"days": ["mon"], "start_hour": 18, "end_hour": 8}}, "schedule.end_hour"),
        ({"schedule": {"days": ["someday"]}}, "schedule.days.0"),
        ({"filters": {"age_min": 50, "age_max": 30}}, "filters.age_max"),
        # No whole age band in the range: the campaign could never buy a lead.
        ({"filters": {"age_min": 30, "age_max": 33}}, "filters.age_max"),
        ({"filters": {"age_min": 66}}, "filters.age_max"),
        ({"filters": {"age_max": 16}}, "filters.age_max"),
        ({"filters": {"regions": ["CA", "XX"]}}, "filters.regions.1"),
        ({"filters": {"postal_prefixes": ["9360"]}}, "filters.postal_prefixes.0"),
        ({"filters": {"min_quality": 101}}, "filters.min_quality"),
        ({"filters": {"colour": "red"}}, "filters.colour"),
        ({"name": "   "}, "name"),
        ({"name": "a\x00b"}, "name"),
    ],
)
async def test_bad_fields_are_named(
    client: httpx.AsyncClient, overrides: dict[str, Any], field: str
) -> None:
    _, auth = await signed_in(client, "buyer")
    response = await client.post(URL, json=campaign_body(**overrides), headers=auth)
    assert field in fields_of(response)


@pytest.mark.parametrize(
    ("attributes", "message_part"),
    [
        ({"vehicle_colour": ["red"]}, "no such attribute"),
        ({"vehicle_make": ["honda", "yugo"]}, "Must be codes of"),
        ({"vehicle_make": []}, "non-empty"),
        ({"vehicle_year": {"min": 2024, "max": 2015}}, "min is greater than max"),
        ({"vehicle_year": {"min": 1800}}, "between 1981 and 2028"),
        ({"vehicle_year": {"min": 2015.5}}, "whole number"),
        ({"vehicle_year": {"lowest": 2015}}, "range"),
        ({"vehicle_year": True}, "range"),
        # Not in a buyer's preview (a protected characteristic): no filter (L6).
        ({"gender": ["female"]}, "preview"),
        ({"vehicle_model": ["camry"]}, "preview"),
    ],
)
async def test_attribute_filters_are_checked_against_the_vertical(
    client: httpx.AsyncClient, attributes: dict[str, Any], message_part: str
) -> None:
    _, auth = await signed_in(client, "buyer")
    body = campaign_body(filters={"attributes": attributes})
    response = await client.post(URL, json=body, headers=auth)
    name = next(iter(attributes))
    assert fields_of(response) == {f"filters.attributes.{name}"}
    assert message_part in response.json()["errors"][0]["message"]


async def test_boolean_attribute_filters(client: httpx.AsyncClient) -> None:
    _, auth = await signed_in(client, "buyer")
    body = campaign_body(
        vertical="home-services",
        filters={"attributes": {"homeowner": True, "service_type": ["solar", "roofing"]}},
    )
    created = await client.post(URL, json=body, headers=auth)
    assert created.status_code == 201, created.text
    assert created.json()["filters"]["attributes"] == {
        "homeowner": True,
        "service_type": ["roofing", "solar"],
    }
    wrong = campaign_body(vertical="home-services", filters={"attributes": {"homeowner": "yes"}})
    assert fields_of(await client.post(URL, json=wrong, headers=auth)) == {
        "filters.attributes.homeowner"
    }


async def test_patch_checks_the_resulting_campaign(client: httpx.AsyncClient) -> None:
    _, auth = await signed_in(client, "buyer")
    campaign = (await client.post(URL, json=campaign_body(), headers=auth)).json()
    path = f"{URL}/{campaign['id']}"
    # Moving to another vertical leaves the auto filters without meaning: named, not stored.
    moved = await client.patch(path, json={"vertical": "mortgage"}, headers=auth)
    assert fields_of(moved) == {
        "filters.attributes.vehicle_make",
        "filters.attributes.vehicle_year",
    }
    assert "name" in fields_of(await client.patch(path, json={"name": None}, headers=auth))
    assert "bid_cents" in fields_of(
        await client.patch(path, json={"bid_cents": "lots"}, headers=auth)
    )
    assert "unknown" in fields_of(await client.patch(path, json={"unknown": 1}, headers=auth))
    unchanged = (await client.get(path, headers=auth)).json()
    assert unchanged["vertical"] == "auto-insurance" and unchanged["bid_cents"] == 2500


async def test_a_patch_to_a_private_ping_url_is_refused_and_changes_nothing(
    client: httpx.AsyncClient,
) -> None:
    _, auth = await signed_in(client, "buyer")
    await client.put(WEBHOOK, json={"url": "https://buyer.example.com/hooks"}, headers=auth)
    url = "https://bids.example.com/ping"
    created = await client.post(URL, json=campaign_body(ping_url=url), headers=auth)
    assert created.status_code == 201, created.text
    path = f"{URL}/{created.json()['id']}"
    refused = await client.patch(
        path, json={"ping_url": "https://169.254.169.254/latest", "bid_cents": 999}, headers=auth
    )
    assert refused.status_code == 422
    assert fields_of(refused) == {"ping_url"}
    after = (await client.get(path, headers=auth)).json()
    assert after["ping_url"] == url and after["bid_cents"] == created.json()["bid_cents"]


async def test_a_ping_url_needs_the_buyers_webhook_secret_first(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    """Pings are signed with the buyer's webhook secret and never sent unsigned: a ping_url
    without one would silently never be asked, so it is refused where it is set (a 422 naming
    ``ping_url`` that says what to do), and nothing is written."""
    _, auth = await signed_in(client, "buyer")
    url = "https://bids.example.com/ping"
    refused = await client.post(URL, json=campaign_body(ping_url=url), headers=auth)
    assert fields_of(refused) == {"ping_url"}
    assert "webhook" in refused.json()["errors"][0]["message"]
    assert await session.scalar(select(Campaign.id)) is None

    plain = await client.post(URL, json=campaign_body(), headers=auth)
    assert plain.status_code == 201, plain.text
    path = f"{URL}/{plain.json()['id']}"
    assert fields_of(await client.patch(path, json={"ping_url": url}, headers=auth)) == {"ping_url"}
    assert (await client.get(path, headers=auth)).json()["ping_url"] is None

    hook = await client.put(WEBHOOK, json={"url": "https://buyer.example.com/hooks"}, headers=auth)
    assert hook.status_code == 200, hook.text
    patched = await client.patch(path, json={"ping_url": url}, headers=auth)
    assert patched.status_code == 200, patched.text
    assert patched.json()["ping_url"] == url

    # The secret removed afterwards: the campaign can still be paused, resumed and edited (its
    # address unchanged); only a new address needs a secret again.
    assert (await client.delete(WEBHOOK, headers=auth)).status_code == 204
    paused = await client.patch(path, json={"active": False, "ping_url": url}, headers=auth)
    assert paused.status_code == 200, paused.text
    moved = await client.patch(path, json={"ping_url": "https://bids.example.com/v2"}, headers=auth)
    assert fields_of(moved) == {"ping_url"}
    cleared = await client.patch(path, json={"ping_url": None}, headers=auth)
    assert cleared.status_code == 200 and cleared.json()["ping_url"] is None
