"""Personal data at rest (S1): never in the clear in the database or the logs, sealed per lead
and per field, opened only through the audited path, destroyed by shredding its key, and the
master keys rotatable."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.app import create_app
from leadmarket.config import Settings
from leadmarket.kit.db import Database, utcnow
from leadmarket.kit.keyring import DecryptionFailed
from leadmarket.leads.intake import LeadsKit, prepare_lead
from leadmarket.leads.schemas import LeadIn
from leadmarket.leads.vault import Purpose, Reader, destroy_personal_data, reveal_personal_data
from leadmarket.models import AuditEvent, Base, Lead, LeadVault, User
from tests.fixtures.accounts import signed_in
from tests.fixtures.leads import lead_body


def secrets_of(body: dict[str, Any]) -> list[str]:
    contact = body["contact"]
    return [contact["email"], contact["phone"], contact["last_name"], contact["address"]["street"]]


@pytest.fixture
async def committed_client(
    committed_db: Database, settings: Settings
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, database=committed_db)
    transport = httpx.ASGITransport(app=app, client=("203.0.113.10", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as c:
        yield c


_DUMP_SQLITE_FILES = """
import contextlib, pathlib, sqlite3, sys
path, out = sys.argv[1], sys.argv[2]
with contextlib.closing(sqlite3.connect(path)) as raw:
    raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
