"""Group commit (``kit.groupcommit``): a burst of submissions is written in batches over one
connection checked out once; what is queued while that connection goes back to the pool is
still written; when no connection can be had, every waiting submission gets the error."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.kit.db import Database, make_engine
from leadmarket.kit.errors import Conflict, DomainError
from leadmarket.kit.groupcommit import GroupCommit
from leadmarket.kit.transient import begin_unit_of_work, end_unit_of_work

pytestmark = pytest.mark.committed


async def double(session: AsyncSession, items: Sequence[int]) -> list[int | DomainError]:
    """A batch writer that asks the database something, and refuses odd numbers above 100."""
    answered = int(await session.scalar(text("SELECT 2")) or 0)
    return [Conflict("odd") if i > 100 and i % 2 else i * answered for i in items]


async def finished(writer: GroupCommit[int, int]) -> None:
    """The writer ends once its connection is back in the pool (after the last answers)."""
    for _ in range(500):
        if writer._writer is None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the writer task did not end")


async def test_a_burst_is_written_in_batches_over_one_checkout(committed_db: Database) -> None:
    checkouts: list[object] = []

    def on_checkout(*_: Any) -> None:
        checkouts.append(object())

    pool = committed_db.engine.sync_engine.pool
    event.listen(pool, "checkout", on_checkout)
    try:
        writer: GroupCommit[int, int] = GroupCommit(committed_db, double, wait_ms=1.0, max_batch=8)
        answers = await asyncio.gather(
            *(writer.submit(i) for i in range(60)), return_exceptions=True
        )
    finally:
        event.remove(pool, "checkout", on_checkout)
    assert answers == [i * 2 for i in range(60)]
    assert writer.batches_written > 1 and writer.largest_batch > 1
    assert len(checkouts) < writer.batches_written
    await finished(writer)


async def test_each_refusal_is_its_own_and_late_arrivals_are_written(
    committed_db: Database,
) -> None:
    writer: GroupCommit[int, int] = GroupCommit(committed_db, double)
    first = asyncio.gather(*(writer.submit(i) for i in (101, 102)), return_exceptions=True)
    await asyncio.sleep(0)
    # Queued while the first burst is on its way out: written too, never left waiting.
    late = [asyncio.ensure_future(writer.submit(i)) for i in (3, 4)]
    answers = await asyncio.wait_for(first, 10)
    assert isinstance(answers[0], Conflict) and answers[1] == 204
    assert await asyncio.wait_for(asyncio.gather(*late), 10) == [6, 8]
    # A burst arriving after the writer finished starts a new one.
    assert await asyncio.wait_for(writer.submit(5), 10) == 10


async def test_without_a_database_every_waiting_submission_fails(
    database_url: str, tmp_path: Path
) -> None:
    if database_url.startswith("postgresql"):
        url = database_url.rsplit("/", 1)[0] + "/leadmarket_no_such_database"
    else:
        url = f"sqlite+aiosqlite:///{tmp_path}"  # a folder: SQLite cannot open it
    db = Database(make_engine(url))
    try:
        writer: GroupCommit[int, int] = GroupCommit(db, double)
        answers = await asyncio.wait_for(
            asyncio.gather(*(writer.submit(i) for i in range(5)), return_exceptions=True), 30
        )
    finally:
        await db.dispose()
    assert all(isinstance(a, Exception) and not isinstance(a, DomainError) for a in answers)
    await finished(writer)


async def test_a_request_that_submitted_is_never_run_again(committed_db: Database) -> None:
    """Its item is committed by the writer, outside the request's transaction: a retry after a
    lost deadlock would submit it twice (kit.transient decides from this mark). The writer
    task is started by another request here, so its commit is not seen as this one's."""
    writer: GroupCommit[int, int] = GroupCommit(committed_db, double, wait_ms=5.0)

    async def other_request() -> int:
        _, token = begin_unit_of_work()
        try:
            return await writer.submit(1)
        finally:
            end_unit_of_work(token)

    unit, token = begin_unit_of_work()
    try:
        started = asyncio.create_task(other_request())
        await asyncio.sleep(0)  # the other request starts the writer
        assert writer._writer is not None and not unit.outside
        assert await writer.submit(3) == 6
        assert unit.outside
        assert await started == 2
    finally:
        end_unit_of_work(token)
    await finished(writer)
