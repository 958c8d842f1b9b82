"""Money moves exactly once after the sale, whatever runs at the same moment (issue 6 "Done
means"): many concurrent approvals, denials and silence sweeps of one return; many admins
deciding one dispute both ways; many payout requests and scheduled payouts for one seller, racing
a dispute decided for the buyer after settlement (a claw-back). Each call runs in its own
transaction through several engines (as separate processes would), on SQLite and PostgreSQL;
then the ledger verifies clean and the balances are exactly what one decision makes them."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.db import Database, make_engine, utcnow
from leadmarket.kit.errors import DomainError
from leadmarket.ledger.verify import verify_ledger
from leadmarket.models import (
    AuditEvent,
    LedgerTransaction,
    Order,
    OrderReturn,
    Payout,
    ReturnDispute,
    SaleVia,
    User,
)
from leadmarket.orders import service as orders
from leadmarket.payouts import service as payouts
from leadmarket.returns import service
from leadmarket.returns.service import DisputeOutcome, ReturnReason
from tests.fixtures.ledger import fund, make_member
from tests.fixtures.orders import make_lead
from tests.fixtures.returns import FEE, PRICE, payable, wallet

ENGINES = 3
CALLS = 12  # of each kind


async def _sold(session: AsyncSession, settings: Settings, seller: User, buyer: User) -> str:
    lead, _ = await make_lead(session, settings, seller, price_cents=PRICE)
    order = await orders.sell(
        session, settings, lead_id=lead.id, buyer_id=buyer.id, price_cents=PRICE, via=SaleVia.FIXED
    )
    return order.id


class Racers:
    """Engines of their own, so that calls really run side by side."""

    def __init__(self, database_url: str) -> None:
        self.engines = [make_engine(database_url, pool_size=6) for _ in range(ENGINES)]
        self.databases = [Database(engine) for engine in self.engines]

    async def run(self, calls: list[Callable[[AsyncSession], Awaitable[Any]]]) -> list[str]:
        """Run every call in its own transaction at once; each one's outcome: "ok" or the
        problem slug it was refused with."""

        async def one(n: int, call: Callable[[AsyncSession], Awaitable[Any]]) -> str:
            try:
                async with self.databases[n % ENGINES].transaction() as session:
                    await call(session)
            except DomainError as exc:
                return exc.slug
            return "ok"

        return list(await asyncio.gather(*(one(n, c) for n, c in enumerate(calls))))

    async def close(self) -> None:
        for engine in self.engines:
            await engine.dispose()


async def _user(session: AsyncSession, user_id: str) -> User:
    user = await session.get(User, user_id)
    assert user is not None
    return user


async def test_one_return_is_decided_and_refunded_once(
    committed_db: Database, database_url: str, settings: Settings
) -> None:
    async with committed_db.transaction() as session:
        seller = await make_member(session, "seller")
        buyer = await make_member(session)
        await fund(session, buyer, 10 * PRICE)
        order_id = await _sold(session, settings, seller, buyer)
        late_order_id = await _sold(session, settings, seller, buyer)
        ret = await service.request_return(
            session,
            settings,
            order_id,
            buyer,
            reason=ReturnReason.DUPLICATE,
            note=None,
            evidence_text=None,
        )
        late = await service.request_return(
            session,
            settings,
            late_order_id,
            buyer,
            reason=ReturnReason.DUPLICATE,
            note=None,
            evidence_text=None,
        )
        late.decide_by = utcnow() - dt.timedelta(seconds=1)  # silence races the seller here
        return_id, late_id, seller_id, buyer_id = ret.id, late.id, seller.id, buyer.id

    def decide(rid: str, approve: bool) -> Callable[[AsyncSession], Awaitable[Any]]:
        async def call(session: AsyncSession) -> None:
            await service.seller_decides(
                session,
                settings,
                rid,
                await _user(session, seller_id),
                approve=approve,
                note=None if approve else "It answered.",
            )

        return call

    def silence(rid: str) -> Callable[[AsyncSession], Awaitable[Any]]:
        async def call(session: AsyncSession) -> None:
            if not await service.approve_if_silent(session, settings, rid):
                raise service.ReturnDecided("not silent")

        return call

    racers = Racers(database_url)
    try:
        first = await racers.run([decide(return_id, n % 2 == 0) for n in range(2 * CALLS)])
        second = await racers.run(
            [decide(late_id, n % 2 == 0) for n in range(2 * CALLS)]
            + [silence(late_id) for _ in range(CALLS)]
        )
    finally:
        await racers.close()

    assert first.count("ok") == 1, first
    assert set(first) <= {"ok", "return-decided"}
    # Past the deadline every denial is refused; one approval (the seller's or silence's) wins.
    assert second.count("ok") == 1, second
    assert set(second) <= {"ok", "return-decided", "return-decision-deadline-passed"}
    async with committed_db.transaction() as session:
        decided = {
            r.id: r for r in await session.scalars(select(OrderReturn).order_by(OrderReturn.id))
        }
        assert decided[late_id].status == "approved"
        refunds = [r for r in decided.values() if r.status == "approved"]
        assert all(r.refunded_cents == PRICE for r in refunds)
        assert await wallet(session, buyer_id) == (
            10 * PRICE - 2 * PRICE + len(refunds) * PRICE,
            (2 - len(refunds)) * PRICE,
        )
        approvals = await session.scalar(
            select(func.count()).where(AuditEvent.action == "return.approved")
        )
        assert approvals == len(refunds)
        report = await verify_ledger(session)
        assert report.ok, report.problems


async def test_a_dispute_and_a_sellers_payouts_move_money_once(
    committed_db: Database, database_url: str, settings: Settings
) -> None:
    """A denied return's order settles, the buyer disputes; then many admins decide the dispute
    both ways while the seller asks for payouts many times and the daily job pays them too."""
    async with committed_db.transaction() as session:
        seller = await make_member(session, "seller")
        buyer = await make_member(session)
        admins = [await make_member(session, "admin") for _ in range(2)]
        await fund(session, buyer, 10 * PRICE)
        order_id = await _sold(session, settings, seller, buyer)
        other_id = await _sold(session, settings, seller, buyer)
        ret = await service.request_return(
            session,
            settings,
            order_id,
            buyer,
            reason=ReturnReason.CONSUMER_NEVER_ASKED,
            note=None,
            evidence_text=None,
        )
        await service.seller_decides(
            session, settings, ret.id, seller, approve=False, note="They asked."
        )
        later = utcnow() + dt.timedelta(hours=settings.return_window_hours + 1)
        assert await orders.settle_due_orders(session, settings, now=later) == 2
        dispute = await service.dispute_return(
            session, settings, ret.id, buyer, note="They never did."
        )
        seller_id, buyer_id, dispute_id = seller.id, buyer.id, dispute.id
        admin_ids = [a.id for a in admins]
        assert other_id

    def decide(n: int) -> Callable[[AsyncSession], Awaitable[Any]]:
        async def call(session: AsyncSession) -> None:
            await service.decide_dispute(
                session,
                settings,
                dispute_id,
                await _user(session, admin_ids[n % 2]),
                outcome=DisputeOutcome.FOR_BUYER if n % 2 == 0 else DisputeOutcome.FOR_SELLER,
                note=f"decision {n}",
            )

        return call

    async def pay(session: AsyncSession) -> None:
        await payouts.request_payout(
            session, settings, await _user(session, seller_id), currency="USD"
        )

    async def scheduled(session: AsyncSession) -> None:
        if not await payouts.pay_seller_scheduled(session, settings, seller_id, "USD"):
            raise payouts.NothingToPayOut("nothing")

    racers = Racers(database_url)
    try:
        outcomes = await racers.run(
            [decide(n) for n in range(2 * CALLS)]
            + [pay for _ in range(CALLS)]
            + [scheduled for _ in range(CALLS)]
        )
    finally:
        await racers.close()

    decisions, paying = outcomes[: 2 * CALLS], outcomes[2 * CALLS :]
    assert decisions.count("ok") == 1, decisions
    assert set(decisions) <= {"ok", "dispute-decided"}
    assert set(paying) <= {"ok", "nothing-to-pay-out"}, paying
    async with committed_db.transaction() as session:
        decided = await session.get(ReturnDispute, dispute_id)
        assert decided is not None
        for_buyer = decided.outcome == "for_buyer"
        paid = int(await session.scalar(select(func.sum(Payout.amount_cents))) or 0)
        payouts_made = await session.scalar(select(func.count()).select_from(Payout))
        assert payouts_made == paying.count("ok")
        seller_share = PRICE - FEE
        settled_to_seller = 2 * seller_share - (seller_share if for_buyer else 0)
        # Whatever the interleaving: what was paid out plus what is left is what the seller
        # earned, and nothing was paid out that was not settled at the time.
        assert paid + await payable(session, seller_id) == settled_to_seller
        assert paid <= 2 * seller_share
        expected_wallet = 10 * PRICE - 2 * PRICE + (PRICE if for_buyer else 0)
        assert await wallet(session, buyer_id) == (expected_wallet, 0)
        refunds = await session.scalar(
            select(func.count()).where(LedgerTransaction.kind == "refund")
        )
        assert refunds == (1 if for_buyer else 0)
        order = await session.get(Order, order_id)
        assert order is not None
        assert order.status == ("refunded" if for_buyer else "settled")
        ret = await session.scalar(select(OrderReturn).where(OrderReturn.order_id == order_id))
        assert ret is not None
        if for_buyer:
            assert ret.refund_kind in ("refunded", "clawed_back")
            assert (ret.clawed_back_cents or 0) == max(0, paid - seller_share)
        report = await verify_ledger(session)
        assert report.ok, report.problems
