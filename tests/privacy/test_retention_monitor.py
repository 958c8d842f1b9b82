"""The retention monitor (L4) for admins and privacy officers, as a page (``/admin/retention``)
and as JSON (``GET /api/v1/admin/retention``): leads due in the next 48 hours, overdue ones
(loud when past the 60-second target), and the lateness distribution from the destruction log.
Buyers, sellers and support staff get 403."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.db import utcnow
from leadmarket.models import PiiDestruction, User
from tests.fixtures.accounts import register, signed_in
from tests.fixtures.ledger import make_member
from tests.fixtures.retention import insert_due_leads
from tests.ledger.test_wallet_page import sign_in

API = "/api/v1/admin/retention"
PAGE = "/admin/retention"


async def member_as(
    client: httpx.AsyncClient, session: AsyncSession, role: str
) -> tuple[dict[str, str], str]:
    """A signed-in member of ``role`` (staff roles are set in the database, as the
    ``create-admin`` command does): API headers and username."""
    registered_role = role if role in ("buyer", "seller") else "buyer"
    account, headers = await signed_in(client, registered_role)
    if role != registered_role:
        user = await session.get(User, account["id"])
        assert user is not None
        user.role = role
        await session.commit()
    return headers, str(account["username"])


async def fill(session: AsyncSession, settings: Settings) -> dict[str, object]:
    """Two leads due within 48 h, one in 3 days, one overdue by 5 s and one by 2 minutes, and
    100 destructions in the last day (lateness 0.5 s … 50 s) plus one 3 days ago (90 s)."""
    now = utcnow()
    seller = await make_member(session, "seller")
    soon = await insert_due_leads(
        session,
        settings,
        seller.id,
        [now + dt.timedelta(hours=1), now + dt.timedelta(hours=47)],
    )
    await insert_due_leads(session, settings, seller.id, [now + dt.timedelta(days=3)])
    overdue = await insert_due_leads(
        session,
        settings,
        seller.id,
        [now - dt.timedelta(minutes=2), now - dt.timedelta(seconds=5)],
    )
    for i in range(100):
        at = now - dt.timedelta(hours=1, seconds=i)
        late = (i + 1) * 500
        session.add(
            PiiDestruction(
                lead_id=f"lead_gone_{i}",
                deadline=at - dt.timedelta(milliseconds=late),
                destroyed_at=at,
                lateness_ms=late,
                cause="retention",
            )
        )
    session.add(
        PiiDestruction(
            lead_id="lead_gone_old",
            deadline=now - dt.timedelta(days=3, seconds=90),
            destroyed_at=now - dt.timedelta(days=3),
            lateness_ms=90_000,
            cause="retention",
        )
    )
    await session.flush()
    return {"soon": soon, "overdue": overdue}


@pytest.mark.parametrize("role", ["admin", "privacy_officer"])
async def test_staff_read_the_monitor_as_json(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, role: str
) -> None:
    made = await fill(session, settings)
    headers, _ = await member_as(client, session, role)
    response = await client.get(API, headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["retention_hours"] == 48 and body["sweep_seconds"] == 10
    assert body["lateness_target_ms"] == 60_000
    assert body["due"]["count"] == 2
    assert [d["lead_id"] for d in body["due"]["next"]] == made["soon"]
    assert body["overdue"]["count"] == 2 and body["overdue"]["late_count"] == 1
    assert [d["lead_id"] for d in body["overdue"]["oldest"]] == made["overdue"]

    day, week = body["lateness"]
    assert (day["window"], day["count"]) == ("24h", 100)
    # Nearest rank over 0.5 s, 1.0 s, … 50 s.
    assert (day["p50_ms"], day["p90_ms"], day["p99_ms"], day["max_ms"]) == (
        25_000,
        45_000,
        49_500,
        50_000,
    )
    histogram = {b["label"]: b["count"] for b in day["histogram"]}
    assert histogram == {
        "< 1 s": 1,
        "1–5 s": 8,
        "5–10 s": 10,
        "10–20 s": 20,
        "20–30 s": 20,
        "30–60 s": 41,
        "≥ 60 s": 0,
    }
    assert (week["window"], week["count"], week["max_ms"]) == ("7d", 101, 90_000)
    assert {b["label"]: b["count"] for b in week["histogram"]}["≥ 60 s"] == 1
    assert "@example.com" not in response.text  # ids and times only


async def test_an_empty_monitor(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    headers, _ = await member_as(client, session, "admin")
    body = (await client.get(API, headers=headers)).json()
    assert body["due"] == {"count": 0, "next": []}
    assert body["overdue"] == {"count": 0, "late_count": 0, "oldest": []}
    assert body["lateness"][0]["p99_ms"] is None and body["lateness"][0]["count"] == 0


@pytest.mark.parametrize("role", ["buyer", "seller", "support"])
async def test_others_may_not_read_the_monitor(
    client: httpx.AsyncClient, session: AsyncSession, role: str
) -> None:
    headers, username = await member_as(client, session, role)
    response = await client.get(API, headers=headers)
    assert response.status_code == 403
    assert response.headers["content-type"].startswith("application/problem+json")
    await sign_in(client, username)
    page = await client.get(PAGE)
    assert page.status_code == 403
    assert "Retention monitor" not in page.text


async def test_the_monitor_needs_a_signed_in_member(client: httpx.AsyncClient) -> None:
    assert (await client.get(API)).status_code == 401
    page = await client.get(PAGE)
    assert page.status_code == 303 and page.headers["location"].startswith("/signin")


@pytest.mark.parametrize("role", ["admin", "privacy_officer"])
async def test_the_monitor_page(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, role: str
) -> None:
    made = await fill(session, settings)
    _, username = await member_as(client, session, role)
    await sign_in(client, username)
    page = await client.get(PAGE)
    assert page.status_code == 200, page.text
    assert page.headers["cache-control"] == "no-store"
    html = page.text
    assert "<h1>Retention monitor</h1>" in html
    assert 'href="/admin/retention" aria-current="page"' in html  # in the main menu
    assert 'data-testid="due-count">2<' in html
    assert 'data-testid="overdue-count">2<' in html
    # Overdue beyond the target: an alert at the top, the overdue leads listed.
    assert 'role="alert"' in html and "2 leads past the deadline, 1 by more than 60 s" in html
    for lead_id in [*made["overdue"], *made["soon"]]:  # type: ignore[misc]
        assert lead_id in html
    assert "25.0 s" in html and "49.5 s" in html and "50.0 s" in html  # p50, p99, max
    assert "90.0 s" in html  # the week's max, flagged
    assert "@example.com" not in html


async def test_the_page_is_calm_when_nothing_is_late(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    seller = await make_member(session, "seller")
    await insert_due_leads(session, settings, seller.id, [utcnow() - dt.timedelta(seconds=3)])
    _, username = await member_as(client, session, "admin")
    await sign_in(client, username)
    html = (await client.get(PAGE)).text
    assert 'role="alert"' not in html
    assert "the next sweep takes them" in html


async def test_buyers_see_no_link_to_it(client: httpx.AsyncClient) -> None:
    account = await register(client, "buyer")
    await sign_in(client, account["username"])
    assert "/admin/retention" not in (await client.get("/orders")).text
