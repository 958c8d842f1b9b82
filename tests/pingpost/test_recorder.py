"""The ping recorder (``service.PingRecorder``) on real commits, on SQLite and PostgreSQL: one
batch refuses each ping of a key revoked meanwhile or of an account no longer active, names the
earlier ping of every duplicate (in the batch or before it), reclaims an expired claim, and
writes the others; a batch that fails is written again ping by ping, and the failing ping leaves
nothing behind. On PostgreSQL a batch is one statement through the driver, with no transaction
or statement of SQLAlchemy's."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import secrets
from typing import Any, NamedTuple

import pytest
from sqlalchemy import event, select, text

from leadmarket.campaigns.matching import MatchingIndex
from leadmarket.config import Settings
from leadmarket.kit.db import Database, utcnow
from leadmarket.kit.errors import DomainError, Forbidden, Unauthenticated
from leadmarket.models import ApiKey, Ping, PingFingerprint, User, UserStatus
from leadmarket.pingpost import service
from leadmarket.pingpost.schemas import PingIn, PingOut
from tests.fixtures.ledger import make_member
from tests.fixtures.pingpost import ping_body
from tests.pingpost.conftest import MakeKit

pytestmark = pytest.mark.committed


class Records:
    """Pings ready to write, made by ``service.ping`` itself (its recorder only collects them),
    each given a fingerprint of the test's own for its content."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.kit = service.PingKit(settings, db, MatchingIndex())
        self.made: list[service.PingRecord] = []

        async def collect(made: service.PingRecord) -> PingOut:
            self.made.append(made)
            return made.answer

        self.kit.recorder.submit = collect  # type: ignore[method-assign,assignment]

    async def __call__(
        self, seller_id: str, fingerprint: str, api_key_id: str | None = None
    ) -> service.PingRecord:
        seller = User(id=seller_id)
        data = PingIn.model_validate(ping_body())
        await service.ping(self.kit, seller=seller, api_key_id=api_key_id, data=data)
        made = self.made.pop()
        return service.PingRecord({**made.row, "fingerprint": fingerprint}, api_key_id, made.answer)


async def make_key(db: Database, user: User, *, revoked: bool = False) -> str:
    async with db.transaction() as session:
        key = ApiKey(
            user_id=user.id,
            name="crm",
            prefix=secrets.token_hex(8),
            key_hash=secrets.token_hex(32),
            revoked_at=utcnow() if revoked else None,
        )
        session.add(key)
        await session.flush()
        return key.id


async def submit_together(
    recorder: service.PingRecorder, records: list[service.PingRecord]
) -> list[PingOut | BaseException]:
    # Every submit queues its record before the writer task first runs: one batch.
    return await asyncio.gather(*(recorder.submit(r) for r in records), return_exceptions=True)


