"""The lead API: posting (sellers), browsing previews (buyers), consent certificates."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, status
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.accounts.auth import (
    Principal,
    optional_principal,
    rechecked_principal,
    requires,
    requires_rechecked,
)
from leadmarket.accounts.policy import Action
from leadmarket.feedback import service as feedback
from leadmarket.kit.errors import FieldError, ValidationFailed
from leadmarket.kit.fastlane import BodyInvalid, LaneRequest, LaneResponse
from leadmarket.kit.idempotency import (
    check_key,
    request_fingerprint,
)
from leadmarket.kit.pagination import Cursor, Limit, Page, decode_cursor, encode_cursor
from leadmarket.kit.routing import TransactionalRoute, get_session
from leadmarket.leads import intake, previews, service
from leadmarket.leads.intake import IntakeBatcher, LeadsKit
from leadmarket.leads.reference import CA_PROVINCES, US_STATES
from leadmarket.leads.schemas import (
    ConsentCertificateOut,
    ConsentWithdrawalIn,
    LeadCreatedOut,
    LeadIn,
    LeadOut,
    SellerOut,
)
from leadmarket.models import Lead, LeadStatus, Role, User
from leadmarket.verticals.registry import get_vertical

router = APIRouter(prefix="/api/v1", route_class=TransactionalRoute, tags=["leads"])
Session = Annotated[AsyncSession, Depends(get_session)]
LeadId = Annotated[str, Path(max_length=40)]


async def get_leads_kit(request: Request) -> LeadsKit:
    # async: a plain def dependency would be run in the thread pool, for nothing.
    kit: LeadsKit = request.app.state.leads_kit
    return kit


Kit = Annotated[LeadsKit, Depends(get_leads_kit)]
# The longest Idempotency-Key taken, by the route's header declaration and by the fast lane.
IDEMPOTENCY_KEY_MAX = 200


async def lead_out(session: AsyncSession, lead: Lead, viewer: User) -> LeadOut:
    seller = await session.get(User, lead.seller_id)
    return LeadOut(
        id=lead.id,
        vertical=lead.vertical,
        status=lead.status,
        preview=previews.preview_of(lead),
        sale=previews.sale_of(lead, show_reserve=viewer.id == lead.seller_id),
        seller=SellerOut(
            username=seller.username if seller else "",
            rating=(await feedback.ratings_of(session, seller.id)).average if seller else None,
        ),
        pii_expires_at=lead.pii_expires_at,
        pii_destroyed_at=lead.pii_destroyed_at,
    )


async def get_intake(request: Request) -> IntakeBatcher:
    batcher: IntakeBatcher = request.app.state.intake
    return batcher


@router.post(
    "/leads",
    status_code=status.HTTP_201_CREATED,
    response_model=LeadCreatedOut,
    summary="Post a lead (sellers): validated, consent recorded, personal data sealed",
    responses={
        409: {"description": "Duplicate lead, or Idempotency-Key reused with another body"},
        422: {"description": "Invalid field, or a consumer under 14 (type …/minor)"},
    },
)
async def post_lead(
    body: LeadIn,
    kit: Kit,
    batcher: Annotated[IntakeBatcher, Depends(get_intake)],
    principal: Principal = Depends(requires_rechecked(Action.SELL_LEADS, Role.SELLER)),
    idempotency_key: Annotated[str | None, Header(max_length=IDEMPOTENCY_KEY_MAX)] = None,
) -> JSONResponse:
    """Written together with the other leads arriving at the same moment (one transaction per
    batch, see :class:`IntakeBatcher`); answered once that transaction has committed."""
    status_code, answer = await accept_lead(kit, batcher, principal, body, idempotency_key)
    return JSONResponse(answer, status_code=status_code)


async def accept_lead(
    kit: LeadsKit,
    batcher: IntakeBatcher,
    principal: Principal,
    body: LeadIn,
    idempotency_key: str | None,
) -> tuple[int, dict[str, Any]]:
    """``POST /api/v1/leads`` below HTTP (L1, L2, L3, S1): the seller's checked principal, the
    parsed body and the ``Idempotency-Key`` header in; the status and JSON answer out (201 and
    the new lead, or the first answer replayed). Refusals are raised as the
    :class:`~leadmarket.kit.errors.DomainError` that names them. Any front end (the FastAPI
    route above, a raw ASGI handler) answers the same by calling this."""
    key = check_key(idempotency_key)
    prepared = intake.prepare_lead(
        kit,
        seller_id=principal.user.id,
        seller_username=principal.user.username,
        data=body,
        source="api",
    )
    written = await batcher.submit(
        intake.Submission(
            prepared,
            api_key_id=principal.api_key.id if principal.api_key is not None else None,
            idempotency=(
                intake.IdempotencyClaim(
                    principal.user.id, key, request_fingerprint(body.model_dump(mode="json"))
                )
                if key is not None
                else None
            ),
        )
    )
    return written.status_code, written.body


async def post_lead_in_fast_lane(request: LaneRequest) -> LaneResponse:
    """``POST /api/v1/leads`` in the fast lane (``kit.fastlane``): :func:`post_lead` without
    FastAPI's routing and dependency solving, in the order FastAPI applies it (malformed JSON,
    then the guard, then the header and the body together, so an under-14 consumer is still
    refused as ``…/minor`` before anything runs). The FastAPI route above stays declared for
    OpenAPI and the access matrix; both call :func:`accept_lead`."""
    payload = request.json_payload()
    principal = await rechecked_principal(request, Action.SELL_LEADS, (Role.SELLER,))
    key = request.headers.get("idempotency-key")
    header_errors = request.header_errors("idempotency-key", key, max_length=IDEMPOTENCY_KEY_MAX)
    try:
        body = request.validate(LeadIn, payload)
    except BodyInvalid as invalid:
        raise BodyInvalid([*header_errors, *invalid.errors]) from invalid
    if header_errors:
        raise BodyInvalid(header_errors)
    status_code, answer = await accept_lead(
        request.app.state.leads_kit, request.app.state.intake, principal, body, key
    )
    return LaneResponse.of_json(answer, status_code)


# What the application's fast lane answers itself (see app.create_app).
FAST_LANE = {("POST", "/api/v1/leads"): post_lead_in_fast_lane}


@router.get(
    "/leads",
    summary="Leads: buyers browse open leads (previews only); sellers see their own",
)
async def list_leads(
    session: Session,
    principal: Principal = Depends(requires(Action.BUY_LEAD)),
    vertical: Annotated[str | None, Query(max_length=40)] = None,
    region: Annotated[str | None, Query(max_length=8)] = None,
    status_filter: Annotated[
        LeadStatus | None, Query(alias="status", description="open, sold, unsold, withdrawn")
    ] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[LeadOut]:
    # A filter that can match nothing by construction is a mistake of the caller's, said as
    # such: an empty page would read as "no leads today".
    wrong: list[FieldError] = []
    vertical = vertical or None
    if vertical is not None and get_vertical(vertical) is None:
        wrong.append(FieldError("vertical", "No such vertical; GET /api/v1/verticals lists them."))
    code = region.strip().upper() if region and region.strip() else None
    if code is not None and code not in US_STATES and code not in CA_PROVINCES:
        wrong.append(
            FieldError("region", "Not the two-letter code of a US state or Canadian province.")
        )
    if wrong:
        raise ValidationFailed("; ".join(f"{e.field}: {e.message}" for e in wrong), errors=wrong)
    rows = await service.list_visible_leads(
        session,
        principal.user,
        vertical=vertical,
        region=code,
        status=status_filter.value if status_filter else None,
        limit=limit,
        before_id=decode_cursor(cursor),
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(
        items=[await lead_out(session, lead, principal.user) for lead in rows],
        next_cursor=encode_cursor(rows[-1].id) if more and rows else None,
    )


@router.get("/leads/{lead_id}", summary="One lead: preview and sale terms, never contact data")
async def get_lead(
    lead_id: LeadId,
    session: Session,
    principal: Principal = Depends(requires(Action.BUY_LEAD)),
) -> LeadOut:
    lead = await service.get_visible_lead(session, lead_id, principal.user)
    return await lead_out(session, lead, principal.user)


@router.patch(
    "/leads/{lead_id}",
    summary="Always refused: a posted lead cannot be changed by its seller (L5)",
    responses={409: {"description": "Leads are immutable"}},
)
async def patch_lead(
    lead_id: LeadId,
    session: Session,
    principal: Principal = Depends(requires(Action.SELL_LEADS)),
) -> None:
    await service.refuse_change(session, lead_id, principal.user)


@router.delete(
    "/leads/{lead_id}",
    summary="Always refused: a posted lead cannot be removed by its seller (L5)",
    responses={409: {"description": "Leads are immutable"}},
)
async def delete_lead(
    lead_id: LeadId,
    session: Session,
    principal: Principal = Depends(requires(Action.SELL_LEADS)),
) -> None:
    await service.refuse_change(session, lead_id, principal.user)


@router.get("/me/lead-quality", summary="A seller's quality figures over their own leads")
async def my_lead_quality(
    session: Session,
    principal: Principal = Depends(requires(Action.VIEW_DASHBOARD, Role.SELLER)),
) -> dict[str, Any]:
    return await service.seller_quality_summary(session, principal.user.id)


@router.get(
    "/consents/{certificate}",
    dependencies=[Depends(optional_principal)],
    summary="Verify a consent certificate (no personal data)",
)
async def verify_consent(
    certificate: Annotated[str, Path(max_length=64)], session: Session
) -> ConsentCertificateOut:
    consent, text = await service.consent_by_certificate(session, certificate)
    return ConsentCertificateOut(
        certificate=consent.certificate,
        status="withdrawn" if consent.withdrawn_at else "valid",
        vertical=consent.vertical,
        given_at=consent.given_at,
        recorded_at=consent.recorded_at,
        page_url=consent.page_url,
        disclosure_text=text.text,
        disclosure_sha256=text.sha256,
        parties=list(consent.parties),
        withdrawn_at=consent.withdrawn_at,
    )


@router.post(
    "/consents/{certificate}/withdrawal",
    dependencies=[Depends(optional_principal)],
    summary="The consumer withdraws a consent (name the email or phone it was given with)",
)
async def withdraw_consent(
    certificate: Annotated[str, Path(max_length=64)],
    body: ConsentWithdrawalIn,
    session: Session,
    kit: Kit,
) -> ConsentCertificateOut:
    await service.withdraw_consent(session, kit, certificate, email=body.email, phone=body.phone)
    return await verify_consent(certificate, session)
