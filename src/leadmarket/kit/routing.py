"""Request plumbing shared by every router: the per-request transaction and the rule that every
route declares who may call it.

* :class:`TransactionalRoute` gives the request its unit of work: one database session, committed
  when the handler returns, rolled back when it raises. Services never commit. A unit of work
  that lost a deadlock or a serialization conflict runs again (:data:`CONFLICT_ATTEMPTS` in all,
  after a short random pause), unless it did something outside its transaction
  (``kit.transient.outside_effect``); a database that cannot be used answers 503 with
  ``Retry-After`` (``kit.transient``), never 500.
* :func:`guard` marks a dependency as the route's authorization check. :func:`include_guarded`
  refuses to build an app in which any API or page route lacks one: deny by default."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import UploadFile
from starlette.responses import Response

from leadmarket.kit.db import Database, forget_after_commit, run_after_commit
from leadmarket.kit.transient import (
    DatabaseBusy,
    DatabaseUnavailable,
    begin_unit_of_work,
    current_unit_of_work,
    end_unit_of_work,
    is_lost_conflict,
    is_unavailable,
    log_transient,
)

_SESSION_ATTR = "db_session"


def get_database(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


async def get_session(request: Request) -> AsyncSession:
    """The request's session, opened on first use. :class:`TransactionalRoute` closes it."""
    session: AsyncSession | None = getattr(request.state, _SESSION_ATTR, None)
    if session is None:
        session = get_database(request).new_session()
        setattr(request.state, _SESSION_ATTR, session)
        unit = current_unit_of_work()
        if unit is not None:
            unit.session = session.sync_session
    return session


# How many times a unit of work that lost a deadlock or serialization conflict is run in all,
# and the longest pause (seconds) before the last attempt (each pause is random, up to twice
# the one before: the two losers of a deadlock should not meet again at once).
CONFLICT_ATTEMPTS = 4
CONFLICT_PAUSE_SECONDS = 0.2


class TransactionalRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def run_in_transaction(request: Request) -> Response:
            attempt = 1
            while True:
                unit, token = begin_unit_of_work()
                try:
                    response, session = await _attempt(handler, request)
                except BaseException as exc:
                    if not is_lost_conflict(exc):
                        if is_unavailable(exc):
                            log_transient(exc, request.url.path, "unavailable")
                            raise DatabaseUnavailable() from exc
                        raise
                    if (
                        unit.outside
                        or attempt >= CONFLICT_ATTEMPTS
                        or not await _body_reusable(request)
                    ):
                        log_transient(exc, request.url.path, f"busy after {attempt} attempts")
                        raise DatabaseBusy() from exc
                else:
                    break
                finally:
                    end_unit_of_work(token)
                pause = CONFLICT_PAUSE_SECONDS / 2 ** (CONFLICT_ATTEMPTS - 1 - attempt)
                await asyncio.sleep(pause * (1 + secrets.randbelow(1000) / 1000) / 2)
                attempt += 1
            # Once committed, never again: what runs after the commit is outside the retries.
            if session is not None:
                await run_after_commit(session)
            return response

        return run_in_transaction


async def _attempt(
    handler: Callable[[Request], Coroutine[Any, Any, Response]], request: Request
) -> tuple[Response, AsyncSession | None]:
    """One run of the handler, then the commit: the response, and the session that committed
    (None if the handler did not use one)."""
    try:
        response = await handler(request)
    except BaseException:
        await _rollback(request)
        raise
    return response, await _commit(request)


async def _body_reusable(request: Request) -> bool:
    """Whether the handler can read the request's body again: FastAPI keeps what it read (the
    bytes, the parsed form); uploaded files are rewound. A body streamed by the handler itself
    is gone."""
    form = getattr(request, "_form", None)
    if form is not None:
        for value in form.values():
            if isinstance(value, UploadFile):
                await value.seek(0)
        return True
    return hasattr(request, "_body") or not getattr(request, "_stream_consumed", False)


def _take_session(request: Request) -> AsyncSession | None:
    """The request's session if it was used (else it is closed, if opened at all: an unused
    one has nothing to commit or release, and each call would cost a greenlet)."""
    session: AsyncSession | None = getattr(request.state, _SESSION_ATTR, None)
    if session is None:
        return None
    setattr(request.state, _SESSION_ATTR, None)
    if not session.in_transaction() and not (session.new or session.dirty or session.deleted):
        return None
    return session


async def _commit(request: Request) -> AsyncSession | None:
    """Commit the request's session; the session, if there was work to commit."""
    session = _take_session(request)
    if session is None:
        return None
    try:
        await session.commit()
    finally:
        await session.close()
    return session


async def _rollback(request: Request) -> None:
    session = _take_session(request)
    if session is None:
        return
    try:
        forget_after_commit(session)
        await session.rollback()
    finally:
        await session.close()


F = TypeVar("F", bound=Callable[..., Any])


def guard(func: F) -> F:
    """Mark ``func`` (a FastAPI dependency) as an authorization check."""
    func.__leadmarket_guard__ = True  # type: ignore[attr-defined]
    return func


def _has_guard(dependant: Dependant) -> bool:
    for dep in dependant.dependencies:
        if getattr(dep.call, "__leadmarket_guard__", False) or _has_guard(dep):
            return True
    return False


def unguarded_routes(router: APIRouter) -> list[str]:
    """Routes of ``router``, and of routers included in it, whose dependencies include no
    guard. (FastAPI 0.165 keeps included routers nested instead of copying their routes.)"""
    found: list[str] = []
    for route in router.routes:
        if isinstance(route, APIRoute):
            if not _has_guard(route.dependant):
                found.append(f"{sorted(route.methods or ())} {route.path}")
        elif isinstance(nested := getattr(route, "original_router", None), APIRouter):
            found += unguarded_routes(nested)
    return found


def include_guarded(app: FastAPI, router: APIRouter) -> None:
    """Include ``router`` only if every one of its routes declares who may call it."""
    unguarded = unguarded_routes(router)
    if unguarded:
        raise RuntimeError("routes without an authorization guard: " + ", ".join(unguarded))
    app.include_router(router)