def fp(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


async def test_one_batch_judges_each_ping_on_its_own(
    make_kit: MakeKit, committed_db: Database, settings: Settings
) -> None:
    async with committed_db.transaction() as session:
        seller = await make_member(session, "seller")
        suspended = await make_member(session, "seller")
        suspended.status = UserStatus.SUSPENDED.value
    key = await make_key(committed_db, seller)
    revoked = await make_key(committed_db, seller, revoked=True)
    suspended_key = await make_key(committed_db, suspended)
    kit = make_kit(settings, committed_db)
    record = Records(settings, committed_db)
    earlier = await record(seller.id, fp("held"))
    assert await kit.recorder.submit(earlier) == earlier.answer
    async with committed_db.transaction() as session:  # a claim whose window has passed
        session.add(
            PingFingerprint(
                fingerprint=fp("expired"),
                ping_id="png_long_ago",
                expires_at=utcnow() - dt.timedelta(seconds=1),
            )
        )

    first = await record(seller.id, fp("a"), key)
    batch = [
        first,
        await record(seller.id, fp("b"), revoked),
        await record(suspended.id, fp("c"), suspended_key),
        await record(seller.id, fp("a")),  # the same content again, in the same batch
        await record(seller.id, fp("held"), key),  # the content of a ping written before
        await record(seller.id, fp("expired"), key),
        await record(seller.id, fp("b")),  # the content the revoked key's ping could not claim
    ]
    answers = await submit_together(kit.recorder, batch)

    assert kit.recorder.largest_batch == len(batch)
    assert answers[0] == first.answer
    assert isinstance(answers[1], Unauthenticated)
    assert isinstance(answers[2], Forbidden)
    duplicates = [a for a in answers[3:5] if isinstance(a, service.DuplicatePing)]
    assert [d.extra["duplicate_of"] for d in duplicates] == [first.row["id"], earlier.row["id"]]
    assert answers[5] == batch[5].answer and answers[6] == batch[6].answer
    async with committed_db.transaction() as session:
        written = set((await session.scalars(select(Ping.id))).all())
        claims = await session.execute(select(PingFingerprint.fingerprint, PingFingerprint.ping_id))
        holders = {str(f): str(p) for f, p in claims}
        used = await session.get(ApiKey, key)
        assert used is not None and used.last_used_at is not None
        unused = await session.get(ApiKey, revoked)
        assert unused is not None and unused.last_used_at is None
    assert written == {earlier.row["id"], first.row["id"], batch[5].row["id"], batch[6].row["id"]}
    assert holders == {
        fp("held"): earlier.row["id"],
        fp("a"): first.row["id"],
        fp("expired"): batch[5].row["id"],
        fp("b"): batch[6].row["id"],
    }


async def test_a_failing_batch_is_written_ping_by_ping(
    make_kit: MakeKit, committed_db: Database, settings: Settings
) -> None:
    async with committed_db.transaction() as session:
        seller = await make_member(session, "seller")
    kit = make_kit(settings, committed_db)
    record = Records(settings, committed_db)
    good = [await record(seller.id, fp(f"good{n}")) for n in range(3)]
    bad = await record("usr_nobody", fp("bad"))  # no such seller: the foreign key refuses it

    answers = await submit_together(kit.recorder, [good[0], bad, good[1], good[2]])

    assert answers[0] == good[0].answer and answers[2:] == [good[1].answer, good[2].answer]
    assert isinstance(answers[1], Exception) and not isinstance(answers[1], DomainError)
    async with committed_db.transaction() as session:
        written = set((await session.scalars(select(Ping.id))).all())
        claimed = set((await session.scalars(select(PingFingerprint.fingerprint))).all())
    assert written == {g.row["id"] for g in good}
    assert claimed == {fp(f"good{n}") for n in range(3)}  # nothing of the failed ping


async def test_on_postgres_a_batch_is_one_statement_outside_sqlalchemy(
    make_kit: MakeKit, committed_db: Database, settings: Settings, is_postgres: bool
) -> None:
    if not is_postgres:
        pytest.skip("SQLite writes a batch in a session's transaction")
    async with committed_db.transaction() as session:
        seller = await make_member(session, "seller")
    key = await make_key(committed_db, seller)
    kit = make_kit(settings, committed_db)
    record = Records(settings, committed_db)
    records = [await record(seller.id, fp(f"p{n}"), key) for n in range(20)]
    seen: list[str] = []

    def on_statement(*args: Any) -> None:
        seen.append("statement")

    def on_begin(*args: Any) -> None:
        seen.append("begin")

    engine = committed_db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", on_statement)
    event.listen(engine, "begin", on_begin)
    try:
        answers = await submit_together(kit.recorder, records)
    finally:
        event.remove(engine, "before_cursor_execute", on_statement)
        event.remove(engine, "begin", on_begin)
    assert answers == [r.answer for r in records]
    assert seen == []


class Held(NamedTuple):
    seller: User
    kit: service.PingKit
    held: service.HeldConnection
    record: Records


async def held_setup(make_kit: MakeKit, db: Database, settings: Settings) -> Held:
    """A seller, and a kit whose recorder holds its connection (PostgreSQL only)."""
    async with db.transaction() as session:
        seller = await make_member(session, "seller")
    kit = make_kit(settings, db)
    assert isinstance(kit.recorder.db, service.HeldConnection)
    return Held(seller, kit, kit.recorder.db, Records(settings, db))


async def held_backend(held: service.HeldConnection) -> int:
    async with held.driver() as connection:
        return int(await connection.fetchval("SELECT pg_backend_pid()"))


async def test_on_postgres_bursts_share_one_held_connection_until_idle(
    make_kit: MakeKit, committed_db: Database, settings: Settings, is_postgres: bool
) -> None:
    """Burst after burst, the recorder writes on the connection it holds: no checkout (and no
    checkout ping) per burst; it goes back to the pool once no batch came for ``LINGER``."""
    if not is_postgres:
        pytest.skip("SQLite writes a batch in a session's transaction")
    seller, kit, held, record = await held_setup(make_kit, committed_db, settings)
    held.LINGER = 0.3
    bursts = [await record(seller.id, fp(f"burst{n}")) for n in range(5)]
    after = await record(seller.id, fp("after"))
    checkouts: list[str] = []
    checkins: list[str] = []
    pool = committed_db.engine.sync_engine.pool

    def on_checkout(*args: Any) -> None:
        checkouts.append("checkout")

    def on_checkin(*args: Any) -> None:
        checkins.append("checkin")

    event.listen(pool, "checkout", on_checkout)
    event.listen(pool, "checkin", on_checkin)
    try:
        for r in bursts:  # one after the other: the writer task ends after each
            assert await kit.recorder.submit(r) == r.answer
        assert kit.recorder.batches_written == 5
        assert checkouts == ["checkout"] and checkins == []
        for _ in range(100):
            if checkins:
                break
            await asyncio.sleep(0.05)
        assert checkins == ["checkin"]  # idle: given back
        assert await kit.recorder.submit(after) == after.answer  # and held again
        assert checkouts == ["checkout", "checkout"]
        await kit.aclose()
    finally:
        event.remove(pool, "checkout", on_checkout)
        event.remove(pool, "checkin", on_checkin)
    assert checkins == ["checkin", "checkin"]  # the application's shutdown gives it back
    async with committed_db.transaction() as session:
        assert len((await session.scalars(select(Ping.id))).all()) == 6


async def test_on_postgres_a_held_connection_that_died_is_replaced(
    make_kit: MakeKit, committed_db: Database, settings: Settings, is_postgres: bool
) -> None:
    """The backend behind the held connection is terminated between two bursts: the next
    pings are still written (on a new connection) and answered, none twice."""
    if not is_postgres:
        pytest.skip("PostgreSQL's backends are what this terminates")
    seller, kit, held, record = await held_setup(make_kit, committed_db, settings)
    try:
        first = await record(seller.id, fp("first"))
        assert await kit.recorder.submit(first) == first.answer
        pid = await held_backend(held)
        killer = committed_db.new_session()
        try:
            await killer.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            await killer.commit()
        finally:
            await killer.close()
        later = [await record(seller.id, fp(f"later{n}")) for n in range(3)]
        answers = await submit_together(kit.recorder, later)
        assert answers == [r.answer for r in later]
        assert await held_backend(held) != pid
    finally:
        await kit.aclose()
    async with committed_db.transaction() as session:
        written = set((await session.scalars(select(Ping.id))).all())
    assert written == {first.row["id"], *(r.row["id"] for r in later)}


async def test_on_postgres_a_refused_batch_keeps_the_held_connection(
    make_kit: MakeKit, committed_db: Database, settings: Settings, is_postgres: bool
) -> None:
    """A statement PostgreSQL refuses (here a ping of an unknown seller) leaves the held
    connection as it was: the batch's pings are written again one by one on it."""
    if not is_postgres:
        pytest.skip("only PostgreSQL holds a connection")
    seller, kit, held, record = await held_setup(make_kit, committed_db, settings)
    try:
        good = await record(seller.id, fp("good"))
        assert await kit.recorder.submit(good) == good.answer
        pid = await held_backend(held)
        bad = await record("usr_nobody", fp("bad"))
        more = await record(seller.id, fp("more"))
        answers = await submit_together(kit.recorder, [bad, more])
        assert isinstance(answers[0], Exception) and answers[1] == more.answer
        assert await held_backend(held) == pid
    finally:
        await kit.aclose()


@pytest.mark.parametrize("busy", [True, False])
async def test_on_postgres_a_burst_right_after_a_batch_waits_for_more_pings(
    make_kit: MakeKit, committed_db: Database, settings: Settings, is_postgres: bool, busy: bool
) -> None:
    """Busy (the previous batch just went): a new burst first waits ``ping_batch_wait_ms``,
    so a ping arriving meanwhile goes in the same batch. Idle: the lone ping goes at once,
    and the next one in a batch of its own."""
    if not is_postgres:
        pytest.skip("only PostgreSQL holds a connection")
    settings = settings.model_copy(update={"ping_batch_wait_ms": 50})
    seller, kit, held, record = await held_setup(make_kit, committed_db, settings)
    first, second, third = [await record(seller.id, fp(f"r{n}")) for n in range(3)]
    assert await kit.recorder.submit(first) == first.answer
    if not busy:
        await asyncio.sleep(held.BUSY_GAPS * 0.05 + 0.05)

    async def later() -> PingOut:
        await asyncio.sleep(0.01)
        return await kit.recorder.submit(third)

    answers = await asyncio.gather(kit.recorder.submit(second), later())
    assert list(answers) == [second.answer, third.answer]
    assert kit.recorder.batches_written == (2 if busy else 3)
    assert kit.recorder.largest_batch == (2 if busy else 1)
