"""No oversold lead and no overspent wallet, whatever the interleaving (issue 4 §7), on SQLite
and PostgreSQL: hundreds of purchases racing, each in its own transaction, through several
engines (as separate processes would have their own connections). Then the orders, the holds
and the ledger are checked."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from leadmarket.config import Settings
from leadmarket.kit.db import Database, make_engine
from leadmarket.kit.errors import DomainError
from leadmarket.ledger import service as ledger
from leadmarket.ledger.verify import verify_ledger
from leadmarket.models import HoldStatus, Lead, LedgerHold, Order, User
from leadmarket.orders import service
from tests.fixtures.ledger import fund, make_member
from tests.fixtures.orders import make_lead

pytestmark = pytest.mark.committed

ENGINES = 3
PRICE = 100


async def _race(
    databases: list[Database], settings: Settings, attempts: list[tuple[str, str]]
) -> list[str | None]:
    """Each (buyer, lead) purchase in a transaction of its own; the order id or None."""

    async def attempt(n: int, buyer_id: str, lead_id: str) -> str | None:
        async with databases[n % len(databases)].transaction() as session:
            buyer = await session.get(User, buyer_id)
            assert buyer is not None
            try:
                _, order_id = await service.purchase(
                    session, settings, lead_id=lead_id, buyer=buyer, idempotency_key=None
                )
            except DomainError:
                return None
        return order_id

    return await asyncio.gather(*(attempt(n, b, lead) for n, (b, lead) in enumerate(attempts)))


async def test_a_shared_lead_never_sells_more_than_its_cap(
    committed_db: Database, database_url: str, settings: Settings
) -> None:
    async with committed_db.transaction() as session:
        seller = await make_member(session, "seller")
        lead, _ = await make_lead(
            session, settings, seller, price_cents=PRICE, exclusive=False, max_buyers=4
        )
        buyers = [await make_member(session) for _ in range(120)]
        for buyer in buyers:
            await fund(session, buyer, 10 * PRICE)
        lead_id, buyer_ids = lead.id, [b.id for b in buyers]

    engines = [make_engine(database_url, pool_size=4) for _ in range(ENGINES)]
    try:
        # Every buyer tries twice: 240 purchases of one lead at once.
        attempts = [(b, lead_id) for b in buyer_ids for _ in range(2)]
        results = await _race([Database(e) for e in engines], settings, attempts)
    finally:
        for engine in engines:
            await engine.dispose()

    won = [r for r in results if r is not None]
    assert len(won) == 4
    async with committed_db.transaction() as session:
        orders = list(await session.scalars(select(Order)))
        assert sorted(o.id for o in orders) == sorted(won)
        assert len({o.buyer_id for o in orders}) == 4
        holds = list(await session.scalars(select(LedgerHold)))
        assert len(holds) == 4 and all(h.status == HoldStatus.HELD.value for h in holds)
        assert {h.reference for h in holds} == set(won)
        sold = await session.get(Lead, lead_id)
        assert sold is not None and (sold.status, sold.sold_count) == ("sold", 4)
        report = await verify_ledger(session)
        assert report.ok, report.problems


async def test_one_wallet_racing_for_many_leads_never_goes_negative(
    committed_db: Database, database_url: str, settings: Settings
) -> None:
    affordable = 10
    async with committed_db.transaction() as session:
        seller = await make_member(session, "seller")
        buyer = await make_member(session)
        await fund(session, buyer, affordable * PRICE)
        leads = [
            (await make_lead(session, settings, seller, price_cents=PRICE))[0].id
            for _ in range(100)
        ]
        buyer_id = buyer.id

    engines = [make_engine(database_url, pool_size=4) for _ in range(ENGINES)]
    try:
        attempts = [(buyer_id, lead_id) for lead_id in leads for _ in range(2)]
        results = await _race([Database(e) for e in engines], settings, attempts)
    finally:
        for engine in engines:
            await engine.dispose()

    assert len([r for r in results if r is not None]) == affordable
    async with committed_db.transaction() as session:
        wallet = await ledger.wallet_summary(session, buyer_id, "USD")
        assert (wallet.balance_cents, wallet.held_cents) == (0, affordable * PRICE)
        assert await session.scalar(select(func.count()).select_from(Order)) == affordable
        open_leads = await session.scalar(
            select(func.count()).select_from(Lead).where(Lead.status == "open")
        )
        assert open_leads == len(leads) - affordable
        report = await verify_ledger(session)
        assert report.ok, report.problems
