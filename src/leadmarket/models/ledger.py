"""The double-entry ledger (M5): accounts, transactions, their entries, the holds on buyers'
funds, and deposits.

Every movement of money is a :class:`LedgerTransaction` whose :class:`LedgerEntry` lines sum to
zero per currency. Amounts are signed integer cents; an account holds one currency. The sign is
the account's own point of view: a buyer's wallet goes up (+) when they deposit, the processor's
clearing account goes down (−) by the same amount, since that money came from outside.

``LedgerAccount.balance_cents`` is the sum of the account's entries, kept in the same
transaction as the entries by a conditional UPDATE (``ledger.service``); the CHECK constraint
below is the database's own refusal of a negative wallet or held balance, a second line behind
that UPDATE."""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from leadmarket.kit.db import Base, UTCDateTime, utcnow
from leadmarket.kit.ids import new_id


class AccountKind(enum.StrEnum):
    # A member's own accounts.
    BUYER_WALLET = "buyer_wallet"  # spendable funds
    BUYER_HELD = "buyer_held"  # funds set aside for won sales until they settle
    SELLER_PAYABLE = "seller_payable"  # what the platform owes a seller
    # The platform's, one per currency.
    PLATFORM_FEES = "platform_fees"
    PROCESSOR_CLEARING = "processor_clearing"


MEMBER_KINDS = frozenset(
    {AccountKind.BUYER_WALLET, AccountKind.BUYER_HELD, AccountKind.SELLER_PAYABLE}
)
# Accounts whose balance is a member's own money: it can never be below zero.
NON_NEGATIVE_KINDS = frozenset({AccountKind.BUYER_WALLET, AccountKind.BUYER_HELD})
# ``owner_key`` of the platform's accounts (NULLs never collide in a unique constraint, so the
# platform needs a value of its own for "one account per kind and currency" to hold).
PLATFORM_OWNER = "platform"


class TransactionKind(enum.StrEnum):
    DEPOSIT = "deposit"  # processor clearing → wallet
    HOLD = "hold"  # wallet → held
    RELEASE = "release"  # held → wallet
    SETTLE = "settle"  # held → seller payable + platform fees (+ wallet for what was not spent)
    REFUND = "refund"  # seller payable + platform fees → wallet, after a settlement
    PAYOUT = "payout"  # seller payable → processor clearing (paid out to the seller)


class HoldStatus(enum.StrEnum):
    HELD = "held"
    RELEASED = "released"
    SETTLED = "settled"
    REFUNDED = "refunded"


class DepositStatus(enum.StrEnum):
    SETTLED = "settled"


def _in(column: str, values: frozenset[AccountKind] | type[AccountKind]) -> str:
    return f"{column} IN ({', '.join(repr(str(v)) for v in sorted(values))})"


class LedgerAccount(Base):
    __tablename__ = "ledger_accounts"
    __table_args__ = (
        UniqueConstraint("owner_key", "kind", "currency"),
        CheckConstraint(_in("kind", AccountKind), name="kind_known"),
        CheckConstraint(
            f"NOT ({_in('kind', NON_NEGATIVE_KINDS)}) OR balance_cents >= 0",
            name="member_funds_not_negative",
        ),
        CheckConstraint(
            f"({_in('kind', MEMBER_KINDS)}) = (owner_id IS NOT NULL)",
            name="member_accounts_have_owner",
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("acct"))
    kind: Mapped[str] = mapped_column(String(20))
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"))
    # owner_id, or PLATFORM_OWNER for the platform's accounts.
    owner_key: Mapped[str] = mapped_column(String(40))
    currency: Mapped[str] = mapped_column(String(3))
    balance_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class LedgerTransaction(Base):
    """One movement of money. ``reference`` names what caused it: a deposit id, an order id."""

    __tablename__ = "ledger_transactions"
    __table_args__ = (Index("ix_ledger_transactions_reference_kind", "reference", "kind"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ltx"))
    kind: Mapped[str] = mapped_column(String(12))
    reference: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class LedgerEntry(Base):
    """One line of a transaction. ``balance_after_cents`` is the account's balance right after
    this line, as the conditional UPDATE returned it (a statement shows it without a sum)."""

    __tablename__ = "ledger_entries"
    __table_args__ = (Index("ix_ledger_entries_account_id_id", "account_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ent"))
    transaction_id: Mapped[str] = mapped_column(ForeignKey("ledger_transactions.id"), index=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("ledger_accounts.id"))
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    balance_after_cents: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class LedgerHold(Base):
    """Funds set aside for one sale (``reference``, e.g. an order id), and what became of them.
    The status moves only forward, each step a conditional UPDATE from the status before, so a
    hold is settled or released exactly once whatever runs at the same time."""

    __tablename__ = "ledger_holds"
    __table_args__ = (
        CheckConstraint("amount_cents > 0", name="amount_positive"),
        CheckConstraint(
            "settled_cents IS NULL OR (settled_cents >= 0 AND settled_cents <= amount_cents)",
            name="settled_within_hold",
        ),
    )

    reference: Mapped[str] = mapped_column(String(80), primary_key=True)
    buyer_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    currency: Mapped[str] = mapped_column(String(3))
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(10), default=HoldStatus.HELD.value)
    # Set on settlement: the seller, the price settled and the platform's fee out of it.
    seller_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"))
    settled_cents: Mapped[int | None] = mapped_column(BigInteger)
    fee_cents: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class Deposit(Base):
    """Money a buyer paid in through the payment processor. Only settled deposits are stored: a
    declined charge changes nothing (its request is rolled back)."""

    __tablename__ = "deposits"
    __table_args__ = (Index("ix_deposits_user_id_id", "user_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("dep"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(10), default=DepositStatus.SETTLED.value)
    processor: Mapped[str] = mapped_column(String(20))
    # The processor's id of the charge, to reconcile with its reports.
    processor_reference: Mapped[str] = mapped_column(String(100))
    transaction_id: Mapped[str] = mapped_column(ForeignKey("ledger_transactions.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
