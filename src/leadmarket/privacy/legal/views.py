"""The admin pages of law-enforcement requests (P10): the list, the form to enter one with its
legal document, and each request's page where a second admin verifies it, any admin rejects
it with the reason, and a verified one is produced. Thin like ``api.py``: the same service
does the work; downloads link to the API, which accepts the admin's browser session."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import UploadFile
from starlette.responses import Response

from leadmarket.accounts import repository
from leadmarket.accounts.auth import Principal
from leadmarket.accounts.policy import Action
from leadmarket.accounts.views import PageRoute, render_page, role_page, see_other
from leadmarket.config import settings_of
from leadmarket.kit.errors import DomainError, ValidationFailed, validation_errors
from leadmarket.kit.pagination import decode_cursor, encode_cursor
from leadmarket.kit.routing import get_session
from leadmarket.leads.vault import Reader
from leadmarket.models import LegalRequestStatus, Role
from leadmarket.privacy.legal import service
from leadmarket.privacy.legal.api import PREFIX as API_PREFIX
from leadmarket.privacy.legal.api import request_out
from leadmarket.privacy.legal.schemas import (
    DOCUMENT_KIND_LABELS,
    FIELD_LABELS,
    LegalField,
    LegalRequestIn,
)

LIST = "/admin/legal-requests"
NEW = LIST + "/new"
PER_PAGE = 50
REFUSAL = "Only admins handle law-enforcement requests."
Session = Annotated[AsyncSession, Depends(get_session)]
RequestId = Annotated[str, Path(max_length=40)]

router = APIRouter(route_class=PageRoute, include_in_schema=False)

FORM_LABELS = {
    "agency": "Agency",
    "officer_name": "Officer's name",
    "officer_email": "Officer's email address",
    "officer_phone": "Officer's telephone number",
    "document_kind": "Kind of legal document",
    "document_reference": "Document reference",
    "document": "The document (file)",
    "document_text": "The document (text)",
    "subject": "Subject",
    "fields": "Fields asked for",
    "reason": "Reason for rejecting",
}
TEXT_FIELDS = (
    "agency",
    "officer_name",
    "officer_email",
    "officer_phone",
    "document_kind",
    "document_reference",
    "document_text",
    "subject_kind",
    "subject",
)
# The API's field names, as the form calls them.
_FORM_FIELD = {
    "document_base64": "document",
    "document_filename": "document",
    "document_content_type": "document",
    "subject_username": "subject",
    "subject_lead_id": "subject",
}
NOTICES = {
    "entered": "The request was entered. Another admin must verify it before anything is produced.",
    "verified": "The request is verified; a production can now be generated.",
    "rejected": "The request was rejected.",
    "produced": "The production was generated and recorded as a disclosure.",
}
STATUS_LABELS = {
    LegalRequestStatus.ENTERED.value: "Waiting for verification",
    LegalRequestStatus.VERIFIED.value: "Verified",
    LegalRequestStatus.PRODUCED.value: "Produced",
    LegalRequestStatus.REJECTED.value: "Rejected",
}


def admin_page(*, return_to: str | None = None) -> Any:
    return role_page(Action.ADMINISTER, Role.ADMIN, REFUSAL, return_to=return_to)


def _common() -> dict[str, Any]:
    return {
        "field_labels": {f.value: label for f, label in FIELD_LABELS.items()},
        "kind_labels": {k.value: label for k, label in DOCUMENT_KIND_LABELS.items()},
        "status_labels": STATUS_LABELS,
        "api_prefix": API_PREFIX,
    }


@router.get(LIST)
async def list_page(
    request: Request, session: Session, _: Principal = Depends(admin_page())
) -> Response:
    cursor = request.query_params.get("before")
    before = decode_cursor(cursor) if cursor and len(cursor) <= 200 else None
    rows = await service.list_requests(session, status=None, limit=PER_PAGE, before_id=before)
    more = len(rows) > PER_PAGE
    rows = rows[:PER_PAGE]
    return render_page(
        request,
        "privacy/legal_list.html",
        {
            **_common(),
            "items": [await request_out(session, r) for r in rows],
            "older": encode_cursor(rows[-1].id) if more and rows else None,
            "first_page": before is None,
        },
    )


def _new_form(
    request: Request,
    *,
    values: Mapping[str, Any] | None = None,
    errors: Mapping[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    return render_page(
        request,
        "privacy/legal_new.html",
        {
            **_common(),
            "values": {"subject_kind": "member", "fields": [], **(values or {})},
            "errors": dict(errors or {}),
            "labels": FORM_LABELS,
            "kind_options": [(k.value, label) for k, label in DOCUMENT_KIND_LABELS.items()],
            "all_fields": [(f.value, FIELD_LABELS[f]) for f in LegalField],
        },
        status_code=status_code,
    )


@router.get(NEW)
async def new_page(request: Request, _: Principal = Depends(admin_page())) -> Response:
    return _new_form(request)


def _form_errors(exc: DomainError) -> dict[str, str]:
    errors: dict[str, str] = {}
    for error in exc.errors:
        name = error.field.split(".", 1)[0]
        errors.setdefault(
            _FORM_FIELD.get(name, name if name in FORM_LABELS else "form"), error.message
        )
    return errors or {"form": exc.detail}


async def _body_of(values: dict[str, Any], upload: UploadFile | None) -> LegalRequestIn:
    data: dict[str, Any] = {
        name: values[name] or None
        for name in (
            "agency",
            "officer_name",
            "officer_email",
            "officer_phone",
            "document_kind",
            "document_reference",
        )
    }
    data["fields"] = values["fields"]
    if upload is not None and upload.filename:
        content = await upload.read()
        data["document_base64"] = base64.b64encode(content).decode()
        data["document_filename"] = upload.filename
        data["document_content_type"] = upload.content_type or None
    if values["document_text"].strip():
        data["document_text"] = values["document_text"]
    subject = values["subject"].strip() or None
    if values["subject_kind"] == "lead":
        data["subject_lead_id"] = subject
    else:
        data["subject_username"] = subject
    try:
        return LegalRequestIn.model_validate(data)
    except ValidationError as exc:
        errors = validation_errors([dict(error) for error in exc.errors()])
        raise ValidationFailed("Check the form.", errors=errors) from None


@router.post(LIST)
async def enter(
    request: Request, session: Session, principal: Principal = Depends(admin_page(return_to=NEW))
) -> Response:
    admin_id = principal.user.id
    form = await request.form()
    values: dict[str, Any] = {
        name: value if isinstance(value := form.get(name), str) else "" for name in TEXT_FIELDS
    }
    values["fields"] = [v for v in form.getlist("fields") if isinstance(v, str)]
    upload = form.get("document")
    try:
        body = await _body_of(values, upload if isinstance(upload, UploadFile) else None)
        item = await service.enter_request(
            session, settings_of(request), admin_id=admin_id, body=body
        )
    except ValidationFailed as exc:
        await session.rollback()
        return _new_form(request, values=values, errors=_form_errors(exc), status_code=422)
    return see_other(f"{LIST}/{item.id}?done=entered")


async def _detail(
    request: Request,
    session: AsyncSession,
    request_id: str,
    viewer_id: str,
    *,
    errors: Mapping[str, str] | None = None,
    values: Mapping[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    item = await request_out(session, await service.get_request(session, request_id))
    names = await repository.usernames(
        session, [item.entered_by, item.verified_by, item.rejected_by, item.produced_by]
    )
    return render_page(
        request,
        "privacy/legal_detail.html",
        {
            **_common(),
            "item": item,
            "names": names,
            "may_verify": item.status == LegalRequestStatus.ENTERED.value
            and item.entered_by != viewer_id,
            "own_entry": item.entered_by == viewer_id,
            "errors": dict(errors or {}),
            "values": dict(values or {}),
            "labels": FORM_LABELS,
            "notice": None if errors else NOTICES.get(request.query_params.get("done", "")),
        },
        status_code=status_code,
    )


@router.get(LIST + "/{request_id}")
async def detail_page(
    request: Request,
    request_id: RequestId,
    session: Session,
    principal: Principal = Depends(admin_page()),
) -> Response:
    return await _detail(request, session, request_id, principal.user.id)


@router.post(LIST + "/{request_id}/verify")
async def verify(
    request: Request,
    request_id: RequestId,
    session: Session,
    principal: Principal = Depends(admin_page()),
) -> Response:
    await service.verify_request(session, request_id, admin_id=principal.user.id)
    return see_other(f"{LIST}/{request_id}?done=verified")


@router.post(LIST + "/{request_id}/reject")
async def reject(
    request: Request,
    request_id: RequestId,
    session: Session,
    principal: Principal = Depends(admin_page()),
) -> Response:
    admin_id = principal.user.id
    form = await request.form()
    reason = value if isinstance(value := form.get("reason"), str) else ""
    try:
        await service.reject_request(session, request_id, admin_id=admin_id, reason=reason)
    except ValidationFailed as exc:
        await session.rollback()
        return await _detail(
            request,
            session,
            request_id,
            admin_id,
            errors=_form_errors(exc),
            values={"reason": reason},
            status_code=422,
        )
    return see_other(f"{LIST}/{request_id}?done=rejected")


@router.post(LIST + "/{request_id}/production")
async def produce(
    request: Request,
    request_id: RequestId,
    session: Session,
    principal: Principal = Depends(admin_page()),
) -> Response:
    await service.produce(
        session,
        settings_of(request),
        request_id,
        admin=Reader(principal.user.id, principal.user.role),
    )
    return see_other(f"{LIST}/{request_id}?done=produced")
