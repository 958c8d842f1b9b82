"""After-sale pages (M2, M5): the buyer's actions on their order page (cancel, return with
evidence, dispute, claim), the seller's order page (the return with its evidence, approve or
deny, claims, history), the seller's payouts, and the admins' queue of reviews, disputes and
claims. Thin: every rule lives in :mod:`leadmarket.returns.service` and
:mod:`leadmarket.payouts.service`.

Forms carry the session's CSRF token (checked by the page guards); money-moving forms also
carry a one-time key used as the Idempotency-Key, so a double click acts once. A refusal comes
back on the same page with its reason and the problem's status code."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import FormData, UploadFile
from starlette.responses import Response

from leadmarket.accounts.auth import Principal
from leadmarket.accounts.policy import Action
from leadmarket.accounts.views import PageRoute, render_page, role_page, see_other
from leadmarket.config import Settings, settings_of
from leadmarket.kit.crypto import random_token
from leadmarket.kit.errors import DomainError, FieldError, NotFound, ValidationFailed
from leadmarket.kit.idempotency import check_key, run_once
from leadmarket.kit.money import format_money
from leadmarket.kit.pagination import decode_cursor, encode_cursor
from leadmarket.kit.routing import get_session
from leadmarket.leads.views import seller_page
from leadmarket.ledger.views import buyer_page
from leadmarket.models import (
    ClaimCategory,
    ClaimStatus,
    DisputeOutcome,
    DisputeStatus,
    Order,
    OrderReturn,
    ReturnReason,
    Role,
    User,
)
from leadmarket.orders import service as orders_service
from leadmarket.orders.views import render_buyer_order
from leadmarket.payouts import service as payouts
from leadmarket.returns import service
from leadmarket.returns.notices import PAGE_NOTICES

Session = Annotated[AsyncSession, Depends(get_session)]
Id = Annotated[str, Path(max_length=40)]
router = APIRouter(route_class=PageRoute, include_in_schema=False)

ORDERS = "/orders"
SALES = "/seller/sales"
PAYOUTS = "/seller/payouts"
QUEUE = "/admin/after-sale"
PER_PAGE = 25


def admin_page(action: Action, *, return_to: str | None = None) -> Callable[..., Awaitable[Any]]:
    """Guard of the admins' after-sale pages."""
    return role_page(action, Role.ADMIN, "These pages are for admins.", return_to=return_to)


def _render(
    request: Request, template: str, context: dict[str, Any], *, status_code: int = 200
) -> Response:
    return render_page(
        request, template, {"money": format_money, **context}, status_code=status_code
    )


