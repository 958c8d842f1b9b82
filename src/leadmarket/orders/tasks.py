"""Background jobs of orders: settling sales after the return window, delivering sold leads to
the buyers' webhooks."""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING

from leadmarket.kit.jobs import JobContext, JobRegistry
from leadmarket.orders import delivery  # noqa: F401  (registers the lead.delivered payload)
from leadmarket.orders.service import SETTLE_JOB, settle_due_orders
from leadmarket.webhooks.service import DELIVER_JOB, deliver

if TYPE_CHECKING:
    from leadmarket.tasks import JobServices

log = logging.getLogger("leadmarket.orders")

registry: JobRegistry[JobServices] = JobRegistry()


@registry.periodic(SETTLE_JOB, every=dt.timedelta(minutes=5))
async def settle_due_orders_job(ctx: JobContext[JobServices]) -> None:
    settled = await settle_due_orders(ctx.session, ctx.services.settings)
    log.info("orders settled", extra={"job_id": ctx.job_id, "settled": settled})


@registry.handler(DELIVER_JOB)
async def deliver_webhook(ctx: JobContext[JobServices]) -> None:
    """One attempt; a failed one enqueues the next itself (with backoff), so that the attempt
    is logged in the same transaction instead of being rolled back with a raised error."""
    await deliver(ctx.database, ctx.session, ctx.services.settings, str(ctx.payload["delivery_id"]))
