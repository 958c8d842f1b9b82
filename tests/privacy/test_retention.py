"""The 48-hour rule's sweep (L4): a lead's personal data is destroyed at its deadline, never
before; destroyed means the vault (wrapped data key and ciphertext) and the blind indexes are
gone while the preview and the business records stay; each destruction is logged once, however
many sweeps race; a sweep that dies mid-way is finished by the next; a dry run changes nothing;
and the periodic job runs at the configured interval."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import sqlite3
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.db import Database, utcnow
from leadmarket.kit.jobs import Worker
from leadmarket.leads.vault import (
    PersonalDataDestroyed,
    Purpose,
    Reader,
    reveal_personal_data,
)
from leadmarket.models import (
    AuditEvent,
    Disclosure,
    Lead,
    LeadBlindIndex,
    LeadVault,
    LedgerEntry,
    Order,
    PiiDestruction,
    User,
)
from leadmarket.privacy import retention
from leadmarket.privacy.retention import purge_expired_lead_data
from leadmarket.tasks import build_registry, build_services
from tests.fixtures.accounts import signed_in
from tests.fixtures.leads import lead_body
from tests.fixtures.ledger import fund, make_member
from tests.fixtures.retention import insert_due_leads


async def count(session: AsyncSession, model: type[object], *where: object) -> int:
    query = select(func.count()).select_from(model)
    if where:
        query = query.where(*where)  # type: ignore[arg-type]
    return int(await session.scalar(query) or 0)


async def held(session: AsyncSession, lead_id: str) -> tuple[int, int]:
    """(vault rows, blind index rows) of the lead."""
    return (
        await count(session, LeadVault, LeadVault.lead_id == lead_id),
        await count(session, LeadBlindIndex, LeadBlindIndex.lead_id == lead_id),
    )


async def test_destroyed_at_its_deadline_never_before(
    db: Database, session: AsyncSession, settings: Settings
) -> None:
    seller = await make_member(session, "seller")
    deadline = utcnow().replace(microsecond=0) + dt.timedelta(hours=1)
    first, second, undated = await insert_due_leads(
        session, settings, seller.id, [deadline, deadline + dt.timedelta(seconds=1), None]
    )
    await session.commit()

    early = await purge_expired_lead_data(db, settings, now=deadline - dt.timedelta(microseconds=1))
    assert early.count == 0
    assert await held(session, first) == (1, 3)

    at = await purge_expired_lead_data(db, settings, now=deadline)
    assert [d.lead_id for d in at.destroyed] == [first]
    assert await held(session, first) == (0, 0)
    assert await held(session, second) == (1, 3)  # its deadline is a second later

    later = await purge_expired_lead_data(db, settings, now=deadline + dt.timedelta(seconds=5))
    assert [(d.lead_id, d.lateness_ms) for d in later.destroyed] == [(second, 4000)]
    assert await held(session, undated) == (1, 3)  # no deadline: its sale is still open

    log = {
        row.lead_id: row
        for row in await session.scalars(select(PiiDestruction).order_by(PiiDestruction.id))
    }
    assert set(log) == {first, second}
    for lead_id, row in log.items():
        lead = await session.get(Lead, lead_id, populate_existing=True)
        assert lead is not None and lead.pii_destroyed_at == row.destroyed_at
        assert row.deadline == lead.pii_expires_at
        assert row.destroyed_at >= row.deadline and row.cause == "retention"
        assert row.lateness_ms == (row.destroyed_at - row.deadline) // dt.timedelta(milliseconds=1)
    assert log[first].lateness_ms == 0

    again = await purge_expired_lead_data(db, settings, now=deadline + dt.timedelta(days=9))
    assert again.count == 0  # nothing is destroyed twice


async def test_a_bought_lead_keeps_its_preview_order_and_ledger_but_not_its_contact(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, db: Database
) -> None:
    """Through the real intake (vault and blind indexes), purchase and order API."""
    _, seller = await signed_in(client, "seller")
    body = lead_body(sale__mode="fixed", sale__price_cents=2500)
    for key in ("reserve_cents", "buy_now_cents", "duration_minutes"):
        body["sale"].pop(key)
    posted = await client.post("/api/v1/leads", json=body, headers=seller)
    assert posted.status_code == 201, posted.text
    lead_id = posted.json()["id"]
    account, buyer = await signed_in(client, "buyer")
    user = await session.get(User, account["id"])
    assert user is not None
    await fund(session, user, 10_000)
    bought = await client.post(f"/api/v1/leads/{lead_id}/purchase", headers=buyer)
    assert bought.status_code == 201, bought.text
    order = bought.json()
    email = body["contact"]["email"]
    assert order["contact"]["email"] == email and order["pii_destroyed_at"] is None
    vault = await session.get(LeadVault, lead_id)
    assert vault is not None
    sealed = dict(vault.sealed_fields)
    assert await held(session, lead_id) == (1, 3)
    records = {
        model: await count(session, model) for model in (Order, Disclosure, LedgerEntry, AuditEvent)
    }
    deadline = dt.datetime.fromisoformat(order["pii_expires_at"])

    result = await purge_expired_lead_data(db, settings, now=deadline)
    assert [d.lead_id for d in result.destroyed] == [lead_id]

    assert await held(session, lead_id) == (0, 0)
    # Nothing left in the database opens the ciphertext: the wrapped data key went with it.
    for column in (LeadVault.sealed_fields, LeadVault.wrapped_key):
        assert await session.scalar(select(column).where(LeadVault.lead_id == lead_id)) is None
    lead = await session.get(Lead, lead_id, populate_existing=True)
    assert lead is not None and lead.pii_destroyed_at is not None
    assert (lead.vertical, lead.city, lead.region, lead.age_band) == (
        "auto-insurance",
        "Fresno",
        "CA",
        posted.json()["preview"]["age_band"],
    )
    for model, before in records.items():
        if model is AuditEvent:
            assert await count(session, model) >= before
        else:
            assert await count(session, model) == before, model

    shown = await client.get(f"/api/v1/orders/{order['id']}", headers=buyer)
    assert shown.status_code == 200
    assert shown.json()["contact"] is None
    assert shown.json()["pii_destroyed_at"] is not None
    assert shown.json()["pii_expires_at"] == order["pii_expires_at"]
    assert shown.json()["price_cents"] == 2500 and shown.json()["status"] == "held"
    assert email not in shown.text
    listed = await client.get("/api/v1/orders", headers=buyer)
    assert listed.json()["items"][0]["contact"] is None
    public = await client.get(f"/api/v1/leads/{lead_id}", headers=seller)
    assert public.json()["pii_destroyed_at"] is not None
    assert all(value not in shown.text for value in sealed.values())


@pytest.mark.committed
async def test_the_ciphertext_is_nowhere_in_the_database_file(
    committed_db: Database, settings: Settings, is_postgres: bool, database_url: str
) -> None:
    """SQLite runs with ``secure_delete``: after the sweep and a checkpoint, no byte of the
    destroyed vault is left in the database file."""
    if is_postgres:
        pytest.skip("reads the SQLite database file")
    async with committed_db.transaction() as session:
        seller = await make_member(session, "seller")
        (lead_id,) = await insert_due_leads(session, settings, seller.id, [utcnow()])
    async with committed_db.transaction() as session:
        vault = await session.get(LeadVault, lead_id)
        assert vault is not None
        pieces = [base64.b64decode(v) for v in vault.sealed_fields.values()]
        pieces.append(vault.wrapped_key)
    path = Path(database_url.split("///", 1)[1])

    def file_bytes() -> bytes:
        return path.read_bytes() + (
            path.with_name(path.name + "-wal").read_bytes()
            if path.with_name(path.name + "-wal").exists()
            else b""
        )

    def checkpoint() -> None:
        # Outside SQLAlchemy, whose SQLite transactions begin IMMEDIATE (no checkpoint there).
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            assert busy == 0
        finally:
            conn.close()

    await committed_db.engine.dispose()  # pooled connections would keep old WAL frames alive
    checkpoint()
    data = file_bytes()
    # Stored as base64 in JSON: look for the encoded text of each sealed field.
    stored = [base64.b64encode(p) for p in pieces[:-1]]
    assert all(s in data for s in stored) and pieces[-1] in data

    assert (await purge_expired_lead_data(committed_db, settings)).count == 1
    await committed_db.engine.dispose()
    checkpoint()
    data = file_bytes()
    assert not any(s in data for s in stored)
    assert pieces[-1] not in data


async def test_past_its_deadline_nobody_reads_the_data_before_the_sweep(
    session: AsyncSession, settings: Settings
) -> None:
    seller = await make_member(session, "seller")
    (lead_id,) = await insert_due_leads(
        session, settings, seller.id, [utcnow() - dt.timedelta(milliseconds=1)]
    )
    readers = (
        (Purpose.ADMIN_REVIEW, Reader("usr_staff", "admin")),
        (Purpose.LEGAL_REQUEST, Reader("usr_staff", "admin")),
        (Purpose.RIGHTS_REQUEST, Reader.privacy_engine()),
    )
    for purpose, reader in readers:
        with pytest.raises(PersonalDataDestroyed):
            await reveal_personal_data(
                session, settings, lead_id, reader=reader, purpose=purpose, reason="ticket 12"
            )
    assert await held(session, lead_id) == (1, 3)  # still stored: the sweep has not run


async def test_a_dry_run_changes_nothing(
    db: Database, session: AsyncSession, settings: Settings
) -> None:
    seller = await make_member(session, "seller")
    now = utcnow()
    due = await insert_due_leads(
        session,
        settings,
        seller.id,
        [now - dt.timedelta(seconds=3), now - dt.timedelta(seconds=1), now + dt.timedelta(hours=1)],
    )
    await session.commit()
    result = await purge_expired_lead_data(db, settings, now=now, dry_run=True)
    assert result.dry_run and result.count == 2
    assert [(d.lead_id, d.lateness_ms) for d in result.destroyed] == [
        (due[0], 3000),
        (due[1], 1000),
    ]
    for lead_id in due:
        assert await held(session, lead_id) == (1, 3)
    assert await count(session, PiiDestruction) == 0
    assert await count(session, Lead, Lead.pii_destroyed_at.is_not(None)) == 0


@pytest.mark.committed
async def test_concurrent_sweeps_destroy_each_lead_exactly_once(
    committed_db: Database, settings: Settings, database_url: str, is_postgres: bool
) -> None:
    """Several sweeps on their own connections (PostgreSQL: SKIP LOCKED shares the batches;
    SQLite: one writer at a time)."""
    n = 1200
    async with committed_db.transaction() as session:
        seller = await make_member(session, "seller")
        past = utcnow() - dt.timedelta(seconds=1)
        ids = await insert_due_leads(session, settings, seller.id, [past] * n)

    results = await asyncio.gather(
        *(purge_expired_lead_data(committed_db, settings, batch_size=50) for _ in range(4))
    )
    assert sum(r.count for r in results) == n
    destroyed = [d.lead_id for r in results for d in r.destroyed]
    assert sorted(destroyed) == sorted(ids)  # each once, by exactly one sweep
    if is_postgres:
        assert sum(1 for r in results if r.count) >= 2  # they really shared the work
    async with committed_db.transaction() as session:
        log = await session.execute(
            select(PiiDestruction.lead_id, func.count()).group_by(PiiDestruction.lead_id)
        )
        assert dict(log.all()) == dict.fromkeys(ids, 1)
        assert await count(session, LeadVault) == 0
        assert await count(session, LeadBlindIndex) == 0
        assert await count(session, Lead, Lead.pii_destroyed_at.is_(None)) == 0


@pytest.mark.committed
async def test_a_sweep_that_dies_between_batches_is_finished_by_the_next(
    committed_db: Database, settings: Settings
) -> None:
    n, batch = 250, 100
    async with committed_db.transaction() as session:
        seller = await make_member(session, "seller")
        past = utcnow() - dt.timedelta(seconds=1)
        ids = await insert_due_leads(session, settings, seller.id, [past] * n)

    calls = 0

    def dying_clock() -> dt.datetime:
        # Each batch reads the clock twice (its cut-off, then the destruction time): the third
        # reading is the second batch's, after the first batch committed.
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("the worker was killed")
        return utcnow()

    with pytest.raises(RuntimeError):
        await purge_expired_lead_data(committed_db, settings, batch_size=batch, clock=dying_clock)
    async with committed_db.transaction() as session:
        assert await count(session, PiiDestruction) == batch
        destroyed = await count(session, Lead, Lead.pii_destroyed_at.is_not(None))
        assert destroyed == batch
        assert await count(session, LeadVault) == n - batch  # consistent: no half batch

    rerun = await purge_expired_lead_data(committed_db, settings, batch_size=batch)
    assert rerun.count == n - batch
    async with committed_db.transaction() as session:
        assert sorted(await session.scalars(select(PiiDestruction.lead_id))) == sorted(ids)
        assert await count(session, LeadVault) == 0


async def test_the_periodic_job_runs_at_the_configured_interval(
    db: Database, session: AsyncSession, settings: Settings
) -> None:
    custom = settings.model_copy(update={"retention_sweep_seconds": 7})
    every = {k.kind: k.every for k in build_registry(custom).periodic_kinds}
    assert every[retention.PURGE_JOB] == dt.timedelta(seconds=7)
    default = {k.kind: k.every for k in build_registry().periodic_kinds}
    assert default[retention.PURGE_JOB] == dt.timedelta(seconds=10)
    assert Settings.model_fields["retention_sweep_seconds"].default == 10

    seller = await make_member(session, "seller")
    (due,) = await insert_due_leads(
        session, settings, seller.id, [utcnow() - dt.timedelta(seconds=2)]
    )
    await session.commit()
    worker: Worker[object] = Worker(
        db,
        build_registry(custom),  # type: ignore[arg-type]
        build_services(custom),
        custom,
    )
    assert await worker.schedule_periodic() >= 1
    await worker.run_once()
    assert await held(session, due) == (0, 0)
    row = await session.scalar(select(PiiDestruction).where(PiiDestruction.lead_id == due))
    assert row is not None and row.lateness_ms >= 2000
