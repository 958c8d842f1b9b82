"""The feedback API (M3, docs/api.md "Buying"): leave, change and answer feedback on an order,
report abusive feedback, read a member's public feedback, and the admins' report queue. Thin:
the rules are in :mod:`leadmarket.feedback.service`.

Who may call what: the two parties of an order leave feedback on it (anyone else gets 404);
only the author changes it, only its subject replies (403); buyers and sellers report feedback
(here or through ``POST /api/v1/reports``, the same function); admins hide it or dismiss
reports; anyone reads a member's public feedback."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, status
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.accounts import service as accounts
from leadmarket.accounts.auth import Principal, optional_principal, requires
from leadmarket.accounts.policy import Action
from leadmarket.config import settings_of
from leadmarket.feedback import service
from leadmarket.feedback.schemas import (
    AdminReportOut,
    DismissIn,
    FeedbackIn,
    FeedbackOut,
    FeedbackPatch,
    HideIn,
    OrderFeedbackOut,
    PublicFeedback,
    ReplyIn,
    ReportIn,
    ReportOut,
)
from leadmarket.kit.pagination import Cursor, Limit, Page, decode_cursor, encode_cursor
from leadmarket.kit.routing import TransactionalRoute, get_session
from leadmarket.models import FeedbackReport, FeedbackReportStatus, Role

router = APIRouter(prefix="/api/v1", route_class=TransactionalRoute, tags=["feedback"])
Session = Annotated[AsyncSession, Depends(get_session)]
Id = Annotated[str, Path(max_length=40)]
Traders = Depends(requires(Action.LEAVE_FEEDBACK, Role.BUYER, Role.SELLER))
Admins = Depends(requires(Action.ADMINISTER, Role.ADMIN))


def _report_out(report: FeedbackReport) -> ReportOut:
    return ReportOut(
        id=report.id,
        feedback_id=report.feedback_id,
        reason=report.reason,
        status=report.status,
        created_at=report.created_at,
    )


@router.post(
    "/orders/{order_id}/feedback",
    status_code=status.HTTP_201_CREATED,
    summary="Rate the other party of your order, once (M3)",
    responses={
        404: {"description": "No such order, or not yours"},
        409: {"description": "Left already (…/feedback-already-left) or too late"},
        422: {"description": "Rating not 1-5, or contact data in the comment"},
    },
)
async def leave_feedback(
    order_id: Id,
    body: FeedbackIn,
    request: Request,
    session: Session,
    principal: Principal = Traders,
) -> FeedbackOut:
    feedback = await service.leave_feedback(
        session,
        settings_of(request),
        order_id=order_id,
        author=principal.user,
        rating=body.rating,
        comment=body.comment,
    )
    return await service.feedback_out(session, feedback)


@router.get("/orders/{order_id}/feedback", summary="An order's feedback, both ways (its parties)")
async def order_feedback(
    order_id: Id, request: Request, session: Session, principal: Principal = Traders
) -> OrderFeedbackOut:
    return await service.order_feedback(session, settings_of(request), order_id, principal.user)


@router.patch(
    "/feedback/{feedback_id}",
    summary="Change your rating or comment, within feedback_edit_hours",
    responses={403: {"description": "Not yours"}, 409: {"description": "Final now"}},
)
async def edit_feedback(
    feedback_id: Id, body: FeedbackPatch, session: Session, principal: Principal = Traders
) -> FeedbackOut:
    feedback = await service.edit_feedback(
        session,
        feedback_id=feedback_id,
        author=principal.user,
        rating=body.rating,
        comment=body.comment,
        change_comment="comment" in body.model_fields_set,
    )
    return await service.feedback_out(session, feedback)


@router.post(
    "/feedback/{feedback_id}/reply",
    status_code=status.HTTP_201_CREATED,
    summary="Reply once, in public, to feedback about you",
    responses={403: {"description": "Not about you"}, 409: {"description": "Replied already"}},
)
async def reply(
    feedback_id: Id, body: ReplyIn, session: Session, principal: Principal = Traders
) -> FeedbackOut:
    feedback = await service.reply_to_feedback(
        session, feedback_id=feedback_id, member=principal.user, reply=body.reply
    )
    return await service.feedback_out(session, feedback)


@router.post(
    "/feedback/{feedback_id}/reports",
    status_code=status.HTTP_201_CREATED,
    summary="Report abusive feedback to the admins (once per member)",
    description=(
        'The same as `POST /api/v1/reports` with `subject_type: "feedback"` (one function '
        "behind both): the admins' feedback queue gets it, and the author's fraud case a "
        "complaint. Counts toward the daily report cap."
    ),
    responses={
        404: {"description": "No such feedback shown"},
        409: {"description": "Reported already"},
        422: {"description": "Your own feedback, or an unknown reason"},
        429: {"description": "Daily report cap reached"},
    },
)
async def report(
    feedback_id: Id,
    body: ReportIn,
    request: Request,
    session: Session,
    principal: Principal = Depends(requires(Action.AFTER_SALE, Role.BUYER, Role.SELLER)),
) -> ReportOut:
    created = await service.file_feedback_report(
        session,
        settings_of(request),
        feedback_id=feedback_id,
        reporter=principal.user,
        reason=body.reason,
        note=body.note,
    )
    return _report_out(created)


@router.get(
    "/members/{username}/feedback",
    dependencies=[Depends(optional_principal)],
    summary="A member's public feedback, newest first (usernames only)",
)
async def member_feedback(
    username: Annotated[str, Path(max_length=64)],
    session: Session,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[PublicFeedback]:
    member = await accounts.public_member(session, username)
    rows = await service.public_feedback(
        session, member.id, limit=limit, before_id=decode_cursor(cursor)
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(items=rows, next_cursor=encode_cursor(rows[-1].id) if more and rows else None)


# Admins -----------------------------------------------------------------------------------


@router.get("/admin/feedback/reports", summary="Feedback reports, newest first (admins)")
async def reports_queue(
    session: Session,
    _: Principal = Admins,
    status_: Annotated[
        FeedbackReportStatus | None, Query(alias="status", description="open by default")
    ] = FeedbackReportStatus.OPEN,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[AdminReportOut]:
    rows = await service.reports_queue(
        session,
        status=status_.value if status_ is not None else None,
        limit=limit,
        before_id=decode_cursor(cursor),
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(items=rows, next_cursor=encode_cursor(rows[-1].id) if more and rows else None)


@router.post(
    "/admin/feedback/{feedback_id}/hide",
    summary="Hide feedback everywhere; the reason goes to the audit log (admins)",
)
async def hide(
    feedback_id: Id, body: HideIn, session: Session, principal: Principal = Admins
) -> FeedbackOut:
    feedback = await service.hide_feedback(
        session, feedback_id=feedback_id, admin=principal.user, reason=body.reason
    )
    return await service.feedback_out(session, feedback)


@router.post(
    "/admin/feedback/reports/{report_id}/dismiss",
    summary="Keep the feedback and close the report (admins)",
)
async def dismiss(
    report_id: Id, body: DismissIn, session: Session, principal: Principal = Admins
) -> ReportOut:
    dismissed = await service.dismiss_report(
        session, report_id=report_id, admin=principal.user, note=body.note
    )
    return _report_out(dismissed)
