"""Two bids by the same two buyers on different leads, each outbidding the other, never
deadlock (issue 4): each bid takes the bidder's hold and releases the outbid leader's, so the
two bids touch the same four accounts. They are locked in one global order before either moves.

The bids run through two engines (as two server processes would) and are made to meet at the
worst moment: each waits, before releasing the outbid leader's hold, until the other has got
as far (or two seconds have passed: with the global order the second bid cannot get there
while the first one holds the accounts)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from sqlalchemy import select

from leadmarket.config import Settings
from leadmarket.kit.db import Database, make_engine
from leadmarket.kit.realtime import LocalBroker
from leadmarket.ledger.service import wallet_summary
from leadmarket.ledger.verify import verify_ledger
from leadmarket.marketplace import service
from leadmarket.models import Auction, HoldStatus, LedgerHold, User
from tests.fixtures.auctions import open_auction
from tests.fixtures.ledger import fund, make_member

FUNDS = 100_000


async def _bid(db: Database, settings: Settings, lead_id: str, buyer_id: str, cents: int) -> str:
    async with db.transaction() as session:
        buyer = await session.get(User, buyer_id)
        assert buyer is not None
        placed = await service.place_bid(
            session, settings, LocalBroker(), lead_id=lead_id, buyer=buyer, amount_cents=cents
        )
        return placed.id


async def test_crossed_outbids_by_two_buyers_on_two_leads_do_not_deadlock(
    committed_db: Database,
    database_url: str,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with committed_db.transaction() as session:
        seller = await make_member(session, "seller")
        x, y = await make_member(session), await make_member(session)
        for buyer in (x, y):
            await fund(session, buyer, FUNDS)
        first, second = (
            await open_auction(session, seller.id),
            await open_auction(session, seller.id),
        )
    await _bid(committed_db, settings, first.id, y.id, 1_000)  # y leads the first lead
    await _bid(committed_db, settings, second.id, x.id, 1_000)  # x leads the second

    real_release = service.release_hold
    arrived = 0
    both_there = asyncio.Event()

    async def release_once_both_are_there(session: Any, reference: str) -> Any:
        nonlocal arrived
        arrived += 1
        if arrived == 2:
            both_there.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(both_there.wait(), 2)
        return await real_release(session, reference)

    monkeypatch.setattr(service, "release_hold", release_once_both_are_there)
    engines = [make_engine(database_url, pool_size=2) for _ in range(2)]
    try:
        x_bid, y_bid = await asyncio.gather(
            _bid(Database(engines[0]), settings, first.id, x.id, 5_000),
            _bid(Database(engines[1]), settings, second.id, y.id, 5_000),
        )
    finally:
        for engine in engines:
            await engine.dispose()

    async with committed_db.transaction() as session:
        for lead_id, leader, bid_id in ((first.id, x.id, x_bid), (second.id, y.id, y_bid)):
            auction = await session.get(Auction, lead_id)
            assert auction is not None
            assert (auction.leader_id, auction.leader_bid_id) == (leader, bid_id)
        held = list(
            await session.scalars(
                select(LedgerHold.reference).where(LedgerHold.status == HoldStatus.HELD.value)
            )
        )
        assert sorted(held) == sorted([x_bid, y_bid])
        for buyer in (x, y):
            wallet = await wallet_summary(session, buyer.id, "USD")
            assert (wallet.balance_cents, wallet.held_cents) == (FUNDS - 5_000, 5_000)
        report = await verify_ledger(session)
        assert report.ok, report.problems