files = [pathlib.Path(path), pathlib.Path(path + "-wal")]
pathlib.Path(out).write_bytes(b"".join(f.read_bytes() for f in files if f.exists()))
"""


async def database_text(db: Database, database_url: str) -> bytes:
    """Everything the database holds, as bytes: the raw files for SQLite, every row of every
    table rendered as text for PostgreSQL."""
    if db.is_sqlite:
        # Done in a child process: closing any descriptor of the database file drops every
        # POSIX lock this process holds on it, which would corrupt the pool's view of the WAL.
        path = database_url.split("///", 1)[1]
        copy = Path(path).with_suffix(".bytes")
        await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", _DUMP_SQLITE_FILES, path, str(copy)],
            check=True,
        )
        return copy.read_bytes()
    chunks: list[bytes] = []
    async with db.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            rows = await conn.execute(text(f'SELECT CAST(t AS text) FROM "{table.name}" t'))
            chunks += [str(r[0]).encode() for r in rows]
    return b"\n".join(chunks)


@pytest.mark.committed
async def test_no_plaintext_personal_data_in_the_database_or_logs(
    committed_client: httpx.AsyncClient,
    committed_db: Database,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, seller = await signed_in(committed_client, "seller")
    bodies = [lead_body(v) for v in ("auto-insurance", "mortgage", "life-insurance")]
    for body in bodies:
        response = await committed_client.post("/api/v1/leads", json=body, headers=seller)
        assert response.status_code == 201, response.text
    minor = lead_body(contact__birth_date="2020-01-01")
    refused = await committed_client.post("/api/v1/leads", json=minor, headers=seller)
    assert refused.status_code == 422

    stored = await database_text(committed_db, database_url)
    # The dump sees what is stored in the clear (the preview's city)…
    assert b"lead_" in stored and b"Fresno" in stored
    for body in [*bodies, minor]:
        for secret in secrets_of(body):
            assert secret.encode() not in stored, secret  # …and not the personal data
    logged = "\n".join(r.getMessage() + str(vars(r)) for r in caplog.records)
    for body in [*bodies, minor]:
        for secret in secrets_of(body):
            assert secret not in logged


async def test_ciphertext_is_bound_to_its_lead_and_field(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    _, seller = await signed_in(client, "seller")
    first, second = lead_body(), lead_body()
    id_a = (await client.post("/api/v1/leads", json=first, headers=seller)).json()["id"]
    id_b = (await client.post("/api/v1/leads", json=second, headers=seller)).json()["id"]
    staff = Reader("usr_staff", "admin")
    opened = await reveal_personal_data(
        session, settings, id_a, reader=staff, purpose=Purpose.ADMIN_REVIEW, reason="test"
    )
    assert opened["email"] == first["contact"]["email"]
    assert opened["phone"] == first["contact"]["phone"]

    vault_a = await session.get(LeadVault, id_a)
    vault_b = await session.get(LeadVault, id_b)
    assert vault_a is not None and vault_b is not None
    assert vault_a.wrapped_key != vault_b.wrapped_key  # one data key per lead
    # Another lead's ciphertext, or another field's, does not open here.
    vault_b.sealed_fields = {**vault_b.sealed_fields, "email": vault_a.sealed_fields["email"]}
    with pytest.raises(DecryptionFailed):
        await reveal_personal_data(
            session,
            settings,
            id_b,
            reader=staff,
            purpose=Purpose.ADMIN_REVIEW,
            reason="t",
            fields=["email"],
        )
    vault_a.sealed_fields = {**vault_a.sealed_fields, "email": vault_a.sealed_fields["phone"]}
    with pytest.raises(DecryptionFailed):
        await reveal_personal_data(
            session,
            settings,
            id_a,
            reader=staff,
            purpose=Purpose.ADMIN_REVIEW,
            reason="t",
            fields=["email"],
        )
    # A flipped bit is caught too.
    raw = bytearray(base64.b64decode(vault_a.sealed_fields["phone"]))
    raw[-1] ^= 1
    vault_a.sealed_fields = {**vault_a.sealed_fields, "phone": base64.b64encode(raw).decode()}
    with pytest.raises(DecryptionFailed):
        await reveal_personal_data(
            session,
            settings,
            id_a,
            reader=staff,
            purpose=Purpose.ADMIN_REVIEW,
            reason="t",
            fields=["phone"],
        )


async def test_admin_read_is_audited_and_others_are_refused(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    _, seller = await signed_in(client, "seller")
    body = lead_body()
    lead_id = (await client.post("/api/v1/leads", json=body, headers=seller)).json()["id"]
    staff, staff_auth = await signed_in(client)
    user = await session.get(User, staff["id"])
    assert user is not None
    user.role = "admin"
    await session.commit()
    path = f"/api/v1/admin/leads/{lead_id}/personal-data"
    assert (
        await client.get(path, params={"reason": "ticket 991"}, headers=seller)
    ).status_code == 403
    # A4: an admin states a reason; without one, nothing is opened.
    assert (await client.get(path, headers=staff_auth)).status_code == 422
    assert (
        await client.get(path, params={"reason": "     "}, headers=staff_auth)
    ).status_code == 422
    response = await client.get(path, params={"reason": "ticket 991"}, headers=staff_auth)
    assert response.status_code == 200
    assert response.json()["email"] == body["contact"]["email"]
    event = await session.scalar(
        select(AuditEvent).where(AuditEvent.subject_id == lead_id, AuditEvent.action == "pii.read")
    )
    assert (
        event is not None and event.actor_id == staff["id"] and "ticket 991" in (event.reason or "")
    )


async def test_shredding_makes_the_data_unrecoverable(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    _, seller = await signed_in(client, "seller")
    lead_id = (await client.post("/api/v1/leads", json=lead_body(), headers=seller)).json()["id"]
    lead = await session.get(Lead, lead_id)
    assert lead is not None
    await destroy_personal_data(session, lead, now=utcnow())
    await session.flush()
    assert await session.get(LeadVault, lead_id) is None
    with pytest.raises(Exception, match="destroyed"):
        await reveal_personal_data(
            session,
            settings,
            lead_id,
            reader=Reader("u", "admin"),
            purpose=Purpose.ADMIN_REVIEW,
            reason="t",
        )


@pytest.mark.committed
async def test_master_key_rotation_rewraps_every_data_key(
    committed_client: httpx.AsyncClient,
    committed_db: Database,
    settings: Settings,
    database_url: str,
) -> None:
    _, seller = await signed_in(committed_client, "seller")
    body = lead_body()
    lead_id = (await committed_client.post("/api/v1/leads", json=body, headers=seller)).json()["id"]
    assert settings.keyring().versions == [1]
    env = {
        **os.environ,
        "LEADMARKET_DATABASE_URL": database_url,
        "LEADMARKET_VAR_DIR": str(settings.var_dir),
        "LEADMARKET_SECRET_KEY": "test-secret-key-for-signing-0123456789",
    }
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "leadmarket", "keys", "rotate"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    keyring = settings.reload_keyring()
    assert keyring.versions == [2] and keyring.current == 2

    async with committed_db.transaction() as session:
        vault = await session.get(LeadVault, lead_id)
        assert vault is not None and vault.key_version == 2
        opened = await reveal_personal_data(
            session,
            settings,
            lead_id,
            reader=Reader("u", "admin"),
            purpose=Purpose.ADMIN_REVIEW,
            reason="after rotation",
        )
    assert opened["email"] == body["contact"]["email"]


def test_intake_seals_with_the_keyring_the_settings_hold_now(settings: Settings) -> None:
    """The settings hand out their keyring without pydantic's slow path, but it is still
    their own: a reloaded keyring (after ``leadmarket keys rotate``) is the one intake uses."""
    kit = LeadsKit(settings)
    assert settings.keyring() is settings.keyring()
    reloaded = settings.reload_keyring()
    assert settings.keyring() is reloaded
    prepared = prepare_lead(
        kit,
        seller_id="usr_x",
        seller_username="s",
        data=LeadIn.model_validate(lead_body()),
        source="api",
    )
    assert prepared.vault["key_version"] == reloaded.current
