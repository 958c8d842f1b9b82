"""Background jobs of the notifications domain."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from leadmarket.kit.db import utcnow
from leadmarket.kit.jobs import JobContext, JobRegistry
from leadmarket.notifications.notify import NOTIFY_JOB, run_deferred
from leadmarket.notifications.service import (
    SEND_MAIL_JOB,
    mark_mail_failed,
    purge_old_mail,
    send_queued_mail,
)
from leadmarket.notifications.sms import SEND_TEXT_JOB, open_text_message

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


@registry.handler(NOTIFY_JOB)
async def tell_members(ctx: JobContext[JobServices]) -> None:
    """An event of a hot path (a bid, an auction's end, a sale), told after its commit."""
    await run_deferred(
        ctx.session, ctx.services.settings, str(ctx.payload["event"]), str(ctx.payload["ref"])
    )


@registry.handler(SEND_TEXT_JOB)
async def send_text_message(ctx: JobContext[JobServices]) -> None:
    await ctx.services.sms_backend.send(open_text_message(ctx.services.settings, dict(ctx.payload)))


@registry.periodic("mail.purge_old", every=dt.timedelta(hours=6))
async def purge_old_mail_job(ctx: JobContext[JobServices]) -> None:
    await purge_old_mail(ctx.session, ctx.services.settings, now=utcnow())
