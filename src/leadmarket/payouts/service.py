"""Payouts (M5): a seller's settled money leaves the platform through the payment processor.

What can be paid out: the seller's payable, which only settlement fills, and settlement happens
only after an order's return window has passed with no return open
(:func:`leadmarket.orders.service.settle_due_orders`); so money still in a return window is
never paid out. A dispute decided for the buyer after a payout takes the refund out of the
payable, which then goes below zero: the seller owes it (a claw-back), nothing is paid out until
later settlements have covered it, and ``leadmarket ledger verify`` accepts a negative payable.

Exactly once: the processor clearing account's row and then the payable's are locked
(``SELECT … FOR UPDATE`` on PostgreSQL; SQLite's write lock serialises the whole transaction)
before the balance is read, so concurrent payout
requests and the scheduled job pay a balance once; the others find nothing left (409). The
processor is asked under that lock with the payout's id as its idempotency key, then the ledger
books ``seller payable → processor clearing`` in the same transaction; a refusal or an error
changes nothing. (The lock is held while the processor answers: the sandbox answers at once; a
real adapter with slow payouts would record the payout as pending first, as the processor
module says.)"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.audit.service import Actor, record
from leadmarket.config import Settings
from leadmarket.kit.db import utcnow
from leadmarket.kit.errors import Conflict, DomainError
from leadmarket.kit.ids import new_id
from leadmarket.kit.jobs import enqueue
from leadmarket.kit.transient import outside_effect
from leadmarket.ledger.service import Line, open_account, post_transaction
from leadmarket.models import (
    AccountKind,
    LedgerAccount,
    Payout,
    TransactionKind,
    User,
    UserStatus,
)
from leadmarket.notifications.notify import notify_payout_sent
from leadmarket.payments.processor import (
    PaymentProcessor,
    PayoutOutcome,
    PayoutRequest,
    payment_processor,
)

log = logging.getLogger("leadmarket.payouts")

SCHEDULED_JOB = "payouts.scheduled"
PAY_SELLER_JOB = "payouts.pay_seller"
SCHEDULED_BATCH = 200


class NothingToPayOut(Conflict):
    slug = "nothing-to-pay-out"
    title = "Nothing to pay out"
    explanation = (
        "Only settled sales (past their return window, with no return open) can be paid out, "
        "and the seller's balance has none, or is below zero after a claw-back. "
        "`balance_cents` says what it is."
    )


class PayoutRefused(DomainError):
    status = 402
    slug = "payout-refused"
    title = "The payment processor refused the payout"
    explanation = (
        "The processor did not pay; `refusal_code` says why. Nothing was paid and nothing "
        "was changed."
    )


@dataclass(frozen=True)
class PayoutResult:
    payout: Payout
    balance_cents: int  # left in the payable afterwards (0)


async def _locked_payable(
    session: AsyncSession, seller_id: str, currency: str
) -> LedgerAccount | None:
    account: LedgerAccount | None = await session.scalar(
        select(LedgerAccount)
        .where(
            LedgerAccount.owner_key == seller_id,
            LedgerAccount.kind == AccountKind.SELLER_PAYABLE.value,
            LedgerAccount.currency == currency,
        )
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return account


async def pay_out(
    session: AsyncSession,
    settings: Settings,
    processor: PaymentProcessor,
    *,
    seller: User,
    currency: str,
    requested_by: str,
    minimum_cents: int = 1,
    destination: str | None = None,
) -> PayoutResult:
    """Pay the seller's whole settled balance in ``currency`` (at least ``minimum_cents``).
    Raises :class:`NothingToPayOut` or :class:`PayoutRefused`; then nothing is changed."""
    async with session.begin_nested():
        # Every payout takes the processor's clearing account first: payouts (and the daily job
        # paying one seller after another) then wait there holding nothing, instead of one
        # holding a payable another needs.
        clearing = await open_account(session, AccountKind.PROCESSOR_CLEARING, currency)
        await session.execute(
            select(LedgerAccount.id).where(LedgerAccount.id == clearing.id).with_for_update()
        )
        payable = await _locked_payable(session, seller.id, currency)
        balance = payable.balance_cents if payable is not None else 0
        if payable is None or balance < max(1, minimum_cents):
            raise NothingToPayOut(
                "There is no settled balance to pay out.",
                extra={"balance_cents": balance, "currency": currency},
            )
        payout_id = new_id("pay")
        outside_effect()  # money that left is never sent again by a retried request
        answer = await processor.payout(
            PayoutRequest(
                amount_cents=balance,
                currency=currency,
                member_id=seller.id,
                idempotency_key=payout_id,
                destination=destination,
            )
        )
        if answer.status != PayoutOutcome.PAID:
            raise PayoutRefused(
                answer.refusal_message or "The payout was refused.",
                extra={"refusal_code": answer.refusal_code or "refused"},
            )
        assert answer.processor_reference is not None
        transaction = await post_transaction(
            session,
            TransactionKind.PAYOUT,
            payout_id,
            [Line(payable, -balance), Line(clearing, balance)],
        )
        payout = Payout(
            id=payout_id,
            seller_id=seller.id,
            amount_cents=balance,
            currency=currency,
            processor=processor.name,
            processor_reference=answer.processor_reference,
            transaction_id=transaction.id,
            requested_by=requested_by,
            created_at=utcnow(),
        )
        session.add(payout)
        await record(
            session,
            actor=Actor("user", seller.id) if requested_by == "seller" else Actor.system(),
            action="payout.paid",
            subject_type="payout",
            subject_id=payout_id,
            details={
                "seller_id": seller.id,
                "amount_cents": balance,
                "currency": currency,
                "processor": processor.name,
                "transaction_id": transaction.id,
            },
        )
        await notify_payout_sent(
            session,
            settings,
            seller_id=seller.id,
            payout_id=payout.id,
            amount_cents=payout.amount_cents,
            currency=payout.currency,
            processor_reference=payout.processor_reference,
        )
        await session.flush()
    return PayoutResult(payout, payable.balance_cents)


async def request_payout(
    session: AsyncSession,
    settings: Settings,
    seller: User,
    *,
    currency: str,
    destination: str | None = None,
) -> PayoutResult:
    """A seller asks for their settled balance (``POST /api/v1/payouts``, the payouts page)."""
    return await pay_out(
        session,
        settings,
        payment_processor(settings),
        seller=seller,
        currency=currency,
        requested_by="seller",
        destination=destination,
    )


async def enqueue_scheduled_payouts(
    session: AsyncSession, settings: Settings, *, now: dt.datetime | None = None
) -> int:
    """The daily job: a payout job for every seller whose settled balance reached
    ``payout_minimum_cents`` (up to :data:`SCHEDULED_BATCH` a run), each paying one seller in a
    transaction of its own; one job per seller, currency and day (dedupe key)."""
    if not settings.payouts_scheduled:
        return 0
    day = (now or utcnow()).date().isoformat()
    rows = (
        await session.execute(
            select(LedgerAccount.owner_id, LedgerAccount.currency)
            .where(
                LedgerAccount.kind == AccountKind.SELLER_PAYABLE.value,
                LedgerAccount.balance_cents >= settings.payout_minimum_cents,
            )
            .order_by(LedgerAccount.id)
            .limit(SCHEDULED_BATCH)
        )
    ).all()
    queued = 0
    for owner_id, currency in rows:
        job = await enqueue(
            session,
            PAY_SELLER_JOB,
            {"seller_id": owner_id, "currency": currency},
            dedupe_key=f"{PAY_SELLER_JOB}:{owner_id}:{currency}:{day}",
        )
        queued += job is not None
    return queued


async def pay_seller_scheduled(
    session: AsyncSession, settings: Settings, seller_id: str, currency: str
) -> bool:
    """One scheduled payout; False when there is (no longer) enough to pay or the processor
    refused (the next day's run tries again), or the seller's account is not active: a seller
    suspended by the fraud review is paid nothing while their returns may still claw money
    back (M6); the balance waits for a reinstatement."""
    seller = await session.get(User, seller_id)
    if seller is None:
        return False
    if seller.status != UserStatus.ACTIVE.value:
        log.info("payout held", extra={"seller_id": seller_id, "status": seller.status})
        return False
    try:
        await pay_out(
            session,
            settings,
            payment_processor(settings),
            seller=seller,
            currency=currency,
            requested_by="schedule",
            minimum_cents=settings.payout_minimum_cents,
        )
    except (NothingToPayOut, PayoutRefused) as exc:
        log.info("payout skipped", extra={"seller_id": seller_id, "why": exc.slug})
        return False
    return True


async def list_payouts(
    session: AsyncSession, seller_id: str, *, limit: int, before_id: str | None = None
) -> list[Payout]:
    query = (
        select(Payout)
        .where(Payout.seller_id == seller_id)
        .order_by(Payout.id.desc())
        .limit(limit + 1)
    )
    if before_id is not None:
        query = query.where(Payout.id < before_id)
    return list(await session.scalars(query))


async def payable_balance(session: AsyncSession, seller_id: str, currency: str) -> int:
    balance = await session.scalar(
        select(LedgerAccount.balance_cents).where(
            LedgerAccount.owner_key == seller_id,
            LedgerAccount.kind == AccountKind.SELLER_PAYABLE.value,
            LedgerAccount.currency == currency,
        )
    )
    return int(balance or 0)
