"""Request plumbing shared by every router: the per-request transaction and the rule that every
route declares who may call it.

* :class:`TransactionalRoute` gives the request its unit of work: one database session, committed
  when the handler returns, rolled back when it raises. Services never commit.
* :func:`guard` marks a dependency as the route's authorization check. :func:`include_guarded`
  refuses to build an app in which any API or page route lacks one: deny by default."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from leadmarket.kit.db import Database, forget_after_commit, run_after_commit

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
    return session


class TransactionalRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def run_in_transaction(request: Request) -> Response:
            try:
                response = await handler(request)
            except BaseException:
                await _finish(request, commit=False)
                raise
            await _finish(request, commit=True)
            return response

        return run_in_transaction


async def _finish(request: Request, *, commit: bool) -> None:
    session: AsyncSession | None = getattr(request.state, _SESSION_ATTR, None)
    if session is None:
        return
    setattr(request.state, _SESSION_ATTR, None)
    if not session.in_transaction() and not (session.new or session.dirty or session.deleted):
        return  # never used: nothing to commit or release (and each call would cost a greenlet)
    try:
        if commit:
            await session.commit()
        else:
            forget_after_commit(session)
            await session.rollback()
    finally:
        await session.close()
    if commit:
        await run_after_commit(session)


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
