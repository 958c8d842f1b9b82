"""The message caps hold under concurrency (M4, "check-then-act is a bug"), on SQLite and
PostgreSQL: many sends from one member racing, each in its own transaction through several
engines (as separate processes would), store exactly the hourly cap."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from leadmarket.config import Settings
from leadmarket.kit.db import Database, make_engine
from leadmarket.kit.errors import DomainError
from leadmarket.messages import service
from leadmarket.models import MemberMessage, User
from leadmarket.orders import service as orders
from tests.fixtures.ledger import fund, make_member
from tests.fixtures.orders import make_lead

pytestmark = pytest.mark.committed

ENGINES = 3
SENDS = 40


async def test_concurrent_sends_store_exactly_the_hourly_cap(
    committed_db: Database, database_url: str, settings: Settings
) -> None:
    settings = settings.model_copy(update={"messages_per_hour": 7, "messages_per_day": 100})
    async with committed_db.transaction() as session:
        seller = await make_member(session, "seller")
        buyer = await make_member(session, "buyer")
        await fund(session, buyer, 10_000)
        order_ids = []
        for _ in range(3):
            lead, _ = await make_lead(session, settings, seller, price_cents=100)
            order = await orders.sell(
                session,
                settings,
                lead_id=lead.id,
                buyer_id=buyer.id,
                price_cents=100,
                via=orders.SaleVia.FIXED,
            )
            order_ids.append(order.id)
        buyer_id = buyer.id

    engines = [make_engine(database_url, pool_size=4) for _ in range(ENGINES)]
    databases = [Database(e) for e in engines]

    async def attempt(n: int) -> int:
        async with databases[n % ENGINES].transaction() as session:
            sender = await session.get(User, buyer_id)
            assert sender is not None
            try:
                await service.send_message(
                    session,
                    settings,
                    order_id=order_ids[n % len(order_ids)],
                    sender=sender,
                    body=f"question number {n}",
                )
            except DomainError as exc:
                return exc.status
        return 201

    try:
        results = await asyncio.gather(*(attempt(n) for n in range(SENDS)))
    finally:
        for engine in engines:
            await engine.dispose()

    assert sorted(set(results)) == [201, 429]
    assert results.count(201) == settings.messages_per_hour
    async with committed_db.transaction() as session:
        stored = await session.scalar(select(func.count()).select_from(MemberMessage))
        assert stored == settings.messages_per_hour
