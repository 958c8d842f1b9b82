"""One leader at every moment (issue 4 §7): hundreds of concurrent bids on one lead, each in its
own transaction, through several engines (as separate server processes would), on SQLite and
PostgreSQL. Afterwards the bids, replayed in the order they were judged, must reproduce every
recorded price and leader; exactly the leader's maximum is held; the ledger verifies."""

from __future__ import annotations

import asyncio
import random

from sqlalchemy import select

from leadmarket.config import Settings
from leadmarket.kit.db import Database, make_engine
from leadmarket.kit.errors import DomainError
from leadmarket.kit.realtime import LocalBroker
from leadmarket.ledger.service import wallet_summary
from leadmarket.ledger.verify import verify_ledger
from leadmarket.marketplace import service
from leadmarket.models import Auction, Bid, HoldStatus, LedgerHold, User
from tests.fixtures.auctions import open_auction
from tests.fixtures.ledger import fund, make_member

BIDS = 300
BUYERS = 30
ENGINES = 3
FUNDS = 1_000_000


async def make_auction(db: Database) -> tuple[str, list[str]]:
    async with db.transaction() as session:
        seller = await make_member(session, "seller")
        buyers = [await make_member(session) for _ in range(BUYERS)]
        for buyer in buyers:
            await fund(session, buyer, FUNDS)
        lead = await open_auction(session, seller.id)
        return lead.id, [b.id for b in buyers]


def replay(bids: list[Bid], opening: int, increment: int) -> list[tuple[int, bool]]:
    """The proxy auction recomputed from the bids alone, written independently of the service:
    (price, did this bid lead) after each bid."""
    leader: str | None = None
    leader_max = 0
    price = 0
    answers = []
    for bid in bids:
        if leader is None:
            leader, leader_max, price, leads = bid.buyer_id, bid.max_cents, opening, True
        elif bid.buyer_id == leader:
            leader_max, leads = bid.max_cents, True
        elif bid.max_cents > leader_max:
            price = min(bid.max_cents, leader_max + increment)
            leader, leader_max, leads = bid.buyer_id, bid.max_cents, True
        else:
            price, leads = min(leader_max, bid.max_cents + increment), False
        answers.append((price, leads))
    return answers


async def test_hundreds_of_concurrent_bids_leave_one_consistent_leader(
    committed_db: Database, database_url: str, settings: Settings
) -> None:
    lead_id, buyer_ids = await make_auction(committed_db)
    engines = [make_engine(database_url, pool_size=5) for _ in range(ENGINES)]
    databases = [Database(engine) for engine in engines]
    rng = random.Random(4)
    # Rising offers with noise, so that many beat the price they meet and some do not.
    offers = [(rng.choice(buyer_ids), 100 + 200 * n + rng.randrange(0, 5_000)) for n in range(BIDS)]

    async def place(n: int) -> bool:
        buyer_id, amount = offers[n]
        async with databases[n % ENGINES].transaction() as session:
            buyer = await session.get(User, buyer_id)
            assert buyer is not None
            try:
                await service.place_bid(
                    session,
                    settings,
                    LocalBroker(),
                    lead_id=lead_id,
                    buyer=buyer,
                    amount_cents=amount,
                )
            except DomainError as refused:
                if refused.slug != "bid-too-low":  # the only refusal this race may produce
                    raise
                return False
        return True

    try:
        accepted = await asyncio.gather(*(place(n) for n in range(BIDS)))
    finally:
        for engine in engines:
            await engine.dispose()
    assert sum(accepted) > BIDS // 10  # enough of them got through to make this a real test

    async with committed_db.transaction() as session:
        bids = list(
            await session.scalars(
                select(Bid).where(Bid.lead_id == lead_id).order_by(Bid.created_at, Bid.id)
            )
        )
        assert len(bids) == sum(accepted)
        expected = replay(
            bids, settings.auction_opening_bid_cents, settings.auction_min_increment_cents
        )
        assert [(b.price_after_cents, b.leading_after) for b in bids] == expected

        leading = [b for b in bids if b.status == "leading"]
        assert len(leading) == 1
        auction = await session.get(Auction, lead_id)
        assert auction is not None and auction.leader_bid_id == leading[0].id
        assert auction.leader_max_cents == max(b.max_cents for b in bids)
        assert auction.bid_count == len(bids)

        held = list(
            await session.scalars(
                select(LedgerHold).where(LedgerHold.status == HoldStatus.HELD.value)
            )
        )
        assert [(h.reference, h.amount_cents) for h in held] == [
            (leading[0].id, leading[0].max_cents)
        ]
        for buyer_id in buyer_ids:
            wallet = await wallet_summary(session, buyer_id, "USD")
            assert wallet.balance_cents + wallet.held_cents == FUNDS
        report = await verify_ledger(session)
        assert report.ok, report.problems
