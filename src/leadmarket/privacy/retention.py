"""The 48-hour rule (promise L4): when a lead's personal data must go, the sweep that destroys
it, and the monitor that shows the rule is kept.

**Deadlines.** ``Lead.pii_expires_at`` is set when the lead's sale *closes*, to that moment plus
``pii_retention_hours``:

* an exclusive lead: at its sale (``orders.service.sell``: the sale takes the only place);
* a shared lead: when its last place is taken (``sell``), or when its auction ends with some
  places sold (``marketplace.service.close_auction``), or when its listing ends
  (:func:`close_ended_listings`); before that it has no deadline, as its sale is still open;
* an auction that ends unsold: its end (``close_auction``);
* a fixed-price lead that never sells: its listing ends ``fixed_price_listing_hours`` after it
  was posted (:func:`close_ended_listings`), so no lead keeps its personal data forever;
* a ping/post lead: it is created and sold in the post (``sell``, as above); a post nobody can
  buy keeps nothing (its rows are rolled back);
* a withdrawn consent (:func:`deadline_on_consent_withdrawn`): a lead nobody bought can no longer
  be sold, so its deadline is the withdrawal itself; a shared lead some buyers have closes its
  sale then; a sold lead keeps its deadline.

**Between the deadline and the sweep** nothing reads the data: ``leads.vault.reveal_personal_data``
treats a lead past its deadline as destroyed for every purpose, and the webhook delivery builds
its message through it.

**The sweep** (:func:`purge_expired_lead_data`) destroys every lead whose deadline has passed, in
batches, one transaction per batch: one UPDATE claims the batch's leads (a subquery with
``FOR UPDATE SKIP LOCKED`` on PostgreSQL; on SQLite the transaction holds the write lock) and
marks them destroyed, their vaults (wrapped data key and ciphertext) and blind indexes are
deleted with one multi-row DELETE each, and one multi-row INSERT logs each destruction in
``pii_destructions`` (lead id unique, deadline, when, lateness). Before the vaults go, in the
same transaction, the consumer's contact values are redacted from the member messages of the
threads of the leads' orders (:func:`leadmarket.messages.redaction.redact_lead_messages`): a
name or a street a member typed into a thread does not outlive the lead's data (L4, M4).
Several sweeps share the work and each lead is destroyed once; a sweep killed mid-way loses
only its batch in flight, which the next run finds again. A lead is never destroyed before
its deadline: the batch's cut-off is the sweep's clock, and the destruction time is never
earlier than the cut-off."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, case, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.db import Database, insert_ignoring_conflicts, utcnow
from leadmarket.leads.vault import shred_personal_data
from leadmarket.messages.redaction import redact_lead_messages
from leadmarket.models import (
    DestructionCause,
    Lead,
    LeadStatus,
    PiiDestruction,
    SaleMode,
)

log = logging.getLogger("leadmarket.privacy.retention")

PURGE_JOB = "privacy.purge_expired_lead_data"
CLOSE_LISTINGS_JOB = "privacy.close_ended_listings"
# Listings end days after they start and their data goes 48 hours later still: closing them a
# few minutes late changes no deadline (it is computed from the listing's end, not the sweep).
CLOSE_LISTINGS_EVERY = dt.timedelta(minutes=5)
DEFAULT_BATCH_SIZE = 1000
# The lateness target of issue 5 (and what the monitor calls late).
LATENESS_TARGET = dt.timedelta(seconds=60)


# Deadlines ---------------------------------------------------------------------------------


def retention_deadline(closed_at: dt.datetime, settings: Settings) -> dt.datetime:
    """When the personal data of a lead whose sale closed at ``closed_at`` must be gone."""
    return closed_at + dt.timedelta(hours=settings.pii_retention_hours)


def listing_length(settings: Settings) -> dt.timedelta:
    return dt.timedelta(hours=settings.fixed_price_listing_hours)


def listing_ends_at(lead: Lead, settings: Settings) -> dt.datetime | None:
    """When ``lead`` leaves the market: its auction's end, or its fixed-price listing's."""
    if lead.sale_mode == SaleMode.FIXED.value:
        return lead.created_at + listing_length(settings)
    return lead.auction_ends_at


def deadline_on_consent_withdrawn(lead: Lead, settings: Settings, now: dt.datetime) -> None:
    """The consumer withdrew consent (L3): the lead is sold no further, so its data goes as soon
    as no buyer holds a right to it. Nobody bought it: the deadline is now (the next sweep
    destroys it). A shared lead some buyers bought: its sale closes now. Sold: unchanged."""
    if lead.pii_destroyed_at is not None:
        return
    if lead.sold_count == 0:
        if lead.pii_expires_at is None or lead.pii_expires_at > now:
            lead.pii_expires_at = now
    elif lead.pii_expires_at is None:
        lead.pii_expires_at = retention_deadline(now, settings)


async def close_ended_listings(
    session: AsyncSession, settings: Settings, *, now: dt.datetime | None = None, limit: int = 500
) -> int:
    """Take fixed-price leads whose listing has ended off the market: ``sold`` when some buyer
    has it (a shared lead), else ``unsold``; the deadline is the listing's end plus the
    retention period. Rows are claimed with ``FOR UPDATE SKIP LOCKED``. Returns how many."""
    now = now or utcnow()
    ended = list(
        await session.scalars(
            select(Lead)
            .where(
                Lead.sale_mode == SaleMode.FIXED.value,
                Lead.status == LeadStatus.OPEN.value,
                Lead.created_at <= now - listing_length(settings),
            )
            .order_by(Lead.created_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
            # The locked row as committed, not a copy the session read earlier.
            .execution_options(populate_existing=True)
        )
    )
    for lead in ended:
        lead.status = (LeadStatus.SOLD if lead.sold_count > 0 else LeadStatus.UNSOLD).value
        if lead.pii_expires_at is None:
            end = listing_ends_at(lead, settings)
            assert end is not None
            lead.pii_expires_at = retention_deadline(end, settings)
    await session.flush()
    if ended:
        log.info("fixed-price listings ended", extra={"leads": len(ended)})
    return len(ended)


# The sweep ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Destruction:
    lead_id: str
    deadline: dt.datetime
    destroyed_at: dt.datetime  # for a dry run: when it would be destroyed (the cut-off)
    lateness_ms: int


@dataclass
class PurgeResult:
    dry_run: bool
    destroyed: list[Destruction] = field(default_factory=list)
    count: int = 0
    batches: int = 0
    # The sweep stopped at its time budget with work left; the next run continues.
    unfinished: bool = False
    max_lateness_ms: int = 0
    # Member messages whose copies of the consumer's contact details were redacted.
    messages_redacted: int = 0


def _lateness_ms(deadline: dt.datetime, destroyed_at: dt.datetime) -> int:
    return max(0, int((destroyed_at - deadline) / dt.timedelta(milliseconds=1)))


def _due(cutoff: dt.datetime) -> Any:
    return select(Lead.id, Lead.pii_expires_at).where(
        Lead.pii_destroyed_at.is_(None), Lead.pii_expires_at <= cutoff
    )


async def purge_expired_lead_data(
    db: Database,
    settings: Settings,
    *,
    now: dt.datetime | None = None,
    dry_run: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    time_budget_seconds: float | None = None,
    keep_details: bool = True,
    clock: Callable[[], dt.datetime] = utcnow,
) -> PurgeResult:
    """Destroy the personal data of every lead whose ``pii_expires_at`` is at or before now
    (``now``, else the clock at each batch) and not destroyed yet; see the module docstring.

    ``dry_run`` destroys nothing and lists what would go. ``time_budget_seconds`` stops between
    batches once spent (``unfinished`` then says work is left for the next run).
    ``keep_details=False`` keeps counts only (large sweeps)."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    result = PurgeResult(dry_run=dry_run)
    if dry_run:
        cutoff = now or clock()
        async with db.transaction() as session:
            rows = (await session.execute(_due(cutoff).order_by(Lead.pii_expires_at))).all()
        for lead_id, deadline in rows:
            result.destroyed.append(
                Destruction(str(lead_id), deadline, cutoff, _lateness_ms(deadline, cutoff))
            )
        result.count = len(rows)
        result.max_lateness_ms = max((d.lateness_ms for d in result.destroyed), default=0)
        return result
    started = time.monotonic()
    while True:
        if time_budget_seconds is not None and time.monotonic() - started > time_budget_seconds:
            result.unfinished = True
            break
        batch, redacted = await _destroy_batch(db, settings, now or clock(), batch_size, clock)
        if not batch:
            break
        result.batches += 1
        result.count += len(batch)
        result.messages_redacted += redacted
        result.max_lateness_ms = max(result.max_lateness_ms, *(d.lateness_ms for d in batch))
        if keep_details:
            result.destroyed.extend(batch)
        # Counts and times only: a log line never names the consumer (nor even the leads).
        log.info(
            "retention batch destroyed",
            extra={
                "batch": result.batches,
                "destroyed": len(batch),
                "max_lateness_ms": max(d.lateness_ms for d in batch),
                "messages_redacted": redacted,
            },
        )
        if len(batch) < batch_size:
            break
    return result


