"""The after-sale API (M2): cancel, return, decide, dispute, claims, and the admin's decisions.

Who may do what (A4): an order's buyer cancels, returns and disputes; its seller decides the
return; either party files claims and adds evidence; admins decide reviews, disputes and claims
(final, recorded in the audit log) and trust buyers. Anyone else is told the order or return
does not exist (404). Each money-moving POST takes an ``Idempotency-Key``: the same key and body
give the first answer again, another body 409 (``kit.idempotency``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Header, Path, Query, Request, UploadFile, status
from fastapi.responses import JSONResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.accounts.auth import Principal, requires
from leadmarket.accounts.policy import Action
from leadmarket.config import settings_of
from leadmarket.kit.errors import NotFound
from leadmarket.kit.idempotency import check_key, run_once
from leadmarket.kit.pagination import Cursor, Limit, Page, decode_cursor, encode_cursor
from leadmarket.kit.routing import TransactionalRoute, get_session
from leadmarket.models import (
    ClaimCategory,
    ClaimStatus,
    DisputeOutcome,
    DisputeStatus,
    ReturnEvidence,
    ReturnReason,
    ReturnStatus,
    Role,
    User,
)
from leadmarket.returns import service
from leadmarket.returns.schemas import (
    AfterSaleOut,
    CancelOut,
    ClaimDecisionIn,
    ClaimIn,
    ClaimOut,
    DecisionIn,
    DisputeDecisionIn,
    DisputeIn,
    DisputeOut,
    EvidenceOut,
    ReasonOut,
    ReturnIn,
    ReturnOut,
    ReviewDecisionIn,
)

router = APIRouter(prefix="/api/v1", route_class=TransactionalRoute, tags=["returns"])
admin = APIRouter(prefix="/api/v1/admin", route_class=TransactionalRoute, tags=["admin"])
Session = Annotated[AsyncSession, Depends(get_session)]
Id = Annotated[str, Path(max_length=40)]
IdempotencyKey = Annotated[str | None, Header(max_length=200)]
PARTIES = (Role.BUYER, Role.SELLER, Role.ADMIN)
BAD_STATE: dict[int | str, dict[str, Any]] = {
    409: {"description": "Not possible in the current state; `type` says why"}
}


async def _once(
    session: AsyncSession,
    member: User,
    idempotency_key: str | None,
    request: dict[str, Any],
    run: Callable[[], Awaitable[tuple[int, dict[str, Any]]]],
) -> JSONResponse:
    """``run`` once per the member's ``Idempotency-Key`` (:func:`kit.idempotency.run_once`),
    its answer (or the first one, replayed) as JSON."""
    code, answer = await run_once(session, member.id, check_key(idempotency_key), request, run)
    return JSONResponse(answer, status_code=code)


@router.get("/returns/reasons", summary="The reason codes a return may give")
async def reasons(
    _: Principal = Depends(requires(Action.VIEW_ORDERS)),
) -> list[ReasonOut]:
    return [ReasonOut(code=code, label=label) for code, label in service.REASON_LABELS.items()]


@router.get(
    "/orders/{order_id}/after-sale",
    summary="An order's after-sale state: may it be cancelled or returned, its return, dispute, "
    "claims and history",
)
async def after_sale(
    order_id: Id,
    session: Session,
    principal: Principal = Depends(requires(Action.VIEW_ORDERS, *PARTIES)),
) -> AfterSaleOut:
    order = await service.order_for(session, order_id, principal.user)
    return await service.after_sale_out(session, order, principal.user)


@router.post(
    "/orders/{order_id}/cancel",
    summary="Cancel an order before its lead is delivered; the price goes back to the wallet",
    responses={409: {"description": "Delivered already (…/order-not-cancellable, `why`)"}},
)
async def cancel(
    order_id: Id,
    request: Request,
    session: Session,
    principal: Principal = Depends(requires(Action.AFTER_SALE, Role.BUYER)),
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    buyer = principal.user

    async def run() -> tuple[int, dict[str, object]]:
        order = await service.cancel_order(session, settings_of(request), order_id, buyer)
        hold = await service.hold_amount(session, order)
        return 200, CancelOut(
            order_id=order.id, status=order.status, released_cents=hold, currency=order.currency
        ).model_dump(mode="json")

    return await _once(session, buyer, idempotency_key, {"orders.cancel": order_id}, run)


@router.post(
    "/orders/{order_id}/returns",
    status_code=status.HTTP_201_CREATED,
    summary="Ask to return a lead within the return window",
    responses={
        404: {"description": "Not your order"},
        409: {
            "description": "Returned already (…/return-exists), window closed "
            "(…/return-window-closed), cancelled or refunded (…/order-not-returnable)"
        },
    },
)
async def request_return(
    order_id: Id,
    body: ReturnIn,
    request: Request,
    session: Session,
    principal: Principal = Depends(requires(Action.AFTER_SALE, Role.BUYER)),
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    buyer = principal.user

    async def run() -> tuple[int, dict[str, object]]:
        ret = await service.request_return(
            session,
            settings_of(request),
            order_id,
            buyer,
            reason=ReturnReason(body.reason),
            note=body.note,
            evidence_text=body.evidence_text,
        )
        return 201, (await service.return_out(session, ret)).model_dump(mode="json")

    fingerprint = {"orders.return": [order_id, body.model_dump(mode="json")]}
    return await _once(session, buyer, idempotency_key, fingerprint, run)


@router.post(
    "/orders/{order_id}/claims",
    status_code=status.HTTP_201_CREATED,
    summary="File a claim about another problem with an order (either party); an admin handles it",
    responses={409: {"description": "An open claim of yours exists (…/claim-exists)"}},
)
async def file_claim(
    order_id: Id,
    body: ClaimIn,
    session: Session,
    principal: Principal = Depends(requires(Action.AFTER_SALE, Role.BUYER, Role.SELLER)),
) -> ClaimOut:
    claim = await service.file_claim(
        session, order_id, principal.user, category=ClaimCategory(body.category), text=body.text
    )
    return service.claim_out(claim)


@router.get("/returns", summary="Your returns (buyers, sellers); every return (admins)")
async def list_returns(
    session: Session,
    principal: Principal = Depends(requires(Action.VIEW_ORDERS, *PARTIES)),
    status_: Annotated[ReturnStatus | None, Query(alias="status")] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[ReturnOut]:
    rows = await service.list_returns(
        session,
        principal.user,
        status=status_.value if status_ else None,
        limit=limit,
        before_id=decode_cursor(cursor),
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(
        items=[await service.return_out(session, r) for r in rows],
        next_cursor=encode_cursor(rows[-1].id) if more and rows else None,
    )


@router.get("/returns/{return_id}", summary="One return, with its evidence and dispute")
async def get_return(
    return_id: Id,
    session: Session,
    principal: Principal = Depends(requires(Action.VIEW_ORDERS, *PARTIES)),
) -> ReturnOut:
    return await service.return_out(
        session, await service.return_for(session, return_id, principal.user)
    )


@router.post(
    "/returns/{return_id}/decision",
    summary="The seller approves (refund) or denies (with a note) a return, before decide_by",
    responses=BAD_STATE,
)
async def decide(
    return_id: Id,
    body: DecisionIn,
    request: Request,
    session: Session,
    principal: Principal = Depends(requires(Action.AFTER_SALE, Role.SELLER)),
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    seller = principal.user

    async def run() -> tuple[int, dict[str, object]]:
        ret = await service.seller_decides(
            session, settings_of(request), return_id, seller, approve=body.approve, note=body.note
        )
        return 200, (await service.return_out(session, ret)).model_dump(mode="json")

    fingerprint = {"returns.decision": [return_id, body.model_dump(mode="json")]}
    return await _once(session, seller, idempotency_key, fingerprint, run)


@router.post(
    "/returns/{return_id}/dispute",
    status_code=status.HTTP_201_CREATED,
    summary="The buyer disputes a seller's denial to an admin (once, before dispute_by)",
    responses=BAD_STATE,
)
async def dispute(
    return_id: Id,
    body: DisputeIn,
    request: Request,
    session: Session,
    principal: Principal = Depends(requires(Action.AFTER_SALE, Role.BUYER)),
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    buyer = principal.user

    async def run() -> tuple[int, dict[str, object]]:
        opened = await service.dispute_return(
            session, settings_of(request), return_id, buyer, note=body.note
        )
        return 201, service.dispute_out(opened).model_dump(mode="json")

    fingerprint = {"returns.dispute": [return_id, body.model_dump(mode="json")]}
    return await _once(session, buyer, idempotency_key, fingerprint, run)


@router.post(
    "/returns/{return_id}/evidence",
    status_code=status.HTTP_201_CREATED,
    summary="Attach a file to a return (either party, while it is open or disputable); stored "
    "sealed",
    responses={**BAD_STATE, 422: {"description": "Empty or too large (`evidence`)"}},
)
async def add_evidence(
    return_id: Id,
    request: Request,
    session: Session,
    evidence: Annotated[UploadFile, File(description="The file")],
    principal: Principal = Depends(requires(Action.AFTER_SALE, Role.BUYER, Role.SELLER)),
) -> EvidenceOut:
    settings = settings_of(request)
    content = await evidence.read(settings.return_evidence_max_bytes + 1)
    stored = await service.upload_evidence(
        session,
        settings,
        return_id,
        principal.user,
        service.EvidenceFile(
            filename=evidence.filename or "evidence",
            media_type=evidence.content_type or "application/octet-stream",
            content=content,
        ),
    )
    ret = await service.return_for(session, return_id, principal.user)
    return service.evidence_out(stored, ret)


@router.get(
    "/returns/{return_id}/evidence/{evidence_id}",
    summary="Download an evidence file (the parties and admins), always as an attachment",
    response_class=Response,
)
async def download_evidence(
    return_id: Id,
    evidence_id: Id,
    request: Request,
    session: Session,
    principal: Principal = Depends(requires(Action.VIEW_ORDERS, *PARTIES)),
) -> Response:
    await service.return_for(session, return_id, principal.user)
    evidence = await session.get(ReturnEvidence, evidence_id)
    if evidence is None or evidence.return_id != return_id:
        raise NotFound("No such evidence.")
    content = service.open_evidence(settings_of(request), evidence)
    # Served back as an opaque download whatever its declared type: a member's upload must never
    # run as a page of this site.
    ascii_name = "".join(ch for ch in evidence.filename if ch.isascii() and ch.isprintable())
    return Response(
        content,
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": f'attachment; filename="{ascii_name or "evidence"}"',
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        },
    )


@router.get("/claims", summary="Claims about your orders (buyers, sellers); all (admins)")
async def list_claims(
    session: Session,
    principal: Principal = Depends(requires(Action.VIEW_ORDERS, *PARTIES)),
    status_: Annotated[ClaimStatus | None, Query(alias="status")] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[ClaimOut]:
    rows = await service.list_claims(
        session,
        principal.user,
        status=status_.value if status_ else None,
        limit=limit,
        before_id=decode_cursor(cursor),
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(
        items=[service.claim_out(c) for c in rows],
        next_cursor=encode_cursor(rows[-1].id) if more and rows else None,
    )


# Admins -------------------------------------------------------------------------------------


@admin.post(
    "/returns/{return_id}/decision",
    summary=(
        "An admin decides a return held for review (over the buyer's return-rate cap), or one "
        "waiting for a seller whose account the fraud review suspended or closed"
    ),
    responses=BAD_STATE,
)
async def review(
    return_id: Id,
    body: ReviewDecisionIn,
    request: Request,
    session: Session,
    principal: Principal = Depends(requires(Action.ADMINISTER, Role.ADMIN)),
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    who = principal.user

    async def run() -> tuple[int, dict[str, object]]:
        ret = await service.admin_reviews(
            session, settings_of(request), return_id, who, approve=body.approve, note=body.note
        )
        return 200, (await service.return_out(session, ret)).model_dump(mode="json")

    fingerprint = {"admin.return_review": [return_id, body.model_dump(mode="json")]}
    return await _once(session, who, idempotency_key, fingerprint, run)


@admin.get("/disputes", summary="Disputes of denied returns, newest first")
async def list_disputes(
    session: Session,
    _: Principal = Depends(requires(Action.ADMINISTER, Role.ADMIN)),
    status_: Annotated[DisputeStatus | None, Query(alias="status")] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[DisputeOut]:
    rows = await service.list_disputes(
        session,
        status=status_.value if status_ else None,
        limit=limit,
        before_id=decode_cursor(cursor),
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(
        items=[service.dispute_out(d) for d in rows],
        next_cursor=encode_cursor(rows[-1].id) if more and rows else None,
    )


@admin.post(
    "/disputes/{dispute_id}/decision",
    summary="An admin decides a dispute, finally: for the buyer (refund) or the seller",
    responses={409: {"description": "Decided already (…/dispute-decided)"}},
)
async def decide_dispute(
    dispute_id: Id,
    body: DisputeDecisionIn,
    request: Request,
    session: Session,
    principal: Principal = Depends(requires(Action.ADMINISTER, Role.ADMIN)),
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    who = principal.user

    async def run() -> tuple[int, dict[str, object]]:
        decided = await service.decide_dispute(
            session,
            settings_of(request),
            dispute_id,
            who,
            outcome=DisputeOutcome(body.outcome),
            note=body.note,
        )
        return 200, service.dispute_out(decided).model_dump(mode="json")

    fingerprint = {"admin.dispute": [dispute_id, body.model_dump(mode="json")]}
    return await _once(session, who, idempotency_key, fingerprint, run)


@admin.post(
    "/claims/{claim_id}/decision",
    summary="An admin resolves or rejects a claim, with an answer both parties see",
    responses={409: {"description": "Closed already (…/claim-closed)"}},
)
async def decide_claim(
    claim_id: Id,
    body: ClaimDecisionIn,
    session: Session,
    principal: Principal = Depends(requires(Action.ADMINISTER, Role.ADMIN)),
) -> ClaimOut:
    claim = await service.decide_claim(
        session, claim_id, principal.user, resolved=body.outcome == "resolved", note=body.note
    )
    return service.claim_out(claim)


@admin.put(
    "/trusted-buyers/{username}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Trust a buyer: their returns are approved at once",
)
async def trust_buyer(
    username: Annotated[str, Path(max_length=64)],
    session: Session,
    principal: Principal = Depends(requires(Action.ADMINISTER, Role.ADMIN)),
) -> Response:
    await service.set_trusted(session, principal.user, username, trusted=True)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@admin.delete(
    "/trusted-buyers/{username}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Stop trusting a buyer",
)
async def distrust_buyer(
    username: Annotated[str, Path(max_length=64)],
    session: Session,
    principal: Principal = Depends(requires(Action.ADMINISTER, Role.ADMIN)),
) -> Response:
    await service.set_trusted(session, principal.user, username, trusted=False)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
