"""The page behind every unsubscribe link, and the RFC 8058 one-click endpoint mail clients POST
to. The signed token in the URL is the only credential: whoever holds the message may opt its
address out of marketing mail, which is what the link is for."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from leadmarket.config import settings_of
from leadmarket.kit.routing import TransactionalRoute, get_session, guard
from leadmarket.kit.templating import templates_of
from leadmarket.models.mail import MailCategory
from leadmarket.notifications.service import read_unsubscribe_token, unsubscribe


@guard
def anyone() -> None:
    """Guard for the unsubscribe routes: the signed link is the authorisation."""


router = APIRouter(
    route_class=TransactionalRoute, dependencies=[Depends(anyone)], tags=["notifications"]
)


@router.get(
    "/unsubscribe/{token}",
    response_class=HTMLResponse,
    summary="Unsubscribe page: asks to confirm",
    responses={404: {"description": "The link is altered or expired."}},
)
async def unsubscribe_page(request: Request, token: str) -> Response:
    # Only checks the link: mail scanners open every URL in a message, so a GET must not act.
    link = read_unsubscribe_token(settings_of(request), token)
    return templates_of(request).TemplateResponse(
        request, "notifications/unsubscribe.html", {"done": False, "category": link.category.value}
    )


@router.post(
    "/unsubscribe/{token}",
    summary="One-click unsubscribe (RFC 8058)",
    responses={
        200: {
            "description": 'Unsubscribed: `{status: "unsubscribed"}`, or, for a link used '
            'before, `{status: "already_unsubscribed"}` (nothing changes).'
        },
        404: {"description": "The link is altered or expired."},
    },
)
async def unsubscribe_now(
    request: Request, token: str, session: AsyncSession = Depends(get_session)
) -> Response:
    # No CSRF token: RFC 8058 posts come from mail clients, and all this can do is opt the
    # address named in the signed link out of marketing mail.
    outcome = await unsubscribe(session, settings_of(request), token)
    if "text/html" in request.headers.get("accept", ""):
        return templates_of(request).TemplateResponse(
            request,
            "notifications/unsubscribe.html",
            {"done": True, "already": outcome.already, "category": outcome.category},
        )
    status = "already_unsubscribed" if outcome.already else "unsubscribed"
    kind = (
        "email about messages from other members"
        if outcome.category == MailCategory.MEMBER_MESSAGE.value
        else "marketing email"
    )
    return JSONResponse(
        {
            "status": status,
            "category": outcome.category,
            "detail": (
                f"This address was already unsubscribed from {kind}; nothing changed."
                if outcome.already
                else f"This address will get no more {kind}."
            )
            + " Messages about your account and your transactions still reach it.",
        }
    )
