"""Queries of the accounts domain."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.kit.errors import DomainError, Forbidden, Unauthenticated
from leadmarket.models import ApiKey, LoginFailure, User, UserSession, UserStatus


async def user_by_email(session: AsyncSession, email: str) -> User | None:
    return await session.scalar(select(User).where(User.email == email))


async def user_by_username(session: AsyncSession, username: str) -> User | None:
    return await session.scalar(select(User).where(User.username_key == username.casefold()))


async def usernames(session: AsyncSession, user_ids: Iterable[str | None]) -> dict[str, str]:
    """Each member's username by id, in one query (ids of nobody are left out)."""
    ids = {i for i in user_ids if i}
    if not ids:
        return {}
    rows = await session.execute(select(User.id, User.username).where(User.id.in_(ids)))
    return {str(i): str(name) for i, name in rows}


async def user_by_id(
    session: AsyncSession, user_id: str, *, for_update: bool = False
) -> User | None:
    query = select(User).where(User.id == user_id)
    if for_update:
        query = query.with_for_update()
    return await session.scalar(query)


async def live_session_by_token_hash(
    session: AsyncSession, token_hash: str, now: dt.datetime
) -> UserSession | None:
    return await session.scalar(
        select(UserSession).where(
            UserSession.token_hash == token_hash,
            UserSession.revoked_at.is_(None),
            UserSession.expires_at > now,
        )
    )


async def live_api_key_by_hash(session: AsyncSession, key_hash: str) -> ApiKey | None:
    return await session.scalar(
        select(ApiKey).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
    )


async def live_sessions_of(
    session: AsyncSession, user_id: str, now: dt.datetime
) -> list[UserSession]:
    rows = await session.scalars(
        select(UserSession)
        .where(
            UserSession.user_id == user_id,
            UserSession.revoked_at.is_(None),
            UserSession.expires_at > now,
        )
        .order_by(UserSession.created_at.desc())
    )
    return list(rows)


async def revoke_sessions(
    session: AsyncSession, user_id: str, now: dt.datetime, *, except_id: str | None = None
) -> int:
    query = update(UserSession).where(
        UserSession.user_id == user_id, UserSession.revoked_at.is_(None)
    )
    if except_id is not None:
        query = query.where(UserSession.id != except_id)
    result = await session.execute(query.values(revoked_at=now))
    return int(getattr(result, "rowcount", 0) or 0)


async def revoke_api_keys(session: AsyncSession, user_id: str, now: dt.datetime) -> None:
    await session.execute(
        update(ApiKey)
        .where(ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=now)
    )


async def api_keys_of(session: AsyncSession, user_id: str) -> list[ApiKey]:
    rows = await session.scalars(
        select(ApiKey).where(ApiKey.user_id == user_id).order_by(ApiKey.created_at.desc())
    )
    return list(rows)


async def failures_since(
    session: AsyncSession, scope: str, key_hash: str, since: dt.datetime
) -> tuple[int, dt.datetime | None]:
    """How many failures in the window, and when the oldest of them happened."""
    row = (
        await session.execute(
            select(func.count(), func.min(LoginFailure.at)).where(
                LoginFailure.scope == scope,
                LoginFailure.key_hash == key_hash,
                LoginFailure.at > since,
            )
        )
    ).one()
    return int(row[0]), row[1]


async def forget_failures(session: AsyncSession, scope: str, key_hash: str) -> None:
    await session.execute(
        delete(LoginFailure).where(LoginFailure.scope == scope, LoginFailure.key_hash == key_hash)
    )


async def purge_old_failures(session: AsyncSession, before: dt.datetime) -> None:
    await session.execute(delete(LoginFailure).where(LoginFailure.at < before))


# A key's ``last_used_at`` is written at most this often: a busy key costs no write per batch.
API_KEY_TOUCH_INTERVAL = dt.timedelta(minutes=1)


def api_key_refusal(user_status: str | None) -> DomainError | None:
    """Why a rechecked API key refuses its request: ``user_status`` is the status of the key's
    account, None when the key is unknown or revoked; None when the key may be used."""
    if user_status is None:
        return Unauthenticated("The token is unknown, expired or revoked.")
    if user_status != UserStatus.ACTIVE:
        return Forbidden(f"This account is {user_status}.")
    return None


async def recheck_api_keys(
    session: AsyncSession, key_ids: set[str], now: dt.datetime
) -> dict[str, DomainError]:
    """For writers that took an API key's principal from a short-lived cache
    (``auth.ApiKeyPrincipals``): check the keys again inside the writing transaction. Returns
    the refusal of each key that was revoked, or whose account is no longer active, meanwhile;
    marks the others used (at most once a minute per key, like a request-by-request sign-in)."""
    if not key_ids:
        return {}
    # On the session's connection, not through the ORM: this runs once per batch of pings or
    # leads, and the ORM's statement handling cost more than the query (nothing here needs it).
    connection = await session.connection()
    rows = await connection.execute(
        select(ApiKey.id, User.status, ApiKey.last_used_at)
        .join(User, User.id == ApiKey.user_id)
        .where(ApiKey.id.in_(key_ids), ApiKey.revoked_at.is_(None))
    )
    live: dict[str, str] = {}
    stale: set[str] = set()
    for key_id, user_status, last_used_at in rows:
        live[key_id] = user_status
        if last_used_at is None or last_used_at < now - API_KEY_TOUCH_INTERVAL:
            stale.add(key_id)
    refusals: dict[str, DomainError] = {}
    for key_id in key_ids:
        refusal = api_key_refusal(live.get(key_id))
        if refusal is not None:
            refusals[key_id] = refusal
    if stale:
        # Only when a minute has passed: a busy key costs no write per batch.
        await connection.execute(
            update(ApiKey).where(ApiKey.id.in_(stale)).values(last_used_at=now)
        )
    return refusals
