"""Settlement after the return window (M5): the held price goes to the seller less the platform
fee, once, and the ledger (with orders' own check) verifies clean; a tampered order is reported."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.db import utcnow
from leadmarket.ledger import service as ledger
from leadmarket.ledger.verify import verify_ledger
from leadmarket.models import AccountKind, Order, SaleVia
from leadmarket.orders import service
from tests.fixtures.ledger import fund, make_member
from tests.fixtures.orders import make_lead


async def test_held_orders_settle_after_the_return_window(
    session: AsyncSession, settings: Settings
) -> None:
    settings = settings.model_copy(update={"platform_fee_percent": Decimal("12.5")})
    seller = await make_member(session, "seller")
    buyer = await make_member(session)
    await fund(session, buyer, 10_000)
    lead, _ = await make_lead(session, settings, seller, price_cents=2001)
    order = await service.sell(
        session,
        settings,
        lead_id=lead.id,
        buyer_id=buyer.id,
        price_cents=2001,
        via=SaleVia.FIXED,
    )
    window = dt.timedelta(hours=settings.return_window_hours)
    assert order.return_window_ends_at - order.purchased_at == window

    assert await service.settle_due_orders(session, settings, now=utcnow()) == 0
    later = utcnow() + window + dt.timedelta(minutes=1)
    assert await service.settle_due_orders(session, settings, now=later) == 1
    assert await service.settle_due_orders(session, settings, now=later) == 0

    settled = await session.get(Order, order.id, populate_existing=True)
    assert settled is not None and settled.status == "settled"
    assert settled.fee_cents == 250  # 12.5% of 20.01, rounded down
    payable = await ledger.find_account(session, AccountKind.SELLER_PAYABLE, "USD", seller.id)
    assert payable is not None and payable.balance_cents == 2001 - 250
    wallet = await ledger.wallet_summary(session, buyer.id, "USD")
    assert (wallet.balance_cents, wallet.held_cents) == (10_000 - 2001, 0)
    report = await verify_ledger(session)
    assert report.ok, report.problems

    summary = await service.sales_summary(session, seller.id)
    assert [(s.sales, s.settled_cents, s.fees_cents, s.earned_cents) for s in summary] == [
        (1, 2001, 250, 1751)
    ]

    settled.status = "held"  # an order that says held while its hold is settled
    await session.flush()
    report = await verify_ledger(session)
    assert any(order.id in problem for problem in report.problems), report.problems
