"""``leadmarket ledger verify``: the ledger's invariants, recomputed from its rows.

The built-in checks:

1. every transaction has at least two entries, and its entries sum to zero per currency;
2. every account's balance equals the sum of its entries;
3. no wallet or held account is below zero, nor ever was (each entry's balance after it);
4. each buyer's held balance equals the sum of their open holds;
5. every hold has exactly its transactions, each with exactly its amounts: the hold itself, then
   a release, or a settlement (held → seller payable, platform fees, wallet for any remainder),
   then possibly a refund — one of each, on the right members' accounts.

**Extension point** for the domains built on the ledger: a check is an async function taking
the session and returning a list of problems (sentences with ids, never personal data),
registered with :func:`ledger_check`. Orders will register "every sale has exactly its
entries" (each sold order has a hold for its id, settled at its price once its return window
has passed, released if it was cancelled or returned). So that the CLI sees it, the module
defining it is listed in :data:`CHECK_MODULES`, which :func:`verify_ledger` imports first."""

from __future__ import annotations

import importlib
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.models import (
    AccountKind,
    HoldStatus,
    LedgerAccount,
    LedgerEntry,
    LedgerHold,
    LedgerTransaction,
    TransactionKind,
)
from leadmarket.models.ledger import NON_NEGATIVE_KINDS, PLATFORM_OWNER

# Enough to see what is wrong without printing a million lines.
MAX_PROBLEMS_PER_CHECK = 100

LedgerCheck = Callable[[AsyncSession], Awaitable[list[str]]]

# Modules that register checks with @ledger_check (e.g. "leadmarket.orders.ledger_checks").
CHECK_MODULES: tuple[str, ...] = (
    "leadmarket.orders.ledger_checks",
    "leadmarket.returns.ledger_checks",
)
_REGISTERED: dict[str, LedgerCheck] = {}


def ledger_check(name: str) -> Callable[[LedgerCheck], LedgerCheck]:
    """Register ``func`` as an extra check run by :func:`verify_ledger` under ``name``."""

    def register(check: LedgerCheck) -> LedgerCheck:
        _REGISTERED[name] = check
        return check

    return register


@dataclass
class LedgerReport:
    transactions: int = 0
    accounts: int = 0
    holds: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


async def _unbalanced_transactions(session: AsyncSession) -> list[str]:
    total = func.sum(LedgerEntry.amount_cents)
    rows = await session.execute(
        select(LedgerEntry.transaction_id, LedgerAccount.currency, total)
        .join(LedgerAccount, LedgerAccount.id == LedgerEntry.account_id)
        .group_by(LedgerEntry.transaction_id, LedgerAccount.currency)
        .having(total != 0)
        .order_by(LedgerEntry.transaction_id)
        .limit(MAX_PROBLEMS_PER_CHECK)
    )
    problems = [
        f"transaction {tx} does not balance: its {currency} entries sum to {int(s)} cents"
        for tx, currency, s in rows
    ]
    count = func.count(LedgerEntry.id)
    thin = await session.execute(
        select(LedgerTransaction.id, count)
        .outerjoin(LedgerEntry, LedgerEntry.transaction_id == LedgerTransaction.id)
        .group_by(LedgerTransaction.id)
        .having(count < 2)
        .order_by(LedgerTransaction.id)
        .limit(MAX_PROBLEMS_PER_CHECK)
    )
    problems += [f"transaction {tx} has {int(n)} entries (at least 2)" for tx, n in thin]
    return problems


async def _balances_disagree_with_entries(session: AsyncSession) -> list[str]:
    entries_total = func.coalesce(func.sum(LedgerEntry.amount_cents), 0)
    rows = await session.execute(
        select(LedgerAccount.id, LedgerAccount.balance_cents, entries_total)
        .outerjoin(LedgerEntry, LedgerEntry.account_id == LedgerAccount.id)
        .group_by(LedgerAccount.id, LedgerAccount.balance_cents)
        .having(LedgerAccount.balance_cents != entries_total)
        .order_by(LedgerAccount.id)
        .limit(MAX_PROBLEMS_PER_CHECK)
    )
    return [
        f"account {account} has a balance of {int(balance)} cents, its entries sum to {int(s)}"
        for account, balance, s in rows
    ]


