"""Who is calling, and may they do this? The one dependency every protected route declares.

``requires(Action.X, Role.Y, …)`` authenticates the caller (bearer session token, API key, or the
web session cookie), checks the role (deny by default: a route lists the roles it admits, or
admits any signed-in member when it lists none), then applies the credential rules of
:mod:`leadmarket.accounts.policy`."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NoReturn

from fastapi import Depends, Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.accounts import repository
from leadmarket.accounts.policy import (
    API_KEY_MAY_NOT,
    NEEDS_RECENT_PASSWORD,
    REMEMBERED_SESSION_MAY,
    Action,
)
from leadmarket.kit.crypto import token_digest
from leadmarket.kit.db import Database, utcnow
from leadmarket.kit.errors import Forbidden, ReauthRequired, Unauthenticated
from leadmarket.kit.routing import get_session, guard
from leadmarket.models import ApiKey, FraudCase, Role, User, UserSession, UserStatus
from leadmarket.privacy.preferences import gpc_requested, honour_gpc

SESSION_COOKIE = "lm_session"
SESSION_TOKEN_PREFIX = "lms_"
API_KEY_PREFIX = "lmk_"
# Writing last_used_at on every request would turn every read into a write: a session or an
# API key is marked used at most once a minute (the API keys' writers use the same interval).
_TOUCH_INTERVAL = repository.API_KEY_TOUCH_INTERVAL


class AccountNotActive(Forbidden):
    slug = "account-not-active"
    title = "This account is not active"
    explanation = (
        "The account was suspended or closed (by Leadmarket's fraud review, or by its member), "
        "so it can do nothing: no bids, purchases, returns, feedback, messages or payouts. "
        "Its sessions and API keys stopped working when it was suspended; a reinstated "
        "member signs in again and makes new API keys."
    )


async def _stopped_owner(session: AsyncSession, token: str) -> str | None:
    """Why a credential that no longer works stopped, when its account was stopped by the
    fraud review (suspended, or closed by a ban): so the caller learns why (403), not just
    that the token is dead (401). The token proves they held it; nobody else learns anything.
    An account its member closed stays a plain 401: it is gone (A5)."""
    digest = token_digest(token)
    if token.startswith(API_KEY_PREFIX):
        owner = select(ApiKey.user_id).where(ApiKey.key_hash == digest)
    else:
        owner = select(UserSession.user_id).where(UserSession.token_hash == digest)
    row = (await session.execute(select(User.id, User.status).where(User.id.in_(owner)))).first()
    if row is None:
        return None
    user_id, status = str(row[0]), str(row[1])
    if status == UserStatus.SUSPENDED.value:
        return "This account is suspended."
    if status == UserStatus.CLOSED.value:
        banned = await session.scalar(
            select(FraudCase.id)
            .where(FraudCase.subject_user_id == user_id, FraudCase.resolution == "banned")
            .limit(1)
        )
        if banned is not None:
            return "This account was closed by Leadmarket's fraud review."
    return None


@dataclass
class Principal:
    user: User
    session: UserSession | None = None
    api_key: ApiKey | None = None

    @property
    def via(self) -> str:
        if self.api_key is not None:
            return "api_key"
        assert self.session is not None
        return "cookie" if self.session.kind == "web" else "bearer"

    @property
    def remembered(self) -> bool:
        return self.session is not None and self.session.remembered

    def reauthenticated(self, now: dt.datetime) -> bool:
        return (
            self.session is not None
            and self.session.reauth_until is not None
            and self.session.reauth_until > now
        )


def _bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("Use `Authorization: Bearer <token>`.")
    return token.strip()


async def authenticate(request: Request, session: AsyncSession) -> Principal | None:
    """The caller's principal, or None when no credential was sent. A credential that was sent
    but is unknown, expired or revoked is an error, not an anonymous call."""
    cached: Principal | None = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    now = utcnow()
    token = _bearer_token(request)
    from_cookie = False
    if token is None:
        token = request.cookies.get(SESSION_COOKIE)
        from_cookie = True
        if not token:
            return None
    principal: Principal | None = None
    if token.startswith(API_KEY_PREFIX) and not from_cookie:
        principal = await _api_key_principal(session, token, mark_used_at=now)
    else:
        user_session = await repository.live_session_by_token_hash(
            session, token_digest(token), now
        )
        # A cookie only authenticates a web session and a bearer token only an API one, so a
        # cookie stolen by a script cannot be replayed as a bearer token, nor vice versa.
        if user_session is not None and (user_session.kind == "web") == from_cookie:
            user = await repository.user_by_id(session, user_session.user_id)
            if user is not None:
                principal = Principal(user=user, session=user_session)
                if now - user_session.last_used_at > _TOUCH_INTERVAL:
                    user_session.last_used_at = now
    if principal is None:
        if from_cookie:
            return None  # a stale cookie just means "signed out"
        await _refuse_dead_token(session, token)
    _refuse_inactive(principal)
    if gpc_requested(request.headers):
        # Global Privacy Control from a member's browser is their opt-out of sale and sharing:
        # stored with their preferences, in this request's transaction (one read once stored).
        await honour_gpc(session, principal.user.id)
    request.state.principal = principal
    return principal


async def _api_key_principal(
    session: AsyncSession, token: str, *, mark_used_at: dt.datetime | None
) -> Principal:
    """The principal of the live API key ``token``, its account active; raises as
    :func:`authenticate` does otherwise. With ``mark_used_at``, the key is marked used then
    (at most once a minute: :data:`_TOUCH_INTERVAL`)."""
    key = await repository.live_api_key_by_hash(session, token_digest(token))
    user = await repository.user_by_id(session, key.user_id) if key is not None else None
    if key is None or user is None:
        await _refuse_dead_token(session, token)
    principal = Principal(user=user, api_key=key)
    _refuse_inactive(principal)
    if mark_used_at is not None and (
        key.last_used_at is None or mark_used_at - key.last_used_at > _TOUCH_INTERVAL
    ):
        key.last_used_at = mark_used_at
    return principal


async def _refuse_dead_token(session: AsyncSession, token: str) -> NoReturn:
    """Refuse a bearer token that authenticates nobody: 403 when the fraud review stopped its
    account (:func:`_stopped_owner`), 401 otherwise."""
    stopped = await _stopped_owner(session, token)
    if stopped is not None:
        raise AccountNotActive(stopped)
    raise Unauthenticated("The token is unknown, expired or revoked.")


def _refuse_inactive(principal: Principal) -> None:
    if principal.user.status != UserStatus.ACTIVE:
        raise AccountNotActive(f"This account is {principal.user.status}.")


def check_allowed(principal: Principal, action: Action, roles: tuple[Role, ...]) -> None:
    """Raise unless ``principal`` may perform ``action``."""
    if roles and principal.user.role not in roles:
        raise Forbidden("Your role may not do this.")
    if principal.api_key is not None:
        if action in API_KEY_MAY_NOT:
            raise Forbidden("API keys cannot do this; sign in with your password.")
        return
    now = utcnow()
    if action in NEEDS_RECENT_PASSWORD and not principal.reauthenticated(now):
        raise ReauthRequired("Enter your password again to do this.")
    if (
        principal.remembered
        and action not in REMEMBERED_SESSION_MAY
        and not principal.reauthenticated(now)
    ):
        raise ReauthRequired(
            "A remembered session may not do this without your password; "
            "POST /api/v1/auth/reauth first."
        )


def requires(action: Action, *roles: Role) -> Callable[..., Awaitable[Principal]]:
    """The guard dependency: ``principal = Depends(requires(Action.VIEW_ACCOUNT))``."""

    @guard
    async def dependency(
        request: Request, session: AsyncSession = Depends(get_session)
    ) -> Principal:
        principal = await authenticate(request, session)
        if principal is None:
            raise Unauthenticated()
        check_allowed(principal, action, roles)
        return principal

    dependency.__name__ = f"requires_{action.value}"
    return dependency


@guard
async def optional_principal(
    request: Request, session: AsyncSession = Depends(get_session)
) -> Principal | None:
    """Guard for public routes that show more to a signed-in member."""
    return await authenticate(request, session)


class ApiKeyPrincipals:
    """The principals of API keys that authenticated in the last few seconds, per process.

    Only for routes whose write checks the key again inside its own transaction (lead intake:
    :func:`leadmarket.leads.intake.write_leads` refuses a key revoked or an account suspended
    meanwhile), so a stale entry can delay an answer's 401, never let a write through.

    A principal is used at most ``ttl_seconds`` after the look-up that read it began, so a key
    revoked (or an account suspended) is refused by every request that arrives later than that.
    A key missing from the cache is looked up once, not once per request (single flight): the
    requests that need it while its look-up runs wait for that look-up and share its answer,
    principal or error alike. An error is not kept: the next request looks the key up again.
    The look-up runs in a task of its own, so a waiting request that goes away (the one that
    began it included) cancels only its own wait."""

    def __init__(self, ttl_seconds: float = 5.0, max_entries: int = 10_000) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, Principal]] = {}
        # Per key digest: when its look-up began (monotonic), and the look-up.
        self._lookups: dict[str, tuple[float, asyncio.Task[Principal]]] = {}

    def get(self, digest: str) -> Principal | None:
        entry = self._entries.get(digest)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, digest: str, principal: Principal, *, read_from: float | None = None) -> None:
        """Keep ``principal`` until ``ttl_seconds`` after ``read_from`` (the monotonic time its
        look-up began; now by default)."""
        if len(self._entries) >= self.max_entries:
            self._entries.clear()  # crude, but bounded, and refilled within seconds
        began = time.monotonic() if read_from is None else read_from
        self._entries[digest] = (began + self.ttl_seconds, principal)

    async def principal(
        self, digest: str, look_up: Callable[[], Awaitable[Principal]]
    ) -> Principal:
        """The key's principal: from the cache, else from the look-up already running for it
        (if it began within ``ttl_seconds``), else from ``look_up()``, begun now. Raises what
        the look-up raised."""
        cached = self.get(digest)
        if cached is not None:
            return cached
        now = time.monotonic()
        flight = self._lookups.get(digest)
        if flight is None or flight[0] + self.ttl_seconds < now:
            task = asyncio.create_task(self._look_up(digest, now, look_up))
            # Retrieved here so that a failure nobody waits for any more is not logged as
            # "never retrieved"; the waiters get it from the task all the same.
            task.add_done_callback(_retrieve_outcome)
            flight = (now, task)
            self._lookups[digest] = flight
        # Shielded: a waiter cancelled (its client went away) does not cancel the others' answer.
        return await asyncio.shield(flight[1])

    async def _look_up(
        self, digest: str, began: float, look_up: Callable[[], Awaitable[Principal]]
    ) -> Principal:
        try:
            principal = await look_up()
        finally:
            # Before the task is done: no request can join a look-up that has ended.
            flight = self._lookups.get(digest)
            if flight is not None and flight[1] is asyncio.current_task():
                del self._lookups[digest]
        self.put(digest, principal, read_from=began)
        return principal


def _retrieve_outcome(task: asyncio.Task[Principal]) -> None:
    if not task.cancelled():
        task.exception()


async def rechecked_principal(
    request: Request, action: Action, roles: tuple[Role, ...]
) -> Principal:
    """The caller of a route that checks ``principal.api_key`` again where it writes: an API
    key's principal comes from :class:`ApiKeyPrincipals` (one look-up per key every few seconds
    per process, however many requests use it meanwhile), so the request makes no database round
    trip of its own. The look-up only reads: the writer's own check of the key marks it used
    (``repository.recheck_api_keys``), once a minute; it stores the Global Privacy Control
    opt-out of the request that began it, as :func:`authenticate` does. Any other credential is
    checked by :func:`authenticate` in a short transaction of its own (committed: it may note
    the session's use, or store a GPC opt-out). Raises Unauthenticated / Forbidden like
    :func:`requires`. Shared by :func:`requires_rechecked` and fast-lane handlers
    (``kit.fastlane``)."""
    token = _bearer_token(request)
    db: Database = request.app.state.db
    if token is not None and token.startswith(API_KEY_PREFIX):
        cache: ApiKeyPrincipals = request.app.state.api_key_principals
        gpc = gpc_requested(request.headers)

        async def look_up() -> Principal:
            async with db.transaction() as session:
                principal = await _api_key_principal(session, token, mark_used_at=None)
                if gpc:
                    await honour_gpc(session, principal.user.id)
            return principal

        principal = await cache.principal(token_digest(token), look_up)
    else:
        async with db.transaction() as session:
            found = await authenticate(request, session)
        if found is None:
            raise Unauthenticated()
        principal = found
    check_allowed(principal, action, roles)
    return principal


def requires_rechecked(action: Action, *roles: Role) -> Callable[..., Awaitable[Principal]]:
    """Like :func:`requires`, but through :func:`rechecked_principal`. The route must check
    ``principal.api_key`` again where it writes."""

    @guard
    async def dependency(request: Request) -> Principal:
        return await rechecked_principal(request, action, roles)

    dependency.__name__ = f"requires_rechecked_{action.value}"
    return dependency
