"""Background jobs of the notifications domain."""

from __future__ import annotations

from typing import TYPE_CHECKING

from leadmarket.kit.jobs import JobContext, JobRegistry
from leadmarket.notifications.service import SEND_MAIL_JOB, mark_mail_failed, send_queued_mail

if TYPE_CHECKING:
    from leadmarket.tasks import JobServices

registry: JobRegistry[JobServices] = JobRegistry()


async def _mail_failed_for_good(ctx: JobContext[JobServices]) -> None:
    await mark_mail_failed(ctx.session, str(ctx.payload["mail_id"]), attempts=ctx.attempt)


@registry.handler(SEND_MAIL_JOB, on_dead=_mail_failed_for_good)
async def send_mail(ctx: JobContext[JobServices]) -> None:
    await send_queued_mail(
        ctx.session,
        ctx.services.settings,
        ctx.services.mail_backend,
        str(ctx.payload["mail_id"]),
        attempt=ctx.attempt,
    )
