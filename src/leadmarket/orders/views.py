"""Buying pages (issue 4 §8): the market a buyer browses (previews only, L6) with a Buy button
and a confirm step for fixed-price and buy-now leads, the buyer's orders with the contact while
it is retained and the delivery log with replay, the webhook settings, and the seller's sales
and revenue. Thin like ``api.py``: every rule lives in :mod:`leadmarket.orders.service`.

Forms carry the session's CSRF token (checked by the page guards) and the Buy form a one-time
key used as the purchase's Idempotency-Key, so a double click buys once."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import RedirectResponse
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from leadmarket.accounts.auth import Principal
from leadmarket.accounts.policy import Action
from leadmarket.accounts.views import PageRoute, render_page
from leadmarket.config import settings_of
from leadmarket.feedback.views import panel_context as feedback_panel
from leadmarket.kit.crypto import random_token
from leadmarket.kit.errors import DomainError, NotFound
from leadmarket.kit.idempotency import check_key
from leadmarket.kit.money import format_money
from leadmarket.kit.pagination import decode_cursor, encode_cursor
from leadmarket.kit.routing import get_session
from leadmarket.leads import service as leads_service
from leadmarket.leads.reference import CA_PROVINCES, US_STATES
from leadmarket.leads.views import lead_row, seller_page
from leadmarket.ledger.service import wallet_summary
from leadmarket.ledger.views import buyer_page
from leadmarket.models import Lead, LeadStatus, Order, OrderStatus, User
from leadmarket.orders import service
from leadmarket.returns import notices as returns_notices
from leadmarket.returns import service as returns_service
from leadmarket.verticals.registry import all_verticals
from leadmarket.webhooks import service as webhooks

Session = Annotated[AsyncSession, Depends(get_session)]
Id = Annotated[str, Path(max_length=40)]
router = APIRouter(route_class=PageRoute, include_in_schema=False)

MARKET = "/market"
ORDERS = "/orders"
# What the order pages call each kind of service ("Auto insurance", not its slug).
VERTICAL_NAMES = {vertical.slug: vertical.name for vertical in all_verticals()}
WEBHOOK = "/webhook"
SALES = "/seller/sales"
PER_PAGE = 25
NOTICES = {
    "bought": "You bought this lead. Its contact details are below until they are destroyed.",
    "replayed": "The delivery is queued again; its attempts appear below.",
    "left": "Thank you: your feedback is published on the seller's profile.",
    "changed": "Your feedback is changed.",
    "replied": "Your reply is published.",
}


def _render(
    request: Request, template: str, context: dict[str, Any], *, status_code: int = 200
) -> Response:
    """A page with the money formatter; :func:`render_page` keeps it out of every cache (order
    pages show contact data and one-time keys)."""
    return render_page(
        request,
        template,
        {"money": format_money, "vertical_names": VERTICAL_NAMES, **context},
        status_code=status_code,
    )


def _price(lead: Lead) -> int | None:
    try:
        return service.sale_terms(lead, lead.created_at)[0]
    except DomainError:
        return None


# The market ---------------------------------------------------------------------------------


@router.get(MARKET)
async def market(
    request: Request,
    session: Session,
    principal: Principal = Depends(buyer_page(Action.BUY_LEAD)),
    vertical: Annotated[str | None, Query(max_length=40)] = None,
    region: Annotated[str | None, Query(max_length=200)] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    # The filter is a list of the states and provinces; a code it does not hold (a URL typed
    # by hand, "Texas") is said beside the filter instead of silently matching nothing.
    code = (region or "").strip().upper()
    region_error = (
        "Choose a state or province from the list."
        if code and code not in US_STATES and code not in CA_PROVINCES
        else None
    )
    rows = (
        []
        if region_error
        else await leads_service.list_visible_leads(
            session,
            principal.user,
            vertical=vertical or None,
            region=code or None,
            status=LeadStatus.OPEN.value,
            limit=PER_PAGE,
            before_id=decode_cursor(cursor),
        )
    )
    more = len(rows) > PER_PAGE
    rows = rows[:PER_PAGE]
    return _render(
        request,
        "orders/market.html",
        {
            "leads": [(lead_row(lead), _price(lead), lead.currency) for lead in rows],
            "verticals": all_verticals(),
            "regions": (("United States", US_STATES), ("Canada", CA_PROVINCES)),
            "filters": {"vertical": vertical or "", "region": code},
            "region_error": region_error,
            "next_cursor": encode_cursor(rows[-1].id) if more and rows else None,
        },
        status_code=422 if region_error else 200,
    )


async def _confirm_page(
    request: Request,
    session: AsyncSession,
    lead_id: str,
    buyer: User,
    *,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    lead = await leads_service.get_visible_lead(session, lead_id, buyer)
    wallet = await wallet_summary(session, buyer.id, lead.currency)
    # A shared lead stays on the market after this buyer's purchase: point to their order
    # rather than offering to buy it again (which can only be refused).
    owned = await service.existing_order(session, lead_id, buyer.id)
    return _render(
        request,
        "orders/confirm.html",
        {
            "lead": lead_row(lead),
            "price": _price(lead),
            "currency": lead.currency,
            "balance": wallet.balance_cents,
            "purchase_key": random_token(18),
            "owned_order_id": owned.id if owned is not None else None,
            "error": error,
        },
        status_code=status_code,
    )


@router.get(MARKET + "/leads/{lead_id}")
async def confirm_purchase(
    lead_id: Id,
    request: Request,
    session: Session,
    principal: Principal = Depends(buyer_page(Action.BUY_LEAD)),
) -> Response:
    return await _confirm_page(request, session, lead_id, principal.user)


@router.post(MARKET + "/leads/{lead_id}/purchase")
async def purchase(
    lead_id: Id,
    request: Request,
    session: Session,
    principal: Principal = Depends(buyer_page(Action.BUY_LEAD, return_to=MARKET)),
) -> Response:
    buyer_id = principal.user.id  # read now: a rollback below expires the ORM objects
    form = await request.form()
    key = form.get("purchase_key")
    try:
        _, order_id = await service.purchase(
            session,
            settings_of(request),
            lead_id=lead_id,
            buyer=principal.user,
            idempotency_key=check_key(key if isinstance(key, str) and key else None),
            broker=request.app.state.broker,
        )
    except NotFound:
        raise
    except DomainError as exc:
        await session.rollback()
        buyer = await session.get(User, buyer_id)
        assert buyer is not None
        try:
            return await _confirm_page(
                request, session, lead_id, buyer, error=exc.detail, status_code=exc.status
            )
        except NotFound:
            # No longer on the market (sold meanwhile): say so on the market page's terms.
            return _render(
                request,
                "orders/confirm.html",
                {"lead": None, "error": exc.detail},
                status_code=exc.status,
            )
    return RedirectResponse(f"{ORDERS}/{order_id}?done=bought", status_code=303)


# Orders -------------------------------------------------------------------------------------


async def _page_of_orders(
    session: AsyncSession, member: User, cursor: str | None
) -> tuple[list[Order], str | None]:
    """A page of the buyer's orders or the seller's sales, and the cursor of the next."""
    rows = await service.list_orders(
        session, member, limit=PER_PAGE, before_id=decode_cursor(cursor)
    )
    more = len(rows) > PER_PAGE
    rows = rows[:PER_PAGE]
    return rows, encode_cursor(rows[-1].id) if more and rows else None


@router.get(ORDERS)
async def orders(
    request: Request,
    session: Session,
    principal: Principal = Depends(buyer_page(Action.VIEW_ORDERS)),
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    rows, next_cursor = await _page_of_orders(session, principal.user, cursor)
    leads = {o.lead_id: await session.get(Lead, o.lead_id) for o in rows}
    return _render(
        request,
        "orders/list.html",
        {"orders": [(o, leads[o.lead_id]) for o in rows], "next_cursor": next_cursor},
    )


async def render_buyer_order(
    request: Request,
    session: AsyncSession,
    order_id: str,
    buyer: User,
    *,
    error: str | None = None,
    return_form: Mapping[str, str] | None = None,
    return_errors: Mapping[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    """The buyer's order page: the order, its contact, deliveries, and what may be done after
    the sale (cancel, return, dispute, claim) with its history. A refused return request shows
    its form again with what was typed (``return_form``) and each message beside its field
    (``return_errors``). An order not yet delivered
    (contact never opened) keeps its contact closed until the buyer asks for it, since opening
    it ends the right to cancel; an order just bought on the Buy button opens at once."""
    order = await service.get_order(session, order_id, buyer)
    done = request.query_params.get("done", "")
    reveal = (
        order.contact_opened_at is not None
        or done == "bought"
        or request.query_params.get("show") == "contact"
    )
    out = await service.order_out(
        session, settings_of(request), order, buyer, reveal_contact=reveal
    )
    return _render(
        request,
        "orders/order.html",
        {
            "order": out,
            "undelivered": not reveal and order.status == OrderStatus.HELD.value,
            "deliveries": await webhooks.deliveries_of(session, order.id),
            "endpoint": await webhooks.get_endpoint(session, buyer.id),
            "notice": NOTICES.get(done) or returns_notices.PAGE_NOTICES.get(done),
            "after": await returns_service.after_sale_out(session, order, buyer),
            "reasons": returns_service.REASON_LABELS,
            "claim_categories": returns_service.CLAIM_LABELS,
            "form_key": random_token(18),
            "error": error,
            "return_form": return_form or {},
            "return_errors": return_errors or {},
            **await feedback_panel(session, settings_of(request), order.id, buyer),
        },
        status_code=status_code,
    )


@router.get(ORDERS + "/{order_id}")
async def order_page(
    order_id: Id,
    request: Request,
    session: Session,
    principal: Principal = Depends(buyer_page(Action.VIEW_ORDERS)),
) -> Response:
    return await render_buyer_order(request, session, order_id, principal.user)


@router.post(ORDERS + "/{order_id}/deliveries/{delivery_id}/replay")
async def replay(
    order_id: Id,
    delivery_id: Id,
    session: Session,
    principal: Principal = Depends(buyer_page(Action.AFTER_SALE, return_to=ORDERS)),
) -> Response:
    order = await service.get_order(session, order_id, principal.user)
    if order.buyer_id != principal.user.id:
        raise NotFound("No such order.")
    await webhooks.replay_delivery(
        session, order_id=order.id, delivery_id=delivery_id, buyer_id=principal.user.id
    )
    return RedirectResponse(f"{ORDERS}/{order.id}?done=replayed", status_code=303)


# Webhook settings ---------------------------------------------------------------------------


@router.get(WEBHOOK)
async def webhook_page(
    request: Request,
    session: Session,
    principal: Principal = Depends(buyer_page(Action.VIEW_ACCOUNT)),
) -> Response:
    endpoint = await webhooks.get_endpoint(session, principal.user.id)
    return _render(
        request,
        "orders/webhook.html",
        {"endpoint": endpoint, "values": {"url": endpoint.url if endpoint else ""}},
    )


@router.post(WEBHOOK)
async def save_webhook(
    request: Request,
    session: Session,
    principal: Principal = Depends(buyer_page(Action.MANAGE_WEBHOOKS, return_to=WEBHOOK)),
) -> Response:
    owner_id = principal.user.id
    form = await request.form()
    url = form.get("url")
    url = url.strip() if isinstance(url, str) else ""
    try:
        endpoint, secret = await webhooks.save_endpoint(
            session,
            settings_of(request),
            owner_id,
            url=url,
            new_secret=form.get("rotate_secret") == "on",
        )
    except DomainError as exc:
        await session.rollback()
        message = exc.errors[0].message if exc.errors else exc.detail
        return _render(
            request,
            "orders/webhook.html",
            {
                "endpoint": await webhooks.get_endpoint(session, owner_id),
                "values": {"url": url},
                "errors": {"url": message},
            },
            status_code=exc.status,
        )
    return _render(
        request,
        "orders/webhook.html",
        {"endpoint": endpoint, "values": {"url": endpoint.url}, "secret": secret, "saved": True},
    )


# The seller's sales -------------------------------------------------------------------------


@router.get(SALES)
async def sales(
    request: Request,
    session: Session,
    principal: Principal = Depends(seller_page(Action.VIEW_DASHBOARD)),
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    rows, next_cursor = await _page_of_orders(session, principal.user, cursor)
    settings = settings_of(request)
    return _render(
        request,
        "orders/sales.html",
        {
            "summary": await service.sales_summary(session, principal.user.id),
            "sales": [await service.order_out(session, settings, o, principal.user) for o in rows],
            "next_cursor": next_cursor,
        },
    )
