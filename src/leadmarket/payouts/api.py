"""The payouts API (M5): a seller asks for their settled balance, and reads their payouts.

Moving money out of the platform is for a person who knows the password: an API key may not
(``Action.MOVE_MONEY``), and a remembered session must re-enter the password first (A2)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.accounts.auth import Principal, requires
from leadmarket.accounts.policy import Action
from leadmarket.config import settings_of
from leadmarket.kit.idempotency import check_key, run_once
from leadmarket.kit.pagination import Cursor, Limit, Page, decode_cursor, encode_cursor
from leadmarket.kit.routing import TransactionalRoute, get_session
from leadmarket.models import Payout, Role
from leadmarket.payouts import service
from leadmarket.payouts.schemas import PayoutIn, PayoutOut

router = APIRouter(prefix="/api/v1", route_class=TransactionalRoute, tags=["payouts"])
Session = Annotated[AsyncSession, Depends(get_session)]


def payout_out(payout: Payout, balance_cents: int | None = None) -> PayoutOut:
    return PayoutOut(
        id=payout.id,
        amount_cents=payout.amount_cents,
        currency=payout.currency,
        status=payout.status,
        processor=payout.processor,
        processor_reference=payout.processor_reference,
        requested_by=payout.requested_by,
        created_at=payout.created_at,
        balance_cents=balance_cents,
    )


@router.post(
    "/payouts",
    status_code=201,
    summary="Pay out your settled balance (sellers): only sales past their return window",
    responses={
        402: {"description": "The processor refused (…/payout-refused)"},
        409: {"description": "Nothing settled to pay out (…/nothing-to-pay-out)"},
    },
)
async def request_payout(
    request: Request,
    session: Session,
    body: PayoutIn | None = None,
    principal: Principal = Depends(requires(Action.MOVE_MONEY, Role.SELLER)),
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JSONResponse:
    settings = settings_of(request)
    seller = principal.user
    body = body or PayoutIn()

    async def run() -> tuple[int, dict[str, Any]]:
        result = await service.request_payout(
            session, settings, seller, currency=body.currency, destination=body.destination
        )
        return 201, payout_out(result.payout, result.balance_cents).model_dump(mode="json")

    code, answer = await run_once(
        session,
        seller.id,
        check_key(idempotency_key),
        {"payouts.request": body.model_dump(mode="json")},
        run,
    )
    return JSONResponse(answer, status_code=code)


@router.get("/payouts", summary="Your payouts, newest first (sellers)")
async def list_payouts(
    session: Session,
    principal: Principal = Depends(requires(Action.VIEW_DASHBOARD, Role.SELLER)),
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[PayoutOut]:
    rows = await service.list_payouts(
        session, principal.user.id, limit=limit, before_id=decode_cursor(cursor)
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(
        items=[payout_out(p) for p in rows],
        next_cursor=encode_cursor(rows[-1].id) if more and rows else None,
    )
