"""Privacy pages: the member's communication preferences (``/account/preferences``, P7, P8,
P9), the public privacy notice with its versions and the data region (``/privacy/notice``,
P11, P12), and the admin page that publishes a new version (``/admin/privacy/notices``).

Thin like ``api.py`` and built like the account pages: :class:`PageRoute`, the member guard
(CSRF on every POST), the same service calls and the same consent rule as the API
(:func:`leadmarket.privacy.preferences_api.change_preferences`: a remembered session is sent to the
password page only for a change that gives consent), errors beside their field, 303 after a
successful POST."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import FormData
from starlette.responses import Response

from leadmarket.accounts.auth import Principal
from leadmarket.accounts.policy import Action
from leadmarket.accounts.views import (
    PageRoute,
    member_page,
    render_page,
    role_page,
    see_other,
    visitor_page,
)
from leadmarket.config import settings_of
from leadmarket.kit.db import utcnow
from leadmarket.kit.errors import FieldError, ValidationFailed, validation_errors
from leadmarket.kit.routing import get_session
from leadmarket.models import Role
from leadmarket.privacy import notices, preferences
from leadmarket.privacy.notices import NoticeIn, NoticeVersionTaken
from leadmarket.privacy.preferences import (
    CHANNELS,
    TOPICS,
    PreferencesIn,
    gpc_requested,
)
from leadmarket.privacy.preferences_api import change_preferences

Session = Annotated[AsyncSession, Depends(get_session)]
PREFERENCES = "/account/preferences"
NOTICE = "/privacy/notice"
ADMIN_NOTICES = "/admin/privacy/notices"

router = APIRouter(route_class=PageRoute, include_in_schema=False)

PREFERENCE_FIELDS = (*CHANNELS, *TOPICS, "personalized_ads", "do_not_sell")
PREFERENCE_LABELS = {
    "email": "Email",
    "phone": "Phone calls",
    "text": "Text messages",
    "post": "Post",
    "member_messages": "Messages from other members",
    "newsletters": "Newsletters",
    "promotions": "Promotions and offers",
    "personalized_ads": "Personalized advertising",
    "do_not_sell": "Do not sell or share my personal information",
}
NOTICE_LABELS = {
    "version": "Version",
    "effective_at": "Takes effect",
    "summary": "What changes",
    "body": "Full text",
}
NOTICES = {
    "saved": "Your preferences were saved.",
    "published": "The new version is published. Members are being told by email.",
}
_ON = "yes"


def _field_errors(errors: list[FieldError]) -> dict[str, str]:
    by_field: dict[str, str] = {}
    for error in errors:
        # "channels.email" in the API is "email" in the form.
        by_field.setdefault(error.field.rsplit(".", 1)[-1], error.message)
    return by_field


# Preferences ----------------------------------------------------------------------------------


def _checkbox_values(form: FormData) -> tuple[dict[str, bool], dict[str, str]]:
    values: dict[str, bool] = {}
    errors: dict[str, str] = {}
    for name in PREFERENCE_FIELDS:
        raw = form.get(name)
        if raw is None:
            values[name] = False
        elif raw == _ON:
            values[name] = True
        else:
            values[name] = False
            errors[name] = "Tick the box or leave it empty."
    return values, errors


def _payload(values: Mapping[str, bool]) -> dict[str, Any]:
    return {
        "channels": {name: values[name] for name in CHANNELS},
        "topics": {name: values[name] for name in TOPICS},
        "personalized_ads": values["personalized_ads"],
        "do_not_sell": values["do_not_sell"],
    }


async def _preferences_page(
    request: Request,
    session: AsyncSession,
    principal: Principal,
    *,
    values: Mapping[str, bool] | None = None,
    errors: Mapping[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    gpc = gpc_requested(request.headers)
    out = await preferences.preferences_out(session, principal.user.id, gpc=gpc)
    stored = {
        **out.channels.model_dump(),
        **out.topics.model_dump(),
        "personalized_ads": out.personalized_ads,
        "do_not_sell": out.do_not_sell,
    }
    return render_page(
        request,
        "privacy/preferences.html",
        {
            "prefs": values if values is not None else stored,
            "stored": out,
            "labels": PREFERENCE_LABELS,
            "errors": dict(errors or {}),
            "gpc": gpc,
            "remembered": principal.remembered,
            "notice": None if errors else NOTICES.get(request.query_params.get("done", "")),
        },
        status_code=status_code,
    )


@router.get(PREFERENCES)
async def preferences_form(
    request: Request,
    session: Session,
    principal: Principal = Depends(member_page(Action.VIEW_ACCOUNT)),
) -> Response:
    return await _preferences_page(request, session, principal)


@router.post(PREFERENCES)
async def save_preferences(
    request: Request,
    session: Session,
    principal: Principal = Depends(member_page(Action.UPDATE_PREFERENCES, return_to=PREFERENCES)),
) -> Response:
    form = await request.form()
    values, errors = _checkbox_values(form)
    if errors:
        return await _preferences_page(
            request, session, principal, values=values, errors=errors, status_code=422
        )
    try:
        body = PreferencesIn.model_validate(_payload(values))
        await change_preferences(request, session, principal, body)
    except ValidationFailed as exc:
        await session.rollback()
        await session.refresh(principal.user)
        return await _preferences_page(
            request,
            session,
            principal,
            values=values,
            errors=_field_errors(exc.errors) or {"form": exc.detail},
            status_code=422,
        )
    return see_other(f"{PREFERENCES}?done=saved")


# The public notice -------------------------------------------------------------------------


async def _notice_page(request: Request, session: AsyncSession, version: str | None) -> Response:
    now = utcnow()
    page = await notices.notice_page(session, version=version, now=now)
    return render_page(
        request,
        "privacy/notice.html",
        {
            "page": page,
            "now": now,
            "data_region": settings_of(request).data_region,
            "gpc": gpc_requested(request.headers),
        },
    )


@router.get(NOTICE)
async def notice(
    request: Request, session: Session, _: Principal | None = Depends(visitor_page())
) -> Response:
    return await _notice_page(request, session, None)


@router.get(NOTICE + "/{version}")
async def notice_version(
    request: Request,
    version: Annotated[str, Path(max_length=20)],
    session: Session,
    _: Principal | None = Depends(visitor_page()),
) -> Response:
    return await _notice_page(request, session, version)


# Publishing (admin) ------------------------------------------------------------------------


def admin_page(action: Action, *, return_to: str | None = None) -> Any:
    return role_page(
        action, Role.ADMIN, "Only admins publish privacy notices.", return_to=return_to
    )


async def _admin_page(
    request: Request,
    session: AsyncSession,
    *,
    values: Mapping[str, str] | None = None,
    errors: Mapping[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    return render_page(
        request,
        "privacy/admin_notices.html",
        {
            "versions": await notices.all_versions(session),
            "values": dict(values or {}),
            "errors": dict(errors or {}),
            "labels": NOTICE_LABELS,
            "now": utcnow(),
            "notice": None if errors else NOTICES.get(request.query_params.get("done", "")),
        },
        status_code=status_code,
    )


@router.get(ADMIN_NOTICES)
async def admin_notices(
    request: Request,
    session: Session,
    _: Principal = Depends(admin_page(Action.ADMINISTER)),
) -> Response:
    return await _admin_page(request, session)


def _effective_at(text: str) -> dt.datetime | str:
    """The form's date and time, read as UTC (the page says so)."""
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        return text
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value


