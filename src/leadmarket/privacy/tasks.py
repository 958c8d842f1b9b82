"""Background jobs of consumer rights requests: answering a verified request, and the sweep
that expires abandoned verifications, deletes reports past their download period and requests
past their retention (24 months by default)."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from leadmarket.kit.db import utcnow
from leadmarket.kit.jobs import JobContext, JobRegistry
from leadmarket.privacy.requests import (
    FULFIL_JOB,
    SWEEP_JOB,
    fulfil_request,
    record_fulfilment_failure,
    sweep_requests,
)

if TYPE_CHECKING:
    from leadmarket.tasks import JobServices

registry: JobRegistry[JobServices] = JobRegistry()


async def _fulfilment_failed_for_good(ctx: JobContext[JobServices]) -> None:
    await record_fulfilment_failure(ctx.session, str(ctx.payload["request_id"]))


@registry.handler(FULFIL_JOB, on_dead=_fulfilment_failed_for_good)
async def fulfil_privacy_request(ctx: JobContext[JobServices]) -> None:
    await fulfil_request(ctx.session, ctx.services.settings, str(ctx.payload["request_id"]))


@registry.periodic(SWEEP_JOB, every=dt.timedelta(minutes=15))
async def sweep_privacy_requests(ctx: JobContext[JobServices]) -> None:
    await sweep_requests(ctx.session, ctx.services.settings, now=utcnow())
