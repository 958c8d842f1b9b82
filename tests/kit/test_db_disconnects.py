"""A pooled PostgreSQL connection that died (a restart, a terminated backend) never fails a
request: the checkout ping (``kit.db._ping_on_checkout``) swaps it for a new one."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import pytest
from sqlalchemy import text

from leadmarket.accounts.auth import API_KEY_PREFIX
from leadmarket.app import create_app
from leadmarket.config import Settings
from leadmarket.kit.db import Database, make_engine


@pytest.fixture
def postgres_url(database_url: str) -> str:
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's backends are what this terminates")
    return database_url


async def _pooled_backend_pids(db: Database, count: int) -> set[int]:
    """Checks out ``count`` connections at once, so the pool holds that many, and returns the
    pids of their backends."""
    sessions = [db.new_session() for _ in range(count)]
    try:
        return {int(await s.scalar(text("SELECT pg_backend_pid()")) or 0) for s in sessions}
    finally:
        for s in sessions:
            await s.close()


async def _terminate(url: str, pids: set[int]) -> None:
    """Terminates the backends from a connection of its own and waits until they are gone."""
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        await connection.execute(
            "SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) pid", [*pids]
        )
        for _ in range(100):
            alive = await connection.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", [*pids]
            )
            if alive == 0:
                return
            await asyncio.sleep(0.02)
        raise AssertionError("the backends outlived their termination")
    finally:
        await connection.close()


@pytest.mark.parametrize("driver_noticed", [True, False])
async def test_terminated_backends_are_replaced_at_checkout(
    postgres_url: str, driver_noticed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not driver_noticed:
        # The backend died but the driver has not read the closed socket yet (a checkout right
        # after a restart): the ping's round trip must find out.
        monkeypatch.setattr(asyncpg.connection.Connection, "is_closed", lambda self: False)
    db = Database(make_engine(postgres_url, pool_size=3))
    try:
        pids = await _pooled_backend_pids(db, 3)
        assert len(pids) == 3
        await _terminate(postgres_url, pids)
        # Every pooled connection is dead now; each transaction still succeeds, on new ones.
        for _ in range(5):
            async with db.transaction() as session:
                assert await session.scalar(text("SELECT 1")) == 1
        assert not (await _pooled_backend_pids(db, 3)) & pids
    finally:
        await db.dispose()


async def test_a_request_after_the_backends_died_is_answered(
    postgres_url: str, settings: Settings
) -> None:
    db = Database(make_engine(postgres_url, pool_size=2))
    app = create_app(settings, database=db)
    transport = httpx.ASGITransport(app=app, client=("203.0.113.10", 50000))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as client:
            bad_key = {"authorization": f"Bearer {API_KEY_PREFIX}not-a-key"}
            assert (await client.post("/api/v1/ping", json={}, headers=bad_key)).status_code == 401
            await _terminate(postgres_url, await _pooled_backend_pids(db, 2))
            # The fast lane looks the key up in the database: a dead connection would be a 500.
            answers = [
                (await client.post("/api/v1/ping", json={}, headers=bad_key)).status_code,
                (await client.get("/readyz")).status_code,
                (await client.get("/api/v1/nothing-here")).status_code,
            ]
            assert answers == [401, 200, 404]
    finally:
        await db.dispose()
