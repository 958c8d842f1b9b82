"""The auction API: bids (buyers), the auction's state, and its live updates (server-sent
events). Buying outright is in the orders API."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Request, status
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.accounts.auth import Principal, requires
from leadmarket.accounts.policy import Action
from leadmarket.config import settings_of
from leadmarket.kit.db import Database
from leadmarket.kit.idempotency import (
    check_key,
    previous_answer,
    remember_answer,
    request_fingerprint,
)
from leadmarket.kit.realtime import Broker
from leadmarket.kit.routing import TransactionalRoute, get_session
from leadmarket.marketplace import service
from leadmarket.marketplace.schemas import AuctionOut, BidIn, BidOut
from leadmarket.models import Role

router = APIRouter(prefix="/api/v1", route_class=TransactionalRoute, tags=["auctions"])
Session = Annotated[AsyncSession, Depends(get_session)]
LeadId = Annotated[str, Path(max_length=40)]
# Comments keep proxies from closing a quiet stream; the browser reconnects on its own anyway.
KEEP_ALIVE_SECONDS = 15.0


def broker_of(request: Request) -> Broker:
    broker: Broker = request.app.state.broker
    return broker


@router.post(
    "/leads/{lead_id}/bids",
    status_code=status.HTTP_201_CREATED,
    response_model=BidOut,
    summary="Bid on an auctioned lead: your maximum; the exchange bids for you up to it",
    responses={
        402: {"description": "The wallet cannot cover the bid"},
        403: {"description": "Your own lead"},
        409: {"description": "Not an auction, or the auction is over"},
        422: {"description": "Below the minimum bid (`minimum_bid_cents`)"},
    },
)
async def place_bid(
    lead_id: LeadId,
    body: BidIn,
    request: Request,
    session: Session,
    principal: Principal = Depends(requires(Action.BUY_LEAD, Role.BUYER)),
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> Any:
    key = check_key(idempotency_key)
    fingerprint = request_fingerprint({"lead_id": lead_id, **body.model_dump()})
    if key is not None:
        earlier = await previous_answer(session, principal.user.id, key, fingerprint)
        if earlier is not None:
            return JSONResponse(earlier.response, status_code=earlier.status_code)
    placed = await service.place_bid(
        session,
        settings_of(request),
        broker_of(request),
        lead_id=lead_id,
        buyer=principal.user,
        amount_cents=body.amount_cents,
    )
    out = BidOut(
        id=placed.id,
        leading=placed.leading,
        current_price_cents=placed.current_price_cents,
        minimum_bid_cents=placed.minimum_bid_cents,
        ends_at=placed.ends_at,
        winning=placed.standing.winning,
        places=placed.standing.places,
    )
    if key is not None:
        await remember_answer(
            session, principal.user.id, key, fingerprint, 201, out.model_dump(mode="json")
        )
    return out


@router.get(
    "/leads/{lead_id}/auction",
    summary="The auction's state (never who leads), and where you stand in it",
)
async def get_auction(
    lead_id: LeadId,
    request: Request,
    session: Session,
    principal: Principal = Depends(requires(Action.BUY_LEAD)),
) -> AuctionOut:
    view, standing = await service.auction_view(
        session, settings_of(request), lead_id, principal.user
    )
    return AuctionOut(
        **view.as_message(),
        leading=standing.leading,
        winning=standing.winning,
        places=standing.places,
    )


def _event(data: dict[str, Any]) -> str:
    return f"event: auction\ndata: {json.dumps(data)}\n\n"


@router.get(
    "/leads/{lead_id}/auction/events",
    summary="Live updates of the auction (text/event-stream), until it closes",
    response_class=StreamingResponse,
)
async def auction_events(
    lead_id: LeadId,
    request: Request,
    session: Session,
    principal: Principal = Depends(requires(Action.BUY_LEAD)),
) -> StreamingResponse:
    settings = settings_of(request)
    viewer = principal.user
    # Refuses a lead the viewer may not see, before any stream starts.
    await service.auction_view(session, settings, lead_id, viewer)
    broker = broker_of(request)
    db: Database = request.app.state.db

    async def stream() -> AsyncIterator[str]:
        async with broker.subscribe(service.channel(lead_id)) as subscription:
            # Read the state only once subscribed, so no update falls in between.
            async with db.transaction() as fresh:
                view, _ = await service.auction_view(fresh, settings, lead_id, viewer)
            yield _event(view.as_message())
            closed = view.closed
            while not closed and not await request.is_disconnected():
                message = await subscription.next(KEEP_ALIVE_SECONDS)
                if message is None:
                    yield ": keep-alive\n\n"
                    continue
                yield _event(message)
                closed = bool(message.get("closed"))

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
