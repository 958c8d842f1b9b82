"""The account pages: sign-up, sign-in, email verification, password reset, the account settings,
sessions and API keys, and public member profiles (A1–A5 for people at a browser).

Thin like ``api.py``: each page authorizes, parses its form into the same pydantic schema the
API uses, and calls the same service function. Three things are done once, here, for every page:

* :class:`PageRoute` turns "not signed in" into a 303 to ``/signin?next=…``, "password needed
  again" (A2) into a 303 to ``/account/reauth?next=…``, and any other domain error into the HTML
  error page, always after the request's transaction has been rolled back.
* The guards :func:`member_page` and :func:`visitor_page` authenticate the browser session and
  check every POST against CSRF (:mod:`leadmarket.kit.csrf`) before the handler runs.
* A form that fails validation is shown again with each message beside its field, the values
  typed kept (never a password), and nothing written."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import RedirectResponse
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import FormData
from starlette.responses import Response

from leadmarket.accounts import service
from leadmarket.accounts.auth import SESSION_COOKIE, Principal, authenticate, check_allowed
from leadmarket.accounts.deps import client_meta, get_kit
from leadmarket.accounts.policy import Action
from leadmarket.accounts.schemas import (
    ApiKeyIn,
    LoginIn,
    MePatch,
    PasswordChangeIn,
    PasswordResetIn,
    PasswordResetRequestIn,
    ReauthIn,
    RegisterIn,
)
from leadmarket.accounts.service import AccountsKit
from leadmarket.config import settings_of
from leadmarket.feedback import service as feedback
from leadmarket.feedback.schemas import REASON_LABELS
from leadmarket.kit.csrf import double_submit, trusted_origins, verify_bound_token
from leadmarket.kit.db import utcnow
from leadmarket.kit.errors import (
    Conflict,
    DomainError,
    Forbidden,
    ReauthRequired,
    TooManyRequests,
    Unauthenticated,
    ValidationFailed,
    validation_errors,
)
from leadmarket.kit.routing import TransactionalRoute, get_session, guard
from leadmarket.kit.templating import errors_by_field, templates_of
from leadmarket.models import Role, User

Session = Annotated[AsyncSession, Depends(get_session)]
Kit = Annotated[AccountsKit, Depends(get_kit)]

HOME = "/"
ACCOUNT = "/account"
SIGNIN = "/signin"
REAUTH = "/account/reauth"
SESSIONS = "/account/sessions"
API_KEYS = "/account/api-keys"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_MAX_NEXT_LENGTH = 2000
_MAX_LINK_TOKEN_LENGTH = 2000

ADDRESS_PARTS = ("street", "city", "region", "postal_code", "country")
# Without one of these the address is empty, whatever the country field says.
_ADDRESS_CONTENT = ("street", "city", "region", "postal_code")
PROFILE_FIELDS = ("username", "email", "name", "phone", *(f"address.{p}" for p in ADDRESS_PARTS))
SIGNUP_FIELDS = (
    "email",
    "username",
    "role",
    "name",
    "phone",
    *(f"address.{p}" for p in ADDRESS_PARTS),
)

# Messages shown after a redirect, chosen by a fixed key so nothing typed is ever reflected.
NOTICES = {
    "profile": "Your details were saved.",
    "unchanged": "Nothing was changed.",
    "password": "Your password was changed. Your other sessions were signed out.",
    "verification-sent": "We sent a new verification link to your email address.",
    "revoked": "That session was signed out.",
    "key-revoked": "The API key was revoked; it no longer works.",
    "signed-out": "You are signed out.",
    "closed": "Your account is closed and your personal data was erased.",
}


# Who is looking ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Viewer:
    """What the page frame (nav bar, sign-out button) needs about the signed-in member, copied
    out of the ORM objects: an error page is rendered after the transaction rolled back, when
    those objects can no longer be read."""

    username: str
    csrf_token: str
    role: str

    @classmethod
    def of(cls, principal: Principal) -> Viewer:
        session = principal.session
        return cls(
            username=principal.user.username,
            csrf_token=(session.csrf_token if session else None) or "",
            role=principal.user.role,
        )


def _viewer(request: Request) -> Viewer | None:
    viewer: Viewer | None = getattr(request.state, "viewer", None)
    return viewer


def _browser_principal(principal: Principal | None) -> Principal | None:
    """Pages serve browser sessions (the cookie). A bearer token or API key is for the API."""
    if principal is None or principal.session is None or principal.session.kind != "web":
        return None
    return principal


def _here(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def _return_path(request: Request) -> str:
    """Where to send the member back after signing in or entering the password again: the
    page they were on. A POST cannot be replayed, so its guard names the page of its form."""
    path: str | None = getattr(request.state, "return_path", None)
    if path:
        return path
    return _here(request) if request.method in _SAFE_METHODS else ACCOUNT


def safe_local_path(value: str | None) -> str | None:
    """``value`` if it is a path on this site, else None: ``next`` must never send the member
    to another site (``//evil.example``, ``/\\evil.example``, ``https://…``)."""
    if not value or len(value) > _MAX_NEXT_LENGTH:
        return None
    if not value.startswith("/") or value.startswith("//") or "\\" in value:
        return None
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        return None
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return None
    return value


def _with_next(path: str, next_path: str) -> str:
    return f"{path}?{urlencode({'next': next_path})}"


def see_other(location: str) -> RedirectResponse:
    return RedirectResponse(location, status_code=303)


# Guards -----------------------------------------------------------------------------------


def member_page(
    action: Action, *, return_to: str | None = None
) -> Callable[..., Awaitable[Principal]]:
    """Guard of a page for signed-in members: the web session (else a redirect to sign in), the
    CSRF check of a POST, then the same :func:`check_allowed` as the API (a remembered session
    gets the password page for anything beyond A2's list). ``return_to`` is where a POST's form
    lives, to come back to after signing in or re-entering the password."""

    @guard
    async def dependency(request: Request, session: Session) -> Principal:
        request.state.return_path = return_to or _here(request)
        principal = _browser_principal(await authenticate(request, session))
        if principal is None or principal.session is None:
            raise Unauthenticated()
        request.state.viewer = Viewer.of(principal)
        if request.method not in _SAFE_METHODS:
            await verify_bound_token(request, principal.session.csrf_token, settings_of(request))
        check_allowed(principal, action, ())
        return principal

    dependency.__name__ = f"member_page_{action.value}"
    return dependency


def role_page(
    action: Action, role: Role, refusal: str, *, return_to: str | None = None
) -> Callable[..., Awaitable[Principal]]:
    """Guard of the pages of one role (seller, buyer): :func:`member_page`, then the role; any
    other member gets a 403 page saying ``refusal``."""
    member = member_page(action, return_to=return_to)

    @guard
    async def dependency(request: Request, principal: Principal = Depends(member)) -> Principal:
        if principal.user.role != role.value:
            raise Forbidden(refusal)
        return principal

    dependency.__name__ = f"{role.value}_page_{action.value}"
    return dependency


def visitor_page(*, return_to: str | None = None) -> Callable[..., Awaitable[Principal | None]]:
    """Guard of a page anyone may open (home, sign-in, profiles). A POST must carry the
    double-submit CSRF token of the form that was shown."""

    @guard
    async def dependency(request: Request, session: Session) -> Principal | None:
        request.state.return_path = return_to or _here(request)
        try:
            principal = _browser_principal(await authenticate(request, session))
        except (Unauthenticated, Forbidden):
            # A stray Authorization header, or the cookie of a suspended account, must not lock
            # anyone out of the public pages: they are shown as to a visitor.
            principal = None
        if principal is not None and principal.session is not None:
            request.state.viewer = Viewer.of(principal)
        if request.method not in _SAFE_METHODS:
            settings = settings_of(request)
            await double_submit(request).verify(request, trusted_origins(request, settings))
        return principal

    return dependency


@guard
async def signing_out(request: Request, session: Session) -> Principal | None:
    """Guard of POST /signout: anyone may sign out, but a signed-in member's request must carry
    their session's CSRF token, so another site cannot sign them out."""
    request.state.return_path = HOME
    try:
        principal = _browser_principal(await authenticate(request, session))
    except (Unauthenticated, Forbidden):
        # Nothing to end (or a suspended account): the cookie is cleared all the same.
        principal = None
    if principal is None or principal.session is None:
        return None
    request.state.viewer = Viewer.of(principal)
    await verify_bound_token(request, principal.session.csrf_token, settings_of(request))
    check_allowed(principal, Action.SIGN_OUT, ())
    return principal


# Rendering --------------------------------------------------------------------------------


def render_page(
    request: Request,
    template: str,
    context: Mapping[str, Any] | None = None,
    *,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
) -> Response:
    viewer = _viewer(request)
    full: dict[str, Any] = {"viewer": viewer, "csrf_token": viewer.csrf_token if viewer else ""}
    full.update(context or {})
    response = templates_of(request).TemplateResponse(
        request, template, full, status_code=status_code, headers=headers
    )
    # Pages hold personal data, one-time keys and CSRF tokens: no cache may keep them.
    response.headers["Cache-Control"] = "no-store"
    return response


def _render_visitor_form(
    request: Request,
    template: str,
    context: Mapping[str, Any],
    *,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """A page with a form for visitors who are not signed in: it carries the double-submit token
    and sets its cookie when the browser has none yet."""
    csrf = double_submit(request)
    issued = csrf.issue(request)
    response = render_page(
        request,
        template,
        {**context, "csrf_token": issued.field_value},
        status_code=status_code,
        headers=headers,
    )
    csrf.attach(response, issued)
    return response


def _problem_of(request: Request, exc: DomainError) -> dict[str, Any]:
    problem: dict[str, Any] = {
        "type": exc.type,
        "title": exc.title,
        "status": exc.status,
        "detail": exc.detail,
        "instance": request.url.path,
    }
    if exc.errors:
        problem["errors"] = [{"field": e.field, "message": e.message} for e in exc.errors]
    problem.update(exc.extra)
    return problem


def _error_page(request: Request, exc: DomainError) -> Response:
    retry = _return_path(request) if exc.status == 403 else None
    return render_page(
        request,
        "error.html",
        {"problem": _problem_of(request, exc), "retry_path": retry},
        status_code=exc.status,
        headers=exc.headers,
    )


class PageRoute(TransactionalRoute):
    """A :class:`TransactionalRoute` for pages. The transaction has already been rolled back when
    an error reaches this wrapper; it answers a browser with a redirect or a page, never with a
    JSON problem, whatever the Accept header said."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        run_in_transaction = super().get_route_handler()

        async def run_page(request: Request) -> Response:
            try:
                return await run_in_transaction(request)
            except Unauthenticated:
                return see_other(_with_next(SIGNIN, _return_path(request)))
            except ReauthRequired:
                return see_other(_with_next(REAUTH, _return_path(request)))
            except DomainError as exc:
                return _error_page(request, exc)

        return run_page


router = APIRouter(route_class=PageRoute, include_in_schema=False)


# Forms ------------------------------------------------------------------------------------


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def _typed(form: FormData, names: Sequence[str]) -> dict[str, str]:
    """The values to show again in a refused form. Never called with a password field."""
    return {name: _text(form, name).strip() for name in names}


def _payload(
    form: FormData,
    *,
    required: Sequence[str] = (),
    optional: Sequence[str] = (),
    secret: Sequence[str] = (),
) -> dict[str, Any]:
    """Form fields as the schema expects them: a blank required field is left out (so the error
    is "This field is required."), a blank optional one becomes None, and passwords are kept
    exactly as typed (spaces are part of a password)."""
    data: dict[str, Any] = {}
    for name in required:
        value = _text(form, name)
        if value.strip():
            data[name] = value
    for name in optional:
        data[name] = _text(form, name).strip() or None
    for name in secret:
        value = _text(form, name)
        if value:
            data[name] = value
    return data


def _address_payload(form: FormData) -> dict[str, Any] | None:
    parts = {part: _text(form, f"address.{part}").strip() or None for part in ADDRESS_PARTS}
    if not any(parts[part] for part in _ADDRESS_CONTENT):
        return None
    if parts["country"] is None:
        del parts["country"]  # the schema's default applies
    return parts


def _errors_of(exc: DomainError, *, default_field: str = "form") -> dict[str, str]:
    return errors_by_field(exc.errors) if exc.errors else {default_field: exc.detail}


def _invalid(exc: ValidationError) -> dict[str, str]:
    return errors_by_field(validation_errors([dict(error) for error in exc.errors()]))


def _wait_text(seconds: int) -> str:
    if seconds < 90:
        return f"{seconds} seconds"
    return f"{math.ceil(seconds / 60)} minutes"


def _throttled_message(exc: TooManyRequests) -> str:
    return f"Too many failed attempts. Try again in {_wait_text(exc.retry_after)}."


async def _discard(session: AsyncSession, principal: Principal | None = None) -> None:
    """Undo whatever a refused service call wrote, so that showing the form again commits
    nothing; then reload the member, whom the rollback expired."""
    await session.rollback()
    if principal is not None:
        await session.refresh(principal.user)
        if principal.session is not None:
            await session.refresh(principal.session)


def _set_session_cookie(
    response: Response, token: str, expires_at: dt.datetime, *, remembered: bool, secure: bool
) -> None:
    # A remembered session outlives the browser; a normal one is a browser-session cookie.
    max_age = max(1, int((expires_at - utcnow()).total_seconds())) if remembered else None
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=max_age,
        path="/",
        secure=secure,
        httponly=True,
        samesite="lax",
    )


def _clear_session_cookie(response: Response, *, secure: bool) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", secure=secure, httponly=True, samesite="lax")


FEEDBACK_NOTICES = {
    "replied": "Your reply is published.",
    "reported": "Thank you: an admin will look at this feedback.",
}


# Home and public profiles -----------------------------------------------------------------


@router.get("/")
async def home(request: Request, _: Principal | None = Depends(visitor_page())) -> Response:
    notice = NOTICES.get(request.query_params.get("done", ""))
    return render_page(request, "home.html", {"notice": notice})


@router.get("/members/{username}")
async def member_profile(
    request: Request,
    username: Annotated[str, Path(max_length=64)],
    session: Session,
    _: Principal | None = Depends(visitor_page()),
) -> Response:
    member = await service.public_member(session, username)
    recent = await feedback.public_feedback(session, member.id, limit=feedback.RECENT_ON_PROFILE)
    return render_page(
        request,
        "accounts/member.html",
        {
            "member": {
                "username": member.username,
                "role": member.role,
                "since": member.created_at,
            },
            "ratings": await feedback.ratings_of(session, member.id),
            "feedback": recent[: feedback.RECENT_ON_PROFILE],
            "report_reasons": REASON_LABELS,
            "notice": FEEDBACK_NOTICES.get(request.query_params.get("done", "")),
        },
    )


# Sign-up and email verification -----------------------------------------------------------


@router.get("/signup")
async def signup_form(
    request: Request, principal: Principal | None = Depends(visitor_page())
) -> Response:
    if principal is not None:
        return see_other(ACCOUNT)
    return _render_visitor_form(request, "accounts/signup.html", {"values": {}, "errors": {}})


@router.post("/signup")
async def signup(
    request: Request,
    session: Session,
    kit: Kit,
    _: Principal | None = Depends(visitor_page(return_to="/signup")),
) -> Response:
    form = await request.form()
    typed = _typed(form, SIGNUP_FIELDS)

    def again(errors: dict[str, str], status_code: int) -> Response:
        return _render_visitor_form(
            request,
            "accounts/signup.html",
            {"values": typed, "errors": errors},
            status_code=status_code,
        )

    payload = _payload(
        form,
        required=("email", "username", "role", "name"),
        optional=("phone",),
        secret=("password",),
    )
    payload["address"] = _address_payload(form)
    try:
        data = RegisterIn.model_validate(payload)
    except ValidationError as exc:
        return again(_invalid(exc), 422)
    try:
        user = await service.register(session, kit, data, client_meta(request))
    except (Conflict, ValidationFailed) as exc:
        await _discard(session)
        return again(_errors_of(exc), exc.status)
    return render_page(request, "accounts/signup_done.html", {"email": user.email}, status_code=201)


@router.get("/verify-email")
async def verify_email(
    request: Request,
    session: Session,
    kit: Kit,
    _: Principal | None = Depends(visitor_page()),
) -> Response:
    token = request.query_params.get("token", "")
    try:
        if not token or len(token) > _MAX_LINK_TOKEN_LENGTH:
            raise service.InvalidLink("This verification link is incomplete.")
        await service.verify_email(session, kit, token)
    except service.InvalidLink as exc:
        return render_page(
            request,
            "accounts/link_invalid.html",
            {"message": exc.detail, "kind": "verify"},
            status_code=400,
        )
    return render_page(request, "accounts/verified.html")


# Sign-in and sign-out ---------------------------------------------------------------------


@router.get("/signin")
async def signin_form(
    request: Request, principal: Principal | None = Depends(visitor_page())
) -> Response:
    next_path = safe_local_path(request.query_params.get("next"))
    if principal is not None:
        return see_other(next_path or ACCOUNT)
    return _render_visitor_form(
        request,
        "accounts/signin.html",
        {"values": {"next": next_path or ""}, "errors": {}},
    )


@router.post("/signin")
async def signin(
    request: Request,
    session: Session,
    kit: Kit,
    _: Principal | None = Depends(visitor_page(return_to=SIGNIN)),
) -> Response:
    form = await request.form()
    next_path = safe_local_path(_text(form, "next"))
    typed: dict[str, Any] = {
        "login": _text(form, "login").strip(),
        "remember": bool(_text(form, "remember")),
        "next": next_path or "",
    }

    def again(
        errors: dict[str, str], status_code: int, headers: dict[str, str] | None = None
    ) -> Response:
        return _render_visitor_form(
            request,
            "accounts/signin.html",
            {"values": typed, "errors": errors},
            status_code=status_code,
            headers=headers,
        )

    payload = _payload(form, required=("login",), secret=("password",))
    payload["remember"] = typed["remember"]
    try:
        body = LoginIn.model_validate(payload)
    except ValidationError as exc:
        return again(_invalid(exc), 422)
    try:
        user_session, token = await service.login(
            session,
            kit,
            login_name=body.login,
            password=body.password,
            remember=body.remember,
            kind="web",
            meta=client_meta(request),
        )
    except service.InvalidCredentials:
        await session.commit()  # the failure counts toward the throttle even though we refuse
        return again({"form": "The email, username or password is wrong."}, 401)
    except TooManyRequests as exc:
        return again({"form": _throttled_message(exc)}, 429, exc.headers)
    response = see_other(next_path or ACCOUNT)
    _set_session_cookie(
        response,
        token,
        user_session.expires_at,
        remembered=user_session.remembered,
        secure=settings_of(request).cookie_secure,
    )
    return response


@router.post("/signout")
async def signout(
    request: Request, session: Session, principal: Principal | None = Depends(signing_out)
) -> Response:
    if principal is not None:
        await service.logout(session, principal)
    response = see_other(f"{HOME}?done=signed-out")
    _clear_session_cookie(response, secure=settings_of(request).cookie_secure)
    return response


# Password reset ---------------------------------------------------------------------------


@router.get("/forgot-password")
async def forgot_password_form(
    request: Request, _: Principal | None = Depends(visitor_page())
) -> Response:
    return _render_visitor_form(
        request, "accounts/forgot_password.html", {"values": {}, "errors": {}, "sent": False}
    )


@router.post("/forgot-password")
async def forgot_password(
    request: Request,
    session: Session,
    kit: Kit,
    _: Principal | None = Depends(visitor_page(return_to="/forgot-password")),
) -> Response:
    form = await request.form()
    typed = _typed(form, ("email",))
    try:
        body = PasswordResetRequestIn.model_validate(_payload(form, required=("email",)))
    except ValidationError as exc:
        return _render_visitor_form(
            request,
            "accounts/forgot_password.html",
            {"values": typed, "errors": _invalid(exc), "sent": False},
            status_code=422,
        )
    await service.request_password_reset(session, kit, body.email)
    # The same page whether or not an account has this address.
    return render_page(request, "accounts/forgot_password.html", {"sent": True})


@router.get("/reset-password")
async def reset_password_form(
    request: Request, _: Principal | None = Depends(visitor_page())
) -> Response:
    token = request.query_params.get("token", "")
    if not token or len(token) > _MAX_LINK_TOKEN_LENGTH:
        return render_page(
            request,
            "accounts/link_invalid.html",
            {"message": "This password reset link is incomplete.", "kind": "reset"},
            status_code=400,
        )
    return _render_visitor_form(
        request, "accounts/reset_password.html", {"token": token, "errors": {}}
    )


@router.post("/reset-password")
async def reset_password(
    request: Request,
    session: Session,
    kit: Kit,
    _: Principal | None = Depends(visitor_page(return_to="/forgot-password")),
) -> Response:
    form = await request.form()
    token = _text(form, "token")

    def link_invalid(message: str) -> Response:
        return render_page(
            request,
            "accounts/link_invalid.html",
            {"message": message, "kind": "reset"},
            status_code=400,
        )

    try:
        body = PasswordResetIn.model_validate(
            _payload(form, required=("token",), secret=("new_password",))
        )
    except ValidationError as exc:
        errors = _invalid(exc)
        if "token" in errors:
            return link_invalid("This password reset link is incomplete.")
        return _render_visitor_form(
            request,
            "accounts/reset_password.html",
            {"token": token, "errors": errors},
            status_code=422,
        )
    try:
        await service.reset_password(session, kit, token=body.token, new_password=body.new_password)
    except service.InvalidLink as exc:
        return link_invalid(exc.detail)
    except ValidationFailed as exc:
        await _discard(session)
        return _render_visitor_form(
            request,
            "accounts/reset_password.html",
            {"token": token, "errors": _errors_of(exc, default_field="new_password")},
            status_code=exc.status,
        )
    # Every session of the account was just signed out, this browser's included.
    response = render_page(request, "accounts/reset_done.html")
    _clear_session_cookie(response, secure=settings_of(request).cookie_secure)
    return response


# Step-up (A2) -----------------------------------------------------------------------------


def _reauth_page(
    request: Request,
    next_path: str,
    *,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
) -> Response:
    return render_page(
        request,
        "accounts/reauth.html",
        {"next": next_path, "errors": errors or {}},
        status_code=status_code,
        headers=headers,
    )


@router.get(REAUTH)
async def reauth_form(
    request: Request, _: Principal = Depends(member_page(Action.REAUTHENTICATE))
) -> Response:
    return _reauth_page(request, safe_local_path(request.query_params.get("next")) or ACCOUNT)


@router.post(REAUTH)
async def reauth(
    request: Request,
    session: Session,
    kit: Kit,
    principal: Principal = Depends(member_page(Action.REAUTHENTICATE, return_to=ACCOUNT)),
) -> Response:
    form = await request.form()
    next_path = safe_local_path(_text(form, "next")) or ACCOUNT
    try:
        body = ReauthIn.model_validate(_payload(form, secret=("password",)))
    except ValidationError as exc:
        return _reauth_page(request, next_path, errors=_invalid(exc), status_code=422)
    try:
        await service.reauth(session, kit, principal, body.password, client_meta(request))
    except service.InvalidCredentials:
        await session.commit()  # counted toward the throttle, as on the sign-in page
        return _reauth_page(
            request, next_path, errors={"password": "The password is wrong."}, status_code=401
        )
    except TooManyRequests as exc:
        return _reauth_page(
            request,
            next_path,
            errors={"form": _throttled_message(exc)},
            status_code=429,
            headers=exc.headers,
        )
    return see_other(next_path)


# The account page -------------------------------------------------------------------------


def _profile_values(user: User) -> dict[str, str]:
    address: dict[str, Any] = user.address or {}
    values = {
        "username": user.username,
        "email": user.email,
        "name": user.name or "",
        "phone": user.phone or "",
    }
    for part in ADDRESS_PARTS:
        values[f"address.{part}"] = str(address.get(part) or "")
    return values


async def _account_page(
    request: Request,
    session: AsyncSession,
    principal: Principal,
    *,
    form_name: str | None = None,
    errors: dict[str, str] | None = None,
    typed: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    user = await service.read_own_account(session, principal, channel="web")
    return render_page(
        request,
        "accounts/account.html",
        {
            "user": user,
            "address": user.address or {},
            "profile": typed if form_name == "profile" and typed is not None else None,
            "current": _profile_values(user),
            "form_name": form_name,
            "errors": errors or {},
            "notice": NOTICES.get(request.query_params.get("done", "")) if not form_name else None,
            "remembered": principal.remembered,
        },
        status_code=status_code,
    )


@router.get(ACCOUNT)
async def account(
    request: Request,
    session: Session,
    principal: Principal = Depends(member_page(Action.VIEW_ACCOUNT)),
) -> Response:
    return await _account_page(request, session, principal)


@router.post("/account/profile")
async def update_profile(
    request: Request,
    session: Session,
    kit: Kit,
    principal: Principal = Depends(member_page(Action.UPDATE_ACCOUNT, return_to=ACCOUNT)),
) -> Response:
    form = await request.form()
    typed = _typed(form, PROFILE_FIELDS)
    current = _profile_values(principal.user)
    # Send only what the member changed, so the audit names the fields that really changed.
    changes: dict[str, Any] = {
        name: typed[name] or None
        for name in ("username", "email", "name", "phone")
        if typed[name] != current[name]
    }
    if any(typed[f"address.{p}"] != current[f"address.{p}"] for p in ADDRESS_PARTS):
        changes["address"] = _address_payload(form)
    if not changes:
        return see_other(f"{ACCOUNT}?done=unchanged")
    try:
        patch = MePatch.model_validate(changes)
    except ValidationError as exc:
        return await _account_page(
            request,
            session,
            principal,
            form_name="profile",
            errors=_invalid(exc),
            typed=typed,
            status_code=422,
        )
    try:
        await service.update_account(session, kit, principal, patch)
    except (Conflict, ValidationFailed) as exc:
        await _discard(session, principal)
        return await _account_page(
            request,
            session,
            principal,
            form_name="profile",
            errors=_errors_of(exc),
            typed=typed,
            status_code=exc.status,
        )
    return see_other(f"{ACCOUNT}?done=profile")


@router.post("/account/password")
async def change_password(
    request: Request,
    session: Session,
    kit: Kit,
    principal: Principal = Depends(member_page(Action.CHANGE_PASSWORD, return_to=ACCOUNT)),
) -> Response:
    form = await request.form()
    try:
        body = PasswordChangeIn.model_validate(
            _payload(form, secret=("current_password", "new_password"))
        )
    except ValidationError as exc:
        return await _account_page(
            request, session, principal, form_name="password", errors=_invalid(exc), status_code=422
        )
    try:
        await service.change_password(
            session,
            kit,
            principal,
            current_password=body.current_password,
            new_password=body.new_password,
        )
    except ValidationFailed as exc:
        await _discard(session, principal)
        return await _account_page(
            request,
            session,
            principal,
            form_name="password",
            errors=_errors_of(exc, default_field="new_password"),
            status_code=exc.status,
        )
    return see_other(f"{ACCOUNT}?done=password")


@router.post("/account/verification-email")
async def resend_verification(
    session: Session,
    kit: Kit,
    principal: Principal = Depends(member_page(Action.RESEND_VERIFICATION, return_to=ACCOUNT)),
) -> Response:
    await service.send_verification_mail(session, kit, principal.user)
    return see_other(f"{ACCOUNT}?done=verification-sent")


@router.post("/account/close")
async def close_account(
    request: Request,
    session: Session,
    principal: Principal = Depends(member_page(Action.CLOSE_ACCOUNT, return_to=ACCOUNT)),
) -> Response:
    form = await request.form()
    if _text(form, "confirm") != "yes":
        return await _account_page(
            request,
            session,
            principal,
            form_name="close",
            errors={"confirm": "Tick this box to confirm that you want to close your account."},
            status_code=422,
        )
    await service.close_account(session, principal)
    response = see_other(f"{HOME}?done=closed")
    _clear_session_cookie(response, secure=settings_of(request).cookie_secure)
    return response


# Sessions (A3) ----------------------------------------------------------------------------


@router.get(SESSIONS)
async def sessions_page(
    request: Request,
    session: Session,
    principal: Principal = Depends(member_page(Action.VIEW_ACCOUNT)),
) -> Response:
    items = await service.list_sessions(session, principal)
    current_id = principal.session.id if principal.session else None
    return render_page(
        request,
        "accounts/sessions.html",
        {
            "items": items,
            "current_id": current_id,
            "notice": NOTICES.get(request.query_params.get("done", "")),
        },
    )


@router.post("/account/sessions/{session_id}/revoke")
async def revoke_session(
    request: Request,
    session_id: Annotated[str, Path(max_length=40)],
    session: Session,
    principal: Principal = Depends(member_page(Action.SIGN_OUT, return_to=SESSIONS)),
) -> Response:
    current = principal.session is not None and principal.session.id == session_id
    # Signing out this browser is always allowed; other sessions need A2's step-up, as in the API.
    if not current:
        check_allowed(principal, Action.MANAGE_SESSIONS, ())
    await service.revoke_session(session, principal, session_id)
    if not current:
        return see_other(f"{SESSIONS}?done=revoked")
    response = see_other(f"{HOME}?done=signed-out")
    _clear_session_cookie(response, secure=settings_of(request).cookie_secure)
    return response


# API keys ---------------------------------------------------------------------------------


async def _api_keys_page(
    request: Request,
    session: AsyncSession,
    principal: Principal,
    *,
    errors: dict[str, str] | None = None,
    typed: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    keys = await service.list_api_keys(session, principal)
    return render_page(
        request,
        "accounts/api_keys.html",
        {
            "keys": keys,
            "errors": errors or {},
            "values": typed or {},
            "notice": None if errors else NOTICES.get(request.query_params.get("done", "")),
        },
        status_code=status_code,
    )


@router.get(API_KEYS)
async def api_keys_page(
    request: Request,
    session: Session,
    principal: Principal = Depends(member_page(Action.VIEW_ACCOUNT)),
) -> Response:
    return await _api_keys_page(request, session, principal)


@router.post(API_KEYS)
async def create_api_key(
    request: Request,
    session: Session,
    principal: Principal = Depends(member_page(Action.MANAGE_API_KEYS, return_to=API_KEYS)),
) -> Response:
    form = await request.form()
    typed = _typed(form, ("name",))
    try:
        body = ApiKeyIn.model_validate(_payload(form, required=("name",)))
    except ValidationError as exc:
        return await _api_keys_page(
            request, session, principal, errors=_invalid(exc), typed=typed, status_code=422
        )
    api_key, key = await service.create_api_key(session, principal, body.name)
    return render_page(
        request,
        "accounts/api_key_created.html",
        {"name": api_key.name, "prefix": api_key.prefix, "key": key},
        status_code=201,
    )


@router.post("/account/api-keys/{key_id}/revoke")
async def revoke_api_key(
    key_id: Annotated[str, Path(max_length=40)],
    session: Session,
    principal: Principal = Depends(member_page(Action.MANAGE_API_KEYS, return_to=API_KEYS)),
) -> Response:
    await service.revoke_api_key(session, principal, key_id)
    return see_other(f"{API_KEYS}?done=key-revoked")