def _text(form: FormData, name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


def _form_key(form: FormData) -> str | None:
    return check_key(_text(form, "form_key") or None)


def _choice(enum: Any, value: str | None, field: str) -> Any:
    try:
        return enum(value or "")
    except ValueError:
        raise ValidationFailed(
            f"Choose a {field}.", errors=[FieldError(field, "Choose one of the list.")]
        ) from None


def _message(exc: DomainError) -> str:
    """The refusal as the page shows it: what is wrong, and each field's own message."""
    if not exc.errors:
        return exc.detail
    return f"{exc.detail} " + "; ".join(f"{e.field}: {e.message}" for e in exc.errors)


async def _fresh_user(session: AsyncSession, user_id: str) -> User:
    await session.rollback()
    user = await session.get(User, user_id)
    assert user is not None
    return user


# The buyer ----------------------------------------------------------------------------------


# The return form's fields as the order page labels them.
RETURN_FIELD_LABELS = {
    "reason": "Why return it",
    "note": "Note",
    "evidence_text": "Evidence",
    "evidence": "A file",
}


async def _buyer_action(
    request: Request,
    session: AsyncSession,
    order_id: str,
    buyer_id: str,
    action: Callable[[], Awaitable[None]],
    done: str,
    *,
    return_form: Mapping[str, str] | None = None,
) -> Response:
    """Run a buyer's after-sale action; a refusal shows the order page again with the reason.
    For the return form (``return_form``: what was typed) each field's message goes beside
    its field and the summary names the field by its label."""
    try:
        await action()
    except NotFound:
        raise
    except DomainError as exc:
        buyer = await _fresh_user(session, buyer_id)
        placed = {
            e.field: e.message
            for e in exc.errors
            if return_form is not None and e.field in RETURN_FIELD_LABELS
        }
        message = (
            f"{exc.detail} "
            + "; ".join(f"{RETURN_FIELD_LABELS[f]}: {m}" for f, m in placed.items())
            if placed
            else _message(exc)
        )
        return await render_buyer_order(
            request,
            session,
            order_id,
            buyer,
            error=message,
            return_form=return_form,
            return_errors=placed,
            status_code=exc.status,
        )
    return see_other(f"{ORDERS}/{order_id}?done={done}")


@router.post(ORDERS + "/{order_id}/cancel")
async def cancel(
    order_id: Id,
    request: Request,
    session: Session,
    principal: Principal = Depends(buyer_page(Action.AFTER_SALE, return_to=ORDERS)),
) -> Response:
    buyer = principal.user
    form = await request.form()

    async def act() -> None:
        async def run() -> tuple[int, dict[str, Any]]:
            await service.cancel_order(session, settings_of(request), order_id, buyer)
            return 200, {"order_id": order_id}

        await run_once(session, buyer.id, _form_key(form), {"orders.cancel": order_id}, run)

    return await _buyer_action(request, session, order_id, buyer.id, act, "cancelled")


async def _evidence_file(form: FormData, settings: Settings) -> service.EvidenceFile | None:
    upload = form.get("evidence")
    if not isinstance(upload, UploadFile) or not upload.filename:
        return None
    content = await upload.read(settings.return_evidence_max_bytes + 1)
    return service.EvidenceFile(
        filename=upload.filename,
        media_type=upload.content_type or "application/octet-stream",
        content=content,
    )


@router.post(ORDERS + "/{order_id}/returns")
async def request_return(
    order_id: Id,
    request: Request,
    session: Session,
    principal: Principal = Depends(buyer_page(Action.AFTER_SALE, return_to=ORDERS)),
) -> Response:
    buyer = principal.user
    settings = settings_of(request)
    form = await request.form()

    async def act() -> None:
        reason = _choice(ReturnReason, _text(form, "reason"), "reason")
        evidence = await _evidence_file(form, settings)

        async def run() -> tuple[int, dict[str, Any]]:
            ret = await service.request_return(
                session,
                settings,
                order_id,
                buyer,
                reason=reason,
                note=_text(form, "note"),
                evidence_text=_text(form, "evidence_text"),
                evidence=evidence,
            )
            return 201, {"id": ret.id}

        await run_once(session, buyer.id, _form_key(form), {"orders.return_page": order_id}, run)

    typed = {name: _text(form, name) or "" for name in ("reason", "note", "evidence_text")}
    return await _buyer_action(
        request, session, order_id, buyer.id, act, "return_requested", return_form=typed
    )


@router.post(ORDERS + "/{order_id}/dispute")
async def dispute(
    order_id: Id,
    request: Request,
    session: Session,
    principal: Principal = Depends(buyer_page(Action.AFTER_SALE, return_to=ORDERS)),
) -> Response:
    buyer = principal.user
    form = await request.form()

    async def act() -> None:
        await service.buyers_order(session, order_id, buyer)
        ret = await service.return_of_order(session, order_id)
        if ret is None:
            raise NotFound("This order has no return.")
        await service.dispute_return(
            session, settings_of(request), ret.id, buyer, note=_text(form, "note")
        )

    return await _buyer_action(request, session, order_id, buyer.id, act, "disputed")


@router.post(ORDERS + "/{order_id}/claims")
async def buyer_claim(
    order_id: Id,
    request: Request,
    session: Session,
    principal: Principal = Depends(buyer_page(Action.AFTER_SALE, return_to=ORDERS)),
) -> Response:
    buyer = principal.user
    form = await request.form()

    async def act() -> None:
        await service.file_claim(
            session,
            order_id,
            buyer,
            category=_choice(ClaimCategory, _text(form, "category"), "category"),
            text=_text(form, "text"),
        )

    return await _buyer_action(request, session, order_id, buyer.id, act, "claim_filed")


# The seller ---------------------------------------------------------------------------------


async def _sale_page(
    request: Request,
    session: AsyncSession,
    order_id: str,
    seller: User,
    *,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    order = await session.get(Order, order_id)
    if order is None or order.seller_id != seller.id:
        raise NotFound("No such sale.")
    out = await orders_service.order_out(session, settings_of(request), order, seller)
    return _render(
        request,
        "orders/sale.html",
        {
            "order": out,
            "after": await service.after_sale_out(session, order, seller),
            "reasons": service.REASON_LABELS,
            "claim_categories": service.CLAIM_LABELS,
            "form_key": random_token(18),
            "notice": PAGE_NOTICES.get(request.query_params.get("done", "")),
            "error": error,
        },
        status_code=status_code,
    )


@router.get(SALES + "/{order_id}")
async def sale_page(
    order_id: Id,
    request: Request,
    session: Session,
    principal: Principal = Depends(seller_page(Action.VIEW_DASHBOARD)),
) -> Response:
    return await _sale_page(request, session, order_id, principal.user)


async def _seller_action(
    request: Request,
    session: AsyncSession,
    order_id: str,
    seller_id: str,
    action: Callable[[], Awaitable[str]],
) -> Response:
    try:
        done = await action()
    except NotFound:
        raise
    except DomainError as exc:
        seller = await _fresh_user(session, seller_id)
        return await _sale_page(
            request, session, order_id, seller, error=_message(exc), status_code=exc.status
        )
    return see_other(f"{SALES}/{order_id}?done={done}")


@router.post(SALES + "/{order_id}/decision")
async def seller_decision(
    order_id: Id,
    request: Request,
    session: Session,
    principal: Principal = Depends(seller_page(Action.AFTER_SALE, return_to=SALES)),
) -> Response:
    seller = principal.user
    form = await request.form()
    approve = _text(form, "decision") == "approve"

    async def act() -> str:
        order = await session.get(Order, order_id)
        if order is None or order.seller_id != seller.id:
            raise NotFound("No such sale.")
        ret = await service.return_of_order(session, order_id)
        if ret is None:
            raise NotFound("This sale has no return.")
        return_id = ret.id

        async def run() -> tuple[int, dict[str, Any]]:
            await service.seller_decides(
                session,
                settings_of(request),
                return_id,
                seller,
                approve=approve,
                note=_text(form, "note"),
            )
            return 200, {"id": return_id}

        await run_once(
            session,
            seller.id,
            _form_key(form),
            {"returns.decision_page": [return_id, approve, _text(form, "note")]},
            run,
        )
        return "approved" if approve else "denied"

    return await _seller_action(request, session, order_id, seller.id, act)


@router.post(SALES + "/{order_id}/claims")
async def seller_claim(
    order_id: Id,
    request: Request,
    session: Session,
    principal: Principal = Depends(seller_page(Action.AFTER_SALE, return_to=SALES)),
) -> Response:
    seller = principal.user
    form = await request.form()

    async def act() -> str:
        order = await session.get(Order, order_id)
        if order is None or order.seller_id != seller.id:
            raise NotFound("No such sale.")
        await service.file_claim(
            session,
            order_id,
            seller,
            category=_choice(ClaimCategory, _text(form, "category"), "category"),
            text=_text(form, "text"),
        )
        return "claim_filed"

    return await _seller_action(request, session, order_id, seller.id, act)


# Payouts ------------------------------------------------------------------------------------


async def _payouts_page(
    request: Request,
    session: AsyncSession,
    seller: User,
    *,
    cursor: str | None = None,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    rows = await payouts.list_payouts(
        session, seller.id, limit=PER_PAGE, before_id=decode_cursor(cursor)
    )
    more = len(rows) > PER_PAGE
    rows = rows[:PER_PAGE]
    return _render(
        request,
        "orders/payouts.html",
        {
            "payouts": rows,
            "balance": await payouts.payable_balance(session, seller.id, "USD"),
            "currency": "USD",
            "summary": await orders_service.sales_summary(session, seller.id),
            "form_key": random_token(18),
            "next_cursor": encode_cursor(rows[-1].id) if more and rows else None,
            "notice": PAGE_NOTICES.get(request.query_params.get("done", "")),
            "error": error,
        },
        status_code=status_code,
    )


@router.get(PAYOUTS)
async def payouts_page(
    request: Request,
    session: Session,
    principal: Principal = Depends(seller_page(Action.VIEW_DASHBOARD)),
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    return await _payouts_page(request, session, principal.user, cursor=cursor)


@router.post(PAYOUTS)
async def request_payout(
    request: Request,
    session: Session,
    principal: Principal = Depends(seller_page(Action.MOVE_MONEY, return_to=PAYOUTS)),
) -> Response:
    seller = principal.user
    seller_id = seller.id
    form = await request.form()

    async def run() -> tuple[int, dict[str, Any]]:
        result = await payouts.request_payout(session, settings_of(request), seller, currency="USD")
        return 201, {"id": result.payout.id}

    try:
        await run_once(session, seller_id, _form_key(form), {"payouts.request_page": "USD"}, run)
    except DomainError as exc:
        fresh = await _fresh_user(session, seller_id)
        return await _payouts_page(
            request, session, fresh, error=_message(exc), status_code=exc.status
        )
    return see_other(f"{PAYOUTS}?done=paid_out")


# Admins -------------------------------------------------------------------------------------


async def _queue_page(
    request: Request,
    session: AsyncSession,
    admin: User,
    *,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    reviews = await service.admin_queue_returns(session, limit=100)
    disputes = await service.list_disputes(session, status=DisputeStatus.OPEN.value, limit=100)
    claims = await service.list_claims(session, admin, status=ClaimStatus.OPEN.value, limit=100)
    disputed = {}
    for d in disputes:
        ret = await session.get(OrderReturn, d.return_id)
        assert ret is not None
        disputed[d.id] = await service.return_out(session, ret)
    return _render(
        request,
        "orders/after_sale_queue.html",
        {
            "reviews": [await service.return_out(session, r) for r in reviews],
            "disputes": [(service.dispute_out(d), disputed[d.id]) for d in disputes],
            "claims": [service.claim_out(c) for c in claims],
            "reasons": service.REASON_LABELS,
            "claim_categories": service.CLAIM_LABELS,
            "form_key": random_token(18),
            "notice": PAGE_NOTICES.get(request.query_params.get("done", "")),
            "error": error,
        },
        status_code=status_code,
    )


@router.get(QUEUE)
async def queue(
    request: Request,
    session: Session,
    principal: Principal = Depends(admin_page(Action.ADMINISTER)),
) -> Response:
    return await _queue_page(request, session, principal.user)


async def _admin_action(
    request: Request,
    session: AsyncSession,
    admin_id: str,
    action: Callable[[], Awaitable[None]],
) -> Response:
    try:
        await action()
    except NotFound:
        raise
    except DomainError as exc:
        admin = await _fresh_user(session, admin_id)
        return await _queue_page(
            request, session, admin, error=_message(exc), status_code=exc.status
        )
    return see_other(f"{QUEUE}?done=decided")


@router.post(QUEUE + "/returns/{return_id}")
async def review_return(
    return_id: Id,
    request: Request,
    session: Session,
    principal: Principal = Depends(admin_page(Action.ADMINISTER, return_to=QUEUE)),
) -> Response:
    admin = principal.user
    form = await request.form()
    approve = _text(form, "decision") == "approve"

    async def act() -> None:
        async def run() -> tuple[int, dict[str, Any]]:
            await service.admin_reviews(
                session,
                settings_of(request),
                return_id,
                admin,
                approve=approve,
                note=_text(form, "note"),
            )
            return 200, {"id": return_id}

        await run_once(
            session,
            admin.id,
            _form_key(form),
            {"admin.review_page": [return_id, approve, _text(form, "note")]},
            run,
        )

    return await _admin_action(request, session, admin.id, act)


@router.post(QUEUE + "/disputes/{dispute_id}")
async def decide_dispute(
    dispute_id: Id,
    request: Request,
    session: Session,
    principal: Principal = Depends(admin_page(Action.ADMINISTER, return_to=QUEUE)),
) -> Response:
    admin = principal.user
    form = await request.form()

    async def act() -> None:
        outcome = _choice(DisputeOutcome, _text(form, "outcome"), "outcome")

        async def run() -> tuple[int, dict[str, Any]]:
            await service.decide_dispute(
                session,
                settings_of(request),
                dispute_id,
                admin,
                outcome=outcome,
                note=_text(form, "note"),
            )
            return 200, {"id": dispute_id}

        await run_once(
            session,
            admin.id,
            _form_key(form),
            {"admin.dispute_page": [dispute_id, outcome.value, _text(form, "note")]},
            run,
        )

    return await _admin_action(request, session, admin.id, act)


@router.post(QUEUE + "/claims/{claim_id}")
async def decide_claim(
    claim_id: Id,
    request: Request,
    session: Session,
    principal: Principal = Depends(admin_page(Action.ADMINISTER, return_to=QUEUE)),
) -> Response:
    admin = principal.user
    form = await request.form()

    async def act() -> None:
        outcome = _text(form, "outcome")
        if outcome not in ("resolved", "rejected"):
            raise ValidationFailed(
                "Resolve or reject the claim.",
                errors=[FieldError("outcome", "Choose resolved or rejected.")],
            )
        await service.decide_claim(
            session, claim_id, admin, resolved=outcome == "resolved", note=_text(form, "note")
        )

    return await _admin_action(request, session, admin.id, act)
