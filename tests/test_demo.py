"""The demo market (`leadmarket demo`, `make run`): members, leads in every vertical, buyers
with money and campaigns; loading twice changes nothing; and with the sweeps running, it lives:
campaigns bid on new auctions, a new demo lead comes in, auctions end and sell."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select, update

from leadmarket.config import Settings
from leadmarket.demo import DEMO_CAMPAIGNS, DEMO_WALLET_CENTS, load_demo_data, post_demo_lead
from leadmarket.kit.db import Database, utcnow
from leadmarket.kit.realtime import LocalBroker
from leadmarket.ledger.service import wallet_summary
from leadmarket.ledger.verify import verify_ledger
from leadmarket.marketplace.service import campaigns_bid_on_new_auctions, close_due_auctions
from leadmarket.models import Bid, Campaign, Lead, Order, User
from leadmarket.verticals.registry import all_verticals

pytestmark = pytest.mark.committed


async def counts(db: Database) -> tuple[int, int, int]:
    async with db.transaction() as session:
        return (
            int(await session.scalar(select(func.count()).select_from(User)) or 0),
            int(await session.scalar(select(func.count()).select_from(Lead)) or 0),
            int(await session.scalar(select(func.count()).select_from(Campaign)) or 0),
        )


async def test_the_demo_loads_once_and_its_market_lives(
    committed_db: Database, settings: Settings
) -> None:
    message = await load_demo_data(settings)
    assert "lead-exchange-demo-2026" in message
    first = await counts(committed_db)
    assert await load_demo_data(settings) and await counts(committed_db) == first  # idempotent

    async with committed_db.transaction() as session:
        verticals = set(await session.scalars(select(Lead.vertical).distinct()))
        assert verticals == {v.slug for v in all_verticals()}
        assert first[2] == sum(len(c) for c in DEMO_CAMPAIGNS.values())
        buyer = await session.scalar(select(User).where(User.username == "lakeside_mortgage"))
        assert buyer is not None
        wallet = await wallet_summary(session, buyer.id, "USD")
        assert wallet.balance_cents == DEMO_WALLET_CENTS

    broker = LocalBroker()
    async with committed_db.transaction() as session:
        assert await campaigns_bid_on_new_auctions(session, settings, broker, limit=500) > 0
        assert await session.scalar(select(func.count()).where(Bid.campaign_id.is_not(None)))
        assert await post_demo_lead(session, settings) is not None

    # Time passes: every auction is over.
    async with committed_db.transaction() as session:
        await session.execute(
            update(Lead)
            .where(Lead.sale_mode == "auction")
            .values(auction_ends_at=utcnow() - dt.timedelta(seconds=1))
        )
    async with committed_db.transaction() as session:
        await close_due_auctions(session, settings, broker, limit=500)
        sold = await session.scalar(select(func.count()).select_from(Order))
        assert sold, "campaigns should have won some demo auctions"
        report = await verify_ledger(session)
        assert report.ok, report.problems
