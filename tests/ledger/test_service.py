"""The ledger's rules (M5), against the real database: balanced transactions only, deposits,
holds that never overspend a wallet and move on exactly once, settlement with the platform fee,
refunds — and every refusal leaves nothing behind."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.ledger import service
from leadmarket.ledger.service import (
    HoldClosed,
    HoldExists,
    InsufficientFunds,
    Line,
    PaymentDeclined,
    UnbalancedTransaction,
)
from leadmarket.ledger.verify import verify_ledger
from leadmarket.models import (
    AccountKind,
    AuditEvent,
    Deposit,
    HoldStatus,
    LedgerEntry,
    LedgerHold,
    LedgerTransaction,
    TransactionKind,
)
from leadmarket.payments.processor import SANDBOX_DECLINE, SandboxProcessor
from tests.fixtures.ledger import fund, make_member, rows

TEN = Decimal(10)


async def balance(
    session: AsyncSession, kind: AccountKind, owner: str | None, currency: str = "USD"
) -> int:
    account = await service.find_account(session, kind, currency, owner)
    return 0 if account is None else account.balance_cents


async def test_unbalanced_lines_are_refused_and_nothing_is_written(session: AsyncSession) -> None:
    buyer = await make_member(session)
    wallet = await service.open_account(session, AccountKind.BUYER_WALLET, "USD", buyer.id)
    clearing = await service.open_account(session, AccountKind.PROCESSOR_CLEARING, "USD")
    cad_clearing = await service.open_account(session, AccountKind.PROCESSOR_CLEARING, "CAD")
    before = await rows(session, LedgerTransaction), await rows(session, LedgerEntry)
    bad_sets = [
        [Line(clearing, -100), Line(wallet, 99)],  # does not sum to zero
        [Line(wallet, 100)],  # one line
        [Line(clearing, 0), Line(wallet, 0)],  # empty lines
        [Line(clearing, -100), Line(clearing, 100)],  # the same account twice
        # Zero overall, but not per currency: 100 USD are not 100 CAD.
        [Line(cad_clearing, -100), Line(wallet, 100)],
    ]
    for lines in bad_sets:
        with pytest.raises(UnbalancedTransaction):
            await service.post_transaction(session, TransactionKind.DEPOSIT, "dep_x", lines)
    assert (await rows(session, LedgerTransaction), await rows(session, LedgerEntry)) == before
    assert await balance(session, AccountKind.BUYER_WALLET, buyer.id) == 0
    assert (await verify_ledger(session)).ok


async def test_deposit_moves_money_from_clearing_to_wallet_and_is_audited(
    session: AsyncSession,
) -> None:
    buyer = await make_member(session)
    clearing_before = await balance(session, AccountKind.PROCESSOR_CLEARING, None)
    result = await service.deposit(
        session, SandboxProcessor(), member_id=buyer.id, amount_cents=2500, currency="USD"
    )
    assert result.wallet_balance_cents == 2500
    assert result.deposit.processor == "sandbox"
    assert result.deposit.processor_reference.startswith("sbx_")
    assert await balance(session, AccountKind.BUYER_WALLET, buyer.id) == 2500
    assert await balance(session, AccountKind.PROCESSOR_CLEARING, None) == clearing_before - 2500
    audit = await session.scalar(
        select(AuditEvent).where(
            AuditEvent.action == "wallet.deposit", AuditEvent.subject_id == result.deposit.id
        )
    )
    assert audit is not None
    assert audit.actor_id == buyer.id
    assert audit.details is not None and audit.details["amount_cents"] == 2500
    assert (await verify_ledger(session)).ok


async def test_declined_deposit_changes_nothing(session: AsyncSession) -> None:
    buyer = await make_member(session)
    before = [await rows(session, m) for m in (LedgerTransaction, Deposit, AuditEvent)]
    with pytest.raises(PaymentDeclined) as refused:
        await service.deposit(
            session,
            SandboxProcessor(),
            member_id=buyer.id,
            amount_cents=2500,
            currency="USD",
            payment_method=SANDBOX_DECLINE,
        )
    assert refused.value.status == 402
    assert refused.value.extra["decline_code"] == "card_declined"
    assert [await rows(session, m) for m in (LedgerTransaction, Deposit, AuditEvent)] == before
    assert await service.find_account(session, AccountKind.BUYER_WALLET, "USD", buyer.id) is None


async def test_hold_beyond_the_wallet_is_refused_and_changes_nothing(
    session: AsyncSession,
) -> None:
    buyer = await make_member(session)
    await fund(session, buyer, 1000)
    before = await rows(session, LedgerTransaction), await rows(session, LedgerHold)
    with pytest.raises(InsufficientFunds) as refused:
        await service.hold_funds(
            session, buyer_id=buyer.id, amount_cents=1001, currency="USD", reference="ord_1"
        )
    assert refused.value.status == 402
    assert refused.value.extra == {
        "required_cents": 1001,
        "available_cents": 1000,
        "currency": "USD",
    }
    # The caller caught the refusal and carries on: nothing of the refused hold is left.
    assert (await rows(session, LedgerTransaction), await rows(session, LedgerHold)) == before
    assert await balance(session, AccountKind.BUYER_WALLET, buyer.id) == 1000
    assert await balance(session, AccountKind.BUYER_HELD, buyer.id) == 0
    # A wallet in another currency is another wallet.
    with pytest.raises(InsufficientFunds):
        await service.hold_funds(
            session, buyer_id=buyer.id, amount_cents=1, currency="CAD", reference="ord_2"
        )
    hold = await service.hold_funds(
        session, buyer_id=buyer.id, amount_cents=1000, currency="USD", reference="ord_1"
    )
    assert hold.status == HoldStatus.HELD
    assert await balance(session, AccountKind.BUYER_WALLET, buyer.id) == 0
    assert await balance(session, AccountKind.BUYER_HELD, buyer.id) == 1000
    assert (await verify_ledger(session)).ok


async def test_a_reference_holds_funds_once(session: AsyncSession) -> None:
    buyer = await make_member(session)
    await fund(session, buyer, 1000)
    await service.hold_funds(
        session, buyer_id=buyer.id, amount_cents=300, currency="USD", reference="ord_once"
    )
    with pytest.raises(HoldExists):
        await service.hold_funds(
            session, buyer_id=buyer.id, amount_cents=300, currency="USD", reference="ord_once"
        )
    assert await balance(session, AccountKind.BUYER_WALLET, buyer.id) == 700
    assert (await verify_ledger(session)).ok


async def test_release_gives_the_funds_back_once(session: AsyncSession) -> None:
    buyer, seller = await make_member(session), await make_member(session, "seller")
    await fund(session, buyer, 1000)
    await service.hold_funds(
        session, buyer_id=buyer.id, amount_cents=400, currency="USD", reference="ord_r"
    )
    hold = await service.release_hold(session, "ord_r")
    assert hold.status == HoldStatus.RELEASED
    assert await balance(session, AccountKind.BUYER_WALLET, buyer.id) == 1000
    assert await balance(session, AccountKind.BUYER_HELD, buyer.id) == 0
    with pytest.raises(HoldClosed):
        await service.release_hold(session, "ord_r")
    with pytest.raises(HoldClosed):
        await service.settle_sale(session, reference="ord_r", seller_id=seller.id, fee_percent=TEN)
    with pytest.raises(service.NotFound):
        await service.release_hold(session, "ord_unknown")
    assert await balance(session, AccountKind.BUYER_WALLET, buyer.id) == 1000
    assert (await verify_ledger(session)).ok


@pytest.mark.parametrize(
    ("price", "percent", "fee"),
    [
        (1000, "10", 100),
        (1009, "10", 100),
        (1, "10", 0),
        (999, "7.5", 74),
        (1000, "0", 0),
        (1000, "100", 1000),
        (12345, "12.34", 1523),
    ],
)
def test_platform_fee_is_rounded_down_to_whole_cents(price: int, percent: str, fee: int) -> None:
    assert service.platform_fee(price, Decimal(percent)) == fee


async def test_settlement_pays_seller_price_less_fee_and_platform_the_fee(
    session: AsyncSession,
) -> None:
    buyer, seller = await make_member(session), await make_member(session, "seller")
    await fund(session, buyer, 5000)
    fees_before = await balance(session, AccountKind.PLATFORM_FEES, None)
    await service.hold_funds(
        session, buyer_id=buyer.id, amount_cents=1009, currency="USD", reference="ord_s"
    )
    settled = await service.settle_sale(
        session, reference="ord_s", seller_id=seller.id, fee_percent=TEN
    )
    assert (settled.price_cents, settled.fee_cents, settled.seller_cents) == (1009, 100, 909)
    assert settled.returned_to_buyer_cents == 0
    assert settled.hold.status == HoldStatus.SETTLED
    assert await balance(session, AccountKind.SELLER_PAYABLE, seller.id) == 909
    assert await balance(session, AccountKind.PLATFORM_FEES, None) == fees_before + 100
    assert await balance(session, AccountKind.BUYER_HELD, buyer.id) == 0
    assert await balance(session, AccountKind.BUYER_WALLET, buyer.id) == 5000 - 1009
    with pytest.raises(HoldClosed):
        await service.settle_sale(session, reference="ord_s", seller_id=seller.id, fee_percent=TEN)
    with pytest.raises(HoldClosed):
        await service.release_hold(session, "ord_s")
    assert await balance(session, AccountKind.SELLER_PAYABLE, seller.id) == 909
    assert (await verify_ledger(session)).ok


async def test_settling_below_the_hold_returns_the_rest_to_the_wallet(
    session: AsyncSession,
) -> None:
    """A second-price auction holds the buyer's maximum and settles at the price paid."""
    buyer, seller = await make_member(session), await make_member(session, "seller")
    await fund(session, buyer, 5000)
    await service.hold_funds(
        session, buyer_id=buyer.id, amount_cents=3000, currency="USD", reference="ord_p"
    )
    with pytest.raises(UnbalancedTransaction):
        await service.settle_sale(
            session, reference="ord_p", seller_id=seller.id, fee_percent=TEN, price_cents=3001
        )
    settled = await service.settle_sale(
        session, reference="ord_p", seller_id=seller.id, fee_percent=TEN, price_cents=2000
    )
    assert (settled.fee_cents, settled.seller_cents, settled.returned_to_buyer_cents) == (
        200,
        1800,
        1000,
    )
    assert await balance(session, AccountKind.BUYER_WALLET, buyer.id) == 3000
    assert await balance(session, AccountKind.BUYER_HELD, buyer.id) == 0
    assert (await verify_ledger(session)).ok


