"""Database failures that are not the request's fault, and whether its unit of work may run again.

* A **lost conflict**: PostgreSQL chose the transaction as a deadlock's victim (SQLSTATE 40P01)
  or refused it as not serializable (40001). Nothing of it was kept, so the whole unit of work
  may simply run again (:class:`~leadmarket.kit.routing.TransactionalRoute` does, a few times).
* The database is **unavailable**: the connection was lost or refused, the server is shutting
  down or starting up, it has no connection left, the pool had none to give in time, or
  SQLite's write lock stayed taken past the busy timeout. The client should retry later: a
  503 with ``Retry-After``, never a 500.

A unit of work may run again only if nothing of it happened outside its transaction: a payment
processor charged, a batch committed in a transaction of its own. Code that does such a thing
calls :func:`outside_effect` first, and the request is then answered, not rerun."""

from __future__ import annotations

import contextvars
import logging
from typing import Any

from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session

from leadmarket.kit.errors import DomainError

# The victim of a deadlock, and a transaction that could not be serialized (PostgreSQL).
CONFLICT_SQLSTATES = frozenset({"40P01", "40001"})
# Connection exceptions (class 08), the server shutting down or starting up, no connection left.
_UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300"})
_SQLITE_BUSY = ("database is locked", "database table is locked", "database is busy")

RETRY_AFTER_SECONDS = 1

log = logging.getLogger("leadmarket.transient")


class ServiceUnavailable(DomainError):
    status = 503
    slug = "service-unavailable"
    title = "Service unavailable"
    explanation = (
        "The database could not take the request just now; nothing was saved. Retry after the "
        "number of seconds in the Retry-After header."
    )

    def __init__(self, detail: str | None = None, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.headers.setdefault("Retry-After", str(RETRY_AFTER_SECONDS))
        self.extra.setdefault("retry_after", RETRY_AFTER_SECONDS)


class DatabaseBusy(ServiceUnavailable):
    slug = "database-busy"
    title = "Busy, try again"
    explanation = (
        "Concurrent requests kept conflicting with this one in the database; it was tried "
        "again a few times and nothing of it was saved. Retry after the number of seconds in "
        "the Retry-After header."
    )


class DatabaseUnavailable(ServiceUnavailable):
    slug = "database-unavailable"
    title = "Database unavailable"
    explanation = (
        "The database could not be reached, or stayed locked, just now; nothing was saved. "
        "Retry after the number of seconds in the Retry-After header."
    )


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps: SQLAlchemy's ``orig``, then the chain of causes."""
    found: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(found) < 8 and current not in found:
        found.append(current)
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return found


def _sqlstate(exc: BaseException) -> str | None:
    for cause in _causes(exc):
        state = getattr(cause, "sqlstate", None)
        if isinstance(state, str):
            return state
    return None


def is_lost_conflict(exc: BaseException) -> bool:
    """Whether PostgreSQL rolled ``exc``'s transaction back as a deadlock's victim or as not
    serializable: running the same work again is the remedy."""
    return _sqlstate(exc) in CONFLICT_SQLSTATES


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be used just now (see the module docstring)."""
    if isinstance(exc, PoolTimeout | DisconnectionError | ConnectionError):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        message = str(exc.orig).lower()
        if any(busy in message for busy in _SQLITE_BUSY):
            return True
    state = _sqlstate(exc)
    if state is not None and (state.startswith("08") or state in _UNAVAILABLE_SQLSTATES):
        return True
    return any(
        isinstance(cause, ConnectionError) or type(cause).__name__ == "ConnectionDoesNotExistError"
        for cause in _causes(exc)[1:]
    )


def log_transient(exc: BaseException, path: str, answer: str) -> None:
    """Note a 503 for the operators: the error's type and where, not its text (it may hold
    personal data)."""
    log.warning(
        "database failure answered %s",
        answer,
        extra={"error_type": type(exc).__name__, "sqlstate": _sqlstate(exc), "path": path},
    )


# Outside effects -----------------------------------------------------------------------------


class UnitOfWork:
    """What one attempt at a request did besides its own session's transaction."""

    __slots__ = ("outside", "session")

    def __init__(self) -> None:
        self.outside = False
        self.session: Any = None  # the request's own (sync) session, once opened


_current: contextvars.ContextVar[UnitOfWork | None] = contextvars.ContextVar(
    "leadmarket_unit_of_work", default=None
)


def begin_unit_of_work() -> tuple[UnitOfWork, contextvars.Token[UnitOfWork | None]]:
    unit = UnitOfWork()
    return unit, _current.set(unit)


def end_unit_of_work(token: contextvars.Token[UnitOfWork | None]) -> None:
    _current.reset(token)


def current_unit_of_work() -> UnitOfWork | None:
    return _current.get()


def outside_effect() -> None:
    """Note that the running request did (or is about to do) something outside its own
    transaction that running it again would repeat: charge a card, pay out, commit elsewhere."""
    unit = _current.get()
    if unit is not None:
        unit.outside = True


@event.listens_for(Session, "after_commit")
def _commit_elsewhere(session: Session) -> None:
    """A transaction committed during a request by a session that is not the request's own
    (``Database.transaction()``): its work stays if the request's own transaction is lost."""
    unit = _current.get()
    if unit is not None and session is not unit.session:
        unit.outside = True
