"""Ping/post under concurrency (issue 4 §7), on SQLite and PostgreSQL, each request in a
transaction of its own through several engines (as separate processes would have their own
connections): a ping posted many times at once sells once; hundreds of posts racing for a
campaign with a small daily cap never sell more than the cap; the same ping recorded by two
processes' recorders at once is accepted once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import func, select

from leadmarket.campaigns.matching import MatchingIndex
from leadmarket.config import Settings
from leadmarket.kit.db import Database, make_engine
from leadmarket.kit.errors import DomainError
from leadmarket.leads.intake import LeadsKit
from leadmarket.ledger.verify import verify_ledger
from leadmarket.models import Lead, LeadVault, Order, Ping, User
from leadmarket.pingpost import service
from leadmarket.pingpost.schemas import PingIn, PostIn
from tests.fixtures.ledger import make_member
from tests.fixtures.pingpost import bidding_buyer, ping_body, post_body
from tests.pingpost.conftest import MakeKit

pytestmark = pytest.mark.committed

ENGINES = 3


@pytest.fixture
async def databases(database_url: str) -> Any:
    engines = [make_engine(database_url, pool_size=4) for _ in range(ENGINES)]
    try:
        yield [Database(e) for e in engines]
    finally:
        for engine in engines:
            await engine.dispose()


async def _ping(kit: service.PingKit, seller: User, **changes: Any) -> str:
    answer = await service.ping(
        kit, seller=seller, api_key_id=None, data=PingIn.model_validate(ping_body(**changes))
    )
    assert answer.accepted
    return answer.ping_id


async def _post_all(
    databases: list[Database], settings: Settings, seller_id: str, bodies: list[dict[str, Any]]
) -> list[dict[str, Any] | str]:
    """Each post in a transaction of its own: its answer, or the problem type that refused it."""
    leads_kit = LeadsKit(settings)

    async def attempt(n: int, body: dict[str, Any]) -> dict[str, Any] | str:
        db = databases[n % len(databases)]
        kit = service.PingKit(settings, db, MatchingIndex())
        try:
            async with db.transaction() as session:
                seller = await session.get(User, seller_id)
                assert seller is not None
                _, answer = await service.post(
                    session,
                    kit,
                    leads_kit,
                    seller=seller,
                    data=PostIn.model_validate(body),
                    idempotency_key=None,
                )
        except DomainError as exc:
            return exc.slug
        return answer

    return await asyncio.gather(*(attempt(n, b) for n, b in enumerate(bodies)))


async def _counts(db: Database) -> tuple[int, int, int]:
    async with db.transaction() as session:
        return (
            int(await session.scalar(select(func.count()).select_from(Lead)) or 0),
            int(await session.scalar(select(func.count()).select_from(LeadVault)) or 0),
            int(await session.scalar(select(func.count()).select_from(Order)) or 0),
        )


async def test_a_ping_posted_many_times_at_once_sells_once(
    make_kit: MakeKit, committed_db: Database, databases: list[Database], settings: Settings
) -> None:
    async with committed_db.transaction() as session:
        seller = await make_member(session, "seller")
        await bidding_buyer(session, bid_cents=3000)
    kit = make_kit(settings, committed_db)
    ping_id = await _ping(kit, seller)

    answers = await _post_all(
        databases, settings, seller.id, [post_body(ping_id) for _ in range(60)]
    )

    sold = [a for a in answers if isinstance(a, dict)]
    assert len(sold) == 1 and sold[0]["sold"] is True
    assert {a for a in answers if isinstance(a, str)} == {"ping-already-posted"}
    assert await _counts(committed_db) == (1, 1, 1)
    async with committed_db.transaction() as session:
        (order,) = (await session.scalars(select(Order))).all()
        assert order.id == sold[0]["order_id"]
        report = await verify_ledger(session)
        assert report.ok, report.problems


async def test_posts_racing_for_a_small_daily_cap_never_exceed_it(
    make_kit: MakeKit, committed_db: Database, databases: list[Database], settings: Settings
) -> None:
    cap, posts = 5, 150
    settings = settings.model_copy(update={"ping_duplicate_window_minutes": 0})
    async with committed_db.transaction() as session:
        seller = await make_member(session, "seller")
        buyer, _ = await bidding_buyer(session, bid_cents=3000, daily_cap=cap)
    kit = make_kit(settings, committed_db)
    ping_ids = await asyncio.gather(*(_ping(kit, seller) for _ in range(posts)))
    assert kit.recorder.largest_batch > 1  # recorded in batches, not one by one

    answers = await _post_all(databases, settings, seller.id, [post_body(p) for p in ping_ids])

    assert all(isinstance(a, dict) for a in answers), {a for a in answers if isinstance(a, str)}
    sold = [a for a in answers if isinstance(a, dict) and a["sold"]]
    assert len(sold) == cap
    # The unsold posts kept nothing of their leads.
    assert await _counts(committed_db) == (cap, cap, cap)
    async with committed_db.transaction() as session:
        orders = (await session.scalars(select(Order))).all()
        assert {o.buyer_id for o in orders} == {buyer.id}
        assert sorted(o.id for o in orders) == sorted(a["order_id"] for a in sold)
        outcomes = (await session.scalars(select(Ping.outcome))).all()
        assert sorted(outcomes) == sorted(["sold"] * cap + ["unsold"] * (posts - cap))
        report = await verify_ledger(session)
        assert report.ok, report.problems


async def test_the_same_ping_in_two_processes_is_accepted_once(
    make_kit: MakeKit, committed_db: Database, databases: list[Database], settings: Settings
) -> None:
    async with committed_db.transaction() as session:
        seller = await make_member(session, "seller")
        await bidding_buyer(session, bid_cents=3000)
    kits = [make_kit(settings, db) for db in databases]

    async def attempt(kit: service.PingKit) -> str:
        try:
            return await _ping(kit, seller)
        except service.DuplicatePing as exc:
            return f"duplicate of {exc.extra['duplicate_of']}"

    results = await asyncio.gather(*(attempt(kits[n % ENGINES]) for n in range(30)))

    accepted = [r for r in results if r.startswith("png_")]
    assert len(accepted) == 1
    assert set(results) - set(accepted) == {f"duplicate of {accepted[0]}"}
    async with committed_db.transaction() as session:
        assert await session.scalar(select(func.count()).select_from(Ping)) == 1
