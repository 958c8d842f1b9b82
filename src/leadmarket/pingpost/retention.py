"""The ping sweep: pings and their duplicate fingerprints do not pile up forever.

A ping holds no personal data (see ``models.ping``), so nothing obliges its deletion; but every
seller's every ping is a row, and most are never posted. Every hour this job deletes:

* pings older than ``LEADMARKET_PING_RETENTION_DAYS`` that were never posted, or whose lead is
  gone (posted unsold, so nothing was kept; or the lead row deleted since). A posted ping whose
  lead still exists is kept: it is the seller's record of that sale (``ping_counts``), and its
  ``order_id`` names the order. No table has a foreign key to ``pings`` (checked: orders name
  no ping), so nothing else has to go with it;
* duplicate fingerprints past their window: they refuse nothing any more.

Both in batches of ``batch_size`` rows, each batch its own short transaction, so the sweep
never holds SQLite's write lock (or PostgreSQL row locks) for long while pings keep coming in;
the oldest go first (``ix_pings_created_at``). A run stops within its time budget and the next
hour's run carries on."""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import ColumnElement, CursorResult, Select, delete, exists, or_, select
from sqlalchemy.orm import InstrumentedAttribute

from leadmarket.kit.db import Base, Database, utcnow
from leadmarket.kit.jobs import JobContext
from leadmarket.models import Lead, Ping, PingFingerprint

if TYPE_CHECKING:
    from leadmarket.tasks import JobServices

log = logging.getLogger("leadmarket.pingpost")

SWEEP_JOB = "pingpost.purge_old_pings"
SWEEP_EVERY = dt.timedelta(hours=1)
BATCH_SIZE = 1000


@dataclass
class SweepResult:
    pings: int = 0
    fingerprints: int = 0


def _purgeable_pings(cutoff: dt.datetime) -> list[ColumnElement[bool]]:
    # Not only lead_id IS NULL (ON DELETE SET NULL): a dangling id left by a database without
    # foreign key enforcement counts as gone too.
    lead_exists = exists().where(Lead.id == Ping.lead_id)
    return [Ping.created_at < cutoff, or_(Ping.posted_at.is_(None), ~lead_exists)]


async def _delete_batch(
    database: Database,
    ids_query: Select[str],
    model: type[Base],
    key: InstrumentedAttribute[str],
) -> int:
    """Delete one batch (the ids ``ids_query`` picks) in a transaction of its own."""
    async with database.transaction() as session:
        ids = list(await session.scalars(ids_query))
        if not ids:
            return 0
        result = await session.execute(delete(model).where(key.in_(ids)))
        return int(cast("CursorResult[Any]", result).rowcount)


async def sweep_pings(
    database: Database,
    *,
    retention_days: int,
    now: dt.datetime | None = None,
    batch_size: int = BATCH_SIZE,
    time_budget_seconds: float = 60.0,
) -> SweepResult:
    """Delete what the module docstring says, batch by batch, until nothing is left or the
    time budget is spent."""
    now = now or utcnow()
    cutoff = now - dt.timedelta(days=retention_days)
    deadline = time.monotonic() + time_budget_seconds
    old_pings = (
        select(Ping.id).where(*_purgeable_pings(cutoff)).order_by(Ping.created_at).limit(batch_size)
    )
    expired = (
        select(PingFingerprint.fingerprint)
        .where(PingFingerprint.expires_at <= now)
        .limit(batch_size)
    )
    pings = await _drain(database, old_pings, Ping, Ping.id, batch_size, deadline)
    fingerprints = await _drain(
        database, expired, PingFingerprint, PingFingerprint.fingerprint, batch_size, deadline
    )
    return SweepResult(pings=pings, fingerprints=fingerprints)


async def _drain(
    database: Database,
    ids_query: Select[str],
    model: type[Base],
    key: InstrumentedAttribute[str],
    batch_size: int,
    deadline: float,
) -> int:
    """Batches until one comes back short (nothing left) or the deadline passes; always one
    batch at least, so every run makes progress."""
    deleted = 0
    while True:
        batch = await _delete_batch(database, ids_query, model, key)
        deleted += batch
        if batch < batch_size or time.monotonic() >= deadline:
            return deleted


async def sweep_pings_handler(ctx: JobContext[JobServices]) -> None:
    """Batches in transactions of their own (``ctx.database``); within half the job's lease."""
    settings = ctx.services.settings
    result = await sweep_pings(
        ctx.database,
        retention_days=settings.ping_retention_days,
        time_budget_seconds=settings.job_lease_seconds / 2,
    )
    if result.pings or result.fingerprints:
        log.info("pings swept", extra={"job_id": ctx.job_id, **vars(result)})
