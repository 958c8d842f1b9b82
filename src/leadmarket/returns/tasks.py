"""Background jobs after the sale: silence approves returns the seller did not decide in time,
and sellers' settled balances are paid out daily. Both are durable periodic jobs (``kit.jobs``)
whose rows are claimed so that several workers share them safely."""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING

from leadmarket.kit.jobs import JobContext, JobRegistry
from leadmarket.payouts.service import (
    PAY_SELLER_JOB,
    SCHEDULED_JOB,
    enqueue_scheduled_payouts,
    pay_seller_scheduled,
)
from leadmarket.returns.service import (
    SILENCE_JOB,
    SWEEP_JOB,
    approve_if_silent,
    enqueue_silent_approvals,
)

if TYPE_CHECKING:
    from leadmarket.tasks import JobServices

log = logging.getLogger("leadmarket.returns")

registry: JobRegistry[JobServices] = JobRegistry()


@registry.periodic(SWEEP_JOB, every=dt.timedelta(minutes=1))
async def approve_silent_returns_job(ctx: JobContext[JobServices]) -> None:
    queued = await enqueue_silent_approvals(ctx.session)
    log.info("silent returns queued", extra={"job_id": ctx.job_id, "queued": queued})


@registry.handler(SILENCE_JOB)
async def approve_silent_return_job(ctx: JobContext[JobServices]) -> None:
    approved = await approve_if_silent(
        ctx.session, ctx.services.settings, str(ctx.payload["return_id"])
    )
    log.info("return approved by silence", extra={"job_id": ctx.job_id, "approved": approved})


@registry.periodic(SCHEDULED_JOB, every=dt.timedelta(days=1))
async def scheduled_payouts_job(ctx: JobContext[JobServices]) -> None:
    queued = await enqueue_scheduled_payouts(ctx.session, ctx.services.settings)
    log.info("scheduled payouts queued", extra={"job_id": ctx.job_id, "queued": queued})


@registry.handler(PAY_SELLER_JOB)
async def pay_seller_job(ctx: JobContext[JobServices]) -> None:
    await pay_seller_scheduled(
        ctx.session,
        ctx.services.settings,
        str(ctx.payload["seller_id"]),
        str(ctx.payload["currency"]),
    )
