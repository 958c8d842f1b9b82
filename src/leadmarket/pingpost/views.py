"""The seller's pings page: recent pings, whether a buyer wanted each, at what price, whether it
was posted and sold. Thin like ``api.py``: the queries live in :mod:`.service`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from leadmarket.accounts.auth import Principal
from leadmarket.accounts.policy import Action
from leadmarket.accounts.views import PageRoute, render_page
from leadmarket.kit.money import format_money
from leadmarket.kit.pagination import decode_cursor, encode_cursor
from leadmarket.kit.routing import get_session
from leadmarket.leads.views import seller_page
from leadmarket.pingpost import service
from leadmarket.pingpost.api import ping_row

Session = Annotated[AsyncSession, Depends(get_session)]
router = APIRouter(route_class=PageRoute, include_in_schema=False)
PINGS = "/seller/pings"
PER_PAGE = 50


@router.get(PINGS)
async def pings(
    request: Request,
    session: Session,
    principal: Principal = Depends(seller_page(Action.VIEW_DASHBOARD)),
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    try:
        before = decode_cursor(cursor)
    except Exception:  # a mangled link shows the first page
        before = None
    rows = await service.recent_pings(session, principal.user, limit=PER_PAGE, before_id=before)
    more = len(rows) > PER_PAGE
    rows = rows[:PER_PAGE]
    return render_page(
        request,
        "pingpost/pings.html",
        {
            "money": format_money,
            "counts": await service.ping_counts(session, principal.user),
            "pings": [ping_row(p) for p in rows],
            "next_cursor": encode_cursor(rows[-1].id) if more and rows else None,
        },
    )
