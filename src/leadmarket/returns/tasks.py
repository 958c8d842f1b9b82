"""Background jobs after the sale: silence approves returns the seller did not decide in time,
and sellers' settled balances are paid out daily. Both are durable periodic jobs (``kit.jobs``)
whose rows are claimed so that several workers share them safely."""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING

from leadmarket.kit.jobs import JobContext, JobRegistry
from leadmarket.payouts.service import SCHEDULED_JOB, pay_out_scheduled
from leadmarket.returns.service import SWEEP_JOB, approve_silent_returns

if TYPE_CHECKING:
    from leadmarket.tasks import JobServices

log = logging.getLogger("leadmarket.returns")

registry: JobRegistry[JobServices] = JobRegistry()


@registry.periodic(SWEEP_JOB, every=dt.timedelta(minutes=1))
async def approve_silent_returns_job(ctx: JobContext[JobServices]) -> None:
    approved = await approve_silent_returns(ctx.session, ctx.services.settings)
    log.info("returns approved by silence", extra={"job_id": ctx.job_id, "approved": approved})


@registry.periodic(SCHEDULED_JOB, every=dt.timedelta(days=1))
async def scheduled_payouts_job(ctx: JobContext[JobServices]) -> None:
    paid = await pay_out_scheduled(ctx.session, ctx.services.settings)
    log.info("scheduled payouts", extra={"job_id": ctx.job_id, "paid": paid})
