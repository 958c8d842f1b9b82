"""The buyer's campaign pages: create through the form with filters of the vertical, errors
beside their controls with nothing written, pause and resume, edit, delete; sellers are
refused; another buyer's campaign is not there."""

from __future__ import annotations

import html
import re
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.models import Campaign
from leadmarket.webhooks import service as webhooks
from tests.fixtures.accounts import register
from tests.leads.test_views import control_is_in_error, csrf_of, sign_in

NEW = "/buyer/campaigns/new"


async def web_member(client: httpx.AsyncClient, role: str = "buyer") -> dict[str, Any]:
    account = await register(client, role)
    await sign_in(client, account["username"])
    return account


def answers(csrf: str, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "csrf_token": csrf,
        "vertical": "auto-insurance",
        "name": "Hondas in Fresno",
        "bid": "25.00",
        "currency": "USD",
        "daily_cap": "10",
        "monthly_cap": "",
        "budget": "1,000",
        "timezone": "America/Los_Angeles",
        "webhook_url": "",
        "active": "yes",
        "schedule.days": ["mon", "tue"],
        "schedule.start_hour": "8",
        "schedule.end_hour": "18",
        "filters.regions": "CA, nv",
        "filters.postal_prefixes": "",
        "filters.age_min": "25",
        "filters.age_max": "64",
        "filters.min_quality": "",
        "filters.attributes.vehicle_make": ["honda", "toyota"],
        "filters.attributes.vehicle_year.min": "2015",
        "filters.attributes.vehicle_year.max": "",
    }
    data.update(overrides)
    return data


async def campaigns_of(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(Campaign)) or 0)


