"""Live updates (kit.realtime): published only once the transaction commits, never after a
rollback; delivered to every subscriber of the channel, and, through Redis, across processes
(two brokers with their own connections stand for two server processes)."""

from __future__ import annotations

import asyncio
import os
import secrets

import pytest
from sqlalchemy import text

from leadmarket.kit.db import Database
from leadmarket.kit.realtime import LocalBroker, RedisBroker, publish_after_commit

REDIS_URL = os.environ.get("LEADMARKET_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


async def test_a_message_goes_out_after_commit_and_never_after_rollback(db: Database) -> None:
    broker = LocalBroker()

    async def failing_bid() -> None:
        async with db.transaction() as session:
            await session.execute(text("SELECT 1"))
            publish_after_commit(session, broker, "auction:x", {"n": 1})
            raise RuntimeError("the bid failed")

    async with broker.subscribe("auction:x") as subscription:
        with pytest.raises(RuntimeError):
            await failing_bid()
        assert await subscription.next(0.2) is None

        async with db.transaction() as session:
            await session.execute(text("SELECT 1"))
            publish_after_commit(session, broker, "auction:x", {"n": 2})
            publish_after_commit(session, broker, "auction:x", {"n": 3})  # replaces n=2
            assert await subscription.next(0.05) is None  # not before the commit
        assert await subscription.next(1) == {"n": 3}
        assert await subscription.next(0.2) is None


async def test_every_subscriber_of_a_channel_and_no_other_gets_it() -> None:
    broker = LocalBroker()
    async with (
        broker.subscribe("auction:a") as first,
        broker.subscribe("auction:a") as second,
        broker.subscribe("auction:b") as other,
    ):
        await broker.publish("auction:a", {"price": 150})
        assert await first.next(1) == {"price": 150}
        assert await second.next(1) == {"price": 150}
        assert await other.next(0.2) is None


async def test_redis_carries_messages_between_processes() -> None:
    here, there = RedisBroker(REDIS_URL), RedisBroker(REDIS_URL)
    channel = f"auction:{secrets.token_hex(4)}"
    try:
        async with there.subscribe(channel) as subscription:
            await here.publish(channel, {"price": 2_050, "closed": False})
            assert await asyncio.wait_for(subscription.next(5), 6) == {
                "price": 2_050,
                "closed": False,
            }
    finally:
        await here.close()
        await there.close()
