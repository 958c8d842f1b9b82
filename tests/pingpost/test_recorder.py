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
from typing import Any

import pytest
from sqlalchemy import event, select

from leadmarket.campaigns.matching import MatchingIndex
from leadmarket.config import Settings
from leadmarket.kit.db import Database, utcnow
from leadmarket.kit.errors import DomainError, Forbidden, Unauthenticated
from leadmarket.models import ApiKey, Ping, PingFingerprint, User, UserStatus
from leadmarket.pingpost import service
from leadmarket.pingpost.schemas import PingIn, PingOut
from tests.fixtures.ledger import make_member
from tests.fixtures.pingpost import ping_body

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
    committed_db: Database, settings: Settings
) -> None:
    async with committed_db.transaction() as session:
        seller = await make_member(session, "seller")
        suspended = await make_member(session, "seller")
        suspended.status = UserStatus.SUSPENDED.value
    key = await make_key(committed_db, seller)
    revoked = await make_key(committed_db, seller, revoked=True)
    suspended_key = await make_key(committed_db, suspended)
    kit = service.PingKit(settings, committed_db, MatchingIndex())
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
    committed_db: Database, settings: Settings
) -> None:
    async with committed_db.transaction() as session:
        seller = await make_member(session, "seller")
    kit = service.PingKit(settings, committed_db, MatchingIndex())
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
    committed_db: Database, settings: Settings, is_postgres: bool
) -> None:
    if not is_postgres:
        pytest.skip("SQLite writes a batch in a session's transaction")
    async with committed_db.transaction() as session:
        seller = await make_member(session, "seller")
    key = await make_key(committed_db, seller)
    kit = service.PingKit(settings, committed_db, MatchingIndex())
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
