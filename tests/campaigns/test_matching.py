"""The matching engine: the index gives exactly what a brute-force reading of the filters gives,
on random campaigns and leads; it is fresh in another process as soon as a campaign change
commits; and a stale index can never make a paused or exhausted campaign buy."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.campaigns import service
from leadmarket.campaigns.matching import (
    LeadPreview,
    MatchingIndex,
    build_index,
    claim_campaign,
    eligible_campaigns,
)
from leadmarket.kit.db import Database, make_engine
from leadmarket.models import Campaign
from tests.fixtures.campaigns import buyer, campaign, preview

DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
# Written out again here, on purpose, rather than imported: the reference must not share the
# code it checks.
BANDS = {
    "14-17": (14, 17),
    "18-24": (18, 24),
    "25-34": (25, 34),
    "35-44": (35, 44),
    "45-54": (45, 54),
    "55-64": (55, 64),
    "65+": (65, 120),
}
ZONES = ["America/New_York", "America/Los_Angeles", "UTC", "Asia/Kolkata"]


def reference_match(c: Any, p: LeadPreview, now: dt.datetime) -> bool:
    f = c.filters
    if c.vertical != p.vertical or (c.exclusive_only and not p.exclusive):
        return False
    if f.get("regions") and p.region not in f["regions"]:
        return False
    if f.get("postal_prefixes") and p.postal_prefix not in f["postal_prefixes"]:
        return False
    if f.get("min_quality") is not None and p.quality_score < f["min_quality"]:
        return False
    if f.get("age_min") is not None or f.get("age_max") is not None:
        if p.age_band not in BANDS:
            return False
        low, high = BANDS[p.age_band]
        if f.get("age_min") is not None and low < f["age_min"]:
            return False
        if f.get("age_max") is not None and high > f["age_max"]:
            return False
    for name, rule in f.get("attributes", {}).items():
        value = p.attributes.get(name)
        if isinstance(rule, bool):
            if value is not rule:
                return False
        elif isinstance(rule, list):
            if value not in rule:
                return False
        else:
            if not isinstance(value, int) or isinstance(value, bool):
                return False
            if "min" in rule and value < rule["min"]:
                return False
            if "max" in rule and value > rule["max"]:
                return False
    if c.schedule:
        local = now.astimezone(ZoneInfo(c.timezone))
        if DAYS[local.weekday()] not in c.schedule["days"]:
            return False
        if not c.schedule["start_hour"] <= local.hour < c.schedule["end_hour"]:
            return False
    return True


def subset(values: list[str]) -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from(values), unique=True, max_size=len(values))


@st.composite
def attribute_filters(draw: st.DrawFn, vertical: str) -> dict[str, Any]:
    rules: dict[str, Any] = {}
    if vertical == "auto-insurance":
        if draw(st.booleans()):
            rules["vehicle_make"] = draw(
                st.lists(st.sampled_from(["honda", "toyota", "ford"]), unique=True, min_size=1)
            )
        if draw(st.booleans()):
            low = draw(st.integers(2000, 2024))
            rule: dict[str, int] = {}
            if draw(st.booleans()):
                rule["min"] = low
            if draw(st.booleans()) or not rule:
                rule["max"] = draw(st.integers(low, 2026))
            rules["vehicle_year"] = rule
    else:
        if draw(st.booleans()):
            rules["homeowner"] = draw(st.booleans())
        if draw(st.booleans()):
            rules["service_type"] = draw(
                st.lists(st.sampled_from(["solar", "roofing"]), unique=True, min_size=1)
            )
    return rules


@st.composite
def campaign_rows(draw: st.DrawFn, number: int) -> SimpleNamespace:
    vertical = draw(st.sampled_from(["auto-insurance", "home-services"]))
    filters: dict[str, Any] = {
        "regions": draw(subset(["CA", "NV", "OR", "ON"])),
        "postal_prefixes": draw(subset(["936", "937", "890", "K1A"])),
        "attributes": draw(attribute_filters(vertical)),
    }
    age_min = draw(st.none() | st.sampled_from([18, 25, 30, 45, 65]))
    age_max = draw(st.none() | st.sampled_from([24, 44, 64, 120]))
    if age_min is not None:
        filters["age_min"] = age_min
    if age_max is not None and (age_min is None or age_max >= age_min):
        filters["age_max"] = age_max
    quality = draw(st.none() | st.integers(0, 100))
    if quality is not None:
        filters["min_quality"] = quality
    schedule = None
    if draw(st.booleans()):
        start = draw(st.integers(0, 23))
        schedule = {
            "days": draw(st.lists(st.sampled_from(DAYS), unique=True, min_size=1)),
            "start_hour": start,
            "end_hour": draw(st.integers(start + 1, 24)),
        }
    return SimpleNamespace(
        id=f"cmp_{number:04d}",
        buyer_id="usr_1",
        vertical=vertical,
        filters=filters,
        bid_cents=draw(st.integers(1, 5)),  # few values: ties must be ordered too
        currency=draw(st.sampled_from(["USD", "USD", "CAD"])),
        timezone=draw(st.sampled_from(ZONES)),
        schedule=schedule,
        exclusive_only=draw(st.booleans()),
    )


@st.composite
def previews(draw: st.DrawFn) -> LeadPreview:
    vertical = draw(st.sampled_from(["auto-insurance", "home-services"]))
    attributes: dict[str, Any] = {}
    if vertical == "auto-insurance":
        if draw(st.booleans()):
            attributes["vehicle_make"] = draw(st.sampled_from(["honda", "toyota", "kia"]))
        if draw(st.booleans()):
            attributes["vehicle_year"] = draw(st.integers(1995, 2026))
    else:
        if draw(st.booleans()):
            attributes["homeowner"] = draw(st.booleans())
        if draw(st.booleans()):
            attributes["service_type"] = draw(st.sampled_from(["solar", "roofing", "hvac"]))
    return LeadPreview(
        vertical=vertical,
        region=draw(st.sampled_from(["CA", "NV", "OR", "ON", "TX"])),
        postal_prefix=draw(st.sampled_from(["936", "937", "890", "K1A", "100"])),
        age_band=draw(st.sampled_from([*BANDS, "unknown"])),
        quality_score=draw(st.integers(0, 100)),
        exclusive=draw(st.booleans()),
        attributes=attributes,
    )


moments = st.datetimes(min_value=dt.datetime(2025, 1, 1), max_value=dt.datetime(2027, 12, 31)).map(
    lambda moment: moment.replace(tzinfo=dt.UTC)
)


def numbered(rows: list[SimpleNamespace]) -> list[SimpleNamespace]:
    for number, row in enumerate(rows):
        row.id = f"cmp_{number:04d}"
    return rows


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(campaign_rows(0), max_size=30).map(numbered),
    leads=st.lists(previews(), min_size=1, max_size=8),
    now=moments,
)
def test_index_matches_a_brute_force_reading_of_the_filters(
    rows: list[SimpleNamespace], leads: list[LeadPreview], now: dt.datetime
) -> None:
    index = build_index(rows)
    for lead in leads:
        expected = sorted(
            (c for c in rows if reference_match(c, lead, now)), key=lambda c: (-c.bid_cents, c.id)
        )
        assert [c.id for c in index.match(lead, now)] == [c.id for c in expected]
        for currency in ("USD", "CAD"):  # what a ping reads: lazily, in its own currency
            assert [c.id for c in index.matching(lead, now, currency)] == [
                c.id for c in expected if c.currency == currency
            ]


def test_schedule_is_read_in_the_campaigns_time_zone() -> None:
    row = SimpleNamespace(
        id="cmp_1",
        buyer_id="usr_1",
        vertical="auto-insurance",
        filters={},
        bid_cents=100,
        currency="USD",
        timezone="America/Los_Angeles",
        schedule={"days": ["mon"], "start_hour": 8, "end_hour": 18},
        exclusive_only=False,
    )
    index = build_index([row])
    lead = preview()
    zone = ZoneInfo("America/Los_Angeles")
    # Monday 17:59 in Los Angeles is already Tuesday 01:59 in UTC.
    assert index.match(lead, dt.datetime(2026, 11, 23, 17, 59, tzinfo=zone)) != []
    assert index.match(lead, dt.datetime(2026, 11, 23, 18, 0, tzinfo=zone)) == []
    assert index.match(lead, dt.datetime(2026, 11, 23, 7, 59, tzinfo=zone)) == []
    assert index.match(lead, dt.datetime(2026, 11, 24, 9, 0, tzinfo=zone)) == []


async def test_claim_rechecks_the_row_and_never_pays_above_the_bid(
    session: AsyncSession,
) -> None:
    owner = await buyer(session)
    c = await campaign(
        session, owner, bid_cents=2000, budget_cents=5000, daily_cap=10, filters={"regions": ["CA"]}
    )
    lead = preview()
    assert await claim_campaign(session, c.id, lead, price_cents=2001) is None
    assert await claim_campaign(session, c.id, preview(region="NV"), price_cents=100) is None
    assert await claim_campaign(session, c.id, lead, price_cents=2000) is not None
    assert await claim_campaign(session, c.id, lead, price_cents=2000) is not None
    # 4000 of 5000 spent: a third lead at 2000 would overspend.
    assert await claim_campaign(session, c.id, lead, price_cents=2000) is None
    assert await claim_campaign(session, c.id, lead, price_cents=1000) is not None
    await session.refresh(c)
    assert c.spent_cents == 5000
    counts = await service.delivered_counts(session, [c])
    assert counts[c.id] == (3, 3)


async def test_a_refused_cap_claim_spends_nothing(session: AsyncSession) -> None:
    owner = await buyer(session)
    c = await campaign(session, owner, daily_cap=1, budget_cents=10_000)
    lead = preview()
    assert await claim_campaign(session, c.id, lead, price_cents=700) is not None
    assert await claim_campaign(session, c.id, lead, price_cents=700) is None
    await session.refresh(c)
    assert c.spent_cents == 700
    assert (await service.delivered_counts(session, [c]))[c.id] == (1, 1)


@pytest.fixture
async def other_process(database_url: str) -> AsyncIterator[Database]:
    """A second Database with an engine of its own: what another process would have."""
    database = Database(make_engine(database_url))
    try:
        yield database
    finally:
        await database.dispose()


async def _eligible(db: Database, index: MatchingIndex, lead: LeadPreview) -> list[str]:
    async with db.transaction() as session:
        return [c.id for c in await eligible_campaigns(session, lead, index=index)]


@pytest.mark.committed
async def test_another_process_sees_every_change_at_its_next_match(
    committed_db: Database, other_process: Database
) -> None:
    async with committed_db.transaction() as session:
        owner = await buyer(session)
        c = await campaign(session, owner, filters={"regions": ["CA"]})
    index = MatchingIndex()
    lead_ca, lead_nv = preview(region="CA"), preview(region="NV")
    assert await _eligible(other_process, index, lead_ca) == [c.id]
    rebuilds = index.rebuilds
    assert await _eligible(other_process, index, lead_ca) == [c.id]
    assert index.rebuilds == rebuilds  # nothing changed: the stamp check was enough

    async with committed_db.transaction() as session:
        await service.set_active(session, owner, c.id, active=False)
    assert await _eligible(other_process, index, lead_ca) == []

    async with committed_db.transaction() as session:
        await service.update_campaign(
            session, owner, c.id, {"active": True, "filters": {"regions": ["NV"]}}
        )
    assert await _eligible(other_process, index, lead_ca) == []
    assert await _eligible(other_process, index, lead_nv) == [c.id]

    async with committed_db.transaction() as session:
        await service.delete_campaign(session, owner, c.id)
    assert await _eligible(other_process, index, lead_nv) == []


@pytest.mark.committed
async def test_a_stale_index_never_sells_on_a_paused_campaign(
    committed_db: Database, other_process: Database
) -> None:
    async with committed_db.transaction() as session:
        owner = await buyer(session)
        c = await campaign(session, owner)
    # Checks the stamp at most once a minute: it will not notice the pause below.
    stale = MatchingIndex(recheck_ms=60_000)
    lead = preview()
    assert await _eligible(other_process, stale, lead) == [c.id]
    async with committed_db.transaction() as session:
        await service.set_active(session, owner, c.id, active=False)
    async with other_process.transaction() as session:
        offered = await eligible_campaigns(session, lead, index=stale)
        assert [o.id for o in offered] == [c.id]  # stale, as configured
        assert await claim_campaign(session, offered[0].id, lead, price_cents=100) is None
    async with committed_db.transaction() as session:
        row = await session.get(Campaign, c.id)
        assert row is not None and row.spent_cents == 0


@pytest.mark.committed
async def test_an_index_built_inside_a_rolled_back_change_is_not_trusted_later(
    committed_db: Database,
) -> None:
    async with committed_db.transaction() as session:
        owner = await buyer(session)
    index = MatchingIndex()
    lead = preview()

    async def failing_request() -> None:
        async with committed_db.transaction() as session:
            ghost = await campaign(session, owner)
            seen = await eligible_campaigns(session, lead, index=index)
            assert [c.id for c in seen] == [ghost.id]
            raise RuntimeError("the request failed")

    with pytest.raises(RuntimeError):
        await failing_request()
    assert await _eligible(committed_db, index, lead) == []
    async with committed_db.transaction() as session:
        real = await campaign(session, owner)
    assert await _eligible(committed_db, index, lead) == [real.id]
