"""Database plumbing: engine, sessions, the declarative base and portable column types.

One code path serves SQLite (the embedded default, through aiosqlite) and PostgreSQL (asyncpg).
The request or the job owns the transaction (see ``kit.routing``); services never commit."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, MetaData, event, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.exc import DisconnectionError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator
from sqlalchemy.util import await_

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on both databases (SQLite drops the offset on its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


_AFTER_COMMIT = "leadmarket_after_commit"


def after_commit(
    session: AsyncSession, key: Hashable, action: Callable[[], Awaitable[None]]
) -> None:
    """Run ``action`` once the unit of work that owns ``session`` has committed (never if it
    rolls back): for effects outside the database, such as live page updates. An action
    registered again under the same ``key`` replaces the earlier one."""
    session.info.setdefault(_AFTER_COMMIT, {})[key] = action


def forget_after_commit(session: AsyncSession) -> None:
    session.info.pop(_AFTER_COMMIT, None)


AfterCommitActions = dict[Hashable, Callable[[], Awaitable[None]]]


def pending_after_commit(session: AsyncSession) -> AfterCommitActions:
    """A copy of the actions registered on ``session`` so far: taken before a savepoint, and
    given back to :func:`restore_after_commit` if that savepoint is rolled back, so the actions
    of undone work do not run at the commit."""
    return dict(session.info.get(_AFTER_COMMIT, {}))


def restore_after_commit(session: AsyncSession, actions: AfterCommitActions) -> None:
    session.info[_AFTER_COMMIT] = dict(actions)


async def run_after_commit(session: AsyncSession) -> None:
    actions: AfterCommitActions = session.info.pop(_AFTER_COMMIT, {})
    for action in actions.values():
        await action()


def dialect_insert(session: AsyncSession, table: Any) -> Any:
    """``INSERT`` in the dialect of the session's database, for its ``ON CONFLICT`` clauses."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return pg_insert(table)
    if dialect == "sqlite":
        return sqlite_insert(table)
    raise RuntimeError(f"unsupported database dialect {dialect!r}")


def insert_ignoring_conflicts(
    session: AsyncSession, table: Any, *, index_elements: list[Any] | None = None
) -> Any:
    """``INSERT … ON CONFLICT DO NOTHING`` in the dialect of the session's database. A duplicate
    is skipped without an error, so the caller's transaction stays usable on PostgreSQL."""
    return dialect_insert(session, table).on_conflict_do_nothing(index_elements=index_elements)


def insert_or_update(
    session: AsyncSession, table: Any, *, index_elements: list[Any], set_: dict[str, Any]
) -> Any:
    """``INSERT … ON CONFLICT (index_elements) DO UPDATE SET …`` in the session's dialect: one
    atomic statement that creates a row or changes the one there (``set_`` may use the row's
    own columns: ``{"n": table.c.n + 1}``)."""
    return dialect_insert(session, table).on_conflict_do_update(
        index_elements=index_elements, set_=set_
    )


# PostgreSQL's answer to the victim of a deadlock: its transaction was rolled back whole.
DEADLOCK_SQLSTATE = "40P01"


def is_deadlock(exc: BaseException) -> bool:
    """Whether ``exc`` is PostgreSQL refusing a transaction it chose as a deadlock's victim
    (SQLSTATE 40P01): nothing of that transaction was kept, so it may simply run again."""
    return getattr(getattr(exc, "orig", None), "sqlstate", None) == DEADLOCK_SQLSTATE


def is_sqlite_url(url: str) -> bool:
    return url.startswith("sqlite")


def make_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    if is_sqlite_url(url):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30})
        _configure_sqlite(engine)
        return engine
    engine = create_async_engine(url, pool_size=pool_size, max_overflow=pool_size)
    _ping_on_checkout(engine)
    return engine


def _ping_on_checkout(engine: AsyncEngine) -> None:
    """Pessimistic disconnect handling at a third of ``pool_pre_ping``'s price.

    A pooled connection may be dead (PostgreSQL restarted, the backend was terminated): each
    checkout proves it alive before a request uses it, and a dead one is swapped for a new one
    by the pool (it retries on :class:`DisconnectionError`), so the request never sees it.
    SQLAlchemy's own pre-ping wraps its ``;`` in BEGIN and ROLLBACK (for PgBouncer's
    transaction mode, which Leadmarket does not sit behind): three round trips on every
    checkout, that is on every request touching the database. Here a connection the driver
    already knows is closed is refused without a round trip, and any other sends the bare
    ``;``: one round trip, the same proof."""

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        if dbapi_connection.driver_connection.is_closed():
            raise DisconnectionError("the connection was closed while in the pool")
        try:
            dbapi_connection.run_async(lambda connection: connection.fetchrow(";"))
        except Exception as exc:
            raise DisconnectionError("the connection did not answer its ping") from exc


