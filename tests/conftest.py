"""Shared fixtures. The suite runs against the database named by LEADMARKET_TEST_DATABASE_URL:
unset, a SQLite file in a temporary folder; a PostgreSQL URL, a fresh database created beside the
one named (and dropped afterwards). The schema is built by the real Alembic migrations.

Most tests get ``client`` and ``session`` bound to one connection inside a transaction that is
rolled back at the end, so they are independent. Tests that need real commits (several processes,
concurrency, the job worker) use ``committed_db``, which empties every table afterwards."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from leadmarket.app import create_app
from leadmarket.config import Settings
from leadmarket.kit.db import Database, make_engine
from leadmarket.kit.fastlane import FastLane
from leadmarket.kit.migrate import upgrade_to_head
from leadmarket.models import Base

TEST_DATABASE_ENV = "LEADMARKET_TEST_DATABASE_URL"


def _on_admin_database(admin_url: str, statement: str) -> None:
    """Run one statement on the server of ``admin_url`` (CREATE/DROP DATABASE cannot run in a
    transaction, so asyncpg is used directly rather than through SQLAlchemy)."""
    import asyncio

    import asyncpg

    url = make_url(admin_url)

    async def run() -> None:
        conn = await asyncpg.connect(
            host=url.host,
            port=url.port or 5432,
            user=url.username,
            password=url.password,
            database=url.database or "postgres",
        )
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


def _create_postgres_database(admin_url: str) -> tuple[str, str]:
    """Create a scratch database on the server of ``admin_url``; return (its URL, its name)."""
    name = f"leadmarket_test_{secrets.token_hex(4)}"
    _on_admin_database(admin_url, f'CREATE DATABASE "{name}"')
    url = make_url(admin_url).set(database=name)
    return url.render_as_string(hide_password=False), name


def _drop_postgres_database(admin_url: str, name: str) -> None:
    _on_admin_database(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = os.environ.get(TEST_DATABASE_ENV, "")
    if configured.startswith("postgresql"):
        url, name = _create_postgres_database(configured)
        upgrade_to_head(url)
        yield url
        _drop_postgres_database(configured, name)
        return
    path = tmp_path_factory.mktemp("db") / "leadmarket-test.db"
    url = f"sqlite+aiosqlite:///{path}"
    upgrade_to_head(url)
    yield url


@pytest.fixture(scope="session")
def is_postgres(database_url: str) -> bool:
    return database_url.startswith("postgresql")


@pytest.fixture
def var_dir(tmp_path: Path) -> Path:
    return tmp_path / "var"


@pytest.fixture
def settings(database_url: str, var_dir: Path) -> Settings:
    return Settings(
        database_url=database_url,
        var_dir=var_dir,
        secret_key="test-secret-key-for-signing-0123456789",  # type: ignore[arg-type]
        argon2_time_cost=1,
        argon2_memory_kib=64,
        run_jobs_in_process=False,
        base_url="https://testserver",
        log_format="text",
    )


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(database_url)
    yield engine
    await engine.dispose()


class ConnectionBoundDatabase(Database):
    """Every session joins the test's outer transaction; their commits become SAVEPOINTs."""

    def __init__(self, engine: AsyncEngine, connection: AsyncConnection) -> None:
        super().__init__(engine)
        self.connection = connection

    def new_session(self) -> AsyncSession:
        return AsyncSession(
            bind=self.connection,
            join_transaction_mode="create_savepoint",
            expire_on_commit=False,
        )


@pytest.fixture
async def db(engine: AsyncEngine) -> AsyncIterator[Database]:
    async with engine.connect() as connection:
        transaction = await connection.begin()
        try:
            yield ConnectionBoundDatabase(engine, connection)
        finally:
            await transaction.rollback()


@pytest.fixture
async def session(db: Database) -> AsyncIterator[AsyncSession]:
    s = db.new_session()
    try:
        yield s
    finally:
        await s.close()


async def _empty_all_tables(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            await conn.execute(table.delete())


@pytest.fixture
async def committed_db(engine: AsyncEngine) -> AsyncIterator[Database]:
    """A Database whose transactions really commit; every table is emptied afterwards."""
    await _empty_all_tables(engine)
    try:
        yield Database(engine)
    finally:
        await _empty_all_tables(engine)


@asynccontextmanager
async def _asgi_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client speaking HTTP to ``app`` in this process, from a fixed documentation address."""
    transport = httpx.ASGITransport(app=app, client=("203.0.113.10", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as c:
        yield c


@pytest.fixture
def committed_app(committed_db: Database, settings: Settings) -> FastAPI:
    """The application on :func:`committed_db`: its requests' transactions really commit."""
    return create_app(settings, database=committed_db)


@pytest.fixture
async def committed_client(committed_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with _asgi_client(committed_app) as c:
        yield c


@pytest.fixture
def app(settings: Settings, db: Database):  # type: ignore[no-untyped-def]
    return create_app(settings, database=db)


@pytest.fixture
async def client(app) -> AsyncIterator[httpx.AsyncClient]:  # type: ignore[no-untyped-def]
    async with _asgi_client(app) as c:
        yield c


@pytest.fixture
async def route_client(settings: Settings, db: Database) -> AsyncIterator[httpx.AsyncClient]:
    """The application without its fast lane (``kit.fastlane``): every request goes through
    FastAPI's routes, so a test can check the lane answers exactly as the route does."""
    app = create_app(settings, database=db)
    app.user_middleware = [m for m in app.user_middleware if m.cls is not FastLane]
    async with _asgi_client(app) as c:
        yield c
