"""The ledger (M5): every movement of money as a balanced double-entry transaction, and the
operations the marketplace calls — deposit, hold, release, settle, refund.

Rules kept here, and only here:

* **Balanced.** :func:`post_transaction` refuses lines that do not sum to zero per currency.
* **No check-then-act.** Each line moves its account's balance with one conditional UPDATE
  (``balance = balance + d WHERE id = … AND balance + d >= 0`` for wallets and held funds) and
  reads the new balance back from it. On PostgreSQL the UPDATE row-locks the account until the
  transaction ends and re-checks its condition against the committed balance; on SQLite the
  whole transaction holds the write lock. Either way two buyers' requests can never both spend
  the same cent. A CHECK constraint refuses a negative wallet or held balance all the same.
* **All or nothing.** Each operation runs in a SAVEPOINT: when it refuses (insufficient funds, a
  hold already closed) nothing of it is left, even if the caller catches the error and goes on.
* **Holds move forward once.** A hold (one per sale ``reference``) goes held → released, or
  held → settled (→ refunded), each step a conditional UPDATE of its status, so a sale is
  settled or released exactly once whatever runs concurrently.
* **Services never commit**: the request or the job owns the transaction.

Lines touch accounts in the order of their ids, so two transactions on PostgreSQL lock shared
accounts in the same order and never deadlock each other.

Fees: ``fee = floor(price × platform_fee_percent / 100)`` in whole cents (the platform never
takes more than its percentage; the seller gets the fraction of a cent)."""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from leadmarket.audit.service import Actor, record
from leadmarket.config import Settings
from leadmarket.kit.db import insert_ignoring_conflicts, utcnow
from leadmarket.kit.errors import Conflict, DomainError, FieldError, NotFound, ValidationFailed
from leadmarket.kit.idempotency import previous_answer, remember_answer, request_fingerprint
from leadmarket.kit.ids import new_id
from leadmarket.kit.money import format_money
from leadmarket.kit.transient import outside_effect
from leadmarket.ledger.schemas import DepositIn, DepositOut
from leadmarket.models import (
    AccountKind,
    Deposit,
    HoldStatus,
    LedgerAccount,
    LedgerEntry,
    LedgerHold,
    LedgerTransaction,
    TransactionKind,
)
from leadmarket.models.ledger import NON_NEGATIVE_KINDS, PLATFORM_OWNER
from leadmarket.payments.processor import (
    ChargeRequest,
    ChargeStatus,
    PaymentProcessor,
    payment_processor,
)

# Errors -----------------------------------------------------------------------------------


class InsufficientFunds(DomainError):
    status = 402
    slug = "insufficient-funds"
    title = "Not enough funds in the wallet"
    explanation = (
        "The wallet's available balance is less than the amount this needs. Nothing was "
        "changed; deposit funds (POST /api/v1/wallet/deposits) and try again."
    )


class PaymentDeclined(DomainError):
    status = 402
    slug = "payment-declined"
    title = "Payment declined"
    explanation = (
        "The payment processor declined the charge; `decline_code` says why. Nothing was "
        "charged and nothing was changed."
    )


log = logging.getLogger("leadmarket.ledger")

# How long a member is asked to wait before retrying a deposit the processor did not answer.
PROCESSOR_RETRY_AFTER_SECONDS = 5


