"""The wallet API (M5): balance, deposits through the payment processor, the ledger lines.

Deposits need ``Action.MOVE_MONEY``: a remembered session must enter the password again (A2),
and API keys may not deposit — charging the member's card is for a person at a keyboard;
integrations spend the wallet (buying) but never fill it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, status
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.accounts.auth import Principal, requires
from leadmarket.accounts.policy import Action
from leadmarket.config import settings_of
from leadmarket.kit.idempotency import check_key
from leadmarket.kit.money import DEFAULT_CURRENCY, Currency
from leadmarket.kit.pagination import Cursor, Limit, Page, decode_cursor, encode_cursor
from leadmarket.kit.routing import TransactionalRoute, get_session
from leadmarket.ledger import service
from leadmarket.ledger.schemas import DepositIn, DepositOut, EntryOut, WalletOut
from leadmarket.models import Role

router = APIRouter(prefix="/api/v1/wallet", route_class=TransactionalRoute, tags=["wallet"])
Session = Annotated[AsyncSession, Depends(get_session)]


def entry_out(entry: service.EntryView) -> EntryOut:
    return EntryOut(
        id=entry.id,
        account=entry.account_kind,
        amount_cents=entry.amount_cents,
        balance_after_cents=entry.balance_after_cents,
        currency=entry.currency,
        kind=entry.transaction_kind,
        reference=entry.reference,
        transaction_id=entry.transaction_id,
        created_at=entry.created_at,
    )


@router.get("", summary="The buyer's wallet: spendable balance and funds held for sales")
async def get_wallet(
    session: Session,
    principal: Principal = Depends(requires(Action.VIEW_DASHBOARD, Role.BUYER)),
    currency: Annotated[Currency, Query()] = DEFAULT_CURRENCY,
) -> WalletOut:
    summary = await service.wallet_summary(session, principal.user.id, currency)
    return WalletOut(
        balance_cents=summary.balance_cents,
        held_cents=summary.held_cents,
        currency=summary.currency,
    )


@router.post(
    "/deposits",
    status_code=status.HTTP_201_CREATED,
    summary="Deposit into the wallet through the payment processor",
    response_model=DepositOut,
    responses={
        402: {"description": "The processor declined the charge (type …/payment-declined)"},
        502: {
            "description": "The processor did not answer; retry with the same Idempotency-Key "
            "(type …/payment-processor-failed)"
        },
        409: {"description": "Idempotency-Key reused with another body"},
        422: {"description": "Invalid amount (at most LEADMARKET_DEPOSIT_MAX_CENTS)"},
    },
)
async def create_deposit(
    body: DepositIn,
    request: Request,
    session: Session,
    principal: Principal = Depends(requires(Action.MOVE_MONEY, Role.BUYER)),
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> Any:
    status_code, answer = await service.deposit_once(
        session,
        settings_of(request),
        member_id=principal.user.id,
        body=body,
        idempotency_key=check_key(idempotency_key),
    )
    return JSONResponse(answer, status_code=status_code)


@router.get("/entries", summary="The member's ledger lines, newest first")
async def list_entries(
    session: Session,
    principal: Principal = Depends(requires(Action.VIEW_DASHBOARD, Role.BUYER, Role.SELLER)),
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[EntryOut]:
    rows = await service.list_entries(
        session, principal.user.id, limit=limit, before_id=decode_cursor(cursor)
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(
        items=[entry_out(row) for row in rows],
        next_cursor=encode_cursor(rows[-1].id) if more and rows else None,
    )
