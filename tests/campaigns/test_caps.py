"""Caps and budgets hold under concurrency: hundreds of simultaneous claims, each in its own
transaction on its own connection (as separate requests or processes would be), and exactly the
allowed number succeed, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.campaigns import service
from leadmarket.campaigns.matching import claim_campaign
from leadmarket.kit.db import Database
from leadmarket.models import Campaign, CampaignCapCounter
from tests.fixtures.campaigns import buyer, campaign, preview

pytestmark = pytest.mark.committed

ATTEMPTS = 300
NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)


async def race(
    db: Database, attempt: Callable[[AsyncSession, Campaign], Awaitable[bool]], campaign_id: str
) -> int:
    """Run ``attempt`` ATTEMPTS times at once, each in a transaction of its own; the number that
    succeeded and committed."""

    async def one() -> bool:
        async with db.transaction() as session:
            row = await session.get(Campaign, campaign_id)
            assert row is not None
            return await attempt(session, row)

    results = await asyncio.gather(*(one() for _ in range(ATTEMPTS)))
    return sum(results)


async def counters(db: Database, campaign_id: str) -> dict[tuple[str, str], int]:
    async with db.transaction() as session:
        rows = await session.execute(
            select(
                CampaignCapCounter.period_kind,
                CampaignCapCounter.period_key,
                CampaignCapCounter.count,
            ).where(CampaignCapCounter.campaign_id == campaign_id)
        )
        return {(kind, key): count for kind, key, count in rows}


async def test_exactly_the_daily_cap_is_claimed(committed_db: Database) -> None:
    async with committed_db.transaction() as session:
        c = await campaign(
            session, await buyer(session), daily_cap=37, monthly_cap=1000, timezone="UTC"
        )

    async def claim(session: AsyncSession, row: Campaign) -> bool:
        return await service.claim_cap(session, row, NOW)

    assert await race(committed_db, claim, c.id) == 37
    assert await counters(committed_db, c.id) == {
        ("day", "2026-11-22"): 37,
        ("month", "2026-11"): 37,
    }


async def test_the_monthly_cap_holds_and_gives_back_the_day(committed_db: Database) -> None:
    async with committed_db.transaction() as session:
        c = await campaign(session, await buyer(session), daily_cap=500, monthly_cap=23)

    async def claim(session: AsyncSession, row: Campaign) -> bool:
        return await service.claim_cap(session, row, NOW)

    assert await race(committed_db, claim, c.id) == 23
    # The refused claims counted nothing against the day either.
    day, month = service.period_keys(c.timezone, NOW)
    assert await counters(committed_db, c.id) == {("day", day): 23, ("month", month): 23}


async def test_caps_are_counted_in_the_buyers_time_zone(committed_db: Database) -> None:
    async with committed_db.transaction() as session:
        c = await campaign(session, await buyer(session), daily_cap=1, timezone="Asia/Tokyo")
    # 14:59 and 15:00 UTC fall on two different days in Tokyo (23:59 and 00:00).
    before_midnight = dt.datetime(2026, 11, 22, 14, 59, tzinfo=dt.UTC)
    after_midnight = before_midnight + dt.timedelta(minutes=1)
    async with committed_db.transaction() as session:
        row = await session.get(Campaign, c.id)
        assert row is not None
        assert await service.claim_cap(session, row, before_midnight)
        assert not await service.claim_cap(session, row, before_midnight)
        assert await service.claim_cap(session, row, after_midnight)
    keys = await counters(committed_db, c.id)
    assert keys[("day", "2026-11-22")] == 1 and keys[("day", "2026-11-23")] == 1
    assert after_midnight.astimezone(ZoneInfo("Asia/Tokyo")).day == 23


async def test_the_budget_is_never_overspent(committed_db: Database) -> None:
    async with committed_db.transaction() as session:
        c = await campaign(session, await buyer(session), budget_cents=5_000)

    async def spend(session: AsyncSession, row: Campaign) -> bool:
        return await service.claim_budget(session, row, 130)

    assert await race(committed_db, spend, c.id) == 5_000 // 130
    async with committed_db.transaction() as session:
        row = await session.get(Campaign, c.id)
        assert row is not None and row.spent_cents == (5_000 // 130) * 130


async def test_sales_through_claim_campaign_stop_at_the_cap(committed_db: Database) -> None:
    async with committed_db.transaction() as session:
        c = await campaign(session, await buyer(session), daily_cap=25, budget_cents=1_000_000)
    lead = preview()

    async def sell(session: AsyncSession, row: Campaign) -> bool:
        return await claim_campaign(session, row.id, lead, price_cents=400, now=NOW) is not None

    assert await race(committed_db, sell, c.id) == 25
    async with committed_db.transaction() as session:
        row = await session.get(Campaign, c.id)
        assert row is not None and row.spent_cents == 25 * 400
