"""Group commit: concurrent requests of one process hand their writes to one writer, which
writes whatever has queued up in one transaction and answers each request after the commit.

A request calls :meth:`GroupCommit.submit` and waits. If no batch is being written, a writer task
starts at once with what is queued; while it waits on the database, more requests queue up and go
in the next batch, which also waits ``wait_ms`` for stragglers. So an idle server writes each item
alone, with no added delay, and a busy one writes them by the dozen. The writer task ends when the
queue is empty: nothing lingers between bursts.

The batch function judges every item on its own and returns one outcome per item, in order: a
result, or a :class:`~leadmarket.kit.errors.DomainError` that refuses that item alone. If it
raises instead (a lost connection, a constraint nothing foresaw), each item of the batch is
written again on its own, so that one cannot take the others down with it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.kit.db import Database
from leadmarket.kit.errors import DomainError
from leadmarket.kit.transient import outside_effect

Item = TypeVar("Item")
Result = TypeVar("Result")
BatchWriter = Callable[[AsyncSession, Sequence[Item]], Awaitable[Sequence[Result | DomainError]]]


class GroupCommit(Generic[Item, Result]):
    def __init__(
        self,
        db: Database,
        write_batch: BatchWriter[Item, Result],
        *,
        wait_ms: Callable[[], float] | float = 0.0,
        max_batch: int = 100,
    ) -> None:
        self.db = db
        self.write_batch = write_batch
        self._wait_ms = wait_ms
        self.max_batch = max_batch
        self._queue: list[tuple[Item, asyncio.Future[Result | DomainError]]] = []
        self._writer: asyncio.Task[None] | None = None
        # For the operator (and the tests): how much the batching actually batches.
        self.batches_written = 0
        self.largest_batch = 0

    async def submit(self, item: Item) -> Result:
        """Queue ``item``, and return its result once its batch has committed (or raise the
        error that refused it)."""
        # The item is committed by the writer, not by the caller's transaction: a request that
        # loses a deadlock afterwards must not be run again (it would submit the item twice).
        outside_effect()
        future: asyncio.Future[Result | DomainError] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._drain())
        outcome = await future
        if isinstance(outcome, DomainError):
            raise outcome
        return outcome

    def _wait_seconds(self) -> float:
        wait = self._wait_ms() if callable(self._wait_ms) else self._wait_ms
        return wait / 1000

    async def _drain(self) -> None:
        wait = self._wait_seconds()
        busy = False
        try:
            # Checked again after the connection went back to the pool (an await): whatever
            # was queued meanwhile is not left behind.
            while self._queue:
                try:
                    # One connection for the whole burst: checking one out of the pool for
                    # each batch (with its pre-ping, then three round trips on asyncpg) cost as
                    # much as writing the batch.
                    async with self.db.pinned() as db:
                        while self._queue:
                            if busy and wait and len(self._queue) < self.max_batch:
                                # More requests are on their way: a little patience makes the
                                # next batch bigger, and each batch costs about the same
                                # whatever its size.
                                await asyncio.sleep(wait)
                            busy = True
                            batch = self._queue[: self.max_batch]
                            del self._queue[: self.max_batch]
                            await self._write(db, batch)
                except Exception as exc:  # no connection to be had: refuse what is queued
                    self._refuse_queued(exc)
        except BaseException as exc:  # cancelled at shutdown: nobody may wait forever
            self._refuse_queued(exc)
            raise
        finally:
            self._writer = None

    async def write_items(
        self, db: Database, items: Sequence[Item]
    ) -> Sequence[Result | DomainError]:
        """Write one batch, all of it or nothing, and return its outcomes: by default
        ``write_batch`` in a transaction of its own. A writer may write otherwise what is
        durable once its call returns (one statement that is its own transaction)."""
        async with db.transaction() as session:
            return await self.write_batch(session, items)

    def _refuse_queued(self, exc: BaseException) -> None:
        for _, future in self._queue:
            _answer(future, exc)
        del self._queue[:]

    async def _write(
        self, db: Database, batch: list[tuple[Item, asyncio.Future[Result | DomainError]]]
    ) -> None:
        try:
            outcomes = await self.write_items(db, [item for item, _ in batch])
        except Exception as exc:
            if len(batch) > 1:
                for entry in batch:
                    await self._write(db, [entry])
                return
            _answer(batch[0][1], exc)
            return
        except BaseException as exc:  # cancelled at shutdown: nobody may wait forever
            for _, future in batch:
                _answer(future, exc)
            raise
        self.batches_written += 1
        self.largest_batch = max(self.largest_batch, len(batch))
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            _answer(future, outcome)


def _answer(future: asyncio.Future[Result | DomainError], outcome: object) -> None:
    if future.done():  # the client went away; its item is written all the same
        return
    if isinstance(outcome, BaseException) and not isinstance(outcome, DomainError):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)  # type: ignore[arg-type]
