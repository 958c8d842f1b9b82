"""The retention sweeps (L4) as periodic durable jobs: the purge of personal data past its
deadline every ``LEADMARKET_RETENTION_SWEEP_SECONDS``, and the end of fixed-price listings.
Whichever worker claims a slot runs it; the purge claims its leads with ``FOR UPDATE SKIP
LOCKED``, so several workers share the work."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from leadmarket.config import Settings
from leadmarket.kit.jobs import JobContext, JobRegistry
from leadmarket.privacy import retention

if TYPE_CHECKING:
    from leadmarket.tasks import JobServices


async def purge_expired_lead_data(ctx: JobContext[JobServices]) -> None:
    """One sweep, one transaction per batch of its own (``ctx.database``): a crash loses only
    the batch in flight. It stops within half its lease; the next slot carries on."""
    settings = ctx.services.settings
    await retention.purge_expired_lead_data(
        ctx.database,
        settings,
        time_budget_seconds=settings.job_lease_seconds / 2,
        keep_details=False,
    )


async def close_ended_listings(ctx: JobContext[JobServices]) -> None:
    await retention.close_ended_listings(ctx.session, ctx.services.settings)


def sweep_interval(settings: Settings | None) -> dt.timedelta:
    """``LEADMARKET_RETENTION_SWEEP_SECONDS``, or its default without settings."""
    if settings is not None:
        seconds = settings.retention_sweep_seconds
    else:
        seconds = int(Settings.model_fields["retention_sweep_seconds"].default)
    return dt.timedelta(seconds=seconds)


def registry_for(settings: Settings | None) -> JobRegistry[JobServices]:
    """The retention jobs, the purge at the interval ``settings`` give."""
    registry: JobRegistry[JobServices] = JobRegistry()
    registry.periodic(retention.PURGE_JOB, every=sweep_interval(settings))(purge_expired_lead_data)
    registry.periodic(retention.CLOSE_LISTINGS_JOB, every=retention.CLOSE_LISTINGS_EVERY)(
        close_ended_listings
    )
    return registry
