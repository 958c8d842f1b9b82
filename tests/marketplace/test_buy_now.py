"""Buy-now on an auctioned lead (M1, M5): the sale that takes the lead's last place ends its
auction in the same transaction, so the bidders' holds are back in their wallets in the
answer's own commit (not at the next sweep), the ledger verifies, and every bidder is told.
Racing bids never leave a hold behind, on SQLite and PostgreSQL, through several engines."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.db import Database, make_engine
from leadmarket.kit.errors import DomainError
from leadmarket.kit.jobs import Worker
from leadmarket.kit.realtime import LocalBroker
from leadmarket.ledger.service import wallet_summary
from leadmarket.ledger.verify import verify_ledger
from leadmarket.marketplace import service
from leadmarket.models import (
    Auction,
    Bid,
    HoldStatus,
    Job,
    LedgerHold,
    Order,
    OutboundMail,
    User,
)
from leadmarket.notifications import notify
from leadmarket.orders.service import purchase
from leadmarket.tasks import build_registry, build_services
from tests.fixtures.accounts import signed_in
from tests.fixtures.auctions import open_auction
from tests.fixtures.ledger import fund, make_member
from tests.ledger.test_wallet_page import field
from tests.orders.test_pages import web_buyer

FUNDS = 20_000
BUY_NOW = 6_000


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # No anti-sniping: these auctions end by a buy-now, not by an ever-later end.
    return settings.model_copy(update={"auction_extension_minutes": 0})


async def funded_buyer(
    client: httpx.AsyncClient, session: AsyncSession
) -> tuple[str, dict[str, str]]:
    account, auth = await signed_in(client, "buyer")
    user = await session.get(User, str(account["id"]))
    assert user is not None
    await fund(session, user, FUNDS)
    return user.id, auth


async def test_buy_now_frees_every_bidders_hold_in_the_same_transaction(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, db: Database
) -> None:
    seller, _ = await signed_in(client, "seller")
    ana, ana_auth = await funded_buyer(client, session)
    ben, ben_auth = await funded_buyer(client, session)
    _, cy_auth = await funded_buyer(client, session)
    lead = await open_auction(session, str(seller["id"]), buy_now_cents=BUY_NOW)
    lead_id = lead.id
    await session.commit()
    for auth, cents in ((ana_auth, 2_000), (ben_auth, 3_000), (ana_auth, 4_000)):
        placed = await client.post(
            f"/api/v1/leads/{lead_id}/bids", json={"amount_cents": cents}, headers=auth
        )
        assert placed.status_code == 201, placed.text
    wallet = await client.get("/api/v1/wallet", headers=ana_auth)
    assert wallet.json()["held_cents"] == 4_000  # Ana leads

    bought = await client.post(f"/api/v1/leads/{lead_id}/purchase", headers=cy_auth)
    assert bought.status_code == 201, bought.text

    # Right after the answer: no bidder has anything held; the buyer holds the price.
    for auth, held in ((ana_auth, 0), (ben_auth, 0), (cy_auth, BUY_NOW)):
        wallet = await client.get("/api/v1/wallet", headers=auth)
        assert wallet.json()["held_cents"] == held, wallet.json()
    auction = await session.get(Auction, lead_id, populate_existing=True)
    assert auction is not None and auction.outcome == "bought_outright"
    assert auction.closed_at is not None
    late = await client.post(
        f"/api/v1/leads/{lead_id}/bids", json={"amount_cents": 9_000}, headers=ben_auth
    )
    assert late.status_code in (404, 409)
    statuses = set(await session.scalars(select(Bid.status).where(Bid.lead_id == lead_id)))
    assert "leading" not in statuses
    report = await verify_ledger(session)
    assert report.ok, report.problems
    assert await service.close_due_auctions(session, settings, LocalBroker()) == 0

    # Both bidders are told the auction ended by a buy-now; the seller hears of the sale.
    events = sorted(
        j.payload["event"]
        for j in await session.scalars(select(Job).where(Job.kind == notify.NOTIFY_JOB))
    )
    assert events == ["auction_ended", "lead_sold", "outbid", "outbid"]
    worker = Worker(db, build_registry(), build_services(settings), settings)
    while await worker.run_once():
        pass
    told = list(
        await session.scalars(
            select(OutboundMail).where(OutboundMail.template == "notify/auction_lost")
        )
    )
    assert sorted(m.user_id for m in told) == sorted([ana, ben])
    assert all("buy-now price, which ended the auction" in m.text_body for m in told)


async def test_a_shared_lead_keeps_its_auction_while_places_are_left(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    seller = await make_member(session, "seller")
    ana, cy = await make_member(session), await make_member(session)
    for buyer in (ana, cy):
        await fund(session, buyer, FUNDS)
    lead = await open_auction(
        session, seller.id, buy_now_cents=BUY_NOW, exclusive=False, max_buyers=2
    )
    await service.place_bid(
        session, settings, LocalBroker(), lead_id=lead.id, buyer=ana, amount_cents=3_000
    )
    await purchase(session, settings, lead_id=lead.id, buyer=cy, idempotency_key=None)

    auction = await session.get(Auction, lead.id, populate_existing=True)
    assert auction is not None and auction.closed_at is None  # one place is still to win
    assert (await wallet_summary(session, ana.id, "USD")).held_cents == 3_000
    assert (await verify_ledger(session)).ok


BIDS = 120
BUY_NOWS = 6
BUYERS = 20
ENGINES = 3
EXPECTED_REFUSALS = {
    "bid-too-low",
    "auction-closed",
    "not-found",
    "lead-not-for-sale",
    "already-bought",
}


async def test_buy_now_racing_bids_never_leaves_a_hold_behind(
    committed_db: Database, database_url: str, settings: Settings
) -> None:
    async with committed_db.transaction() as session:
        seller = await make_member(session, "seller")
        buyers = [await make_member(session) for _ in range(BUYERS)]
        for buyer in buyers:
            await fund(session, buyer, 1_000_000)
        lead = await open_auction(session, seller.id, buy_now_cents=BUY_NOW * 10)
        lead_id, buyer_ids = lead.id, [b.id for b in buyers]
    rng = random.Random(7)
    # Rising bids, with the buy-nows spread through the second half of the race.
    moves: list[tuple[str, str, int]] = [
        ("bid", rng.choice(buyer_ids), 100 + 300 * n + rng.randrange(0, 2_000)) for n in range(BIDS)
    ]
    for n in range(BUY_NOWS):
        moves.insert(BIDS // 2 + n * (BIDS // (2 * BUY_NOWS)), ("buy", rng.choice(buyer_ids), 0))
    engines = [make_engine(database_url, pool_size=4) for _ in range(ENGINES)]
    databases = [Database(engine) for engine in engines]
    refusals: Counter[str] = Counter()

    async def move(n: int) -> str | None:
        kind, buyer_id, cents = moves[n]
        async with databases[n % ENGINES].transaction() as session:
            buyer = await session.get(User, buyer_id)
            assert buyer is not None
            try:
                if kind == "buy":
                    _, order_id = await purchase(
                        session, settings, lead_id=lead_id, buyer=buyer, idempotency_key=None
                    )
                    return order_id
                await service.place_bid(
                    session,
                    settings,
                    LocalBroker(),
                    lead_id=lead_id,
                    buyer=buyer,
                    amount_cents=cents,
                )
            except DomainError as refused:
                # Too low, or too late: the lead was bought (then it is hidden, or closed).
                if refused.slug not in EXPECTED_REFUSALS:
                    raise
                refusals[refused.slug] += 1
        return None

    try:
        results = await asyncio.gather(*(move(n) for n in range(len(moves))))
    finally:
        for engine in engines:
            await engine.dispose()

    (order_id,) = [r for r in results if r is not None]
    async with committed_db.transaction() as session:
        (order,) = await session.scalars(select(Order).where(Order.lead_id == lead_id))
        assert order.id == order_id and order.via == "buy_now"
        held = list(
            await session.scalars(
                select(LedgerHold).where(LedgerHold.status == HoldStatus.HELD.value)
            )
        )
        assert [h.reference for h in held] == [order_id]  # the sale's, and no bid's
        auction = await session.get(Auction, lead_id)
        assert auction is not None and auction.outcome == "bought_outright"
        statuses = set(await session.scalars(select(Bid.status).where(Bid.lead_id == lead_id)))
        assert "leading" not in statuses
        # A real race: bids were judged before the sale (one of them led and was held), and
        # others came too late for it.
        assert "outbid" in statuses and "lost" in statuses
        assert refusals["not-found"] + refusals["auction-closed"] > 0, refusals
        for buyer_id in buyer_ids:
            wallet = await wallet_summary(session, buyer_id, "USD")
            expected = BUY_NOW * 10 if buyer_id == order.buyer_id else 0
            assert wallet.held_cents == expected
        report = await verify_ledger(session)
        assert report.ok, report.problems


async def test_the_live_pages_hear_of_a_buy_now_only_once_it_went_through(
    committed_db: Database, settings: Settings
) -> None:
    async with committed_db.transaction() as session:
        seller = await make_member(session, "seller")
        ana, poor, cy = [await make_member(session) for _ in range(3)]
        await fund(session, ana, FUNDS)
        await fund(session, poor, BUY_NOW - 1)
        await fund(session, cy, FUNDS)
        lead = await open_auction(session, seller.id, buy_now_cents=BUY_NOW)
        await service.place_bid(
            session, settings, LocalBroker(), lead_id=lead.id, buyer=ana, amount_cents=3_000
        )
        lead_id, ana_id, poor_id, cy_id = lead.id, ana.id, poor.id, cy.id
    broker = LocalBroker()

    async def buy_now(buyer_id: str) -> None:
        async with committed_db.transaction() as session:
            buyer = await session.get(User, buyer_id)
            assert buyer is not None
            await purchase(
                session, settings, lead_id=lead_id, buyer=buyer, idempotency_key=None, broker=broker
            )

    async with broker.subscribe(service.channel(lead_id)) as page:
        with pytest.raises(DomainError) as refused:  # cannot pay: nothing ended, nobody told
            await buy_now(poor_id)
        assert refused.value.slug == "insufficient-funds"
        assert await page.next(0.2) is None
        async with committed_db.transaction() as session:
            assert (await wallet_summary(session, ana_id, "USD")).held_cents == 3_000

        await buy_now(cy_id)
        told = await page.next(2)
    assert told is not None
    assert (told["closed"], told["outcome"]) == (True, "bought_outright")


async def test_a_buy_now_refused_on_the_page_tells_the_live_pages_nothing(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, app: Any
) -> None:
    seller = await make_member(session, "seller")
    ana = await make_member(session)
    await fund(session, ana, FUNDS)
    lead = await open_auction(session, seller.id, buy_now_cents=BUY_NOW)
    await service.place_bid(
        session, settings, LocalBroker(), lead_id=lead.id, buyer=ana, amount_cents=3_000
    )
    await web_buyer(client, session, BUY_NOW - 1)  # signed in, short of the price
    confirm = await client.get(f"/market/leads/{lead.id}")
    assert confirm.status_code == 200, confirm.text
    form = {
        "csrf_token": field(confirm.text, "csrf_token"),
        "purchase_key": field(confirm.text, "purchase_key"),
    }
    async with app.state.broker.subscribe(service.channel(lead.id)) as page:
        refused = await client.post(f"/market/leads/{lead.id}/purchase", data=form)
        assert refused.status_code >= 400 and "wallet" in refused.text.lower()
        assert await page.next(0.2) is None  # the auction goes on; its pages hear nothing
    auction = await session.get(Auction, lead.id, populate_existing=True)
    assert auction is not None and auction.closed_at is None
    assert (await wallet_summary(session, ana.id, "USD")).held_cents == 3_000
