"""Background work of the auctions: each auction's close at its end (one ``auctions.close`` job
per auction, queued when its row is made), and three sweeps that run every few seconds on
whichever worker claims the slot, each claiming its rows with ``FOR UPDATE SKIP LOCKED``:
buyer campaigns bid on new auctions; auctions about to end that nothing has touched yet get
their row, and so their close job (an auction without a bid closes at its end too); and
auctions whose time is up are closed (sold to their winners, or unsold) if their own job has
not done it (the safety net)."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from leadmarket.kit.jobs import JobContext, JobRegistry
from leadmarket.marketplace import service

if TYPE_CHECKING:
    from leadmarket.tasks import JobServices

CAMPAIGN_BIDS_JOB = "auctions.campaign_bids"
CLOSE_DUE_JOB = "auctions.close_due"
OPEN_ENDING_JOB = "auctions.open_ending"
# Bids after the end are refused as they come, so the outcome is fixed at the end; the close
# job makes it happen then, and the sweep at the latest this long after.
SWEEP_EVERY = dt.timedelta(seconds=10)
# How far ahead the closes of untouched auctions are queued: a few sweeps, so that a sweep
# that comes late still finds them (an auction lasts five minutes at least).
OPEN_AHEAD = 3 * SWEEP_EVERY

registry: JobRegistry[JobServices] = JobRegistry()


@registry.periodic(CAMPAIGN_BIDS_JOB, every=SWEEP_EVERY)
async def campaigns_bid_on_new_auctions(ctx: JobContext[JobServices]) -> None:
    await service.campaigns_bid_on_new_auctions(
        ctx.session, ctx.services.settings, ctx.services.broker
    )


@registry.periodic(OPEN_ENDING_JOB, every=SWEEP_EVERY)
async def open_ending_auctions(ctx: JobContext[JobServices]) -> None:
    await service.open_ending_auctions(ctx.session, horizon=OPEN_AHEAD)


@registry.periodic(CLOSE_DUE_JOB, every=SWEEP_EVERY)
async def close_due_auctions(ctx: JobContext[JobServices]) -> None:
    await service.close_due_auctions(ctx.session, ctx.services.settings, ctx.services.broker)


@registry.handler(service.CLOSE_JOB)
async def close_at_end(ctx: JobContext[JobServices]) -> None:
    await service.close_at_end(
        ctx.session, ctx.services.settings, ctx.services.broker, str(ctx.payload["lead_id"])
    )
