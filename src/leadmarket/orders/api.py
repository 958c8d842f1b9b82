"""The order API (docs/api.md "Buying"): buying a lead outright, orders and sales, the lead's
delivery log with replay, and the buyer's webhook endpoint.

Who sees what (L6, A4): an order is visible to its buyer and its seller, nobody else (404). Its
``contact`` is opened through the vault for the buyer only, and each opening is audited; the
seller sees the order (price, status, buyer's username) but never the contact: the consumer gave
it to the seller, and the sale gives the seller nothing new to need it for."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Request, status
from fastapi.responses import JSONResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.accounts.auth import Principal, requires
from leadmarket.accounts.policy import Action
from leadmarket.config import settings_of
from leadmarket.kit.errors import NotFound
from leadmarket.kit.idempotency import check_key
from leadmarket.kit.pagination import Cursor, Limit, Page, decode_cursor, encode_cursor
from leadmarket.kit.routing import TransactionalRoute, get_session
from leadmarket.models import Role, WebhookEndpoint
from leadmarket.orders import service
from leadmarket.orders.schemas import (
    AttemptOut,
    DeliveryOut,
    OrderOut,
    WebhookIn,
    WebhookOut,
)
from leadmarket.webhooks import service as webhooks

router = APIRouter(prefix="/api/v1", route_class=TransactionalRoute, tags=["orders"])
Session = Annotated[AsyncSession, Depends(get_session)]
Id = Annotated[str, Path(max_length=40)]


@router.post(
    "/leads/{lead_id}/purchase",
    status_code=status.HTTP_201_CREATED,
    response_model=OrderOut,
    summary="Buy a lead outright at its fixed or buy-now price (buyers)",
    responses={
        402: {"description": "Not enough funds in the wallet (…/insufficient-funds)"},
        403: {"description": "Own lead (…/own-lead)"},
        404: {"description": "No such lead"},
        409: {
            "description": "Not for sale (…/lead-not-for-sale), auction only "
            "(…/no-fixed-price), bought already (…/already-bought), or Idempotency-Key reused"
        },
    },
)
async def purchase(
    lead_id: Id,
    request: Request,
    session: Session,
    principal: Principal = Depends(requires(Action.BUY_LEAD, Role.BUYER)),
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JSONResponse:
    settings = settings_of(request)
    status_code, order_id = await service.purchase(
        session,
        settings,
        lead_id=lead_id,
        buyer=principal.user,
        idempotency_key=check_key(idempotency_key),
        broker=request.app.state.broker,
    )
    order = await service.get_order(session, order_id, principal.user)
    out = await service.order_out(session, settings, order, principal.user)
    return JSONResponse(out.model_dump(mode="json"), status_code=status_code)


@router.get("/orders", summary="A buyer's orders, or a seller's sales, newest first")
async def list_orders(
    request: Request,
    session: Session,
    principal: Principal = Depends(requires(Action.VIEW_ORDERS, Role.BUYER, Role.SELLER)),
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[OrderOut]:
    rows = await service.list_orders(
        session, principal.user, limit=limit, before_id=decode_cursor(cursor)
    )
    more = len(rows) > limit
    rows = rows[:limit]
    settings = settings_of(request)
    return Page(
        items=[await service.order_out(session, settings, o, principal.user) for o in rows],
        next_cursor=encode_cursor(rows[-1].id) if more and rows else None,
    )


@router.get("/orders/{order_id}", summary="One order; the contact only for its buyer")
async def get_order(
    order_id: Id,
    request: Request,
    session: Session,
    principal: Principal = Depends(requires(Action.VIEW_ORDERS, Role.BUYER, Role.SELLER)),
) -> OrderOut:
    order = await service.get_order(session, order_id, principal.user)
    return await service.order_out(session, settings_of(request), order, principal.user)


def delivery_out(log: webhooks.DeliveryLog) -> DeliveryOut:
    d = log.delivery
    return DeliveryOut(
        id=d.id,
        event_type=d.event_type,
        url=d.url,
        status=d.status,
        replay_of=d.replay_of,
        created_at=d.created_at,
        finished_at=d.finished_at,
        attempts=[
            AttemptOut(
                attempt=a.attempt,
                at=a.at,
                status_code=a.status_code,
                duration_ms=a.duration_ms,
                error=a.error,
                next_attempt_at=a.next_attempt_at,
            )
            for a in log.attempts
        ],
    )


async def _buyers_order(session: AsyncSession, order_id: str, principal: Principal) -> str:
    order = await service.get_order(session, order_id, principal.user)
    if order.buyer_id != principal.user.id:
        raise NotFound("No such order.")
    return order.id


@router.get(
    "/orders/{order_id}/deliveries",
    summary="The order's webhook deliveries and each attempt (its buyer only)",
)
async def list_deliveries(
    order_id: Id,
    session: Session,
    principal: Principal = Depends(requires(Action.VIEW_ORDERS, Role.BUYER)),
) -> list[DeliveryOut]:
    await _buyers_order(session, order_id, principal)
    return [delivery_out(log) for log in await webhooks.deliveries_of(session, order_id)]


@router.post(
    "/orders/{order_id}/deliveries/{delivery_id}/replay",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Send a delivery again, as a new message to the current endpoint",
    responses={409: {"description": "No webhook endpoint set (…/no-webhook-endpoint)"}},
)
async def replay_delivery(
    order_id: Id,
    delivery_id: Id,
    session: Session,
    principal: Principal = Depends(requires(Action.AFTER_SALE, Role.BUYER)),
) -> DeliveryOut:
    await _buyers_order(session, order_id, principal)
    delivery = await webhooks.replay_delivery(
        session, order_id=order_id, delivery_id=delivery_id, buyer_id=principal.user.id
    )
    return delivery_out(webhooks.DeliveryLog(delivery, []))


def _webhook_out(endpoint: WebhookEndpoint | None, secret: str | None = None) -> WebhookOut:
    if endpoint is None:
        return WebhookOut(url=None, secret_prefix=None, updated_at=None)
    return WebhookOut(
        url=endpoint.url,
        secret_prefix=endpoint.secret_prefix,
        secret=secret,
        updated_at=endpoint.updated_at,
    )


@router.get("/me/webhook", summary="The buyer's webhook endpoint (the secret is never shown again)")
async def get_webhook(
    session: Session,
    principal: Principal = Depends(requires(Action.VIEW_ACCOUNT, Role.BUYER)),
) -> WebhookOut:
    return _webhook_out(await webhooks.get_endpoint(session, principal.user.id))


@router.put(
    "/me/webhook",
    summary="Set where bought leads are delivered; the signing secret is in this answer once",
    responses={422: {"description": "Not a public https URL"}},
)
async def put_webhook(
    body: WebhookIn,
    request: Request,
    session: Session,
    principal: Principal = Depends(requires(Action.MANAGE_WEBHOOKS, Role.BUYER)),
) -> WebhookOut:
    endpoint, secret = await webhooks.save_endpoint(
        session,
        settings_of(request),
        principal.user.id,
        url=body.url,
        new_secret=body.rotate_secret,
    )
    return _webhook_out(endpoint, secret)


@router.delete(
    "/me/webhook", status_code=status.HTTP_204_NO_CONTENT, summary="Stop webhook deliveries"
)
async def delete_webhook(
    session: Session,
    principal: Principal = Depends(requires(Action.MANAGE_WEBHOOKS, Role.BUYER)),
) -> Response:
    await webhooks.delete_endpoint(session, principal.user.id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