async def _negative_member_funds(session: AsyncSession) -> list[str]:
    """A wallet or held account below zero now, or at any moment of its history: each entry
    keeps the balance right after it, so an overdraft later topped up shows there."""
    member_funds = LedgerAccount.kind.in_([k.value for k in NON_NEGATIVE_KINDS])
    now = await session.execute(
        select(LedgerAccount.id, LedgerAccount.kind, LedgerAccount.balance_cents)
        .where(member_funds, LedgerAccount.balance_cents < 0)
        .order_by(LedgerAccount.id)
        .limit(MAX_PROBLEMS_PER_CHECK)
    )
    problems = [
        f"{kind} account {account} is negative: {int(balance)} cents"
        for account, kind, balance in now
    ]
    ever = await session.execute(
        select(
            LedgerAccount.id, LedgerAccount.kind, LedgerEntry.balance_after_cents, LedgerEntry.id
        )
        .join(LedgerAccount, LedgerAccount.id == LedgerEntry.account_id)
        .where(member_funds, LedgerEntry.balance_after_cents < 0)
        .order_by(LedgerEntry.id)
        .limit(MAX_PROBLEMS_PER_CHECK)
    )
    problems += [
        f"{kind} account {account} went negative: {int(balance)} cents after entry {entry}"
        for account, kind, balance, entry in ever
    ]
    return problems[:MAX_PROBLEMS_PER_CHECK]


async def _held_balance_is_open_holds(session: AsyncSession) -> list[str]:
    open_holds = (
        select(
            LedgerHold.buyer_id,
            LedgerHold.currency,
            func.sum(LedgerHold.amount_cents).label("total"),
        )
        .where(LedgerHold.status == HoldStatus.HELD.value)
        .group_by(LedgerHold.buyer_id, LedgerHold.currency)
        .subquery()
    )
    expected = func.coalesce(open_holds.c.total, 0)
    rows = await session.execute(
        select(LedgerAccount.id, LedgerAccount.balance_cents, expected)
        .outerjoin(
            open_holds,
            and_(
                open_holds.c.buyer_id == LedgerAccount.owner_id,
                open_holds.c.currency == LedgerAccount.currency,
            ),
        )
        .where(
            LedgerAccount.kind == AccountKind.BUYER_HELD.value,
            LedgerAccount.balance_cents != expected,
        )
        .order_by(LedgerAccount.id)
        .limit(MAX_PROBLEMS_PER_CHECK)
    )
    problems = [
        f"held account {account} holds {int(balance)} cents, its open holds {int(total)}"
        for account, balance, total in rows
    ]
    orphans = await session.execute(
        select(LedgerHold.buyer_id, LedgerHold.currency)
        .where(LedgerHold.status == HoldStatus.HELD.value)
        .outerjoin(
            LedgerAccount,
            and_(
                LedgerAccount.owner_id == LedgerHold.buyer_id,
                LedgerAccount.currency == LedgerHold.currency,
                LedgerAccount.kind == AccountKind.BUYER_HELD.value,
            ),
        )
        .where(LedgerAccount.id.is_(None))
        .distinct()
        .limit(MAX_PROBLEMS_PER_CHECK)
    )
    problems += [
        f"buyer {buyer} has open {currency} holds but no held account"
        for buyer, currency in orphans
    ]
    return problems


_HOLD_TRANSACTIONS = (
    TransactionKind.HOLD,
    TransactionKind.RELEASE,
    TransactionKind.SETTLE,
    TransactionKind.REFUND,
)
# (transaction kind, account kind, owner key) → cents
Movements = dict[tuple[str, str, str], int]


def _expected_movements(hold: LedgerHold) -> tuple[set[str], Movements]:
    """The transactions a hold in its status must have, and what they move where."""
    amount, buyer = hold.amount_cents, hold.buyer_id
    wallet, held = AccountKind.BUYER_WALLET.value, AccountKind.BUYER_HELD.value
    payable, fees = AccountKind.SELLER_PAYABLE.value, AccountKind.PLATFORM_FEES.value
    hold_kind, settle, refund = "hold", "settle", "refund"
    kinds = {hold_kind}
    moves: Movements = {(hold_kind, wallet, buyer): -amount, (hold_kind, held, buyer): amount}
    if hold.status == HoldStatus.RELEASED:
        kinds.add("release")
        moves[("release", held, buyer)] = -amount
        moves[("release", wallet, buyer)] = amount
    elif hold.status in (HoldStatus.SETTLED, HoldStatus.REFUNDED):
        price, fee, seller = hold.settled_cents or 0, hold.fee_cents or 0, hold.seller_id or "?"
        kinds.add(settle)
        moves[(settle, held, buyer)] = -amount
        moves[(settle, payable, seller)] = price - fee
        moves[(settle, fees, PLATFORM_OWNER)] = fee
        moves[(settle, wallet, buyer)] = amount - price
        if hold.status == HoldStatus.REFUNDED:
            kinds.add(refund)
            moves[(refund, wallet, buyer)] = price
            moves[(refund, payable, seller)] = -(price - fee)
            moves[(refund, fees, PLATFORM_OWNER)] = -fee
    return kinds, {key: cents for key, cents in moves.items() if cents}


