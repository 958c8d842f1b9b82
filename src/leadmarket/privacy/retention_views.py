"""The retention monitor page ``/admin/retention`` (L4), for admins and privacy officers: the
same :func:`leadmarket.privacy.retention.retention_monitor` as the API, with overdue leads shown
first and loud when there are any."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from leadmarket.accounts.auth import Principal
from leadmarket.accounts.policy import Action
from leadmarket.accounts.views import PageRoute, member_page, render_page
from leadmarket.config import settings_of
from leadmarket.kit.errors import Forbidden
from leadmarket.kit.routing import get_session, guard
from leadmarket.privacy.retention import LATENESS_TARGET, retention_monitor
from leadmarket.privacy.retention_api import MONITOR_ROLES

Session = Annotated[AsyncSession, Depends(get_session)]
RETENTION_PAGE = "/admin/retention"
router = APIRouter(route_class=PageRoute, include_in_schema=False)

_member = member_page(Action.ADMINISTER, return_to=RETENTION_PAGE)


@guard
async def monitor_page(principal: Principal = Depends(_member)) -> Principal:
    """:func:`member_page`, for admins and privacy officers only."""
    if principal.user.role not in MONITOR_ROLES:
        raise Forbidden("Only administrators and privacy officers see the retention monitor.")
    return principal


@router.get(RETENTION_PAGE)
async def retention_page(
    request: Request, session: Session, _: Principal = Depends(monitor_page)
) -> Response:
    monitor = await retention_monitor(session, settings_of(request))
    return render_page(
        request,
        "privacy/retention.html",
        {"m": monitor, "target_seconds": int(LATENESS_TARGET.total_seconds())},
    )
