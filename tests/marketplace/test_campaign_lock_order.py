"""Campaign auto-bidding and the closes never deadlock on the buyers' accounts (issue 4, M5):
every transaction that moves the money of more than one buyer (a campaigns' sweep over several
auctions, a close sweep, a close selling a shared lead to several buyers, a bid outbidding
another buyer, a buy-now ending an auction) locks all their accounts up front in one global
order, so two of them never wait for each other.

PostgreSQL only (SQLite's write lock serializes whole transactions). Two tests:

* Two campaign sweeps made to meet at the worst moment: the sweeps split four auctions (FOR
  UPDATE SKIP LOCKED) so that one bids for buyer A then B, the other for B then A, and each
  waits, after its first hold, until the other has made one too (or two seconds have passed).
  Locking one bid at a time, as before, that is a deadlock every time (PostgreSQL kills one
  sweep with SQLSTATE 40P01); with the accounts locked up front the second sweep waits at the
  lock, before any hold, and both succeed.
* Many concurrent campaign sweeps, bids, buy-nows and close sweeps, through several engines (as
  several processes), over a dozen exclusive and shared auctions and six buyers: no transaction
  fails but for a refused bid (no deadlock, no serialization failure), PostgreSQL counts no
  deadlock in the database, and ``ledger verify`` holds, with every held hold a current leader's
  or an order's.
* A buyer's first hold beside a sweep that locked their accounts up front. Those accounts are
  locked only if they exist; a buyer's held account is made at their first hold. Before, a
  hold made it first and then took the money from the wallet: the buyer's own purchase (one
  buyer, no up-front lock) made the held account, whose new row is its own until it commits,
  then waited for the wallet, which the sweep had locked and which now, holding funds for
  the buyer's campaign, waited to make the same account. A deadlock (no lost update: every
  balance moves by a conditional UPDATE). Now a hold that makes the held account locks the
  wallet first, so whoever makes it holds the wallet, in the sweep's order."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from leadmarket.config import Settings
from leadmarket.kit.db import Database, is_deadlock, make_engine, utcnow
from leadmarket.kit.errors import DomainError
from leadmarket.kit.realtime import LocalBroker
from leadmarket.ledger import service as ledger
from leadmarket.ledger.verify import verify_ledger
from leadmarket.marketplace import service
from leadmarket.models import (
    AccountKind,
    Auction,
    Bid,
    HoldStatus,
    Lead,
    LedgerAccount,
    LedgerHold,
    Order,
    User,
)
from leadmarket.orders.service import purchase
from tests.fixtures.auctions import open_auction
from tests.fixtures.campaigns import campaign
from tests.fixtures.ledger import fund, make_member

FUNDS = 1_000_000


async def deadlocks_so_far(database_url: str) -> int:
    """PostgreSQL's count of deadlocks detected in this database (each victim's backend
    reports it when it flushes its statistics, at the latest when it disconnects: so the
    engines of the transactions measured are disposed of before this is asked)."""
    engine = make_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT pg_stat_clear_snapshot()"))
            count = await conn.scalar(
                text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
            )
    finally:
        await engine.dispose()
    return int(count or 0)


async def test_two_campaign_sweeps_bidding_for_two_buyers_in_crossed_order_do_not_deadlock(
    postgres_only: None,
    committed_db: Database,
    database_url: str,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    start = utcnow() + dt.timedelta(hours=1)
    async with committed_db.transaction() as session:
        seller = await make_member(session, "seller")
        a, b = await make_member(session), await make_member(session)
        for buyer, region in ((a, "CA"), (b, "TX")):
            await fund(session, buyer, FUNDS)
            await campaign(session, buyer, filters={"regions": [region]}, bid_cents=3_000)
        # In the order the sweeps take them: the first sweep gets CA then TX (A's campaign,
        # then B's), the other TX then CA (B's, then A's).
        leads = [
            await open_auction(
                session, seller.id, region=region, auction_ends_at=start + dt.timedelta(seconds=n)
            )
            for n, region in enumerate(("CA", "TX", "TX", "CA"))
        ]
        lead_ids, a_id, b_id = [lead.id for lead in leads], a.id, b.id

    real_hold = service.hold_funds
    arrived: dict[int, int] = {}
    both_there = asyncio.Event()

    async def hold_once_both_are_there(session: Any, **kwargs: Any) -> Any:
        held = await real_hold(session, **kwargs)
        arrived[id(session)] = arrived.get(id(session), 0) + 1
        if arrived[id(session)] == 1:  # each sweep's first hold
            if len(arrived) == 2:
                both_there.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(both_there.wait(), 2)
        return held

    monkeypatch.setattr(service, "hold_funds", hold_once_both_are_there)
    engines = [make_engine(database_url, pool_size=2) for _ in range(2)]
    before = await deadlocks_so_far(database_url)

    async def sweep(engine: AsyncEngine) -> int:
        async with Database(engine).transaction() as session:
            return await service.campaigns_bid_on_new_auctions(
                session, settings, LocalBroker(), limit=2
            )

    try:
        swept = await asyncio.gather(*(sweep(engine) for engine in engines), return_exceptions=True)
    finally:
        for engine in engines:
            await engine.dispose()
    # Locked one bid at a time, one sweep is here a DeadlockDetectedError (SQLSTATE 40P01).
    assert swept == [2, 2], [repr(result) for result in swept]

    assert await deadlocks_so_far(database_url) == before
    async with committed_db.transaction() as session:
        for lead_id, leader in zip(lead_ids, (a_id, b_id, b_id, a_id), strict=True):
            auction = await session.get(Auction, lead_id)
            assert auction is not None and auction.campaigns_bid_at is not None
            assert auction.leader_id == leader
        held = list(
            await session.scalars(
                select(LedgerHold.buyer_id).where(LedgerHold.status == HoldStatus.HELD.value)
            )
        )
        assert sorted(held) == sorted([a_id, a_id, b_id, b_id])
        report = await verify_ledger(session)
        assert report.ok, report.problems


REGIONS = ("CA", "TX", "NY")


async def test_many_concurrent_campaign_sweeps_bids_and_closes_never_deadlock(
    postgres_only: None, committed_db: Database, database_url: str, settings: Settings
) -> None:
    rng = random.Random(4)
    quiet = settings.model_copy(update={"auction_extension_minutes": 0})
    start = utcnow() + dt.timedelta(hours=1)
    async with committed_db.transaction() as session:
        seller = await make_member(session, "seller")
        buyers = [await make_member(session) for _ in range(6)]
        for n, buyer in enumerate(buyers):
            await fund(session, buyer, FUNDS)
            # Each buyer's campaign wants two of the three regions, each its own bid.
            await campaign(
                session,
                buyer,
                filters={"regions": [REGIONS[n % 3], REGIONS[(n + 1) % 3]]},
                bid_cents=2_000 + 250 * n,
            )
        leads = [
            await open_auction(
                session,
                seller.id,
                region=REGIONS[n % 3],
                exclusive=n % 2 == 0,
                max_buyers=1 if n % 2 == 0 else 3,
                buy_now_cents=9_000 if n % 4 == 1 else None,
                auction_ends_at=start + dt.timedelta(seconds=n),
            )
            for n in range(12)
        ]
        lead_ids = [lead.id for lead in leads]
        buyer_ids = [buyer.id for buyer in buyers]

    engines = [make_engine(database_url, pool_size=4) for _ in range(3)]
    dbs = [Database(engine) for engine in engines]
    before = await deadlocks_so_far(database_url)
    failures: list[BaseException] = []
    refused = 0

    async def run(work: Callable[[Any], Awaitable[object]]) -> None:
        nonlocal refused
        try:
            async with rng.choice(dbs).transaction() as session:
                await work(session)
        except DomainError:
            refused += 1  # a bid too low, a lead sold meanwhile: refusals, not failures
        except Exception as exc:
            failures.append(exc)

    def sweep(session: Any) -> Awaitable[int]:
        return service.campaigns_bid_on_new_auctions(session, quiet, LocalBroker(), limit=3)

    def a_bid(session: Any) -> Awaitable[object]:
        async def go() -> object:
            buyer = await session.get(User, rng.choice(buyer_ids))
            return await service.place_bid(
                session,
                quiet,
                LocalBroker(),
                lead_id=rng.choice(lead_ids),
                buyer=buyer,
                amount_cents=rng.randrange(1_000, 8_000, 50),
            )

        return go()

    def a_purchase(session: Any) -> Awaitable[object]:
        async def go() -> object:
            buyer = await session.get(User, rng.choice(buyer_ids))
            return await purchase(
                session,
                quiet,
                lead_id=rng.choice(lead_ids[1::4]),
                buyer=buyer,
                idempotency_key=None,
            )

        return go()

    def close_sweep(session: Any) -> Awaitable[int]:
        return service.close_due_auctions(session, quiet, LocalBroker(), limit=3)

    try:
        bidding = [sweep] * 6 + [a_bid] * 60 + [a_purchase] * 3
        rng.shuffle(bidding)
        await asyncio.gather(*(run(work) for work in bidding))
        async with committed_db.transaction() as session:
            past = utcnow() - dt.timedelta(seconds=1)
            await session.execute(update(Lead).values(auction_ends_at=past))
            await session.execute(update(Auction).values(ends_at=past))
        closing = [close_sweep] * 4 + [
            lambda s, lead_id=lead_id: service.close_at_end(s, quiet, LocalBroker(), lead_id)
            for lead_id in lead_ids
        ]
        rng.shuffle(closing)
        await asyncio.gather(*(run(work) for work in closing))
    finally:
        for engine in engines:
            await engine.dispose()

    deadlocked = [f for f in failures if is_deadlock(f)]
    assert not failures, (f"{len(deadlocked)} deadlocked", [repr(f) for f in failures])
    assert await deadlocks_so_far(database_url) == before
    async with committed_db.transaction() as session:
        assert await session.scalar(select(Bid.id).where(Bid.campaign_id.is_not(None)).limit(1))
        auctions = list(await session.scalars(select(Auction)))
        assert auctions and all(a.closed_at is not None for a in auctions)
        orders = list(await session.scalars(select(Order)))
        assert orders
        held = set(
            await session.scalars(
                select(LedgerHold.reference).where(LedgerHold.status == HoldStatus.HELD.value)
            )
        )
        assert held == {o.hold_reference for o in orders}  # every bid's hold came back
        for lead_id in lead_ids:
            lead = await session.get(Lead, lead_id)
            assert lead is not None and lead.status in ("sold", "unsold")
            sold = [o for o in orders if o.lead_id == lead_id]
            assert len(sold) == lead.sold_count <= lead.max_buyers
        report = await verify_ledger(session)
        assert report.ok, report.problems
    assert refused < len(bidding)


ROLE = "test_role"  # session.info key telling the hooks which transaction is which


async def test_a_first_hold_beside_a_sweep_that_locked_the_wallet_does_not_deadlock(
    postgres_only: None,
    committed_db: Database,
    database_url: str,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with committed_db.transaction() as session:
        seller = await make_member(session, "seller")
        buyer = await make_member(session)
        await fund(session, buyer, 100_000)  # a wallet, and no held account yet
        await campaign(session, buyer, bid_cents=3_000)
        auction = await open_auction(
            session, seller.id, auction_ends_at=utcnow() + dt.timedelta(hours=1)
        )
        fixed = await open_auction(
            session, seller.id, sale_mode="fixed", price_cents=2_000, auction_ends_at=None
        )
        buyer_id, auction_id, fixed_id = buyer.id, auction.id, fixed.id

    held_made = asyncio.Event()  # the purchase has made the held account
    wallet_locked = asyncio.Event()  # the sweep has locked the buyer's wallet
    real_open, real_lock = ledger.open_account, service.lock_buyer_accounts

    async def open_account(session: Any, kind: AccountKind, *args: Any) -> Any:
        account = await real_open(session, kind, *args)
        if kind is AccountKind.BUYER_HELD and session.info.get(ROLE) == "purchase":
            held_made.set()
            with contextlib.suppress(TimeoutError):  # the worst moment: the sweep's lock taken
                await asyncio.wait_for(wallet_locked.wait(), 2)
        return account

    async def lock_buyer_accounts(session: Any, currency: Any, buyer_ids: Collection[str]) -> None:
        await real_lock(session, currency, buyer_ids)
        if session.info.get(ROLE) == "sweep":
            with contextlib.suppress(TimeoutError):  # the worst moment: the held account made
                await asyncio.wait_for(held_made.wait(), 2)
            wallet_locked.set()

    monkeypatch.setattr(ledger, "open_account", open_account)
    monkeypatch.setattr(service, "lock_buyer_accounts", lock_buyer_accounts)
    engines = [make_engine(database_url, pool_size=1) for _ in range(2)]

    async def sweep() -> int:
        async with Database(engines[0]).transaction() as session:
            session.info[ROLE] = "sweep"
            return await service.campaigns_bid_on_new_auctions(session, settings, LocalBroker())

    async def buy() -> tuple[int, str]:
        async with Database(engines[1]).transaction() as session:
            session.info[ROLE] = "purchase"
            buyer = await session.get(User, buyer_id)
            assert buyer is not None
            return await purchase(
                session, settings, lead_id=fixed_id, buyer=buyer, idempotency_key=None
            )

    try:
        results = await asyncio.gather(sweep(), buy(), return_exceptions=True)
    finally:
        for engine in engines:
            await engine.dispose()
    assert not any(is_deadlock(r) for r in results if isinstance(r, BaseException)), results
    assert results[0] == 1 and isinstance(results[1], tuple), [repr(r) for r in results]

    async with committed_db.transaction() as session:
        auction_row = await session.get(Auction, auction_id)
        assert auction_row is not None and auction_row.leader_id == buyer_id
        held = list(
            await session.scalars(
                select(LedgerHold.amount_cents).where(
                    LedgerHold.buyer_id == buyer_id, LedgerHold.status == HoldStatus.HELD.value
                )
            )
        )
        assert sorted(held) == [2_000, 3_000]
        accounts = list(
            await session.scalars(
                select(LedgerAccount.balance_cents)
                .where(LedgerAccount.owner_key == buyer_id)
                .order_by(LedgerAccount.kind)
            )
        )
        assert sorted(accounts) == [5_000, 95_000]  # held, wallet: one account of each
        report = await verify_ledger(session)
        assert report.ok, report.problems
