"""A request whose transaction loses a real deadlock runs again and is written once; a database
that cannot be used answers 503 with Retry-After, never 500 (``kit.routing``, ``kit.transient``).

The deadlock is PostgreSQL's own: the request locks row 1 then row 2 while another connection
locks row 2 then row 1. That connection waits with a long ``deadlock_timeout``, so the request
is the victim PostgreSQL picks."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, UploadFile
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from leadmarket.kit import routing
from leadmarket.kit.db import Database, make_engine
from leadmarket.kit.errors import install_error_handlers
from leadmarket.kit.routing import TransactionalRoute, get_session
from leadmarket.kit.transient import outside_effect

LOG = "retry_probe_log"
LOCKS = "retry_probe_locks"


@pytest.fixture
def postgres_url(database_url: str) -> str:
    if not database_url.startswith("postgresql"):
        pytest.skip("deadlocks and backends are PostgreSQL's")
    return database_url


def _asyncpg_url(url: str) -> str:
    return url.replace("postgresql+asyncpg", "postgresql")


@dataclass
class Probe:
    """What the probe routes share with the test: how often the handler ran, and the steps
    of the deadlock."""

    runs: int = 0
    deadlock_on_runs: set[int] = field(default_factory=lambda: {1})
    outside: bool = False
    locked_first: asyncio.Event = field(default_factory=asyncio.Event)
    other_locked: asyncio.Event = field(default_factory=asyncio.Event)
    pid: asyncio.Future[int] | None = None
    terminated: asyncio.Event = field(default_factory=asyncio.Event)


async def _lock_both_rows(session: AsyncSession, probe: Probe) -> None:
    """Row 1, then (once the other transaction holds it) row 2: on the runs meant to lose."""
    if probe.runs in probe.deadlock_on_runs:
        await session.execute(text(f"SELECT id FROM {LOCKS} WHERE id = 1 FOR UPDATE"))
        probe.locked_first.set()
        await probe.other_locked.wait()
        await session.execute(text(f"SELECT id FROM {LOCKS} WHERE id = 2 FOR UPDATE"))


def probe_app(db: Database, probe: Probe) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.state.db = db
    router = APIRouter(route_class=TransactionalRoute)

    @router.post("/deadlock")
    async def deadlock(
        body: dict[str, Any], session: AsyncSession = Depends(get_session)
    ) -> dict[str, Any]:
        probe.runs += 1
        await session.execute(text(f"INSERT INTO {LOG} (note) VALUES (:n)"), {"n": body["note"]})
        if probe.outside:
            outside_effect()
        await _lock_both_rows(session, probe)
        return {"note": body["note"], "runs": probe.runs}

    @router.post("/upload")
    async def upload(
        file: UploadFile, session: AsyncSession = Depends(get_session)
    ) -> dict[str, Any]:
        probe.runs += 1
        content = (await file.read()).decode()
        await session.execute(text(f"INSERT INTO {LOG} (note) VALUES (:n)"), {"n": content})
        await _lock_both_rows(session, probe)
        return {"content": content, "runs": probe.runs}

    @router.post("/write")
    async def write(session: AsyncSession = Depends(get_session)) -> dict[str, str]:
        await session.execute(text(f"INSERT INTO {LOG} (note) VALUES ('w')"))
        return {"written": "yes"}

    @router.post("/lose-connection")
    async def lose_connection(session: AsyncSession = Depends(get_session)) -> dict[str, str]:
        assert probe.pid is not None
        probe.pid.set_result(int(await session.scalar(text("SELECT pg_backend_pid()")) or 0))
        await probe.terminated.wait()
        await session.execute(text(f"INSERT INTO {LOG} (note) VALUES ('lost')"))
        return {"written": "yes"}

    app.include_router(router)
    return app


@pytest.fixture
async def scratch(engine: AsyncEngine) -> AsyncIterator[None]:
    """Two tables of the test's own: a log of what requests wrote, and two rows to lock."""
    serial = "SERIAL" if engine.dialect.name == "postgresql" else "INTEGER"
    async with engine.begin() as conn:
        await conn.execute(text(f"DROP TABLE IF EXISTS {LOG}"))
        await conn.execute(text(f"DROP TABLE IF EXISTS {LOCKS}"))
        await conn.execute(text(f"CREATE TABLE {LOG} (id {serial} PRIMARY KEY, note TEXT)"))
        await conn.execute(text(f"CREATE TABLE {LOCKS} (id INTEGER PRIMARY KEY)"))
        await conn.execute(text(f"INSERT INTO {LOCKS} (id) VALUES (1), (2)"))
    try:
        yield
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP TABLE {LOG}"))
            await conn.execute(text(f"DROP TABLE {LOCKS}"))


