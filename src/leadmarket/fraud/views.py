"""The admin's fraud review pages (M6): the queue of cases, one per member, and each case with
its signals, its history and the action form. Thin like ``api.py``: the same service acts."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from leadmarket.accounts.auth import Principal
from leadmarket.accounts.policy import Action
from leadmarket.accounts.views import PageRoute, render_page, role_page, see_other
from leadmarket.config import settings_of
from leadmarket.fraud import service
from leadmarket.fraud.service import CaseAction
from leadmarket.kit.errors import DomainError, FieldError, ValidationFailed
from leadmarket.kit.pagination import decode_cursor, encode_cursor
from leadmarket.kit.routing import get_session
from leadmarket.models import Role, User

QUEUE = "/admin/fraud"
PER_PAGE = 50
REFUSAL = "Only admins work the fraud review."
Session = Annotated[AsyncSession, Depends(get_session)]
CaseId = Annotated[str, Path(max_length=40)]
router = APIRouter(route_class=PageRoute, include_in_schema=False)

ACTION_LABELS = {
    CaseAction.DISMISS: "Dismiss: nothing wrong",
    CaseAction.WARN: "Warn the member (email)",
    CaseAction.SUSPEND: "Suspend the account",
    CaseAction.BAN: "Ban: close the account",
    CaseAction.WITHDRAW_LEADS: "Withdraw the seller's open leads",
    CaseAction.CONFIRM_LEAD_FRAUD: "Confirm the lead fraudulent (alerts its buyers)",
    CaseAction.REINSTATE: "Reinstate a suspended member",
}
NOTICES = {action.value: f"Done: {label}." for action, label in ACTION_LABELS.items()}


def admin_page(*, return_to: str | None = None) -> Any:
    return role_page(Action.ADMINISTER, Role.ADMIN, REFUSAL, return_to=return_to)


@router.get(QUEUE)
async def queue(
    request: Request,
    session: Session,
    _: Principal = Depends(admin_page()),
    status: Annotated[str, Query(max_length=10)] = "open",
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    status = status if status in ("open", "closed", "all") else "open"
    rows = await service.list_cases(
        session,
        status=None if status == "all" else status,
        limit=PER_PAGE,
        before_id=decode_cursor(cursor),
    )
    more = len(rows) > PER_PAGE
    rows = rows[:PER_PAGE]
    return render_page(
        request,
        "fraud/queue.html",
        {
            "rows": rows,
            "status": status,
            "next_cursor": encode_cursor(rows[-1].case.id) if more and rows else None,
        },
    )


async def _case_page(
    request: Request,
    session: AsyncSession,
    admin: User,
    case_id: str,
    *,
    errors: dict[str, str] | None = None,
    values: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    detail = await service.case_detail(session, case_id, admin)
    return render_page(
        request,
        "fraud/case.html",
        {
            "detail": detail,
            "actions": list(ACTION_LABELS.items()),
            "errors": errors or {},
            "values": values or {},
            "notice": NOTICES.get(request.query_params.get("done", "")),
        },
        status_code=status_code,
    )


@router.get(QUEUE + "/{case_id}")
async def case_page(
    case_id: CaseId,
    request: Request,
    session: Session,
    principal: Principal = Depends(admin_page()),
) -> Response:
    return await _case_page(request, session, principal.user, case_id)


@router.post(QUEUE + "/{case_id}/actions")
async def act(
    case_id: CaseId,
    request: Request,
    session: Session,
    principal: Principal = Depends(admin_page(return_to=QUEUE)),
) -> Response:
    admin_id = principal.user.id
    form = await request.form()
    values = {k: v for k, v in form.items() if isinstance(v, str) and k != "csrf_token"}
    try:
        try:
            action = CaseAction(values.get("action", ""))
        except ValueError:
            raise ValidationFailed(
                "Choose an action.", errors=[FieldError("action", "Choose an action.")]
            ) from None
        await service.act_on_case(
            session,
            settings_of(request),
            request.app.state.broker,
            case_id=case_id,
            admin=principal.user,
            action=action,
            note=values.get("note", ""),
            lead_id=values.get("lead_id", "").strip() or None,
        )
    except DomainError as exc:
        if exc.status == 404:
            raise
        await session.rollback()
        admin = await session.get(User, admin_id)
        assert admin is not None
        errors = {e.field: e.message for e in exc.errors} or {"form": exc.detail}
        return await _case_page(
            request, session, admin, case_id, errors=errors, values=values, status_code=exc.status
        )
    return see_other(f"{QUEUE}/{case_id}?done={action.value}")
