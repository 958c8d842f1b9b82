"""Background jobs of the privacy engine: answering a verified rights request; the sweep that
expires abandoned verifications, deletes reports past their download period and requests past
their retention (24 months by default); announcing a new privacy notice version by email."""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING

from leadmarket.kit.db import utcnow
from leadmarket.kit.jobs import JobContext, JobRegistry
from leadmarket.privacy.notices import ANNOUNCE_JOB, announce_batch
from leadmarket.privacy.requests import (
    FULFIL_JOB,
    SWEEP_JOB,
    fulfil_request,
    record_fulfilment_failure,
    sweep_requests,
)

if TYPE_CHECKING:
    from leadmarket.tasks import JobServices

log = logging.getLogger("leadmarket.privacy")

registry: JobRegistry[JobServices] = JobRegistry()


async def _fulfilment_failed_for_good(ctx: JobContext[JobServices]) -> None:
    await record_fulfilment_failure(ctx.session, str(ctx.payload["request_id"]))


@registry.handler(FULFIL_JOB, on_dead=_fulfilment_failed_for_good)
async def fulfil_privacy_request(ctx: JobContext[JobServices]) -> None:
    await fulfil_request(ctx.session, ctx.services.settings, str(ctx.payload["request_id"]))


@registry.periodic(SWEEP_JOB, every=dt.timedelta(minutes=15))
async def sweep_privacy_requests(ctx: JobContext[JobServices]) -> None:
    await sweep_requests(ctx.session, ctx.services.settings, now=utcnow())


@registry.handler(ANNOUNCE_JOB)
async def announce_notice(ctx: JobContext[JobServices]) -> None:
    mailed = await announce_batch(
        ctx.session,
        ctx.services.settings,
        str(ctx.payload["notice_id"]),
        str(ctx.payload.get("after") or ""),
    )
    log.info("privacy notice announced", extra={"job_id": ctx.job_id, "mailed": mailed})
