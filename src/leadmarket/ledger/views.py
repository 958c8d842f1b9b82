"""The buyer's wallet page (M5): balance and held funds per currency, a deposit form (through
the same :func:`service.deposit_once` as the API) and the ledger lines, newest first.

Thin like ``api.py`` and built like the account pages: :class:`PageRoute`, the member guard
(CSRF on the POST; a remembered session is asked for the password before a deposit, A2), errors
beside their field, 303 after a successful POST. The form carries a one-time key, used as the
deposit's Idempotency-Key, so sending the form twice (a double click, a reload) charges once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from leadmarket.accounts.auth import Principal
from leadmarket.accounts.policy import Action
from leadmarket.accounts.views import PageRoute, Viewer, member_page
from leadmarket.config import Settings, settings_of
from leadmarket.kit.crypto import random_token
from leadmarket.kit.errors import (
    DomainError,
    FieldError,
    Forbidden,
    ValidationFailed,
    validation_errors,
)
from leadmarket.kit.idempotency import IdempotencyKeyReused, check_key
from leadmarket.kit.money import CURRENCIES, DEFAULT_CURRENCY, format_money, parse_dollars
from leadmarket.kit.pagination import decode_cursor, encode_cursor
from leadmarket.kit.routing import get_session, guard
from leadmarket.kit.templating import templates_of
from leadmarket.ledger import service
from leadmarket.ledger.schemas import DepositIn
from leadmarket.models import Role
from leadmarket.payments.processor import SANDBOX_DECLINE

Session = Annotated[AsyncSession, Depends(get_session)]
WALLET = "/wallet"
ENTRIES_PER_PAGE = 25

router = APIRouter(route_class=PageRoute, include_in_schema=False)

FIELD_LABELS = {
    "amount": "Amount",
    "currency": "Currency",
    "payment_method": "Payment method",
}
# The API's field names, as the form calls them.
_FORM_FIELD = {"amount_cents": "amount", "currency": "currency", "payment_method": "payment_method"}
NOTICES = {"deposited": "Your deposit was received; the money is in your wallet."}
ACCOUNT_NAMES = {"buyer_wallet": "Wallet", "buyer_held": "Held", "seller_payable": "Earnings"}
KIND_NAMES = {
    "deposit": "Deposit",
    "hold": "Held for a sale",
    "release": "Hold released",
    "settle": "Sale paid to the seller",
    "refund": "Refund",
    "payout": "Paid out to you",
}


def buyer_page(action: Action, *, return_to: str | None = None) -> Callable[..., Awaitable[Any]]:
    """:func:`member_page`, for buyers only."""
    member = member_page(action, return_to=return_to)

    @guard
    async def dependency(principal: Principal = Depends(member)) -> Principal:
        if principal.user.role != Role.BUYER.value:
            raise Forbidden("Only buyers have a wallet.")
        return principal

    dependency.__name__ = f"buyer_page_{action.value}"
    return dependency


def _payment_methods(settings: Settings) -> list[tuple[str, str]]:
    if settings.payment_processor == "sandbox":
        return [
            ("", "Sandbox card (always accepted)"),
            (SANDBOX_DECLINE, "Sandbox card that is declined"),
        ]
    return [("", "Your saved payment method")]


async def _wallet_page(
    request: Request,
    session: AsyncSession,
    member_id: str,
    *,
    values: Mapping[str, str] | None = None,
    errors: Mapping[str, str] | None = None,
    status_code: int = 200,
    deposit_key: str | None = None,
) -> Response:
    settings = settings_of(request)
    cursor = request.query_params.get("before")
    before_id = decode_cursor(cursor) if cursor and len(cursor) <= 200 else None
    entries = await service.list_entries(
        session, member_id, limit=ENTRIES_PER_PAGE, before_id=before_id
    )
    more = len(entries) > ENTRIES_PER_PAGE
    entries = entries[:ENTRIES_PER_PAGE]
    viewer: Viewer | None = getattr(request.state, "viewer", None)
    context: dict[str, Any] = {
        "viewer": viewer,
        "csrf_token": viewer.csrf_token if viewer else "",
        "wallets": [await service.wallet_summary(session, member_id, c) for c in CURRENCIES],
        "entries": entries,
        "older": encode_cursor(entries[-1].id) if more and entries else None,
        "first_page": before_id is None,
        "values": {"currency": DEFAULT_CURRENCY, **(values or {})},
        "errors": dict(errors or {}),
        "labels": FIELD_LABELS,
        "currency_options": [(c, c) for c in CURRENCIES],
        "payment_methods": _payment_methods(settings),
        "deposit_key": deposit_key or random_token(18),
        "max_deposit": format_money(settings.deposit_max_cents, DEFAULT_CURRENCY),
        "fee_percent": settings.platform_fee_percent,
        "money": format_money,
        "account_names": ACCOUNT_NAMES,
        "kind_names": KIND_NAMES,
        "notice": None if errors else NOTICES.get(request.query_params.get("done", "")),
    }
    response = templates_of(request).TemplateResponse(
        request, "ledger/wallet.html", context, status_code=status_code
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get(WALLET)
async def wallet_page(
    request: Request,
    session: Session,
    principal: Principal = Depends(buyer_page(Action.VIEW_DASHBOARD)),
) -> Response:
    return await _wallet_page(request, session, principal.user.id)


def _form_errors(exc: DomainError) -> dict[str, str]:
    errors: dict[str, str] = {}
    for error in exc.errors:
        errors.setdefault(_FORM_FIELD.get(error.field, "form"), error.message)
    return errors or {"form": exc.detail}


def _deposit_body(fields: Mapping[str, str]) -> DepositIn:
    """The form as the API's body; ValidationFailed names the form's fields."""
    cents, message = parse_dollars(fields["amount"])
    if message is None and cents is None:
        message = "Enter the amount to deposit."
    elif message is None and cents == 0:
        message = "Deposit at least 0.01."
    if message is not None:
        raise ValidationFailed(message, errors=[FieldError("amount_cents", message)])
    try:
        return DepositIn.model_validate(
            {
                "amount_cents": cents,
                "currency": fields["currency"] or DEFAULT_CURRENCY,
                "payment_method": fields["payment_method"] or None,
            }
        )
    except ValidationError as exc:
        errors = validation_errors([dict(error) for error in exc.errors()])
        raise ValidationFailed("Check the form.", errors=errors) from None


@router.post(WALLET + "/deposits")
async def deposit(
    request: Request,
    session: Session,
    principal: Principal = Depends(buyer_page(Action.MOVE_MONEY, return_to=WALLET)),
) -> Response:
    member_id = principal.user.id  # read now: a rollback below expires the ORM objects
    form = await request.form()
    fields = {
        name: value.strip() if isinstance(value := form.get(name), str) else ""
        for name in ("amount", "currency", "payment_method", "deposit_key")
    }
    shown = {name: fields[name] for name in FIELD_LABELS}
    try:
        body = _deposit_body(fields)
        await service.deposit_once(
            session,
            settings_of(request),
            member_id=member_id,
            body=body,
            idempotency_key=check_key(fields["deposit_key"] or None),
        )
    except ValidationFailed as exc:
        await session.rollback()
        return await _wallet_page(
            request, session, member_id, values=shown, errors=_form_errors(exc), status_code=422
        )
    except service.PaymentDeclined as exc:
        await session.rollback()
        errors = {"payment_method": exc.detail}
        return await _wallet_page(
            request, session, member_id, values=shown, errors=errors, status_code=402
        )
    except service.PaymentProcessorFailed:
        await session.rollback()
        errors = {
            "form": "The payment processor did not answer, so whether your card was charged is "
            "not known yet; nothing was added to your wallet. Send the form again in a few "
            "seconds: the same deposit is charged at most once."
        }
        # The same key again, so that sending the form again cannot charge twice.
        return await _wallet_page(
            request,
            session,
            member_id,
            values=shown,
            errors=errors,
            status_code=502,
            deposit_key=fields["deposit_key"] or None,
        )
    except IdempotencyKeyReused:
        await session.rollback()
        errors = {
            "form": "This form was already sent with another amount. Check your wallet "
            "below, then send the new form if you still want to deposit."
        }
        return await _wallet_page(
            request, session, member_id, values=shown, errors=errors, status_code=409
        )
    return RedirectResponse(f"{WALLET}?done=deposited", status_code=303)