async def test_create_pause_resume_edit_delete(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await web_member(client)
    home = await client.get("/account")
    assert 'href="/buyer/campaigns"' in home.text  # in the buyer's navigation
    choose = await client.get(NEW)
    assert "Which leads do you want to buy?" in choose.text
    form = await client.get(NEW, params={"vertical": "auto-insurance"})
    assert form.status_code == 200
    # Filters come from the preview attributes only: never gender (L6).
    assert 'name="filters.attributes.vehicle_make"' in form.text
    assert "filters.attributes.gender" not in form.text
    created = await client.post(NEW, data=answers(csrf_of(form.text)))
    assert created.status_code == 303, created.text
    row = await session.scalar(select(Campaign))
    assert row is not None
    assert row.bid_cents == 2500 and row.budget_cents == 100_000 and row.daily_cap == 10
    assert row.filters["regions"] == ["CA", "NV"]
    assert row.filters["attributes"] == {
        "vehicle_make": ["honda", "toyota"],
        "vehicle_year": {"min": 2015},
    }
    assert row.schedule == {"days": ["mon", "tue"], "start_hour": 8, "end_hour": 18}

    listing = await client.get("/buyer/campaigns?done=created")
    assert "Hondas in Fresno" in listing.text and "Running" in listing.text
    csrf = csrf_of(listing.text)
    paused = await client.post(
        f"/buyer/campaigns/{row.id}/active", data={"csrf_token": csrf, "active": "no"}
    )
    assert paused.status_code == 303
    await session.refresh(row)
    assert row.active is False
    assert "Paused" in (await client.get("/buyer/campaigns")).text
    await client.post(
        f"/buyer/campaigns/{row.id}/active", data={"csrf_token": csrf, "active": "yes"}
    )
    await session.refresh(row)
    assert row.active is True

    edit = await client.get(f"/buyer/campaigns/{row.id}")
    assert 'value="Hondas in Fresno"' in edit.text
    assert re.search(r'value="toyota"\s+checked', edit.text)
    saved = await client.post(
        f"/buyer/campaigns/{row.id}",
        data=answers(csrf_of(edit.text), name="Toyotas", bid="30"),
    )
    assert saved.status_code == 303, saved.text
    await session.refresh(row)
    assert row.name == "Toyotas" and row.bid_cents == 3000

    deleted = await client.post(f"/buyer/campaigns/{row.id}/delete", data={"csrf_token": csrf})
    assert deleted.status_code == 303
    assert "Toyotas" not in (await client.get("/buyer/campaigns")).text


async def test_errors_are_shown_beside_their_controls_and_nothing_is_written(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await web_member(client)
    form = await client.get(NEW, params={"vertical": "auto-insurance"})
    refused = await client.post(
        NEW,
        data=answers(
            csrf_of(form.text),
            name="",
            bid="lots",
            **{
                "filters.regions": "CA, XX",
                "filters.age_min": "60",
                "filters.age_max": "30",
                "filters.attributes.vehicle_year.min": "2024",
                "filters.attributes.vehicle_year.max": "2015",
                "schedule.start_hour": "18",
                "schedule.end_hour": "8",
            },
        ),
    )
    assert refused.status_code == 422
    html = refused.text
    for control in (
        "name",
        "bid",
        "filters-regions",
        "filters-age_max",
        "schedule-end_hour",
    ):
        assert control_is_in_error(html, control), control
    assert 'id="filters-attributes-vehicle_year-error"' in html
    assert "min is greater than max" in html
    assert 'value="CA, XX"' in html  # what was typed is kept
    assert await campaigns_of(session) == 0


async def test_sellers_are_refused_and_other_buyers_see_nothing(
    client: httpx.AsyncClient, session: AsyncSession, app: Any
) -> None:
    await web_member(client)
    form = await client.get(NEW, params={"vertical": "auto-insurance"})
    await client.post(NEW, data=answers(csrf_of(form.text)))
    row = await session.scalar(select(Campaign))
    assert row is not None
    transport = httpx.ASGITransport(app=app, client=("203.0.113.11", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as other:
        await web_member(other)
        assert (await other.get(f"/buyer/campaigns/{row.id}")).status_code == 404
        assert row.name not in (await other.get("/buyer/campaigns")).text
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as seller:
        await web_member(seller, "seller")
        assert (await seller.get("/buyer/campaigns")).status_code == 403


@pytest.mark.parametrize(
    ("ping_url", "message"),
    [
        ("http://bids.example.com/ping", "Use https"),
        ("https://127.0.0.1/ping", "not on the public internet"),
        ("https://localhost:8443/ping", "not on the public internet"),
        ("https://bids.example.com:port/ping", "Not a valid web address"),
        ("https://[::1/ping", "Give a full https://"),
    ],
)
async def test_the_ping_url_is_checked_like_the_apis_and_refused_beside_its_field(
    client: httpx.AsyncClient, session: AsyncSession, ping_url: str, message: str
) -> None:
    await web_member(client)
    form = await client.get(NEW, params={"vertical": "auto-insurance"})
    assert 'name="ping_url"' in form.text
    refused = await client.post(
        NEW, data=answers(csrf_of(form.text), ping_url=ping_url, **{"filters.regions": "XX"})
    )
    assert refused.status_code == 422
    assert control_is_in_error(refused.text, "ping_url")
    assert control_is_in_error(refused.text, "filters-regions")  # every problem at once
    beside = refused.text.split('id="ping_url-error"', 1)[1][:400]
    assert message in html.unescape(re.sub(r"<[^>]+>", "", beside))
    assert html.escape(ping_url) in refused.text  # what was typed is kept
    assert await campaigns_of(session) == 0


async def test_the_ping_url_is_set_shown_changed_and_cleared_through_the_pages(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    account = await web_member(client)
    form = await client.get(NEW, params={"vertical": "auto-insurance"})
    url = "https://bids.example.com/ping"
    refused = await client.post(NEW, data=answers(csrf_of(form.text), ping_url=url))
    assert refused.status_code == 422  # no webhook secret to sign pings with yet
    assert control_is_in_error(refused.text, "ping_url")
    beside = refused.text.split('id="ping_url-error"', 1)[1][:400]
    assert "create your webhook endpoint first" in beside
    assert await campaigns_of(session) == 0
    await webhooks.save_endpoint(
        session, settings, account["id"], url="https://buyer.example.com/hooks", new_secret=True
    )
    created = await client.post(NEW, data=answers(csrf_of(form.text), ping_url=url))
    assert created.status_code == 303, created.text
    row = await session.scalar(select(Campaign))
    assert row is not None and row.ping_url == url

    edit = await client.get(f"/buyer/campaigns/{row.id}")
    assert f'value="{url}"' in edit.text
    refused = await client.post(
        f"/buyer/campaigns/{row.id}",
        data=answers(csrf_of(edit.text), ping_url="https://10.0.0.8/ping"),
    )
    assert refused.status_code == 422
    assert control_is_in_error(refused.text, "ping_url")
    await session.refresh(row)
    assert row.ping_url == url  # nothing written
    cleared = await client.post(
        f"/buyer/campaigns/{row.id}", data=answers(csrf_of(edit.text), ping_url="")
    )
    assert cleared.status_code == 303, cleared.text
    await session.refresh(row)
    assert row.ping_url is None