async def _logged(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return [str(n) for n in (await conn.execute(text(f"SELECT note FROM {LOG}"))).scalars()]


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://testserver")


async def _other_side(url: str, probe: Probe) -> None:
    """The other transaction: row 2 once the request holds row 1, then row 1."""
    conn = await asyncpg.connect(_asyncpg_url(url))
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL deadlock_timeout = '20s'")  # the request loses
            await asyncio.wait_for(probe.locked_first.wait(), 10)
            await conn.execute(f"SELECT id FROM {LOCKS} WHERE id = 2 FOR UPDATE")
            probe.other_locked.set()
            await asyncio.sleep(0.3)  # the request waits for row 2 first
            await conn.execute(f"SELECT id FROM {LOCKS} WHERE id = 1 FOR UPDATE")
            await conn.execute(f"INSERT INTO {LOG} (note) VALUES ('other')")
    finally:
        await conn.close()


async def _while_the_other_side_locks(
    engine: AsyncEngine, url: str, probe: Probe, path: str, **sent: Any
) -> httpx.Response:
    async with _client(probe_app(Database(engine), probe)) as client:
        answer, _ = await asyncio.gather(client.post(path, **sent), _other_side(url, probe))
    return answer


async def test_a_request_that_loses_a_deadlock_runs_again_and_is_written_once(
    postgres_url: str, engine: AsyncEngine, scratch: None
) -> None:
    probe = Probe()
    answer = await _while_the_other_side_locks(
        engine, postgres_url, probe, "/deadlock", json={"note": "request"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"note": "request", "runs": 2}
    assert sorted(await _logged(engine)) == ["other", "request"]  # the first run left nothing


async def test_an_uploaded_file_is_read_again_by_the_retry(
    postgres_url: str, engine: AsyncEngine, scratch: None
) -> None:
    probe = Probe()
    upload = {"file": ("a.csv", b"line one\n", "text/csv")}
    answer = await _while_the_other_side_locks(engine, postgres_url, probe, "/upload", files=upload)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"content": "line one\n", "runs": 2}
    assert sorted(await _logged(engine)) == ["line one\n", "other"]


def _assert_503(answer: httpx.Response, slug: str) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert int(answer.headers["retry-after"]) >= 1
    body = answer.json()
    assert body["type"] == f"/problems/{slug}"
    assert body["status"] == 503


@pytest.mark.parametrize("why", ["every attempt lost", "done outside the transaction"])
async def test_a_request_not_run_again_answers_503_and_leaves_nothing(
    postgres_url: str, engine: AsyncEngine, scratch: None, monkeypatch: pytest.MonkeyPatch, why: str
) -> None:
    if why == "every attempt lost":
        monkeypatch.setattr(routing, "CONFLICT_ATTEMPTS", 1)
    probe = Probe(outside=why == "done outside the transaction")
    answer = await _while_the_other_side_locks(
        engine, postgres_url, probe, "/deadlock", json={"note": "request"}
    )
    _assert_503(answer, "database-busy")
    assert probe.runs == 1
    assert await _logged(engine) == ["other"]


async def test_a_refused_connection_answers_503() -> None:
    engine = make_engine("postgresql+asyncpg://postgres@127.0.0.1:1/postgres")
    try:
        async with _client(probe_app(Database(engine), Probe())) as client:
            answer = await client.post("/write")
    finally:
        await engine.dispose()
    _assert_503(answer, "database-unavailable")


async def test_a_connection_lost_mid_request_answers_503(
    postgres_url: str, engine: AsyncEngine, scratch: None
) -> None:
    probe = Probe(pid=asyncio.get_running_loop().create_future())
    own = make_engine(postgres_url, pool_size=1)

    async def terminate() -> None:
        assert probe.pid is not None
        pid = await asyncio.wait_for(probe.pid, 10)
        conn = await asyncpg.connect(_asyncpg_url(postgres_url))
        try:
            await conn.execute("SELECT pg_terminate_backend($1)", pid)
            for _ in range(100):
                if not await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid
                ):
                    break
                await asyncio.sleep(0.02)
        finally:
            await conn.close()
        probe.terminated.set()

    try:
        async with _client(probe_app(Database(own), probe)) as client:
            answer, _ = await asyncio.gather(client.post("/lose-connection"), terminate())
    finally:
        await own.dispose()
    _assert_503(answer, "database-unavailable")
    assert await _logged(engine) == []


async def test_sqlite_locked_past_its_busy_timeout_answers_503(
    database_url: str, tmp_path: Path
) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("SQLite's write lock")
    path = tmp_path / "locked.db"
    with sqlite3.connect(path) as setup:
        setup.execute("PRAGMA journal_mode=WAL")
        setup.execute(f"CREATE TABLE {LOG} (id INTEGER PRIMARY KEY, note TEXT)")
    engine = make_engine(f"sqlite+aiosqlite:///{path}")

    @event.listens_for(engine.sync_engine, "connect")
    def _short_wait(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=100")  # instead of 30 s: the test need not wait
        cursor.close()

    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        async with _client(probe_app(Database(engine), Probe())) as client:
            answer = await client.post("/write")
    finally:
        holder.rollback()
        holder.close()
        await engine.dispose()
    _assert_503(answer, "database-unavailable")
    with sqlite3.connect(path) as check:
        assert check.execute(f"SELECT count(*) FROM {LOG}").fetchone() == (0,)
