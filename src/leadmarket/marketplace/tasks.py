"""Background sweeps of the auctions: buyer campaigns bid on new auctions, and auctions whose
time is up are closed (sold to their winners, or unsold). Both run every few seconds on
whichever worker claims the slot; each claims its rows with ``FOR UPDATE SKIP LOCKED``."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from leadmarket.kit.jobs import JobContext, JobRegistry
from leadmarket.marketplace import service

if TYPE_CHECKING:
    from leadmarket.tasks import JobServices

CAMPAIGN_BIDS_JOB = "auctions.campaign_bids"
CLOSE_DUE_JOB = "auctions.close_due"
# Bids after the end are refused as they come, so the outcome is fixed at the end; the sweep
# only makes it happen (orders, holds released) within this long.
SWEEP_EVERY = dt.timedelta(seconds=10)

registry: JobRegistry[JobServices] = JobRegistry()


@registry.periodic(CAMPAIGN_BIDS_JOB, every=SWEEP_EVERY)
async def campaigns_bid_on_new_auctions(ctx: JobContext[JobServices]) -> None:
    await service.campaigns_bid_on_new_auctions(
        ctx.session, ctx.services.settings, ctx.services.broker
    )


@registry.periodic(CLOSE_DUE_JOB, every=SWEEP_EVERY)
async def close_due_auctions(ctx: JobContext[JobServices]) -> None:
    await service.close_due_auctions(ctx.session, ctx.services.settings, ctx.services.broker)
