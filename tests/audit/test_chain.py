"""The audit log (A4): every read of personal data and every security event is recorded, and
the hash chain exposes any edit, deletion or truncation."""

from __future__ import annotations

import asyncio

import httpx
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.audit.service import Actor, record, verify_chain
from leadmarket.kit.db import Database
from leadmarket.models import AuditEvent, AuditHead
from tests.fixtures.accounts import PASSWORD, signed_in


async def actions_about(session: AsyncSession, subject_id: str) -> list[str]:
    rows = await session.scalars(
        select(AuditEvent.action)
        .where(AuditEvent.subject_id == subject_id)
        .order_by(AuditEvent.seq)
    )
    return list(rows)


async def test_security_events_and_personal_data_reads_are_recorded(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    account, auth = await signed_in(client)
    await client.get("/api/v1/me", headers=auth)
    await client.post("/api/v1/auth/login", json={"login": account["username"], "password": "no"})
    actions = await actions_about(session, account["id"])
    assert actions[:1] == ["account.registered"]
    assert "pii.read" in actions and "auth.login_failed" in actions
    read = await session.scalar(
        select(AuditEvent).where(
            AuditEvent.subject_id == account["id"], AuditEvent.action == "pii.read"
        )
    )
    assert read is not None
    assert read.actor_id == account["id"] and read.reason and read.fields
    # The log names ids and fields, never the data itself.
    dumped = " ".join(
        str(v)
        for e in (await session.scalars(select(AuditEvent))).all()
        for v in (e.details, e.fields, e.reason, e.subject_id)
    )
    for secret in (account["email"], account["name"], account["phone"], PASSWORD):
        assert secret not in dumped


async def test_admin_read_of_member_data_needs_a_reason_and_is_recorded(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    from leadmarket.models import User

    target, _ = await signed_in(client, "seller")
    staff, staff_auth = await signed_in(client)
    user = await session.get(User, staff["id"])
    assert user is not None
    user.role = "admin"  # A4: only admins read member data, with a reason
    await session.commit()
    _, buyer_auth = await signed_in(client)

    path = f"/api/v1/admin/members/{target['username']}"
    assert (
        await client.get(path, params={"reason": "ticket 4411"}, headers=buyer_auth)
    ).status_code == 403
    assert (await client.get(path, headers=staff_auth)).status_code == 422
    response = await client.get(path, params={"reason": "ticket 4411"}, headers=staff_auth)
    assert response.status_code == 200 and response.json()["email"] == target["email"]
    event = await session.scalar(
        select(AuditEvent).where(
            AuditEvent.subject_id == target["id"],
            AuditEvent.action == "pii.read",
            AuditEvent.actor_id == staff["id"],
        )
    )
    assert event is not None and event.reason == "ticket 4411"


async def test_chain_verifies_and_detects_tampering(session: AsyncSession) -> None:
    for i in range(5):
        await record(session, actor=Actor.system(), action=f"test.event{i}", subject_id=f"s{i}")
    await session.flush()
    report = await verify_chain(session)
    assert report.ok, report.problems
    assert report.checked >= 5
    seqs = list(await session.scalars(select(AuditEvent.seq).order_by(AuditEvent.seq)))

    # An edited entry.
    nested = await session.begin_nested()
    await session.execute(
        update(AuditEvent).where(AuditEvent.seq == seqs[-3]).values(reason="edited")
    )
    report = await verify_chain(session)
    assert not report.ok and any("altered" in p for p in report.problems)
    await nested.rollback()

    # A deleted entry in the middle.
    nested = await session.begin_nested()
    await session.execute(delete(AuditEvent).where(AuditEvent.seq == seqs[-2]))
    report = await verify_chain(session)
    assert not report.ok and any("missing" in p for p in report.problems)
    await nested.rollback()

    # The newest entry removed, and the previous hash faked into place: the head disagrees.
    nested = await session.begin_nested()
    await session.execute(delete(AuditEvent).where(AuditEvent.seq == seqs[-1]))
    report = await verify_chain(session)
    assert not report.ok and any("head" in p for p in report.problems)
    await nested.rollback()

    session.expire_all()
    assert (await verify_chain(session)).ok


async def test_concurrent_appends_never_fork_the_chain(committed_db: Database) -> None:
    async def append(i: int) -> None:
        for attempt in range(20):
            try:
                async with committed_db.transaction() as session:
                    await record(
                        session, actor=Actor.system(), action="test.concurrent", subject_id=str(i)
                    )
                return
            except Exception:
                # The very first append may race to create the head row; retried like any
                # conflicting transaction.
                if attempt == 19:
                    raise
                await asyncio.sleep(0.01)

    await asyncio.gather(*(append(i) for i in range(40)))
    async with committed_db.transaction() as session:
        report = await verify_chain(session)
        assert report.ok, report.problems
        assert report.checked == 40
        head = await session.get(AuditHead, 1)
        assert head is not None and head.last_seq == 40


async def test_audit_verify_command(
    committed_db: Database, database_url: str, tmp_path: object
) -> None:
    import os
    import subprocess
    import sys

    async with committed_db.transaction() as session:
        for i in range(3):
            await record(session, actor=Actor.system(), action="test.cli", subject_id=str(i))
    env = {**os.environ, "LEADMARKET_DATABASE_URL": database_url}
    ok = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "leadmarket", "audit", "verify"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert "intact" in ok.stderr
    async with committed_db.transaction() as session:
        await session.execute(
            update(AuditEvent).where(AuditEvent.seq == 2).values(action="test.forged")
        )
    broken = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "leadmarket", "audit", "verify"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert broken.returncode == 1
    assert "altered" in broken.stderr
