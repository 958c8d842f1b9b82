"""On SQLite the units of work of one process (``Database.transaction``) take turns, first come
first served (``kit.db._sqlite_turn``): one that arrives while a busy writer keeps taking the
write lock again is not left polling in SQLite's busy handler for seconds. PostgreSQL's units
of work still run side by side."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from leadmarket.kit import db as dbmodule
from leadmarket.kit.db import Database, make_engine
from leadmarket.kit.transient import is_unavailable


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[Database]:
    """A real SQLite file (whatever database the suite runs on): its locking is the subject."""
    db = Database(make_engine(f"sqlite+aiosqlite:///{tmp_path / 'turns.db'}"))
    async with db.transaction() as session:
        await session.execute(text("CREATE TABLE marks (who TEXT NOT NULL)"))
    try:
        yield db
    finally:
        await db.dispose()


async def _busy_writer(db: Database, stop: asyncio.Event, hold: float) -> int:
    """Like the API's lead writer under load: one transaction after another, each holding the
    write lock for ``hold`` seconds, the next begun as soon as the last committed."""
    written = 0
    while not stop.is_set():
        async with db.transaction() as session:
            await session.execute(text("INSERT INTO marks VALUES ('writer')"))
            await asyncio.sleep(hold)
        written += 1
    return written


async def test_a_unit_of_work_gets_its_turn_beside_a_busy_writer(sqlite_db: Database) -> None:
    stop = asyncio.Event()
    writer = asyncio.create_task(_busy_writer(sqlite_db, stop, hold=0.02))
    try:
        await asyncio.sleep(0.1)  # the writer is in full swing
        waits = []
        for _ in range(10):
            started = time.perf_counter()
            async with sqlite_db.transaction() as session:
                await session.execute(text("INSERT INTO marks VALUES ('other')"))
            waits.append(time.perf_counter() - started)
            await asyncio.sleep(0.03)
    finally:
        stop.set()
        written = await writer
    # Each waited for the writer's transaction in progress, about 20 ms; polling SQLite's lock,
    # they lost to the writer for seconds in all (each up to the 30 s busy timeout).
    assert sum(waits) < 1.0, waits
    assert written >= 5  # the writer kept writing meanwhile
    async with sqlite_db.transaction() as session:
        others = await session.scalar(text("SELECT count(*) FROM marks WHERE who = 'other'"))
    assert others == 10


async def test_a_unit_of_work_inside_another_does_not_wait_for_it(sqlite_db: Database) -> None:
    async with asyncio.timeout(5):
        async with sqlite_db.transaction() as outer:
            async with sqlite_db.transaction() as inner:
                await inner.execute(text("INSERT INTO marks VALUES ('inner')"))
            await outer.execute(text("INSERT INTO marks VALUES ('outer')"))
    async with sqlite_db.transaction() as session:
        rows = (await session.execute(text("SELECT who FROM marks ORDER BY who"))).scalars()
        assert list(rows) == ["inner", "outer"]


async def test_a_unit_of_work_that_waits_too_long_is_told_the_database_is_locked(
    sqlite_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dbmodule, "SQLITE_TURN_TIMEOUT", 0.1)
    holding, release = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        async with sqlite_db.transaction() as session:
            await session.execute(text("INSERT INTO marks VALUES ('holder')"))
            holding.set()
            await release.wait()

    holder = asyncio.create_task(hold())
    await holding.wait()
    with pytest.raises(OperationalError, match="database is locked") as refused:
        async with sqlite_db.transaction() as session:
            await session.execute(text("INSERT INTO marks VALUES ('late')"))
    # The same answer as SQLite's own busy timeout: 503 with Retry-After, nothing written.
    assert is_unavailable(refused.value)
    release.set()
    await holder
    # Given up, it left no turn behind: the next one goes straight in.
    async with asyncio.timeout(1), sqlite_db.transaction() as session:
        rows = (await session.execute(text("SELECT who FROM marks"))).scalars()
        assert list(rows) == ["holder"]


async def test_postgresql_units_of_work_run_side_by_side(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's units of work do not take turns")
    db = Database(make_engine(database_url))
    try:
        first_open, second_done = asyncio.Event(), asyncio.Event()

        async def first() -> None:
            async with db.transaction() as session:
                await session.execute(text("SELECT 1"))
                first_open.set()
                await second_done.wait()

        task = asyncio.create_task(first())
        await first_open.wait()
        async with asyncio.timeout(5):
            async with db.transaction() as session:
                assert await session.scalar(text("SELECT 2")) == 2
        second_done.set()
        await task
    finally:
        await db.dispose()
