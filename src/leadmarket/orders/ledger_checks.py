"""The ledger check orders add to ``leadmarket ledger verify``: every sale has exactly its
entries. The ledger's own checks already prove each hold has exactly the transactions of its
status; this one ties holds to orders: each order is paid by one hold of its buyer, in its
currency, of at least its price, whose status matches the order's (held ↔ held, settled ↔
settled at the order's price to the order's seller with the order's fee, cancelled ↔ released,
refunded ↔ refunded), and every hold an order made (reference ``ord_…``) belongs to an order."""

from __future__ import annotations

import re

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.ledger.verify import MAX_PROBLEMS_PER_CHECK, ledger_check
from leadmarket.models import HoldStatus, LedgerHold, Order, OrderStatus

ORDER_ID = re.compile(r"ord_[0-9A-HJKMNP-TV-Z]{26}")
ORDER_ID_LENGTH = 30
HOLD_STATUS_OF = {
    OrderStatus.HELD.value: HoldStatus.HELD.value,
    OrderStatus.SETTLED.value: HoldStatus.SETTLED.value,
    OrderStatus.CANCELLED.value: HoldStatus.RELEASED.value,
    OrderStatus.REFUNDED.value: HoldStatus.REFUNDED.value,
}


def _order_problem(order: Order, hold: LedgerHold | None) -> str | None:
    if hold is None:
        return f"order {order.id} has no hold {order.hold_reference}"
    if hold.buyer_id != order.buyer_id or hold.currency != order.currency:
        return f"order {order.id} is paid by hold {hold.reference} of another buyer or currency"
    if hold.amount_cents < order.price_cents:
        return f"order {order.id} costs {order.price_cents} cents, its hold {hold.amount_cents}"
    if HOLD_STATUS_OF.get(order.status) != hold.status:
        return f"order {order.id} is {order.status} but its hold is {hold.status}"
    if order.status in (OrderStatus.SETTLED.value, OrderStatus.REFUNDED.value) and (
        hold.settled_cents != order.price_cents
        or hold.seller_id != order.seller_id
        or hold.fee_cents != order.fee_cents
    ):
        return (
            f"order {order.id} was settled as {hold.settled_cents} cents (fee {hold.fee_cents}) "
            f"to {hold.seller_id}, not {order.price_cents} (fee {order.fee_cents}) to its seller"
        )
    return None


@ledger_check("every sale has exactly its entries")
async def sales_have_their_holds(session: AsyncSession) -> list[str]:
    problems: list[str] = []
    rows = await session.execute(
        select(Order, LedgerHold)
        .outerjoin(LedgerHold, LedgerHold.reference == Order.hold_reference)
        .order_by(Order.id)
    )
    for order, hold in rows:
        problem = _order_problem(order, hold)
        if problem is not None:
            problems.append(problem)
            if len(problems) >= MAX_PROBLEMS_PER_CHECK:
                return problems
    # Holds named like an order id (other holds, e.g. a bid's, are not this check's business).
    candidates = await session.scalars(
        select(LedgerHold.reference)
        .outerjoin(Order, Order.hold_reference == LedgerHold.reference)
        .where(
            LedgerHold.reference.like("ord\\_%", escape="\\"),
            func.length(LedgerHold.reference) == ORDER_ID_LENGTH,
            Order.id.is_(None),
        )
        .order_by(LedgerHold.reference)
        .limit(MAX_PROBLEMS_PER_CHECK)
    )
    problems += [
        f"hold {reference} was made for an order that does not exist"
        for reference in candidates
        if ORDER_ID.fullmatch(reference)
    ]
    return problems
