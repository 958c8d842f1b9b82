"""The fraud API (M6): members file reports (``POST /api/v1/reports``, docs/api.md); admins
work the review queue. Rules live in :mod:`leadmarket.fraud.reports` and
:mod:`leadmarket.fraud.service`."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, status
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.accounts.auth import Principal, requires
from leadmarket.accounts.policy import Action
from leadmarket.config import settings_of
from leadmarket.fraud import reports, service
from leadmarket.fraud.schemas import (
    ActionIn,
    ActionOut,
    CaseOut,
    CaseSummaryOut,
    MemberOut,
    ReportIn,
    SignalOut,
)
from leadmarket.kit.pagination import Cursor, Limit, Page, decode_cursor, encode_cursor
from leadmarket.kit.routing import TransactionalRoute, get_session
from leadmarket.messages.schemas import ReportOut
from leadmarket.models import FraudCase, Role, User

router = APIRouter(prefix="/api/v1", route_class=TransactionalRoute, tags=["fraud"])
Session = Annotated[AsyncSession, Depends(get_session)]
CaseId = Annotated[str, Path(max_length=40)]
# The fraud queue is for admins: it shows who reported whom and what members wrote.
REVIEWERS = (Role.ADMIN,)


@router.post(
    "/reports",
    status_code=status.HTTP_201_CREATED,
    summary="Report a lead, a member or a message as fraud or abuse (M6)",
    responses={
        404: {"description": "No such subject that you may see"},
        409: {"description": "You reported it already (…/already-reported)"},
        422: {"description": "Your own lead, yourself, or an unknown reason"},
        429: {"description": "Daily report cap reached"},
    },
)
async def file_report(
    body: ReportIn,
    request: Request,
    session: Session,
    principal: Principal = Depends(requires(Action.AFTER_SALE, Role.BUYER, Role.SELLER)),
) -> ReportOut:
    recorded = await reports.file_report(
        session,
        settings_of(request),
        reporter=principal.user,
        subject_type=body.subject_type,
        subject_id=body.subject_id,
        reason=body.reason,
        details=body.details,
    )
    return ReportOut(
        id=recorded.signal.id,
        subject_type=body.subject_type.value,
        subject_id=body.subject_id,
        reason=body.reason.value,
        created_at=recorded.signal.created_at,
    )


def member_out(user: User) -> MemberOut:
    return MemberOut(id=user.id, username=user.username, role=user.role, status=user.status)


def summary_out(
    case: FraudCase, member: User, kinds: dict[str, int], last_signal_at: dt.datetime | None
) -> CaseSummaryOut:
    return CaseSummaryOut(
        id=case.id,
        member=member_out(member),
        status=case.status,
        resolution=case.resolution,
        signal_count=sum(kinds.values()),
        kinds=kinds,
        opened_at=case.opened_at,
        last_signal_at=last_signal_at,
        closed_at=case.closed_at,
    )


def case_out(detail: service.CaseDetail) -> CaseOut:
    summary = summary_out(detail.case, detail.member, detail.kinds, detail.last_signal_at)
    return CaseOut(
        **summary.model_dump(),
        open_leads=detail.open_leads,
        signals=[
            SignalOut(
                id=v.signal.id,
                kind=v.signal.kind,
                source=v.signal.source,
                reason=v.signal.reason,
                lead_id=v.signal.lead_id,
                message_id=v.signal.message_id,
                message_body=v.message_body,
                reporter=v.reporter,
                details=v.signal.details or {},
                occurrences=v.signal.occurrences,
                created_at=v.signal.created_at,
                last_seen_at=v.signal.last_seen_at,
            )
            for v in detail.signals
        ],
        actions=[
            ActionOut(
                id=a.action.id,
                action=a.action.action,
                admin=a.admin,
                lead_id=a.action.lead_id,
                note=a.action.note,
                effects=a.action.effects or {},
                at=a.action.at,
            )
            for a in detail.actions
        ],
        earlier_cases=[c.id for c in detail.earlier_cases],
    )


@router.get("/admin/fraud/cases", summary="The fraud review queue: one case per member")
async def list_cases(
    session: Session,
    _: Principal = Depends(requires(Action.ADMINISTER, *REVIEWERS)),
    status_: Annotated[Literal["open", "closed", "all"], Query(alias="status")] = "open",
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[CaseSummaryOut]:
    rows = await service.list_cases(
        session,
        status=None if status_ == "all" else status_,
        limit=limit,
        before_id=decode_cursor(cursor),
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(
        items=[summary_out(r.case, r.member, r.kinds, r.last_signal_at) for r in rows],
        next_cursor=encode_cursor(rows[-1].case.id) if more and rows else None,
    )


@router.get("/admin/fraud/cases/{case_id}", summary="One case with its signals and actions")
async def get_case(
    case_id: CaseId,
    session: Session,
    principal: Principal = Depends(requires(Action.ADMINISTER, *REVIEWERS)),
) -> CaseOut:
    return case_out(await service.case_detail(session, case_id, principal.user))


@router.post(
    "/admin/fraud/cases/{case_id}/actions",
    summary="Dismiss, warn, suspend, ban, reinstate, withdraw the seller's open leads, or "
    "confirm a lead fraudulent",
    responses={
        404: {"description": "No such case"},
        409: {"description": "Case closed, or the action does not apply to this member"},
        422: {"description": "No note, or a lead that is not the member's"},
    },
)
async def act_on_case(
    case_id: CaseId,
    body: ActionIn,
    request: Request,
    session: Session,
    principal: Principal = Depends(requires(Action.ADMINISTER, *REVIEWERS)),
) -> CaseOut:
    await service.act_on_case(
        session,
        settings_of(request),
        request.app.state.broker,
        case_id=case_id,
        admin=principal.user,
        action=body.action,
        note=body.note,
        lead_id=body.lead_id,
    )
    return case_out(await service.case_detail(session, case_id, principal.user))
