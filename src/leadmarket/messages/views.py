"""The message thread page of an order, for its buyer and its seller (M4), linked from the
buyer's order page and the seller's sales: the messages, a form to write to the other party,
"report as spam" on each message received, and a form to report the lead or the other member
to the fraud review (M6). Thin like ``api.py``: the rules are in the services.

A refused message (empty, too long, over a cap) is shown again in the form with the reason,
nothing stored."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from leadmarket.accounts.auth import Principal
from leadmarket.accounts.policy import Action
from leadmarket.accounts.views import PageRoute, member_page, render_page, see_other
from leadmarket.config import settings_of
from leadmarket.fraud import reports
from leadmarket.fraud.reports import REASON_LABELS, REASONS_FOR, ReportReason, SubjectType
from leadmarket.kit.errors import DomainError, FieldError, Forbidden, NotFound, ValidationFailed
from leadmarket.kit.routing import get_session, guard
from leadmarket.kit.templating import form_text
from leadmarket.messages import service
from leadmarket.models import Role, User
from leadmarket.orders.service import get_order

Session = Annotated[AsyncSession, Depends(get_session)]
Id = Annotated[str, Path(max_length=40)]
router = APIRouter(route_class=PageRoute, include_in_schema=False)

THREAD = "/orders/{order_id}/messages"
PAGE_MESSAGES = 500  # the newest; the API pages through all of them
NOTICES = {
    "sent": "Your message was sent.",
    "reported": "Thank you: the message was reported as spam and goes to our fraud review.",
    "complained": "Thank you: your report goes to our fraud review.",
}


def party_page(action: Action) -> Callable[..., Awaitable[Principal]]:
    """:func:`member_page` for the two sides of a trade; staff have no threads."""
    member = member_page(action)

    @guard
    async def dependency(principal: Principal = Depends(member)) -> Principal:
        if principal.user.role not in (Role.BUYER.value, Role.SELLER.value):
            raise Forbidden("Messages are between the buyer and the seller of an order.")
        return principal

    dependency.__name__ = f"party_page_{action.value}"
    return dependency


async def _thread_page(
    request: Request,
    session: AsyncSession,
    viewer: User,
    order_id: str,
    *,
    typed: str = "",
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    order, views = await service.thread(session, viewer, order_id, limit=PAGE_MESSAGES, latest=True)
    is_buyer = viewer.id == order.buyer_id
    counterpart = await session.get(User, service.counterpart_id(order, viewer))
    return render_page(
        request,
        "messages/thread.html",
        {
            "order": order,
            "messages": views,
            "is_buyer": is_buyer,
            "counterpart": counterpart.username if counterpart else "",
            "counterpart_role": "seller" if is_buyer else "buyer",
            "typed": typed,
            "errors": errors or {},
            "max_chars": settings_of(request).message_max_chars,
            "reasons": [(r.value, REASON_LABELS[r]) for r in REASONS_FOR[SubjectType.MEMBER]],
            "notice": NOTICES.get(request.query_params.get("done", "")),
        },
        status_code=status_code,
    )


@router.get(THREAD)
async def thread_page(
    order_id: Id,
    request: Request,
    session: Session,
    principal: Principal = Depends(party_page(Action.VIEW_ORDERS)),
) -> Response:
    return await _thread_page(request, session, principal.user, order_id)


async def _refused(
    request: Request,
    session: AsyncSession,
    viewer_id: str,
    order_id: str,
    exc: DomainError,
    *,
    typed: str = "",
    field: str = "body",
    keep_writes: bool = False,
) -> Response:
    """The thread again with the refusal beside its form; what the request wrote is rolled
    back (unless ``keep_writes``: a bulk-messaging refusal keeps its fraud signal)."""
    if keep_writes:
        await session.commit()
    else:
        await session.rollback()
    viewer = await session.get(User, viewer_id)
    assert viewer is not None
    message = exc.errors[0].message if exc.errors else exc.detail
    return await _thread_page(
        request,
        session,
        viewer,
        order_id,
        typed=typed,
        errors={field: message},
        status_code=exc.status,
    )


@router.post(THREAD)
async def send(
    order_id: Id,
    request: Request,
    session: Session,
    principal: Principal = Depends(party_page(Action.SEND_MESSAGE)),
) -> Response:
    viewer_id = principal.user.id  # read now: a rollback expires the ORM objects
    form = await request.form()
    body = form_text(form, "body")
    try:
        await service.send_message(
            session, settings_of(request), order_id=order_id, sender=principal.user, body=body
        )
    except NotFound:
        raise
    except DomainError as exc:
        bulk = isinstance(exc, service.BulkMessagingRefused)
        return await _refused(
            request, session, viewer_id, order_id, exc, typed=body, keep_writes=bulk
        )
    return see_other(THREAD.format(order_id=order_id) + "?done=sent#latest")


@router.post(THREAD + "/{message_id}/spam-report")
async def report_spam(
    order_id: Id,
    message_id: Id,
    request: Request,
    session: Session,
    principal: Principal = Depends(party_page(Action.SEND_MESSAGE)),
) -> Response:
    viewer_id = principal.user.id
    try:
        await service.report_spam(
            session, settings_of(request), message_id=message_id, reporter=principal.user
        )
    except NotFound:
        raise
    except DomainError as exc:
        return await _refused(request, session, viewer_id, order_id, exc, field="report")
    return see_other(THREAD.format(order_id=order_id) + "?done=reported")


@router.post(THREAD.replace("/messages", "/report"))
async def report_problem(
    order_id: Id,
    request: Request,
    session: Session,
    principal: Principal = Depends(party_page(Action.AFTER_SALE)),
) -> Response:
    """Report this order's lead or the other party, from the thread page."""
    viewer_id = principal.user.id
    order = await get_order(session, order_id, principal.user)
    form = await request.form()
    about = form_text(form, "about")
    try:
        reason = ReportReason(form_text(form, "reason"))
    except ValueError:
        reason = None
    try:
        if about == "lead":
            subject_type, subject_id = SubjectType.LEAD, order.lead_id
        elif about == "member":
            counterpart = await session.get(User, service.counterpart_id(order, principal.user))
            assert counterpart is not None
            subject_type, subject_id = SubjectType.MEMBER, counterpart.username
        else:
            raise ValidationFailed(
                "Choose what you report.",
                errors=[FieldError("about", "Choose the lead or the member.")],
            )
        if reason is None:
            raise ValidationFailed(
                "Choose a reason.", errors=[FieldError("reason", "Choose a reason.")]
            )
        await reports.file_report(
            session,
            settings_of(request),
            reporter=principal.user,
            subject_type=subject_type,
            subject_id=subject_id,
            reason=reason,
            details=form_text(form, "details"),
        )
    except DomainError as exc:
        return await _refused(request, session, viewer_id, order_id, exc, field="report")
    return see_other(THREAD.format(order_id=order_id) + "?done=complained")