def _configure_sqlite(engine: AsyncEngine) -> None:
    """Let SQLAlchemy, not the sqlite3 module, issue BEGIN, so SAVEPOINTs work (needed for
    rolled-back tests) and every transaction takes the write lock up front: a deferred
    transaction that reads and then writes can fail with "database is locked" instead of waiting."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA secure_delete=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        _take_turn(connection.engine)
        connection.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """Owns the engine and hands out sessions. Tests swap in one bound to an outer transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False, autoflush=True)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def new_session(self) -> AsyncSession:
        return self._sessions()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A unit of work outside a request (jobs, CLI): commit on success, roll back on error.
        What was registered with :func:`after_commit` runs once the commit succeeded. On SQLite
        the units of work of this process take turns first (:func:`_sqlite_turn`)."""
        async with _sqlite_turn(self.engine, enabled=self.is_sqlite and self.owns_connections()):
            session = self.new_session()
            try:
                yield session
                await session.commit()
            except BaseException:
                forget_after_commit(session)
                await session.rollback()
                raise
            finally:
                await session.close()
        await run_after_commit(session)

    def owns_connections(self) -> bool:
        """Whether each session has a connection of the engine to itself (not a test's one
        connection shared by all)."""
        return type(self).new_session is Database.new_session

    @asynccontextmanager
    async def pinned(self) -> AsyncIterator[Database]:
        """This database with every session on one connection, checked out (and pinged)
        once for the whole block instead of once per transaction: for a writer that runs many
        short transactions one after the other (``kit.groupcommit``). Only one session at a
        time may use it. A database whose sessions are not the engine's own (a test's, all
        bound to its one connection) is used as it is."""
        if type(self).new_session is not Database.new_session:
            yield self
            return
        async with self.engine.connect() as connection:
            yield _PinnedDatabase(self.engine, connection)

    @asynccontextmanager
    async def driver_connection(self) -> AsyncIterator[Any]:
        """The driver's own connection (asyncpg's on PostgreSQL), for a writer whose whole unit
        of work is one statement: that statement is then its own transaction, with no session,
        no BEGIN and no COMMIT round trip. On a :meth:`pinned` database it is the pinned
        connection, outside any transaction. On any other it belongs to a transaction of its
        own (in a test, a SAVEPOINT of the test's transaction, rolled back if the block fails;
        the driver begins a transaction only at its first statement through SQLAlchemy, so on
        a real connection the statement commits by itself all the same)."""
        async with self.transaction() as session:
            connection = await session.connection()
            yield (await connection.get_raw_connection()).driver_connection

    async def ping(self) -> bool:
        session = self.new_session()
        try:
            await session.execute(text("SELECT 1"))
        finally:
            await session.close()
        return True

    async def dispose(self) -> None:
        await self.engine.dispose()


class _PinnedDatabase(Database):
    def __init__(self, engine: AsyncEngine, connection: AsyncConnection) -> None:
        super().__init__(engine)
        self._connection = connection

    def new_session(self) -> AsyncSession:
        # A transaction begun on the connection by the session is committed (or rolled back)
        # by it; the connection stays checked out for the next one.
        return AsyncSession(bind=self._connection, expire_on_commit=False, autoflush=True)

    def owns_connections(self) -> bool:
        return True

    @asynccontextmanager
    async def driver_connection(self) -> AsyncIterator[Any]:
        # Sessions on this connection end their transactions, so none is open here.
        assert not self._connection.in_transaction()
        yield (await self._connection.get_raw_connection()).driver_connection


# How long a unit of work waits for its turn on SQLite before it gives up as SQLite itself does
# (the connections' busy timeout): "database is locked".
SQLITE_TURN_TIMEOUT = 30.0

# Per engine: (event loop, the lock its units of work take turns on).
_TURNS: weakref.WeakKeyDictionary[Engine, tuple[asyncio.AbstractEventLoop, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


class _Turn:
    """A unit of work's place in its engine's queue: taken when its transaction begins."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.lock: asyncio.Lock | None = None


# The unit of work (``Database.transaction``) the current code runs in, if it takes turns.
_CURRENT_TURN: ContextVar[_Turn | None] = ContextVar("leadmarket_sqlite_turn", default=None)


@asynccontextmanager
async def _sqlite_turn(engine: AsyncEngine, *, enabled: bool) -> AsyncIterator[None]:
    """Make the units of work of this process (:meth:`Database.transaction`) on one SQLite
    database take turns for its write lock, first come first served.

    Every SQLite transaction takes the write lock at BEGIN (``BEGIN IMMEDIATE``), so two never
    write at once anyway. But a connection that finds the lock taken waits in SQLite's busy
    handler, which sleeps and tries again, up to 100 ms apart, and wins only if the lock is
    free at that very moment: next to the API's lead writer (``kit.groupcommit``), which takes
    the lock again a moment after each commit, such a transaction lost for seconds. The bench
    measured it: whenever the API keys' principals expired, the requests that authenticated
    again waited up to 1.7 s in ``BEGIN IMMEDIATE``, and intake's p99 went from 60 ms to
    0.5-1.2 s. Here the unit of work's BEGIN first waits in a queue (:func:`_take_turn`),
    behind the units of work ahead of it only, and its turn ends with the block.

    Only this process's :meth:`Database.transaction` blocks queue; a request's own session and
    other processes still meet at SQLite's lock as before."""
    if not enabled:
        yield
        return
    turn = _Turn(engine.sync_engine)
    token = _CURRENT_TURN.set(turn)
    try:
        yield
    finally:
        _CURRENT_TURN.reset(token)
        if turn.lock is not None:
            turn.lock.release()


def _take_turn(engine: Engine) -> None:
    """At the BEGIN of a transaction on ``engine`` (in SQLAlchemy's greenlet): wait for the
    turn of the unit of work it belongs to, if that one takes turns and has none yet."""
    turn = _CURRENT_TURN.get()
    if turn is None or turn.engine is not engine or turn.lock is not None:
        return
    loop = asyncio.get_running_loop()
    entry = _TURNS.get(engine)
    if entry is None or entry[0] is not loop:
        entry = (loop, asyncio.Lock())
        _TURNS[engine] = entry
    await_(_acquire(entry[1]))
    turn.lock = entry[1]


async def _acquire(lock: asyncio.Lock) -> None:
    try:
        async with asyncio.timeout(SQLITE_TURN_TIMEOUT):
            await lock.acquire()
    except TimeoutError:
        raise OperationalError(
            "BEGIN IMMEDIATE", None, sqlite3.OperationalError("database is locked")
        ) from None
