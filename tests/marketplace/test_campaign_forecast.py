"""A campaign's bid is not lost when the sweep's forecast of who can pay is wrong (issue 4 §2,
M5). The campaigns' sweep reads the wallets without a lock to decide whose accounts to lock up
front (in the ledger's global order, so that it cannot deadlock); a wallet may change between
that read and the lock. Whatever changed, the sweep must end as if it had judged the bids on
the wallets as they are under the lock: the best campaign that can pay leads.

* A wallet that grew: the best campaign's buyer had too little when the forecast read it, then
  a deposit landed. Before, the sweep skipped that campaign (its accounts were not locked) and
  the next one led.
* A wallet that shrank: the forecast's pick spent its money elsewhere before the lock, so its
  bid is refused. Before, the next campaign, able to pay but not locked, was skipped too, and
  the auction got no bid at all.

The real races need a second transaction committing between the sweep's read and its lock:
PostgreSQL only (SQLite's BEGIN IMMEDIATE holds the write lock for the sweep's whole
transaction, so nothing can change in between). On both databases, a forecast made on a
stale read (as the race leaves it) is corrected."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.db import Database, make_engine, utcnow
from leadmarket.kit.realtime import LocalBroker
from leadmarket.ledger import service as ledger
from leadmarket.ledger.verify import verify_ledger
from leadmarket.marketplace import service
from leadmarket.models import Auction, Bid, HoldStatus, LedgerHold
from leadmarket.payments.processor import SandboxProcessor
from tests.fixtures.auctions import open_auction
from tests.fixtures.campaigns import campaign
from tests.fixtures.ledger import fund, make_member

BEST, NEXT = 5_000, 3_000  # the two campaigns' bids


async def _market(session: AsyncSession, best_funds: int) -> tuple[str, str, str]:
    """One open auction and two buyers' campaigns on it: ``best`` bids BEST with
    ``best_funds`` in its wallet, ``next`` bids NEXT and can pay. (lead, best, next) ids."""
    seller = await make_member(session, "seller")
    best, runner_up = await make_member(session), await make_member(session)
    if best_funds:
        await fund(session, best, best_funds)
    await fund(session, runner_up, 100_000)
    await campaign(session, best, bid_cents=BEST)
    await campaign(session, runner_up, bid_cents=NEXT)
    lead = await open_auction(session, seller.id, auction_ends_at=utcnow() + dt.timedelta(hours=1))
    return lead.id, best.id, runner_up.id


def _after_first_forecast(
    monkeypatch: pytest.MonkeyPatch,
    meanwhile: Callable[[], Awaitable[None]] | None = None,
    stale: dict[str, int] | None = None,
) -> None:
    """Hook the sweep's first unlocked read of the wallets: run ``meanwhile`` (another
    transaction, committed) right after it, and/or answer ``stale`` balances instead."""
    real = service.wallet_balances
    calls = 0

    async def read(session: Any, currency: str, buyer_ids: Collection[str]) -> dict[str, int]:
        nonlocal calls
        calls += 1
        balances = await real(session, currency, buyer_ids)
        if calls == 1:
            if meanwhile is not None:
                await meanwhile()
            if stale is not None:
                balances.update({k: v for k, v in stale.items() if k in balances})
        return balances

    monkeypatch.setattr(service, "wallet_balances", read)


async def _leader_and_bids(session: AsyncSession, lead_id: str) -> tuple[str | None, int]:
    auction = await session.get(Auction, lead_id, populate_existing=True)
    bids = list(await session.scalars(select(Bid).where(Bid.lead_id == lead_id)))
    return (auction.leader_id if auction else None), len(bids)


@dataclass(frozen=True)
class Outcome:
    best_id: str
    next_id: str
    leader_id: str | None
    bids: int
    holding: list[str]  # the buyers with funds held, one entry per hold


Meanwhile = Callable[[AsyncSession, str], Awaitable[object]]
Race = Callable[[int, Meanwhile], Awaitable[Outcome]]


@pytest.fixture
def race(
    postgres_only: None,
    committed_db: Database,
    database_url: str,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> Race:
    """The market of :func:`_market` with ``best_funds``; the campaigns' sweep run while
    another engine (as another process) commits ``meanwhile(session, best's id)`` between
    the sweep's forecast and its lock. What came of it, once the ledger is verified."""

    async def run(best_funds: int, meanwhile: Meanwhile) -> Outcome:
        async with committed_db.transaction() as session:
            lead_id, best_id, next_id = await _market(session, best_funds)
        engine = make_engine(database_url, pool_size=1)

        async def elsewhere() -> None:
            async with Database(engine).transaction() as other:
                await meanwhile(other, best_id)

        _after_first_forecast(monkeypatch, meanwhile=elsewhere)
        try:
            async with committed_db.transaction() as session:
                assert await service.campaigns_bid_on_new_auctions(session, settings, LocalBroker())
        finally:
            await engine.dispose()
        async with committed_db.transaction() as session:
            leader_id, bids = await _leader_and_bids(session, lead_id)
            holding = await session.scalars(
                select(LedgerHold.buyer_id).where(LedgerHold.status == HoldStatus.HELD.value)
            )
            report = await verify_ledger(session)
            assert report.ok, report.problems
            return Outcome(best_id, next_id, leader_id, bids, sorted(holding))

    return run


async def test_a_deposit_between_the_forecast_and_the_lock_lets_the_best_campaign_lead(
    race: Race,
) -> None:
    outcome = await race(
        1_000,
        lambda other, best_id: ledger.deposit(
            other, SandboxProcessor(), member_id=best_id, amount_cents=10_000, currency="USD"
        ),
    )
    # Before: the best campaign was skipped (its accounts unlocked) and `next` led.
    assert outcome.leader_id == outcome.best_id, outcome
    assert outcome.bids == 2
    assert outcome.holding == [outcome.best_id]


async def test_a_spend_between_the_forecast_and_the_lock_lets_the_next_campaign_lead(
    race: Race,
) -> None:
    outcome = await race(
        6_000,
        lambda other, best_id: ledger.hold_funds(
            other, buyer_id=best_id, amount_cents=4_000, currency="USD", reference="elsewhere"
        ),
    )
    # Before: `best` was refused (2,000 left) and `next`, unlocked, was skipped: no bid.
    assert outcome.leader_id == outcome.next_id, outcome
    assert outcome.bids == 1
    assert outcome.holding == sorted([outcome.best_id, outcome.next_id])


async def test_a_forecast_made_on_a_stale_wallet_is_corrected(
    session: AsyncSession, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    lead_id, best_id, next_id = await _market(session, best_funds=10_000)
    # The forecast reads `best` as it was before its deposit landed.
    _after_first_forecast(monkeypatch, stale={best_id: 0})
    assert await service.campaigns_bid_on_new_auctions(session, settings, LocalBroker())
    leader, bids = await _leader_and_bids(session, lead_id)
    assert leader == best_id, (leader, best_id, next_id)
    assert bids == 2
    auction = await session.get(Auction, lead_id)
    assert auction is not None and auction.leader_max_cents == BEST
    report = await verify_ledger(session)
    assert report.ok, report.problems
