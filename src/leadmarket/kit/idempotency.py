"""``Idempotency-Key`` for POSTs that create things (docs/api.md): the same key with the same
body returns the first answer; the same key with another body is a 409. The first answer is
stored in the same transaction as the thing it created, so a replay can never point at
something that was rolled back."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.kit.db import utcnow
from leadmarket.kit.errors import Conflict, FieldError, ValidationFailed
from leadmarket.kit.jobs import JobContext
from leadmarket.models import IdempotencyRecord

MAX_KEY_LENGTH = 200


class IdempotencyKeyReused(Conflict):
    slug = "idempotency-key-reused"
    title = "Idempotency-Key used for another request"
    explanation = "This Idempotency-Key was already used with a different request body."


def request_fingerprint(body: Any) -> str:
    return hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()
    ).hexdigest()


def check_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise ValidationFailed(
            "Bad Idempotency-Key.",
            errors=[
                FieldError("Idempotency-Key", f"Use 1 to {MAX_KEY_LENGTH} printable characters.")
            ],
        )
    return key


async def previous_answer(
    session: AsyncSession, principal: str, key: str, fingerprint: str
) -> IdempotencyRecord | None:
    found = await session.scalar(
        select(IdempotencyRecord).where(
            IdempotencyRecord.principal == principal, IdempotencyRecord.key == key
        )
    )
    if found is not None and found.request_sha256 != fingerprint:
        raise IdempotencyKeyReused("This Idempotency-Key was already used with another body.")
    return found


async def remember_answer(
    session: AsyncSession,
    principal: str,
    key: str,
    fingerprint: str,
    status_code: int,
    response: dict[str, Any],
) -> None:
    session.add(
        IdempotencyRecord(
            principal=principal,
            key=key,
            request_sha256=fingerprint,
            status_code=status_code,
            response=response,
        )
    )
    try:
        await session.flush()
    except IntegrityError:
        # A concurrent request with the same key won; this one's work is rolled back.
        raise Conflict(
            "A request with this Idempotency-Key is being processed; retry to get its answer."
        ) from None


async def run_once(
    session: AsyncSession,
    principal_id: str,
    idempotency_key: str | None,
    request: dict[str, Any],
    run: Callable[[], Awaitable[tuple[int, dict[str, Any]]]],
) -> tuple[int, dict[str, Any]]:
    """``run`` once per ``idempotency_key`` (scoped to the member): the same key and request
    give the first answer again; with another request, 409 (``kit.idempotency``). The answer is
    remembered in the same transaction as what it did."""
    fingerprint = request_fingerprint(request)
    if idempotency_key is not None:
        earlier = await previous_answer(session, principal_id, idempotency_key, fingerprint)
        if earlier is not None:
            return earlier.status_code, earlier.response
    status_code, answer = await run()
    if idempotency_key is not None:
        await remember_answer(
            session, principal_id, idempotency_key, fingerprint, status_code, answer
        )
    return status_code, answer


# Clients retry within minutes; a day covers any sane retry policy without keeping answers
# (which name the things created) forever.
RETENTION = dt.timedelta(hours=24)
PURGE_JOB_KIND = "idempotency.purge_expired"


async def purge_expired_records(session: AsyncSession, *, now: dt.datetime) -> int:
    result = await session.execute(
        delete(IdempotencyRecord).where(IdempotencyRecord.created_at < now - RETENTION)
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def purge_expired_records_handler(ctx: JobContext[Any]) -> None:
    await purge_expired_records(ctx.session, now=utcnow())