async def _destroy_batch(
    db: Database,
    settings: Settings,
    cutoff: dt.datetime,
    batch_size: int,
    clock: Callable[[], dt.datetime],
) -> tuple[list[Destruction], int]:
    """One batch in one transaction: claim and mark, redact the messages, shred, log. Returns
    the destructions and how many messages were redacted."""
    async with db.transaction() as session:
        # Never earlier than the cut-off, so never before any deadline of the batch.
        destroyed_at = max(clock(), cutoff)
        # Claim and mark in one statement: the subquery locks the batch (skipping rows another
        # sweep holds), the UPDATE marks exactly those and returns their deadlines.
        claim = (
            _due(cutoff)
            .with_only_columns(Lead.id)
            .order_by(Lead.pii_expires_at)
            .limit(batch_size)
            .with_for_update(skip_locked=True)
        )
        rows = (
            await session.execute(
                update(Lead)
                .where(Lead.id.in_(claim.scalar_subquery()), Lead.pii_destroyed_at.is_(None))
                .values(pii_destroyed_at=destroyed_at)
                .returning(Lead.id, Lead.pii_expires_at)
                .execution_options(synchronize_session=False)
            )
        ).all()
        if not rows:
            return [], 0
        batch = sorted(
            (
                Destruction(
                    str(lead_id), deadline, destroyed_at, _lateness_ms(deadline, destroyed_at)
                )
                for lead_id, deadline in rows
                if deadline is not None  # always: the claim selects leads past a deadline
            ),
            key=lambda d: (d.deadline, d.lead_id),
        )
        lead_ids = [d.lead_id for d in batch]
        # While the vaults can still be opened: afterwards nothing could find the copies.
        redacted = await redact_lead_messages(session, settings.keyring(), lead_ids)
        await shred_personal_data(session, lead_ids)
        await _log_destructions(session, batch)
    return batch, redacted