async def _holds_have_their_transactions(session: AsyncSession) -> list[str]:
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    rows = await session.execute(
        select(LedgerTransaction.reference, LedgerTransaction.kind, func.count())
        .join(LedgerHold, LedgerHold.reference == LedgerTransaction.reference)
        .where(LedgerTransaction.kind.in_([k.value for k in _HOLD_TRANSACTIONS]))
        .group_by(LedgerTransaction.reference, LedgerTransaction.kind)
    )
    for reference, kind, n in rows:
        counts[reference][kind] = int(n)
    moved: dict[str, Movements] = defaultdict(dict)
    sums = await session.execute(
        select(
            LedgerTransaction.reference,
            LedgerTransaction.kind,
            LedgerAccount.kind,
            LedgerAccount.owner_key,
            func.sum(LedgerEntry.amount_cents),
        )
        .join(LedgerHold, LedgerHold.reference == LedgerTransaction.reference)
        .join(LedgerEntry, LedgerEntry.transaction_id == LedgerTransaction.id)
        .join(LedgerAccount, LedgerAccount.id == LedgerEntry.account_id)
        .where(LedgerTransaction.kind.in_([k.value for k in _HOLD_TRANSACTIONS]))
        .group_by(
            LedgerTransaction.reference,
            LedgerTransaction.kind,
            LedgerAccount.kind,
            LedgerAccount.owner_key,
        )
    )
    for reference, tx_kind, account_kind, owner, total in sums:
        if int(total):
            moved[reference][(tx_kind, account_kind, owner)] = int(total)
    problems: list[str] = []
    for hold in await session.scalars(select(LedgerHold).order_by(LedgerHold.reference)):
        kinds, moves = _expected_movements(hold)
        found = counts.get(hold.reference, {})
        if set(found) != kinds or any(n != 1 for n in found.values()):
            problems.append(
                f"hold {hold.reference} ({hold.status}) should have one each of "
                f"{sorted(kinds)}, has {dict(sorted(found.items()))}"
            )
        elif moved.get(hold.reference, {}) != moves:
            problems.append(
                f"hold {hold.reference} ({hold.status}): its transactions do not move exactly "
                "the held, settled and fee amounts between its buyer's, seller's and the "
                "platform's accounts"
            )
        if len(problems) >= MAX_PROBLEMS_PER_CHECK:
            break
    return problems


BUILT_IN_CHECKS: tuple[tuple[str, LedgerCheck], ...] = (
    ("transactions balance", _unbalanced_transactions),
    ("balances match entries", _balances_disagree_with_entries),
    ("no wallet or held funds ever negative", _negative_member_funds),
    ("held funds match open holds", _held_balance_is_open_holds),
    ("holds have exactly their transactions", _holds_have_their_transactions),
)


def registered_checks() -> dict[str, LedgerCheck]:
    """The extra checks of other domains (importing :data:`CHECK_MODULES` registers them)."""
    for module in CHECK_MODULES:
        importlib.import_module(module)
    return dict(_REGISTERED)


async def verify_ledger(session: AsyncSession) -> LedgerReport:
    """Run every check; the report lists each problem found (at most
    :data:`MAX_PROBLEMS_PER_CHECK` per check). Reads only."""
    report = LedgerReport(
        transactions=int(await session.scalar(select(func.count(LedgerTransaction.id))) or 0),
        accounts=int(await session.scalar(select(func.count(LedgerAccount.id))) or 0),
        holds=int(await session.scalar(select(func.count(LedgerHold.reference))) or 0),
    )
    for _name, check in (*BUILT_IN_CHECKS, *registered_checks().items()):
        report.problems += await check(session)
    return report
