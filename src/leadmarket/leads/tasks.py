"""Background jobs of the leads domain: processing uploaded CSV files of leads."""

from __future__ import annotations

from typing import TYPE_CHECKING

from leadmarket.kit.jobs import JobContext, JobRegistry
from leadmarket.leads.uploads import PROCESS_UPLOAD_JOB, give_up_upload, process_upload_step

if TYPE_CHECKING:
    from leadmarket.tasks import JobServices

registry: JobRegistry[JobServices] = JobRegistry()


async def _upload_failed_for_good(ctx: JobContext[JobServices]) -> None:
    await give_up_upload(ctx.session, str(ctx.payload["upload_id"]))


@registry.handler(PROCESS_UPLOAD_JOB, on_dead=_upload_failed_for_good)
async def process_lead_upload(ctx: JobContext[JobServices]) -> None:
    """One step (a slice of the scan, or one batch of rows); the step enqueues the next."""
    await process_upload_step(ctx.session, ctx.services.settings, str(ctx.payload["upload_id"]))