class PaymentProcessorFailed(DomainError):
    status = 502
    slug = "payment-processor-failed"
    title = "The payment processor did not answer"
    explanation = (
        "The charge's outcome is unknown (the processor could not be reached, or failed). "
        "Nothing was booked. Retry after the number of seconds in the Retry-After header "
        "with the same Idempotency-Key: the processor charges one key at most once."
    )

    def __init__(self, detail: str | None = None, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.headers.setdefault("Retry-After", str(PROCESSOR_RETRY_AFTER_SECONDS))


class HoldClosed(Conflict):
    slug = "hold-closed"
    title = "Those funds are no longer held"
    explanation = (
        "The funds held for this sale were already released, settled or refunded; a hold moves "
        "on only once."
    )


class HoldExists(Conflict):
    slug = "hold-exists"
    title = "Funds are already held for this sale"
    explanation = "A hold exists for this reference already; each sale holds funds once."


class UnbalancedTransaction(ValueError):
    """A programming error: the lines given to :func:`post_transaction` do not balance (or are
    otherwise malformed). No member input can cause it."""


# Accounts ---------------------------------------------------------------------------------


async def open_account(
    session: AsyncSession, kind: AccountKind, currency: str, owner_id: str | None = None
) -> LedgerAccount:
    """The account of ``kind`` in ``currency`` for ``owner_id`` (None: the platform's), created
    on first use. Concurrent first uses create one account (INSERT … ON CONFLICT DO NOTHING)."""
    owner_key = owner_id if owner_id is not None else PLATFORM_OWNER
    await session.execute(
        insert_ignoring_conflicts(
            session,
            LedgerAccount,
            index_elements=[LedgerAccount.owner_key, LedgerAccount.kind, LedgerAccount.currency],
        ).values(
            id=new_id("acct"),
            kind=kind.value,
            owner_id=owner_id,
            owner_key=owner_key,
            currency=currency,
            balance_cents=0,
            created_at=utcnow(),
        )
    )
    account = await find_account(session, kind, currency, owner_id)
    assert account is not None
    return account


async def find_account(
    session: AsyncSession, kind: AccountKind, currency: str, owner_id: str | None = None
) -> LedgerAccount | None:
    """The account if it exists; never creates one (reads stay reads)."""
    owner_key = owner_id if owner_id is not None else PLATFORM_OWNER
    account: LedgerAccount | None = await session.scalar(
        select(LedgerAccount).where(
            LedgerAccount.owner_key == owner_key,
            LedgerAccount.kind == kind.value,
            LedgerAccount.currency == currency,
        )
    )
    return account


# Posting ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """One line of a transaction: ``amount_cents`` (signed, never 0) on ``account``."""

    account: LedgerAccount
    amount_cents: int


def _check_balanced(lines: Sequence[Line]) -> None:
    if len(lines) < 2:
        raise UnbalancedTransaction("a transaction needs at least two lines")
    seen: set[str] = set()
    totals: dict[str, int] = defaultdict(int)
    for line in lines:
        if not isinstance(line.amount_cents, int) or isinstance(line.amount_cents, bool):
            raise UnbalancedTransaction("amounts are whole cents (int)")
        if line.amount_cents == 0:
            raise UnbalancedTransaction("a line of 0 cents says nothing")
        if line.account.id in seen:
            raise UnbalancedTransaction(f"account {line.account.id} appears twice")
        seen.add(line.account.id)
        totals[line.account.currency] += line.amount_cents
    unbalanced = {currency: total for currency, total in totals.items() if total != 0}
    if unbalanced:
        raise UnbalancedTransaction(f"lines do not sum to zero per currency: {unbalanced}")


async def _available(session: AsyncSession, account_id: str) -> int:
    balance = await session.scalar(
        select(LedgerAccount.balance_cents).where(LedgerAccount.id == account_id)
    )
    return int(balance or 0)


def _short_of(required_cents: int, available_cents: int, currency: str) -> InsufficientFunds:
    return InsufficientFunds(
        f"This needs {format_money(required_cents, currency)}; "
        f"{format_money(available_cents, currency)} is available.",
        extra={
            "required_cents": required_cents,
            "available_cents": available_cents,
            "currency": currency,
        },
    )


async def post_transaction(
    session: AsyncSession, kind: TransactionKind, reference: str, lines: Sequence[Line]
) -> LedgerTransaction:
    """Book ``lines`` as one transaction of ``kind`` for ``reference``.

    Raises :class:`UnbalancedTransaction` when the lines do not sum to zero per currency (before
    anything is written), and :class:`InsufficientFunds` when a wallet or held account would go
    below zero — then nothing of the transaction is left (it runs in a SAVEPOINT)."""
    _check_balanced(lines)
    now = utcnow()
    transaction = LedgerTransaction(
        id=new_id("ltx"), kind=kind.value, reference=reference, created_at=now
    )
    new_balances: list[tuple[LedgerAccount, int]] = []
    async with session.begin_nested():
        session.add(transaction)
        for line in sorted(lines, key=lambda line: line.account.id):
            account, amount = line.account, line.amount_cents
            move = (
                update(LedgerAccount)
                .where(LedgerAccount.id == account.id)
                .values(balance_cents=LedgerAccount.balance_cents + amount)
                .returning(LedgerAccount.balance_cents)
                .execution_options(synchronize_session=False)
            )
            if amount < 0 and account.kind in NON_NEGATIVE_KINDS:
                move = move.where(LedgerAccount.balance_cents + amount >= 0)
            balance_after = (await session.execute(move)).scalar_one_or_none()
            if balance_after is None:
                available = await _available(session, account.id)
                raise _short_of(-amount, available, account.currency)
            session.add(
                LedgerEntry(
                    id=new_id("ent"),
                    transaction_id=transaction.id,
                    account_id=account.id,
                    amount_cents=amount,
                    balance_after_cents=int(balance_after),
                    created_at=now,
                )
            )
            new_balances.append((account, int(balance_after)))
        await session.flush()
    # The loaded objects learn their new balances only once the savepoint has held.
    for account, balance in new_balances:
        set_committed_value(account, "balance_cents", balance)
    return transaction


# Deposits ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DepositResult:
    deposit: Deposit
    wallet_balance_cents: int


async def deposit(
    session: AsyncSession,
    processor: PaymentProcessor,
    *,
    member_id: str,
    amount_cents: int,
    currency: str,
    idempotency_key: str | None = None,
    payment_method: str | None = None,
    actor: Actor | None = None,
) -> DepositResult:
    """Charge the member through ``processor`` and book the money from the processor's clearing
    account into their wallet (M5); recorded in the audit log. A declined charge raises
    :class:`PaymentDeclined` and changes nothing.

    The processor is asked before any account row is touched, so no lock is held while it
    answers. ``idempotency_key`` (scoped to the member) is passed on to the processor, so a
    retried request is charged once; without one, each deposit is its own charge."""
    _positive(amount_cents, "a deposit")
    deposit_id = new_id("dep")
    outside_effect()  # a request charged once is never run again (kit.transient)
    request = ChargeRequest(
        amount_cents=amount_cents,
        currency=currency,
        member_id=member_id,
        idempotency_key=f"{member_id}:{idempotency_key}" if idempotency_key else deposit_id,
        payment_method=payment_method,
    )
    try:
        charge = await processor.charge(request)
    except Exception as exc:
        # An adapter raises when the answer is unknown (a network error, a 5xx): the member
        # is told so (a 502 to retry with the same key), not given an internal error.
        # Its type only: an adapter's message may quote what the member sent.
        log.warning(
            "payment processor %s failed on deposit %s: %s",
            processor.name,
            deposit_id,
            type(exc).__name__,
        )
        raise PaymentProcessorFailed() from exc
    if charge.status != ChargeStatus.SETTLED:
        raise PaymentDeclined(
            charge.decline_message or "The payment was declined.",
            extra={"decline_code": charge.decline_code or "declined"},
        )
    assert charge.processor_reference is not None
    clearing = await open_account(session, AccountKind.PROCESSOR_CLEARING, currency)
    wallet = await open_account(session, AccountKind.BUYER_WALLET, currency, member_id)
    transaction = await post_transaction(
        session,
        TransactionKind.DEPOSIT,
        deposit_id,
        [Line(clearing, -amount_cents), Line(wallet, amount_cents)],
    )
    booked = Deposit(
        id=deposit_id,
        user_id=member_id,
        amount_cents=amount_cents,
        currency=currency,
        processor=processor.name,
        processor_reference=charge.processor_reference,
        transaction_id=transaction.id,
        created_at=transaction.created_at,
    )
    session.add(booked)
    await record(
        session,
        actor=actor or Actor("user", member_id),
        action="wallet.deposit",
        subject_type="deposit",
        subject_id=deposit_id,
        details={
            "amount_cents": amount_cents,
            "currency": currency,
            "processor": processor.name,
            "transaction_id": transaction.id,
        },
    )
    await session.flush()
    return DepositResult(deposit=booked, wallet_balance_cents=wallet.balance_cents)


def check_deposit_amount(amount_cents: int, currency: str, settings: Settings) -> None:
    """Refuse (422, naming ``amount_cents``) a deposit above ``deposit_max_cents``."""
    largest = settings.deposit_max_cents
    if amount_cents > largest:
        message = f"Deposit at most {format_money(largest, currency)} ({largest} cents) at a time."
        raise ValidationFailed(message, errors=[FieldError("amount_cents", message)])


async def deposit_once(
    session: AsyncSession,
    settings: Settings,
    *,
    member_id: str,
    body: DepositIn,
    idempotency_key: str | None,
) -> tuple[int, dict[str, Any]]:
    """A member's deposit request (API or page) and its answer, ``(201, DepositOut as JSON)``.
    With an ``idempotency_key``, the same key and body give the first answer again without a
    second charge; the same key with another body is a 409 (``kit.idempotency``)."""
    fingerprint = request_fingerprint({"wallet.deposit": body.model_dump(mode="json")})
    if idempotency_key is not None:
        earlier = await previous_answer(session, member_id, idempotency_key, fingerprint)
        if earlier is not None:
            return earlier.status_code, earlier.response
    check_deposit_amount(body.amount_cents, body.currency, settings)
    result = await deposit(
        session,
        payment_processor(settings),
        member_id=member_id,
        amount_cents=body.amount_cents,
        currency=body.currency,
        idempotency_key=idempotency_key,
        payment_method=body.payment_method,
    )
    answer = DepositOut(
        id=result.deposit.id,
        amount_cents=result.deposit.amount_cents,
        currency=result.deposit.currency,
        status=result.deposit.status,
        processor=result.deposit.processor,
        created_at=result.deposit.created_at,
        balance_cents=result.wallet_balance_cents,
    ).model_dump(mode="json")
    if idempotency_key is not None:
        await remember_answer(session, member_id, idempotency_key, fingerprint, 201, answer)
    return 201, answer


# Holds and sales --------------------------------------------------------------------------


def platform_fee(price_cents: int, fee_percent: Decimal) -> int:
    """The platform's fee on a sale at ``price_cents``: rounded down to whole cents."""
    if price_cents < 0:
        raise ValueError("a price is not negative")
    fee = (Decimal(price_cents) * fee_percent / 100).to_integral_value(rounding=ROUND_FLOOR)
    return int(fee)


def _positive(amount_cents: int, what: str) -> None:
    if isinstance(amount_cents, bool) or not isinstance(amount_cents, int) or amount_cents <= 0:
        raise UnbalancedTransaction(f"{what} must be a positive number of cents")


async def _hold_or_not_found(session: AsyncSession, reference: str) -> LedgerHold:
    hold = await session.get(LedgerHold, reference, populate_existing=True)
    if hold is None:
        raise NotFound("No funds are held for this sale.")
    return hold


async def _advance_hold(
    session: AsyncSession,
    reference: str,
    *,
    from_status: HoldStatus,
    to_status: HoldStatus,
    **values: Any,
) -> LedgerHold:
    """Move the hold from ``from_status`` to ``to_status`` with one conditional UPDATE (the row
    lock on PostgreSQL, the write lock on SQLite, make the winner unique); the hold as it is
    now. Raises NotFound or HoldClosed if it is not (or no longer) ``from_status``."""
    moved = await session.execute(
        update(LedgerHold)
        .where(LedgerHold.reference == reference, LedgerHold.status == from_status.value)
        .values(status=to_status.value, **values)
        .execution_options(synchronize_session=False)
    )
    hold = await _hold_or_not_found(session, reference)
    if int(getattr(moved, "rowcount", 0) or 0) != 1:
        raise HoldClosed(f"The funds for this sale are {hold.status}, not {from_status}.")
    return hold


async def hold_funds(
    session: AsyncSession, *, buyer_id: str, amount_cents: int, currency: str, reference: str
) -> LedgerHold:
    """Set ``amount_cents`` of the buyer's wallet aside for the sale ``reference`` (an order or
    bid id): wallet → held. Raises :class:`InsufficientFunds` (402) when the wallet has less,
    :class:`HoldExists` (409) when this reference already holds funds; either way nothing is
    changed."""
    _positive(amount_cents, "a hold")
    wallet = await find_account(session, AccountKind.BUYER_WALLET, currency, buyer_id)
    if wallet is None:  # never funded: nothing to hold, and no account to make for it
        raise _short_of(amount_cents, 0, currency)
    held = await find_account(session, AccountKind.BUYER_HELD, currency, buyer_id)
    if held is None:
        # The buyer's first hold makes their held account, and locks their wallet first: so
        # whoever makes it holds the wallet, in the order of a transaction that locked this
        # buyer's accounts up front (lock_buyer_accounts: only those that exist). Made first,
        # its new row would be ours while we waited for that transaction's wallet lock, and
        # it, about to make the same account, would wait for us: a deadlock.
        await session.execute(
            select(LedgerAccount.id).where(LedgerAccount.id == wallet.id).with_for_update()
        )
        held = await open_account(session, AccountKind.BUYER_HELD, currency, buyer_id)
    async with session.begin_nested():
        inserted = await session.execute(
            insert_ignoring_conflicts(
                session, LedgerHold, index_elements=[LedgerHold.reference]
            ).values(
                reference=reference,
                buyer_id=buyer_id,
                currency=currency,
                amount_cents=amount_cents,
                status=HoldStatus.HELD.value,
                created_at=utcnow(),
            )
        )
        if int(getattr(inserted, "rowcount", 0) or 0) != 1:
            raise HoldExists("Funds are already held for this sale.")
        await post_transaction(
            session,
            TransactionKind.HOLD,
            reference,
            [Line(wallet, -amount_cents), Line(held, amount_cents)],
        )
    return await _hold_or_not_found(session, reference)


async def lock_buyer_accounts(
    session: AsyncSession, currency: str | Collection[str], buyer_ids: Collection[str]
) -> None:
    """Lock the wallet and held accounts in ``currency`` (one, or several) of ``buyer_ids``
    (those that exist), all at once and in the order of their ids (``SELECT … ORDER BY id FOR
    UPDATE``; SQLite's write lock already covers them): for a caller about to move the money
    of several buyers in more than one transaction (an outbid leader's hold released, the
    bidder's taken; a sweep bidding on or closing several auctions). Locked one transaction
    at a time, they would be taken in the order the caller posts them, which differs between
    two such callers, and PostgreSQL would make one of them the victim of a deadlock. Call it
    once, before the first of those transactions, for every buyer they may touch: locking
    another buyer later would break the order."""
    if not buyer_ids:
        return
    currencies = [currency] if isinstance(currency, str) else sorted(set(currency))
    await session.execute(
        select(LedgerAccount.id)
        .where(
            LedgerAccount.owner_key.in_(sorted(set(buyer_ids))),
            LedgerAccount.kind.in_([AccountKind.BUYER_WALLET.value, AccountKind.BUYER_HELD.value]),
            LedgerAccount.currency.in_(currencies),
        )
        .order_by(LedgerAccount.id)
        .with_for_update()
    )


async def wallet_balances(
    session: AsyncSession, currency: str, buyer_ids: Collection[str]
) -> dict[str, int]:
    """What each of ``buyer_ids`` has in their wallet in ``currency`` (0 without a wallet), read
    without a lock: a forecast of who can pay, to decide whose accounts to lock."""
    found = await session.execute(
        select(LedgerAccount.owner_key, LedgerAccount.balance_cents).where(
            LedgerAccount.owner_key.in_(sorted(set(buyer_ids))),
            LedgerAccount.kind == AccountKind.BUYER_WALLET.value,
            LedgerAccount.currency == currency,
        )
    )
    balances = dict.fromkeys(buyer_ids, 0)
    balances.update({str(owner): int(balance) for owner, balance in found.all()})
    return balances


async def release_hold(session: AsyncSession, reference: str) -> LedgerHold:
    """Give the funds held for ``reference`` back to the buyer's wallet (the sale was cancelled
    or returned before it settled): held → wallet. Raises NotFound, or :class:`HoldClosed` if
    the hold was already released or settled."""
    async with session.begin_nested():
        hold = await _advance_hold(
            session,
            reference,
            from_status=HoldStatus.HELD,
            to_status=HoldStatus.RELEASED,
            closed_at=utcnow(),
        )
        held = await open_account(session, AccountKind.BUYER_HELD, hold.currency, hold.buyer_id)
        wallet = await open_account(session, AccountKind.BUYER_WALLET, hold.currency, hold.buyer_id)
        await post_transaction(
            session,
            TransactionKind.RELEASE,
            reference,
            [Line(held, -hold.amount_cents), Line(wallet, hold.amount_cents)],
        )
    return hold


@dataclass(frozen=True)
class Settlement:
    hold: LedgerHold
    price_cents: int
    fee_cents: int
    seller_cents: int
    returned_to_buyer_cents: int


async def settle_sale(
    session: AsyncSession,
    *,
    reference: str,
    seller_id: str,
    fee_percent: Decimal,
    price_cents: int | None = None,
) -> Settlement:
    """Pay the seller for the sale ``reference`` out of the funds held for it (after the return
    window): held → seller payable (price − fee) + platform fees (fee, see :func:`platform_fee`).
    ``price_cents`` defaults to the whole hold; a lower price (a second-price auction that held
    the buyer's maximum) returns the difference to the buyer's wallet in the same transaction.
    Raises NotFound, :class:`HoldClosed` when already settled or released; a price above the
    hold is a programming error (:class:`UnbalancedTransaction`). Nothing changes on error."""
    async with session.begin_nested():
        hold = await _advance_hold(
            session, reference, from_status=HoldStatus.HELD, to_status=HoldStatus.SETTLED
        )
        price = hold.amount_cents if price_cents is None else price_cents
        _positive(price, "a sale's price")
        if price > hold.amount_cents:
            raise UnbalancedTransaction(
                f"the price ({price}) exceeds the funds held ({hold.amount_cents})"
            )
        fee = platform_fee(price, fee_percent)
        seller_cents = price - fee
        returned = hold.amount_cents - price
        currency, buyer_id = hold.currency, hold.buyer_id
        lines = [
            Line(
                await open_account(session, AccountKind.BUYER_HELD, currency, buyer_id),
                -hold.amount_cents,
            )
        ]
        if seller_cents:
            payable = await open_account(session, AccountKind.SELLER_PAYABLE, currency, seller_id)
            lines.append(Line(payable, seller_cents))
        if fee:
            fees = await open_account(session, AccountKind.PLATFORM_FEES, currency)
            lines.append(Line(fees, fee))
        if returned:
            wallet = await open_account(session, AccountKind.BUYER_WALLET, currency, buyer_id)
            lines.append(Line(wallet, returned))
        await post_transaction(session, TransactionKind.SETTLE, reference, lines)
        hold.seller_id = seller_id
        hold.settled_cents = price
        hold.fee_cents = fee
        hold.closed_at = utcnow()
        await session.flush()
    return Settlement(hold, price, fee, seller_cents, returned)


async def refund_settled_sale(session: AsyncSession, reference: str) -> LedgerHold:
    """Give a settled sale's price back to the buyer's wallet (a dispute decided for the buyer
    after settlement): seller payable (price − fee) + platform fees (fee) → wallet. The seller's
    payable may go below zero when the seller was paid out meanwhile: then the seller owes the
    platform (a claw-back, see :mod:`leadmarket.payouts.service`). Raises NotFound, or
    :class:`HoldClosed` unless the sale is settled."""
    async with session.begin_nested():
        hold = await _advance_hold(
            session, reference, from_status=HoldStatus.SETTLED, to_status=HoldStatus.REFUNDED
        )
        assert hold.seller_id is not None
        assert hold.settled_cents is not None
        assert hold.fee_cents is not None
        currency = hold.currency
        seller_cents = hold.settled_cents - hold.fee_cents
        lines = [
            Line(
                await open_account(session, AccountKind.BUYER_WALLET, currency, hold.buyer_id),
                hold.settled_cents,
            )
        ]
        if seller_cents:
            payable = await open_account(
                session, AccountKind.SELLER_PAYABLE, currency, hold.seller_id
            )
            lines.append(Line(payable, -seller_cents))
        if hold.fee_cents:
            fees = await open_account(session, AccountKind.PLATFORM_FEES, currency)
            lines.append(Line(fees, -hold.fee_cents))
        await post_transaction(session, TransactionKind.REFUND, reference, lines)
        hold.closed_at = utcnow()
        await session.flush()
    return hold


# Reading ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WalletSummary:
    balance_cents: int
    held_cents: int
    currency: str


async def wallet_summary(session: AsyncSession, member_id: str, currency: str) -> WalletSummary:
    """What the buyer may spend and what is held for sales not yet settled. Creates nothing."""
    rows = (
        await session.execute(
            select(LedgerAccount.kind, LedgerAccount.balance_cents).where(
                LedgerAccount.owner_key == member_id,
                LedgerAccount.currency == currency,
                LedgerAccount.kind.in_([AccountKind.BUYER_WALLET, AccountKind.BUYER_HELD]),
            )
        )
    ).all()
    balances = {str(kind): int(balance) for kind, balance in rows}
    return WalletSummary(
        balance_cents=balances.get(AccountKind.BUYER_WALLET, 0),
        held_cents=balances.get(AccountKind.BUYER_HELD, 0),
        currency=currency,
    )


@dataclass(frozen=True)
class EntryView:
    id: str
    account_kind: str
    currency: str
    amount_cents: int
    balance_after_cents: int
    transaction_id: str
    transaction_kind: str
    reference: str
    created_at: dt.datetime


async def list_entries(
    session: AsyncSession, member_id: str, *, limit: int, before_id: str | None = None
) -> list[EntryView]:
    """The member's own ledger lines (wallet, held, payable), newest first: up to ``limit`` + 1
    of them, so the caller knows whether there is another page."""
    query = (
        select(
            LedgerEntry,
            LedgerAccount.kind,
            LedgerAccount.currency,
            LedgerTransaction.kind,
            LedgerTransaction.reference,
        )
        .join(LedgerAccount, LedgerAccount.id == LedgerEntry.account_id)
        .join(LedgerTransaction, LedgerTransaction.id == LedgerEntry.transaction_id)
        .where(LedgerAccount.owner_key == member_id)
        .order_by(LedgerEntry.id.desc())
        .limit(limit + 1)
    )
    if before_id is not None:
        query = query.where(LedgerEntry.id < before_id)
    rows = (await session.execute(query)).all()
    return [
        EntryView(
            id=entry.id,
            account_kind=account_kind,
            currency=currency,
            amount_cents=entry.amount_cents,
            balance_after_cents=entry.balance_after_cents,
            transaction_id=entry.transaction_id,
            transaction_kind=transaction_kind,
            reference=reference,
            created_at=entry.created_at,
        )
        for entry, account_kind, currency, transaction_kind, reference in rows
    ]


async def hold_of(session: AsyncSession, reference: str) -> LedgerHold | None:
    hold: LedgerHold | None = await session.get(LedgerHold, reference)
    return hold
