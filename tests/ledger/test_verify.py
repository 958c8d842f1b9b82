"""``verify_ledger`` finds what must never happen: a transaction that does not balance, a
balance that is not the sum of its entries, a hold whose transactions are not exactly its own.
Each tampering is done in a SAVEPOINT and undone, and the ledger is clean again after."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.kit.ids import new_id
from leadmarket.ledger import service
from leadmarket.ledger.verify import verify_ledger
from leadmarket.models import (
    AccountKind,
    LedgerAccount,
    LedgerEntry,
    LedgerHold,
    LedgerTransaction,
    TransactionKind,
)
from tests.fixtures.ledger import fund, make_member


@asynccontextmanager
async def tampered(session: AsyncSession) -> AsyncIterator[None]:
    nested = await session.begin_nested()
    try:
        yield
    finally:
        await nested.rollback()
        session.expire_all()


async def market(session: AsyncSession) -> tuple[str, str, LedgerAccount]:
    buyer, seller = await make_member(session), await make_member(session, "seller")
    await fund(session, buyer, 5000)
    await service.hold_funds(
        session, buyer_id=buyer.id, amount_cents=1200, currency="USD", reference="ord_v1"
    )
    await service.hold_funds(
        session, buyer_id=buyer.id, amount_cents=800, currency="USD", reference="ord_v2"
    )
    await service.settle_sale(
        session, reference="ord_v1", seller_id=seller.id, fee_percent=Decimal(10)
    )
    wallet = await service.find_account(session, AccountKind.BUYER_WALLET, "USD", buyer.id)
    assert wallet is not None
    return buyer.id, seller.id, wallet


async def test_a_clean_ledger_verifies(session: AsyncSession) -> None:
    await market(session)
    report = await verify_ledger(session)
    assert report.ok, report.problems
    assert report.transactions >= 4
    assert report.holds >= 2


async def test_a_tampered_balance_is_found(session: AsyncSession) -> None:
    _, _, wallet = await market(session)
    async with tampered(session):
        await session.execute(
            update(LedgerAccount)
            .where(LedgerAccount.id == wallet.id)
            .values(balance_cents=LedgerAccount.balance_cents + 1)
        )
        report = await verify_ledger(session)
        assert any(
            wallet.id in problem and "entries sum to" in problem for problem in report.problems
        ), report.problems
    assert (await verify_ledger(session)).ok


async def test_an_unbalanced_transaction_is_found(session: AsyncSession) -> None:
    _, _, wallet = await market(session)
    async with tampered(session):
        # Money from nowhere: one line, the balance moved with it so only the sum is wrong.
        transaction = LedgerTransaction(
            id=new_id("ltx"), kind=TransactionKind.DEPOSIT.value, reference="dep_forged"
        )
        session.add(transaction)
        await session.flush()
        session.add(
            LedgerEntry(
                transaction_id=transaction.id,
                account_id=wallet.id,
                amount_cents=500,
                balance_after_cents=0,
            )
        )
        await session.execute(
            update(LedgerAccount)
            .where(LedgerAccount.id == wallet.id)
            .values(balance_cents=LedgerAccount.balance_cents + 500)
        )
        await session.flush()
        problems = (await verify_ledger(session)).problems
        assert any(
            transaction.id in p and "does not balance" in p and "500" in p for p in problems
        ), problems
        assert any(transaction.id in p and "1 entries" in p for p in problems), problems
    assert (await verify_ledger(session)).ok


async def test_a_hold_whose_transactions_do_not_match_is_found(session: AsyncSession) -> None:
    await market(session)
    async with tampered(session):
        # Marked settled without a settlement: the held money went nowhere.
        await session.execute(
            update(LedgerHold)
            .where(LedgerHold.reference == "ord_v2")
            .values(status="settled", settled_cents=800, fee_cents=80)
        )
        problems = (await verify_ledger(session)).problems
        assert any("ord_v2" in p and "should have one each" in p for p in problems), problems
        assert any("open holds" in p for p in problems), problems
    async with tampered(session):
        # The fee recorded on the hold is not what the settlement moved.
        await session.execute(
            update(LedgerHold).where(LedgerHold.reference == "ord_v1").values(fee_cents=119)
        )
        problems = (await verify_ledger(session)).problems
        assert any("ord_v1" in p and "do not move exactly" in p for p in problems), problems
    assert (await verify_ledger(session)).ok


async def test_a_wallet_that_went_negative_and_was_topped_up_is_found(
    session: AsyncSession,
) -> None:
    """No wallet may *ever* be negative (issue 4 §5): an overdraft paid back later leaves the
    balances right and every transaction balanced; only the entries' balances after show it."""
    _, _, wallet = await market(session)
    clearing = await service.open_account(session, AccountKind.PROCESSOR_CLEARING, "USD")
    overdraft = wallet.balance_cents + 500  # 500 cents below zero in between
    async with tampered(session):
        for n, moved in enumerate((-overdraft, overdraft)):
            transaction = LedgerTransaction(
                id=new_id("ltx"), kind=TransactionKind.DEPOSIT.value, reference=f"dep_od{n}"
            )
            session.add(transaction)
            await session.flush()
            after = wallet.balance_cents + (moved if n == 0 else 0)
            session.add_all(
                [
                    LedgerEntry(
                        transaction_id=transaction.id,
                        account_id=wallet.id,
                        amount_cents=moved,
                        balance_after_cents=after,
                    ),
                    LedgerEntry(
                        transaction_id=transaction.id,
                        account_id=clearing.id,
                        amount_cents=-moved,
                        balance_after_cents=clearing.balance_cents - (moved if n == 0 else 0),
                    ),
                ]
            )
            await session.flush()
        problems = (await verify_ledger(session)).problems
        assert len(problems) == 1, problems
        assert wallet.id in problems[0] and "went negative: -500 cents" in problems[0]
    assert (await verify_ledger(session)).ok
