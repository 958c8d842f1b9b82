"""``GET /api/v1/admin/retention``: the retention monitor (L4) as JSON, for admins and privacy
officers. Thin: :func:`leadmarket.privacy.retention.retention_monitor` builds it."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.accounts.auth import Principal, requires
from leadmarket.accounts.policy import Action
from leadmarket.config import settings_of
from leadmarket.kit.routing import TransactionalRoute, get_session
from leadmarket.models import Role
from leadmarket.privacy.retention import LATENESS_TARGET, RetentionMonitor, retention_monitor

router = APIRouter(prefix="/api/v1/admin", route_class=TransactionalRoute, tags=["admin"])
Session = Annotated[AsyncSession, Depends(get_session)]
MONITOR_ROLES = (Role.ADMIN, Role.PRIVACY_OFFICER)


class DeadlineOut(BaseModel):
    lead_id: str
    deadline: dt.datetime


class BucketOut(BaseModel):
    label: str
    count: int


class LatenessOut(BaseModel):
    window: str = Field(description="`24h` or `7d`: destructions logged in that window.")
    count: int
    p50_ms: int | None
    p90_ms: int | None
    p99_ms: int | None
    max_ms: int | None
    histogram: list[BucketOut]


class DueOut(BaseModel):
    count: int = Field(description="Leads whose deadline falls in the next 48 hours.")
    next: list[DeadlineOut]


class OverdueOut(BaseModel):
    count: int = Field(description="Deadline passed, personal data not destroyed yet.")
    late_count: int = Field(
        description="Of those, past their deadline by more than the 60-second target: should "
        "always be 0."
    )
    oldest: list[DeadlineOut]


class RetentionOut(BaseModel):
    now: dt.datetime
    retention_hours: int
    sweep_seconds: int
    lateness_target_ms: int
    due: DueOut
    overdue: OverdueOut
    lateness: list[LatenessOut]


def retention_out(monitor: RetentionMonitor) -> RetentionOut:
    return RetentionOut(
        now=monitor.now,
        retention_hours=monitor.retention_hours,
        sweep_seconds=monitor.sweep_seconds,
        lateness_target_ms=int(LATENESS_TARGET.total_seconds() * 1000),
        due=DueOut(
            count=monitor.due_count,
            next=[
                DeadlineOut(lead_id=d.lead_id, deadline=d.deadline) for d in monitor.next_deadlines
            ],
        ),
        overdue=OverdueOut(
            count=monitor.overdue_count,
            late_count=monitor.overdue_late_count,
            oldest=[DeadlineOut(lead_id=d.lead_id, deadline=d.deadline) for d in monitor.overdue],
        ),
        lateness=[
            LatenessOut(
                window=s.window,
                count=s.count,
                p50_ms=s.p50_ms,
                p90_ms=s.p90_ms,
                p99_ms=s.p99_ms,
                max_ms=s.max_ms,
                histogram=[BucketOut(label=b.label, count=b.count) for b in s.histogram],
            )
            for s in monitor.lateness
        ],
    )


@router.get(
    "/retention",
    summary="The retention monitor (L4): leads due, overdue, and the lateness of destructions",
)
async def get_retention(
    request: Request,
    session: Session,
    _: Principal = Depends(requires(Action.ADMINISTER, *MONITOR_ROLES)),
) -> RetentionOut:
    return retention_out(await retention_monitor(session, settings_of(request)))
