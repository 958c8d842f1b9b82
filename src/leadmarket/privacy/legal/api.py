"""Law-enforcement requests API (P10), for admins only: enter, verify (a second admin), reject,
produce, and download the production and the legal document. Each download of personal data
is in the audit log (A4)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.accounts import repository
from leadmarket.accounts.auth import Principal, requires
from leadmarket.accounts.policy import Action
from leadmarket.config import settings_of
from leadmarket.kit.pagination import Cursor, Limit, Page, decode_cursor, encode_cursor
from leadmarket.kit.routing import TransactionalRoute, get_session
from leadmarket.leads.vault import Reader
from leadmarket.models import LegalRequest, LegalRequestStatus, Role
from leadmarket.privacy.legal import service
from leadmarket.privacy.legal.schemas import (
    LegalRequestIn,
    LegalRequestOut,
    ProductionOut,
    RejectIn,
)

PREFIX = "/api/v1/admin/legal-requests"
router = APIRouter(prefix=PREFIX, route_class=TransactionalRoute, tags=["admin"])
Session = Annotated[AsyncSession, Depends(get_session)]
RequestId = Annotated[str, Path(max_length=40)]
admin_only = requires(Action.ADMINISTER, Role.ADMIN)


async def request_out(session: AsyncSession, item: LegalRequest) -> LegalRequestOut:
    names = await repository.usernames(session, [item.subject_user_id])
    return LegalRequestOut(
        id=item.id,
        status=item.status,
        agency=item.agency,
        officer_name=item.officer_name,
        officer_email=item.officer_email,
        officer_phone=item.officer_phone,
        document_kind=item.document_kind,
        document_reference=item.document_reference,
        document_filename=item.document_filename,
        document_content_type=item.document_content_type,
        document_size=item.document_size,
        document_sha256=item.document_sha256,
        subject_kind=item.subject_kind,
        subject_username=names.get(item.subject_user_id or ""),
        subject_lead_id=item.subject_lead_id,
        fields_requested=list(item.fields_requested),
        entered_by=item.entered_by,
        entered_at=item.entered_at,
        verified_by=item.verified_by,
        verified_at=item.verified_at,
        rejected_by=item.rejected_by,
        rejected_at=item.rejected_at,
        rejection_reason=item.rejection_reason,
        produced_by=item.produced_by,
        produced_at=item.produced_at,
        production_fields=item.production_fields,
    )


@router.get("", summary="Law-enforcement requests, newest first")
async def list_legal_requests(
    session: Session,
    limit: Limit = 50,
    cursor: Cursor = None,
    status: Annotated[LegalRequestStatus | None, Query()] = None,
    _: Principal = Depends(admin_only),
) -> Page[LegalRequestOut]:
    before = decode_cursor(cursor)
    rows = await service.list_requests(
        session, status=status.value if status else None, limit=limit, before_id=before
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(
        items=[await request_out(session, r) for r in rows],
        next_cursor=encode_cursor(rows[-1].id) if more and rows else None,
    )


@router.post(
    "",
    status_code=201,
    summary="Enter a law-enforcement request with its legal document (P10)",
)
async def enter_legal_request(
    body: LegalRequestIn,
    request: Request,
    session: Session,
    principal: Principal = Depends(admin_only),
) -> LegalRequestOut:
    item = await service.enter_request(
        session, settings_of(request), admin_id=principal.user.id, body=body
    )
    return await request_out(session, item)


@router.get("/{request_id}", summary="One law-enforcement request")
async def get_legal_request(
    request_id: RequestId, session: Session, _: Principal = Depends(admin_only)
) -> LegalRequestOut:
    return await request_out(session, await service.get_request(session, request_id))


@router.post(
    "/{request_id}/verify",
    summary="Verify a request; only an admin other than the one who entered it may (P10)",
)
async def verify_legal_request(
    request_id: RequestId, session: Session, principal: Principal = Depends(admin_only)
) -> LegalRequestOut:
    item = await service.verify_request(session, request_id, admin_id=principal.user.id)
    return await request_out(session, item)


@router.post("/{request_id}/reject", summary="Reject a request, with the reason")
async def reject_legal_request(
    request_id: RequestId,
    body: RejectIn,
    session: Session,
    principal: Principal = Depends(admin_only),
) -> LegalRequestOut:
    item = await service.reject_request(
        session, request_id, admin_id=principal.user.id, reason=body.reason
    )
    return await request_out(session, item)


@router.post(
    "/{request_id}/production",
    status_code=201,
    summary="Generate the production of a verified request: only the P10 fields asked for",
    response_model=ProductionOut,
)
async def produce_legal_request(
    request_id: RequestId,
    request: Request,
    session: Session,
    principal: Principal = Depends(admin_only),
) -> Response:
    production = await service.produce(
        session,
        settings_of(request),
        request_id,
        admin=Reader(principal.user.id, principal.user.role),
    )
    # Exactly the record that is kept and downloaded later, byte for byte.
    return JSONResponse(production, status_code=201, headers={"Cache-Control": "no-store"})


# Media types a document is served back as; anything else goes out as opaque bytes, so an
# uploaded page cannot run as this site even if a browser ignored the attachment header.
SAFE_DOCUMENT_TYPES = frozenset(
    {"application/pdf", "image/png", "image/jpeg", "image/tiff", "text/plain"}
)


def _attachment(filename: str) -> str:
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in filename)[:120] or "file"
    return f'attachment; filename="{safe}"'


@router.get(
    "/{request_id}/production",
    summary="Download the production as JSON (the read is recorded)",
    response_model=ProductionOut,
)
async def download_production(
    request_id: RequestId,
    request: Request,
    session: Session,
    principal: Principal = Depends(admin_only),
) -> Response:
    production: dict[str, Any] = await service.read_production(
        session, settings_of(request), request_id, admin_id=principal.user.id
    )
    return JSONResponse(
        production,
        headers={
            "Content-Disposition": _attachment(f"production-{request_id}.json"),
            "Cache-Control": "no-store",
        },
    )


@router.get(
    "/{request_id}/document",
    summary="Download the legal document (the read is recorded)",
    response_class=Response,
)
async def download_document(
    request_id: RequestId,
    request: Request,
    session: Session,
    principal: Principal = Depends(admin_only),
) -> Response:
    document = await service.read_document(
        session, settings_of(request), request_id, admin_id=principal.user.id
    )
    media_type = document.content_type.split(";", 1)[0].strip().lower()
    return Response(
        document.data,
        media_type=media_type if media_type in SAFE_DOCUMENT_TYPES else "application/octet-stream",
        headers={
            "Content-Disposition": _attachment(document.filename),
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )
