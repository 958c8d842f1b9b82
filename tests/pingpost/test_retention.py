"""The ping sweep (``pingpost.retention``): old pings that were never posted, or whose lead is
gone, and expired duplicate fingerprints are deleted in batches; a posted ping whose lead still
exists, recent pings and live fingerprints stay."""

from __future__ import annotations

import datetime as dt
import secrets

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.db import Database, utcnow
from leadmarket.models import Lead, LeadVault, Ping, PingFingerprint, PingOutcome, User
from leadmarket.pingpost import retention
from leadmarket.tasks import build_registry
from tests.fixtures.ledger import make_member
from tests.fixtures.orders import make_lead

NOW = utcnow()
OLD = NOW - dt.timedelta(days=91)
RECENT = NOW - dt.timedelta(days=89)


async def ping(
    session: AsyncSession,
    seller: User,
    created_at: dt.datetime,
    *,
    posted: bool = False,
    lead_id: str | None = None,
) -> str:
    row = Ping(
        seller_id=seller.id,
        vertical="auto-insurance",
        country="US",
        region="CA",
        postal_prefix="936",
        postal_digest="0" * 64,
        accepted=True,
        price_cents=1500,
        fingerprint=secrets.token_hex(32),
        created_at=created_at,
        expires_at=created_at + dt.timedelta(minutes=1),
        posted_at=created_at + dt.timedelta(seconds=5) if posted else None,
        outcome=(PingOutcome.SOLD if lead_id else PingOutcome.UNSOLD).value if posted else None,
        lead_id=lead_id,
    )
    session.add(row)
    await session.flush()
    return row.id


async def remaining_pings(session: AsyncSession) -> set[str]:
    return set(await session.scalars(select(Ping.id)))


async def test_old_unposted_and_leadless_pings_go_sold_and_recent_ones_stay(
    session: AsyncSession, settings: Settings, db: Database
) -> None:
    seller = await make_member(session, "seller")
    kept_lead, _ = await make_lead(session, settings, seller)
    gone_lead, _ = await make_lead(session, settings, seller)
    never_posted = await ping(session, seller, OLD)
    posted_unsold = await ping(session, seller, OLD, posted=True)
    sold = await ping(session, seller, OLD, posted=True, lead_id=kept_lead.id)
    sold_lead_deleted = await ping(session, seller, OLD, posted=True, lead_id=gone_lead.id)
    recent = await ping(session, seller, RECENT)
    await session.execute(delete(LeadVault).where(LeadVault.lead_id == gone_lead.id))
    await session.execute(delete(Lead).where(Lead.id == gone_lead.id))
    await session.flush()

    result = await retention.sweep_pings(db, retention_days=90, now=NOW)

    assert result.pings == 3
    session.expire_all()
    assert await remaining_pings(session) == {sold, recent}
    assert not {never_posted, posted_unsold, sold_lead_deleted} & await remaining_pings(session)


async def test_many_old_pings_go_in_bounded_batches_oldest_first(
    session: AsyncSession, db: Database
) -> None:
    seller = await make_member(session, "seller")
    ids = [await ping(session, seller, OLD - dt.timedelta(hours=i)) for i in range(7)]
    # A budget of no time still deletes one batch: the oldest pings.
    first = await retention.sweep_pings(
        db, retention_days=90, now=NOW, batch_size=3, time_budget_seconds=0
    )
    assert first.pings == 3
    session.expire_all()
    assert await remaining_pings(session) == set(ids[:4])
    rest = await retention.sweep_pings(db, retention_days=90, now=NOW, batch_size=3)
    assert rest.pings == 4
    session.expire_all()
    assert not set(ids) & await remaining_pings(session)


async def test_expired_fingerprints_go_live_ones_stay(session: AsyncSession, db: Database) -> None:
    expired = [
        PingFingerprint(
            fingerprint=secrets.token_hex(32),
            ping_id="png_x",
            expires_at=NOW - dt.timedelta(seconds=i + 1),
        )
        for i in range(5)
    ]
    live = PingFingerprint(
        fingerprint=secrets.token_hex(32), ping_id="png_y", expires_at=NOW + dt.timedelta(minutes=5)
    )
    session.add_all([*expired, live])
    await session.flush()
    gone, staying = {f.fingerprint for f in expired}, live.fingerprint

    result = await retention.sweep_pings(db, retention_days=90, now=NOW, batch_size=2)

    assert result.fingerprints == 5
    session.expire_all()
    left = set(await session.scalars(select(PingFingerprint.fingerprint)))
    assert staying in left
    assert not gone & left


def test_the_sweep_runs_hourly_on_the_worker() -> None:
    [kind] = [k for k in build_registry().periodic_kinds if k.kind == retention.SWEEP_JOB]
    assert kind.every == dt.timedelta(hours=1)
