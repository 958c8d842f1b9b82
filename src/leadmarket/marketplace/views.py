"""The auction page (M1, issue 4 §8): a lead's preview and sale terms, the auction's state kept
live by server-sent events (``static/auction.js``; without JavaScript the page is simply
reloaded), and the bid form for buyers, errors beside the field. Thin: the rules are in
:mod:`leadmarket.marketplace.service`, shared with the API."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import RedirectResponse
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from leadmarket.accounts.auth import Principal
from leadmarket.accounts.policy import Action
from leadmarket.accounts.views import PageRoute, Viewer, member_page
from leadmarket.config import settings_of
from leadmarket.kit.errors import DomainError, NotFound
from leadmarket.kit.money import format_money, parse_dollars
from leadmarket.kit.realtime import Broker
from leadmarket.kit.routing import get_session
from leadmarket.kit.templating import templates_of
from leadmarket.leads import previews
from leadmarket.leads.service import get_visible_lead
from leadmarket.leads.views import lead_row
from leadmarket.marketplace import service
from leadmarket.marketplace.schemas import MAX_BID_CENTS
from leadmarket.models import Role, User

Session = Annotated[AsyncSession, Depends(get_session)]
LeadId = Annotated[str, Path(max_length=40)]

router = APIRouter(route_class=PageRoute, include_in_schema=False)

NOTICES = {
    "leading": "Your bid leads. We will bid for you up to your maximum.",
    # A shared lead sells to its best few maximums: a bid below the top one may still win.
    "winning": "Your bid holds one of the winning places; another buyer's maximum leads.",
    "outbid": "Your bid was placed, but another buyer's maximum is higher.",
}


async def _page(
    request: Request,
    session: AsyncSession,
    member: User,
    lead_id: str,
    *,
    amount: str = "",
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    settings = settings_of(request)
    lead = await get_visible_lead(session, lead_id, member)
    view, standing = await service.auction_view(session, settings, lead_id, member)
    viewer: Viewer | None = getattr(request.state, "viewer", None)
    context: dict[str, Any] = {
        "viewer": viewer,
        "csrf_token": viewer.csrf_token if viewer else "",
        "lead": lead,
        "preview": previews.preview_of(lead),
        # The answers with their labels and the vertical's words for its codes, as the market
        # shows them ("Full coverage (…)", not "full").
        "answers": lead_row(lead).answers,
        "sale": previews.sale_of(lead, show_reserve=lead.seller_id == member.id),
        "auction": view,
        "standing": standing,
        "may_bid": member.role == Role.BUYER.value and not view.closed,
        "money": format_money,
        "amount": amount,
        "error": error,
        "notice": None if error else NOTICES.get(request.query_params.get("done", "")),
    }
    response = templates_of(request).TemplateResponse(
        request, "marketplace/auction.html", context, status_code=status_code
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get("/auctions/{lead_id}")
async def auction_page(
    lead_id: LeadId,
    request: Request,
    session: Session,
    principal: Principal = Depends(member_page(Action.BUY_LEAD)),
) -> Response:
    return await _page(request, session, principal.user, lead_id)


def _amount_cents(text: str) -> tuple[int | None, str | None]:
    cents, message = parse_dollars(text)
    if message is None and cents is None:
        message = "Enter your maximum bid."
    elif message is None and cents is not None and not 0 < cents <= MAX_BID_CENTS:
        message = f"Bid between 0.01 and {format_money(MAX_BID_CENTS, 'USD')}."
    return cents, message


@router.post("/auctions/{lead_id}/bids")
async def bid_from_page(
    lead_id: LeadId,
    request: Request,
    session: Session,
    principal: Principal = Depends(member_page(Action.BUY_LEAD)),
) -> Response:
    if principal.user.role != Role.BUYER.value:
        raise NotFound("Only buyers bid.")
    buyer = principal.user
    buyer_id = buyer.id  # read now: a rollback below expires the ORM objects
    form = await request.form()
    amount = value.strip() if isinstance(value := form.get("amount"), str) else ""
    cents, message = _amount_cents(amount)
    if message is None and cents is not None:
        broker: Broker = request.app.state.broker
        try:
            placed = await service.place_bid(
                session,
                settings_of(request),
                broker,
                lead_id=lead_id,
                buyer=buyer,
                amount_cents=cents,
            )
        except NotFound:
            raise
        except DomainError as exc:
            await session.rollback()
            message = exc.detail
            buyer = await session.get(User, buyer_id) or buyer
        else:
            if placed.leading:
                done = "leading"
            else:
                done = "winning" if placed.standing.winning else "outbid"
            return RedirectResponse(f"/auctions/{lead_id}?done={done}", status_code=303)
    return await _page(
        request, session, buyer, lead_id, amount=amount, error=message, status_code=422
    )
