"""The ping/post API (docs/api.md "Buying"): ``POST /api/v1/ping`` prices a lead without its
contact data, ``POST /api/v1/post`` sends the contact and sells it to the ping's winner, and
``GET /api/v1/pings`` lists a seller's pings. Every rule lives in :mod:`.service`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request, status
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.accounts.auth import Principal, rechecked_principal, requires, requires_rechecked
from leadmarket.accounts.policy import Action
from leadmarket.kit.fastlane import LaneRequest, LaneResponse
from leadmarket.kit.idempotency import check_key
from leadmarket.kit.pagination import Cursor, Limit, Page, decode_cursor, encode_cursor
from leadmarket.kit.routing import TransactionalRoute, get_session
from leadmarket.leads.intake import LeadsKit
from leadmarket.models import Ping, Role
from leadmarket.pingpost import service
from leadmarket.pingpost.schemas import PingIn, PingOut, PingRowOut, PostIn, PostOut

router = APIRouter(prefix="/api/v1", route_class=TransactionalRoute, tags=["ping/post"])
Session = Annotated[AsyncSession, Depends(get_session)]


async def get_ping_kit(request: Request) -> service.PingKit:
    # async: a plain def dependency would be run in the thread pool, for nothing.
    kit: service.PingKit = request.app.state.pingpost
    return kit


Kit = Annotated[service.PingKit, Depends(get_ping_kit)]


@router.post(
    "/ping",
    response_model=PingOut,
    summary="Price a lead before sending its contact data (sellers)",
    responses={
        409: {"description": "The same ping a few minutes ago (…/duplicate-ping)"},
        422: {"description": "Invalid field, or a field a ping may not carry (contact data)"},
    },
)
async def ping(
    body: PingIn,
    kit: Kit,
    principal: Principal = Depends(requires_rechecked(Action.SELL_LEADS, Role.SELLER)),
) -> PingOut:
    """Answered from the in-memory campaign index (and buyers' own endpoints, within
    ``LEADMARKET_PING_DEADLINE_MS``); the ping is recorded with the others arriving at the same
    moment, and answered once recorded. (Served by :func:`ping_in_fast_lane`; this declaration
    is what OpenAPI documents, and what answers if the lane is not installed.)"""
    return await service.ping(
        kit,
        seller=principal.user,
        api_key_id=principal.api_key.id if principal.api_key is not None else None,
        data=body,
    )


async def ping_in_fast_lane(request: LaneRequest) -> LaneResponse:
    """``POST /api/v1/ping`` in the fast lane (``kit.fastlane``): the route above, in the order
    FastAPI applies it (malformed JSON, then the guard, then the body's model); a body that is
    plainly a valid ping is read in one step first (``LaneRequest.plainly_valid``)."""
    data = request.plainly_valid(PingIn)
    if data is None:
        payload = request.json_payload()
        principal = await rechecked_principal(request, Action.SELL_LEADS, (Role.SELLER,))
        data = request.validate(PingIn, payload)
    else:
        principal = await rechecked_principal(request, Action.SELL_LEADS, (Role.SELLER,))
    kit: service.PingKit = request.app.state.pingpost
    answer = await service.ping(
        kit,
        seller=principal.user,
        api_key_id=principal.api_key.id if principal.api_key is not None else None,
        data=data,
    )
    return LaneResponse.of_model(answer)


# What the application's fast lane answers itself (see app.create_app).
FAST_LANE = {("POST", "/api/v1/ping"): ping_in_fast_lane}


@router.post(
    "/post",
    status_code=status.HTTP_201_CREATED,
    response_model=PostOut,
    summary="Send a pinged lead's contact and consent; it is sold to the ping's winner (sellers)",
    responses={
        404: {"description": "None of your pings has this id"},
        409: {
            "description": "Posted already (…/ping-already-posted), expired (…/ping-expired), "
            "nobody bid (…/ping-not-accepted), a duplicate lead, or Idempotency-Key reused"
        },
        422: {"description": "Invalid field, not the ping's place, or under 14 (…/minor)"},
    },
)
async def post(
    body: PostIn,
    request: Request,
    session: Session,
    kit: Kit,
    principal: Principal = Depends(requires(Action.SELL_LEADS, Role.SELLER)),
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JSONResponse:
    leads_kit: LeadsKit = request.app.state.leads_kit
    status_code, answer = await service.post(
        session,
        kit,
        leads_kit,
        seller=principal.user,
        data=body,
        idempotency_key=check_key(idempotency_key),
    )
    return JSONResponse(answer, status_code=status_code)


def ping_row(ping: Ping) -> PingRowOut:
    return PingRowOut(
        id=ping.id,
        vertical=ping.vertical,
        region=ping.region,
        postal_prefix=ping.postal_prefix,
        age_band=ping.age_band or None,
        accepted=ping.accepted,
        price_cents=ping.price_cents,
        currency=ping.currency,
        created_at=ping.created_at,
        expires_at=ping.expires_at,
        posted_at=ping.posted_at,
        outcome=ping.outcome,
        sold_price_cents=ping.sold_price_cents,
        order_id=ping.order_id,
    )


@router.get("/pings", summary="A seller's pings, newest first")
async def list_pings(
    session: Session,
    principal: Principal = Depends(requires(Action.VIEW_DASHBOARD, Role.SELLER)),
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[PingRowOut]:
    rows = await service.recent_pings(
        session, principal.user, limit=limit, before_id=decode_cursor(cursor)
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(
        items=[ping_row(p) for p in rows],
        next_cursor=encode_cursor(rows[-1].id) if more and rows else None,
    )
