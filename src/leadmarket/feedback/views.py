"""Feedback pages (M3): an order's feedback page for its two parties (leave, change, reply),
the reply and report forms of the public profile, and the admins' report queue. Thin: the
rules are in :mod:`leadmarket.feedback.service`. Forms carry the session's CSRF token, checked
by the page guards."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Path, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import FormData
from starlette.responses import Response

from leadmarket.accounts.auth import Principal
from leadmarket.accounts.policy import Action
from leadmarket.accounts.views import (
    PageRoute,
    member_page,
    render_page,
    role_page,
    safe_local_path,
    see_other,
)
from leadmarket.config import Settings, settings_of
from leadmarket.feedback import service
from leadmarket.feedback.schemas import REASON_LABELS
from leadmarket.kit.db import utcnow
from leadmarket.kit.errors import DomainError, Forbidden
from leadmarket.kit.pagination import decode_cursor, encode_cursor
from leadmarket.kit.routing import get_session, guard
from leadmarket.models import FeedbackReportReason, FeedbackReportStatus, Order, Role, User

Session = Annotated[AsyncSession, Depends(get_session)]
Id = Annotated[str, Path(max_length=40)]
router = APIRouter(route_class=PageRoute, include_in_schema=False)

ADMIN_QUEUE = "/admin/feedback"
NOTICES = {
    "left": "Thank you: your feedback is published.",
    "changed": "Your feedback is changed.",
    "replied": "Your reply is published.",
    "reported": "Thank you: an admin will look at this feedback.",
    "hidden": "The feedback is hidden and the decision recorded.",
    "dismissed": "The report is dismissed; the feedback stays.",
}


def trader_page(
    action: Action, *, return_to: str | None = None
) -> Callable[..., Awaitable[Principal]]:
    """:func:`member_page`, for buyers and sellers (the parties of orders)."""
    member = member_page(action, return_to=return_to)

    @guard
    async def dependency(principal: Principal = Depends(member)) -> Principal:
        if principal.user.role not in (Role.BUYER.value, Role.SELLER.value):
            raise Forbidden("Feedback is between the buyer and the seller of an order.")
        return principal

    dependency.__name__ = f"trader_page_{action.value}"
    return dependency


def admin_page(*, return_to: str | None = None) -> Callable[..., Awaitable[Principal]]:
    return role_page(
        Action.ADMINISTER, Role.ADMIN, "Only admins moderate feedback.", return_to=return_to
    )


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def _rating(text: str) -> int | None:
    return int(text) if text in ("1", "2", "3", "4", "5") else None


def _back(form: FormData, fallback: str, done: str) -> Response:
    """Back to the page the form was on (a path on this site only), with a notice."""
    back = safe_local_path(_text(form, "back")) or fallback
    back = back.split("?", 1)[0]
    return see_other(f"{back}?done={done}")


def _error(exc: DomainError) -> dict[str, str]:
    if exc.errors:
        return {e.field.split(".")[-1]: e.message for e in exc.errors}
    return {"form": exc.detail}


async def panel_context(
    session: AsyncSession, settings: Settings, order_id: str, viewer: User
) -> dict[str, Any]:
    """What ``feedback/_order_panel.html`` needs (the order page includes it too)."""
    view = await service.order_feedback(session, settings, order_id, viewer)
    order = await session.get(Order, order_id)
    assert order is not None
    return {
        "feedback": view,
        "other_role": "seller" if viewer.id == order.buyer_id else "buyer",
        "now": utcnow(),
    }


async def _order_page(
    request: Request,
    session: AsyncSession,
    order_id: str,
    viewer: User,
    *,
    values: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    context = await panel_context(session, settings_of(request), order_id, viewer)
    return render_page(
        request,
        "feedback/order.html",
        {
            **context,
            "order_id": order_id,
            "values": values or {},
            "errors": errors or {},
            "notice": NOTICES.get(request.query_params.get("done", "")),
        },
        status_code=status_code,
    )


@router.get("/orders/{order_id}/feedback")
async def order_feedback_page(
    order_id: Id,
    request: Request,
    session: Session,
    principal: Principal = Depends(trader_page(Action.LEAVE_FEEDBACK)),
) -> Response:
    return await _order_page(request, session, order_id, principal.user)


@router.post("/orders/{order_id}/feedback")
async def leave_feedback(
    order_id: Id,
    request: Request,
    session: Session,
    principal: Principal = Depends(trader_page(Action.LEAVE_FEEDBACK)),
) -> Response:
    form = await request.form()
    values = {"rating": _text(form, "rating"), "comment": _text(form, "comment")}
    author_id = principal.user.id
    rating = _rating(values["rating"])
    if rating is None:
        return await _order_page(
            request,
            session,
            order_id,
            principal.user,
            values=values,
            errors={"rating": "Choose 1 to 5 stars."},
            status_code=422,
        )
    try:
        await service.leave_feedback(
            session,
            settings_of(request),
            order_id=order_id,
            author=principal.user,
            rating=rating,
            comment=values["comment"],
        )
    except DomainError as exc:
        if exc.status == 404:
            raise
        await session.rollback()
        author = await session.get(User, author_id)
        assert author is not None
        return await _order_page(
            request,
            session,
            order_id,
            author,
            values=values,
            errors=_error(exc),
            status_code=exc.status,
        )
    return _back(form, f"/orders/{order_id}/feedback", "left")


@router.post("/feedback/{feedback_id}/edit")
async def edit_feedback(
    feedback_id: Id,
    request: Request,
    session: Session,
    principal: Principal = Depends(trader_page(Action.LEAVE_FEEDBACK)),
) -> Response:
    form = await request.form()
    rating = _rating(_text(form, "rating"))
    feedback = await service.edit_feedback(
        session,
        feedback_id=feedback_id,
        author=principal.user,
        rating=rating,
        comment=_text(form, "comment"),
        change_comment=True,
    )
    return _back(form, f"/orders/{feedback.order_id}/feedback", "changed")


@router.post("/feedback/{feedback_id}/reply")
async def reply(
    feedback_id: Id,
    request: Request,
    session: Session,
    principal: Principal = Depends(trader_page(Action.LEAVE_FEEDBACK)),
) -> Response:
    form = await request.form()
    await service.reply_to_feedback(
        session, feedback_id=feedback_id, member=principal.user, reply=_text(form, "reply")
    )
    profile = f"/members/{quote(principal.user.username)}"
    return _back(form, profile, "replied")


@router.post("/feedback/{feedback_id}/report")
async def report(
    feedback_id: Id,
    request: Request,
    session: Session,
    principal: Principal = Depends(trader_page(Action.AFTER_SALE)),
) -> Response:
    form = await request.form()
    reason = _text(form, "reason")
    if reason not in REASON_LABELS:
        reason = FeedbackReportReason.OTHER.value
    await service.file_feedback_report(
        session,
        settings_of(request),
        feedback_id=feedback_id,
        reporter=principal.user,
        reason=FeedbackReportReason(reason),
        note=_text(form, "note")[:1000] or None,
    )
    return _back(form, "/", "reported")


# The admins' queue ------------------------------------------------------------------------


@router.get(ADMIN_QUEUE)
async def queue(
    request: Request,
    session: Session,
    _: Principal = Depends(admin_page()),
    status: Annotated[str | None, Query(max_length=20)] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    chosen = status if status in {s.value for s in FeedbackReportStatus} else None
    if status is None:
        chosen = FeedbackReportStatus.OPEN.value
    rows = await service.reports_queue(
        session, status=chosen, limit=50, before_id=decode_cursor(cursor)
    )
    more = len(rows) > 50
    rows = rows[:50]
    return render_page(
        request,
        "feedback/admin_queue.html",
        {
            "reports": rows,
            "status": chosen or "all",
            "statuses": [s.value for s in FeedbackReportStatus],
            "reasons": REASON_LABELS,
            "next_cursor": encode_cursor(rows[-1].id) if more and rows else None,
            "notice": NOTICES.get(request.query_params.get("done", "")),
        },
    )


@router.post(ADMIN_QUEUE + "/{feedback_id}/hide")
async def hide(
    feedback_id: Id,
    request: Request,
    session: Session,
    principal: Principal = Depends(admin_page(return_to=ADMIN_QUEUE)),
) -> Response:
    form = await request.form()
    await service.hide_feedback(
        session, feedback_id=feedback_id, admin=principal.user, reason=_text(form, "reason")
    )
    return see_other(f"{ADMIN_QUEUE}?done=hidden")


@router.post(ADMIN_QUEUE + "/reports/{report_id}/dismiss")
async def dismiss(
    report_id: Id,
    request: Request,
    session: Session,
    principal: Principal = Depends(admin_page(return_to=ADMIN_QUEUE)),
) -> Response:
    form = await request.form()
    await service.dismiss_report(
        session, report_id=report_id, admin=principal.user, note=_text(form, "note")
    )
    return see_other(f"{ADMIN_QUEUE}?done=dismissed")