# PostgreSQL: the batch's log rows from five arrays, one statement with five parameters. (A
# multi-row VALUES of 5 × 1,000 parameters cost more to compile than the rest of the batch.)
_LOG_FROM_ARRAYS = text(
    "INSERT INTO pii_destructions (lead_id, deadline, destroyed_at, lateness_ms, cause) "
    "SELECT * FROM unnest(CAST(:lead_ids AS varchar[]), CAST(:deadlines AS timestamptz[]), "
    "CAST(:destroyed_ats AS timestamptz[]), CAST(:latenesses AS bigint[]), "
    "CAST(:causes AS varchar[])) "
    "ON CONFLICT (lead_id) DO NOTHING"
)


async def _log_destructions(session: AsyncSession, batch: list[Destruction]) -> None:
    """One log row per destroyed lead; a lead logged already (impossible while the claim
    holds, but evidence must not fail the destruction) is skipped."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(
            _LOG_FROM_ARRAYS,
            {
                "lead_ids": [d.lead_id for d in batch],
                "deadlines": [d.deadline for d in batch],
                "destroyed_ats": [d.destroyed_at for d in batch],
                "latenesses": [d.lateness_ms for d in batch],
                "causes": [DestructionCause.RETENTION.value] * len(batch),
            },
        )
        return
    await session.execute(
        insert_ignoring_conflicts(session, PiiDestruction, index_elements=[PiiDestruction.lead_id]),
        [
            {
                "lead_id": d.lead_id,
                "deadline": d.deadline,
                "destroyed_at": d.destroyed_at,
                "lateness_ms": d.lateness_ms,
                "cause": DestructionCause.RETENTION.value,
            }
            for d in batch
        ],
    )


# The monitor -------------------------------------------------------------------------------

# Histogram buckets of lateness, upper bounds in seconds (the last one is open).
LATENESS_BUCKETS: tuple[tuple[str, float | None], ...] = (
    ("< 1 s", 1),
    ("1–5 s", 5),
    ("5–10 s", 10),
    ("10–20 s", 20),
    ("20–30 s", 30),
    ("30–60 s", 60),
    ("≥ 60 s", None),
)


@dataclass(frozen=True)
class Bucket:
    label: str
    count: int


@dataclass(frozen=True)
class LatenessStats:
    window: str
    count: int
    p50_ms: int | None
    p90_ms: int | None
    p99_ms: int | None
    max_ms: int | None
    histogram: list[Bucket]


@dataclass(frozen=True)
class Deadline:
    lead_id: str
    deadline: dt.datetime


@dataclass(frozen=True)
class RetentionMonitor:
    now: dt.datetime
    sweep_seconds: int
    retention_hours: int
    due_count: int  # deadline within the next 48 hours
    next_deadlines: list[Deadline]
    overdue_count: int  # deadline passed, not destroyed yet
    overdue_late_count: int  # ... by more than the 60-second target: should never happen
    overdue: list[Deadline]  # the oldest first
    lateness: list[LatenessStats]


async def _lateness_stats(session: AsyncSession, window: str, since: dt.datetime) -> LatenessStats:
    in_window = PiiDestruction.destroyed_at >= since
    bucket_columns = []
    lower = 0.0
    for _label, upper in LATENESS_BUCKETS:
        bounds = [PiiDestruction.lateness_ms >= int(lower * 1000)]
        if upper is not None:
            bounds.append(PiiDestruction.lateness_ms < int(upper * 1000))
        bucket_columns.append(func.sum(case((and_(*bounds), 1), else_=0)))
        lower = upper or lower
    row = (
        await session.execute(
            select(func.count(), func.max(PiiDestruction.lateness_ms), *bucket_columns).where(
                in_window
            )
        )
    ).one()
    count = int(row[0] or 0)
    histogram = [
        Bucket(label, int(row[2 + i] or 0)) for i, (label, _) in enumerate(LATENESS_BUCKETS)
    ]

    async def percentile(p: float) -> int | None:
        if count == 0:
            return None
        # Nearest rank: the smallest value with at least p of the values at or below it.
        rank = max(1, -(-count * int(p * 1000) // 1000))
        value = await session.scalar(
            select(PiiDestruction.lateness_ms)
            .where(in_window)
            .order_by(PiiDestruction.lateness_ms)
            .offset(rank - 1)
            .limit(1)
        )
        return int(value) if value is not None else None

    return LatenessStats(
        window=window,
        count=count,
        p50_ms=await percentile(0.50),
        p90_ms=await percentile(0.90),
        p99_ms=await percentile(0.99),
        max_ms=int(row[1]) if row[1] is not None else None,
        histogram=histogram,
    )


async def retention_monitor(
    session: AsyncSession, settings: Settings, *, now: dt.datetime | None = None, show: int = 10
) -> RetentionMonitor:
    """What the admin page and ``GET /api/v1/admin/retention`` show: leads due in the next
    48 hours, overdue ones, and the lateness of destructions over the last 24 hours and 7 days
    (from the destruction log). Ids and times only."""
    now = now or utcnow()
    held = Lead.pii_destroyed_at.is_(None)
    horizon = now + dt.timedelta(hours=48)
    due = (Lead.pii_expires_at > now) & (Lead.pii_expires_at <= horizon)
    due_count = await session.scalar(select(func.count()).select_from(Lead).where(held, due))
    next_rows = await session.execute(
        select(Lead.id, Lead.pii_expires_at)
        .where(held, due)
        .order_by(Lead.pii_expires_at)
        .limit(show)
    )
    past = Lead.pii_expires_at <= now
    overdue_count = await session.scalar(select(func.count()).select_from(Lead).where(held, past))
    late_count = await session.scalar(
        select(func.count())
        .select_from(Lead)
        .where(held, Lead.pii_expires_at <= now - LATENESS_TARGET)
    )
    overdue_rows = await session.execute(
        select(Lead.id, Lead.pii_expires_at)
        .where(held, past)
        .order_by(Lead.pii_expires_at)
        .limit(show)
    )
    return RetentionMonitor(
        now=now,
        sweep_seconds=settings.retention_sweep_seconds,
        retention_hours=settings.pii_retention_hours,
        due_count=int(due_count or 0),
        next_deadlines=[Deadline(str(i), d) for i, d in next_rows if d is not None],
        overdue_count=int(overdue_count or 0),
        overdue_late_count=int(late_count or 0),
        overdue=[Deadline(str(i), d) for i, d in overdue_rows if d is not None],
        lateness=[
            await _lateness_stats(session, "24h", now - dt.timedelta(hours=24)),
            await _lateness_stats(session, "7d", now - dt.timedelta(days=7)),
        ],
    )