async def test_refund_after_settlement_returns_the_price_to_the_buyer(
    session: AsyncSession,
) -> None:
    buyer, seller = await make_member(session), await make_member(session, "seller")
    await fund(session, buyer, 2000)
    fees_before = await balance(session, AccountKind.PLATFORM_FEES, None)
    await service.hold_funds(
        session, buyer_id=buyer.id, amount_cents=1500, currency="USD", reference="ord_f"
    )
    with pytest.raises(HoldClosed):
        await service.refund_settled_sale(session, "ord_f")  # not settled yet
    await service.settle_sale(session, reference="ord_f", seller_id=seller.id, fee_percent=TEN)
    hold = await service.refund_settled_sale(session, "ord_f")
    assert hold.status == HoldStatus.REFUNDED
    assert await balance(session, AccountKind.BUYER_WALLET, buyer.id) == 2000
    assert await balance(session, AccountKind.SELLER_PAYABLE, seller.id) == 0
    assert await balance(session, AccountKind.PLATFORM_FEES, None) == fees_before
    with pytest.raises(HoldClosed):
        await service.refund_settled_sale(session, "ord_f")
    assert (await verify_ledger(session)).ok


async def test_wallet_summary_and_entries_are_the_members_own(session: AsyncSession) -> None:
    buyer, other = await make_member(session), await make_member(session)
    await fund(session, buyer, 1000)
    await fund(session, other, 7000)
    await service.hold_funds(
        session, buyer_id=buyer.id, amount_cents=250, currency="USD", reference="ord_w"
    )
    summary = await service.wallet_summary(session, buyer.id, "USD")
    assert (summary.balance_cents, summary.held_cents, summary.currency) == (750, 250, "USD")
    entries = await service.list_entries(session, buyer.id, limit=10)
    assert sorted((e.transaction_kind, e.account_kind, e.amount_cents) for e in entries) == [
        ("deposit", "buyer_wallet", 1000),
        ("hold", "buyer_held", 250),
        ("hold", "buyer_wallet", -250),
    ]
    page = await service.list_entries(session, buyer.id, limit=2)
    assert len(page) == 3  # one more than asked: there is another page
    rest = await service.list_entries(session, buyer.id, limit=2, before_id=page[1].id)
    assert [e.id for e in page[:2] + rest] == [e.id for e in entries]
    empty = await service.wallet_summary(session, buyer.id, "CAD")
    assert (empty.balance_cents, empty.held_cents) == (0, 0)
