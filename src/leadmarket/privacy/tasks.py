"""Background jobs of the privacy domain: announcing a new privacy notice version by email."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from leadmarket.kit.jobs import JobContext, JobRegistry
from leadmarket.privacy.notices import ANNOUNCE_JOB, announce_batch

if TYPE_CHECKING:
    from leadmarket.tasks import JobServices

log = logging.getLogger("leadmarket.privacy")

registry: JobRegistry[JobServices] = JobRegistry()


@registry.handler(ANNOUNCE_JOB)
async def announce_notice(ctx: JobContext[JobServices]) -> None:
    mailed = await announce_batch(
        ctx.session,
        ctx.services.settings,
        str(ctx.payload["notice_id"]),
        str(ctx.payload.get("after") or ""),
    )
    log.info("privacy notice announced", extra={"job_id": ctx.job_id, "mailed": mailed})
