"""Live updates for pages (server-sent events): publish a message on a channel, and every
subscriber of that channel, in this process or, with Redis configured, in any process, gets it.

Messages are published only once the transaction that caused them has committed
(:func:`publish_after_commit`): a rolled-back bid never flashes on anyone's screen. They carry
what a page may show to anyone allowed on it (prices, counts, times), never personal data."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.kit.db import after_commit

log = logging.getLogger("leadmarket.realtime")

# A subscriber that falls this far behind loses the oldest messages: pages only need the latest.
_QUEUE_SIZE = 100


class Broker(Protocol):
    async def publish(self, channel: str, message: dict[str, Any]) -> None: ...

    def subscribe(self, channel: str) -> contextlib.AbstractAsyncContextManager[Subscription]: ...

    async def close(self) -> None: ...


class Subscription:
    """Messages of one channel, as they come; :meth:`next` waits for the next one
    (None when nothing came within ``wait_seconds``, so a stream can send its keep-alive)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=_QUEUE_SIZE)

    def deliver(self, message: dict[str, Any]) -> None:
        if self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(message)

    async def next(self, wait_seconds: float) -> dict[str, Any] | None:
        try:
            async with asyncio.timeout(wait_seconds):
                return await self.queue.get()
        except TimeoutError:
            return None


class LocalBroker:
    """Within one process: the embedded default."""

    def __init__(self) -> None:
        self._subscribers: dict[str, set[Subscription]] = {}

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        for subscription in list(self._subscribers.get(channel, ())):
            subscription.deliver(message)

    @contextlib.asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[Subscription]:
        subscription = Subscription()
        self._subscribers.setdefault(channel, set()).add(subscription)
        try:
            yield subscription
        finally:
            subscribers = self._subscribers.get(channel, set())
            subscribers.discard(subscription)
            if not subscribers:
                self._subscribers.pop(channel, None)

    async def close(self) -> None:
        self._subscribers.clear()


class RedisBroker:
    """Across processes through Redis pub/sub (``LEADMARKET_REDIS_URL``). Each process keeps
    one Redis subscription per channel that has local subscribers, and fans out locally."""

    def __init__(self, url: str, *, prefix: str = "leadmarket:") -> None:
        import redis.asyncio as redis

        self._redis = redis.from_url(url)
        self._prefix = prefix
        self._local = LocalBroker()
        self._listeners: dict[str, tuple[asyncio.Task[None], int]] = {}

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        await self._redis.publish(self._prefix + channel, json.dumps(message))

    async def _listen(self, channel: str, ready: asyncio.Event) -> None:
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(self._prefix + channel)
            ready.set()
            async for raw in pubsub.listen():
                if raw.get("type") != "message":
                    continue
                with contextlib.suppress(ValueError):
                    await self._local.publish(channel, json.loads(raw["data"]))
        finally:
            ready.set()
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    @contextlib.asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[Subscription]:
        task, count = self._listeners.get(channel, (None, 0))
        if task is None or task.done():
            ready = asyncio.Event()
            task = asyncio.create_task(self._listen(channel, ready))
            await ready.wait()
        self._listeners[channel] = (task, count + 1)
        try:
            async with self._local.subscribe(channel) as subscription:
                yield subscription
        finally:
            task, count = self._listeners[channel]
            if count <= 1:
                del self._listeners[channel]
                task.cancel()
            else:
                self._listeners[channel] = (task, count - 1)

    async def close(self) -> None:
        for task, _ in self._listeners.values():
            task.cancel()
        self._listeners.clear()
        await self._redis.aclose()


def make_broker(redis_url: str | None) -> Broker:
    return RedisBroker(redis_url) if redis_url else LocalBroker()


def publish_after_commit(
    session: AsyncSession, broker: Broker, channel: str, message: dict[str, Any]
) -> None:
    """Publish ``message`` once ``session``'s transaction commits; never if it rolls back. A
    later message for the same channel in the same transaction replaces the earlier one."""

    async def publish() -> None:
        try:
            await broker.publish(channel, message)
        except Exception as exc:
            log.warning("live update on %s not published: %r", channel, exc)

    after_commit(session, ("realtime", id(broker), channel), publish)
