"""The privacy JSON API for members: a member's communication preferences
(``/api/v1/me/preferences``, P7, P8, P9) and the privacy notice versions (``/api/v1/privacy/
notice*``, P11, P12; publishing under ``/api/v1/admin``). Thin: each route authorizes, then
calls the service."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, status
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.accounts.auth import Principal, check_allowed, requires
from leadmarket.accounts.policy import Action
from leadmarket.audit.service import Actor
from leadmarket.config import settings_of
from leadmarket.kit.db import utcnow
from leadmarket.kit.errors import NotFound
from leadmarket.kit.routing import TransactionalRoute, get_session, guard
from leadmarket.models import Role
from leadmarket.privacy import notices, preferences
from leadmarket.privacy.notices import NoticeIn, NoticeListOut, NoticeOut
from leadmarket.privacy.preferences import PreferencesIn, PreferencesOut, gpc_requested

router = APIRouter(prefix="/api/v1", route_class=TransactionalRoute, tags=["privacy"])
Session = Annotated[AsyncSession, Depends(get_session)]


@guard
def public_notice() -> None:
    """Guard of the notice routes: the privacy notice is public by nature."""


async def change_preferences(
    request: Request, session: AsyncSession, principal: Principal, body: PreferencesIn
) -> PreferencesOut:
    """The one rule both the API and the page apply (A2): narrowing needs nothing more than
    :data:`Action.UPDATE_PREFERENCES`; widening is consent and needs
    :data:`Action.GIVE_CONSENT` (the password again on a remembered session)."""
    current = await preferences.stored_preferences(session, principal.user.id)
    if preferences.widens(current, body.flat()):
        check_allowed(principal, Action.GIVE_CONSENT, ())
    return await preferences.update_preferences(
        session,
        settings_of(request),
        principal.user,
        body,
        gpc=gpc_requested(request.headers),
        actor=Actor("user", principal.user.id),
    )


@router.get(
    "/me/preferences",
    summary="Your communication preferences, personalised advertising and do-not-sell (P8)",
)
async def get_preferences(
    request: Request,
    session: Session,
    principal: Principal = Depends(requires(Action.VIEW_ACCOUNT)),
) -> PreferencesOut:
    return await preferences.preferences_out(
        session, principal.user.id, gpc=gpc_requested(request.headers)
    )


@router.put(
    "/me/preferences",
    summary="Change any of your preferences; what you leave out keeps its value",
    description="Turning things off (and opting out of sale) works from any signed-in session, "
    "including a remembered one; turning a channel or topic on, allowing personalised "
    "advertising or lifting do-not-sell is consent and needs the password again on a "
    "remembered session (403 reauth-required). API keys cannot change preferences.",
    responses={
        403: {"description": "reauth-required for a widening change on a remembered session"},
        422: {
            "description": "Unknown field, a value that is not true/false, or do_not_sell "
            "false from a browser sending Global Privacy Control"
        },
    },
)
async def put_preferences(
    body: PreferencesIn,
    request: Request,
    session: Session,
    principal: Principal = Depends(requires(Action.UPDATE_PREFERENCES)),
) -> PreferencesOut:
    return await change_preferences(request, session, principal, body)


@router.get(
    "/privacy/notice",
    dependencies=[Depends(public_notice)],
    summary="The privacy notice in effect, its effective date and the data region (P11, P12)",
    responses={404: {"description": "No version is in effect yet."}},
)
async def current_notice(request: Request, session: Session) -> NoticeOut:
    now = utcnow()
    page = await notices.notice_page(session, now=now)
    if page.shown is None:
        raise NotFound("No privacy notice is in effect yet.")
    return notices.notice_out(settings_of(request), page.shown, page.current, now)


@router.get(
    "/privacy/notices",
    dependencies=[Depends(public_notice)],
    summary="Every published version of the privacy notice, newest first",
)
async def list_notices(request: Request, session: Session) -> NoticeListOut:
    now = utcnow()
    page = await notices.notice_page(session, now=now)
    versions = await notices.all_versions(session)
    return NoticeListOut(
        data_region=settings_of(request).data_region,
        current=notices.summary_out(page.current, page.current, now) if page.current else None,
        versions=[notices.summary_out(v, page.current, now) for v in versions],
    )


@router.get(
    "/privacy/notices/{version}",
    dependencies=[Depends(public_notice)],
    summary="One version of the privacy notice",
    responses={404: {"description": "No such version."}},
)
async def get_notice(
    version: Annotated[str, Path(max_length=20)], request: Request, session: Session
) -> NoticeOut:
    now = utcnow()
    page = await notices.notice_page(session, version=version, now=now)
    assert page.shown is not None
    return notices.notice_out(settings_of(request), page.shown, page.current, now)


@router.post(
    "/admin/privacy/notices",
    status_code=status.HTTP_201_CREATED,
    summary="Publish a new version of the privacy notice; members are told by email and on "
    "the site (P12)",
    responses={
        401: {"description": "Not signed in."},
        403: {"description": "Only admins publish the notice."},
        409: {"description": "The version exists (versions are never changed)."},
        422: {"description": "Invalid, or an effective date in the past."},
    },
)
async def publish_notice(
    body: NoticeIn,
    request: Request,
    session: Session,
    principal: Principal = Depends(requires(Action.ADMINISTER, Role.ADMIN)),
) -> NoticeOut:
    settings = settings_of(request)
    notice = await notices.publish_notice(session, settings, body, admin=principal.user)
    notices.refresh_banner_after_commit(session, request.app.state.notice_banner)
    now = utcnow()
    page = await notices.notice_page(session, now=now)
    return notices.notice_out(settings, notice, page.current, now)
