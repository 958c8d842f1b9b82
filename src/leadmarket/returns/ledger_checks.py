"""The ledger checks of returns, cancellations and payouts (``leadmarket ledger verify``):

* **every approved return has exactly its refund entries**: its order is cancelled (held funds
  released) or refunded (after settlement), for this return's cause; its hold is released or
  refunded accordingly, with exactly one release or refund transaction; the return records the
  amount that moved (the whole hold when released, the settled price when refunded);
* every order refunded for a return has exactly one approved return, and every cancelled order
  (the buyer cancelled) has none, and its hold released;
* **every payout has exactly its entries**: one ``payout`` transaction, its own, taking its
  amount out of its seller's payable into the processor clearing account, and every payout
  transaction belongs to a payout.

The ledger's own checks already prove every hold's transactions move exactly its amounts."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.ledger.verify import MAX_PROBLEMS_PER_CHECK, ledger_check
from leadmarket.models import (
    AccountKind,
    HoldStatus,
    LedgerAccount,
    LedgerEntry,
    LedgerHold,
    LedgerTransaction,
    Order,
    OrderReturn,
    OrderStatus,
    Payout,
    RefundCause,
    RefundKind,
    ReturnStatus,
    TransactionKind,
)
from leadmarket.models.ledger import PLATFORM_OWNER

_HOLD_AFTER = {
    RefundKind.RELEASED.value: (HoldStatus.RELEASED.value, OrderStatus.CANCELLED.value, "release"),
    RefundKind.REFUNDED.value: (HoldStatus.REFUNDED.value, OrderStatus.REFUNDED.value, "refund"),
    RefundKind.CLAWED_BACK.value: (
        HoldStatus.REFUNDED.value,
        OrderStatus.REFUNDED.value,
        "refund",
    ),
}


async def _transaction_counts(
    session: AsyncSession, references: list[str]
) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    if not references:
        return counts
    for start in range(0, len(references), 500):
        rows = await session.execute(
            select(LedgerTransaction.reference, LedgerTransaction.kind, func.count())
            .where(LedgerTransaction.reference.in_(references[start : start + 500]))
            .group_by(LedgerTransaction.reference, LedgerTransaction.kind)
        )
        for reference, kind, n in rows:
            counts[reference][kind] = int(n)
    return counts


@ledger_check("every approved return has exactly its refund entries")
async def returns_have_their_refunds(session: AsyncSession) -> list[str]:
    problems: list[str] = []
    rows = (
        await session.execute(
            select(OrderReturn, Order, LedgerHold)
            .join(Order, Order.id == OrderReturn.order_id)
            .outerjoin(LedgerHold, LedgerHold.reference == Order.hold_reference)
            .where(OrderReturn.status == ReturnStatus.APPROVED.value)
            .order_by(OrderReturn.id)
        )
    ).all()
    counts = await _transaction_counts(session, [order.hold_reference for _, order, _ in rows])
    for ret, order, hold in rows:
        expected = _HOLD_AFTER.get(ret.refund_kind or "")
        if expected is None or hold is None:
            problems.append(f"approved return {ret.id} records no refund ({ret.refund_kind})")
        else:
            hold_status, order_status, tx_kind = expected
            amount = hold.amount_cents if tx_kind == "release" else hold.settled_cents
            if (
                order.status != order_status
                or order.refund_cause != RefundCause.RETURN.value
                or hold.status != hold_status
            ):
                problems.append(
                    f"approved return {ret.id} ({ret.refund_kind}): order {order.id} is "
                    f"{order.status} (cause {order.refund_cause}), its hold {hold.status}"
                )
            elif counts.get(hold.reference, {}).get(tx_kind) != 1:
                problems.append(
                    f"approved return {ret.id}: hold {hold.reference} has "
                    f"{counts.get(hold.reference, {}).get(tx_kind, 0)} {tx_kind} transactions"
                )
            elif ret.refunded_cents != amount:
                problems.append(
                    f"approved return {ret.id} records {ret.refunded_cents} cents refunded, "
                    f"its {tx_kind} moved {amount}"
                )
        if len(problems) >= MAX_PROBLEMS_PER_CHECK:
            return problems
    approved = func.count(OrderReturn.id).filter(OrderReturn.status == ReturnStatus.APPROVED.value)
    causes = await session.execute(
        select(Order.id, Order.status, Order.refund_cause, approved)
        .outerjoin(OrderReturn, OrderReturn.order_id == Order.id)
        .where(
            Order.status.in_([OrderStatus.CANCELLED.value, OrderStatus.REFUNDED.value])
            | Order.refund_cause.is_not(None)
        )
        .group_by(Order.id, Order.status, Order.refund_cause)
        .order_by(Order.id)
    )
    for order_id, status, cause, n in causes:
        n = int(n or 0)
        if cause == RefundCause.RETURN.value and n != 1:
            problems.append(f"order {order_id} was refunded for a return but has {n} approved")
        elif cause == RefundCause.CANCELLED.value and (
            n != 0 or status != OrderStatus.CANCELLED.value
        ):
            problems.append(f"order {order_id} is {status} as cancelled, with {n} approved returns")
        elif cause is None:
            problems.append(f"order {order_id} is {status} with no cause recorded")
        if len(problems) >= MAX_PROBLEMS_PER_CHECK:
            break
    return problems


@ledger_check("every payout has exactly its entries")
async def payouts_have_their_entries(session: AsyncSession) -> list[str]:
    problems: list[str] = []
    moved: dict[str, dict[tuple[str, str], int]] = defaultdict(dict)
    sums = await session.execute(
        select(
            LedgerTransaction.id,
            LedgerAccount.kind,
            LedgerAccount.owner_key,
            func.sum(LedgerEntry.amount_cents),
        )
        .join(LedgerEntry, LedgerEntry.transaction_id == LedgerTransaction.id)
        .join(LedgerAccount, LedgerAccount.id == LedgerEntry.account_id)
        .where(LedgerTransaction.kind == TransactionKind.PAYOUT.value)
        .group_by(LedgerTransaction.id, LedgerAccount.kind, LedgerAccount.owner_key)
    )
    for tx, account_kind, owner, total in sums:
        moved[tx][(account_kind, owner)] = int(total)
    transactions = {
        tx_id: reference
        for tx_id, reference in await session.execute(
            select(LedgerTransaction.id, LedgerTransaction.reference).where(
                LedgerTransaction.kind == TransactionKind.PAYOUT.value
            )
        )
    }
    seen: set[str] = set()
    for payout in await session.scalars(select(Payout).order_by(Payout.id)):
        seen.add(payout.transaction_id)
        expected = {
            (AccountKind.SELLER_PAYABLE.value, payout.seller_id): -payout.amount_cents,
            (AccountKind.PROCESSOR_CLEARING.value, PLATFORM_OWNER): payout.amount_cents,
        }
        if transactions.get(payout.transaction_id) != payout.id:
            problems.append(f"payout {payout.id} has no payout transaction of its own")
        elif moved.get(payout.transaction_id) != expected:
            problems.append(
                f"payout {payout.id}: its transaction does not move exactly "
                f"{payout.amount_cents} cents from its seller's payable to the processor"
            )
        if len(problems) >= MAX_PROBLEMS_PER_CHECK:
            return problems
    for tx_id in sorted(set(transactions) - seen):
        problems.append(f"payout transaction {tx_id} belongs to no payout")
        if len(problems) >= MAX_PROBLEMS_PER_CHECK:
            break
    return problems