@router.post(ADMIN_NOTICES)
async def publish_notice(
    request: Request,
    session: Session,
    principal: Principal = Depends(admin_page(Action.ADMINISTER, return_to=ADMIN_NOTICES)),
) -> Response:
    form = await request.form()
    typed = {
        name: value if isinstance(value := form.get(name), str) else "" for name in NOTICE_LABELS
    }
    typed["body"] = typed["body"].replace("\r\n", "\n")
    payload: dict[str, Any] = {k: v for k, v in typed.items() if v.strip()}
    if "effective_at" in payload:
        payload["effective_at"] = _effective_at(payload["effective_at"])
    try:
        data = NoticeIn.model_validate(payload)
        await notices.publish_notice(session, settings_of(request), data, admin=principal.user)
    except ValidationError as exc:
        errors = validation_errors([dict(e) for e in exc.errors()])
        by_field = _field_errors(errors)
        if "effective_at" in by_field:
            by_field["effective_at"] = "Enter the date and time in UTC, like 2027-01-31T00:00."
        return await _admin_page(request, session, values=typed, errors=by_field, status_code=422)
    except (ValidationFailed, NoticeVersionTaken) as exc:
        await session.rollback()
        return await _admin_page(
            request,
            session,
            values=typed,
            errors=_field_errors(exc.errors) or {"form": exc.detail},
            status_code=exc.status,
        )
    notices.refresh_banner_after_commit(session, request.app.state.notice_banner)
    return see_other(f"{ADMIN_NOTICES}?done=published")
